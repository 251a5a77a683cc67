"""Which validation rows become a bundle's golden self-test rows.

Deterministic: for a classifier, the first row predicted as each class, then rows spread
evenly over the file; for a regressor, rows spread evenly. Pure function of the outputs.
"""

from __future__ import annotations

import numpy as np

from edgeml.toolkit.runtime import ModelOutputs

GOLDEN_ROWS = 16


def choose_golden_rows(task: str, outputs: ModelOutputs, count: int = GOLDEN_ROWS) -> np.ndarray:
    """Indices of up to ``count`` rows, sorted, without repeats."""
    n = len(outputs.labels if task == "classification" else outputs.values)  # type: ignore[arg-type]
    chosen: list[int] = []
    if task == "classification" and outputs.labels is not None:
        labels = np.asarray(outputs.labels).astype(str)
        for label in sorted(set(labels.tolist())):
            chosen.append(int(np.flatnonzero(labels == label)[0]))
            if len(chosen) >= count:
                break
    for index in np.linspace(0, n - 1, num=min(count, n), dtype=np.int64).tolist():
        if len(chosen) >= count:
            break
        if index not in chosen:
            chosen.append(int(index))
    return np.array(sorted(chosen), dtype=np.int64)
