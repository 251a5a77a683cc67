"""Train the quick-start model: a scaled logistic regression on scikit-learn's breast cancer
data set (it ships with scikit-learn, nothing is downloaded), saved with skops, plus the
validation file ``edgeml build`` needs; and ``drifted-validation.csv``, the same rows as if a
sensor's calibration had changed (every feature x4), for the demo's bad bundle: a bundle built
on it has a drift baseline that the devices' real traffic does not match.

    python examples/train_reference_model.py --out demo-out
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import skops.io
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    X_train, X_val, y_train, y_val = train_test_split(
        data.data, data.target, test_size=0.3, random_state=0, stratify=data.target
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X_train, y_train)
    skops.io.dump(model, out / "model.skops")
    with (out / "validation.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, "diagnosis"])
        for row, label in zip(X_val, y_val, strict=True):
            writer.writerow([repr(float(v)) for v in row] + [int(label)])
    with (out / "drifted-validation.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, "diagnosis"])
        for row, label in zip(X_val * 4.0, y_val, strict=True):
            writer.writerow([repr(float(v)) for v in row] + [int(label)])
    accuracy = float(np.mean(model.predict(X_val) == y_val))
    print(f"trained {out / 'model.skops'}: validation accuracy {accuracy:.4f} on {len(y_val)} rows")


if __name__ == "__main__":
    main()
