"""Graph passes: onnxruntime's offline graph optimization, and removal of no-op casts."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from edgeml.converters.passes import PassContext, PassFailed

# Offline optimization stops at "basic": its rewrites (constant folding, redundant node
# elimination, unused initializer removal) are standard ONNX and portable. "extended" and "all"
# produce onnxruntime- and host-specific fused operators; the device applies its own level
# (the profile's graph_optimization_level) when it creates its session.
OFFLINE_LEVELS = ("disable", "basic")


def simplify(model: Any, context: PassContext) -> Any:
    """Constant folding and removal of redundant nodes and unused initializers.

    Runs onnxruntime's offline optimizer at the profile's level, capped at ``basic``.
    """
    import onnx
    import onnxruntime as ort

    level = context.profile.graph_optimization_level
    if level not in OFFLINE_LEVELS:
        level = "basic"
    cleaned = remove_noop_casts(model)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "optimized.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            if level == "basic"
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        options.optimized_model_filepath = path
        options.log_severity_level = 3
        try:
            ort.InferenceSession(
                cleaned.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:
            raise PassFailed(f"onnxruntime could not optimize the model: {error}") from error
        optimized = onnx.load_model(path)
    _drop_unused_initializers(optimized)
    del optimized.graph.value_info[:]  # shapes inferred on the way: not needed, only bytes
    return optimized


def annotate_ml_output_types(model: Any) -> Any:
    """A copy whose ``ai.onnx.ml`` node outputs have their types in ``value_info``.

    onnx's shape inference gives no type to them. Without one the fp16 converter inserts no
    cast between a blocked float32 node (a Scaler) and the float16 MatMul it feeds, or casts an
    integer output (ArrayFeatureExtractor on the class labels) as if it were float. Their
    outputs take the element type of their first input.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {i.name: i.data_type for i in inferred.graph.initializer}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    result = onnx.ModelProto()
    result.CopyFrom(inferred)
    graph_outputs = {o.name for o in result.graph.output}
    for node in result.graph.node:
        if node.domain != "ai.onnx.ml" or not node.input or node.input[0] not in types:
            continue
        for output in node.output:
            if output not in types and output not in graph_outputs:
                types[output] = types[node.input[0]]
                result.graph.value_info.append(
                    onnx.helper.make_tensor_value_info(output, types[output], None)
                )
    return result


def _value_types(model: Any) -> dict[str, int]:
    annotated = annotate_ml_output_types(model)
    types: dict[str, int] = {i.name: i.data_type for i in annotated.graph.initializer}
    for value in [*annotated.graph.input, *annotated.graph.value_info, *annotated.graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return types


def remove_noop_casts(model: Any) -> Any:
    """A copy without ``Cast`` nodes whose input already has the target type.

    skl2onnx emits such casts (e.g. float to float after a Scaler); left in, fp16 conversion
    with float32 inputs wires the float32 input straight into a float16 node.
    """
    import onnx

    result = onnx.ModelProto()
    result.CopyFrom(model)
    types = _value_types(result)
    graph_outputs = {o.name for o in result.graph.output}
    renames: dict[str, str] = {}
    kept = []
    for node in result.graph.node:
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx"):
            target = next((a.i for a in node.attribute if a.name == "to"), None)
            source = renames.get(node.input[0], node.input[0])
            if (
                target is not None
                and types.get(source) == target
                and node.output[0] not in graph_outputs
            ):
                renames[node.output[0]] = source
                continue
        kept.append(node)
    for node in kept:
        for index, name in enumerate(node.input):
            if name in renames:
                node.input[index] = renames[name]
    del result.graph.node[:]
    result.graph.node.extend(kept)
    return result


def _drop_unused_initializers(model: Any) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def check_runs(model: Any, width: int, input_name: str) -> None:
    """Load the model and run one row: a pass's output must be usable.

    Raises:
        PassFailed: onnxruntime refuses to load or to run it.
    """
    import numpy as np
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        session.run(None, {input_name: np.zeros((1, width), dtype=np.float32)})
    except Exception as error:
        message = str(error).splitlines()[0][:300]
        raise PassFailed(f"onnxruntime cannot run the result: {message}") from error
