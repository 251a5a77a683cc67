"""Trust stores: the set of public keys whose signatures a reader of bundles accepts.

A trust store is a ``.pub`` file or a folder of them (``--trust PATH`` everywhere, ``trust =``
in the agent's config). Keys are indexed by their id (``edgeml.toolkit.keys.key_id``).
Verifying a bundle against a store is ``edgeml.toolkit.bundle``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeml.toolkit.errors import ConfigError
from edgeml.toolkit.keys import key_id, load_public_key


@dataclass(frozen=True)
class TrustStore:
    """Public keys by key id, and the path each came from."""

    keys: dict[str, Ed25519PublicKey]
    sources: dict[str, Path]

    def get(self, kid: str) -> Ed25519PublicKey | None:
        """The trusted key with this id, or None."""
        return self.keys.get(kid)

    @classmethod
    def of(cls, *public_keys: Ed25519PublicKey) -> TrustStore:
        """A store holding the given keys (for callers that have keys, not files)."""
        return cls({key_id(k): k for k in public_keys}, {})


def load_trust_store(path: Path | str) -> TrustStore:
    """Load a trust store from a ``.pub`` file or a folder of ``.pub`` files.

    Args:
        path: the file or folder.

    Returns:
        The store.

    Raises:
        ConfigError: the path does not exist, holds no ``.pub`` file, or a file in it is not an
            Ed25519 public key.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".pub" and p.is_file())
        if not files:
            raise ConfigError(f"trust store {path} holds no .pub file")
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(f"trust store {path} does not exist")
    keys: dict[str, Ed25519PublicKey] = {}
    sources: dict[str, Path] = {}
    for file in files:
        key = load_public_key(file)
        kid = key_id(key)
        keys[kid] = key
        sources[kid] = file
    return TrustStore(keys, sources)
