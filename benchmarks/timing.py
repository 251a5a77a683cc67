"""Time a predict function on single rows and on one batch: p50 latency and throughput.

The same functions time onnxruntime and scikit-learn, on the same rows, so that the ratio
between the two means something. Inputs are prepared before the clock starts (each side in
its native dtype: float32 for the ONNX model, float64 for scikit-learn), and every side is
warmed up first. Each timer stops at a call count or a time budget, whichever comes first.
``combine`` folds repetitions of a measurement into medians and ranges.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Predict = Callable[[np.ndarray], object]


@dataclass(frozen=True)
class TimingSettings:
    """How long to time: call counts, time budgets, warm-up calls, batch size."""

    warmup_calls: int = 20
    single_max_calls: int = 2000
    single_budget_s: float = 3.0
    batch_size: int = 1024
    batch_min_runs: int = 5
    batch_max_runs: int = 200
    batch_budget_s: float = 3.0

    @classmethod
    def quick(cls) -> TimingSettings:
        """Short budgets for a smoke run."""
        return cls(
            warmup_calls=5,
            single_max_calls=200,
            single_budget_s=0.5,
            batch_min_runs=3,
            batch_max_runs=20,
            batch_budget_s=0.5,
        )


@dataclass(frozen=True)
class Timing:
    """One side's figures; for several repetitions, the medians and the lowest and highest."""

    single_row_ms_p50: float
    single_row_calls: int
    batch_rows_per_s: float
    batch_runs: int
    repetitions: int = 1
    single_row_ms_range: tuple[float, float] | None = None
    batch_rows_per_s_range: tuple[float, float] | None = None

    @property
    def batch_spread(self) -> float:
        """Highest over lowest batch throughput across the repetitions (1 for one)."""
        low, high = self.batch_rows_per_s_range or (1.0, 1.0)
        return high / low if low else 1.0

    @property
    def single_row_spread(self) -> float:
        """Highest over lowest single-row p50 across the repetitions (1 for one)."""
        low, high = self.single_row_ms_range or (1.0, 1.0)
        return high / low if low else 1.0


def single_rows(matrix: np.ndarray, dtype: type[np.floating]) -> list[np.ndarray]:
    """Each row of ``matrix`` as its own contiguous 1-row array of ``dtype``."""
    return [np.ascontiguousarray(matrix[i : i + 1], dtype=dtype) for i in range(len(matrix))]


def tiled_batch(matrix: np.ndarray, size: int, dtype: type[np.floating]) -> np.ndarray:
    """``size`` rows made by repeating ``matrix``, as one contiguous array of ``dtype``."""
    reps = -(-size // len(matrix))
    return np.ascontiguousarray(np.tile(matrix, (reps, 1))[:size], dtype=dtype)


def time_single_rows(
    predict: Predict, rows: Sequence[np.ndarray], settings: TimingSettings
) -> tuple[float, int]:
    """Median milliseconds of one call on one row, cycling through ``rows``; and the calls."""
    for i in range(settings.warmup_calls):
        predict(rows[i % len(rows)])
    timings = []
    deadline = time.perf_counter() + settings.single_budget_s
    for i in range(settings.single_max_calls):
        row = rows[i % len(rows)]
        start = time.perf_counter()
        predict(row)
        timings.append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return float(np.median(timings)) * 1000.0, len(timings)


def time_batch(predict: Predict, batch: np.ndarray, settings: TimingSettings) -> tuple[float, int]:
    """Rows per second of one call on the whole batch (median run), and the runs timed."""
    predict(batch)
    timings = []
    deadline = time.perf_counter() + settings.batch_budget_s
    while len(timings) < settings.batch_min_runs or (
        time.perf_counter() < deadline and len(timings) < settings.batch_max_runs
    ):
        start = time.perf_counter()
        predict(batch)
        timings.append(time.perf_counter() - start)
    return len(batch) / float(np.median(timings)), len(timings)


def measure(
    predict: Predict, matrix: np.ndarray, dtype: type[np.floating], settings: TimingSettings
) -> Timing:
    """Single-row p50 latency and batch throughput of ``predict`` on the rows of ``matrix``."""
    p50, calls = time_single_rows(predict, single_rows(matrix, dtype), settings)
    rate, runs = time_batch(predict, tiled_batch(matrix, settings.batch_size, dtype), settings)
    return Timing(round(p50, 4), calls, round(rate, 1), runs)


def combine(timings: Sequence[Timing]) -> Timing:
    """Repetitions of one measurement as one: the medians, the call counts summed, the ranges."""
    p50s = [t.single_row_ms_p50 for t in timings]
    rates = [t.batch_rows_per_s for t in timings]
    return Timing(
        single_row_ms_p50=round(float(np.median(p50s)), 4),
        single_row_calls=sum(t.single_row_calls for t in timings),
        batch_rows_per_s=round(float(np.median(rates)), 1),
        batch_runs=sum(t.batch_runs for t in timings),
        repetitions=len(timings),
        single_row_ms_range=(min(p50s), max(p50s)),
        batch_rows_per_s_range=(min(rates), max(rates)),
    )


@dataclass(frozen=True)
class Turns:
    """Several sides timed in turns: each side's seconds per call, turn by turn."""

    seconds: dict[str, list[list[float]]]

    def p50_ms(self, side: str) -> float:
        """The side's median call over every turn, in milliseconds."""
        return float(np.median([s for turn in self.seconds[side] for s in turn])) * 1000.0

    def calls(self, side: str) -> int:
        return sum(len(turn) for turn in self.seconds[side])

    def ratios(self, side: str, reference: str) -> list[float]:
        """Per turn: the side's median call over the reference's in the same turn."""
        return [
            float(np.median(a) / np.median(b))
            for a, b in zip(self.seconds[side], self.seconds[reference], strict=True)
        ]


def time_in_turns(
    calls: dict[str, Callable[[int], object]],
    per_turn: int,
    turns: int,
    budget_s: float,
    warmup_calls: int = 20,
) -> Turns:
    """Time each side's call ``per_turn`` times in turn with the others, for ``turns`` turns
    (fewer once ``budget_s`` is spent), the order of the sides alternating from turn to turn.

    On a host whose speed moves from one second to the next (a shared virtual machine), the
    sides of one turn run within milliseconds of each other and meet the same conditions, so
    the ratio of their medians turn by turn is steadier than a ratio of two sides timed one
    after the other. A call is given its index (to cycle through rows).
    """
    for call in calls.values():
        for i in range(warmup_calls):
            call(i)
    seconds: dict[str, list[list[float]]] = {side: [] for side in calls}
    order = list(calls)
    deadline = time.perf_counter() + budget_s
    for turn in range(turns):
        for side in order if turn % 2 == 0 else order[::-1]:
            call, kept = calls[side], []
            for i in range(per_turn):
                start = time.perf_counter()
                call(i)
                kept.append(time.perf_counter() - start)
            seconds[side].append(kept)
        if time.perf_counter() > deadline:
            break
    return Turns(seconds)
