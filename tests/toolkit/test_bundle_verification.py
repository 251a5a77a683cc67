"""Bundle verification: a good bundle verifies, every tampered one is refused naming its check.

Each tampering is done on a copy of a real signed bundle (``built_bundle``) and is refused by
all three ways in: :func:`check_bundle` (a report whose failing check has the expected name),
:func:`verify_bundle` (``BundleError``, exit code 3, naming the check) and ``edgeml verify``
(exit 3, the check named on stderr). Writing is checked for determinism: the same inputs give
the same bytes, with or without ``SOURCE_DATE_EPOCH``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from edgeml.toolkit.bundle import (
    DEFAULT_LIMITS,
    BundleLimits,
    bundle_bytes,
    check_bundle,
    read_manifest_unverified,
    sign_manifest,
    verify_bundle,
)
from edgeml.toolkit.cli import app
from edgeml.toolkit.errors import BundleError, ConfigError
from edgeml.toolkit.keys import key_id, load_private_key, load_public_key
from edgeml.toolkit.manifest import Manifest, canonical_json
from edgeml.toolkit.trust import TrustStore, load_trust_store

runner = CliRunner()

CHECKS_IN_ORDER = [
    "archive",
    "key not revoked",
    "trusted key",
    "signature",
    "manifest",
    "entries",
    "sizes",
    "hashes",
]
KNOWN_CHECKS = {*CHECKS_IN_ORDER, "entry names"}
PAYLOAD = ("model.onnx", "baseline.json", "golden.json")
REGULAR_FILE = (stat.S_IFREG | 0o644) << 16


# --- helpers ----------------------------------------------------------------------------------


def entry_info(name: str, external_attr: int = REGULAR_FILE) -> zipfile.ZipInfo:
    """A zip entry header like the ones ``bundle_bytes`` writes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = external_attr
    return info


def rewrite_bundle(
    src: Path,
    dst: Path,
    *,
    replace: Mapping[str, bytes] | None = None,
    remove: Iterable[str] = (),
    add: Sequence[tuple[str | zipfile.ZipInfo, bytes]] = (),
    central: Mapping[str, Callable[[zipfile.ZipInfo], None]] | None = None,
) -> Path:
    """Write ``src`` again as ``dst``, entry by entry in the original order.

    Args:
        src: the bundle to copy.
        dst: where to write the copy.
        replace: new contents by entry name (the headers are copied).
        remove: names of entries to leave out.
        add: entries appended after the original ones (a name gets a regular-file header).
        central: by entry name, a function that changes the entry's central-directory header
            after its data is written (CRC, compression method, flags, version).

    Returns:
        ``dst``.
    """
    replace = dict(replace or {})
    central = dict(central or {})
    removed = set(remove)
    with zipfile.ZipFile(src) as original, zipfile.ZipFile(dst, "w") as out:
        items: list[tuple[zipfile.ZipInfo, bytes]] = []
        for info in original.infolist():
            if info.filename in removed:
                continue
            header = entry_info(info.filename, info.external_attr)
            header.date_time = info.date_time
            header.compress_type = info.compress_type
            items.append((header, replace.get(info.filename, original.read(info))))
        for name, data in add:
            items.append((entry_info(name) if isinstance(name, str) else name, data))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Duplicate name" is the point
            for header, data in items:
                out.writestr(header, data, compresslevel=9)
                if header.filename in central:
                    central[header.filename](out.filelist[-1])
    return dst


