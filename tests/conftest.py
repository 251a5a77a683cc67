"""Shared fixtures: a key pair, small trained models with their validation files, built bundles.

Everything is real: models are trained on datasets that ship with scikit-learn, saved with
skops, and bundles are built by the same pipeline ``edgeml build`` runs.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from broker import MosquittoBroker
from protocol_peer import ProtocolPeer

from edgeml.toolkit.keys import generate_key_pair, load_private_key


def write_csv(
    path: Path, names: Sequence[str], X: np.ndarray, y: np.ndarray, target: str = "target"
) -> Path:
    """Write features and target as a CSV file with a header."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, target])
        for row, label in zip(X, y, strict=True):
            writer.writerow(
                [repr(float(v)) for v in row] + [label.item() if hasattr(label, "item") else label]
            )
    return path


@dataclass(frozen=True)
class TrainedModel:
    """A saved model and a validation file for it."""

    model_path: Path
    validation_path: Path
    target: str
    estimator: object
    X_val: np.ndarray
    y_val: np.ndarray
    feature_names: tuple[str, ...]


def train_model(folder: Path, kind: str = "logreg") -> TrainedModel:
    """Train one of the reference models on a scikit-learn dataset and save it as .skops."""
    import skops.io
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folder.mkdir(parents=True, exist_ok=True)
    loaders = {"ridge": load_diabetes, "digits-mlp": load_digits, "mlp-regressor": load_diabetes}
    data = loaders.get(kind, load_breast_cancer)()
    X, y = data.data, data.target
    names = tuple(n.replace(" ", "_") for n in data.feature_names)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    X, y = X[order], y[order]
    split = int(len(X) * 0.7)
    estimators = {
        "logreg": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "forest": lambda: RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0),
        "hgb": lambda: HistGradientBoostingClassifier(max_iter=30, random_state=0),
        "mlp": lambda: make_pipeline(
            StandardScaler(), MLPClassifier((32,), max_iter=300, random_state=0)
        ),
        "ridge": lambda: make_pipeline(StandardScaler(), Ridge()),
        "digits-mlp": lambda: make_pipeline(
            StandardScaler(), MLPClassifier((128, 64), max_iter=300, random_state=0)
        ),
        "mlp-regressor": lambda: make_pipeline(
            StandardScaler(),
            MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=2000, random_state=0),
        ),
    }
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = estimators[kind]().fit(X[:split], y[:split])
    model_path = folder / f"{kind}.skops"
    skops.io.dump(estimator, model_path)
    validation = write_csv(folder / f"{kind}-validation.csv", names, X[split:], y[split:])
    write_csv(folder / f"{kind}-train.csv", names, X[:split], y[:split])
    return TrainedModel(model_path, validation, "target", estimator, X[split:], y[split:], names)


@pytest.fixture
def mosquitto(tmp_path: Path):
    """A real Mosquitto on a free loopback port for one test."""
    from broker import MosquittoBroker

    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def roomy_mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto that may hold hundreds of connections: it inherits the open file limit
    raised first."""
    from edgeml.fleet.simulator import raise_open_file_limit

    raise_open_file_limit()
    running = MosquittoBroker(tmp_path / "broker")
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a key pair ``edgeml.key`` / ``edgeml.pub``."""
    folder = tmp_path_factory.mktemp("keys")
    generate_key_pair(folder, "edgeml")
    return folder


@pytest.fixture(scope="session")
def other_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, untrusted key pair."""
    folder = tmp_path_factory.mktemp("other-keys")
    generate_key_pair(folder, "other")
    return folder


@pytest.fixture(scope="session")
def logreg(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A scaler + logistic regression pipeline on breast cancer, saved as .skops."""
    return train_model(tmp_path_factory.mktemp("logreg"), "logreg")


@pytest.fixture(scope="session")
def digits_mlp(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A scaler + MLP (128, 64) on the digits data set; ``<kind>-train.csv`` lies beside it."""
    return train_model(tmp_path_factory.mktemp("digits-mlp"), "digits-mlp")


def build_bundle(
    model: TrainedModel,
    key_dir: Path,
    out: Path,
    name: str,
    profile: str = "raspberry-pi-4",
    **options: object,
) -> Path:
    """Build one bundle with the real pipeline, signed by ``key_dir``'s key; its path."""
    from edgeml.converters.pipeline import BuildRequest, build_bundles
    from edgeml.toolkit.profiles import load_profile

    result = build_bundles(
        BuildRequest(
            model_path=model.model_path,
            profiles=[load_profile(profile)],
            signing_key=load_private_key(key_dir / "edgeml.key"),
            out_dir=out,
            validation_path=model.validation_path,
            target=model.target,
            name=name,
            **options,  # type: ignore[arg-type]
        )
    )
    return result.builds[0].bundle_path


@pytest.fixture(scope="session")
def built_bundle(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, logreg: TrainedModel
) -> Path:
    """A bundle for raspberry-pi-4 built by the real pipeline; copy it before changing it."""
    return build_bundle(
        logreg, key_dir, tmp_path_factory.mktemp("bundles"), "cancer", version="1.0.0"
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A real Mosquitto on a free loopback port that keeps sessions and queued messages
    across a restart (as a deployed one does: ``persistence true``)."""
    running = MosquittoBroker(tmp_path / "broker", persistence=True)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def peer(broker: MosquittoBroker) -> Iterator[ProtocolPeer]:
    """The fleet's side of the protocol, on ``broker``."""
    connected = ProtocolPeer("127.0.0.1", broker.port)
    yield connected
    connected.close()
