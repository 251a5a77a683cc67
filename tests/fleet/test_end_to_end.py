"""End to end: a real Mosquitto, the fleet service and five agent processes.

A good bundle is published and staged to 100 % of the devices; then a bad one (its drift
baseline does not match the devices' traffic) goes to the canary, breaks the drift gate and
is rolled back automatically: every device ends on the good version. Then the service is
killed in the middle of a rollout and restarted: the rollout goes on without repeating a step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_process import EDGEML, Agent, write_config
from broker import MosquittoBroker
from conftest import TrainedModel, build_bundle, write_csv

pytestmark = pytest.mark.slow

DEVICES = ("pi-canary", "pi-2", "pi-3", "pi-4", "pi-5")


def edgeml(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([EDGEML, *args], capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def edgeml_json(*args: str) -> Any:
    return json.loads(edgeml(*args, "--json").stdout)


class FleetProcess:
    """``edgeml fleet serve`` in a child process."""

    def __init__(self, db: Path, broker: MosquittoBroker, trust: Path) -> None:
        self.log = db.with_suffix(".log")
        self.process = subprocess.Popen(
            [
                *(EDGEML, "fleet", "serve", "--db", str(db), "--broker", broker.url),
                *("--trust", str(trust), "--tick", "0.2", "--health-every", "0.5"),
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


class Traffic:
    """Rows from the model's own validation data, sent to every agent's API, all the time."""

    def __init__(self, agents: list[Agent], rows: np.ndarray) -> None:
        self.agents = agents
        self.rows = rows
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.is_set():
            for agent in self.agents:
                batch = self.rows[rng.integers(0, len(self.rows), 40)]
                try:
                    agent.predict(batch)
                except OSError as error:  # an agent switching bundles may drop a request
                    self.errors.append(str(error))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def wait_for(condition: Any, timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")


@pytest.fixture(scope="module")
def bundles(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, logreg: TrainedModel
) -> dict[str, Path]:
    """v1 (good), v2 (drifts on the devices' traffic), v3 (good again, for the restart)."""
    folder = tmp_path_factory.mktemp("e2e-bundles")
    good = build_bundle(logreg, key_dir, folder, "cancer", version="1.0.0")
    shifted = write_csv(
        folder / "shifted.csv", logreg.feature_names, logreg.X_val * 4.0, logreg.y_val
    )
    bad_model = TrainedModel(
        logreg.model_path,
        shifted,
        logreg.target,
        logreg.estimator,
        logreg.X_val * 4.0,
        logreg.y_val,
        logreg.feature_names,
    )
    bad = build_bundle(bad_model, key_dir, folder, "cancer", version="2.0.0")
    newer = build_bundle(logreg, key_dir, folder, "cancer", version="3.0.0")
    return {"good": good, "bad": bad, "newer": newer}


@pytest.fixture
def fleet_world(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> Iterator[tuple[Path, MosquittoBroker, FleetProcess, list[Agent]]]:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    db = tmp_path / "fleet.db"
    fleet = FleetProcess(db, broker, key_dir / "edgeml.pub")
    agents: list[Agent] = []
    try:
        for device in DEVICES:
            tags = ("canary",) if device == "pi-canary" else ("plant-1",)
            config = write_config(tmp_path / device, broker, key_dir, 0.5, device, tags)
            agents.append(Agent(config))
        wait_for(
            lambda: (
                len([d for d in edgeml_json("fleet", "devices", "--db", str(db)) if d["online"]])
                == len(DEVICES)
            ),
            30,
            "every device registered and online",
            fleet.log,
        )
        yield db, broker, fleet, agents
    finally:
        for agent in agents:
            agent.stop()
        fleet.stop()
        broker.stop()


def rollout_state(db: Path, rollout_id: str) -> dict[str, Any]:
    return edgeml_json("fleet", "rollout", "status", rollout_id, "--db", str(db))


def publish(db: Path, bundle: Path, trust: Path) -> str:
    """``fleet publish``; the bundle id."""
    published = edgeml_json("fleet", "publish", str(bundle), "--db", str(db), "--trust", str(trust))
    return published["bundle_id"]


def start(db: Path, bundle_id: str, stages: str, soak: str, min_requests: str) -> str:
    """``fleet rollout start``; the rollout id."""
    started = edgeml_json(
        "fleet", "rollout", "start", bundle_id, "--db", str(db),
        "--stages", stages, "--soak", soak, "--min-requests", min_requests,
    )  # fmt: skip
    return started["rollout_id"]


def stopped_running(db: Path, rollout_id: str, what: str, log: Path) -> dict[str, Any]:
    """The rollout's status once it is no longer ``running`` (90 s at most)."""
    return wait_for(
        lambda: (s := rollout_state(db, rollout_id))["state"] != "running" and s, 90, what, log
    )


def actives(db: Path) -> dict[str, str | None]:
    return {d["device_id"]: d["active"] for d in edgeml_json("fleet", "devices", "--db", str(db))}


def test_staged_rollout_then_a_bad_bundle_is_rolled_back(
    fleet_world: tuple[Path, MosquittoBroker, FleetProcess, list[Agent]],
    bundles: dict[str, Path],
    key_dir: Path,
    logreg: TrainedModel,
) -> None:
    db, _broker, fleet, agents = fleet_world
    trust = key_dir / "edgeml.pub"
    traffic = Traffic(agents, logreg.X_val)
    try:
        good = publish(db, bundles["good"], trust)
        rollout_id = start(db, good, "1,50%,100%", "1", "5")
        status = stopped_running(db, rollout_id, "the good rollout to finish", fleet.log)
        assert status["state"] == "succeeded", status["reason"]
        assert [s["outcome"] for s in status["stages"]] == ["passed"] * 3
        assert [s["devices"] for s in status["stages"]] == [1, 3, 5]
        first = status["devices"][0]
        assert {e["device_id"] for e in status["devices"] if e["stage"] == 0} == {"pi-canary"}
        assert first["state"] == "installed"
        assert set(actives(db).values()) == {good}

        bad = publish(db, bundles["bad"], trust)
        bad_rollout = start(db, bad, "1,100%", "6", "5")
        status = stopped_running(db, bad_rollout, "the bad rollout to stop", fleet.log)
        assert status["state"] == "rolled-back", status["reason"]
        failure = status["failure"]
        assert failure["stage"] == 0
        assert failure["gates"].get("drift") == ["pi-canary"]
        assert failure["figures"]["pi-canary"]["max_psi"] > 0.25
        assert status["gate_figures"]["drift"]["device_id"] == "pi-canary"
        wait_for(
            lambda: set(actives(db).values()) == {good},
            30,
            "every device back on the good version",
            fleet.log,
        )
        canary = next(a for a in agents if a.config.parent.name == "pi-canary")
        code, health = canary.get("/v1/health")
        assert code == 200 and health["bundle"] == good
        # The bad bundle only ever reached the canary.
        assert {e["device_id"] for e in status["devices"]} == {"pi-canary"}
        audit = [line["action"] for line in status["audit"]]
        assert "unhealthy" in audit and "rolled-back" in audit and "rollback-sent" in audit
        listed = edgeml_json("fleet", "rollout", "list", "--db", str(db))
        assert [r["state"] for r in listed] == ["rolled-back", "succeeded"]
    finally:
        traffic.stop()


def test_the_service_killed_mid_rollout_carries_on_without_repeating_a_step(
    fleet_world: tuple[Path, MosquittoBroker, FleetProcess, list[Agent]],
    bundles: dict[str, Path],
    key_dir: Path,
    tmp_path: Path,
) -> None:
    db, broker, fleet, _agents = fleet_world
    trust = key_dir / "edgeml.pub"
    good = publish(db, bundles["good"], trust)
    rollout_id = start(db, good, "1,2,100%", "3", "0")
    wait_for(
        lambda: rollout_state(db, rollout_id)["stage_index"] >= 1,
        60,
        "the second stage",
        fleet.log,
    )
    fleet.kill()  # SIGKILL mid-rollout: no chance to save anything
    restarted = FleetProcess(db, broker, trust)
    try:
        status = stopped_running(
            db, rollout_id, "the rollout to finish after the restart", restarted.log
        )
    finally:
        restarted.stop()
    assert status["state"] == "succeeded", status["reason"]
    assert [s["outcome"] for s in status["stages"]] == ["passed"] * 3
    from edgeml.fleet.registry import FleetRegistry

    with FleetRegistry.open(db) as registry:
        log = registry.audit_log(rollout_id=rollout_id)
        started_stages = [e.reason.split(":")[0] for e in log if e.action == "stage-started"]
        assert registry.unsent_commands() == []  # everything decided was sent
    assert len(started_stages) == len(set(started_stages)) == 3  # no stage twice
    installed = [e["device_id"] for e in status["devices"]]
    assert sorted(installed) == sorted(DEVICES)  # each device once
    assert all(e["attempts"] == 1 for e in status["devices"])
    assert set(actives(db).values()) == {good}
    assert os.path.exists(db)
