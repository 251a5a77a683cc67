"""Keys over time on a real state folder: taking a newer trust document, refusing bundles of a
revoked key, falling back when the active bundle's key is revoked, the persisted chain of trust,
expired bundles, and downgrade by replay (also of an older bundle re-signed by a new key)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeml.agent.install import install_bundle, recover, rollback
from edgeml.agent.slots import TRUST_CHAIN_FILE, read_state, slot_dir
from edgeml.agent.trust import (
    CHAIN_FORMAT,
    current_trust,
    load_device_trust,
    update_trust,
)
from edgeml.toolkit.bundle import MANIFEST, bundle_bytes, verify_bundle
from edgeml.toolkit.errors import BundleError, TrustError
from edgeml.toolkit.keys import key_id, load_private_key
from edgeml.toolkit.manifest import parse_utc
from edgeml.toolkit.trust import (
    REVOCATION_LIST,
    TrustDocument,
    load_trust_store,
    new_trust_document,
    next_trust_document,
)

PROFILE = "raspberry-pi-4"


def kid(key: Ed25519PrivateKey) -> str:
    return key_id(key.public_key())


@pytest.fixture(scope="module")
def keys(key_dir: Path) -> dict[str, Ed25519PrivateKey]:
    """``a``: the session's key (signs the built bundle); ``b``: its successor; ``root``."""
    return {
        "a": load_private_key(key_dir / "edgeml.key"),
        "b": Ed25519PrivateKey.generate(),
        "root": Ed25519PrivateKey.generate(),
        "outsider": Ed25519PrivateKey.generate(),
    }


@pytest.fixture(scope="module")
def bundles(
    tmp_path_factory: pytest.TempPathFactory,
    built_bundle: Path,
    key_dir: Path,
    keys: dict[str, Ed25519PrivateKey],
) -> dict[str, Path]:
    """Versions of the session's bundle, each signed by the key its name ends with."""
    verified = verify_bundle(built_bundle, load_trust_store(key_dir))
    entries = {n: d for n, d in verified.entries.items() if n != MANIFEST}
    out = tmp_path_factory.mktemp("trust-bundles")
    made: dict[str, Path] = {}
    for label, version, signer, changes in (
        ("1.0.0-a", "1.0.0", "a", {}),
        ("1.0.0-b", "1.0.0", "b", {}),
        ("0.9.0-b", "0.9.0", "b", {}),
        ("1.1.0-b", "1.1.0", "b", {}),
        ("1.2.0-a", "1.2.0", "a", {}),
        ("1.3.0-b", "1.3.0", "b", {}),
        ("1.4.0-a", "1.4.0", "a", {}),
        ("1.5.0-b-expires", "1.5.0", "b", {"expires_at": "2026-01-01T00:00:00Z"}),
        ("1.6.0-b", "1.6.0", "b", {}),
    ):
        manifest = replace(verified.manifest, version=version, **changes)
        folder = out / label
        folder.mkdir()
        path = folder / f"{manifest.bundle_id}.edgeml"
        path.write_bytes(bundle_bytes(manifest, entries, keys[signer]))
        made[label] = path
    return made


@pytest.fixture(scope="module")
def v1(keys: dict[str, Ed25519PrivateKey]) -> TrustDocument:
    """The configured trust: a and b sign bundles, root signs the next version."""
    return new_trust_document(
        [keys["a"].public_key(), keys["b"].public_key()], [keys["root"].public_key()]
    ).sign(keys["root"])


@pytest.fixture(scope="module")
def v2(v1: TrustDocument, keys: dict[str, Ed25519PrivateKey]) -> TrustDocument:
    """Key a revoked: b alone signs bundles."""
    return next_trust_document(v1, revoke=[kid(keys["a"])]).sign(keys["root"])


@pytest.fixture
def configured(tmp_path: Path, v1: TrustDocument) -> Path:
    path = tmp_path / "etc" / "trust.json"
    path.parent.mkdir()
    path.write_bytes(v1.to_bytes())
    return path


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def install(path: Path, state_dir: Path, configured: Path, **options: object):
    return install_bundle(
        path,
        state_dir,
        lambda: current_trust(state_dir, configured),
        PROFILE,
        **options,  # type: ignore[arg-type]
    )


# --- revocation -------------------------------------------------------------------------------


