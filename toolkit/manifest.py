"""The bundle manifest: a typed document with ``from_dict``/``to_dict``.

The manifest is what a bundle's signature covers. It names the bundle (name, version,
profile), lists every other entry with its SHA-256 and size, and carries the input and output
schema, the data contract, the metrics of the source and the bundled model, the passes applied
and the provenance. Fields a newer edgeml adds are kept in ``extra`` so that a manifest
survives a load and a save by an older reader. Reading bundles and checking signatures is
``edgeml.toolkit.bundle``'s job; this module only models the document.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from edgeml.toolkit.errors import BundleError

FORMAT = "edgeml-bundle"
FORMAT_VERSION = 1
BUNDLE_SUFFIX = ".edgeml"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[0-9]+(?:\.[0-9]+){0,3}(?:[a-z]+[0-9]*)?$")

Task = Literal["classification", "regression"]


def bundle_id(name: str, version: str, profile: str) -> str:
    """A bundle's id, ``NAME-VERSION-PROFILE``: the stem of its file name (DESIGN.md, Ids)."""
    return f"{name}-{version}-{profile}"


def canonical_json(document: Any) -> bytes:
    """Serialise a JSON document the same way every time: sorted keys, no spaces, ASCII."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class EntryDigest:
    """An entry's SHA-256 (hex) and size in bytes, as the manifest states them."""

    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the ONNX model.

    ``features`` are the columns of the data that feed an input, in order; outputs have none.
    """

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]
    features: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
        }
        if self.features:
            document["features"] = list(self.features)
        return document

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(
            name=str(data["name"]),
            dtype=str(data["dtype"]),
            shape=tuple(data.get("shape", ())),
            features=tuple(str(f) for f in data.get("features", ())),
        )


def _entry_digest(name: str, data: Any) -> EntryDigest:
    size, digest = data["size"], data["sha256"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"entry {name}: size {size!r} is not a non-negative integer")
    if not isinstance(digest, str) or len(digest) != 64:
        raise ValueError(f"entry {name}: sha256 {digest!r} is not 64 hex digits")
    return EntryDigest(digest, size)


_KNOWN = {
    "format",
    "format_version",
    "name",
    "version",
    "profile",
    "bundle_id",
    "task",
    "classes",
    "entries",
    "inputs",
    "outputs",
    "contract",
    "metrics",
    "precision",
    "passes",
    "candidates",
    "profile_settings",
    "provenance",
}


@dataclass(frozen=True)
class Manifest:
    """The signed description of a bundle. See DESIGN.md, "The bundle"."""

    name: str
    version: str
    profile: str
    task: Task
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    contract: dict[str, Any]
    metrics: dict[str, Any]
    precision: str
    passes: tuple[dict[str, Any], ...]
    provenance: dict[str, Any]
    profile_settings: dict[str, Any]
    classes: tuple[Any, ...] | None = None
    candidates: tuple[dict[str, Any], ...] = ()
    entries: dict[str, EntryDigest] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise BundleError(f"manifest: name {self.name!r} is not a valid bundle name")
        if not VERSION_PATTERN.match(self.version):
            raise BundleError(f"manifest: version {self.version!r} is not a valid version")
        if not NAME_PATTERN.match(self.profile):
            raise BundleError(f"manifest: profile {self.profile!r} is not a valid profile name")
        if self.task not in ("classification", "regression"):
            raise BundleError(f"manifest: task {self.task!r} is not classification or regression")
        if self.task == "classification" and not self.classes:
            raise BundleError("manifest: a classification bundle must list its classes")

    @property
    def bundle_id(self) -> str:
        """``NAME-VERSION-PROFILE``."""
        return bundle_id(self.name, self.version, self.profile)

    @property
    def features(self) -> tuple[str, ...]:
        """Every feature the model reads, in input order."""
        return tuple(f for spec in self.inputs for f in spec.features)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, unknown fields included."""
        document: dict[str, Any] = dict(self.extra)
        document.update(
            {
                "format": FORMAT,
                "format_version": self.format_version,
                "name": self.name,
                "version": self.version,
                "profile": self.profile,
                "bundle_id": self.bundle_id,
                "task": self.task,
                "classes": list(self.classes) if self.classes is not None else None,
                "entries": {name: d.to_dict() for name, d in sorted(self.entries.items())},
                "inputs": [spec.to_dict() for spec in self.inputs],
                "outputs": [spec.to_dict() for spec in self.outputs],
                "contract": self.contract,
                "metrics": self.metrics,
                "precision": self.precision,
                "passes": list(self.passes),
                "candidates": list(self.candidates),
                "profile_settings": self.profile_settings,
                "provenance": self.provenance,
            }
        )
        return document

    def to_bytes(self) -> bytes:
        """The exact bytes that are signed and stored as ``manifest.json``."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate and build a manifest from its JSON document.

        Raises:
            BundleError: a field is missing or has the wrong shape, or the format is unknown.
        """
        if not isinstance(data, dict):
            raise BundleError("manifest.json is not a JSON object")
        if data.get("format") != FORMAT:
            raise BundleError(f"manifest.json: format {data.get('format')!r} is not {FORMAT!r}")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"manifest.json: format_version {data.get('format_version')!r} is not supported "
                f"(this edgeml reads version {FORMAT_VERSION})"
            )
        try:
            entries = {str(name): _entry_digest(name, d) for name, d in data["entries"].items()}
            manifest = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                profile=str(data["profile"]),
                task=data["task"],
                inputs=tuple(TensorSpec.from_dict(d) for d in data["inputs"]),
                outputs=tuple(TensorSpec.from_dict(d) for d in data["outputs"]),
                contract=dict(data["contract"]),
                metrics=dict(data["metrics"]),
                precision=str(data["precision"]),
                passes=tuple(dict(p) for p in data.get("passes", ())),
                provenance=dict(data.get("provenance", {})),
                profile_settings=dict(data.get("profile_settings", {})),
                classes=tuple(data["classes"]) if data.get("classes") is not None else None,
                candidates=tuple(dict(c) for c in data.get("candidates", ())),
                entries=entries,
                format_version=int(data["format_version"]),
                extra={k: v for k, v in data.items() if k not in _KNOWN},
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
            raise BundleError(f"manifest.json: missing or malformed field ({error!r})") from error
        if data.get("bundle_id", manifest.bundle_id) != manifest.bundle_id:
            raise BundleError(
                f"manifest.json: bundle_id {data.get('bundle_id')!r} does not match "
                f"name-version-profile {manifest.bundle_id!r}"
            )
        return manifest
