"""fp16 conversion with onnxconverter-common, keeping float32 inputs and outputs."""

from __future__ import annotations

import warnings
from typing import Any

from edgeml.converters.passes import PassContext, PassSkipped
from edgeml.converters.passes.graph import annotate_ml_output_types, remove_noop_casts

FLOAT = 1


def _float_initializers(model: Any) -> int:
    return sum(1 for i in model.graph.initializer if i.data_type == FLOAT)


def convert_to_fp16(model: Any, context: PassContext) -> Any:
    """Convert float32 weights and arithmetic to float16; inputs and outputs stay float32.

    Tree ensembles (``ai.onnx.ml`` operators) have no float16 kernels and are left out by the
    converter; a model with nothing else to convert is skipped.
    """
    from onnxconverter_common import float16

    convertible = [
        n
        for n in model.graph.node
        if n.domain in ("", "ai.onnx") and n.op_type in ("MatMul", "Gemm", "Conv", "Add", "Mul")
    ]
    if not convertible or _float_initializers(model) == 0:
        ops = sorted({n.op_type for n in model.graph.node if n.domain == "ai.onnx.ml"})
        detail = (
            f"; its work is done by {', '.join(ops)}, which has no float16 kernels" if ops else ""
        )
        raise PassSkipped(f"no float arithmetic with weights to convert{detail}")
    cleaned = annotate_ml_output_types(remove_noop_casts(model))
    with warnings.catch_warnings():
        # Weights below fp16's smallest normal number are clamped; the accuracy gate judges.
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(cleaned, keep_io_types=True)