def patch_entry_data(path: Path, name: str, offset: int, data: bytes) -> Path:
    """Overwrite raw (compressed) bytes of an entry in place, leaving every header alone."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    start = info.header_offset
    name_length = int.from_bytes(raw[start + 26 : start + 28], "little")
    extra_length = int.from_bytes(raw[start + 28 : start + 30], "little")
    at = start + 30 + name_length + extra_length + offset
    raw[at : at + len(data)] = data
    path.write_bytes(bytes(raw))
    return path


def read_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def flip_byte(data: bytes, at: int | None = None) -> bytes:
    """The same bytes with one of them changed (the middle one by default)."""
    at = len(data) // 2 if at is None else at
    changed = bytearray(data)
    changed[at] ^= 0x01
    return bytes(changed)


def resigned_manifest(
    source: Path, key: Ed25519PrivateKey, change: Callable[[dict], None]
) -> dict[str, bytes]:
    """Replacement manifest and signature: the manifest document changed, then signed."""
    document = json.loads(read_entries(source)["manifest.json"])
    change(document)
    manifest_bytes = canonical_json(document)
    return {"manifest.json": manifest_bytes, "signature.json": sign_manifest(manifest_bytes, key)}


def check_names_failure(report, expected: str) -> None:
    assert not report.passed
    assert report.failure is not None
    assert report.failure.name == expected, report.checks
    assert report.checks[-1] is report.failure  # checks stop at the first failure


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def trust(key_dir: Path) -> TrustStore:
    return load_trust_store(key_dir)


@pytest.fixture(scope="session")
def signing_key(key_dir: Path) -> Ed25519PrivateKey:
    return load_private_key(key_dir / "edgeml.key")


@pytest.fixture(scope="session")
def untrusted_key(other_key_dir: Path) -> Ed25519PrivateKey:
    return load_private_key(other_key_dir / "other.key")


@pytest.fixture
def bundle(tmp_path: Path, built_bundle: Path) -> Path:
    """A private copy of the signed bundle."""
    return Path(shutil.copy(built_bundle, tmp_path / built_bundle.name))


@pytest.fixture(scope="session")
def original_entries(built_bundle: Path) -> dict[str, bytes]:
    return read_entries(built_bundle)


# --- a good bundle ----------------------------------------------------------------------------


def test_good_bundle_verifies(built_bundle: Path, key_dir: Path, trust: TrustStore) -> None:
    report, verified = check_bundle(built_bundle, trust)
    assert report.passed
    assert [check.name for check in report.checks] == CHECKS_IN_ORDER
    assert all(check.passed for check in report.checks)
    assert verified is not None
    expected_kid = key_id(load_public_key(key_dir / "edgeml.pub"))
    assert verified.key_id == report.key_id == expected_kid
    assert verified.bundle_id == "cancer-1.0.0-raspberry-pi-4" == built_bundle.stem
    assert dict(verified.entries) == {
        name: data for name, data in read_entries(built_bundle).items() if name != "signature.json"
    }
    document = report.to_dict()
    assert document["verified"] is True
    assert document["key_id"] == expected_kid
    assert document["bundle_id"] == verified.bundle_id

    bundle = verify_bundle(built_bundle, trust)
    assert bundle.key_id == expected_kid
    assert bundle.manifest == verified.manifest
    assert set(bundle.manifest.entries) == set(PAYLOAD)
    assert bundle.json_entry("golden.json") == json.loads(bundle.entries["golden.json"])


def test_verify_accepts_a_str_path(built_bundle: Path, trust: TrustStore) -> None:
    assert verify_bundle(str(built_bundle), trust).bundle_id == built_bundle.stem


def test_trust_store_from_a_single_pub_file(built_bundle: Path, key_dir: Path) -> None:
    store = load_trust_store(key_dir / "edgeml.pub")
    assert list(store.sources.values()) == [key_dir / "edgeml.pub"]
    assert verify_bundle(built_bundle, store).key_id in store.keys


def test_trust_store_from_a_folder_of_several_keys(
    tmp_path: Path, built_bundle: Path, key_dir: Path, other_key_dir: Path
) -> None:
    folder = tmp_path / "trust"
    folder.mkdir()
    shutil.copy(key_dir / "edgeml.pub", folder)
    shutil.copy(other_key_dir / "other.pub", folder)
    (folder / "README.txt").write_text("not a key, and not a .pub: passed over")
    store = load_trust_store(folder)
    assert len(store.keys) == 2
    assert verify_bundle(built_bundle, store).key_id == key_id(
        load_public_key(key_dir / "edgeml.pub")
    )


def test_trust_store_of_keys_in_memory(built_bundle: Path, signing_key) -> None:
    store = TrustStore.of(signing_key.public_key())
    assert verify_bundle(built_bundle, store).key_id == key_id(signing_key.public_key())


def test_only_the_other_key_is_not_enough(built_bundle: Path, other_key_dir: Path) -> None:
    store = load_trust_store(other_key_dir / "other.pub")
    report, verified = check_bundle(built_bundle, store)
    assert verified is None
    check_names_failure(report, "trusted key")


@pytest.mark.parametrize("content", [None, "edgeml.key"], ids=["empty", "private-key-only"])
def test_trust_folder_without_pub_is_a_config_error(
    tmp_path: Path, key_dir: Path, content: str | None
) -> None:
    folder = tmp_path / "trust"
    folder.mkdir()
    if content:
        shutil.copy(key_dir / content, folder)
    with pytest.raises(ConfigError, match=r"holds no \.pub file") as caught:
        load_trust_store(folder)
    assert caught.value.exit_code == 2
    assert str(folder) in str(caught.value)


def test_missing_trust_store_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_trust_store(tmp_path / "nowhere")
    assert caught.value.exit_code == 2


def test_unverified_manifest_matches_the_verified_one(
    built_bundle: Path, trust: TrustStore
) -> None:
    manifest, kid = read_manifest_unverified(built_bundle)
    verified = verify_bundle(built_bundle, trust)
    assert manifest == verified.manifest
    assert kid == verified.key_id


# --- tampering --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    trusted: Ed25519PrivateKey
    untrusted: Ed25519PrivateKey


Tamper = Callable[[Path, Path, Keys], Path]
"""Given the pristine copy, a free path and the keys, write the tampered bundle, return it."""


@dataclass(frozen=True)
class Case:
    """A tampering and the check that must refuse it (None: any check, as long as it refuses)."""

    tamper: Tamper
    check: str | None
    limits: BundleLimits = DEFAULT_LIMITS

    @property
    def via_cli(self) -> bool:
        """``edgeml verify`` uses the default limits only."""
        return self.limits == DEFAULT_LIMITS


def _replace(name: str, change: Callable[[bytes], bytes]) -> Tamper:
    def tamper(src: Path, dst: Path, keys: Keys) -> Path:
        return rewrite_bundle(src, dst, replace={name: change(read_entries(src)[name])})

    return tamper


def _remove(*names: str) -> Tamper:
    return lambda src, dst, keys: rewrite_bundle(src, dst, remove=names)


def _add(*items: tuple[str | zipfile.ZipInfo, bytes]) -> Tamper:
    return lambda src, dst, keys: rewrite_bundle(src, dst, add=items)


def _duplicate(name: str) -> Tamper:
    def tamper(src: Path, dst: Path, keys: Keys) -> Path:
        return rewrite_bundle(src, dst, add=[(name, read_entries(src)[name])])

    return tamper


def _resign(change: Callable[[dict], None], trusted: bool = True) -> Tamper:
    def tamper(src: Path, dst: Path, keys: Keys) -> Path:
        key = keys.trusted if trusted else keys.untrusted
        return rewrite_bundle(src, dst, replace=resigned_manifest(src, key, change))

    return tamper


def _signature_document(document: dict) -> Tamper:
    return _replace("signature.json", lambda data: canonical_json(document))


def _bytes(data: bytes) -> Tamper:
    def tamper(src: Path, dst: Path, keys: Keys) -> Path:
        dst.write_bytes(data)
        return dst

    return tamper


def _truncate(cut: Callable[[int], int]) -> Tamper:
    def tamper(src: Path, dst: Path, keys: Keys) -> Path:
        data = src.read_bytes()
        dst.write_bytes(data[: cut(len(data))])
        return dst

    return tamper


def _missing(src: Path, dst: Path, keys: Keys) -> Path:
    return dst.with_name("does-not-exist.edgeml")


def _folder(src: Path, dst: Path, keys: Keys) -> Path:
    dst.mkdir()
    return dst


def _zip_bomb(src: Path, dst: Path, keys: Keys) -> Path:
    """A bundle signed by the trusted key whose model is 4 MiB of zeros (about 1000x)."""
    manifest, _ = read_manifest_unverified(src)
    entries = {name: data for name, data in read_entries(src).items() if name in PAYLOAD}
    entries["model.onnx"] = bytes(4 * 1024**2)
    dst.write_bytes(bundle_bytes(manifest, entries, keys.trusted))
    return dst


def _set_size(name: str, delta: int) -> Callable[[dict], None]:
    def change(document: dict) -> None:
        document["entries"][name]["size"] += delta

    return change


def _set(key: str, value: object) -> Callable[[dict], None]:
    def change(document: dict) -> None:
        document[key] = value

    return change


def _bump_version(data: bytes) -> bytes:
    assert b'"version":"1.0.0"' in data
    return data.replace(b'"version":"1.0.0"', b'"version":"1.0.9"', 1)


def _symlink(name: str) -> zipfile.ZipInfo:
    return entry_info(name, (stat.S_IFLNK | 0o777) << 16)


def _patch_central(name: str, change: Callable[[zipfile.ZipInfo], None]) -> Tamper:
    return lambda src, dst, keys: rewrite_bundle(src, dst, central={name: change})


def _bad_deflate(name: str) -> Tamper:
    """The entry's deflate stream starts with a block of the reserved type 3."""

    def tamper(src: Path, dst: Path, keys: Keys) -> Path:
        return patch_entry_data(Path(shutil.copy(src, dst)), name, 0, b"\x07")

    return tamper


