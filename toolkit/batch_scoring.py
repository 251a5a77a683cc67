"""Score a whole file with a bundle: stream, check, predict, write, and summarise the drift.

:func:`score_file` is what ``edgeml score`` runs (and what a script calls). A reader thread
reads and types batches; each is checked against the data contract and counted for drift (on
the model's threads when there are several, else on the reader's); the calling thread adds
each batch to the summary in file order and hands the valid rows to the model; a writer thread
writes the predictions in order.
Bounded queues join them, so memory is bounded by ``batch_size`` times the queue depths, not by
the file. An engine opened with ``split_batches`` (what ``edgeml score`` does on CPU) runs the
parts of each batch on ``engine.concurrent_runs`` threads at once, each part on a
single-threaded session, the next batch's parts queued behind: a core busy reading or writing
holds up one part, never every operator of a batch. Otherwise the model runs on the calling
thread with the session's intra-op threads.

Invalid rows (DESIGN.md, "Invalid rows") are handled by ``on_invalid``: ``fail`` stops at the
first batch holding one (nothing is written), ``skip`` drops and counts them, ``quarantine``
writes them, with their reasons and row numbers, to a JSON Lines side file (itself a valid
input file: its ``_row`` and ``_reason`` keys are passed over as unknown columns). A column the
contract requires but the file lacks stops the run before any row is scored, whatever
``on_invalid`` says: it is an error of the file, not of its rows.

Every file is written to a temporary file in its own folder and renamed only when the whole
input has been scored, so a failure, a crash or Ctrl-C never leaves a partial output.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.toolkit.batch_io import DEFAULT_BATCH_SIZE, Batch, file_format, open_reader
from edgeml.toolkit.batch_writers import BatchWriter, OutputColumn, OutputField, open_writer
from edgeml.toolkit.contract import (
    ContractReport,
    ContractViolation,
    RangeCount,
    Violation,
    check_columns,
    check_matrix,
    missing_columns,
)
from edgeml.toolkit.drift import PSI_THRESHOLD, DriftCounts, DriftSummary, accumulate, summarise
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.scoring import ConversionBuffers, Predictions, ScoringEngine
from edgeml.toolkit.tabular import Column

ON_INVALID = ("fail", "skip", "quarantine")
DRIFT_SAMPLE = 4096
FAIL_HINT = "--on-invalid skip or quarantine scores the valid rows"
ROW_KEY = "_row"
REASON_KEY = "_reason"
MIN_PART_ROWS = 4096
"""A batch is split into parts of at least this many rows (smaller parts cost more in calls
than running them at once gains)."""


@dataclass(frozen=True)
class ScoreOptions:
    """How :func:`score_file` treats a file.

    Attributes:
        on_invalid: ``fail``, ``skip`` or ``quarantine`` (see the module docstring).
        strict_range: a value outside the contract's range makes its row invalid (by
            default it is counted and warned about).
        id_column: a column copied, as written, to the output's first column.
        batch_size: rows per batch.
        quarantine_path: where quarantined rows go (default: ``default_quarantine_path``).
        drift_report: write an HTML drift report there, if given.
        drift_threshold: PSI above which a feature is flagged as drifted.
        drift_sample: the most rows of a batch counted for drift, spread evenly over it
            (every k-th row); None or 0 counts every row. The contract is checked on every
            row either way; drift figures from a few thousand rows per batch differ from the
            full count by far less than the threshold, at a fraction of the time.
        queue_depth: batches waiting between the reader, the model and the writer.
        examples: how many violations the summary quotes.
        min_part_rows: with an engine that runs parts of a batch at once
            (``split_batches``), the fewest rows of a part.
    """

    on_invalid: str = "fail"
    strict_range: bool = False
    id_column: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    quarantine_path: Path | None = None
    drift_report: Path | None = None
    drift_threshold: float = PSI_THRESHOLD
    drift_sample: int | None = DRIFT_SAMPLE
    queue_depth: int = 2
    examples: int = 5
    min_part_rows: int = MIN_PART_ROWS

    def __post_init__(self) -> None:
        if self.on_invalid not in ON_INVALID:
            raise InputError(
                f"--on-invalid must be one of {', '.join(ON_INVALID)}, got {self.on_invalid!r}"
            )
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.drift_sample is not None and self.drift_sample < 0:
            raise InputError(
                f"--drift-sample must be 0 (every row) or more, got {self.drift_sample}"
            )
        if self.queue_depth < 1:
            raise InputError(f"queue_depth must be at least 1, got {self.queue_depth}")
        if self.min_part_rows < 1:
            raise InputError(f"min_part_rows must be at least 1, got {self.min_part_rows}")


@dataclass(frozen=True)
class ScoreProgress:
    """How far a run is: ``done`` of ``total`` (None if unknown) in ``unit``; rows so far."""

    done: int
    total: int | None
    unit: str
    rows: int


@dataclass
class ScoreSummary:
    """What a run did: rows, speed, invalid rows, unknown columns, ranges and drift."""

    bundle_id: str
    input: str
    output: str
    rows: int = 0
    scored: int = 0
    invalid_rows: int = 0
    on_invalid: str = "fail"
    strict_range: bool = False
    quarantine: str | None = None
    drift_report: str | None = None
    seconds: float = 0.0
    unknown_columns: tuple[str, ...] = ()
    out_of_range: dict[str, RangeCount] = field(default_factory=dict)
    violations: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: list[Violation] = field(default_factory=list)
    drift: DriftSummary | None = None
    providers: tuple[str, ...] = ()
    threads: int = 0
    concurrent_runs: int = 1
    batch_size: int = DEFAULT_BATCH_SIZE

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def warnings(self) -> list[str]:
        """What a person should hear about: unknown columns, values outside the range, drift."""
        notes = []
        if self.unknown_columns:
            notes.append(
                "columns the contract does not know, passed over: "
                + ", ".join(self.unknown_columns)
            )
        if not self.strict_range:
            for name, count in self.out_of_range.items():
                notes.append(
                    f"{count.total} value{'s' if count.total != 1 else ''} of {name!r} outside "
                    f"the validation range [{count.minimum!r}, {count.maximum!r}] "
                    f"({count.below} below, {count.above} above); "
                    "--strict-range makes such rows invalid"
                )
        if self.invalid_rows:
            what = {"skip": "skipped", "quarantine": f"quarantined to {self.quarantine}"}
            notes.append(
                f"{self.invalid_rows} invalid row{'s' if self.invalid_rows != 1 else ''} "
                f"{what.get(self.on_invalid, '')}".rstrip()
            )
        if self.drift is not None:
            for feature in self.drift.features:
                if feature.drifted:
                    notes.append(
                        f"feature {feature.name!r} drifted: PSI {feature.psi:.3f} above "
                        f"{self.drift.threshold}"
                    )
            prediction = self.drift.prediction
            if prediction is not None and prediction.drifted:
                notes.append(
                    f"the predictions drifted: PSI {prediction.psi:.3f} "
                    f"above {self.drift.threshold}"
                )
        return notes

    def to_dict(self) -> dict[str, Any]:
        """The summary as one JSON document (what ``edgeml score --json`` prints)."""
        return {
            "bundle": self.bundle_id,
            "input": self.input,
            "output": self.output,
            "rows": self.rows,
            "scored": self.scored,
            "invalid_rows": self.invalid_rows,
            "on_invalid": self.on_invalid,
            "strict_range": self.strict_range,
            "quarantine": self.quarantine,
            "drift_report": self.drift_report,
            "seconds": round(self.seconds, 6),
            "rows_per_second": round(self.rows_per_second, 1),
            "unknown_columns": list(self.unknown_columns),
            "out_of_range": {k: v.to_dict() for k, v in self.out_of_range.items()},
            "violations": self.violations,
            "examples": [v.to_dict() for v in self.examples],
            "drift": None if self.drift is None else self.drift.to_dict(),
            "providers": list(self.providers),
            "threads": self.threads,
            "concurrent_runs": self.concurrent_runs,
            "batch_size": self.batch_size,
            "warnings": self.warnings,
        }


def default_quarantine_path(output: Path) -> Path:
    """``scores.csv`` → ``scores.quarantine.jsonl``, beside the output."""
    return output.with_name(f"{output.stem}.quarantine.jsonl")


def score_file(
    engine: ScoringEngine,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    options: ScoreOptions | None = None,
    on_progress: Callable[[ScoreProgress], None] | None = None,
) -> ScoreSummary:
    """Score every row of ``input_path`` into ``output_path`` (formats by extension).

    Args:
        engine: the opened bundle.
        input_path: CSV, TSV, JSON Lines, Parquet or ``.npy``.
        output_path: the same formats; written only when every row has been handled.
        options: invalid rows, ids, batch size, drift report.
        on_progress: called after each batch.

    Returns:
        The summary.

    Raises:
        ContractViolation: with ``on_invalid="fail"``, a row breaks the contract (the message
            names the file, row and column); or a required column is missing.
        InputError: a file cannot be read or written, a format is not supported, Parquet
            without pyarrow, paths that collide.
    """
    options = options or ScoreOptions()
    started = time.perf_counter()
    source = Path(input_path)
    target = Path(output_path)
    out_format = file_format(target)
    file_format(source)
    quarantine = None
    if options.on_invalid == "quarantine":
        quarantine = options.quarantine_path or default_quarantine_path(target)
    _check_paths(source, target, quarantine, options.drift_report)
    summary = ScoreSummary(
        engine.bundle_id,
        str(source),
        str(target),
        on_invalid=options.on_invalid,
        strict_range=options.strict_range,
        quarantine=str(quarantine) if quarantine else None,
        drift_report=str(options.drift_report) if options.drift_report else None,
        providers=engine.providers,
        threads=engine.threads,
        concurrent_runs=engine.concurrent_runs,
        batch_size=options.batch_size,
    )
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(
            open_reader(
                source,
                batch_size=options.batch_size,
                features=engine.features,
                id_column=options.id_column,
            )
        )
        _check_header(engine, reader.names, str(source), options.id_column)
        files = stack.enter_context(_TemporaryFiles())
        run = _Run(engine, options, summary, files, target, out_format, quarantine)
        if quarantine is not None:
            run.open_quarantine()
        run.stream(reader, on_progress)
        known = set(engine.features) | ({options.id_column} if options.id_column else set())
        summary.unknown_columns = tuple(n for n in reader.seen if n not in known)
        summary.drift = summarise(
            engine.baseline, run.counts, options.drift_threshold, engine.features
        )
        if options.drift_report is not None:
            from edgeml.toolkit.drift_report import render_report

            report_tmp = files.create(options.drift_report)
            report_tmp.write_text(render_report(summary), encoding="utf-8")
        summary.seconds = time.perf_counter() - started
        files.commit()
    return summary


def _check_paths(
    source: Path, target: Path, quarantine: Path | None, drift_report: Path | None
) -> None:
    paths = [("INPUT", source), ("OUTPUT", target)]
    paths += [
        (label, p)
        for label, p in (("quarantine file", quarantine), ("drift report", drift_report))
        if p
    ]
    seen: dict[Path, str] = {}
    for label, path in paths:
        resolved = path.resolve()
        if resolved in seen:
            raise InputError(f"{path}: the {label} and the {seen[resolved]} are the same file")
        seen[resolved] = label
    for label, path in paths[1:]:
        if not path.parent.is_dir():
            raise InputError(f"{path}: the folder for the {label} does not exist")
        if path.is_dir():
            raise InputError(f"{path}: the {label} is a folder")


def _check_header(
    engine: ScoringEngine, names: tuple[str, ...] | None, source: str, id_column: str | None
) -> None:
    """Refuse a file that lacks a required column before any row is scored."""
    if names is None:  # JSON Lines: an absent key is a null in its row
        return
    missing = missing_columns(engine.contract, names, source=source)
    if missing:
        listed = ", ".join(repr(n) for n in names[:20]) + (" …" if len(names) > 20 else "")
        raise ContractViolation(
            "; ".join(v.message for v in missing) + f" (the file's columns: {listed})"
        )
    if id_column is not None and id_column not in names:
        raise InputError(f"{source}: no id column {id_column!r} (--id-column)")


class _TemporaryFiles:
    """Temporary files beside their targets, renamed onto them only by ``commit``."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []
        self._committed = False

    def create(self, target: Path) -> Path:
        handle, name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or Path(".")
        )
        os.close(handle)
        temporary = Path(name)
        self._pending.append((temporary, target))
        return temporary

    def commit(self) -> None:
        for temporary, target in self._pending:
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)
        self._committed = True

    def __enter__(self) -> _TemporaryFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            for temporary, _ in self._pending:
                temporary.unlink(missing_ok=True)


