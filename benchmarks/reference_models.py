"""The reference models the benchmarks build from, trained on datasets that ship with scikit-learn.

Each model is trained on 70% of a shuffled dataset (seed 0), saved as ``.skops``, and its
other 30% is written as the validation CSV ``edgeml build`` needs. The datasets are bundled
with scikit-learn, so nothing is downloaded. This module trains and saves; measuring is the
benchmarks' job.

The four models:

- ``logreg``: StandardScaler + LogisticRegression on breast_cancer (30 features, 2 classes).
- ``forest``: RandomForestClassifier (100 trees, unlimited depth) on breast_cancer.
- ``hgb``: HistGradientBoostingClassifier (100 iterations) on breast_cancer.
- ``mlp``: StandardScaler + MLPClassifier with hidden layers (256, 128), the project's
  reference MLP, on digits (64 features, 10 classes): breast_cancer would make it a toy.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TARGET = "target"
TRAIN_SHARE = 0.7
SEED = 0


@dataclass(frozen=True)
class ReferenceSpec:
    """How to make one reference model: its dataset and an unfitted estimator."""

    kind: str
    label: str
    dataset: str
    make_estimator: Callable[[], Any]


@dataclass(frozen=True)
class ReferenceModel:
    """A trained reference model, saved, with its data split."""

    spec: ReferenceSpec
    estimator: Any
    model_path: Path
    validation_path: Path
    feature_names: tuple[str, ...]
    X_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray

    @property
    def X_all(self) -> np.ndarray:
        """Every row of the dataset, training rows first."""
        return np.vstack([self.X_train, self.X_val])


def _logreg() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def _forest() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, random_state=SEED)


def _hgb() -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=100, random_state=SEED)


def _mlp() -> Any:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(), MLPClassifier((256, 128), max_iter=500, random_state=SEED)
    )


REFERENCE_SPECS: tuple[ReferenceSpec, ...] = (
    ReferenceSpec("logreg", "StandardScaler + LogisticRegression", "breast_cancer", _logreg),
    ReferenceSpec("forest", "RandomForestClassifier (100 trees)", "breast_cancer", _forest),
    ReferenceSpec("hgb", "HistGradientBoostingClassifier (100 iter)", "breast_cancer", _hgb),
    ReferenceSpec("mlp", "StandardScaler + MLP (256, 128)", "digits", _mlp),
)


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Features, target and CSV-safe feature names of a dataset bundled with scikit-learn."""
    from sklearn.datasets import load_breast_cancer, load_digits

    loaders = {"breast_cancer": load_breast_cancer, "digits": load_digits}
    data = loaders[name]()
    names = tuple(str(n).replace(" ", "_") for n in data.feature_names)
    return np.asarray(data.data, dtype=np.float64), np.asarray(data.target), names


def write_validation_csv(path: Path, names: tuple[str, ...], X: np.ndarray, y: np.ndarray) -> None:
    """Write features and target as a CSV file with a header row."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, TARGET])
        for row, label in zip(X, y, strict=True):
            writer.writerow([repr(float(v)) for v in row] + [int(label)])


def train_reference_model(spec: ReferenceSpec, folder: Path) -> ReferenceModel:
    """Train one reference model and save it as ``KIND.skops`` and ``KIND-validation.csv``."""
    import skops.io

    X, y, names = load_dataset(spec.dataset)
    order = np.random.default_rng(SEED).permutation(len(X))
    X, y = X[order], y[order]
    split = int(len(X) * TRAIN_SHARE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = spec.make_estimator().fit(X[:split], y[:split])
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / f"{spec.kind}.skops"
    skops.io.dump(estimator, model_path)
    validation_path = folder / f"{spec.kind}-validation.csv"
    write_validation_csv(validation_path, names, X[split:], y[split:])
    return ReferenceModel(
        spec, estimator, model_path, validation_path, names, X[:split], X[split:], y[split:]
    )
