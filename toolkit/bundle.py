"""Bundle files: write them deterministically and signed; open them only after verification.

A bundle is a zip (DESIGN.md, "The bundle") of ``manifest.json``, ``model.onnx``,
``baseline.json``, ``golden.json`` and ``signature.json``. Writing sorts the entries and fixes
their timestamps and modes, so the same inputs give the same bytes. Reading runs every check
before anything of the bundle is used, in two tiers: :func:`check_bundle` returns a
:class:`VerificationReport` that says which check passed or failed (for people), and
:func:`verify_bundle` raises :class:`BundleError` naming the failed check (for code).

What goes into the manifest is decided by the build (``edgeml.converters``); how the model is
run is the scoring engine's job.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import tempfile
import time
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from edgeml.toolkit.errors import BundleError
from edgeml.toolkit.keys import key_id
from edgeml.toolkit.manifest import EntryDigest, Manifest, canonical_json
from edgeml.toolkit.trust import TrustStore, revocation_detail

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
MODEL = "model.onnx"
BASELINE = "baseline.json"
GOLDEN = "golden.json"
REQUIRED_ENTRIES = (MODEL, BASELINE, GOLDEN)
SIGNATURE_ALGORITHM = "ed25519"
ZIP_EPOCH = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip can hold
ZIP_LAST = 4354819199  # 2107-12-31T23:59:59Z, the latest
RESERVED_ENTRIES = (MANIFEST, SIGNATURE)
# What a damaged archive can raise while it is opened or read: all mean "refuse the bundle".
DAMAGED_ARCHIVE = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)


@dataclass(frozen=True)
class BundleLimits:
    """Upper bounds on what a bundle may make a reader do; every bound has a safe default."""

    max_bundle_bytes: int = 2 * 1024**3
    max_entry_bytes: int = 2 * 1024**3
    max_json_bytes: int = 64 * 1024**2
    max_signature_bytes: int = 64 * 1024
    max_entries: int = 64
    max_compression_ratio: int = 200


DEFAULT_LIMITS = BundleLimits()


@dataclass(frozen=True)
class CheckResult:
    """One verification check: its name, whether it passed, and why not."""

    name: str
    passed: bool
    detail: str = ""


@dataclass
class VerificationReport:
    """What verification found, check by check, in the order the checks ran."""

    path: str
    checks: list[CheckResult] = field(default_factory=list)
    key_id: str | None = None
    manifest: Manifest | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failure(self) -> CheckResult | None:
        return next((c for c in self.checks if not c.passed), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.path,
            "verified": self.passed,
            "key_id": self.key_id,
            "bundle_id": self.manifest.bundle_id if self.manifest else None,
            "expires_at": self.manifest.expires_at if self.manifest else None,
            "checks": [
                {"check": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks
            ],
        }


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose every check passed, with the bytes of its entries as verified."""

    path: Path
    manifest: Manifest
    key_id: str
    entries: Mapping[str, bytes]

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    def json_entry(self, name: str) -> Any:
        """A verified JSON entry, parsed."""
        return json.loads(self.entries[name])


class _Failed(Exception):
    def __init__(self, check: str, detail: str) -> None:
        super().__init__(detail)
        self.check = check
        self.detail = detail


# --------------------------------------------------------------------------------- writing


def _zip_timestamp() -> tuple[int, int, int, int, int, int]:
    """The timestamp every entry gets: ``SOURCE_DATE_EPOCH`` if set, else 1980-01-01."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    epoch = ZIP_EPOCH
    if raw:
        try:
            epoch = max(ZIP_EPOCH, int(raw))
        except ValueError:
            raise BundleError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer") from None
        if epoch > ZIP_LAST:
            raise BundleError(f"SOURCE_DATE_EPOCH={raw} is after 2107, the last time a zip holds")
    return time.gmtime(epoch)[:6]  # type: ignore[return-value]


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The ``signature.json`` document for these exact manifest bytes."""
    signature = private_key.sign(manifest_bytes)
    return canonical_json(
        {
            "algorithm": SIGNATURE_ALGORITHM,
            "key_id": key_id(private_key.public_key()),
            "signature": base64.b64encode(signature).decode("ascii"),
        }
    )