def _when_all_done(futures: Sequence[Future[Any]], action: Callable[[], None]) -> None:
    """Call ``action`` once every one of ``futures`` is done (on the thread that finishes the
    last one), whether it succeeded, failed or was cancelled."""
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            action()

    for future in futures:
        future.add_done_callback(one_done)


_END = object()


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def _put(channel: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put unless the run is stopping; False when it is."""
    while not stop.is_set():
        try:
            channel.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class _Run:
    """One run of ``score_file``: the threads, the writers and the running totals."""

    def __init__(
        self,
        engine: ScoringEngine,
        options: ScoreOptions,
        summary: ScoreSummary,
        files: _TemporaryFiles,
        target: Path,
        out_format: str,
        quarantine: Path | None,
    ) -> None:
        self.engine = engine
        self.options = options
        self.summary = summary
        self.files = files
        self.target = target
        self.out_format = out_format
        self.quarantine_target = quarantine
        # Feature counts grow in the calling thread, prediction counts in the writing thread,
        # each in file order.
        self.no_counts = DriftCounts.empty(engine.baseline)
        self.feature_counts = self.no_counts
        self.prediction_counts = self.no_counts
        self.writer: BatchWriter | None = None
        self.quarantine: Any = None
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.features = engine.features
        self.buffers = ConversionBuffers(
            len(engine.features), engine.input_dtype, max_rows=options.batch_size
        )

    @property
    def counts(self) -> DriftCounts:
        """The drift counts of the run (read them once the threads are done)."""
        return self.feature_counts.merge(self.prediction_counts)

    # -- files

    def open_output(self, ids_kind: str | None) -> None:
        fields = list(self.engine.output_fields())
        if self.options.id_column is not None:
            fields.insert(0, OutputField(self.options.id_column, ids_kind or "string"))
        self.writer = open_writer(
            self.files.create(self.target), fields, file_format=self.out_format, display=self.target
        )

    def open_quarantine(self) -> None:
        assert self.quarantine_target is not None
        path = self.files.create(self.quarantine_target)
        self.quarantine = open(path, "w", encoding="utf-8")  # noqa: SIM115

    # -- the pipeline

    def stream(self, reader: Any, on_progress: Callable[[ScoreProgress], None] | None) -> None:
        incoming: queue.Queue[Any] = queue.Queue(maxsize=self.options.queue_depth)
        outgoing: queue.Queue[Any] = queue.Queue(maxsize=self.options.queue_depth)
        runs = self.engine.concurrent_runs
        pool = ThreadPoolExecutor(runs, thread_name_prefix="edgeml-model") if runs > 1 else None
        producer = threading.Thread(
            target=self._produce,
            args=(reader, incoming, pool),
            name="edgeml-read",
            daemon=True,
        )
        consumer = threading.Thread(
            target=self._consume,
            args=(outgoing, reader, on_progress),
            name="edgeml-write",
            daemon=True,
        )
        producer.start()
        consumer.start()
        try:
            for checked in self._checked(incoming, producer):
                matrix, written = self._account(checked)
                if self.writer is None:
                    self.open_output(written.ids.kind if written.ids is not None else None)
                running = self._run_model(matrix, written, pool, checked.buffer)
                if not _put(outgoing, running, self.stop):
                    break
            if self.writer is None:  # no rows at all
                self.open_output(None)
            _put(outgoing, _END, self.stop)
            consumer.join()
            if self.errors:
                raise self.errors[0]
            self._close_files()
        except BaseException:
            self.stop.set()
            producer.join(timeout=10)
            consumer.join(timeout=10)
            if self.writer is not None:
                self.writer.abort()
            if self.quarantine is not None:
                self.quarantine.close()
            raise
        finally:
            self.stop.set()
            producer.join(timeout=10)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _produce(
        self, reader: Any, incoming: queue.Queue[Any], pool: ThreadPoolExecutor | None
    ) -> None:
        """Read batches, convert a matrix to the model's type (here: a mapped file's pages
        are given back once read) and check them, here or on the pool."""
        try:
            for batch in reader:
                matrix = buffer = None
                if batch.matrix is not None:
                    if batch.matrix.dtype != self.engine.input_dtype:
                        buffer = self.buffers.take(batch.matrix.shape)
                    matrix = self.engine.as_input(batch.matrix, out=buffer)
                if pool is None:
                    checked: Any = self._check(batch, matrix, buffer)
                else:
                    checked = pool.submit(self._check, batch, matrix, buffer)
                if not _put(incoming, checked, self.stop):
                    return
            _put(incoming, _END, self.stop)
        except OSError as error:  # a disk or file failing under the reader: no bug of ours
            failure = InputError(f"{reader.source}: cannot read: {error.strerror or error}")
            _put(incoming, _Failure(failure), self.stop)
        except BaseException as error:  # handed to the scoring thread, raised there
            _put(incoming, _Failure(error), self.stop)

    def _checked(
        self, incoming: queue.Queue[Any], producer: threading.Thread
    ) -> Iterator[_Checked]:
        """The checked batches in file order (waiting for those checked on the pool)."""
        while True:
            if self.errors:
                raise self.errors[0]
            try:
                item = incoming.get(timeout=0.1)
            except queue.Empty:
                if self.errors:
                    raise self.errors[0] from None
                if not producer.is_alive() and incoming.empty():
                    raise RuntimeError("the reader thread ended without a word") from None
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item.result() if isinstance(item, Future) else item

    def _consume(
        self,
        outgoing: queue.Queue[Any],
        reader: Any,
        on_progress: Callable[[ScoreProgress], None] | None,
    ) -> None:
        try:
            while not self.stop.is_set():
                try:
                    item = outgoing.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                self._write(item)
                if on_progress is not None:
                    written = item.written
                    on_progress(
                        ScoreProgress(
                            written.progress, reader.total, reader.unit, written.rows_so_far
                        )
                    )
        except OSError as error:  # a full disk, a folder that went away
            self.errors.append(
                InputError(f"{self.target}: cannot write: {error.strerror or error}")
            )
            self.stop.set()
        except BaseException as error:
            self.errors.append(error)
            self.stop.set()

    def _close_files(self) -> None:
        assert self.writer is not None
        try:
            self.writer.close()
            if self.quarantine is not None:
                self.quarantine.flush()
                os.fsync(self.quarantine.fileno())
                self.quarantine.close()
        except OSError as error:
            raise InputError(f"{self.target}: cannot write: {error.strerror or error}") from error

    # -- one batch

    def _check(
        self, batch: Batch, matrix: np.ndarray | None, buffer: np.ndarray | None
    ) -> _Checked:
        """Check a batch against the contract, set its invalid rows aside (unless they fail
        the run) and count its drift: no shared state, so batches are checked at once.
        ``buffer`` holds ``matrix``, if it came from ``self.buffers``."""
        options = self.options
        if matrix is not None:
            report = check_matrix(
                self.engine.contract,
                matrix,
                strict_range=options.strict_range,
                source=batch.source,
                first_row=batch.first_row,
            )
        else:
            report = check_columns(
                self.engine.contract,
                batch.columns or {},
                rows=batch.rows,
                strict_range=options.strict_range,
                source=batch.source,
                first_row=batch.first_row,
                dtype=self.engine.input_dtype.type,
            )
        valid = report.matrix
        keep: np.ndarray | None = None
        quarantined: list[str] = []
        if not report.passed and options.on_invalid != "fail":
            if self.quarantine_target is not None:
                invalid = np.flatnonzero(report.invalid)
                quarantined = _quarantine_lines(batch, report, invalid, self.features)
            keep = np.flatnonzero(~report.invalid)
            valid = valid[keep]
        every = _drift_stride(len(valid), options.drift_sample)
        counts = accumulate(self.no_counts, self.engine.baseline, valid[::every], self.features)
        return _Checked(
            batch.rows,
            batch.progress,
            batch.ids,
            report,
            valid,
            keep,
            every,
            counts,
            quarantined,
            buffer,
        )

    def _account(self, checked: _Checked) -> tuple[np.ndarray, _Written]:
        """Add a checked batch to the summary, in file order (calling thread): the first
        invalid row fails the run here."""
        summary, report = self.summary, checked.report
        summary.rows += checked.rows
        for name, count in report.out_of_range.items():
            before = summary.out_of_range.get(name)
            summary.out_of_range[name] = count if before is None else before.merge(count)
        if not report.passed:
            if self.options.on_invalid == "fail":
                report.raise_if_invalid(FAIL_HINT)
            summary.invalid_rows += int(np.count_nonzero(report.invalid))
            for name, kinds in report.counts().items():
                totals = summary.violations.setdefault(name, {})
                for kind, count in kinds.items():
                    totals[kind] = totals.get(kind, 0) + count
            room = self.options.examples - len(summary.examples)
            if room > 0:
                summary.examples.extend(report.violations(limit=room))
        self.feature_counts = self.feature_counts.merge(checked.counts)
        ids, keep = checked.ids, checked.keep
        if ids is not None and keep is not None:
            ids = _Ids(ids.name, ids.kind, ids.values[keep], ids.missing[keep])
        elif ids is not None:
            ids = _Ids(ids.name, ids.kind, ids.values, ids.missing)
        written = _Written(
            ids, checked.quarantined, checked.drift_every, checked.progress, summary.rows
        )
        return checked.matrix, written

    def _run_model(
        self,
        matrix: np.ndarray,
        written: _Written,
        pool: ThreadPoolExecutor | None,
        buffer: np.ndarray | None,
    ) -> _Running:
        """Run the model on a checked batch's valid rows (calling thread): here, or in parts
        on the pool; ``buffer`` goes back to ``self.buffers`` once the model has read it."""
        if pool is None:
            running = _Running(written, [self.engine.run(matrix)])
            if buffer is not None:
                self.buffers.give_back(buffer)
            return running
        count = max(1, min(self.engine.concurrent_runs, len(matrix) // self.options.min_part_rows))
        bounds = np.linspace(0, len(matrix), count + 1).astype(int).tolist()
        parts = [
            pool.submit(self.engine.run, matrix[start:stop])
            for start, stop in itertools.pairwise(bounds)
        ]
        if buffer is not None:
            _when_all_done(parts, lambda: self.buffers.give_back(buffer))
        return _Running(written, parts)

    def _write(self, running: _Running) -> None:
        """Wait for a batch's predictions, count them for drift and write them (writer)."""
        predictions = Predictions.concatenate(
            [p.result() if isinstance(p, Future) else p for p in running.parts]
        )
        written = running.written
        self.summary.scored += len(predictions)
        every = written.drift_every
        self.prediction_counts = accumulate(
            self.prediction_counts,
            self.engine.baseline,
            _NO_ROWS,
            (),
            labels=None if predictions.labels is None else predictions.labels[::every],
            values=None if predictions.values is None else predictions.values[::every],
        )
        columns = self.engine.output_columns(predictions)
        ids = written.ids
        if self.options.id_column is not None:
            assert ids is not None
            columns.insert(0, OutputColumn(self.options.id_column, ids.values, ids.missing))
        assert self.writer is not None
        self.writer.write(columns)
        if written.quarantined:
            self.quarantine.write("".join(written.quarantined))


