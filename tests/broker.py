"""A real Mosquitto broker for tests: started on a free loopback port, stopped after.

Tests that need a broker use the ``mosquitto`` fixture from tests/conftest.py; tests that take
the broker down and bring it back use :meth:`MosquittoBroker.stop` and :meth:`start` (same port).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_binary() -> str:
    """The mosquitto executable; CI installs it with apt-get (it lands in /usr/sbin)."""
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MosquittoBroker:
    """One mosquitto process on 127.0.0.1:port, with its own config and log in ``folder``."""

    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        extra_config: str = "",
        persistence: bool = False,
    ) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.config = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        self.extra_config = extra_config
        self.persistence = persistence
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        body = self.extra_config or "allow_anonymous true\n"
        store = (
            f"persistence true\npersistence_location {self.folder}/\nautosave_interval 1\n"
            if self.persistence
            else "persistence false\n"
        )
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n{store}log_dest file {self.log}\n"
            f"log_type error\nlog_type warning\nmax_inflight_messages 0\n"
            f"max_queued_messages 100000\n{body}"
        )
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