def bundle_bytes(
    manifest: Manifest, entries: Mapping[str, bytes], private_key: Ed25519PrivateKey
) -> bytes:
    """Assemble a signed bundle in memory: fill in the entry digests, sign, zip.

    Args:
        manifest: the manifest without entries (they are computed here).
        entries: every entry but the manifest and the signature, by name.
        private_key: the signing key.

    Returns:
        The bundle's bytes; the same arguments give the same bytes.
    """
    for name in REQUIRED_ENTRIES:
        if name not in entries:
            raise BundleError(f"a bundle needs the entry {name}")
    for name in entries:
        if name in RESERVED_ENTRIES:
            raise BundleError(f"{name} is written by the signer, not given as an entry")
        try:
            _check_name(name)
        except _Failed as failure:
            raise BundleError(failure.detail) from None
    digests = {
        name: EntryDigest(hashlib.sha256(data).hexdigest(), len(data))
        for name, data in entries.items()
    }
    signed = Manifest(**{**manifest.__dict__, "entries": digests})
    manifest_bytes = signed.to_bytes()
    files = dict(entries)
    files[MANIFEST] = manifest_bytes
    files[SIGNATURE] = sign_manifest(manifest_bytes, private_key)
    date_time = _zip_timestamp()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, files[name], compresslevel=9)
    return buffer.getvalue()


HASH_BLOCK = 256 * 1024


def sha256_file(path: Path) -> str:
    """A file's SHA-256 (hex), read through one buffer of ``HASH_BLOCK`` bytes: what a
    bundle file is announced, transferred and registered under."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    """Write a file through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------- reading


def _check_name(name: str) -> None:
    path = PurePosixPath(name)
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or ".." in path.parts
        or len(path.parts) != 1
        or ":" in name
        or "\x00" in name
    ):
        raise _Failed("entry names", f"entry {name!r} is not a plain file name inside the bundle")


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """Read an entry but never more than ``limit`` bytes, whatever its header says."""
    try:
        with archive.open(info) as handle:
            data = handle.read(limit + 1)
    except DAMAGED_ARCHIVE as error:
        raise _Failed(
            "archive", f"entry {info.filename} cannot be read (damaged): {error}"
        ) from None
    if len(data) > limit:
        raise _Failed("sizes", f"entry {info.filename} is larger than {limit} bytes")
    return data


