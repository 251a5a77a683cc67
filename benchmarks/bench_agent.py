"""The "agent" benchmark: the device agent's footprint and serving latency.

The reference MLP (256, 128) is built for ``raspberry-pi-4``; the agent runs as a real
``edgeml agent run`` process (with a real Mosquitto on loopback) and is measured from outside:
resident memory idle and with the bundle loaded, time from start to the first answered
prediction, and single-row latency through loopback HTTP. In the same run, in this process:
the bare onnxruntime session on the same model.onnx, the scoring engine's Python API on one
row and on a batch of 1,024 rows.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from machine import children_cpu_s
from reference_models import REFERENCE_SPECS, train_reference_model
from timing import Timing, TimingSettings, combine, measure

from edgeml.converters.pipeline import BuildRequest, build_bundles
from edgeml.toolkit.bundle import MODEL, verify_bundle
from edgeml.toolkit.keys import generate_key_pair, load_private_key
from edgeml.toolkit.profiles import load_profile
from edgeml.toolkit.scoring import ScoringEngine
from edgeml.toolkit.trust import load_trust_store

EDGEML = str(Path(sys.executable).with_name("edgeml"))
ROUNDS = 3


@dataclass(frozen=True)
class AgentBenchmark:
    """What the agent benchmark measured."""

    bundle_id: str
    rss_idle_mib: float
    rss_loaded_mib: float
    first_answer_s: float
    http_single_p50_ms: float
    http_calls: int
    raw_single_p50_ms: float
    raw_health_p50_ms: float
    bare: Timing
    engine: Timing
    children_cpu_s: float = 0.0
    """CPU seconds of the benchmark's child processes: the agent, Mosquitto, the side-load."""
    total_s: float = 0.0
    round_ratios: tuple[tuple[float, float], ...] = ()
    """Per round: the engine's 1-row p50 over the bare one's, and its batch throughput over
    the bare one's (the host's moods move both sides of a round together, not every round
    alike)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    config = folder / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.3)
    return broker, port


def _write_config(folder: Path, trust: Path, broker_port: int, api_port: int) -> Path:
    config = folder / "agent.toml"
    config.write_text(
        f'device_id = "bench-1"\nprofile = "raspberry-pi-4"\nstate_dir = "{folder / "state"}"\n'
        f'trust = "{trust}"\n[broker]\nurl = "mqtt://127.0.0.1:{broker_port}"\n'
        f'[api]\nlisten = "127.0.0.1:{api_port}"\n[telemetry]\nwindow_s = 60\n'
    )
    return config


class _Client:
    """A keep-alive HTTP client on the agent's API."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body else {}
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        return response.status, response.read()


