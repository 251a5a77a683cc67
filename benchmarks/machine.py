"""What a benchmark ran on: the machine, the OS, Python and the package versions, the date.

Figures mean nothing without these, so every section of docs/benchmarks.md states them.
This module only reads (``/proc``, ``/etc/os-release``, package metadata); it measures nothing.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = (
    "edgeml",
    "numpy",
    "onnx",
    "onnxruntime",
    "skl2onnx",
    "scikit-learn",
    "protobuf",
)
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")
BUSY_WARNING_CORES = 0.2
"""Other processes keeping this many cores busy on average make the timings suspect."""


@dataclass(frozen=True)
class Environment:
    """The host, software and moment of one benchmark run."""

    cpu_model: str
    cpu_flags: tuple[str, ...]
    logical_cores: int
    usable_cores: int
    ram_gib: float
    os_name: str
    python: str
    packages: dict[str, str]
    date_utc: str
    command: str
    load_start: float | None = None
    others_busy_cores: float | None = None

    def _busy_warning(self) -> str:
        if self.others_busy_cores is None or self.others_busy_cores < BUSY_WARNING_CORES:
            return ""
        return " — **the timings are skewed by that work; rerun on a quiet machine**"

    def markdown_lines(self) -> list[str]:
        """The environment as a markdown bullet list."""
        flags = ", ".join(self.cpu_flags) or "none of " + ", ".join(CPU_FLAGS_OF_INTEREST)
        versions = ", ".join(f"{name} {v}" for name, v in self.packages.items())
        return [
            f"- **Date:** {self.date_utc}",
            f"- **Command:** `{self.command}`",
            f"- **CPU:** {self.cpu_model}; {self.logical_cores} logical cores "
            f"({self.usable_cores} usable by this process); flags: {flags}",
            f"- **RAM:** {self.ram_gib:.1f} GiB",
            f"- **Other load:** 1-minute load average {_load(self.load_start)} at the start; "
            f"other processes kept {_load(self.others_busy_cores)} cores busy on average while "
            "it ran" + self._busy_warning(),
            f"- **OS:** {self.os_name}",
            f"- **Python:** {self.python}",
            f"- **Packages:** {versions}",
        ]


def _load(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS does not say."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class CpuClock:
    """A reading of the CPU time spent by the whole machine and by this process."""

    wall_s: float
    machine_busy_s: float | None
    own_s: float

    @classmethod
    def read(cls) -> CpuClock:
        """Read the clocks now (the machine's from /proc/stat, None where there is none)."""
        busy = None
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            ticks = [int(f) for f in fields]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
            busy = (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
        own = os.times()
        return cls(time.monotonic(), busy, own.user + own.system)

    def others_busy_cores(self, later: CpuClock) -> float | None:
        """How many cores other processes kept busy on average between two readings."""
        if self.machine_busy_s is None or later.machine_busy_s is None:
            return None
        wall = later.wall_s - self.wall_s
        others = (later.machine_busy_s - self.machine_busy_s) - (later.own_s - self.own_s)
        return max(0.0, others / wall) if wall > 0 else None


def children_cpu_s() -> float:
    """CPU seconds of this process's children that have been waited for."""
    times = os.times()
    return times.children_user + times.children_system


def own_processes_note(what: str, cpu_s: float, total_s: float, others: float | None) -> str:
    """The page's line on a benchmark's own child processes (``what`` they are), which the
    runner's *other load* counts, since they are not the benchmark's process: their share,
    and what is left for work that is not the benchmark's."""
    own = cpu_s / total_s if total_s else 0.0
    text = (
        f"- **This benchmark's own processes:** {what} are child processes, which the runner "
        f"counts as other load: they used {cpu_s:.1f} s of CPU over the benchmark's "
        f"{total_s:.0f} s, {own:.2f} cores on average"
    )
    if others is not None:
        text += f"; other work on the machine kept about {max(0.0, others - own):.2f} cores busy"
    return text + "."


def wait_for_quiet(
    max_wait_s: float, on_wait: Callable[[float], None], window_s: float = 2.0
) -> float | None:
    """Wait until other processes keep fewer than ``BUSY_WARNING_CORES`` cores busy.

    Args:
        max_wait_s: give up after this long.
        on_wait: called with the busy cores measured in each window that was too busy.
        window_s: the length of one measuring window.

    Returns:
        The busy cores of the last window (None where the machine does not say).
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = CpuClock.read()
        time.sleep(window_s)
        busy = before.others_busy_cores(CpuClock.read())
        if busy is None or busy < BUSY_WARNING_CORES or time.monotonic() >= deadline:
            return busy
        on_wait(busy)


def _cpuinfo_field(name: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what platform knows."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> tuple[str, ...]:
    """Which of the vector-instruction flags that matter to onnxruntime this CPU reports."""
    present = set((_cpuinfo_field("flags") or "").split())
    return tuple(f for f in CPU_FLAGS_OF_INTEREST if f in present)


def ram_gib() -> float:
    """Total memory from /proc/meminfo, in GiB (0 when unknown)."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def os_name() -> str:
    """The distribution's pretty name and the kernel."""
    pretty = None
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                pretty = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    kernel = f"{platform.system()} {platform.release()} {platform.machine()}"
    return f"{pretty} ({kernel})" if pretty else kernel


def package_versions() -> dict[str, str]:
    """Installed versions of the packages the figures depend on."""
    found = {}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def command_line(repo_root: Path) -> str:
    """The command as typed, with the interpreter shown relative to the repository."""
    interpreter = Path(sys.executable)
    try:
        shown = f"{interpreter.relative_to(repo_root)}"
    except ValueError:
        shown = interpreter.name
    return shlex.join([shown, *sys.argv])


def describe_environment(repo_root: Path) -> Environment:
    """Everything a reader needs to compare these figures with their own."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    return Environment(
        cpu_model=cpu_model(),
        cpu_flags=cpu_flags(),
        logical_cores=os.cpu_count() or 0,
        usable_cores=usable or os.cpu_count() or 0,
        ram_gib=ram_gib(),
        os_name=os_name(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        packages=package_versions(),
        date_utc=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command=command_line(repo_root),
        load_start=load_average(),
    )