def _run_checks(
    path: Path,
    trust: TrustStore,
    limits: BundleLimits,
    report: VerificationReport,
    now: float | None,
) -> dict[str, bytes]:
    def passed(name: str, detail: str = "") -> None:
        report.checks.append(CheckResult(name, True, detail))

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _Failed("archive", f"{path} does not exist") from None
    if not path.is_file():
        raise _Failed("archive", f"{path} is not a file")
    if size > limits.max_bundle_bytes:
        raise _Failed(
            "sizes", f"bundle is {size} bytes, over the limit of {limits.max_bundle_bytes}"
        )
    try:
        archive = zipfile.ZipFile(path)
    except DAMAGED_ARCHIVE as error:
        raise _Failed(
            "archive", f"not a readable bundle archive (truncated or damaged): {error}"
        ) from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise _Failed(
                "entries",
                f"bundle has {len(infos)} entries, over the limit of {limits.max_entries}",
            )
        names = [info.filename for info in infos]
        for info in infos:
            _check_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode) or (mode and not stat.S_ISREG(mode)) or info.is_dir():
                raise _Failed(
                    "entry names", f"entry {info.filename!r} is not a regular file (link or folder)"
                )
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise _Failed("entries", f"entries appear more than once: {', '.join(duplicates)}")
        passed("archive", f"{len(infos)} entries, {size} bytes")
        by_name = {info.filename: info for info in infos}
        for required in (SIGNATURE, MANIFEST):
            if required not in by_name:
                raise _Failed("entries", f"missing entry {required}")

        # Signature first: nothing the manifest says is believed before it verifies.
        signature_doc = _parse_json(
            _read_entry(archive, by_name[SIGNATURE], limits.max_signature_bytes), SIGNATURE
        )
        if (
            not isinstance(signature_doc, dict)
            or signature_doc.get("algorithm") != SIGNATURE_ALGORITHM
        ):
            raise _Failed(
                "signature", f"{SIGNATURE} does not hold an {SIGNATURE_ALGORITHM} signature"
            )
        kid = str(signature_doc.get("key_id"))
        report.key_id = kid
        if trust.is_revoked(kid):
            raise _Failed(
                "key not revoked",
                f"signed by key {kid}, which is revoked ({revocation_detail(trust, kid)})",
            )
        passed("key not revoked", f"key {kid}")
        public_key = trust.get(kid)
        if public_key is None:
            raise _Failed("trusted key", f"signed by key {kid}, which is not in the trust store")
        passed("trusted key", f"key {kid}")
        manifest_bytes = _read_entry(archive, by_name[MANIFEST], limits.max_json_bytes)
        try:
            signature = base64.b64decode(str(signature_doc.get("signature")), validate=True)
            public_key.verify(signature, manifest_bytes)
        except ValueError:  # not base64, or SignatureMismatch
            raise _Failed(
                "signature", f"the signature over {MANIFEST} does not verify with key {kid}"
            ) from None
        passed("signature", f"ed25519 over {MANIFEST}")

        try:
            manifest = Manifest.from_dict(_parse_json(manifest_bytes, MANIFEST))
        except BundleError as error:
            raise _Failed("manifest", str(error)) from None
        report.manifest = manifest
        passed("manifest", manifest.bundle_id)

        listed = set(manifest.entries)
        present = set(by_name) - {MANIFEST, SIGNATURE}
        if present - listed:
            raise _Failed(
                "entries",
                f"entries not listed in the manifest: {', '.join(sorted(present - listed))}",
            )
        if listed - present:
            raise _Failed(
                "entries",
                "entries listed in the manifest but missing: "
                + ", ".join(sorted(listed - present)),
            )
        missing_required = [n for n in REQUIRED_ENTRIES if n not in listed]
        if missing_required:
            raise _Failed("entries", f"the manifest lists no {', '.join(missing_required)}")
        passed("entries", ", ".join(sorted(listed)))

        contents: dict[str, bytes] = {MANIFEST: manifest_bytes}
        for name in sorted(listed):
            stated = manifest.entries[name]
            info = by_name[name]
            limit = limits.max_json_bytes if name.endswith(".json") else limits.max_entry_bytes
            if stated.size > limit:
                raise _Failed(
                    "sizes", f"entry {name} states {stated.size} bytes, over the limit of {limit}"
                )
            if info.file_size != stated.size:
                raise _Failed(
                    "sizes",
                    f"entry {name} is {info.file_size} bytes in the archive, "
                    f"the manifest states {stated.size}",
                )
            if (
                info.compress_size
                and info.file_size / info.compress_size > limits.max_compression_ratio
            ):
                raise _Failed(
                    "sizes",
                    f"entry {name} expands {info.file_size // info.compress_size}x, over the limit",
                )
            data = _read_entry(archive, info, stated.size)
            if len(data) != stated.size:
                raise _Failed(
                    "sizes",
                    f"entry {name} holds {len(data)} bytes, the manifest states {stated.size}",
                )
            digest = hashlib.sha256(data).hexdigest()
            if digest != stated.sha256:
                raise _Failed(
                    "hashes",
                    f"entry {name} has sha256 {digest[:16]}…, "
                    f"the manifest states {stated.sha256[:16]}…",
                )
            contents[name] = data
        passed("sizes")
        passed("hashes", f"{len(listed)} entries match the manifest")
        if now is not None:
            expired = manifest.expiry_refusal(now)
            if expired is not None:
                raise _Failed("not expired", expired)
            passed(
                "not expired",
                f"expires {manifest.expires_at}" if manifest.expires_at else "never expires",
            )
        return contents


