"""Optimization passes, each a small unit with one job, registered in one explicit table.

An ONNX pass takes a model and a :class:`PassContext` and gives a new model, or says why it
does not apply (:class:`PassSkipped`); it never changes its input. Heavy imports (onnxruntime's
quantizer, onnxconverter-common) live inside the passes. Structured pruning works on the
scikit-learn MLP before conversion and lives in :mod:`edgeml.converters.passes.prune`.

Which passes a candidate runs is decided by :mod:`edgeml.converters.candidates`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeml.toolkit.profiles import HardwareProfile


class PassSkipped(Exception):
    """A pass does not apply to this model; the message says why."""


class PassFailed(Exception):
    """A pass ran but its output is unusable (does not load or does not run)."""


@dataclass(frozen=True)
class PassContext:
    """What a pass may need beyond the model."""

    profile: HardwareProfile
    calibration: np.ndarray | None = None
    input_name: str = "features"
    params: dict[str, Any] = field(default_factory=dict)


OnnxPass = Callable[[Any, PassContext], Any]


def _registry() -> dict[str, OnnxPass]:
    import onnxruntime

    from edgeml.converters.passes import fp16, graph, prune, quantize

    onnxruntime.set_default_logger_severity(3)  # passes make throwaway sessions: errors only

    return {
        "simplify": graph.simplify,
        "quantize-dynamic": quantize.quantize_dynamic_int8,
        "quantize-static": quantize.quantize_static_qdq,
        "fp16": fp16.convert_to_fp16,
        "prune-magnitude": prune.prune_magnitude,
    }


def onnx_pass(name: str) -> OnnxPass:
    """The ONNX pass registered under ``name``.

    Raises:
        KeyError: no such pass.
    """
    return _registry()[name]
