"""A service's blocking ``run`` in a test: on a daemon thread, with what it raised kept for the
test to assert on (and raised again, so the thread's failure is also printed)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Background:
    """``target`` running on a daemon thread named ``name``, started at once."""

    def __init__(self, target: Callable[[], object], name: str) -> None:
        self.errors: list[BaseException] = []
        self._target = target
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as error:
            self.errors.append(error)
            raise