def _parse_json(data: bytes, name: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _Failed(
            "manifest" if name == MANIFEST else "signature", f"{name} is not valid JSON: {error}"
        ) from None


def check_bundle(
    path: Path | str,
    trust: TrustStore,
    limits: BundleLimits = DEFAULT_LIMITS,
    *,
    now: float | None = None,
) -> tuple[VerificationReport, VerifiedBundle | None]:
    """Run every verification check and say which passed.

    Checks, in order: archive (a readable zip within the size limit), entry names (plain names,
    no traversal, no links), entries (no duplicates, signature and manifest present), key not
    revoked, trusted key, signature (over the exact manifest bytes), manifest (well-formed),
    entries (exactly the ones the manifest lists), sizes and hashes of every entry, and, when
    ``now`` is given, not expired (the manifest's ``expires_at`` is after ``now``).

    Expiry gates installs and ``edgeml verify``, which pass ``now``; a reader that serves a
    bundle it already holds passes None, so a bundle that expires while active keeps serving.

    Args:
        path: the bundle file.
        trust: the keys to accept.
        limits: size bounds.
        now: the Unix time to check expiry at; None skips the expiry check.

    Returns:
        The report, and the verified bundle when every check passed (else None).
    """
    path = Path(path)
    report = VerificationReport(str(path))
    try:
        contents = _run_checks(path, trust, limits, report, now)
    except _Failed as failure:
        report.checks.append(CheckResult(failure.check, False, failure.detail))
        return report, None
    assert report.manifest is not None and report.key_id is not None
    return report, VerifiedBundle(path, report.manifest, report.key_id, contents)


def verify_bundle(
    path: Path | str,
    trust: TrustStore,
    limits: BundleLimits = DEFAULT_LIMITS,
    *,
    now: float | None = None,
) -> VerifiedBundle:
    """Verify a bundle and return it; the only way to open one.

    Args:
        path: the bundle file.
        trust: the keys to accept.
        limits: size bounds.
        now: the Unix time to check expiry at; None skips the expiry check.

    Raises:
        BundleError: naming the check that failed and why (a revoked key: ``key not
            revoked``; an expired bundle: ``not expired``).
    """
    report, bundle = check_bundle(path, trust, limits, now=now)
    if bundle is None:
        failure = report.failure
        assert failure is not None
        raise BundleError(f"{path}: refused, check '{failure.name}' failed: {failure.detail}")
    return bundle


def read_manifest_unverified(path: Path | str) -> tuple[Manifest, str | None]:
    """Read a bundle's manifest and signing key id without verifying (for ``inspect``).

    Never use what this returns to decide whether to load a bundle.

    Raises:
        BundleError: the file is not a bundle or its manifest cannot be parsed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            manifest_bytes = _read_entry(
                archive, archive.getinfo(MANIFEST), DEFAULT_LIMITS.max_json_bytes
            )
            try:
                signature = json.loads(
                    _read_entry(
                        archive, archive.getinfo(SIGNATURE), DEFAULT_LIMITS.max_signature_bytes
                    )
                )
                kid = str(signature.get("key_id")) if isinstance(signature, dict) else None
            except (KeyError, json.JSONDecodeError):
                kid = None
        return Manifest.from_dict(json.loads(manifest_bytes)), kid
    except (*DAMAGED_ARCHIVE, KeyError, _Failed) as error:
        raise BundleError(f"{path}: not a readable bundle: {error}") from None
