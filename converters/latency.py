"""Latency of a model on the build host: single-row percentiles and batch throughput.

These figures are host-dependent; they go to the build report and gate the latency budget,
never into the signed bundle (DESIGN.md, "Deterministic bundles").
"""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeml.toolkit.manifest import TensorSpec
from edgeml.toolkit.runtime import feeds_for


def measure_latency(
    session: ort.InferenceSession,
    inputs: list[TensorSpec],
    matrix: np.ndarray,
    *,
    single_runs: int = 200,
    batch_size: int = 1024,
    budget_s: float = 2.0,
) -> dict[str, Any]:
    """Time single rows and one batch size on this host.

    Returns:
        ``single_row_ms`` p50/p95, ``batch_rows_per_s``, the providers used and the host.
    """
    row = np.nan_to_num(matrix[:1])
    single_feeds = feeds_for(inputs, row)
    for _ in range(10):
        session.run(None, single_feeds)
    timings = []
    deadline = time.perf_counter() + budget_s / 2
    for _ in range(single_runs):
        start = time.perf_counter()
        session.run(None, single_feeds)
        timings.append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    reps = int(np.ceil(batch_size / max(1, len(matrix))))
    batch = np.nan_to_num(np.tile(matrix, (reps, 1))[:batch_size])
    batch_feeds = feeds_for(inputs, batch)
    session.run(None, batch_feeds)
    runs, elapsed = 0, 0.0
    deadline = time.perf_counter() + budget_s / 2
    while runs < 3 or (time.perf_counter() < deadline and runs < 50):
        start = time.perf_counter()
        session.run(None, batch_feeds)
        elapsed += time.perf_counter() - start
        runs += 1
    ms = np.array(timings) * 1000.0
    return {
        "single_row_ms_p50": round(float(np.percentile(ms, 50)), 4),
        "single_row_ms_p95": round(float(np.percentile(ms, 95)), 4),
        "single_row_runs": len(timings),
        "batch_size": len(batch),
        "batch_rows_per_s": round(len(batch) * runs / elapsed, 1),
        "providers": session.get_providers(),
        "host": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
