"""The "agent" benchmark: the device agent's footprint and serving latency.

The reference MLP (256, 128) is built for ``raspberry-pi-4``; the agent runs as a real
``edgeml agent run`` process (with a real Mosquitto on loopback) and is measured from outside:
resident memory idle and with the bundle loaded, time from start to the first answered
prediction, and single-row latency through loopback HTTP. In the same run, in this process:
the bare onnxruntime session on the same model.onnx, the scoring engine's Python API on one
row and on a batch of 1,024 rows.
"""

from __future__ import annotations

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
from timing import Timing, TimingSettings, Turns, single_rows, tiled_batch, time_in_turns

from edgeml.converters.pipeline import BuildRequest, build_bundles
from edgeml.toolkit.bundle import MODEL, verify_bundle
from edgeml.toolkit.keys import generate_key_pair, load_private_key
from edgeml.toolkit.profiles import load_profile
from edgeml.toolkit.scoring import ScoringEngine
from edgeml.toolkit.trust import load_trust_store

EDGEML = str(Path(sys.executable).with_name("edgeml"))


@dataclass(frozen=True)
class EngineComparison:
    """The scoring engine's Python API against bare onnxruntime sessions, in this process.

    Ratios are (median, 10th percentile, 90th percentile) over the turns: the engine's 1-row
    p50 over the bare session's (lower is better), and its batch throughput over the bare
    session's (higher is better).
    """

    bundle_id: str
    threads: int
    bare: Timing
    """A bare session with the engine's session options, on float32 rows."""
    engine: Timing
    """``ScoringEngine.predict`` on the same float32 rows."""
    engine_float64: Timing
    """``ScoringEngine.predict`` on the rows as float64 (it converts them)."""
    bare_spinning: Timing
    """A bare session with onnxruntime's default options (idle workers spin), on its own."""
    single_ratio: tuple[float, float, float]
    batch_ratio: tuple[float, float, float]
    single_ratio_float64: tuple[float, float, float]
    batch_ratio_float64: tuple[float, float, float]
    turns: tuple[int, int]
    cpu_ms_per_batch_sleeping: float
    """CPU per 1,024-row request, requests 2 ms apart: the engine's session options."""
    cpu_ms_per_batch_spinning: float
    """The same with onnxruntime's default options (workers spin after each run)."""


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
    comparison: EngineComparison
    children_cpu_s: float = 0.0
    """CPU seconds of the benchmark's child processes: the agent, Mosquitto, the side-load."""
    total_s: float = 0.0


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
    log("bare onnxruntime sessions and the scoring engine, in this process, in turns")
    comparison = compare_with_bare_sessions(bundle, trust, rows, timing)
    return AgentBenchmark(
        bundle_id=comparison.bundle_id,
        rss_idle_mib=round(rss_idle, 1),
        rss_loaded_mib=round(rss_loaded, 1),
        first_answer_s=round(first_answer, 3),
        http_single_p50_ms=round(float(np.median(timings)) * 1000, 4),
        http_calls=len(timings),
        raw_single_p50_ms=round(float(np.median(raw_timings)) * 1000, 4),
        raw_health_p50_ms=round(float(np.median(health_timings)) * 1000, 4),
        comparison=comparison,
        children_cpu_s=round(children_cpu_s() - children_before, 1),
        total_s=round(time.monotonic() - started_all, 1),
    )


SINGLE_PER_TURN, SINGLE_TURNS = 50, 60
BATCH_PER_TURN, BATCH_TURNS = 5, 60
IDLE_GAP_S = 0.002  # between the requests whose CPU time is measured
IDLE_CALLS = 200


def _ratio_summary(ratios: list[float]) -> tuple[float, float, float]:
    """The median of per-turn ratios, and their 10th and 90th percentiles."""
    return (
        round(float(np.median(ratios)), 3),
        round(float(np.percentile(ratios, 10)), 3),
        round(float(np.percentile(ratios, 90)), 3),
    )


def _cpu_ms_per_call(call: Callable[[], object]) -> float:
    """Process CPU time (every thread's) per call, the calls ``IDLE_GAP_S`` apart, as requests
    that come one at a time: what workers that spin between runs burn is counted."""
    for _ in range(10):
        call()
    started = time.process_time()
    for _ in range(IDLE_CALLS):
        call()
        time.sleep(IDLE_GAP_S)
    return round((time.process_time() - started) / IDLE_CALLS * 1000, 3)


