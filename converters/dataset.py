"""The validation data as the build needs it: a feature matrix in the model's column order,
the target, and the per-feature columns for the contract and the drift baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeml.toolkit.contract import FeatureSpec, feature_spec
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.tabular import Column, Table


@dataclass(frozen=True)
class ValidationData:
    """Features (float64, NaN where missing) in model order, target, and their columns."""

    source: str
    features: tuple[Column, ...]
    matrix: np.ndarray
    target: Column
    ignored_columns: tuple[str, ...]

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.features)

    @property
    def n_rows(self) -> int:
        return int(self.matrix.shape[0])

    def feature_specs(self) -> list[FeatureSpec]:
        """The contract's feature specs, derived from the columns."""
        specs = []
        for column in self.features:
            kind = column.kind if column.kind in ("integer", "boolean") else "float"
            specs.append(feature_spec(column.name, kind, column.values, column.missing))
        return specs

    def first_missing(self) -> tuple[str, int] | None:
        """The first (column, 1-based row) holding a null, if any."""
        for column in self.features:
            rows = np.flatnonzero(column.missing)
            if rows.size:
                return column.name, int(rows[0]) + 1
        return None


def prepare_validation(
    table: Table, target: str, feature_names: Sequence[str] | None, n_features: int | None
) -> ValidationData:
    """Pick the target and the feature columns out of a validation table.

    Args:
        table: the whole validation file.
        target: the target column's name.
        feature_names: the model's own feature names, when it has them; columns are taken by
            name then, in the model's order. Otherwise every other column, in file order.
        n_features: how many features the model takes, when known.

    Raises:
        InputError: the target is missing or has nulls, a feature column is missing, the
            number of columns does not match the model, or a feature is not numeric.
    """
    if target not in table.names:
        raise InputError(
            f"{table.source}: no target column {target!r} (columns: {', '.join(table.names)})"
        )
    target_column = table.column(target)
    if target_column.missing.any():
        row = int(np.flatnonzero(target_column.missing)[0]) + 1
        raise InputError(f"{table.source}: row {row}, column {target!r}: the target is empty")
    others = [n for n in table.names if n != target]
    if feature_names is not None:
        missing = [n for n in feature_names if n not in others]
        if missing:
            raise InputError(
                f"{table.source}: the model was trained on columns that the file lacks: "
                f"{', '.join(missing)}"
            )
        chosen = list(feature_names)
    else:
        chosen = others
        if n_features is not None and len(chosen) != n_features:
            raise InputError(
                f"{table.source}: the model takes {n_features} features, the file has "
                f"{len(chosen)} columns besides the target {target!r}"
            )
    if not chosen:
        raise InputError(f"{table.source}: no feature columns besides the target {target!r}")
    columns = tuple(table.column(n) for n in chosen)
    matrix = np.column_stack([c.as_float64() for c in columns]) if columns else np.zeros((0, 0))
    return ValidationData(
        source=table.source,
        features=columns,
        matrix=matrix,
        target=target_column,
        ignored_columns=tuple(n for n in others if n not in chosen),
    )


def target_labels(target: Column, classes: Sequence[object] | None) -> np.ndarray:
    """The target as an array comparable with the model's labels."""
    values = target.values
    integral_classes = bool(classes) and all(isinstance(c, int | np.integer) for c in classes)
    if integral_classes and target.kind == "float" and np.all(values == np.round(values)):
        return values.astype(np.int64)
    return values


def feature_rows(table: Table, features: Sequence[str], target: str | None) -> np.ndarray:
    """Rows of a calibration file in the order of ``features`` (float64, NaN where missing).

    Columns are taken by name when the file has all of them; otherwise, when the file has as
    many columns as there are features (besides the target), in file order.

    Raises:
        InputError: neither matches.
    """
    names = [n for n in table.names if n != target]
    if all(f in names for f in features):
        chosen = list(features)
    elif len(names) == len(features):
        chosen = names
    else:
        missing = [f for f in features if f not in names]
        raise InputError(
            f"{table.source}: lacks the feature columns {', '.join(missing[:10])} and does not "
            f"have {len(features)} columns to take in order"
        )
    return np.column_stack([table.column(n).as_float64() for n in chosen])
