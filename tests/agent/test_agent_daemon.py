"""The agent as a real process against a real Mosquitto: install over MQTT, refuse bad bundles,
serve offline, deliver every telemetry window after an outage exactly once by seq."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agent_process import EDGEML, Agent, write_config
from broker import MosquittoBroker
from conftest import TrainedModel, build_bundle
from protocol_peer import ProtocolPeer

from edgeml.toolkit.scoring import ScoringEngine
from edgeml.toolkit.trust import load_trust_store


@pytest.fixture
def agent(
    tmp_path: Path, broker: MosquittoBroker, key_dir: Path, peer: ProtocolPeer
) -> Iterator[Agent]:
    running = Agent(write_config(tmp_path, broker, key_dir))
    # The status is published after the agent subscribed: from then on commands reach it.
    peer.wait(
        lambda: "pi-1" in peer.statuses and peer.statuses["pi-1"].online, 20, "the agent online"
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def newer_bundle(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, logreg: TrainedModel
) -> Path:
    return build_bundle(
        logreg,
        key_dir,
        tmp_path_factory.mktemp("newer"),
        "cancer",
        version="1.1.0",
        latency_budget_s=0.05,
    )


def test_install_over_mqtt_then_serve_what_edgeml_score_serves(
    agent: Agent, peer: ProtocolPeer, built_bundle: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    assert agent.get("/v1/health")[0] == 503, "no verified bundle yet"
    peer.wait(lambda: "pi-1" in peer.statuses, 10, "the retained status")
    assert peer.statuses["pi-1"].online and peer.statuses["pi-1"].active is None
    result = peer.result(peer.install("pi-1", built_bundle))
    assert result.outcome == "succeeded", result.detail
    assert result.active == "cancer-1.0.0-raspberry-pi-4"
    status, health = agent.get("/v1/health")
    assert status == 200 and health["bundle"] == "cancer-1.0.0-raspberry-pi-4"
    status, answer = agent.predict(logreg.X_val[:20])
    assert status == 200
    engine = ScoringEngine.open(built_bundle, load_trust_store(key_dir))
    expected = engine.predict(logreg.X_val[:20])
    assert answer["predictions"] == expected.labels.tolist()
    np.testing.assert_allclose(answer["probabilities"], expected.probabilities, atol=1e-6)
    peer.wait(
        lambda: peer.statuses["pi-1"].active == "cancer-1.0.0-raspberry-pi-4", 10, "the new status"
    )
    # It checked the bundle's signature in a child process: the daemon never loaded cryptography.
    assert "cryptography" not in agent.mapped_files()


def test_bad_bundles_are_refused_and_the_old_one_keeps_serving(
    agent: Agent, peer: ProtocolPeer, built_bundle: Path, tmp_path: Path, other_key_dir: Path
) -> None:
    import zipfile

    from edgeml.toolkit.bundle import bundle_bytes, read_manifest_unverified
    from edgeml.toolkit.keys import load_private_key

    assert peer.result(peer.install("pi-1", built_bundle)).outcome == "succeeded"
    manifest, _ = read_manifest_unverified(built_bundle)
    with zipfile.ZipFile(built_bundle) as archive:
        entries = {n: archive.read(n) for n in ("model.onnx", "baseline.json", "golden.json")}
    newer = type(manifest)(**{**manifest.__dict__, "version": "2.0.0"})
    untrusted = tmp_path / "cancer-2.0.0-raspberry-pi-4.edgeml"
    untrusted.write_bytes(
        bundle_bytes(newer, entries, load_private_key(other_key_dir / "other.key"))
    )
    refused = peer.result(peer.install("pi-1", untrusted))
    assert refused.outcome == "refused" and "trust" in refused.detail
    assert agent.get("/v1/health")[1]["bundle"] == "cancer-1.0.0-raspberry-pi-4"


def test_the_configured_disk_reserve_is_kept_by_every_transfer(
    tmp_path: Path, broker: MosquittoBroker, key_dir: Path, peer: ProtocolPeer, built_bundle: Path
) -> None:
    """``[install] reserve_mb`` reaches the transfer: a reserve larger than any disk refuses
    the install before a byte is written, naming free space, need and the reserve."""
    config = write_config(tmp_path, broker, key_dir, reserve_mb=1e9)  # about a petabyte
    running = Agent(config)
    try:
        peer.wait(lambda: "pi-1" in peer.statuses and peer.statuses["pi-1"].online, 20, "online")
        refused = peer.result(peer.install("pi-1", built_bundle))
        assert refused.outcome in ("refused", "failed"), refused
        assert "bytes free" in refused.detail, refused.detail
        assert f"reserve of {int(1e9 * 1024 * 1024)}" in refused.detail, refused.detail
        assert not (tmp_path / "state" / "incoming").exists() or not list(
            (tmp_path / "state" / "incoming").iterdir()
        )
    finally:
        running.stop()


def test_a_bundle_that_fails_its_self_test_is_refused(
    agent: Agent, peer: ProtocolPeer, built_bundle: Path, tmp_path: Path, key_dir: Path
) -> None:
    import zipfile

    from edgeml.toolkit.bundle import bundle_bytes, read_manifest_unverified
    from edgeml.toolkit.keys import load_private_key

    assert peer.result(peer.install("pi-1", built_bundle)).outcome == "succeeded"
    manifest, _ = read_manifest_unverified(built_bundle)
    with zipfile.ZipFile(built_bundle) as archive:
        entries = {n: archive.read(n) for n in ("model.onnx", "baseline.json", "golden.json")}
    golden = json.loads(entries["golden.json"])
    golden["expected"]["labels"] = [1 - label for label in golden["expected"]["labels"]]
    entries["golden.json"] = json.dumps(golden).encode()
    newer = type(manifest)(**{**manifest.__dict__, "version": "3.0.0"})
    broken = tmp_path / "cancer-3.0.0-raspberry-pi-4.edgeml"
    broken.write_bytes(bundle_bytes(newer, entries, load_private_key(key_dir / "edgeml.key")))
    result = peer.result(peer.install("pi-1", broken))
    assert result.outcome == "failed" and "self-test" in result.detail
    assert result.active == "cancer-1.0.0-raspberry-pi-4"
    assert agent.get("/v1/health")[1]["bundle"] == "cancer-1.0.0-raspberry-pi-4"


def test_upgrade_then_rollback_command(
    agent: Agent, peer: ProtocolPeer, built_bundle: Path, newer_bundle: Path
) -> None:
    assert peer.result(peer.install("pi-1", built_bundle)).outcome == "succeeded"
    upgraded = peer.result(peer.install("pi-1", newer_bundle))
    assert upgraded.outcome == "succeeded"
    assert (upgraded.active, upgraded.previous) == (
        "cancer-1.1.0-raspberry-pi-4",
        "cancer-1.0.0-raspberry-pi-4",
    )
    rolled = peer.result(peer.command("pi-1", "rollback"))
    assert rolled.outcome == "succeeded" and rolled.active == "cancer-1.0.0-raspberry-pi-4"
    assert agent.get("/v1/health")[1]["bundle"] == "cancer-1.0.0-raspberry-pi-4"
    replay = peer.result(peer.install("pi-1", built_bundle))
    assert replay.outcome == "succeeded" and "already active" in replay.detail
    assert peer.result(peer.command("pi-1", "ping")).outcome == "succeeded"


def test_predictions_go_on_offline_and_every_window_arrives_once_after(
    agent: Agent,
    peer: ProtocolPeer,
    broker: MosquittoBroker,
    built_bundle: Path,
    logreg: TrainedModel,
) -> None:
    assert peer.result(peer.install("pi-1", built_bundle)).outcome == "succeeded"
    agent.predict(logreg.X_val[:5])
    peer.wait(lambda: len(peer.telemetry["pi-1"]) >= 2, 20, "telemetry before the outage")
    broker.stop()
    for _ in range(6):  # ~3 s of windows while the broker is down
        assert agent.predict(logreg.X_val[:3])[0] == 200, "predictions do not need the broker"
        time.sleep(0.5)
    broker.start()

    def every_row_reported() -> bool:
        windows = peer.telemetry["pi-1"]
        return sum({w.seq: w.rows for w in windows}.values()) == 5 + 6 * 3

    peer.wait(every_row_reported, 60, "the windows of the outage")
    agent.stop()  # a clean stop flushes the last window and sends it before exiting
    time.sleep(1.0)
    windows = peer.telemetry["pi-1"]
    seqs = [w.seq for w in windows]
    assert len(seqs) == len(set(seqs)), f"a window arrived twice: {sorted(seqs)}"
    assert sorted(seqs) == list(range(1, max(seqs) + 1)), f"a window is missing: {sorted(seqs)}"
    assert sum(w.dropped_windows for w in windows) == 0
    assert max(seqs) >= 8, "windows kept coming while the broker was down"


def test_a_clean_stop_sends_every_stored_window_past_the_in_flight_limit(
    tmp_path: Path,
    broker: MosquittoBroker,
    key_dir: Path,
    peer: ProtocolPeer,
    built_bundle: Path,
    logreg: TrainedModel,
) -> None:
    """Windows stored while the broker was away go at a clean stop, more as acknowledgements
    come back, not only as many as may be in flight at once (one, here)."""
    running = Agent(write_config(tmp_path, broker, key_dir, window_s=0.2, max_in_flight=1))
    try:
        peer.wait(lambda: "pi-1" in peer.statuses, 20, "the agent online")
        assert peer.result(peer.install("pi-1", built_bundle)).outcome == "succeeded"
        broker.stop()
        for _ in range(8):  # about ten windows stored while the broker is down
            assert running.predict(logreg.X_val[:3])[0] == 200
            time.sleep(0.25)
        before = len(peer.telemetry["pi-1"])
        broker.start()
        peer.wait(lambda: len(peer.telemetry["pi-1"]) > before, 30, "the agent back online")
        running.stop()  # at once: most stored windows have not gone yet
    finally:
        running.stop()

    def every_row_reported() -> bool:
        return sum({w.seq: w.rows for w in peer.telemetry["pi-1"]}.values()) == 8 * 3

    peer.wait(every_row_reported, 20, "every stored window")
    seqs = sorted({w.seq for w in peer.telemetry["pi-1"]})
    assert seqs == list(range(1, seqs[-1] + 1)), f"a window is missing: {seqs}"
    assert "left for the next start" not in running.log.read_text()


def test_every_single_row_request_reaches_the_windows(
    agent: Agent, peer: ProtocolPeer, built_bundle: Path, logreg: TrainedModel
) -> None:
    """Every request is counted, a refused one as a contract violation, the last ones by the
    window a clean stop closes."""
    assert peer.result(peer.install("pi-1", built_bundle)).outcome == "succeeded"
    for i in range(40):
        assert agent.predict(logreg.X_val[i : i + 1])[0] == 200
    agent.predict(np.array([[0.0] * (logreg.X_val.shape[1] + 1)]))  # refused: wrong width
    agent.stop()
    try:
        peer.wait(lambda: sum(w.requests for w in peer.telemetry["pi-1"]) >= 41, 20, "requests")
    except AssertionError as error:  # what the agent said about its last windows, if anything
        windows = [(w.seq, w.requests) for w in peer.telemetry["pi-1"]]
        raise AssertionError(
            f"{error}; windows {windows}\n{agent.log.read_text()[-3000:]}"
        ) from None
    windows = {w.seq: w for w in peer.telemetry["pi-1"]}.values()
    assert sum(w.requests for w in windows) == 41
    assert sum(w.rows for w in windows) == 40
    assert sum(w.contract_violations for w in windows) == 1


def test_side_load_while_the_daemon_runs(agent: Agent, built_bundle: Path) -> None:
    done = subprocess.run(
        [EDGEML, "agent", "install", str(built_bundle), "--config", str(agent.config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    ProtocolPeer.wait(
        lambda: agent.get("/v1/health")[0] == 200, 10, "the daemon to serve the side-load"
    )
    status = subprocess.run(
        [EDGEML, "agent", "status", "--config", str(agent.config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    document = json.loads(status.stdout)
    assert document["device_id"] == "pi-1" and document["active"] == "cancer-1.0.0-raspberry-pi-4"
    assert document["running"] is True and "connected" in document
