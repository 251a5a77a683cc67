"""The install lock: ``flock`` on ``STATE_DIR/install.lock``, so that installs never overlap.

An install, a rollback and a recovery take the lock exclusively; whoever only reads the slots
(the daemon opening the active bundle) may take it shared, so that no install removes a slot
while it is being opened. The lock belongs to the open file, so the kernel releases it when
its holder dies, SIGKILL included: a crashed install never leaves the device locked. The lock
file is created once and never removed (removing it would let two holders lock two files).

Side-loading (``edgeml agent install``) works whether or not the daemon runs because both go
through this lock (DESIGN.md, "Side-loading").
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeml.toolkit.errors import EdgeMLError

LOCK_FILE = "install.lock"
POLL_SECONDS = 0.05


class LockTimeoutError(EdgeMLError):
    """Another process held the install lock for longer than the caller would wait."""


@contextmanager
def install_lock(
    state_dir: Path | str, *, shared: bool = False, timeout: float | None = None
) -> Iterator[Path]:
    """Hold the state folder's install lock for the ``with`` block.

    Args:
        state_dir: the agent's state folder (created if missing).
        shared: take a shared (reader) lock instead of the exclusive one installs take.
        timeout: seconds to wait for the lock; None waits as long as it takes.

    Yields:
        The lock file's path.

    Raises:
        LockTimeoutError: the lock was not free within ``timeout``; the message names the
            process that last took it exclusively.
    """
    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if timeout is None:
            fcntl.flock(fd, mode)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                        raise LockTimeoutError(
                            f"{path} is held by another install (last taken by process "
                            f"{holder or 'unknown'}); waited {timeout:g} s"
                        ) from None
                    time.sleep(POLL_SECONDS)
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)