def _bad_crc(info: zipfile.ZipInfo) -> None:
    info.CRC ^= 0xFFFFFFFF


def _unknown_compression(info: zipfile.ZipInfo) -> None:
    info.compress_type = 99


def _encrypted_flag(info: zipfile.ZipInfo) -> None:
    info.flag_bits |= 0x1


def _future_zip_version(info: zipfile.ZipInfo) -> None:
    info.extract_version = 99


CASES = {
    # a changed byte in each entry, original manifest and signature kept
    "changed-byte-model.onnx": Case(_replace("model.onnx", flip_byte), "hashes"),
    "changed-byte-baseline.json": Case(_replace("baseline.json", flip_byte), "hashes"),
    "changed-byte-golden.json": Case(_replace("golden.json", flip_byte), "hashes"),
    "first-byte-model.onnx": Case(_replace("model.onnx", lambda d: flip_byte(d, 0)), "hashes"),
    "appended-byte-model.onnx": Case(_replace("model.onnx", lambda d: d + b"\0"), "sizes"),
    "shortened-golden.json": Case(_replace("golden.json", lambda d: d[:-1]), "sizes"),
    # the manifest changed without re-signing, or signed by a key nobody trusts
    "manifest-version-changed": Case(_replace("manifest.json", _bump_version), "signature"),
    "manifest-byte-changed": Case(_replace("manifest.json", flip_byte), "signature"),
    "manifest-resigned-by-untrusted-key": Case(
        _resign(_set("version", "9.9.9"), trusted=False), "trusted key"
    ),
    "manifest-copy-signed-by-untrusted-key": Case(_resign(lambda d: None, False), "trusted key"),
    # the signature document itself
    "signature-not-json": Case(_replace("signature.json", lambda d: b"not json {"), "signature"),
    "signature-not-utf8": Case(_replace("signature.json", lambda d: b"\xff\xfe\xfd"), "signature"),
    "signature-a-list": Case(_signature_document([]), "signature"),
    "signature-other-algorithm": Case(
        _replace(
            "signature.json",
            lambda d: canonical_json({**json.loads(d), "algorithm": "rsa-pss"}),
        ),
        "signature",
    ),
    "signature-bytes-changed": Case(
        _replace(
            "signature.json",
            lambda d: canonical_json(
                {**json.loads(d), "signature": "A" * len(json.loads(d)["signature"])}
            ),
        ),
        "signature",
    ),
    "signature-not-base64": Case(
        _replace("signature.json", lambda d: canonical_json({**json.loads(d), "signature": "***"})),
        "signature",
    ),
    "signature-unknown-key-id": Case(
        _replace(
            "signature.json",
            lambda d: canonical_json({**json.loads(d), "key_id": "0123456789abcdef"}),
        ),
        "trusted key",
    ),
    # entries that the manifest does not list, or that are missing
    "extra-entry": Case(_add(("extra.bin", b"payload")), "entries"),
    "missing-model.onnx": Case(_remove("model.onnx"), "entries"),
    "missing-baseline.json": Case(_remove("baseline.json"), "entries"),
    "missing-golden.json": Case(_remove("golden.json"), "entries"),
    "missing-manifest.json": Case(_remove("manifest.json"), "entries"),
    "missing-signature.json": Case(_remove("signature.json"), "entries"),
    "duplicate-model.onnx": Case(_duplicate("model.onnx"), "entries"),
    "duplicate-manifest.json": Case(_duplicate("manifest.json"), "entries"),
    "manifest-lists-no-golden": Case(_resign(lambda d: d["entries"].pop("golden.json")), "entries"),
    # paths that escape the bundle, and links
    "path-dotdot": Case(_add(("../evil", b"x")), "entry names"),
    "path-absolute": Case(_add(("/abs", b"x")), "entry names"),
    "path-nested": Case(_add(("a/b", b"x")), "entry names"),
    "path-backslash": Case(_add(("..\\x", b"x")), "entry names"),
    "path-drive": Case(_add(("C:evil", b"x")), "entry names"),
    "path-folder": Case(_add(("folder/", b"")), "entry names"),
    "symlink-entry": Case(_add((_symlink("link"), b"/etc/passwd")), "entry names"),
    "model-replaced-by-symlink": Case(
        lambda src, dst, keys: rewrite_bundle(
            src,
            dst,
            remove=["model.onnx"],
            add=[(_symlink("model.onnx"), read_entries(src)["model.onnx"])],
        ),
        "entry names",
    ),
    # damaged or absent files
    "truncated-to-10-bytes": Case(_truncate(lambda n: 10), "archive"),
    "truncated-to-half": Case(_truncate(lambda n: n // 2), "archive"),
    "truncated-last-30-bytes": Case(_truncate(lambda n: n - 30), "archive"),
    "empty-file": Case(_truncate(lambda n: 0), "archive"),
    "not-a-zip": Case(_bytes(b"this is a text file, not a bundle\n" * 10), "archive"),
    "missing-file": Case(_missing, "archive"),
    "a-folder": Case(_folder, "archive"),
    # sizes: a manifest re-signed with the trusted key, so only the size check can catch it
    "model-larger-than-stated": Case(_resign(_set_size("model.onnx", -1)), "sizes"),
    "golden-larger-than-stated": Case(_resign(_set_size("golden.json", -100)), "sizes"),
    "model-smaller-than-stated": Case(_resign(_set_size("model.onnx", +1)), "sizes"),
    "zip-bomb-default-limits": Case(_zip_bomb, "sizes"),
    "over-max-entry-bytes": Case(_remove(), "sizes", BundleLimits(max_entry_bytes=512)),
    "over-max-json-bytes": Case(_remove(), "sizes", BundleLimits(max_json_bytes=1024)),
    "over-max-bundle-bytes": Case(_remove(), "sizes", BundleLimits(max_bundle_bytes=1024)),
    "over-max-signature-bytes": Case(_remove(), "sizes", BundleLimits(max_signature_bytes=32)),
    "over-max-compression-ratio": Case(_remove(), "sizes", BundleLimits(max_compression_ratio=2)),
    "over-max-entries": Case(_remove(), "entries", BundleLimits(max_entries=3)),
    # a manifest that verifies but is not a manifest this edgeml reads
    "manifest-format-version-2": Case(_resign(_set("format_version", 2)), "manifest"),
    "manifest-wrong-bundle-id": Case(_resign(_set("bundle_id", "other-1-x")), "manifest"),
}

# Damaged archives that must be refused too; today they escape as unhandled exceptions.
# Which check should name them is the fix's choice, so any refusal will do.
DAMAGED_ARCHIVE_CASES = {
    "bad-deflate-model.onnx": Case(_bad_deflate("model.onnx"), None),
    "bad-deflate-signature.json": Case(_bad_deflate("signature.json"), None),
    "bad-crc-manifest.json": Case(_patch_central("manifest.json", _bad_crc), None),
    "unknown-compression-golden.json": Case(
        _patch_central("golden.json", _unknown_compression), None
    ),
    "encrypted-flag-golden.json": Case(_patch_central("golden.json", _encrypted_flag), None),
    "future-zip-version": Case(_patch_central("model.onnx", _future_zip_version), None),
    "manifest-size-infinity": Case(_resign(_set_size("model.onnx", float("inf"))), "manifest"),
}


def _params() -> list:
    cases = {**CASES, **DAMAGED_ARCHIVE_CASES}
    return [pytest.param(case, id=name) for name, case in cases.items()]


@pytest.mark.parametrize("case", _params())
def test_tampered_bundle_is_refused(
    case: Case,
    bundle: Path,
    tmp_path: Path,
    key_dir: Path,
    trust: TrustStore,
    signing_key: Ed25519PrivateKey,
    untrusted_key: Ed25519PrivateKey,
) -> None:
    path = case.tamper(bundle, tmp_path / "tampered.edgeml", Keys(signing_key, untrusted_key))

    report, verified = check_bundle(path, trust, case.limits)
    assert verified is None
    assert report.failure is not None
    check = case.check or report.failure.name
    check_names_failure(report, check)
    assert check in KNOWN_CHECKS
    assert report.to_dict()["verified"] is False

    with pytest.raises(BundleError) as caught:
        verify_bundle(path, trust, case.limits)
    assert caught.value.exit_code == 3
    assert f"check '{check}' failed" in str(caught.value)
    assert str(path) in str(caught.value)

    if case.via_cli:
        result = runner.invoke(app, ["verify", str(path), "--trust", str(key_dir)])
        assert result.exit_code == 3, result.output
        assert f"check '{check}' failed" in result.stderr
        assert "FAILED" in result.stdout


def test_tampered_bundle_json_report(bundle: Path, tmp_path: Path, key_dir: Path) -> None:
    path = rewrite_bundle(
        bundle, tmp_path / "t.edgeml", replace={"golden.json": b"{}"}
    )  # shorter than stated
    result = runner.invoke(app, ["verify", str(path), "--trust", str(key_dir), "--json"])
    assert result.exit_code == 3
    document = json.loads(result.stdout)
    assert document["verified"] is False
    assert document["checks"][-1]["check"] == "sizes"
    assert document["checks"][-1]["passed"] is False
    assert "golden.json" in document["checks"][-1]["detail"]
    assert "check 'sizes' failed" in result.stderr


def test_rewrite_without_changes_still_verifies(
    bundle: Path, tmp_path: Path, trust: TrustStore
) -> None:
    """The helper itself changes nothing a verifier looks at."""
    copy = rewrite_bundle(bundle, tmp_path / "copy.edgeml")
    assert verify_bundle(copy, trust).entries == verify_bundle(bundle, trust).entries


def test_entry_changed_with_a_matching_manifest_but_old_signature_is_refused(
    bundle: Path, tmp_path: Path, trust: TrustStore, original_entries: dict[str, bytes]
) -> None:
    """Changing an entry and fixing its digest in the manifest breaks the signature."""
    model = flip_byte(original_entries["model.onnx"])
    document = json.loads(original_entries["manifest.json"])
    document["entries"]["model.onnx"]["sha256"] = hashlib.sha256(model).hexdigest()
    path = rewrite_bundle(
        bundle,
        tmp_path / "t.edgeml",
        replace={"model.onnx": model, "manifest.json": canonical_json(document)},
    )
    report, _ = check_bundle(path, trust)
    check_names_failure(report, "signature")


@pytest.mark.parametrize("cut", ["10", "half", "last-30", "every-97th"], ids=lambda c: f"cut-{c}")
def test_truncation_never_passes_and_never_raises(
    cut: str, bundle: Path, tmp_path: Path, trust: TrustStore
) -> None:
    data = bundle.read_bytes()
    points = {
        "10": [10],
        "half": [len(data) // 2],
        "last-30": [len(data) - 30],
        "every-97th": range(0, len(data), 97),
    }[cut]
    path = tmp_path / "cut.edgeml"
    for point in points:
        path.write_bytes(data[:point])
        report, verified = check_bundle(path, trust)  # no exception escapes
        assert verified is None, point
        assert not report.passed
        assert report.failure is not None and report.failure.name in KNOWN_CHECKS


def test_changed_bytes_anywhere_are_refused_or_harmless(
    bundle: Path, tmp_path: Path, trust: TrustStore
) -> None:
    """A byte changed anywhere in the file: either refused naming a check, or (for zip
    metadata no check covers, e.g. timestamps) verified with exactly the original contents."""
    data = bundle.read_bytes()
    original = dict(verify_bundle(bundle, trust).entries)
    path = tmp_path / "flipped.edgeml"
    escaped = []
    for at in range(0, len(data), 7):
        path.write_bytes(flip_byte(data, at))
        try:
            report, verified = check_bundle(path, trust)
        except Exception as error:  # any exception escaping verification is a bug
            escaped.append((at, type(error).__name__))
            continue
        if verified is not None:
            assert dict(verified.entries) == original, at
        else:
            assert report.failure is not None and report.failure.name in KNOWN_CHECKS
    assert escaped == []


# --- writing: deterministic bytes ------------------------------------------------------------


@pytest.fixture(scope="session")
def bundle_inputs(built_bundle: Path) -> tuple[Manifest, dict[str, bytes]]:
    manifest, _ = read_manifest_unverified(built_bundle)
    entries = {name: data for name, data in read_entries(built_bundle).items() if name in PAYLOAD}
    return manifest, entries


def test_same_inputs_give_the_same_bytes(
    bundle_inputs, signing_key: Ed25519PrivateKey, built_bundle: Path, monkeypatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    manifest, entries = bundle_inputs
    first = bundle_bytes(manifest, entries, signing_key)
    second = bundle_bytes(manifest, dict(reversed(list(entries.items()))), signing_key)
    assert first == second
    # and the same as the bundle the build wrote, re-assembled from its own parts
    assert first == built_bundle.read_bytes()


def test_entries_are_sorted_with_fixed_metadata(
    bundle_inputs, signing_key: Ed25519PrivateKey, monkeypatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    manifest, entries = bundle_inputs
    with zipfile.ZipFile(io.BytesIO(bundle_bytes(manifest, entries, signing_key))) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    assert names == sorted(names)
    assert names == [
        "baseline.json",
        "golden.json",
        "manifest.json",
        "model.onnx",
        "signature.json",
    ]
    for info in infos:
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr == REGULAR_FILE
        assert info.compress_type == zipfile.ZIP_DEFLATED


def test_source_date_epoch_sets_the_timestamps(
    bundle_inputs, signing_key: Ed25519PrivateKey, monkeypatch, tmp_path: Path, trust
) -> None:
    manifest, entries = bundle_inputs
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    without = bundle_bytes(manifest, entries, signing_key)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # 2023-11-14T22:13:20Z
    first = bundle_bytes(manifest, entries, signing_key)
    second = bundle_bytes(manifest, entries, signing_key)
    assert first == second
    assert first != without
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert {info.date_time for info in archive.infolist()} == {(2023, 11, 14, 22, 13, 20)}
    path = tmp_path / "dated.edgeml"
    path.write_bytes(first)
    assert (
        verify_bundle(path, trust).entries
        == verify_bundle(_write(tmp_path / "undated.edgeml", without), trust).entries
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_source_date_epoch_before_1980_is_clamped(
    bundle_inputs, signing_key: Ed25519PrivateKey, monkeypatch
) -> None:
    manifest, entries = bundle_inputs
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    with zipfile.ZipFile(io.BytesIO(bundle_bytes(manifest, entries, signing_key))) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_source_date_epoch_not_an_integer_is_refused(
    bundle_inputs, signing_key: Ed25519PrivateKey, monkeypatch
) -> None:
    manifest, entries = bundle_inputs
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(BundleError, match="SOURCE_DATE_EPOCH"):
        bundle_bytes(manifest, entries, signing_key)


def test_source_date_epoch_beyond_zip_range_is_a_bundle_error(
    bundle_inputs, signing_key: Ed25519PrivateKey, monkeypatch
) -> None:
    manifest, entries = bundle_inputs
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "99999999999")  # year 5138
    with pytest.raises(BundleError, match="SOURCE_DATE_EPOCH"):
        bundle_bytes(manifest, entries, signing_key)


def test_a_bundle_needs_every_required_entry(bundle_inputs, signing_key: Ed25519PrivateKey) -> None:
    manifest, entries = bundle_inputs
    for name in PAYLOAD:
        partial = {k: v for k, v in entries.items() if k != name}
        with pytest.raises(BundleError, match=name):
            bundle_bytes(manifest, partial, signing_key)


@pytest.mark.parametrize("name", ["a/b", "../evil", "manifest.json"])
def test_bundle_bytes_refuses_names_a_reader_refuses(
    name: str, bundle_inputs, signing_key: Ed25519PrivateKey
) -> None:
    manifest, entries = bundle_inputs
    with pytest.raises(BundleError):
        bundle_bytes(manifest, {**entries, name: b"{}"}, signing_key)
