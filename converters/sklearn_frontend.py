"""The scikit-learn front-end: load an estimator safely, describe it, convert it to ONNX.

``.skops`` files are loaded with skops' safe loader: types from scikit-learn, numpy and scipy
are trusted, any other must be named by the user (DESIGN.md, "skops"). ``.joblib``/``.pkl``
files can run code when loaded and are accepted with a warning. Conversion uses skl2onnx with
float32 inputs and no ZipMap, so a classifier's outputs are ``[label, probabilities]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.toolkit.errors import ConversionError
from edgeml.toolkit.runtime import ModelOutputs

TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.")
SKLEARN_SUFFIXES = (".skops", ".joblib", ".pkl", ".pickle")


@dataclass(frozen=True)
class SklearnModel:
    """A loaded scikit-learn estimator and what edgeml needs to know of it."""

    estimator: Any
    task: str
    classes: tuple[Any, ...] | None
    feature_names: tuple[str, ...] | None
    n_features: int
    has_probabilities: bool

    @property
    def type_name(self) -> str:
        return type(self.estimator).__name__

    def predict(self, matrix: np.ndarray) -> ModelOutputs:
        """The estimator's own outputs on rows (float64, columns in the model's order)."""
        with warnings.catch_warnings():
            # Fitted on a DataFrame, predicting on an array: the columns are already aligned.
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            if self.task == "classification":
                labels = np.asarray(self.estimator.predict(matrix))
                probabilities = (
                    np.asarray(self.estimator.predict_proba(matrix), dtype=np.float64)
                    if self.has_probabilities
                    else None
                )
                return ModelOutputs(labels=labels, probabilities=probabilities)
            values = np.asarray(self.estimator.predict(matrix), dtype=np.float64)
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            return ModelOutputs(values=values)


def untrusted_skops_types(path: Path, extra_trusted: Sequence[str] = ()) -> list[str]:
    """The types in a ``.skops`` file that are neither trusted by default nor named by the user."""
    import skops.io

    try:
        found = skops.io.get_untrusted_types(file=path)
    except Exception as error:
        raise ConversionError(f"{path} is not a readable .skops file: {error}") from error
    return sorted(
        t
        for t in found
        if not t.startswith(TRUSTED_MODULE_PREFIXES) and t not in set(extra_trusted)
    )


def load_estimator(path: Path, trusted_types: Sequence[str] = (), warn: Any = None) -> Any:
    """Load a scikit-learn estimator from ``.skops`` (safely) or ``.joblib``/``.pkl``.

    Args:
        path: the model file.
        trusted_types: extra fully qualified type names a ``.skops`` file may load.
        warn: called with a message for each warning (pickle files run code).

    Raises:
        ConversionError: untrusted types in a ``.skops`` file, or a file that does not load.
    """
    suffix = path.suffix.lower()
    if suffix == ".skops":
        import skops.io

        untrusted = untrusted_skops_types(path, trusted_types)
        if untrusted:
            raise ConversionError(
                f"{path} holds types that are not trusted by default: {', '.join(untrusted)}; "
                "name each with --trust-type if you trust them"
            )
        try:
            return skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
        except Exception as error:
            raise ConversionError(f"{path} could not be loaded by skops: {error}") from error
    if warn is not None:
        warn(
            f"{path.name} is a pickle: loading it runs code from the file. "
            "Only build from pickles you made or trust; prefer .skops"
        )
    import joblib

    try:
        return joblib.load(path)
    except Exception as error:
        raise ConversionError(f"{path} could not be loaded as a pickle: {error}") from error


def describe_estimator(estimator: Any) -> SklearnModel:
    """Check that an object is a fitted classifier or regressor and describe it.

    Raises:
        ConversionError: not a scikit-learn estimator, not a classifier or regressor, not fitted.
    """
    from sklearn.base import BaseEstimator, is_classifier, is_regressor
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    type_name = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
    if not isinstance(estimator, BaseEstimator):
        raise ConversionError(f"the model is a {type_name}, not a scikit-learn estimator")
    if is_classifier(estimator):
        task = "classification"
    elif is_regressor(estimator):
        task = "regression"
    else:
        raise ConversionError(
            f"unsupported estimator {type_name}: edgeml builds classifiers and regressors"
        )
    try:
        check_is_fitted(estimator)
    except NotFittedError as error:
        raise ConversionError(f"the {type_name} in the model file is not fitted") from error
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise ConversionError(f"the {type_name} does not say how many features it takes")
    names = getattr(estimator, "feature_names_in_", None)
    classes = tuple(np.asarray(estimator.classes_).tolist()) if task == "classification" else None
    return SklearnModel(
        estimator=estimator,
        task=task,
        classes=classes,
        feature_names=tuple(str(n) for n in names) if names is not None else None,
        n_features=int(n_features),
        has_probabilities=task == "classification" and hasattr(estimator, "predict_proba"),
    )


def convert_to_onnx(model: SklearnModel, target_opset: int) -> Any:
    """Convert with skl2onnx: one float32 input ``features`` of width ``n_features``, no ZipMap.

    Raises:
        ConversionError: skl2onnx has no converter for the estimator (or a step of it).
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options: dict[Any, Any] = {}
    if model.task == "classification":
        options = {"zipmap": False}
    try:
        return convert_sklearn(
            model.estimator,
            initial_types=[("features", FloatTensorType([None, model.n_features]))],
            options=options,
            target_opset={"": target_opset, "ai.onnx.ml": 3},
        )
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConversionError(
            f"skl2onnx cannot convert the {model.type_name}: {message}"
        ) from error