@dataclass(frozen=True, eq=False)
class _Ids:
    name: str
    kind: str
    values: np.ndarray
    missing: np.ndarray


@dataclass(frozen=True, eq=False)
class _Checked:
    """A batch checked: its size and ids, its report, the valid rows' features (and which rows
    those are, when some were set aside), their drift counts and the quarantine lines of the
    others. (Not the batch itself: its columns as read would wait in the queue too.)"""

    rows: int
    progress: int
    ids: Column | None
    report: ContractReport
    matrix: np.ndarray
    keep: np.ndarray | None
    drift_every: int
    counts: DriftCounts
    quarantined: list[str]
    buffer: np.ndarray | None  # holds the features, to be given back once they are scored


@dataclass(frozen=True, eq=False)
class _Written:
    """What the writer needs of a batch besides its predictions (not its features: those go
    as soon as the model has read them, rather than wait in the queue to the writer)."""

    ids: _Ids | None
    quarantined: list[str]
    drift_every: int
    progress: int
    rows_so_far: int


@dataclass(frozen=True, eq=False)
class _Running:
    """A batch handed to the model: its predictions, whole or in parts (futures of the pool)."""

    written: _Written
    parts: Sequence[Predictions | Future[Predictions]]


_NO_ROWS = np.zeros((0, 0))


