"""The device's trust: the configured trust store and the trust documents accepted since.

``trust =`` in agent.toml names what was flashed or provisioned: a ``.pub`` file, a folder of
them (with an optional ``revoked-keys.txt``), or a trust document. Newer trust documents reach
the device later, over MQTT (a ``trust`` command) or side-loaded (``edgeml agent
trust-update``), and are taken only if they verify against the device's current trust
(``edgeml.toolkit.trust.verify_successor``): this is how keys rotate and are revoked without
re-flashing a device.

The device keeps every document it accepted, in order, in ``STATE_DIR/trust-chain.json``,
replaced atomically. Its current trust is the configured store followed along that chain, each
link verified again on every load: trust flows only from the configured root, so a file planted
in the state folder cannot add a key. The configured revocation list applies on top, always.
A configured trust newer than the chain (re-flashed) wins, and the older links are skipped.

Taking a new trust re-verifies the bundles the device holds, under the install lock
(``install.reverify_held_bundles``): a bundle signed by a key the new trust revokes, or no
longer lists, is dropped like a damaged one, and the device falls back to its previous bundle
if that one verifies, else to none (the local API answers 503). It never keeps serving a bundle
signed by a revoked key. The daemon then reloads what it serves (``edgeml.agent.daemon``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeml.agent.install import RecoveryResult, reverify_held_bundles
from edgeml.agent.locking import install_lock
from edgeml.agent.slots import TRUST_CHAIN_FILE, replace_file
from edgeml.toolkit.bundle import DEFAULT_LIMITS, BundleLimits
from edgeml.toolkit.errors import TrustError
from edgeml.toolkit.trust import (
    MAX_TRUST_DOCUMENT_BYTES,
    TrustDocument,
    TrustStore,
    load_trust_store,
    verify_successor,
)

CHAIN_FORMAT = "edgeml-trust-chain"
CHAIN_FORMAT_VERSION = 1
MAX_CHAIN = 64
"""Documents a device keeps beyond its configured trust; re-flash a newer configured trust
(or start a new chain from it) before a device has taken this many."""


@dataclass(frozen=True)
class DeviceTrust:
    """What a device trusts now, and how it got there.

    Attributes:
        store: the current trust: the configured store, moved along the chain, with the
            configured revocation list on top.
        configured: the configured store as loaded from ``trust =``.
        chain: the accepted documents newer than the configured trust, oldest first, each
            verified against the one before.
        problems: why part of the chain was not followed (a damaged file, a broken link).
    """

    store: TrustStore
    configured: TrustStore
    chain: tuple[TrustDocument, ...] = ()
    problems: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """For ``agent status``: the current trust and the configured version."""
        return {
            **self.store.describe(),
            "configured_version": self.configured.version,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class TrustUpdateResult:
    """What taking a trust document did.

    Attributes:
        version: the device's trust version now.
        previous_version: its trust version before.
        changed: False when the device held this very document already.
        trust: the device's trust now.
        recovery: what re-verifying the held bundles found (None when nothing changed).
    """

    version: int
    previous_version: int
    changed: bool
    trust: TrustStore
    recovery: RecoveryResult | None = None

    def describe(self) -> str:
        """One line for a command result, a status detail or the CLI."""
        if not self.changed:
            return f"trust version {self.version} is already the device's trust"
        store = self.trust
        text = (
            f"trust version {self.version} accepted (was {self.previous_version}): keys "
            f"{', '.join(store.trusted_ids)}; revoked {', '.join(sorted(store.revoked)) or 'none'}"
        )
        recovery = self.recovery
        if recovery is not None and recovery.problems:
            text += "; " + "; ".join(recovery.problems)
            if recovery.fell_back:
                now = recovery.active.bundle_id if recovery.active else None
                text += (
                    f"; now serving {now}"
                    if now
                    else "; no verified bundle left: serving nothing (health answers 503)"
                )
        return text

    def to_dict(self) -> dict[str, Any]:
        recovery = self.recovery
        return {
            "version": self.version,
            "previous_version": self.previous_version,
            "changed": self.changed,
            "trust": self.trust.describe(),
            "active": recovery.active.bundle_id if recovery and recovery.active else None,
            "previous": recovery.previous.bundle_id if recovery and recovery.previous else None,
            "fell_back": bool(recovery and recovery.fell_back),
            "problems": list(recovery.problems) if recovery else [],
            "detail": self.describe(),
        }


def chain_path(state_dir: Path | str) -> Path:
    """Where a device keeps the trust documents it accepted."""
    return Path(state_dir) / TRUST_CHAIN_FILE


def _read_chain(state_dir: Path) -> tuple[list[TrustDocument], list[str]]:
    path = chain_path(state_dir)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CHAIN * MAX_TRUST_DOCUMENT_BYTES * 2 + 1)
    except FileNotFoundError:
        return [], []
    except OSError as error:
        return [], [f"{path} cannot be read: {error.strerror}"]
    try:
        document = json.loads(raw)
        if not isinstance(document, dict) or document.get("format") != CHAIN_FORMAT:
            raise ValueError(f"not an {CHAIN_FORMAT} document")
        if document.get("format_version") != CHAIN_FORMAT_VERSION:
            raise ValueError(f"format_version {document.get('format_version')!r} not supported")
        entries = document.get("documents")
        if not isinstance(entries, list) or len(entries) > MAX_CHAIN:
            raise ValueError(f"documents must be a list of at most {MAX_CHAIN}")
        return [TrustDocument.from_dict(entry) for entry in entries], []
    except (UnicodeDecodeError, ValueError, RecursionError, TrustError) as error:
        return [], [f"{path} is damaged ({error}); trust stays at the configured version"]


def load_device_trust(state_dir: Path | str, configured: Path | str) -> DeviceTrust:
    """The device's current trust: the configured store followed along the accepted chain.

    Reads only; needs no lock (the chain file is only ever replaced whole). A damaged chain
    file or a link that does not verify stops the walk there and is reported in ``problems``.

    Args:
        state_dir: the agent's state folder.
        configured: ``trust =`` from the agent's config.

    Returns:
        The device's trust.

    Raises:
        ConfigError: the configured trust store cannot be loaded.
        TrustError: the configured trust document does not verify.
    """
    folder = Path(state_dir)
    configured_store = load_trust_store(configured)
    documents, problems = _read_chain(folder)
    current = configured_store
    accepted: list[TrustDocument] = []
    for document in documents:
        if document.version <= current.version:
            continue  # the configured trust is as new (re-flashed): this link is behind it
        try:
            current = verify_successor(current, document).with_revoked(configured_store.revoked)
        except TrustError as error:
            problems.append(
                f"{chain_path(folder)}: {error}; trust stays at version {current.version}"
            )
            break
        accepted.append(document)
    return DeviceTrust(current, configured_store, tuple(accepted), tuple(problems))


def current_trust(state_dir: Path | str, configured: Path | str) -> TrustStore:
    """:func:`load_device_trust`'s store alone (what installs verify against)."""
    return load_device_trust(state_dir, configured).store


