"""The scoring engine: a verified bundle's model, its data contract and its drift baseline.

``ScoringEngine.open`` verifies a bundle against a trust store before anything of it is used,
then creates an onnxruntime session with the bundle's hardware-profile providers and threads
(a provider this host lacks is left out with a warning: the CPU provider is always there).
``predict`` takes a numpy array, a mapping of columns, rows of ``{column: value}`` or a
pyarrow table, checks it against the contract and answers labels and probabilities
(classifiers) or values (regressors). ``edgeml score`` (``edgeml.toolkit.batch_scoring``)
and the device agent both score through it.

What this module leaves to others: reading and writing files, deciding what to do with
invalid rows of a file, and drift accumulation over many batches.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeml.toolkit.batch_io import columns_from_arrow, columns_from_mapping, columns_from_rows
from edgeml.toolkit.batch_writers import OutputColumn, OutputField
from edgeml.toolkit.bundle import BASELINE, DEFAULT_LIMITS, MODEL, BundleLimits, verify_bundle
from edgeml.toolkit.contract import (
    ContractReport,
    DataContract,
    check_columns,
    check_matrix,
    clean_check,
)
from edgeml.toolkit.drift import Baseline
from edgeml.toolkit.errors import BundleError, InputError
from edgeml.toolkit.manifest import Manifest
from edgeml.toolkit.profiles import HardwareProfile
from edgeml.toolkit.runtime import feeds_for, make_session, usable_providers
from edgeml.toolkit.trust import TrustStore, load_trust_store


@dataclass(frozen=True, eq=False)
class Predictions:
    """What the model answered for a batch of rows.

    Attributes:
        labels: a classifier's predicted class per row (the model's label dtype).
        probabilities: a classifier's class probabilities, shape ``(rows, classes)``, columns
            in ``classes`` order; None if the model gives none.
        values: a regressor's predicted value per row.
        classes: a classifier's class labels, in probability-column order.
    """

    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    values: np.ndarray | None = None
    classes: tuple[Any, ...] = ()

    def __len__(self) -> int:
        for array in (self.labels, self.values, self.probabilities):
            if array is not None:
                return len(array)
        return 0

    def take(self, index: np.ndarray) -> Predictions:
        """The predictions of a subset of rows."""
        return Predictions(
            *(
                None if a is None else a[index]
                for a in (self.labels, self.probabilities, self.values)
            ),
            classes=self.classes,
        )

    @classmethod
    def concatenate(cls, parts: Sequence[Predictions]) -> Predictions:
        """The predictions of consecutive runs as one, rows in order."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return cls(
            *(
                None
                if getattr(first, name) is None
                else np.concatenate([getattr(p, name) for p in parts])
                for name in ("labels", "probabilities", "values")
            ),
            classes=first.classes,
        )

    def to_columns(self) -> dict[str, np.ndarray]:
        """The output columns: ``label`` and ``probability_<class>`` each, or ``value``."""
        if self.values is not None:
            return {"value": self.values}
        columns: dict[str, np.ndarray] = {}
        if self.labels is not None:
            columns["label"] = self.labels
        if self.probabilities is not None:
            for i, name in enumerate(probability_columns(self.classes)):
                columns[name] = self.probabilities[:, i]
        return columns


def probability_columns(classes: Sequence[Any]) -> list[str]:
    """``probability_<class>`` for each class, in order."""
    return [f"probability_{c}" for c in classes]


