"""Pruning: magnitude pruning of ONNX weight tensors, and structured pruning of MLP hidden units.

Magnitude pruning zeroes the smallest weights of each MatMul/Gemm weight matrix. onnxruntime
runs a matrix with zeros exactly as fast as a dense one, so the only gain is a smaller
compressed bundle (zeros deflate well): the build reports that size and nothing more.

Structured pruning removes whole hidden units of a scikit-learn MLP (the lowest-importance
neurons: product of the norms of their incoming and outgoing weights) and shrinks the matrices,
so the model is really smaller and faster. Removing units costs accuracy; with training rows
the pruned network is fine-tuned for a few epochs, which wins most of it back.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeml.converters.passes import PassContext, PassSkipped

FINE_TUNE_EPOCHS = 30


def _weight_initializers(model: Any) -> list[str]:
    initializers = {i.name: i for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        for name in node.input:
            tensor = initializers.get(name)
            if tensor is not None and len(tensor.dims) == 2 and tensor.data_type == 1:
                names.append(name)
    return sorted(set(names))


def prune_magnitude(model: Any, context: PassContext) -> Any:
    """Zero the smallest-magnitude ``sparsity`` share of each MatMul/Gemm weight matrix."""
    import onnx
    from onnx import numpy_helper

    sparsity = float(context.params.get("sparsity", 0.5))
    names = _weight_initializers(model)
    if not names:
        raise PassSkipped("no MatMul or Gemm weight matrix to prune")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for initializer in result.graph.initializer:
        if initializer.name not in names:
            continue
        weights = numpy_helper.to_array(initializer).copy()
        cut = round(weights.size * sparsity)
        if cut == 0:
            continue
        threshold_index = np.argsort(np.abs(weights), axis=None, kind="stable")[:cut]
        weights.flat[threshold_index] = 0.0
        initializer.CopyFrom(numpy_helper.from_array(weights, initializer.name))
    return result


@dataclass(frozen=True)
class PrunedMlp:
    """A pruned copy of an estimator and what was done to it."""

    estimator: Any
    hidden_before: tuple[int, ...]
    hidden_after: tuple[int, ...]
    fine_tuned_epochs: int


def find_mlp(estimator: Any) -> tuple[Any, Any | None]:
    """The MLP in an estimator (itself, or the last step of a Pipeline) and the preprocessing.

    Raises:
        PassSkipped: no MLPClassifier or MLPRegressor at the end.
    """
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, MLPClassifier | MLPRegressor):
        return estimator, None
    if isinstance(estimator, Pipeline) and isinstance(
        estimator.steps[-1][1], MLPClassifier | MLPRegressor
    ):
        return estimator.steps[-1][1], estimator[:-1]
    what = type(estimator).__name__
    if isinstance(estimator, Pipeline):
        what += f" ending in {type(estimator.steps[-1][1]).__name__}"
    raise PassSkipped(f"structured pruning applies to MLPs; the model is a {what}")


def unit_importance(incoming: np.ndarray, outgoing: np.ndarray) -> np.ndarray:
    """Importance of each hidden unit: the norm of its incoming weights times its outgoing."""
    return np.linalg.norm(incoming, axis=0) * np.linalg.norm(outgoing, axis=1)


def shrink_layers(
    coefs: list[np.ndarray], intercepts: list[np.ndarray], ratio: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Remove the ``ratio`` least important units of every hidden layer (pure).

    ``coefs[i]`` is the (units in, units out) matrix of layer ``i``; hidden layer ``i`` sits
    between ``coefs[i]`` and ``coefs[i + 1]``. At least one unit stays in every layer.
    """
    coefs = [c.copy() for c in coefs]
    intercepts = [b.copy() for b in intercepts]
    for layer in range(len(coefs) - 1):
        units = coefs[layer].shape[1]
        keep_count = max(1, units - round(units * ratio))
        importance = unit_importance(coefs[layer], coefs[layer + 1])
        keep = np.sort(np.argsort(-importance, kind="stable")[:keep_count])
        coefs[layer] = coefs[layer][:, keep]
        intercepts[layer] = intercepts[layer][keep]
        coefs[layer + 1] = coefs[layer + 1][keep, :]
    return coefs, intercepts


def prune_mlp_units(
    estimator: Any, ratio: float, train: tuple[np.ndarray, np.ndarray] | None, seed: int = 0
) -> PrunedMlp:
    """A copy of the estimator whose MLP has ``ratio`` of each hidden layer's units removed.

    Args:
        estimator: an MLP or a Pipeline ending in one.
        ratio: the share of units to remove, in (0, 1).
        train: training rows and targets (in the estimator's input space) to fine-tune on;
            None for no fine-tuning.
        seed: the fine-tuning's random state, so builds stay reproducible.

    Raises:
        PassSkipped: the estimator has no MLP, or the MLP has no hidden layer.
    """
    pruned = copy.deepcopy(estimator)
    mlp, preprocessing = find_mlp(pruned)
    if len(mlp.coefs_) < 2:
        raise PassSkipped("the MLP has no hidden layer to prune")
    before = tuple(c.shape[1] for c in mlp.coefs_[:-1])
    coefs, intercepts = shrink_layers(mlp.coefs_, mlp.intercepts_, ratio)
    mlp.coefs_, mlp.intercepts_ = coefs, intercepts
    after = tuple(c.shape[1] for c in coefs[:-1])
    mlp.hidden_layer_sizes = after
    epochs = 0
    if train is not None:
        X, y = train
        if preprocessing is not None:
            X = preprocessing.transform(X)
        mlp.set_params(
            warm_start=True, max_iter=FINE_TUNE_EPOCHS, random_state=seed, early_stopping=False
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: a short fine-tune by design
            mlp.fit(X, y)
        epochs = FINE_TUNE_EPOCHS
    return PrunedMlp(pruned, before, after, epochs)


def structured_ratio_skip_reason(estimator: Any) -> str | None:
    """Why structured pruning cannot apply to this estimator, or None."""
    try:
        mlp, _ = find_mlp(estimator)
    except PassSkipped as skipped:
        return str(skipped)
    if len(mlp.coefs_) < 2:
        return "the MLP has no hidden layer to prune"
    return None


__all__ = [
    "PrunedMlp",
    "find_mlp",
    "prune_magnitude",
    "prune_mlp_units",
    "shrink_layers",
    "unit_importance",
]
