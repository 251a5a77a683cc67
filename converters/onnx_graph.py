"""ONNX models on the build side: load and check an ``.onnx`` file, normalise generated names,
describe inputs and outputs as the manifest's tensor specs.

Normalisation makes a model's bytes a function of its content (DESIGN.md, "Deterministic
bundles"): opset imports de-duplicated (skl2onnx can list the default domain twice, which
onnxruntime's quantizer refuses), limited to the domains the nodes use (onnxruntime's offline
optimizer imports every domain it knows) and sorted, the graph named ``edgeml``, doc strings
and inferred intermediate shapes dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeml.toolkit.errors import ConversionError
from edgeml.toolkit.manifest import TensorSpec

MAX_ONNX_BYTES = 2 * 1024**3

_ELEMENT_TYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "float64",
}


def load_onnx(path: Path) -> Any:
    """Load and check an ``.onnx`` file.

    Raises:
        ConversionError: the file is missing, too large, not an ONNX model, or fails the checker.
    """
    import onnx

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConversionError(f"model file {path} does not exist") from None
    if size > MAX_ONNX_BYTES:
        raise ConversionError(f"{path} is {size} bytes, over the 2 GiB a single ONNX file can hold")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as error:
        raise ConversionError(
            f"{path} is not a valid ONNX model: {str(error).splitlines()[0]}"
        ) from error
    for initializer in model.graph.initializer:
        if initializer.data_location == 1:  # EXTERNAL
            raise ConversionError(f"{path} keeps weights in external files; save it as one file")
    return model


def default_opset(model: Any) -> int:
    """The version of the default (``ai.onnx``) domain the model imports."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions) if versions else 0


def normalise(model: Any) -> Any:
    """A copy of the model with generated names and import order made deterministic."""
    import onnx

    result = onnx.ModelProto()
    result.CopyFrom(model)
    used = {"" if n.domain == "ai.onnx" else n.domain for n in result.graph.node} | {""}
    versions: dict[str, int] = {}
    for entry in result.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        if domain in used:
            versions[domain] = max(versions.get(domain, 0), entry.version)
    del result.opset_import[:]
    for domain in sorted(versions):
        result.opset_import.append(onnx.helper.make_opsetid(domain, versions[domain]))
    result.graph.name = "edgeml"
    del result.graph.value_info[:]  # inferred shapes of intermediate tensors: runtimes redo it
    result.doc_string = ""
    result.graph.doc_string = ""
    for node in result.graph.node:
        node.doc_string = ""
    return result


def _shape(value_info: Any) -> tuple[int | str | None, ...]:
    dims = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(str(dim.dim_param))
        else:
            dims.append(None)
    return tuple(dims)


def _dtype(value_info: Any) -> str:
    if not value_info.type.HasField("tensor_type"):
        raise ConversionError(
            f"model input/output {value_info.name!r} is not a tensor (a ZipMap or sequence?)"
        )
    element = value_info.type.tensor_type.elem_type
    return _ELEMENT_TYPES.get(element, f"onnx-type-{element}")


def graph_inputs(model: Any) -> list[TensorSpec]:
    """The model's real inputs (initializers listed as inputs are left out)."""
    initializers = {i.name for i in model.graph.initializer}
    return [
        TensorSpec(v.name, _dtype(v), _shape(v))
        for v in model.graph.input
        if v.name not in initializers
    ]


def graph_outputs(model: Any) -> list[TensorSpec]:
    """The model's outputs."""
    return [TensorSpec(v.name, _dtype(v), _shape(v)) for v in model.graph.output]


def input_width(spec: TensorSpec) -> int | None:
    """How many columns an input takes: its second dimension when fixed, 1 for a vector."""
    if len(spec.shape) == 1:
        return 1
    if len(spec.shape) == 2 and isinstance(spec.shape[1], int):
        return spec.shape[1]
    return None


def assign_features(
    inputs: Sequence[TensorSpec], columns: Sequence[str], source: str
) -> list[TensorSpec]:
    """Say which data columns feed which input (DESIGN.md, "Validation data is required").

    One input takes every feature column in file order; several inputs take columns by input
    name, one column each.

    Raises:
        InputError-family ConversionError: widths or names do not match the data.
    """
    if len(inputs) == 1:
        spec = inputs[0]
        width = input_width(spec)
        if width is not None and width != len(columns):
            raise ConversionError(
                f"the model's input {spec.name!r} takes {width} features; {source} has "
                f"{len(columns)} feature columns besides the target ({', '.join(columns)})"
            )
        return [TensorSpec(spec.name, spec.dtype, spec.shape, tuple(columns))]
    missing = [s.name for s in inputs if s.name not in columns]
    if missing:
        raise ConversionError(
            f"the model has several inputs, fed by columns of the same name; {source} lacks "
            f"{', '.join(missing)}"
        )
    for spec in inputs:
        width = input_width(spec)
        if width not in (1, None):
            raise ConversionError(
                f"input {spec.name!r} takes {width} columns; a named input takes one"
            )
    return [TensorSpec(s.name, s.dtype, s.shape, (s.name,)) for s in inputs]
