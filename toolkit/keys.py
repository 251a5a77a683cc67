"""Ed25519 signing keys: generate a key pair, load it back, derive a stable key id.

The private key is written 0600 from the first byte (created with that mode, never chmod-ed
afterwards), optionally encrypted with a passphrase that comes from an environment variable,
never from the command line. The public key is a PEM file that trust stores hold
(``edgeml.toolkit.trust``); read back it is a :class:`PublicKey`, its 32 raw bytes, whose
signatures ``edgeml.toolkit.signatures`` checks (so reading keys and checking signatures
needs no ``cryptography`` object; making keys and signing do). What is signed and how a
bundle is verified lives in ``edgeml.toolkit.bundle``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from edgeml.toolkit.errors import ConfigError, InputError
from edgeml.toolkit.signatures import PUBLIC_KEY_BYTES, verify_signature

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

PASSPHRASE_ENV = "EDGEML_KEY_PASSPHRASE"
"""The environment variable a key's passphrase is read from unless another one is named."""

KEY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_KEY_FILE_BYTES = 64 * 1024


_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
"""The DER of an Ed25519 SubjectPublicKeyInfo before its 32 key bytes (RFC 8410, section 4):
DER has one encoding per value, so a ``.pub`` file of an Ed25519 key holds exactly these."""
_PEM_BEGIN, _PEM_END = b"-----BEGIN PUBLIC KEY-----", b"-----END PUBLIC KEY-----"


class SignatureMismatch(ValueError):
    """A signature does not verify with the key it was checked against."""


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key: its 32 raw bytes.

    Reading and using a public key takes no ``cryptography`` object, so a process that only
    checks signatures can check them in a child process
    (``edgeml.toolkit.signatures.check_in_child_processes``) and never load that library.
    """

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != PUBLIC_KEY_BYTES:
            raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} raw bytes")

    @classmethod
    def of(cls, key: AnyPublicKey) -> PublicKey:
        """This key, from a ``cryptography`` Ed25519 public key (a signer's
        ``private_key.public_key()``) or a :class:`PublicKey`."""
        if isinstance(key, PublicKey):
            return key
        from cryptography.hazmat.primitives import serialization

        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @property
    def key_id(self) -> str:
        """The first 16 hex digits of the SHA-256 of the raw bytes (see :func:`key_id`)."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check an Ed25519 signature of ``data`` by this key.

        Raises:
            SignatureMismatch: it does not verify.
        """
        if not verify_signature(self.raw, signature, data):
            raise SignatureMismatch(f"the signature does not verify with key {self.key_id}")


AnyPublicKey: TypeAlias = "PublicKey | Ed25519PublicKey"
"""A public key as callers hold one: read from a file, or a signer's ``public_key()``."""


def key_id(public_key: AnyPublicKey) -> str:
    """The stable id of a public key: the first 16 hex digits of the SHA-256 of its raw bytes.

    Args:
        public_key: the Ed25519 public key.

    Returns:
        A 16-character lowercase hex string, the same for the same key on every machine.
    """
    return PublicKey.of(public_key).key_id


@dataclass(frozen=True)
class GeneratedKey:
    """Where a new key pair was written and its id."""

    private_path: Path
    public_path: Path
    key_id: str


def passphrase_from_env(variable: str | None) -> bytes | None:
    """Read a passphrase from the named environment variable.

    Args:
        variable: the variable's name, or None for no passphrase.

    Returns:
        The passphrase as bytes, or None when ``variable`` is None.

    Raises:
        ConfigError: the variable is named but unset or empty.
    """
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"environment variable {variable} holds no passphrase (unset or empty)")
    return value.encode("utf-8")


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file created with ``mode``; never replace an existing file.

    The bytes go to a temporary file in the same folder first and are linked into place, so a
    crash leaves either no file or a whole one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def generate_key_pair(
    out_dir: Path, name: str = "edgeml", passphrase: bytes | None = None
) -> GeneratedKey:
    """Generate an Ed25519 key pair as ``out_dir/NAME.key`` (0600) and ``out_dir/NAME.pub``.

    Args:
        out_dir: the folder to write into; created (0700) when missing.
        name: the files' stem.
        passphrase: when given, the private key is encrypted with it (PKCS#8, best available).

    Returns:
        The paths written and the key id.

    Raises:
        InputError: the name is not a plain file stem, or a key file of that name exists.
    """
    if not KEY_NAME_PATTERN.match(name):
        raise InputError(f"key name {name!r} must match {KEY_NAME_PATTERN.pattern}")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path = out_dir / f"{name}.key"
    public_path = out_dir / f"{name}.pub"
    for existing in (private_path, public_path):
        if existing.exists():
            raise InputError(f"{existing} already exists; refusing to overwrite a key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_key = Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new_file(private_path, private_pem, 0o600)
    try:
        _write_new_file(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return GeneratedKey(private_path, public_path, key_id(private_key.public_key()))


def _read_key_file(path: Path) -> bytes:
    if not path.exists():
        raise ConfigError(f"key file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"key file {path} is not a file")
    try:
        size = path.stat().st_size
        if size > MAX_KEY_FILE_BYTES:
            raise ConfigError(f"key file {path} is {size} bytes, too large to be a key")
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"key file {path} cannot be read: {error.strerror}") from None


def private_key_is_exposed(path: Path) -> bool:
    """Whether a private key file can be read by its group or by others."""
    return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def load_private_key(path: Path, passphrase_env: str = PASSPHRASE_ENV) -> Ed25519PrivateKey:
    """Load an Ed25519 private key written by :func:`generate_key_pair`.

    Args:
        path: the ``.key`` file.
        passphrase_env: the environment variable that holds the passphrase when the key is
            encrypted.

    Returns:
        The private key.

    Raises:
        ConfigError: the file is missing, is not an Ed25519 private key, is encrypted and the
            passphrase is missing or wrong.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_file(path)
    encrypted = b"ENCRYPTED PRIVATE KEY" in data
    passphrase = None
    if encrypted:
        value = os.environ.get(passphrase_env)
        if not value:
            raise ConfigError(
                f"key file {path} is encrypted: put its passphrase in the environment "
                f"variable {passphrase_env}"
            )
        passphrase = value.encode("utf-8")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        reason = (
            f"wrong passphrase in {passphrase_env} or damaged file"
            if encrypted
            else "not a PEM private key"
        )
        raise ConfigError(f"key file {path} cannot be loaded: {reason}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: Path) -> PublicKey:
    """Load an Ed25519 public key (PEM, SubjectPublicKeyInfo).

    Raises:
        ConfigError: the file is missing or is not an Ed25519 public key.
    """
    data = _read_key_file(path)
    key = _ed25519_from_pem(data)
    if key is not None:
        return key
    # Not the one encoding of an Ed25519 key: cryptography says what the file is instead.
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ConfigError(f"public key file {path} is not a PEM public key") from error
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"public key file {path} holds a {type(key).__name__}, not Ed25519")
    return PublicKey.of(key)


def _ed25519_from_pem(data: bytes) -> PublicKey | None:
    """The key of a PEM ``PUBLIC KEY`` block that holds an Ed25519 key; None for anything else."""
    start, end = data.find(_PEM_BEGIN), data.find(_PEM_END)
    if start < 0 or end < start:
        return None
    try:
        der = base64.b64decode(b"".join(data[start + len(_PEM_BEGIN) : end].split()), validate=True)
    except binascii.Error:
        return None
    if len(der) != len(_SPKI_PREFIX) + PUBLIC_KEY_BYTES or not der.startswith(_SPKI_PREFIX):
        return None
    return PublicKey(der[len(_SPKI_PREFIX) :])
