"""Checking Ed25519 signatures, in this process or in a short-lived child process.

Every signature edgeml checks (a bundle's ``signature.json``, a trust document's signatures)
comes here as a public key's 32 raw bytes, the signature and the signed bytes; the check is
``cryptography``'s Ed25519 (DESIGN.md, "Real components").

By default the check runs in this process. A long-lived process that checks a signature now
and then, the device agent, asks for :func:`check_in_child_processes` instead: each check then
runs in a child ``python -I -m edgeml.toolkit.signatures``, so that the daemon never loads
``cryptography`` (its Rust extension and its own OpenSSL hold about 8 MiB of the daemon's
memory for as long as it runs, for a check made at start and at each install:
docs/benchmarks.md, "Agent"). The child gets the key, the signature and the bytes on its
stdin, from this process's memory (the bytes checked are the bytes the caller goes on to
use), and prints ``valid`` or ``invalid`` with the SHA-256 of what it read. Anything else
(a child that cannot be started, is killed, runs out of memory, cannot import cryptography,
or is not the checker at all) is no verdict: the check then runs in this process, with a
warning, so a device never takes a missing answer for a bad signature, nor the reverse.
A valid answer is remembered (by key, signature and SHA-256 of the bytes, a bounded number
of them), so re-reading the same trust chain costs no child.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import threading
from collections import OrderedDict

log = logging.getLogger("edgeml.toolkit.signatures")

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
CHILD_TIMEOUT_S = 120.0
"""A child that has not answered by then is killed and the check made in this process (a Pi
under load starts Python and cryptography in well under a second)."""
MAX_REMEMBERED = 256

_lock = threading.Lock()
_in_child = False
_remembered: OrderedDict[bytes, None] = OrderedDict()


def check_in_child_processes(enabled: bool = True) -> None:
    """Make every later check in this process run in a child process (see the module's
    docstring); ``False`` goes back to checking here."""
    global _in_child
    with _lock:
        _in_child = enabled
        _remembered.clear()


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``data`` by ``public_key``.

    Args:
        public_key: the key's 32 raw bytes.
        signature: the signature's bytes (64 for any valid one).
        data: the signed bytes.

    Raises:
        ValueError: ``public_key`` is not 32 bytes.
    """
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(
            f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, not {len(public_key)}"
        )
    if len(signature) != SIGNATURE_BYTES:
        return False
    with _lock:
        in_child = _in_child
    if not in_child:
        return _verify_here(public_key, signature, data)
    memo = hashlib.sha256(public_key + signature + hashlib.sha256(data).digest()).digest()
    with _lock:
        if memo in _remembered:
            _remembered.move_to_end(memo)
            return True
    valid = _verify_in_child(public_key, signature, data)
    if valid:
        with _lock:
            _remembered[memo] = None
            while len(_remembered) > MAX_REMEMBERED:
                _remembered.popitem(last=False)
    return valid


def _verify_here(public_key: bytes, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _verify_in_child(public_key: bytes, signature: bytes, data: bytes) -> bool:
    sent = public_key + signature + data
    digest = hashlib.sha256(sent).hexdigest()
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-m", __name__],
            input=sent,
            capture_output=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        why = f"{type(error).__name__}: {error}"
    else:
        answer = done.stdout.decode("ascii", "replace").split()
        if done.returncode == 0 and answer in (["valid", digest], ["invalid", digest]):
            return answer[0] == "valid"
        last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        why = f"exit status {done.returncode}, answered {answer[:1]} {last[0]}".strip()
    log.warning("signature check in a child process gave no verdict (%s); checking here", why)
    return _verify_here(public_key, signature, data)


def main() -> int:
    """The child: key (32 bytes), signature (64) and the signed bytes on stdin; prints
    ``valid`` or ``invalid`` and the SHA-256 of its stdin."""
    received = sys.stdin.buffer.read()
    head = PUBLIC_KEY_BYTES + SIGNATURE_BYTES
    if len(received) < head:
        sys.stderr.write(f"expected at least {head} bytes on stdin, got {len(received)}\n")
        return 2
    valid = _verify_here(
        received[:PUBLIC_KEY_BYTES], received[PUBLIC_KEY_BYTES:head], received[head:]
    )
    verdict = "valid" if valid else "invalid"
    sys.stdout.write(f"{verdict} {hashlib.sha256(received).hexdigest()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
