"""Ed25519 checks in this process and in a child process: the same verdicts, and a child that
gives no verdict never decides anything."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeml.toolkit import signatures
from edgeml.toolkit.keys import PublicKey, SignatureMismatch
from edgeml.toolkit.signatures import check_in_child_processes, verify_signature

DATA = b'{"name": "mlp", "version": "1.0.0"}'


@pytest.fixture
def signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def in_children() -> Iterator[None]:
    check_in_child_processes()
    try:
        yield
    finally:
        check_in_child_processes(False)


def raw(key: Ed25519PrivateKey) -> bytes:
    return PublicKey.of(key.public_key()).raw


def verdicts(key: Ed25519PrivateKey) -> list[bool]:
    signature = key.sign(DATA)
    other = Ed25519PrivateKey.generate()
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    return [
        verify_signature(raw(key), signature, DATA),
        verify_signature(raw(key), signature, DATA + b" "),  # the bytes changed
        verify_signature(raw(key), flipped, DATA),  # the signature changed
        verify_signature(raw(other), signature, DATA),  # another key
        verify_signature(raw(key), signature[:63], DATA),  # too short to be one
        verify_signature(raw(key), key.sign(b""), b""),  # empty bytes are signed bytes too
    ]


EXPECTED = [True, False, False, False, False, True]


def test_in_this_process(signer: Ed25519PrivateKey) -> None:
    assert verdicts(signer) == EXPECTED


def test_in_a_child_process_the_verdicts_are_the_same(
    signer: Ed25519PrivateKey, in_children: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="edgeml.toolkit.signatures"):
        assert verdicts(signer) == EXPECTED
    assert not caplog.records, "every check got its verdict from a child"


def test_a_public_key_that_is_not_32_bytes_is_an_error(signer: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="32 bytes, not 31"):
        verify_signature(raw(signer)[:31], signer.sign(DATA), DATA)
    with pytest.raises(ValueError, match="32 raw bytes"):
        PublicKey(b"\0" * 33)


def test_a_public_key_verifies_or_raises(signer: Ed25519PrivateKey, in_children: None) -> None:
    key = PublicKey.of(signer.public_key())
    key.verify(signer.sign(DATA), DATA)
    with pytest.raises(SignatureMismatch, match=key.key_id):
        key.verify(signer.sign(DATA), DATA[1:])


def test_a_valid_verdict_is_remembered_and_an_invalid_one_is_not(
    signer: Ed25519PrivateKey, in_children: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    children: list[bytes] = []
    real = signatures._verify_in_child

    def counted(public_key: bytes, signature: bytes, data: bytes) -> bool:
        children.append(data)
        return real(public_key, signature, data)

    monkeypatch.setattr(signatures, "_verify_in_child", counted)
    signature = signer.sign(DATA)
    for _ in range(3):
        assert verify_signature(raw(signer), signature, DATA)
        assert not verify_signature(raw(signer), signature, DATA + b"!")
    assert children == [DATA, DATA + b"!", DATA + b"!", DATA + b"!"]


@pytest.mark.parametrize(
    "executable",
    ["/nonexistent/python3", "/bin/true", "/bin/false"],
    ids=["cannot-start", "exits-0-silently", "exits-1"],
)
def test_a_child_that_gives_no_verdict_leaves_the_check_to_this_process(
    signer: Ed25519PrivateKey,
    in_children: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    executable: str,
) -> None:
    monkeypatch.setattr(sys, "executable", executable)
    with caplog.at_level(logging.WARNING, logger="edgeml.toolkit.signatures"):
        assert verdicts(signer) == EXPECTED
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 5, "every check that needed a child (not the short signature)"
    assert all("gave no verdict" in w and "checking here" in w for w in warnings)


def test_the_child_refuses_input_too_short_to_hold_a_key_and_a_signature() -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-m", "edgeml.toolkit.signatures"],
        input=b"\0" * 95,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == b""
    assert b"expected at least 96 bytes on stdin, got 95" in done.stderr