def _drift_stride(rows: int, sample: int | None) -> int:
    """Count every k-th row for drift so that at most ``sample`` rows of a batch are counted."""
    if not sample or rows <= sample:
        return 1
    return -(-rows // sample)


def _quarantine_lines(
    batch: Batch, report: ContractReport, invalid: np.ndarray, features: tuple[str, ...]
) -> list[str]:
    """One JSON object per invalid row: its row number, the reasons, the id and the features."""
    reasons = report.reasons()
    lines = []
    for i in invalid.tolist():
        record: dict[str, Any] = {ROW_KEY: batch.first_row + i, REASON_KEY: reasons.get(i, "")}
        if batch.ids is not None:
            record[batch.ids.name] = _cell(batch.ids, i)
        if batch.matrix is not None:
            for j, name in enumerate(features):
                record[name] = _number(batch.matrix[i, j])
        else:
            for name, column in (batch.columns or {}).items():
                record[name] = _cell(column, i)
        lines.append(json.dumps(record, allow_nan=False, default=str) + "\n")
    return lines


def _cell(column: Any, i: int) -> Any:
    if column.missing[i]:
        return None
    value = column.values[i]
    if isinstance(value, np.generic):
        value = value.item()
    return _number(value) if isinstance(value, float) else value


def _number(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value