def test_revoking_the_active_bundles_key_falls_back_to_the_previous_bundle(
    state_dir: Path,
    configured: Path,
    bundles: dict[str, Path],
    v2: TrustDocument,
    keys: dict[str, Ed25519PrivateKey],
) -> None:
    install(bundles["1.1.0-b"], state_dir, configured)
    install(bundles["1.2.0-a"], state_dir, configured)
    result = update_trust(state_dir, configured, v2.to_bytes())
    assert result.changed and (result.previous_version, result.version) == (1, 2)
    assert result.recovery is not None and result.recovery.fell_back
    state = read_state(state_dir)
    assert state.active is not None and state.active.bundle_id == "cancer-1.1.0-raspberry-pi-4"
    assert state.previous is None
    assert state.history[-1].event == "trust-updated"
    assert not slot_dir(state_dir, "cancer-1.2.0-raspberry-pi-4").exists()
    detail = result.describe()
    assert "trust version 2 accepted (was 1)" in detail
    assert f"revoked {kid(keys['a'])}" in detail
    assert "active bundle cancer-1.2.0-raspberry-pi-4 does not verify against trust version 2" in (
        detail
    )
    assert "now serving cancer-1.1.0-raspberry-pi-4" in detail
    assert result.to_dict()["active"] == "cancer-1.1.0-raspberry-pi-4"


def test_after_revocation_the_revoked_keys_bundles_are_refused_and_the_new_keys_taken(
    state_dir: Path,
    configured: Path,
    bundles: dict[str, Path],
    v2: TrustDocument,
    keys: dict[str, Ed25519PrivateKey],
) -> None:
    install(bundles["1.1.0-b"], state_dir, configured)
    update_trust(state_dir, configured, v2)
    with pytest.raises(BundleError, match="check 'key not revoked' failed") as caught:
        install(bundles["1.2.0-a"], state_dir, configured)
    assert caught.value.exit_code == 3 and kid(keys["a"]) in str(caught.value)
    assert install(bundles["1.3.0-b"], state_dir, configured).changed


def test_revoking_every_held_bundles_key_leaves_no_verified_bundle(
    state_dir: Path, configured: Path, bundles: dict[str, Path], v2: TrustDocument
) -> None:
    install(bundles["1.2.0-a"], state_dir, configured)
    install(bundles["1.4.0-a"], state_dir, configured)
    result = update_trust(state_dir, configured, v2)
    state = read_state(state_dir)
    assert state.active is None and state.previous is None
    assert "no verified bundle left: serving nothing" in result.describe()


def test_the_device_trust_is_the_configured_one_moved_along_the_verified_chain(
    state_dir: Path, configured: Path, v1: TrustDocument, v2: TrustDocument
) -> None:
    assert load_device_trust(state_dir, configured).store.version == 1
    update_trust(state_dir, configured, v2)
    device = load_device_trust(state_dir, configured)
    assert device.store.version == 2 and device.chain == (v2,) and device.problems == ()
    assert device.describe()["configured_version"] == 1
    # Re-flashing a newer configured trust makes the older links moot.
    configured.write_bytes(v2.to_bytes())
    device = load_device_trust(state_dir, configured)
    assert device.store.version == 2 and device.chain == ()


def test_a_planted_or_damaged_chain_adds_no_key(
    state_dir: Path,
    configured: Path,
    v1: TrustDocument,
    keys: dict[str, Ed25519PrivateKey],
) -> None:
    forged = next_trust_document(
        v1, add=[keys["outsider"].public_key()], add_roots=[keys["outsider"].public_key()]
    ).sign(keys["outsider"])
    state_dir.mkdir()
    chain = state_dir / TRUST_CHAIN_FILE
    chain.write_text(
        json.dumps({"format": CHAIN_FORMAT, "format_version": 1, "documents": [forged.to_dict()]})
    )
    device = load_device_trust(state_dir, configured)
    assert device.store.version == 1 and kid(keys["outsider"]) not in device.store.keys
    assert "not signed by a root key of the trusted version 1" in device.problems[0]
    chain.write_text("{not json")
    device = load_device_trust(state_dir, configured)
    assert device.store.version == 1 and "is damaged" in device.problems[0]


def test_trust_never_goes_back_and_a_wrong_signer_changes_nothing(
    state_dir: Path,
    configured: Path,
    v1: TrustDocument,
    v2: TrustDocument,
    keys: dict[str, Ed25519PrivateKey],
) -> None:
    update_trust(state_dir, configured, v2)
    chain = (state_dir / TRUST_CHAIN_FILE).read_bytes()
    with pytest.raises(TrustError, match="trust rollback refused") as caught:
        update_trust(state_dir, configured, v1)
    assert caught.value.exit_code == 3
    by_release_key = next_trust_document(v2, add=[keys["outsider"].public_key()])
    with pytest.raises(TrustError, match="not signed by a root key of the trusted version 2"):
        update_trust(state_dir, configured, by_release_key.sign(keys["b"]))
    assert (state_dir / TRUST_CHAIN_FILE).read_bytes() == chain
    again = update_trust(state_dir, configured, v2)
    assert not again.changed and "already the device's trust" in again.describe()


