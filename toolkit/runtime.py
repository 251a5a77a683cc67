"""Running a bundle's ONNX model with onnxruntime: sessions per hardware profile, outputs by role.

The build uses it to measure and self-test what it bundles; the scoring engine and the agent
use it to serve. It knows the output convention of a bundle (``docs/bundle-format.md``): a
classifier's outputs are ``[label, probabilities]``, a regressor's ``[value]``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from edgeml.toolkit.manifest import Manifest, TensorSpec

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_NUMPY_DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
}


@dataclass(frozen=True)
class ModelOutputs:
    """What a model answered for a batch: labels and probabilities, or values."""

    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    values: np.ndarray | None = None

    def take(self, index: np.ndarray | Sequence[int]) -> ModelOutputs:
        """The outputs of a subset of rows."""
        return ModelOutputs(
            *(
                None if a is None else a[np.asarray(index)]
                for a in (self.labels, self.probabilities, self.values)
            )
        )


def available_providers(wanted: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split a profile's providers into those this onnxruntime has and those it lacks."""
    have = set(ort.get_available_providers())
    return [p for p in wanted if p in have], [p for p in wanted if p not in have]


def usable_providers(wanted: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """The profile's providers this host has, in order, with the CPU provider always last,
    and a note for each one it lacks (so a session can be created on any host)."""
    usable, missing = available_providers(wanted)
    if "CPUExecutionProvider" not in usable:
        usable.append("CPUExecutionProvider")
    notes: tuple[str, ...] = ()
    if missing:
        notes = (
            f"execution provider(s) {', '.join(missing)} not available on this host; "
            f"running on {', '.join(usable)}",
        )
    return usable, notes


def make_session(
    model: bytes | str | os.PathLike[str],
    providers: Sequence[str],
    threads: int = 0,
    optimization_level: str = "all",
    config: Mapping[str, str] | None = None,
) -> ort.InferenceSession:
    """An inference session on exactly ``providers`` (see :func:`usable_providers`).

    Args:
        model: the model's bytes or path.
        providers: onnxruntime provider names this host has, in order.
        threads: intra-op threads; 0 lets onnxruntime use every core.
        optimization_level: ``disable``, ``basic``, ``extended`` or ``all``.
        config: onnxruntime session config entries (e.g. idle workers that sleep).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = _OPTIMIZATION_LEVELS[optimization_level]
    options.log_severity_level = 3
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, sess_options=options, providers=list(providers))


def create_session(
    model: bytes | str | os.PathLike[str],
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 0,
    optimization_level: str = "all",
    config: Mapping[str, str] | None = None,
) -> ort.InferenceSession:
    """An inference session on the providers this host has, in the profile's order.

    A provider this onnxruntime lacks is left out with a ``RuntimeWarning``; the CPU
    provider is always last, so a session is created on any host. Arguments as
    :func:`make_session`.
    """
    usable, notes = usable_providers(providers)
    for note in notes:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    return make_session(model, usable, threads, optimization_level, config)


def feeds_for(inputs: Sequence[TensorSpec], matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Split a feature matrix (columns in input order) into the model's named inputs."""
    feeds: dict[str, np.ndarray] = {}
    start = 0
    for spec in inputs:
        width = len(spec.features)
        dtype = _NUMPY_DTYPES.get(spec.dtype, np.float32)
        feeds[spec.name] = np.ascontiguousarray(matrix[:, start : start + width], dtype=dtype)
        start += width
    return feeds


def outputs_by_role(task: str, raw: Sequence[np.ndarray]) -> ModelOutputs:
    """Name a session's raw outputs by the bundle convention."""
    if task == "classification":
        labels = np.asarray(raw[0]).ravel()
        probabilities = np.asarray(raw[1], dtype=np.float64) if len(raw) > 1 else None
        return ModelOutputs(labels=labels, probabilities=probabilities)
    values = np.asarray(raw[0], dtype=np.float64)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    return ModelOutputs(values=values)


def run_model(
    session: ort.InferenceSession,
    inputs: Sequence[TensorSpec],
    task: str,
    matrix: np.ndarray,
) -> ModelOutputs:
    """Run a session on a feature matrix whose columns follow ``inputs``' features."""
    raw = session.run(None, feeds_for(inputs, matrix))
    return outputs_by_role(task, raw)


def run_manifest_model(
    session: ort.InferenceSession, manifest: Manifest, matrix: np.ndarray
) -> ModelOutputs:
    """Run a bundle's model on rows in the manifest's feature order."""
    return run_model(session, manifest.inputs, manifest.task, matrix)