class ConversionBuffers:
    """Matrices of one float type and width that batches are converted into, used again once
    given back.

    Converting each batch into fresh memory costs a page fault per page (the kernel zeroes
    every page it hands out), which took longer than the conversion itself: for a file's
    batches (``edgeml score``), and for the batches ``ScoringEngine.predict`` is given. A
    buffer taken is its taker's alone until given back; taking and giving back are safe on
    several threads.
    """

    def __init__(self, width: int, dtype: np.dtype, max_rows: int, keep: int | None = None) -> None:
        """Make an empty set of buffers.

        Args:
            width: the columns of every matrix.
            dtype: their float type.
            max_rows: the most rows a buffer holds; a larger matrix gets none.
            keep: how many buffers given back are kept (None: every one; a file scorer's
                are as many as its batches in flight).
        """
        self._width, self._dtype, self._max_rows, self._keep = width, dtype, max_rows, keep
        self._free: deque[np.ndarray] = deque()  # append and pop are atomic

    def take(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """A buffer with room for a matrix of ``shape``: one given back, if one is large
        enough, or a new one of ``rows`` rounded up to a power of two (``max_rows`` at most);
        None when no buffer would fit one."""
        if len(shape) != 2 or shape[1] != self._width or shape[0] > self._max_rows:
            return None
        rows = shape[0]
        while True:
            try:
                buffer = self._free.pop()
            except IndexError:  # none left (another thread may have taken the last)
                break
            if buffer.shape[0] >= rows:
                return buffer
        capacity = min(1 << max(rows - 1, 0).bit_length(), self._max_rows)
        return np.empty((capacity, self._width), dtype=self._dtype)

    def give_back(self, buffer: np.ndarray) -> None:
        """Return a buffer whose matrix nothing reads any more."""
        if self._keep is None or len(self._free) < self._keep:
            self._free.append(buffer)


class ScoringEngine:
    """A verified bundle ready to score rows; create it with :meth:`open`.

    Attributes:
        manifest: the bundle's verified manifest.
        profile: the hardware profile the bundle was built for (from its manifest).
        contract: the data contract, features in the model's input order.
        baseline: the drift reference.
        providers: the onnxruntime providers the session runs on.
        threads: the cores the model may use (0: every core): the session's intra-op
            threads, or with ``split_batches`` the runs at once.
        concurrent_runs: how many parts of a batch a file scorer runs at once, each on its own
            thread (1 unless the engine was opened with ``split_batches``).
        input_dtype: the float type the model reads (float32 unless an input is not); rows
            are checked against the contract as the model receives them.
        is_clean: whether a matrix of ``input_dtype`` (columns in input order) is certainly
            clean (``contract.CleanCheck``): what ``predict`` asks before it skips the full
            check and its report.
        warnings: what opening the bundle warned about (a missing execution provider).
    """

    def __init__(
        self,
        manifest: Manifest,
        model: bytes,
        baseline: Baseline,
        *,
        path: Path | None = None,
        key_id: str = "",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        split_batches: bool = False,
    ) -> None:
        self.manifest = manifest
        self.path = path
        self.key_id = key_id
        profile = _profile_of(manifest)
        self.profile = profile
        self.threads = profile.threads if threads is None else threads
        wanted = tuple(providers) if providers is not None else profile.execution_providers
        self.contract = _contract_in_input_order(manifest)
        self.baseline = baseline
        usable, self.warnings = usable_providers(wanted)
        session_threads, self.concurrent_runs = self.threads, 1
        if split_batches and usable[0] == CPU_PROVIDER:
            session_threads, self.concurrent_runs = 1, self.threads or usable_cores()
        self.session = scoring_session(
            model, usable, session_threads, profile.graph_optimization_level
        )
        for message in self.warnings:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        self.providers = tuple(self.session.get_providers())
        self._output_names = [o.name for o in self.session.get_outputs()]
        dtypes = {spec.dtype for spec in manifest.inputs}
        self.input_dtype = np.dtype(np.float32 if dtypes == {"float32"} else np.float64)
        probe = feeds_for(manifest.inputs, np.zeros((1, len(self.contract.features))))
        self._buffers = ConversionBuffers(  # what predict converts a float batch into
            len(self.contract.features),
            self.input_dtype,
            _BUFFER_MAX // max(1, len(self.contract.features) * self.input_dtype.itemsize),
            keep=_SPARE_BUFFERS,
        )
        self.is_clean = clean_check(self.contract, self.input_dtype)
        self._single_input = (  # one input in the engine's dtype: a matrix feeds it as it is
            manifest.inputs[0].name
            if len(probe) == 1 and next(iter(probe.values())).dtype == self.input_dtype
            else None
        )

    @classmethod
    def open(
        cls,
        bundle_path: str | os.PathLike[str],
        trust: TrustStore | str | os.PathLike[str],
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        limits: BundleLimits = DEFAULT_LIMITS,
        split_batches: bool = False,
    ) -> ScoringEngine:
        """Verify a bundle, then load its model, contract and baseline.

        Args:
            bundle_path: the ``.edgeml`` file.
            trust: a trust store, or the path of a ``.pub`` file or a folder of them.
            threads: the cores the model may use: the session's intra-op threads, or with
                ``split_batches`` the parts run at once; None takes the bundle's profile (0:
                every core).
            providers: execution providers in order of preference; None takes the profile's.
            limits: size bounds for verification.
            split_batches: for scoring files on CPU: the session runs on one thread and a
                file scorer runs ``threads`` parts of each batch at once (no synchronisation
                inside the model's operators, and a core taken by reading or writing holds up
                one part, not every operator). Without a CPU provider first, or for a caller
                scoring one request at a time, leave it off: the session uses the threads.

        Returns:
            The engine.

        Raises:
            BundleError: the bundle does not verify (nothing of it is loaded), or its
                baseline or profile is malformed.
            ConfigError: the trust store cannot be loaded.
        """
        store = trust if isinstance(trust, TrustStore) else load_trust_store(trust)
        verified = verify_bundle(bundle_path, store, limits)
        try:
            baseline = Baseline.from_dict(verified.json_entry(BASELINE))
        except ValueError as error:
            raise BundleError(f"{bundle_path}: {error}") from None
        return cls(
            verified.manifest,
            verified.entries[MODEL],
            baseline,
            path=verified.path,
            key_id=verified.key_id,
            threads=threads,
            providers=providers,
            split_batches=split_batches,
        )

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    @functools.cached_property
    def features(self) -> tuple[str, ...]:
        """The features the model reads, in input order."""
        return tuple(f.name for f in self.contract.features)

    @functools.cached_property
    def task(self) -> str:
        return self.manifest.task

    @functools.cached_property
    def classes(self) -> tuple[Any, ...]:
        return tuple(self.manifest.classes or ())

    def output_fields(self) -> list[OutputField]:
        """The output columns a file of predictions holds (id column aside)."""
        if self.task != "classification":
            return [OutputField("value", "float32")]
        label_kind = (
            "integer"
            if all(isinstance(c, int) and not isinstance(c, bool) for c in self.classes)
            else "string"
        )
        width = max((len(str(c)) for c in self.classes), default=0)
        fields = [OutputField("label", label_kind, width if label_kind == "string" else 0)]
        if len(self._output_names) > 1:
            fields += [OutputField(name, "float32") for name in probability_columns(self.classes)]
        return fields

    def output_columns(self, predictions: Predictions) -> list[OutputColumn]:
        """Predictions as the columns of ``output_fields``, in order."""
        columns = predictions.to_columns()
        return [OutputColumn(f.name, columns[f.name]) for f in self.output_fields()]

    # ------------------------------------------------------------------------- checking

    def check(
        self,
        data: Any,
        *,
        strict_range: bool = False,
        source: str = "",
        first_row: int = 1,
        ignore: Sequence[str] = (),
    ) -> ContractReport:
        """Check rows against the data contract (see :meth:`predict` for what ``data`` is).

        Returns:
            The report: violations by row and column, and the features as a matrix.

        Raises:
            InputError: ``data`` is of no kind this engine reads, or malformed.
        """
        if isinstance(data, np.ndarray) and data.dtype.names is None:
            matrix = data.reshape(1, -1) if data.ndim == 1 else data
            if matrix.ndim != 2 or matrix.shape[1] != len(self.contract.features):
                raise InputError(
                    f"{source or 'input'}: expected {len(self.contract.features)} columns "
                    f"(the features {', '.join(self.features)}), got an array of shape {data.shape}"
                )
            if matrix.dtype.kind not in "fiub":
                raise InputError(f"{source or 'input'}: expected numbers, got dtype {matrix.dtype}")
            return check_matrix(
                self.contract,
                self.as_input(matrix),
                strict_range=strict_range,
                source=source,
                first_row=first_row,
            )
        columns = _columns(data)
        rows = len(next(iter(columns.values()))) if columns else 0
        return check_columns(
            self.contract,
            columns,
            rows=rows,
            strict_range=strict_range,
            source=source,
            first_row=first_row,
            ignore=ignore,
            dtype=self.input_dtype.type,
        )

    def as_input(self, matrix: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """A numeric matrix in the model's float type (no copy when it already is).

        Integer and boolean features keep their values exactly in float32 up to 2**24; the
        contract check sees the values the model will receive.

        Args:
            matrix: ``(rows, features)``, any real or boolean dtype.
            out: where a conversion goes, if one is needed: a C-contiguous matrix of the
                model's float type with at least ``rows`` rows (the result is then its first
                ``rows`` rows). Without it, a new array.
        """
        if matrix.dtype == self.input_dtype:
            return matrix
        if matrix.dtype.kind != "f" and self.input_dtype != np.float64:
            matrix = matrix.astype(np.float64)  # then rounded once, as the model's type
        if out is None:
            return matrix.astype(self.input_dtype)
        converted = out[: matrix.shape[0]]
        np.copyto(converted, matrix, casting="unsafe")
        return converted

    # ------------------------------------------------------------------------- scoring

    def predict(self, data: Any, *, strict_range: bool = False) -> Predictions:
        """Check rows against the contract and run the model on them.

        Args:
            data: one of: a 2-D numpy array whose columns are the features in order (a 1-D
                array is one row); a mapping of column name to values (numpy arrays, lists,
                or scalars for one row); a list of rows, each a mapping of column to value;
                a pyarrow ``Table`` or ``RecordBatch``. Columns the contract does not know
                are passed over.
            strict_range: a value outside the contract's range makes its row invalid.

        Returns:
            Labels and probabilities, or values.

        Raises:
            ContractViolation: a row breaks the contract; the message names row and column,
                ``error.report`` lists every violation.
            InputError: ``data`` is of no kind this engine reads.
        """
        if (  # a float matrix: the request path, without a report if it is clean
            isinstance(data, np.ndarray)
            and data.dtype.kind == "f"
            and data.ndim == 2
            and data.shape[0] > 0
            and data.shape[1] == len(self.contract.features)
        ):
            if data.dtype == self.input_dtype:  # what the full check would look at, too
                if self.is_clean(data):
                    return self.run(data)
            else:
                # Into a kept matrix, which never leaves predict: a batch that is not clean
                # is checked again from ``data``, into a matrix of its own.
                buffer = self._buffers.take(data.shape) if len(data) > _BUFFERED_ROWS_MIN else None
                try:
                    matrix = self.as_input(data, out=buffer)
                    if self.is_clean(matrix):
                        return self.run(matrix)
                finally:
                    if buffer is not None:
                        self._buffers.give_back(buffer)
        report = self.check(data, strict_range=strict_range)
        report.raise_if_invalid()
        return self.run(report.matrix)

    def run(self, matrix: np.ndarray) -> Predictions:
        """Run the model on checked rows: a float matrix of the features, in input order."""
        if matrix.shape[0] == 0:
            return self._empty()
        if (
            self._single_input is not None
            and matrix.dtype == self.input_dtype
            and matrix.flags.c_contiguous
        ):
            feeds = {self._single_input: matrix}
        else:
            feeds = feeds_for(self.manifest.inputs, matrix)
        raw = self.session.run(self._output_names, feeds)
        if self.task == "classification":
            labels = np.asarray(raw[0]).ravel()
            probabilities = None
            if len(raw) > 1:
                probabilities = np.asarray(raw[1])
                if probabilities.ndim == 1:
                    probabilities = probabilities.reshape(-1, 1)
            return Predictions(labels=labels, probabilities=probabilities, classes=self.classes)
        values = np.asarray(raw[0])
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        return Predictions(values=values)

    def _empty(self) -> Predictions:
        if self.task == "classification":
            kind = self.output_fields()[0].kind
            labels = np.zeros(0, dtype=np.int64 if kind == "integer" else object)
            return Predictions(
                labels=labels,
                probabilities=np.zeros((0, len(self.classes)), dtype=np.float32),
                classes=self.classes,
            )
        return Predictions(values=np.zeros(0, dtype=np.float32))


CPU_PROVIDER = "CPUExecutionProvider"


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


IDLE_WORKERS_SLEEP = {"session.intra_op.allow_spinning": "0"}

_BUFFERED_ROWS_MIN = 64  # fewer rows are converted into a fresh matrix (small enough to be cheap)
_BUFFER_MAX = 4 * 1024 * 1024  # the largest conversion matrix an engine keeps for reuse
_SPARE_BUFFERS = 4  # conversion matrices an engine keeps (one per predict call at once)


def scoring_session(
    model: bytes,
    providers: Sequence[str],
    threads: int,
    optimization_level: str = "all",
) -> ort.InferenceSession:
    """A session for scoring on ``providers`` (those this host has: see
    ``edgeml.toolkit.runtime.usable_providers``), threads and graph optimization, as
    ``edgeml.toolkit.runtime.make_session`` makes them, with idle intra-op workers that sleep
    instead of spinning.

    A scorer runs its own reader and writer threads beside onnxruntime; workers that spin
    between runs would take their cores (measured in docs/benchmarks.md, "Score").
    """
    return make_session(model, providers, threads, optimization_level, IDLE_WORKERS_SLEEP)


def _columns(data: Any) -> dict[str, Any]:
    if isinstance(data, np.ndarray) and data.dtype.names is not None:
        return columns_from_mapping({name: data[name] for name in data.dtype.names})
    if isinstance(data, Mapping):
        if not data:
            raise InputError("no columns given")
        return columns_from_mapping(data)
    if hasattr(data, "column_names") and hasattr(data, "column"):
        return columns_from_arrow(data)
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return columns_from_rows(data)
    raise InputError(
        f"cannot score a {type(data).__name__}: give a numpy array, a mapping of columns, "
        "a list of rows or a pyarrow table"
    )


def _profile_of(manifest: Manifest) -> HardwareProfile:
    settings = dict(manifest.profile_settings)
    settings.pop("source", None)
    try:
        return HardwareProfile.from_dict(settings, source=f"{manifest.bundle_id} manifest")
    except Exception as error:  # ProfileError, or a manifest older than the profile format
        raise BundleError(
            f"{manifest.bundle_id}: the manifest's hardware profile is malformed: {error}"
        ) from None


def _contract_in_input_order(manifest: Manifest) -> DataContract:
    """The contract with its features in the order the model's inputs take them."""
    contract = DataContract.from_dict(manifest.contract)
    by_name = {spec.name: spec for spec in contract.features}
    order = manifest.features
    if set(order) != set(by_name) or len(order) != len(by_name):
        raise BundleError(
            f"{manifest.bundle_id}: the data contract's features ({', '.join(by_name)}) are not "
            f"the model's inputs ({', '.join(order)})"
        )
    return DataContract(tuple(by_name[name] for name in order))
