"""Trust: which public keys a reader of bundles accepts, and how that set changes over time.

A trust store (``--trust PATH`` everywhere, ``trust =`` in the agent's config) is one of:

- a ``.pub`` file: one key;
- a folder of ``.pub`` files, optionally with ``revoked-keys.txt``: key ids, one a line
  (``#`` starts a comment), whose bundles are refused even if their ``.pub`` file is there. A
  revocation list only takes trust away, so it needs no signature;
- a trust document (``trust.json``), signed and versioned, modelled on TUF's root metadata::

      {"signed": {"format": "edgeml-trust", "format_version": 1, "version": 2,
                  "keys": {KID: BASE64}, "root_keys": {KID: BASE64}, "revoked": [KID, ...],
                  "expires_at": "2028-01-01T00:00:00Z"},
       "signatures": [{"key_id": KID, "sig": BASE64}]}

  ``keys`` sign bundles; ``root_keys`` sign the next version of the document. A public key is
  the base64 of its 32 raw bytes, under its key id (``edgeml.toolkit.keys.key_id``). The
  signatures are Ed25519 over the canonical JSON of ``signed``. ``expires_at`` is optional.

Every store knows its keys, its root keys (a plain ``.pub`` file or folder is version 0, whose
keys are also its root keys: that is how a device configured with plain keys takes its first
trust document), its revoked key ids and its version. :func:`verify_successor` decides whether
a device holding one store may move to a newer document; the rules are in its docstring and in
docs/bundle-format.md. Verifying a bundle against a store is ``edgeml.toolkit.bundle``'s job;
persisting the documents a device accepted is the agent's (``edgeml.agent.trust``). No clock
here: ``now`` is passed in.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeml.toolkit.errors import ConfigError, InputError, TrustError
from edgeml.toolkit.keys import AnyPublicKey, PublicKey, key_id, load_public_key
from edgeml.toolkit.manifest import canonical_json, format_utc, parse_utc

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TRUST_FORMAT = "edgeml-trust"
TRUST_FORMAT_VERSION = 1
REVOCATION_LIST = "revoked-keys.txt"
KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
MAX_TRUST_DOCUMENT_BYTES = 64 * 1024
"""No trust document is larger; a bigger one is refused unread (it also bounds the protocol's
``trust`` command)."""
MAX_KEYS = 64
MAX_REVOKED = 1024
MAX_SIGNATURES = 16
MAX_REVOCATION_LIST_BYTES = 64 * 1024
_SIGNED_FIELDS = frozenset(
    ("format", "format_version", "version", "keys", "root_keys", "revoked", "expires_at")
)


def encode_public_key(public_key: AnyPublicKey) -> str:
    """A public key as a trust document holds it: the base64 of its 32 raw bytes."""
    return base64.b64encode(PublicKey.of(public_key).raw).decode("ascii")


def _decode_public_key(where: str, kid: Any, value: Any) -> PublicKey:
    if not isinstance(kid, str) or not KEY_ID_PATTERN.match(kid):
        raise TrustError(f"{where}: {kid!r} is not a key id (16 lowercase hex digits)")
    try:
        key = PublicKey(base64.b64decode(str(value), validate=True))
    except (binascii.Error, ValueError):
        raise TrustError(f"{where}: key {kid} is not the base64 of 32 raw Ed25519 bytes") from None
    if key_id(key) != kid:
        raise TrustError(f"{where}: key listed as {kid} has the id {key_id(key)}")
    return key


@dataclass(frozen=True)
class TrustSignature:
    """One detached signature over a trust document's ``signed`` part."""

    key_id: str
    sig: str  # base64

    def to_dict(self) -> dict[str, str]:
        return {"key_id": self.key_id, "sig": self.sig}