def test_an_expired_trust_document_is_not_taken(
    state_dir: Path, configured: Path, v1: TrustDocument, keys: dict[str, Ed25519PrivateKey]
) -> None:
    stale = next_trust_document(v1, expires_at="2027-01-01T00:00:00Z").sign(keys["root"])
    with pytest.raises(TrustError, match="expired at 2027-01-01T00:00:00Z"):
        update_trust(state_dir, configured, stale, now=parse_utc("2027-01-02T00:00:00Z"))
    assert load_device_trust(state_dir, configured).store.version == 1


def test_the_configured_revocation_list_applies_on_top_of_the_chain(
    tmp_path: Path, state_dir: Path, key_dir: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.pub").write_bytes((key_dir / "edgeml.pub").read_bytes())
    first = new_trust_document(
        [keys["a"].public_key(), keys["b"].public_key()], [keys["root"].public_key()]
    )
    with pytest.raises(TrustError, match="trusted version 0"):
        update_trust(state_dir, plain, first.sign(keys["root"]))
    # Plain keys are version 0 and are their own roots: key a hands over to the document.
    assert update_trust(state_dir, plain, first.sign(keys["root"], keys["a"])).version == 1
    (plain / REVOCATION_LIST).write_text(kid(keys["b"]) + "\n")
    store = current_trust(state_dir, plain)
    assert store.version == 1 and store.trusted_ids == (kid(keys["a"]),)


def test_a_crash_between_taking_trust_and_reverifying_is_finished_by_recovery(
    state_dir: Path, configured: Path, bundles: dict[str, Path], v2: TrustDocument, monkeypatch
) -> None:
    import edgeml.agent.trust as trust_module

    install(bundles["1.1.0-b"], state_dir, configured)
    install(bundles["1.2.0-a"], state_dir, configured)

    def crash(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt("power lost")

    monkeypatch.setattr(trust_module, "reverify_held_bundles", crash)
    with pytest.raises(KeyboardInterrupt):
        update_trust(state_dir, configured, v2)
    assert read_state(state_dir).active.bundle_id == "cancer-1.2.0-raspberry-pi-4"
    result = recover(state_dir, lambda: current_trust(state_dir, configured))
    assert result.fell_back and result.active.bundle_id == "cancer-1.1.0-raspberry-pi-4"
    assert "key not revoked" in result.problems[0]


# --- expiry -----------------------------------------------------------------------------------


def test_an_expired_bundle_is_refused_for_install_naming_its_date(
    state_dir: Path, configured: Path, bundles: dict[str, Path]
) -> None:
    install(bundles["1.1.0-b"], state_dir, configured)
    before = read_state(state_dir)
    with pytest.raises(BundleError) as caught:
        install(bundles["1.5.0-b-expires"], state_dir, configured)  # the clock is past 2026
    assert caught.value.exit_code == 3
    assert "check 'not expired' failed" in str(caught.value)
    assert "expired at 2026-01-01T00:00:00Z" in str(caught.value)
    assert read_state(state_dir) == before
    at = parse_utc("2025-12-31T23:59:59Z")
    assert install(bundles["1.5.0-b-expires"], state_dir, configured, now=at).changed


def test_an_expired_bundle_keeps_serving_and_can_be_rolled_back_to(
    state_dir: Path, configured: Path, bundles: dict[str, Path]
) -> None:
    before_expiry = parse_utc("2025-06-01T00:00:00Z")
    install(bundles["1.5.0-b-expires"], state_dir, configured, now=before_expiry)
    assert recover(state_dir, lambda: current_trust(state_dir, configured)).active is not None
    install(bundles["1.6.0-b"], state_dir, configured)
    result = rollback(state_dir, lambda: current_trust(state_dir, configured))
    assert result.active.bundle_id == "cancer-1.5.0-raspberry-pi-4"


# --- downgrade --------------------------------------------------------------------------------


def test_replay_of_an_older_signed_bundle_is_refused_as_a_downgrade(
    state_dir: Path, configured: Path, bundles: dict[str, Path]
) -> None:
    install(bundles["1.0.0-a"], state_dir, configured)
    install(bundles["1.1.0-b"], state_dir, configured)
    with pytest.raises(BundleError, match="downgrade refused") as caught:
        install(bundles["1.0.0-a"], state_dir, configured)
    assert caught.value.exit_code == 3


def test_an_older_bundle_re_signed_by_a_new_key_is_still_a_downgrade(
    state_dir: Path, configured: Path, bundles: dict[str, Path], v2: TrustDocument
) -> None:
    install(bundles["1.0.0-a"], state_dir, configured)
    install(bundles["1.1.0-b"], state_dir, configured)
    update_trust(state_dir, configured, v2)  # a is revoked; b, the new key, signs the replays
    for replay in ("1.0.0-b", "0.9.0-b"):
        with pytest.raises(BundleError, match="downgrade refused"):
            install(bundles[replay], state_dir, configured)
    assert read_state(state_dir).active.bundle_id == "cancer-1.1.0-raspberry-pi-4"
