"""Running a long-lived service (the agent daemon, the fleet service) in the foreground."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


def run_until_signalled(run: Callable[[], None], stop: Callable[[], None]) -> None:
    """Call ``run`` (it returns once ``stop`` was called); SIGTERM and SIGINT call ``stop``,
    so that systemd, ``kill`` and Ctrl-C all end the service cleanly."""

    def on_signal(_signal: int, _frame: Any) -> None:
        stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run()
