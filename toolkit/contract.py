"""The data contract: what each input feature of a bundle may hold.

Derived from the validation data at build time (per feature: kind, range, whether nulls were
seen) and stored in the manifest. Checking rows against it is the scoring engine's job; this
module models the document and derives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgeml.toolkit.errors import BundleError

FeatureKind = Literal["float", "integer", "boolean"]


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its kind, the range seen in the validation data, and nullability."""

    name: str
    kind: FeatureKind
    nullable: bool
    minimum: float | None
    maximum: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "nullable": self.nullable,
            "min": self.minimum,
            "max": self.maximum,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        kind = data["kind"]
        if kind not in ("float", "integer", "boolean"):
            raise BundleError(f"contract: feature {data.get('name')!r} has unknown kind {kind!r}")
        return cls(
            name=str(data["name"]),
            kind=kind,
            nullable=bool(data["nullable"]),
            minimum=None if data.get("min") is None else float(data["min"]),
            maximum=None if data.get("max") is None else float(data["max"]),
        )


@dataclass(frozen=True)
class DataContract:
    """The features a bundle reads, in input order."""

    features: tuple[FeatureSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataContract:
        try:
            return cls(tuple(FeatureSpec.from_dict(f) for f in data["features"]))
        except (KeyError, TypeError, ValueError) as error:
            raise BundleError(f"contract: malformed ({error!r})") from error

    def feature(self, name: str) -> FeatureSpec:
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(name)


def feature_spec(
    name: str, kind: FeatureKind, values: np.ndarray, missing: np.ndarray
) -> FeatureSpec:
    """Derive one feature's spec from its validation values (``missing`` masks the nulls)."""
    present = values[~missing]
    if kind != "boolean":
        present = present.astype(np.float64)
        present = present[np.isfinite(present)]
    minimum = float(present.min()) if present.size and kind != "boolean" else None
    maximum = float(present.max()) if present.size and kind != "boolean" else None
    return FeatureSpec(name, kind, bool(missing.any()), minimum, maximum)
