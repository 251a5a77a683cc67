"""int8 quantization with onnxruntime: dynamic (weights ahead, activations at run time) and
static QDQ (activations calibrated on rows)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from edgeml.converters.passes import PassContext, PassSkipped

QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv")
CALIBRATION_ROWS = 512
# skl2onnx graphs start with ai.onnx.ml operators (Scaler, Normalizer) whose output types
# onnx's shape inference does not give; every tensor edgeml quantizes is float32.
_EXTRA_OPTIONS = {"DefaultTensorType": 1}


def _weights_to_quantize(model: Any) -> int:
    initializers = {i.name for i in model.graph.initializer}
    return sum(
        1
        for node in model.graph.node
        if node.op_type in QUANTIZABLE_OPS and any(name in initializers for name in node.input)
    )


def _require_quantizable(model: Any) -> None:
    if _weights_to_quantize(model) == 0:
        ops = sorted({n.op_type for n in model.graph.node if n.domain == "ai.onnx.ml"})
        detail = f" (its work is done by {', '.join(ops)})" if ops else ""
        raise PassSkipped(f"no MatMul, Gemm or Conv with weights to quantize{detail}")


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "qint8" else QuantType.QUInt8


def _run_in_folder(model: Any, run: Any) -> Any:
    import onnx

    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "in.onnx")
        target = os.path.join(folder, "out.onnx")
        onnx.save_model(model, source)
        run(source, target)
        return onnx.load_model(target)


def _quiet_quantizer() -> None:
    import logging

    logging.getLogger().setLevel(logging.ERROR)


def quantize_dynamic_int8(model: Any, context: PassContext) -> Any:
    """Dynamic int8 quantization of the weights of MatMul/Gemm/Conv, as the profile says."""
    from onnxruntime.quantization import quantize_dynamic

    _require_quantizable(model)
    _quiet_quantizer()
    settings = context.profile.quantization
    return _run_in_folder(
        model,
        lambda source, target: quantize_dynamic(
            source,
            target,
            weight_type=_quant_type(settings.weight_type),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            op_types_to_quantize=list(QUANTIZABLE_OPS),
            extra_options=_EXTRA_OPTIONS,
        ),
    )


class RowsReader:
    """Feeds calibration rows to onnxruntime's calibrator in batches of one size.

    The histogram calibrators (entropy, percentile) stack the batches' outputs and fail on a
    ragged last batch, so rows past the last full batch are left out.
    """

    def __init__(self, rows: np.ndarray, input_name: str, batch: int = 64) -> None:
        batch = max(1, min(batch, len(rows)))
        usable = len(rows) - len(rows) % batch
        self._batches = [
            {input_name: np.ascontiguousarray(rows[i : i + batch], dtype=np.float32)}
            for i in range(0, usable, batch)
        ]
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self._batches):
            return None
        self._index += 1
        return self._batches[self._index - 1]

    def rewind(self) -> None:
        self._index = 0


def quantize_static_qdq(model: Any, context: PassContext) -> Any:
    """Static int8 quantization in QDQ form, calibrated on the calibration rows."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    _require_quantizable(model)
    if context.calibration is None or len(context.calibration) == 0:
        raise PassSkipped("static quantization needs calibration rows")
    _quiet_quantizer()
    settings = context.profile.quantization
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[settings.calibration_method]
    rows = np.nan_to_num(context.calibration[:CALIBRATION_ROWS])
    reader = RowsReader(rows, context.input_name)
    return _run_in_folder(
        model,
        lambda source, target: quantize_static(
            source,
            target,
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=_quant_type(settings.activation_type),
            weight_type=_quant_type(settings.weight_type),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            calibrate_method=method,
            op_types_to_quantize=list(QUANTIZABLE_OPS),
            extra_options=_EXTRA_OPTIONS,
        ),
    )
