"""Health figures from telemetry windows, and the gates they break (pure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgeml.fleet.gates import DeviceHealth, Gates, device_figures, judge_device, summarize_windows
from edgeml.toolkit.protocol import TelemetryWindow


def window(seq: int, requests: int, errors: int, violations: int, p95: float, psi: float):
    return TelemetryWindow(
        device_id="pi-1",
        seq=seq,
        window_start=seq * 10.0,
        window_end=seq * 10.0 + 10,
        bundle_id="m-1.0.0-raspberry-pi-4",
        requests=requests,
        rows=requests * 2,
        errors=errors,
        contract_violations=violations,
        latency_ms={"p50": p95 / 2, "p95": p95},
        predictions={"0": requests},
        drift_psi={"f0": psi, "__prediction__": psi / 2},
    )


def test_windows_fold_into_weighted_figures() -> None:
    health = summarize_windows([window(1, 100, 1, 1, 2.0, 0.1), window(2, 300, 0, 2, 4.0, 0.3)])
    assert health.windows == 2
    assert health.requests == 400
    assert health.errors == 4  # failed predictions and contract refusals together
    assert health.error_rate == pytest.approx(0.01)
    assert health.p95_ms == pytest.approx((2.0 * 100 + 4.0 * 300) / 400)
    assert health.psi["f0"] == pytest.approx((0.1 * 200 + 0.3 * 600) / 800)
    assert health.worst_psi == ("f0", pytest.approx(0.25))


def test_no_windows_means_not_measured() -> None:
    health = summarize_windows([])
    assert health == DeviceHealth()
    figures = device_figures(health)
    assert figures["error_rate"] is None and figures["latency_ratio"] is None
    assert judge_device(health, Gates(min_requests=0)) == []


def test_latency_is_judged_against_the_previous_bundle_on_the_device() -> None:
    new = summarize_windows([window(1, 50, 0, 0, 9.0, 0.0)])
    old = summarize_windows([window(1, 50, 0, 0, 3.0, 0.0)])
    broken = judge_device(replace(new, baseline_p95_ms=old.p95_ms), Gates(min_requests=10))
    assert [b.gate for b in broken] == ["latency"]
    assert broken[0].describe() == "latency 3 > 1.5"
    assert judge_device(new, Gates(min_requests=10)) == []  # no baseline: not judged


def test_every_gate_at_once_and_the_minimum_of_requests() -> None:
    health = DeviceHealth(requests=30, errors=3, p95_ms=4, baseline_p95_ms=1, psi={"f": 0.9})
    gates = Gates(min_requests=30)
    assert [b.gate for b in judge_device(health, gates)] == ["error-rate", "latency", "drift"]
    assert judge_device(health, Gates(min_requests=31)) == []