def parse_trust_document(document: bytes | dict[str, Any] | TrustDocument) -> TrustDocument:
    """A trust document from its bytes, its JSON object, or as it is.

    Raises:
        TrustError: not a valid trust document.
    """
    if isinstance(document, TrustDocument):
        return document
    if isinstance(document, bytes):
        return TrustDocument.from_bytes(document)
    return TrustDocument.from_dict(document)


def update_trust(
    state_dir: Path | str,
    configured: Path | str,
    document: bytes | dict[str, Any] | TrustDocument,
    *,
    now: float | None = None,
    lock_timeout: float | None = None,
    limits: BundleLimits = DEFAULT_LIMITS,
) -> TrustUpdateResult:
    """Take a newer trust document, persist it, and re-verify the bundles the device holds.

    Under the install lock (the same as installs and side-loads): verify the document against
    the device's current trust (``verify_successor``: newer version, not expired at ``now``,
    signed by a current root key and by one of its own, keeping every revocation), append it
    to ``trust-chain.json`` atomically, then re-verify the active and previous slots against
    the new trust and fall back (previous bundle, else none) when the active one no longer
    verifies. The document the device holds already is accepted again and changes nothing.

    Args:
        state_dir: the agent's state folder.
        configured: ``trust =`` from the agent's config.
        document: the trust document (bytes, JSON object, or parsed).
        now: the Unix time the document's expiry is checked at; None takes the clock's.
        lock_timeout: seconds to wait for an install in progress; None waits.
        limits: size bounds for re-verifying the held bundles.

    Returns:
        What changed.

    Raises:
        TrustError: the document is malformed or does not verify against the current trust
            (exit 3); nothing changed.
        ConfigError: the configured trust store cannot be loaded.
        LockTimeoutError: another install held the lock longer than ``lock_timeout``.
        OSError: the chain file could not be written; nothing changed.
    """
    new = parse_trust_document(document)
    folder = Path(state_dir)
    when = time.time() if now is None else now
    with install_lock(folder, timeout=lock_timeout):
        device = load_device_trust(folder, configured)
        current = device.store
        if current.document is not None and new.signed_bytes() == current.document.signed_bytes():
            return TrustUpdateResult(current.version, current.version, False, current)
        store = verify_successor(current, new, now=when).with_revoked(device.configured.revoked)
        chain = [*device.chain, new]
        if len(chain) > MAX_CHAIN:
            raise TrustError(
                f"the device holds {MAX_CHAIN} trust documents beyond its configured trust: "
                "provision a newer trust document as its configured trust"
            )
        body = {
            "format": CHAIN_FORMAT,
            "format_version": CHAIN_FORMAT_VERSION,
            "documents": [d.to_dict() for d in chain],
        }
        os.makedirs(folder, exist_ok=True)
        replace_file(folder, TRUST_CHAIN_FILE, (json.dumps(body, indent=1) + "\n").encode())
        recovery = reverify_held_bundles(
            folder,
            store,
            limits=limits,
            event="trust-updated",
            failing=f"does not verify against trust version {store.version}",
        )
        return TrustUpdateResult(store.version, current.version, True, store, recovery)
