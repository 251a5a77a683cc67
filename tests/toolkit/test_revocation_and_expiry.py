"""Bundle verification against keys over time: a bundle signed by a revoked key is refused in
both tiers (the report and the exception), and a bundle past its ``expires_at`` fails the
expiry check when, and only when, a time is given."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeml.toolkit.bundle import (
    MANIFEST,
    VerifiedBundle,
    bundle_bytes,
    check_bundle,
    verify_bundle,
)
from edgeml.toolkit.errors import BundleError, InputError
from edgeml.toolkit.keys import key_id, load_private_key, load_public_key
from edgeml.toolkit.manifest import Manifest, expiry_from_options, format_utc, parse_utc
from edgeml.toolkit.trust import (
    REVOCATION_LIST,
    TrustStore,
    load_trust_store,
    new_trust_document,
    next_trust_document,
)

EXPIRY = "2027-03-01T00:00:00Z"


def _write(verified: VerifiedBundle, key_dir: Path, out: Path, **changes: object) -> Path:
    """A copy of a verified bundle with its manifest changed, signed by ``key_dir``'s key."""
    entries = {n: d for n, d in verified.entries.items() if n != MANIFEST}
    manifest = replace(verified.manifest, **changes)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{manifest.bundle_id}.edgeml"
    private = next(key_dir.glob("*.key"))
    path.write_bytes(bundle_bytes(manifest, entries, load_private_key(private)))
    return path


@pytest.fixture(scope="module")
def expiring(tmp_path_factory: pytest.TempPathFactory, built_bundle: Path, key_dir: Path) -> Path:
    verified = verify_bundle(built_bundle, load_trust_store(key_dir))
    return _write(
        verified, key_dir, tmp_path_factory.mktemp("expiring"), version="1.5.0", expires_at=EXPIRY
    )


def test_a_bundle_signed_by_a_revoked_key_is_refused_in_the_report(
    tmp_path: Path, built_bundle: Path, key_dir: Path
) -> None:
    kid = key_id(load_public_key(key_dir / "edgeml.pub"))
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "edgeml.pub").write_bytes((key_dir / "edgeml.pub").read_bytes())
    (trust / REVOCATION_LIST).write_text(kid + "\n")
    report, verified = check_bundle(built_bundle, load_trust_store(trust))
    assert verified is None and not report.passed
    failure = report.failure
    assert failure is not None and failure.name == "key not revoked"
    assert kid in failure.detail and "revocation list" in failure.detail
    assert report.key_id == kid
    assert report.to_dict()["checks"][-1] == {
        "check": "key not revoked",
        "passed": False,
        "detail": failure.detail,
    }


def test_a_bundle_signed_by_a_revoked_key_raises_naming_the_key(
    built_bundle: Path, key_dir: Path
) -> None:
    public = load_public_key(key_dir / "edgeml.pub")
    kid = key_id(public)
    root, successor = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    v1 = new_trust_document([public], [root.public_key()])
    v2 = next_trust_document(v1, add=[successor.public_key()], revoke=[kid]).sign(root)
    with pytest.raises(BundleError) as caught:
        verify_bundle(built_bundle, TrustStore.from_document(v2))
    message = str(caught.value)
    assert caught.value.exit_code == 3
    assert "check 'key not revoked' failed" in message
    assert f"signed by key {kid}, which is revoked (revoked by trust version 2)" in message


def test_revocation_wins_over_a_trusted_key(built_bundle: Path, key_dir: Path) -> None:
    public = load_public_key(key_dir / "edgeml.pub")
    store = TrustStore.of(public)
    assert verify_bundle(built_bundle, store).key_id == key_id(public)
    with pytest.raises(BundleError, match="key not revoked"):
        verify_bundle(built_bundle, store.with_revoked([key_id(public)]))


def test_an_expired_bundle_fails_the_expiry_check_only_when_a_time_is_given(
    expiring: Path, key_dir: Path
) -> None:
    trust = load_trust_store(key_dir)
    expires = parse_utc(EXPIRY)
    report, verified = check_bundle(expiring, trust, now=expires - 1)
    assert verified is not None and verified.manifest.expires_at == EXPIRY
    assert report.checks[-1].name == "not expired" and EXPIRY in report.checks[-1].detail
    report, verified = check_bundle(expiring, trust, now=expires)
    assert verified is None
    assert report.failure is not None and report.failure.name == "not expired"
    assert f"expired at {EXPIRY} (now {EXPIRY})" in report.failure.detail
    assert report.to_dict()["expires_at"] == EXPIRY
    with pytest.raises(BundleError, match=f"check 'not expired' failed: .*expired at {EXPIRY}"):
        verify_bundle(expiring, trust, now=expires + 86400)
    # Serving a bundle the device holds passes no time: an active bundle keeps serving.
    assert verify_bundle(expiring, trust).bundle_id == "cancer-1.5.0-raspberry-pi-4"


def test_a_bundle_without_expiry_never_expires(built_bundle: Path, key_dir: Path) -> None:
    report, verified = check_bundle(built_bundle, load_trust_store(key_dir), now=4e9)
    assert verified is not None and report.checks[-1].detail == "never expires"


def test_expires_at_is_signed_and_absent_means_never(built_bundle: Path, key_dir: Path) -> None:
    manifest = verify_bundle(built_bundle, load_trust_store(key_dir)).manifest
    assert manifest.expires_at is None and "expires_at" not in manifest.to_dict()
    dated = replace(manifest, expires_at=EXPIRY)
    assert Manifest.from_dict(dated.to_dict()) == dated
    assert dated.expiry_refusal(parse_utc(EXPIRY) - 1) is None
    with pytest.raises(BundleError, match="expires_at"):
        replace(manifest, expires_at="2027-02-30T00:00:00Z")
    with pytest.raises(BundleError, match="expires_at"):
        Manifest.from_dict({**manifest.to_dict(), "expires_at": 1800000000})


def test_expiry_options() -> None:
    now = parse_utc("2027-01-01T00:00:00Z")
    assert expiry_from_options(None, None, now) is None
    assert expiry_from_options(30, None, now) == "2027-01-31T00:00:00Z"
    assert expiry_from_options(None, "2027-02-01", now) == "2027-02-01T00:00:00Z"
    assert expiry_from_options(None, "2027-02-01T12:00:00Z", now) == "2027-02-01T12:00:00Z"
    for days, date, message in (
        (1, "2027-02-01", "not both"),
        (0, None, "positive"),
        (None, "next week", "--expires"),
        (None, "2026-12-31", "not in the future"),
    ):
        with pytest.raises(InputError, match=message):
            expiry_from_options(days, date, now)
    assert format_utc(now) == "2027-01-01T00:00:00Z"