def compare_with_bare_sessions(
    bundle: Path, trust: Path, rows: np.ndarray, timing: TimingSettings
) -> EngineComparison:
    """The scoring engine's Python API against bare onnxruntime sessions on the same model.

    The engine's ``predict`` and its own session called bare (``session.run`` on a prepared
    array: the profile's threads, idle workers that sleep) take turns block by block, on the
    same float32 rows (the model's input type); the engine also on float64 rows (it converts
    them). Then, on their
    own, a bare session with onnxruntime's default options (idle workers spin), and the CPU
    time per request of both kinds of session when requests come a little apart.
    """
    verified = verify_bundle(bundle, load_trust_store(trust))
    engine = ScoringEngine.open(bundle, load_trust_store(trust))
    model = verified.entries[MODEL]
    providers = ["CPUExecutionProvider"]
    # The engine's own onnxruntime session, called bare: the same session object on both
    # sides, so that the ratio is what the engine adds and nothing of how (or whether) two
    # sessions and their thread pools differ.
    as_engine = engine.session
    options = ort.SessionOptions()
    options.intra_op_num_threads = engine.threads  # as the raspberry-pi-4 profile runs it
    spinning = ort.InferenceSession(model, options, providers=providers)
    name = as_engine.get_inputs()[0].name
    singles32 = single_rows(rows, np.float32)
    singles64 = single_rows(rows, np.float64)
    n = len(singles32)
    batch32 = tiled_batch(rows, timing.batch_size, np.float32)
    batch64 = tiled_batch(rows, timing.batch_size, np.float64)
    single = time_in_turns(
        {
            "bare": lambda i: as_engine.run(None, {name: singles32[i % n]}),
            "engine": lambda i: engine.predict(singles32[i % n]),
            "engine64": lambda i: engine.predict(singles64[i % n]),
        },
        SINGLE_PER_TURN,
        SINGLE_TURNS,
        timing.single_budget_s,
        timing.warmup_calls,
    )
    batch = time_in_turns(
        {
            "bare": lambda i: as_engine.run(None, {name: batch32}),
            "engine": lambda i: engine.predict(batch32),
            "engine64": lambda i: engine.predict(batch64),
        },
        BATCH_PER_TURN,
        BATCH_TURNS,
        timing.batch_budget_s,
        timing.warmup_calls,
    )
    spun_single = time_in_turns(
        {"spinning": lambda i: spinning.run(None, {name: singles32[i % n]})},
        SINGLE_PER_TURN,
        SINGLE_TURNS,
        timing.single_budget_s / 2,
        timing.warmup_calls,
    )
    spun_batch = time_in_turns(
        {"spinning": lambda i: spinning.run(None, {name: batch32})},
        BATCH_PER_TURN,
        BATCH_TURNS,
        timing.batch_budget_s / 2,
        timing.warmup_calls,
    )

    def side(single_turns: Turns, batch_turns: Turns, key: str) -> Timing:
        return Timing(
            single_row_ms_p50=round(single_turns.p50_ms(key), 4),
            single_row_calls=single_turns.calls(key),
            batch_rows_per_s=round(len(batch32) / (batch_turns.p50_ms(key) / 1000), 1),
            batch_runs=batch_turns.calls(key),
        )

    return EngineComparison(
        bundle_id=verified.bundle_id,
        threads=engine.threads,
        bare=side(single, batch, "bare"),
        engine=side(single, batch, "engine"),
        engine_float64=side(single, batch, "engine64"),
        bare_spinning=side(spun_single, spun_batch, "spinning"),
        single_ratio=_ratio_summary(single.ratios("engine", "bare")),
        batch_ratio=_ratio_summary([1 / r for r in batch.ratios("engine", "bare")]),
        single_ratio_float64=_ratio_summary(single.ratios("engine64", "bare")),
        batch_ratio_float64=_ratio_summary([1 / r for r in batch.ratios("engine64", "bare")]),
        turns=(len(single.seconds["bare"]), len(batch.seconds["bare"])),
        cpu_ms_per_batch_sleeping=_cpu_ms_per_call(lambda: as_engine.run(None, {name: batch32})),
        cpu_ms_per_batch_spinning=_cpu_ms_per_call(lambda: spinning.run(None, {name: batch32})),
    )


if __name__ == "__main__":  # a quick look without the runner
    with tempfile.TemporaryDirectory() as folder:
        print(run_agent_benchmark(Path(folder), TimingSettings.quick(), print))
    os._exit(0)
