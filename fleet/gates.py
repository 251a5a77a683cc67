"""Health gates of a rollout: their thresholds, one device's figures, and the verdict.

Pure functions, no I/O: the fleet service reads a device's telemetry windows from the registry
and hands them to :func:`summarize_windows`; the rollout engine (:mod:`edgeml.fleet.rollout`)
asks :func:`judge_device` whether the figures break a gate. DESIGN.md, "Rollouts": error rate
(failed predictions and contract refusals together, over every request of the soak), latency
p95 against the previous version on the same device, drift PSI, self-test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from edgeml.toolkit.errors import InputError

GATES = ("install", "self-test", "timeout", "error-rate", "latency", "drift")
"""Every gate a device can break, in the order a status shows them."""


@dataclass(frozen=True)
class Gates:
    """The thresholds of one rollout; every one can be overridden on ``fleet rollout start``.

    Attributes:
        soak_s: how long a stage's health must hold, once enough devices installed, before
            the next stage starts.
        success_threshold: share of a stage's devices that must run the bundle and be healthy.
        error_threshold: share of the rollout's devices that may fail (install refused,
            self-test failed, time-out, a health gate broken) before it rolls back.
        max_error_rate: failed predictions plus contract refusals over requests, per device.
        max_latency_ratio: a device's p95 on the new bundle over its p95 on the previous one.
        max_psi: the largest per-feature (or prediction) PSI of a device's traffic.
        manual_approval: wait for ``fleet rollout approve`` between stages.
        stage_timeout_s: a stage whose devices have not all answered by then stops waiting;
            devices still silent count as failed when online, are skipped when offline.
        min_requests: a device's error-rate, latency and drift gates are judged only once it
            served this many requests on the new bundle; fewer is "not measured".
        resend_after_s: an install or rollback command not answered by an online device is
            sent again after this long (the device resumes what it already received).
        max_attempts: sends of one command to one device before it counts as failed.
    """

    soak_s: float = 300.0
    success_threshold: float = 0.95
    error_threshold: float = 0.05
    max_error_rate: float = 0.01
    max_latency_ratio: float = 1.5
    max_psi: float = 0.25
    manual_approval: bool = False
    stage_timeout_s: float = 1800.0
    min_requests: int = 20
    resend_after_s: float = 60.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        for name in ("success_threshold", "error_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"gate {name.replace('_', '-')} must be in [0, 1]; got {value}")
        for name in ("soak_s", "max_error_rate", "max_psi"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"gate {name.replace('_', '-')} must be ≥ 0; got {value}")
        for name in ("max_latency_ratio", "stage_timeout_s", "resend_after_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"gate {name.replace('_', '-')} must be > 0; got {value}")
        if self.min_requests < 0 or self.max_attempts < 1:
            raise InputError("gate min-requests must be ≥ 0 and max-attempts ≥ 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Gates:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class WindowFigures(Protocol):
    """What :func:`summarize_windows` reads of a telemetry window (a registry row or a
    :class:`edgeml.toolkit.protocol.TelemetryWindow`)."""

    requests: int
    rows: int
    errors: int
    contract_violations: int
    latency_ms: Mapping[str, float]
    drift_psi: Mapping[str, float]


@dataclass(frozen=True)
class DeviceHealth:
    """One device's figures on one bundle over a span of time, from its telemetry windows.

    ``p95_ms`` is the request-weighted mean of the windows' p95 (windows are summaries; their
    requests cannot be merged exactly); ``psi`` is the row-weighted mean PSI per feature.
    """

    windows: int = 0
    requests: int = 0
    rows: int = 0
    errors: int = 0
    p95_ms: float | None = None
    baseline_p95_ms: float | None = None
    psi: Mapping[str, float] = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def latency_ratio(self) -> float | None:
        if self.p95_ms is None or not self.baseline_p95_ms:
            return None
        return self.p95_ms / self.baseline_p95_ms

    @property
    def worst_psi(self) -> tuple[str, float] | None:
        if not self.psi:
            return None
        name = max(sorted(self.psi), key=lambda k: self.psi[k])
        return name, self.psi[name]


def summarize_windows(windows: Iterable[WindowFigures]) -> DeviceHealth:
    """Fold telemetry windows of one device and one bundle into its figures.

    Errors count failed predictions and contract refusals together (DESIGN.md).
    """
    count = requests = rows = errors = 0
    p95_weighted = 0.0
    p95_weight = 0
    psi_sums: dict[str, float] = {}
    psi_weights: dict[str, int] = {}
    for window in windows:
        count += 1
        requests += window.requests
        rows += window.rows
        errors += window.errors + window.contract_violations
        p95 = window.latency_ms.get("p95")
        if p95 is not None and window.requests > 0:
            p95_weighted += p95 * window.requests
            p95_weight += window.requests
        weight = max(window.rows, 1)
        for name, value in window.drift_psi.items():
            psi_sums[name] = psi_sums.get(name, 0.0) + value * weight
            psi_weights[name] = psi_weights.get(name, 0) + weight
    return DeviceHealth(
        windows=count,
        requests=requests,
        rows=rows,
        errors=errors,
        p95_ms=p95_weighted / p95_weight if p95_weight else None,
        psi={name: psi_sums[name] / psi_weights[name] for name in sorted(psi_sums)},
    )


@dataclass(frozen=True)
class GateBreak:
    """One gate a device broke, with its figure against the threshold."""

    gate: str
    figure: float
    threshold: float

    def describe(self) -> str:
        return f"{self.gate} {self.figure:.4g} > {self.threshold:.4g}"


def device_figures(health: DeviceHealth) -> dict[str, Any]:
    """The figures a rollout status shows for one device (None: not measured)."""
    worst = health.worst_psi
    return {
        "windows": health.windows,
        "requests": health.requests,
        "error_rate": _rounded(health.error_rate),
        "p95_ms": _rounded(health.p95_ms),
        "baseline_p95_ms": _rounded(health.baseline_p95_ms),
        "latency_ratio": _rounded(health.latency_ratio),
        "max_psi": _rounded(worst[1]) if worst else None,
        "max_psi_feature": worst[0] if worst else None,
    }


def judge_device(health: DeviceHealth, gates: Gates) -> list[GateBreak]:
    """The health gates that ``health`` breaks; none while it served under ``min_requests``."""
    if health.requests < max(gates.min_requests, 1):
        return []
    broken: list[GateBreak] = []
    error_rate = health.error_rate
    if error_rate is not None and error_rate > gates.max_error_rate:
        broken.append(GateBreak("error-rate", error_rate, gates.max_error_rate))
    ratio = health.latency_ratio
    if ratio is not None and ratio > gates.max_latency_ratio:
        broken.append(GateBreak("latency", ratio, gates.max_latency_ratio))
    worst = health.worst_psi
    if worst is not None and worst[1] > gates.max_psi:
        broken.append(GateBreak("drift", worst[1], gates.max_psi))
    return broken


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
