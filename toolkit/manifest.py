"""The bundle manifest: a typed document with ``from_dict``/``to_dict``.

The manifest is what a bundle's signature covers. It names the bundle (name, version,
profile), lists every other entry with its SHA-256 and size, and carries the input and output
schema, the data contract, the metrics of the source and the bundled model, the passes applied
and the provenance, and optionally when the bundle expires (``expires_at``, ISO-8601 UTC).
Fields a newer edgeml adds are kept in ``extra`` so that a manifest
survives a load and a save by an older reader. Reading bundles and checking signatures is
``edgeml.toolkit.bundle``'s job; this module only models the document.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from edgeml.toolkit.errors import BundleError, InputError

FORMAT = "edgeml-bundle"
FORMAT_VERSION = 1
BUNDLE_SUFFIX = ".edgeml"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[0-9]+(?:\.[0-9]+){0,3}(?:[a-z]+[0-9]*)?$")

UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
UTC_PATTERN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")

Task = Literal["classification", "regression"]
DATE_PATTERN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
SECONDS_PER_DAY = 86400


def format_utc(timestamp: float) -> str:
    """A Unix time as ISO-8601 UTC to the second, ``2027-01-31T00:00:00Z`` (fractions dropped).

    Raises:
        ValueError: the time cannot be written as a four-digit year.
    """
    try:
        text = time.strftime(UTC_FORMAT, time.gmtime(int(timestamp)))
    except (OverflowError, OSError, ValueError):
        text = ""
    if not UTC_PATTERN.match(text):
        raise ValueError(f"{timestamp!r} is out of range for an ISO-8601 UTC time")
    return text


def parse_utc(text: str) -> float:
    """The Unix time of an ISO-8601 UTC time written as ``YYYY-MM-DDTHH:MM:SSZ``.

    Only that one form is read: what is signed has one spelling.

    Raises:
        ValueError: ``text`` is not of that form, or not a real date and time.
    """
    if not isinstance(text, str) or not UTC_PATTERN.match(text):
        raise ValueError(f"{text!r} is not an ISO-8601 UTC time like 2027-01-31T00:00:00Z")
    try:
        return float(calendar.timegm(time.strptime(text, UTC_FORMAT)))
    except ValueError:
        raise ValueError(f"{text!r} is not a real date and time") from None


def expiry_from_options(
    expires_in_days: float | None, expires: str | None, now: float
) -> str | None:
    """The ``expires_at`` that ``--expires-in DAYS`` or ``--expires DATE`` ask for, or None.

    Args:
        expires_in_days: days from ``now`` (fractions allowed; the result is whole seconds).
        expires: ``YYYY-MM-DD`` (midnight UTC) or ``YYYY-MM-DDTHH:MM:SSZ``.
        now: the Unix time ``--expires-in`` counts from, and that the result must be after.

    Returns:
        ISO-8601 UTC, or None when neither option is given.

    Raises:
        InputError: both options are given, the date is malformed, or it is not after ``now``.
    """
    if expires_in_days is not None and expires is not None:
        raise InputError("give --expires-in or --expires, not both")
    if expires_in_days is not None:
        if not expires_in_days > 0:
            raise InputError(f"--expires-in {expires_in_days} must be a positive number of days")
        try:
            text = format_utc(now + expires_in_days * SECONDS_PER_DAY)
        except ValueError as error:
            raise InputError(f"--expires-in {expires_in_days}: {error}") from None
    elif expires is not None:
        text = f"{expires}T00:00:00Z" if DATE_PATTERN.match(expires) else expires
        try:
            parse_utc(text)
        except ValueError as error:
            raise InputError(
                f"--expires {expires!r}: {error} (or a date, YYYY-MM-DD, for midnight UTC)"
            ) from None
    else:
        return None
    if parse_utc(text) <= now:
        raise InputError(f"the expiry {text} is not in the future (now {format_utc(now)})")
    return text


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
    "expires_at",
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
    expires_at: str | None = None
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
        if self.expires_at is not None:
            try:
                parse_utc(self.expires_at)
            except ValueError as error:
                raise BundleError(f"manifest: expires_at {error}") from None

    @property
    def expires_at_time(self) -> float | None:
        """``expires_at`` as a Unix time, or None when the bundle never expires."""
        return None if self.expires_at is None else parse_utc(self.expires_at)

    def expiry_refusal(self, now: float) -> str | None:
        """Why this bundle may not be installed at ``now`` (it has expired), or None.

        A bundle expires at the second ``expires_at`` names: from then on it is refused.
        """
        expires = self.expires_at_time
        if expires is None or now < expires:
            return None
        return f"{self.bundle_id} expired at {self.expires_at} (now {format_utc(now)})"

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
        if self.expires_at is not None:  # absent means never; old bundles keep their bytes
            document["expires_at"] = self.expires_at
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
                expires_at=None if data.get("expires_at") is None else data["expires_at"],
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
