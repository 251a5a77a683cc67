"""Trust stores and trust documents: plain keys with a revocation list, signed versioned
documents, and the rules a holder of one version follows to take the next (pure: no disk but
the key files, no clock)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeml.toolkit.errors import ConfigError, InputError, TrustError
from edgeml.toolkit.keys import generate_key_pair, key_id, load_private_key, load_public_key
from edgeml.toolkit.manifest import parse_utc
from edgeml.toolkit.trust import (
    REVOCATION_LIST,
    TrustDocument,
    TrustStore,
    encode_public_key,
    load_trust_store,
    new_trust_document,
    next_trust_document,
    read_revocation_list,
    verify_root,
    verify_successor,
)

NOW = parse_utc("2027-06-01T00:00:00Z")


def kid(key: Ed25519PrivateKey) -> str:
    return key_id(key.public_key())


@pytest.fixture(scope="module")
def k() -> dict[str, Ed25519PrivateKey]:
    """Keys by role: two roots, three release keys, an outsider."""
    return {
        name: Ed25519PrivateKey.generate()
        for name in ("root", "root2", "release", "release2", "release3", "outsider")
    }


def first(k: dict[str, Ed25519PrivateKey], **options: object) -> TrustDocument:
    """Version 1: release signs bundles, root signs the next version."""
    document = new_trust_document(
        [k["release"].public_key()],
        [k["root"].public_key()],
        **options,  # type: ignore[arg-type]
    )
    return document.sign(k["root"])


# --- plain stores -----------------------------------------------------------------------------


def test_a_folder_with_a_revocation_list_refuses_the_keys_it_names(tmp_path: Path) -> None:
    a = generate_key_pair(tmp_path, "a")
    b = generate_key_pair(tmp_path, "b")
    (tmp_path / REVOCATION_LIST).write_text(f"# lost 2027-05-30\n{a.key_id}  # laptop\n\n")
    store = load_trust_store(tmp_path)
    assert store.is_revoked(a.key_id) and not store.is_revoked(b.key_id)
    assert store.get(a.key_id) is None, "a revoked key is never handed out"
    assert store.get(b.key_id) is not None
    assert store.trusted_ids == (b.key_id,)
    assert store.version == 0 and set(store.roots) == {b.key_id}


def test_a_malformed_revocation_list_names_its_line(tmp_path: Path) -> None:
    generate_key_pair(tmp_path, "a")
    (tmp_path / REVOCATION_LIST).write_text("0123456789abcdef\nnot-a-key-id\n")
    with pytest.raises(ConfigError, match=rf"{REVOCATION_LIST}:2: 'not-a-key-id'"):
        load_trust_store(tmp_path)
    with pytest.raises(ConfigError, match="cannot be read"):
        read_revocation_list(tmp_path / "missing.txt")


def test_plain_pub_files_still_load(tmp_path: Path) -> None:
    a = generate_key_pair(tmp_path, "a")
    assert load_trust_store(a.public_path).trusted_ids == (a.key_id,)
    assert load_trust_store(tmp_path).revoked == frozenset()


# --- documents --------------------------------------------------------------------------------


def test_a_document_round_trips_and_loads_as_a_trust_store(
    tmp_path: Path, k: dict[str, Ed25519PrivateKey]
) -> None:
    document = first(k, expires_at="2028-01-01T00:00:00Z")
    path = tmp_path / "trust.json"
    path.write_bytes(document.to_bytes())
    assert TrustDocument.from_bytes(path.read_bytes()) == document
    store = load_trust_store(path)
    assert store.version == 1
    assert store.trusted_ids == (kid(k["release"]),)
    assert set(store.roots) == {kid(k["root"])}
    assert store.get(kid(k["root"])) is None, "a root key does not sign bundles"
    assert store.describe()["expires_at"] == "2028-01-01T00:00:00Z"


def test_a_document_not_signed_by_its_own_root_is_refused(
    tmp_path: Path, k: dict[str, Ed25519PrivateKey]
) -> None:
    unsigned = new_trust_document([k["release"].public_key()], [k["root"].public_key()])
    for document in (unsigned, unsigned.sign(k["release"]), unsigned.sign(k["outsider"])):
        with pytest.raises(TrustError, match="not signed by any of its own root keys") as caught:
            verify_root(document)
        assert caught.value.exit_code == 3
    path = tmp_path / "trust.json"
    path.write_bytes(unsigned.sign(k["outsider"]).to_bytes())
    with pytest.raises(TrustError):
        load_trust_store(path)


def test_a_changed_byte_in_the_signed_part_breaks_the_signature(
    k: dict[str, Ed25519PrivateKey],
) -> None:
    data = first(k).to_dict()
    data["signed"]["keys"][kid(k["outsider"])] = encode_public_key(k["outsider"].public_key())
    with pytest.raises(TrustError, match="not signed by any of its own root keys"):
        verify_root(TrustDocument.from_dict(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("signatures"), "signed and signatures"),
        (lambda d: d["signed"].update(format="other"), "format"),
        (lambda d: d["signed"].update(format_version=9), "format_version"),
        (lambda d: d["signed"].update(version=0), "at least 1"),
        (lambda d: d["signed"].update(version="2"), "not an integer"),
        (lambda d: d["signed"].update(keys={}), "keys is empty"),
        (lambda d: d["signed"].update(keys={"0123456789abcdef": "AAAA"}), "32 raw"),
        (lambda d: d["signed"].update(revoked=["nope"]), "revoked"),
        (lambda d: d["signed"].update(expires_at="tomorrow"), "expires_at"),
        (lambda d: d.update(signatures=[{"key_id": "x"}]), "signature"),
    ],
)
def test_malformed_documents_are_refused_naming_the_field(
    k: dict[str, Ed25519PrivateKey], change, message: str
) -> None:
    data = json.loads(first(k).to_bytes())
    change(data)
    with pytest.raises(TrustError, match=message):
        TrustDocument.from_bytes(json.dumps(data).encode())


def test_a_key_listed_under_another_id_is_refused(k: dict[str, Ed25519PrivateKey]) -> None:
    data = json.loads(first(k).to_bytes())
    keys = data["signed"]["keys"]
    keys["0000000000000000"] = keys.pop(kid(k["release"]))
    with pytest.raises(TrustError, match="has the id"):
        TrustDocument.from_dict(data)


def test_oversized_documents_are_refused_unread() -> None:
    with pytest.raises(TrustError, match="over the limit"):
        TrustDocument.from_bytes(b"{" + b" " * 70_000 + b"}")


# --- the chain of versions --------------------------------------------------------------------


def test_rotation_of_the_release_key_and_revocation_of_the_old_one(
    k: dict[str, Ed25519PrivateKey],
) -> None:
    v1 = first(k)
    held = verify_root(v1)
    v2 = next_trust_document(v1, add=[k["release2"].public_key()], revoke=[kid(k["release"])])
    store = verify_successor(held, v2.sign(k["root"]), now=NOW)
    assert store.version == 2
    assert store.trusted_ids == (kid(k["release2"]),)
    assert store.is_revoked(kid(k["release"])) and store.get(kid(k["release"])) is None
    v3 = next_trust_document(v2, add=[k["release3"].public_key()]).sign(k["root"])
    assert set(verify_successor(store, v3).trusted_ids) == {kid(k["release2"]), kid(k["release3"])}
    # A device still at version 1 may skip to version 3: its root signs it.
    assert verify_successor(held, v3).version == 3


def test_a_version_signed_by_a_release_key_or_an_outsider_is_refused(
    k: dict[str, Ed25519PrivateKey],
) -> None:
    held = verify_root(first(k))
    attempt = next_trust_document(first(k), add=[k["outsider"].public_key()])
    for signer in ("release", "outsider"):
        signed = attempt.sign(k[signer])
        with pytest.raises(TrustError, match="not signed by a root key of the trusted version 1"):
            verify_successor(held, signed)


def test_trust_never_goes_back(k: dict[str, Ed25519PrivateKey]) -> None:
    v1 = first(k)
    v2 = next_trust_document(v1, revoke=[kid(k["release2"])]).sign(k["root"])
    held = verify_successor(verify_root(v1), v2)
    with pytest.raises(TrustError, match="trust rollback refused"):
        verify_successor(held, v1)
    same_version = replace(v2, expires_at="2030-01-01T00:00:00Z", signatures=()).sign(k["root"])
    with pytest.raises(TrustError, match="not newer than the trusted version 2"):
        verify_successor(held, same_version)


def test_a_revocation_is_final(k: dict[str, Ed25519PrivateKey]) -> None:
    v2 = next_trust_document(first(k), revoke=[kid(k["release2"])]).sign(k["root"])
    held = verify_successor(verify_root(first(k)), v2)
    v3 = replace(v2, version=3, revoked=frozenset(), signatures=()).sign(k["root"])
    with pytest.raises(TrustError, match="a revocation is final"):
        verify_successor(held, v3)
    with pytest.raises(InputError, match="never comes back"):
        next_trust_document(v2, add=[k["release2"].public_key()])


def test_rotating_the_root_needs_the_old_and_the_new_root(
    k: dict[str, Ed25519PrivateKey],
) -> None:
    v1 = first(k)
    held = verify_root(v1)
    v2 = next_trust_document(v1, add_roots=[k["root2"].public_key()], remove_roots=[kid(k["root"])])
    with pytest.raises(TrustError, match="not signed by any of its own root keys"):
        verify_successor(held, v2.sign(k["root"]))
    with pytest.raises(TrustError, match="not signed by a root key of the trusted version 1"):
        verify_successor(held, v2.sign(k["root2"]))
    held2 = verify_successor(held, v2.sign(k["root"], k["root2"]))
    v3 = next_trust_document(v2, add=[k["release2"].public_key()])
    with pytest.raises(TrustError, match="trusted version 2"):
        verify_successor(held2, v3.sign(k["root"]))  # the old root has no say any more
    assert verify_successor(held2, v3.sign(k["root2"])).version == 3


def test_a_compromised_sole_root_may_sign_its_own_revocation(
    k: dict[str, Ed25519PrivateKey],
) -> None:
    held = verify_root(first(k))
    v2 = next_trust_document(first(k), add_roots=[k["root2"].public_key()], revoke=[kid(k["root"])])
    store = verify_successor(held, v2.sign(k["root"], k["root2"]))
    assert set(store.roots) == {kid(k["root2"])} and store.is_revoked(kid(k["root"]))


def test_an_expired_document_is_not_taken(k: dict[str, Ed25519PrivateKey]) -> None:
    held = verify_root(first(k))
    v2 = next_trust_document(first(k), expires_at="2027-06-01T00:00:00Z").sign(k["root"])
    with pytest.raises(TrustError, match="expired at 2027-06-01T00:00:00Z"):
        verify_successor(held, v2, now=NOW)
    assert verify_successor(held, v2, now=NOW - 1).version == 2
    assert verify_successor(held, v2).version == 2, "no clock, no expiry check"


def test_plain_keys_are_version_0_and_sign_the_first_document(tmp_path: Path) -> None:
    old = generate_key_pair(tmp_path / "old", "release")
    root = Ed25519PrivateKey.generate()
    plain = load_trust_store(tmp_path / "old")
    document = new_trust_document([load_public_key(old.public_path)], [root.public_key()])
    with pytest.raises(TrustError, match="trusted version 0"):
        verify_successor(plain, document.sign(root))
    store = verify_successor(plain, document.sign(root, load_private_key(old.private_path)))
    assert store.version == 1 and store.trusted_ids == (old.key_id,)
    # A key the local revocation list names may not sign the first document.
    (tmp_path / "old" / REVOCATION_LIST).write_text(old.key_id + "\n")
    with pytest.raises(TrustError, match="none left"):
        verify_successor(
            load_trust_store(tmp_path / "old"),
            document.sign(root, load_private_key(old.private_path)),
        )


def test_authoring_refuses_what_would_leave_no_key(k: dict[str, Ed25519PrivateKey]) -> None:
    with pytest.raises(InputError, match="no keys would be left"):
        next_trust_document(first(k), revoke=[kid(k["release"])])
    with pytest.raises(InputError, match="not in the document's keys"):
        next_trust_document(first(k), remove=[kid(k["outsider"])])
    with pytest.raises(InputError, match="must be higher"):
        next_trust_document(first(k), add=[k["release2"].public_key()], version=1)
    with pytest.raises(InputError, match="at least one key"):
        new_trust_document([], [k["root"].public_key()])


def test_a_store_of_keys_without_files_still_works(k: dict[str, Ed25519PrivateKey]) -> None:
    store = TrustStore.of(k["release"].public_key())
    assert store.get(kid(k["release"])) is not None and store.version == 0
    assert store.with_revoked([kid(k["release"])]).get(kid(k["release"])) is None


def test_a_folder_holding_a_trust_document_is_ambiguous(
    tmp_path: Path, k: dict[str, Ed25519PrivateKey]
) -> None:
    generate_key_pair(tmp_path, "a")
    (tmp_path / "trust.json").write_bytes(first(k).to_bytes())
    with pytest.raises(ConfigError, match="name the document itself"):
        load_trust_store(tmp_path)
    assert load_trust_store(tmp_path / "trust.json").version == 1