@dataclass(frozen=True)
class TrustDocument:
    """A signed, versioned statement of which keys sign bundles and which sign the next version.

    Attributes:
        version: 1 or more; a device only ever moves to a higher one.
        keys: the keys whose bundle signatures are accepted, by key id.
        root_keys: the keys whose signatures the next version needs, by key id.
        revoked: key ids refused for everything, forever (a later version keeps them).
        expires_at: ISO-8601 UTC; a device refuses to take an expired document. None: never.
        signatures: over :meth:`signed_bytes`.
        extra: fields of ``signed`` a newer edgeml added; kept (they are signed too).
    """

    version: int
    keys: Mapping[str, PublicKey]
    root_keys: Mapping[str, PublicKey]
    revoked: frozenset[str] = frozenset()
    expires_at: str | None = None
    signatures: tuple[TrustSignature, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"trust document version {self.version}"
        for name in ("keys", "root_keys"):  # a signer's public_key() becomes a PublicKey
            as_given = getattr(self, name)
            object.__setattr__(self, name, {kid: PublicKey.of(k) for kid, k in as_given.items()})
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise TrustError(f"trust document: version {self.version!r} is not an integer")
        if not 1 <= self.version <= 2**53:
            raise TrustError(f"{where}: the version must be at least 1")
        for name, keys in (("keys", self.keys), ("root_keys", self.root_keys)):
            if not keys:
                raise TrustError(f"{where}: {name} is empty; it must name at least one key")
            if len(keys) > MAX_KEYS:
                raise TrustError(f"{where}: {name} holds {len(keys)} keys, over {MAX_KEYS}")
            for kid, key in keys.items():
                if key_id(key) != kid:
                    raise TrustError(f"{where}: key listed as {kid} has the id {key_id(key)}")
            both = sorted(set(keys) & self.revoked)
            if both:
                raise TrustError(f"{where}: {name} lists revoked key(s) {', '.join(both)}")
        if len(self.revoked) > MAX_REVOKED:
            raise TrustError(f"{where}: {len(self.revoked)} revoked keys, over {MAX_REVOKED}")
        for kid in self.revoked:
            if not isinstance(kid, str) or not KEY_ID_PATTERN.match(kid):
                raise TrustError(f"{where}: revoked {kid!r} is not a key id")
        if self.expires_at is not None:
            try:
                parse_utc(self.expires_at)
            except ValueError as error:
                raise TrustError(f"{where}: expires_at {error}") from None
        if len(self.signatures) > MAX_SIGNATURES:
            raise TrustError(f"{where}: {len(self.signatures)} signatures, over {MAX_SIGNATURES}")

    # ------------------------------------------------------------------------ documents

    def signed_dict(self) -> dict[str, Any]:
        """The ``signed`` part, unknown fields included."""
        document: dict[str, Any] = dict(self.extra)
        document.update(
            {
                "format": TRUST_FORMAT,
                "format_version": TRUST_FORMAT_VERSION,
                "version": self.version,
                "keys": {kid: encode_public_key(k) for kid, k in sorted(self.keys.items())},
                "root_keys": {
                    kid: encode_public_key(k) for kid, k in sorted(self.root_keys.items())
                },
                "revoked": sorted(self.revoked),
            }
        )
        if self.expires_at is not None:
            document["expires_at"] = self.expires_at
        return document

    def signed_bytes(self) -> bytes:
        """The exact bytes the signatures cover: canonical JSON of ``signed``."""
        return canonical_json(self.signed_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "signed": self.signed_dict(),
            "signatures": [s.to_dict() for s in self.signatures],
        }

    def to_bytes(self) -> bytes:
        """The document as a file holds it (indented; signatures do not depend on layout)."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, data: Any) -> TrustDocument:
        """Validate and build a document (signatures are not checked here).

        Raises:
            TrustError: not a trust document this edgeml reads, or a field is malformed.
        """
        if not isinstance(data, dict) or set(data) != {"signed", "signatures"}:
            raise TrustError("not a trust document: expected an object of signed and signatures")
        signed, signatures = data["signed"], data["signatures"]
        if not isinstance(signed, dict) or signed.get("format") != TRUST_FORMAT:
            raise TrustError(f"not a trust document: signed.format is not {TRUST_FORMAT!r}")
        if signed.get("format_version") != TRUST_FORMAT_VERSION:
            raise TrustError(
                f"trust document format_version {signed.get('format_version')!r} is not "
                f"supported (this edgeml reads version {TRUST_FORMAT_VERSION})"
            )
        where = f"trust document version {signed.get('version')!r}"
        decoded: dict[str, dict[str, PublicKey]] = {}
        for name in ("keys", "root_keys"):
            value = signed.get(name)
            if not isinstance(value, dict) or len(value) > MAX_KEYS:
                raise TrustError(f"{where}: {name} must be an object of at most {MAX_KEYS} keys")
            decoded[name] = {
                kid: _decode_public_key(f"{where} {name}", kid, k) for kid, k in value.items()
            }
        revoked = signed.get("revoked", [])
        if (
            not isinstance(revoked, list)
            or len(revoked) > MAX_REVOKED
            or not all(isinstance(kid, str) and KEY_ID_PATTERN.match(kid) for kid in revoked)
        ):
            raise TrustError(f"{where}: revoked must be a list of at most {MAX_REVOKED} key ids")
        expires_at = signed.get("expires_at")
        if expires_at is not None and not isinstance(expires_at, str):
            raise TrustError(f"{where}: expires_at must be an ISO-8601 UTC string")
        if not isinstance(signatures, list) or len(signatures) > MAX_SIGNATURES:
            raise TrustError(f"{where}: signatures must be a list of at most {MAX_SIGNATURES}")
        parsed: list[TrustSignature] = []
        for entry in signatures:
            if (
                not isinstance(entry, dict)
                or set(entry) != {"key_id", "sig"}
                or not all(isinstance(v, str) and len(v) <= 256 for v in entry.values())
            ):
                raise TrustError(f"{where}: a signature must be {{key_id, sig}} strings")
            parsed.append(TrustSignature(entry["key_id"], entry["sig"]))
        return cls(
            version=signed.get("version"),  # type: ignore[arg-type]  # checked by the constructor
            keys=decoded["keys"],
            root_keys=decoded["root_keys"],
            revoked=frozenset(revoked),
            expires_at=expires_at,
            signatures=tuple(parsed),
            extra={k: v for k, v in signed.items() if k not in _SIGNED_FIELDS},
        )

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "trust document") -> TrustDocument:
        """Parse a document's bytes, at most :data:`MAX_TRUST_DOCUMENT_BYTES`.

        Raises:
            TrustError: too large, not UTF-8 JSON, or not a valid document; names ``where``.
        """
        if len(data) > MAX_TRUST_DOCUMENT_BYTES:
            raise TrustError(
                f"{where}: {len(data)} bytes, over the limit of {MAX_TRUST_DOCUMENT_BYTES}"
            )
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise TrustError(f"{where}: not valid JSON: {error}") from None
        try:
            return cls.from_dict(document)
        except TrustError as error:
            raise TrustError(f"{where}: {error}") from None

    # ------------------------------------------------------------------------ signatures

    def sign(self, *private_keys: Ed25519PrivateKey) -> TrustDocument:
        """The document with a signature by each key added (replacing that key's old one)."""
        data = self.signed_bytes()
        new = {key_id(k.public_key()): k for k in private_keys}
        kept = [s for s in self.signatures if s.key_id not in new]
        added = [
            TrustSignature(kid, base64.b64encode(k.sign(data)).decode("ascii"))
            for kid, k in sorted(new.items())
        ]
        return replace(self, signatures=(*kept, *added))

    def signed_by(self, candidates: Mapping[str, PublicKey]) -> set[str]:
        """The ids of those ``candidates`` whose signature over this document verifies."""
        data = self.signed_bytes()
        found: set[str] = set()
        for signature in self.signatures:
            key = candidates.get(signature.key_id)
            if key is None:
                continue
            try:
                key.verify(base64.b64decode(signature.sig, validate=True), data)
            except (binascii.Error, ValueError):  # SignatureMismatch is a ValueError
                continue
            found.add(signature.key_id)
        return found

    def expired(self, now: float) -> bool:
        """Whether ``now`` is at or past ``expires_at``."""
        return self.expires_at is not None and now >= parse_utc(self.expires_at)


# ------------------------------------------------------------------------------ the store


@dataclass(frozen=True)
class TrustStore:
    """Public keys by key id, what may sign the next trust document, and what is revoked.

    Attributes:
        keys: the keys whose bundle signatures are accepted (unless revoked).
        sources: where each key came from (a file, or the trust document).
        revoked: key ids refused for everything; wins over ``keys`` and ``root_keys``.
        root_keys: the keys that may sign the next trust document; None for a plain set of
            ``.pub`` files, whose keys are their own root keys (version 0).
        version: the trust document's version; 0 for plain ``.pub`` files.
        document: the trust document this store came from, if any.
    """

    keys: dict[str, PublicKey]
    sources: dict[str, Path]
    revoked: frozenset[str] = frozenset()
    root_keys: dict[str, PublicKey] | None = None
    version: int = 0
    document: TrustDocument | None = None

    def get(self, kid: str) -> PublicKey | None:
        """The trusted bundle-signing key with this id, or None (unknown or revoked)."""
        return None if kid in self.revoked else self.keys.get(kid)

    def is_revoked(self, kid: str) -> bool:
        """Whether this key id is revoked."""
        return kid in self.revoked

    @property
    def roots(self) -> dict[str, PublicKey]:
        """The keys that may sign the next trust document, revoked ones left out."""
        keys = self.keys if self.root_keys is None else self.root_keys
        return {kid: k for kid, k in keys.items() if kid not in self.revoked}

    @property
    def trusted_ids(self) -> tuple[str, ...]:
        """The ids of the bundle-signing keys that are not revoked, sorted."""
        return tuple(sorted(k for k in self.keys if k not in self.revoked))

    def with_revoked(self, kids: Iterable[str]) -> TrustStore:
        """The same store with more key ids revoked."""
        return replace(self, revoked=self.revoked | frozenset(kids))

    def describe(self) -> dict[str, Any]:
        """What a person (or ``--json``) needs to know about this store."""
        return {
            "version": self.version,
            "keys": list(self.trusted_ids),
            "root_keys": sorted(self.roots),
            "revoked": sorted(self.revoked),
            "expires_at": self.document.expires_at if self.document else None,
        }

    @classmethod
    def of(cls, *public_keys: AnyPublicKey) -> TrustStore:
        """A store holding the given keys (for callers that have keys, not files)."""
        return cls(_by_id(public_keys), {})

    @classmethod
    def from_document(cls, document: TrustDocument, source: Path | None = None) -> TrustStore:
        """The store a trust document describes (its signatures are the caller's business)."""
        where = source if source is not None else Path(f"trust-v{document.version}")
        return cls(
            keys=dict(document.keys),
            sources=dict.fromkeys(document.keys, where),
            revoked=document.revoked,
            root_keys=dict(document.root_keys),
            version=document.version,
            document=document,
        )


# ---------------------------------------------------------------------------- the rules


def verify_root(document: TrustDocument) -> TrustStore:
    """Check a document that is trusted by where it comes from (configured, flashed): it must be
    signed by at least one of its own root keys (this catches damage and a wrong file).

    Raises:
        TrustError: no signature of one of its root keys verifies.
    """
    if not document.signed_by(dict(document.root_keys)):
        raise TrustError(
            f"trust document version {document.version} is not signed by any of its own root "
            f"keys ({', '.join(sorted(document.root_keys))})"
        )
    return TrustStore.from_document(document)


def verify_successor(
    current: TrustStore, document: TrustDocument, now: float | None = None
) -> TrustStore:
    """Decide whether a holder of ``current`` may move to ``document``; return the new store.

    The rules (TUF's root rotation with a threshold of one):

    1. the document's version is higher than ``current``'s (trust never goes back; versions may
       be skipped: whoever ``current`` trusts to sign version N+1 may as well sign N+5);
    2. it has not expired at ``now`` (not checked when ``now`` is None);
    3. it is signed by a root key of ``current`` that ``current`` does not revoke: a key the
       new document revokes may still sign it, so a compromised sole root key can hand over
       to its successor;
    4. it is signed by one of its own root keys (the new roots exist and are held);
    5. it revokes every key ``current``'s document revokes (a revocation is final).

    A plain set of ``.pub`` files is version 0 and its keys are its root keys.

    Args:
        current: the trust the device holds now.
        document: the proposed successor.
        now: the time, for expiry; None does not check it.

    Returns:
        The store of ``document`` (local revocation lists are the caller's to add).

    Raises:
        TrustError: naming the rule that does not hold.
    """
    where = f"trust document version {document.version}"
    if document.version <= current.version:
        raise TrustError(
            f"trust rollback refused: {where} is not newer than the trusted version "
            f"{current.version}"
        )
    if now is not None and document.expired(now):
        raise TrustError(f"{where} expired at {document.expires_at} (now {format_utc(now)})")
    roots = current.roots
    if not document.signed_by(roots):
        raise TrustError(
            f"{where} is not signed by a root key of the trusted version {current.version} "
            f"({', '.join(sorted(roots)) or 'none left'})"
        )
    if not document.signed_by(dict(document.root_keys)):
        raise TrustError(
            f"{where} is not signed by any of its own root keys "
            f"({', '.join(sorted(document.root_keys))})"
        )
    before = current.document.revoked if current.document is not None else frozenset()
    taken_back = sorted(before - document.revoked)
    if taken_back:
        raise TrustError(
            f"{where} no longer revokes {', '.join(taken_back)}, which version "
            f"{current.version} revokes: a revocation is final"
        )
    return TrustStore.from_document(document)


# ---------------------------------------------------------------------------- authoring


def _by_id(keys: Iterable[AnyPublicKey]) -> dict[str, PublicKey]:
    return {key.key_id: key for key in map(PublicKey.of, keys)}


def new_trust_document(
    keys: Iterable[AnyPublicKey],
    root_keys: Iterable[AnyPublicKey],
    *,
    version: int = 1,
    expires_at: str | None = None,
) -> TrustDocument:
    """A first trust document, unsigned (sign it with :meth:`TrustDocument.sign`).

    Raises:
        InputError: no key, or no root key.
    """
    signing, roots = _by_id(keys), _by_id(root_keys)
    if not signing:
        raise InputError("a trust document needs at least one key that signs bundles (--key)")
    if not roots:
        raise InputError("a trust document needs at least one root key")
    return TrustDocument(version, signing, roots, frozenset(), expires_at)


def next_trust_document(
    current: TrustDocument,
    *,
    add: Iterable[AnyPublicKey] = (),
    remove: Iterable[str] = (),
    revoke: Iterable[str] = (),
    add_roots: Iterable[AnyPublicKey] = (),
    remove_roots: Iterable[str] = (),
    version: int | None = None,
    expires_at: str | None = None,
) -> TrustDocument:
    """The next version of a trust document, unsigned.

    Revoked key ids carry over, and revoking a key also takes it out of ``keys`` and
    ``root_keys``; removing a key only takes it out (it may come back later). The expiry does
    not carry over: ``expires_at`` is the new version's.

    Args:
        current: the version devices hold.
        add, add_roots: keys to add to ``keys`` / ``root_keys``.
        remove, remove_roots: key ids to take out of ``keys`` / ``root_keys``.
        revoke: key ids to revoke.
        version: the new version; default one more than ``current``'s.
        expires_at: when the new version expires (ISO-8601 UTC); None: never.

    Raises:
        InputError: a revoked key is added, a key to remove is not there, the version does
            not go up, or no key or root key would be left.
    """
    revoked = current.revoked | frozenset(revoke)
    for kid in revoked:
        if not KEY_ID_PATTERN.match(kid):
            raise InputError(f"{kid!r} is not a key id (16 lowercase hex digits)")
    keys, roots = dict(current.keys), dict(current.root_keys)
    for name, table, added, removed in (
        ("keys", keys, _by_id(add), tuple(remove)),
        ("root keys", roots, _by_id(add_roots), tuple(remove_roots)),
    ):
        back = sorted(set(added) & revoked)
        if back:
            raise InputError(f"key {', '.join(back)} is revoked; a revoked key never comes back")
        missing = sorted(set(removed) - set(table))
        if missing:
            raise InputError(f"cannot remove {', '.join(missing)}: not in the document's {name}")
        table.update(added)
        for kid in (*removed, *revoked):
            table.pop(kid, None)
        if not table:
            raise InputError(f"no {name} would be left in version {current.version + 1}")
    new_version = current.version + 1 if version is None else version
    if new_version <= current.version:
        raise InputError(f"version {new_version} must be higher than {current.version}")
    return TrustDocument(new_version, keys, roots, revoked, expires_at)


# ---------------------------------------------------------------------------------- files


def read_revocation_list(path: Path) -> frozenset[str]:
    """Read a revocation list: key ids, one a line; blank lines and ``#`` comments allowed.

    Raises:
        ConfigError: the file cannot be read, is too large, or a line is not a key id (the
            message names the line).
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"revocation list {path} cannot be read: {error.strerror}") from None
    if len(data) > MAX_REVOCATION_LIST_BYTES:
        raise ConfigError(f"revocation list {path} is over {MAX_REVOCATION_LIST_BYTES} bytes")
    kids: set[str] = set()
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not KEY_ID_PATTERN.match(text):
            raise ConfigError(
                f"{path}:{number}: {text!r} is not a key id (16 lowercase hex digits)"
            )
        kids.add(text)
    return frozenset(kids)


def read_trust_document(path: Path) -> TrustDocument:
    """Read a trust document file (its signatures are not checked here).

    Raises:
        ConfigError: the file cannot be read.
        TrustError: too large or not a valid trust document; names the file.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TRUST_DOCUMENT_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"trust document {path} cannot be read: {error.strerror}") from None
    return TrustDocument.from_bytes(data, str(path))


def _looks_like_json(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(64).lstrip().startswith(b"{")
    except OSError:
        return False


def load_trust_store(path: Path | str) -> TrustStore:
    """Load a trust store: a ``.pub`` file, a folder of them, or a trust document.

    A folder may hold ``revoked-keys.txt``, whose key ids are refused. A trust document must be
    signed by one of its own root keys (:func:`verify_root`); whether it may replace another
    one is :func:`verify_successor`'s question.

    Args:
        path: the file or folder.

    Returns:
        The store.

    Raises:
        ConfigError: the path does not exist, holds no ``.pub`` file, a file in it is not an
            Ed25519 public key, or the revocation list is malformed.
        TrustError: a trust document is malformed or not signed by its own root keys (exit 3).
    """
    path = Path(path)
    revoked: frozenset[str] = frozenset()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".pub" and p.is_file())
        if (path / "trust.json").exists():
            raise ConfigError(
                f"trust store {path} holds trust.json: name the document itself as the trust "
                "store, not its folder (a folder is .pub files and revoked-keys.txt)"
            )
        if not files:
            raise ConfigError(f"trust store {path} holds no .pub file")
        if (path / REVOCATION_LIST).is_file():
            revoked = read_revocation_list(path / REVOCATION_LIST)
    elif path.is_file():
        if path.suffix != ".pub" and _looks_like_json(path):
            store = verify_root(read_trust_document(path))
            return replace(store, sources=dict.fromkeys(store.keys, path))
        files = [path]
    else:
        raise ConfigError(f"trust store {path} does not exist")
    keys: dict[str, PublicKey] = {}
    sources: dict[str, Path] = {}
    for file in files:
        key = load_public_key(file)
        kid = key_id(key)
        keys[kid] = key
        sources[kid] = file
    return TrustStore(keys, sources, revoked)


def revocation_detail(store: TrustStore, kid: str) -> str:
    """Where a revocation comes from, for messages: the document's version or the list."""
    if store.document is not None and kid in store.document.revoked:
        return f"revoked by trust version {store.version}"
    return f"revoked by the revocation list ({REVOCATION_LIST})"
