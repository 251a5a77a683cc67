"""A real agent for tests: its ``agent.toml`` and ``edgeml agent run`` in a child process,
with the local API's health, predict and status calls."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from broker import MosquittoBroker, free_port
from protocol_peer import ProtocolPeer

EDGEML = str(Path(sys.executable).with_name("edgeml"))


def write_config(
    folder: Path,
    broker: MosquittoBroker,
    key_dir: Path,
    window_s: float = 0.5,
    device_id: str = "pi-1",
    tags: Sequence[str] = ("canary",),
    reserve_mb: float | None = None,
    max_in_flight: int | None = None,
) -> Path:
    """An agent.toml in ``folder`` for a device on ``broker`` trusting ``key_dir``'s key."""
    api_port = free_port()
    config = folder / "agent.toml"
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'device_id = "{device_id}"\nprofile = "raspberry-pi-4"\ntags = {json.dumps(list(tags))}\n'
        f'state_dir = "{folder / "state"}"\ntrust = "{key_dir / "edgeml.pub"}"\n'
        f'[broker]\nurl = "{broker.url}"\n[api]\nlisten = "127.0.0.1:{api_port}"\n'
        f"[telemetry]\nwindow_s = {window_s}\n"
        + ("" if max_in_flight is None else f"max_in_flight = {max_in_flight}\n")
        + ("" if reserve_mb is None else f"[install]\nreserve_mb = {reserve_mb}\n")
    )
    return config


class Agent:
    """``edgeml agent run`` in a child process."""

    def __init__(self, config: Path) -> None:
        self.config = config
        listen = next(line for line in config.read_text().splitlines() if line.startswith("listen"))
        self.url = "http://" + listen.split('"')[1]
        self.log = config.parent / "agent.log"
        self.process = subprocess.Popen(
            [EDGEML, "agent", "run", "--config", str(config)],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        ProtocolPeer.wait(self._answers, 30, "the agent's API")

    def _answers(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            self.get("/v1/health")
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def predict(self, rows: np.ndarray) -> tuple[int, dict]:
        body = json.dumps({"instances": rows.tolist()}).encode()
        request = urllib.request.Request(
            self.url + "/v1/predict", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def mapped_files(self) -> str:
        """The files the process has mapped (its shared libraries among them), from /proc."""
        return Path(f"/proc/{self.process.pid}/maps").read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