class _RawClient:
    """A minimal keep-alive HTTP/1.1 client, as a C program or curl would be: the request's
    bytes prepared once, the answer read up to its blank line and its Content-Length. What it
    measures is the agent and the loopback, with next to nothing of the client's own."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    @staticmethod
    def prepare(method: str, path: str, body: bytes = b"") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + body

    def send(self, request: bytes) -> int:
        self.sock.sendall(request)
        status = int(self.reader.readline().split()[1])
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        self.reader.read(length)
        return status

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError("the agent did not answer in time")


def run_agent_benchmark(
    work: Path, timing: TimingSettings, log: Callable[[str], None]
) -> AgentBenchmark:
    """Build the reference MLP for raspberry-pi-4 and measure the agent serving it."""
    started_all, children_before = time.monotonic(), children_cpu_s()
    spec = next(s for s in REFERENCE_SPECS if s.kind == "mlp")
    log("training the reference MLP")
    model = train_reference_model(spec, work / "model")
    generate_key_pair(work / "keys", "bench")
    result = build_bundles(
        BuildRequest(
            model_path=model.model_path,
            profiles=[load_profile("raspberry-pi-4")],
            signing_key=load_private_key(work / "keys" / "bench.key"),
            out_dir=work / "bundles",
            validation_path=model.validation_path,
            target="target",
            name="mlp",
            version="1.0.0",
        )
    )
    bundle = result.builds[0].bundle_path
    trust = work / "keys" / "bench.pub"
    broker, broker_port = _start_broker(work)
    api_port = _free_port()
    config = _write_config(work, trust, broker_port, api_port)
    rows = model.X_val
    body_one = json.dumps({"instances": rows[:1].tolist()}).encode()
    try:
        log("agent idle")
        agent = subprocess.Popen(
            [EDGEML, "agent", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: _Client(api_port).request("GET", "/v1/health")[0] in (200, 503), 30)
        time.sleep(1.0)
        rss_idle = _rss_mib(agent.pid)
        agent.terminate()
        agent.wait(timeout=20)
        subprocess.run(
            [EDGEML, "agent", "install", str(bundle), "--config", str(config)],
            check=True,
            capture_output=True,
        )
        log("agent with the MLP")
        started = time.perf_counter()
        agent = subprocess.Popen(
            [EDGEML, "agent", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: _Client(api_port).request("POST", "/v1/predict", body_one)[0] == 200, 30)
        first_answer = time.perf_counter() - started
        client = _Client(api_port)
        raw = _RawClient(api_port)
        bodies = [json.dumps({"instances": rows[i : i + 1].tolist()}).encode() for i in range(64)]
        prepared = [_RawClient.prepare("POST", "/v1/predict", body) for body in bodies]
        health = _RawClient.prepare("GET", "/v1/health")
        timings: list[float] = []
        raw_timings: list[float] = []
        health_timings: list[float] = []
        calls = {"http.client": timings, "raw": raw_timings, "health": health_timings}

        def call(kind: str, i: int) -> int:
            if kind == "http.client":
                return client.request("POST", "/v1/predict", bodies[i % len(bodies)])[0]
            return raw.send(prepared[i % len(prepared)] if kind == "raw" else health)

        # Each kind makes a run of calls on its own connection, as a device's program would;
        # the kinds take turns over several rounds, so that the host's moods fall on each alike.
        rounds = 4
        per_round = max(1, timing.single_max_calls // rounds)
        deadline = time.perf_counter() + timing.single_budget_s
        for _ in range(rounds):
            for kind, kept in calls.items():
                for i in range(per_round):
                    start = time.perf_counter()
                    status = call(kind, i)
                    kept.append(time.perf_counter() - start)
                    assert status == 200, (kind, status)
                    if time.perf_counter() > deadline:
                        break
        raw.close()
        rss_loaded = _rss_mib(agent.pid)
        agent.terminate()
        agent.wait(timeout=20)
    finally:
        broker.terminate()
        broker.wait(timeout=10)
    log("bare onnxruntime session and the scoring engine, in this process")
    verified = verify_bundle(bundle, load_trust_store(trust))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 4  # as the raspberry-pi-4 profile runs it
    session = ort.InferenceSession(
        verified.entries[MODEL], options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    engine = ScoringEngine.open(bundle, load_trust_store(trust))
    # The two sides take turns, a third of the time budget each round, so that the host's
    # moods fall on both alike; the medians of the rounds count.
    share = dataclasses.replace(
        timing,
        single_max_calls=max(1, timing.single_max_calls // ROUNDS),
        single_budget_s=timing.single_budget_s / ROUNDS,
        batch_budget_s=timing.batch_budget_s / ROUNDS,
    )
    bare_rounds, engine_rounds = [], []
    for _ in range(ROUNDS):
        bare_rounds.append(measure(lambda x: session.run(None, {name: x}), rows, np.float32, share))
        engine_rounds.append(measure(engine.predict, rows, np.float64, share))
    bare, through_engine = combine(bare_rounds), combine(engine_rounds)
    return AgentBenchmark(
        bundle_id=verified.bundle_id,
        rss_idle_mib=round(rss_idle, 1),
        rss_loaded_mib=round(rss_loaded, 1),
        first_answer_s=round(first_answer, 3),
        http_single_p50_ms=round(float(np.median(timings)) * 1000, 4),
        http_calls=len(timings),
        raw_single_p50_ms=round(float(np.median(raw_timings)) * 1000, 4),
        raw_health_p50_ms=round(float(np.median(health_timings)) * 1000, 4),
        bare=bare,
        engine=through_engine,
        children_cpu_s=round(children_cpu_s() - children_before, 1),
        total_s=round(time.monotonic() - started_all, 1),
        round_ratios=tuple(
            (
                round(e.single_row_ms_p50 / b.single_row_ms_p50, 2),
                round(e.batch_rows_per_s / b.batch_rows_per_s, 2),
            )
            for b, e in zip(bare_rounds, engine_rounds, strict=True)
        ),
    )


if __name__ == "__main__":  # a quick look without the runner
    with tempfile.TemporaryDirectory() as folder:
        print(run_agent_benchmark(Path(folder), TimingSettings.quick(), print))
    os._exit(0)
