"""The model a build starts from: a scikit-learn estimator or an ONNX file, loaded and described.

Knows how to run the source model on the validation rows (the reference every candidate is
measured against) and how to convert it to ONNX at an opset, normalised. Optimization is
left to the passes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeml.converters import onnx_graph, sklearn_frontend
from edgeml.toolkit.bundle import sha256_file
from edgeml.toolkit.errors import ConversionError, InputError
from edgeml.toolkit.manifest import TensorSpec


@dataclass(frozen=True)
class SourceModel:
    """The model as given: a scikit-learn estimator or an ONNX file, and how to run it."""

    path: Path
    sha256: str
    kind: str
    task: str
    classes: tuple[Any, ...] | None
    feature_names: tuple[str, ...] | None
    n_features: int | None
    sklearn: sklearn_frontend.SklearnModel | None = None
    onnx_model: Any = None
    type_name: str = ""


def _onnx_task(outputs: Sequence[TensorSpec], path: Path) -> str:
    if (
        len(outputs) >= 2
        and outputs[0].dtype in ("int64", "int32", "string")
        and outputs[1].dtype.startswith("float")
    ):
        return "classification"
    if len(outputs) == 1 and outputs[0].dtype.startswith("float"):
        return "regression"
    shown = ", ".join(f"{o.name}:{o.dtype}" for o in outputs)
    raise ConversionError(
        f"{path}: cannot tell the task from the outputs ({shown}); edgeml expects [label, "
        "probabilities] for a classifier (export with zipmap=False) or one float output "
        "for a regressor"
    )


def load_source_model(
    path: Path, trusted_types: Sequence[str] = (), warn: Callable[[str], None] | None = None
) -> SourceModel:
    """Load the model a build starts from.

    Raises:
        ConversionError: an unsupported file type or estimator, or a file that does not load.
    """
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    digest = sha256_file(path)
    if suffix == ".onnx":
        model = onnx_graph.load_onnx(path)
        outputs = onnx_graph.graph_outputs(model)
        return SourceModel(
            path,
            digest,
            "onnx",
            _onnx_task(outputs, path),
            None,
            None,
            None,
            onnx_model=model,
            type_name="ONNX model",
        )
    if suffix in sklearn_frontend.SKLEARN_SUFFIXES:
        estimator = sklearn_frontend.load_estimator(path, trusted_types, warn)
        described = sklearn_frontend.describe_estimator(estimator)
        return SourceModel(
            path,
            digest,
            "sklearn",
            described.task,
            described.classes,
            described.feature_names,
            described.n_features,
            sklearn=described,
            type_name=described.type_name,
        )
    raise InputError(
        f"model file {path}: unsupported type {suffix!r}; use .skops, .joblib, .pkl or .onnx"
    )


def to_onnx(source: SourceModel, opset: int, estimator: Any = None) -> tuple[Any, dict[str, Any]]:
    """The source (or a modified copy of its estimator) as a normalised ONNX model.

    Args:
        source: the loaded source model.
        opset: the highest default-domain opset the target runs.
        estimator: a replacement estimator of the same kind (e.g. pruned); scikit-learn only.

    Returns:
        The model and the record of the step that made it (for the manifest's passes).

    Raises:
        ConversionError: skl2onnx cannot convert it, or an ONNX source needs a higher opset.
    """
    if source.kind == "sklearn":
        assert source.sklearn is not None
        model_info = source.sklearn
        if estimator is not None:
            model_info = sklearn_frontend.describe_estimator(estimator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = sklearn_frontend.convert_to_onnx(model_info, opset)
        step = {"name": "convert-skl2onnx", "params": {"target_opset": opset, "zipmap": False}}
    else:
        model = source.onnx_model
        found = onnx_graph.default_opset(model)
        if found > opset:
            raise ConversionError(
                f"{source.path} uses opset {found}; the profile allows at most {opset} "
                "(export the model at a lower opset)"
            )
        step = {"name": "import-onnx", "params": {"opset": found}}
    return onnx_graph.normalise(model), step
