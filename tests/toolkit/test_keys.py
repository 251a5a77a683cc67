"""Signing keys: generation writes 0600/public files once, loading checks type and passphrase."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey

from edgeml.toolkit.errors import ConfigError, InputError
from edgeml.toolkit.keys import (
    PASSPHRASE_ENV,
    generate_key_pair,
    key_id,
    load_private_key,
    load_public_key,
    passphrase_from_env,
    private_key_is_exposed,
)

SECRET = "correct horse battery staple"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_writes_a_private_0600_and_a_public_file(tmp_path: Path) -> None:
    generated = generate_key_pair(tmp_path / "keys", "signer")
    assert generated.private_path == tmp_path / "keys" / "signer.key"
    assert generated.public_path == tmp_path / "keys" / "signer.pub"
    assert mode(generated.private_path) == 0o600
    assert not private_key_is_exposed(generated.private_path)
    assert b"BEGIN PRIVATE KEY" in generated.private_path.read_bytes()
    assert b"BEGIN PUBLIC KEY" in generated.public_path.read_bytes()
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["signer.key", "signer.pub"]
    assert mode(tmp_path / "keys") & 0o077 == 0  # a new folder is 0700


def test_default_name_is_edgeml(tmp_path: Path) -> None:
    generated = generate_key_pair(tmp_path)
    assert (generated.private_path.name, generated.public_path.name) == (
        "edgeml.key",
        "edgeml.pub",
    )


def test_key_id_is_stable_and_16_hex(tmp_path: Path) -> None:
    generated = generate_key_pair(tmp_path, "k")
    from_public = key_id(load_public_key(generated.public_path))
    from_private = key_id(load_private_key(generated.private_path).public_key())
    assert generated.key_id == from_public == from_private
    assert re.fullmatch(r"[0-9a-f]{16}", generated.key_id)
    assert key_id(load_public_key(generated.public_path)) == from_public  # again, same


def test_two_keys_have_different_ids(tmp_path: Path) -> None:
    assert generate_key_pair(tmp_path, "a").key_id != generate_key_pair(tmp_path, "b").key_id


def test_keys_sign_and_verify(tmp_path: Path) -> None:
    generated = generate_key_pair(tmp_path, "k")
    signature = load_private_key(generated.private_path).sign(b"manifest")
    load_public_key(generated.public_path).verify(signature, b"manifest")  # raises if wrong


@pytest.mark.parametrize("existing", ["k.key", "k.pub"])
def test_generate_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists") as caught:
        generate_key_pair(tmp_path, "k")
    assert caught.value.exit_code == 2
    assert str(tmp_path / existing) in str(caught.value)
    assert (tmp_path / existing).read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == [existing]  # nothing else written


def test_generate_twice_keeps_the_first_pair(tmp_path: Path) -> None:
    first = generate_key_pair(tmp_path, "k")
    before = first.private_path.read_bytes(), first.public_path.read_bytes()
    with pytest.raises(InputError):
        generate_key_pair(tmp_path, "k")
    assert (first.private_path.read_bytes(), first.public_path.read_bytes()) == before


@pytest.mark.parametrize(
    "name", ["", "../evil", "a/b", ".hidden", "-dash", "with space", "x" * 65, "é"]
)
def test_generate_refuses_a_bad_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="key name"):
        generate_key_pair(tmp_path / "keys", name)
    assert not (tmp_path / "keys").exists()
    assert list(tmp_path.iterdir()) == []


def test_encrypted_key_loads_with_its_passphrase(tmp_path: Path, monkeypatch) -> None:
    generated = generate_key_pair(tmp_path, "k", SECRET.encode())
    data = generated.private_path.read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in data
    assert SECRET.encode() not in data
    assert mode(generated.private_path) == 0o600

    monkeypatch.setenv("MYVAR", SECRET)
    key = load_private_key(generated.private_path, "MYVAR")
    assert key_id(key.public_key()) == generated.key_id


def test_encrypted_key_uses_the_default_variable(tmp_path: Path, monkeypatch) -> None:
    generated = generate_key_pair(tmp_path, "k", SECRET.encode())
    monkeypatch.setenv(PASSPHRASE_ENV, SECRET)
    assert key_id(load_private_key(generated.private_path).public_key()) == generated.key_id


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_encrypted_key_without_passphrase_names_the_variable(
    tmp_path: Path, monkeypatch, value: str | None
) -> None:
    generated = generate_key_pair(tmp_path, "k", SECRET.encode())
    if value is None:
        monkeypatch.delenv("MYVAR", raising=False)
    else:
        monkeypatch.setenv("MYVAR", value)
    with pytest.raises(ConfigError, match="MYVAR") as caught:
        load_private_key(generated.private_path, "MYVAR")
    assert caught.value.exit_code == 2
    assert str(generated.private_path) in str(caught.value)


def test_encrypted_key_with_a_wrong_passphrase(tmp_path: Path, monkeypatch) -> None:
    generated = generate_key_pair(tmp_path, "k", SECRET.encode())
    monkeypatch.setenv("MYVAR", "not the passphrase")
    with pytest.raises(ConfigError, match="wrong passphrase") as caught:
        load_private_key(generated.private_path, "MYVAR")
    assert str(generated.private_path) in str(caught.value)
    assert "not the passphrase" not in str(caught.value)


def test_passphrase_from_env(monkeypatch) -> None:
    assert passphrase_from_env(None) is None
    monkeypatch.setenv("MYVAR", SECRET)
    assert passphrase_from_env("MYVAR") == SECRET.encode()
    monkeypatch.delenv("MYVAR")
    with pytest.raises(ConfigError, match="MYVAR"):
        passphrase_from_env("MYVAR")


def test_public_key_from_a_non_key_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.pub"
    path.write_text("this is not a key\n")
    with pytest.raises(ConfigError, match="not a PEM public key") as caught:
        load_public_key(path)
    assert caught.value.exit_code == 2
    assert str(path) in str(caught.value)


def test_public_key_from_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pub"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError):
        load_public_key(path)


def test_public_key_from_a_private_key_file(tmp_path: Path) -> None:
    generated = generate_key_pair(tmp_path, "k")
    with pytest.raises(ConfigError):
        load_public_key(generated.private_path)


def test_private_key_from_a_public_key_file(tmp_path: Path) -> None:
    generated = generate_key_pair(tmp_path, "k")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        load_private_key(generated.public_path)


def test_keys_of_another_algorithm_are_refused(tmp_path: Path) -> None:
    other = Ed448PrivateKey.generate()
    public = tmp_path / "ed448.pub"
    public.write_bytes(
        other.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private = tmp_path / "ed448.key"
    private.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not Ed25519"):
        load_public_key(public)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_private_key(private)


def test_missing_key_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_public_key(tmp_path / "nope.pub")
    with pytest.raises(ConfigError, match="does not exist"):
        load_private_key(tmp_path / "nope.key")


def test_oversized_key_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.pub"
    path.write_bytes(b"-" * (64 * 1024 + 1))
    with pytest.raises(ConfigError, match="too large"):
        load_public_key(path)


def test_exposed_private_key_is_detected(tmp_path: Path) -> None:
    generated = generate_key_pair(tmp_path, "k")
    generated.private_path.chmod(0o644)
    assert private_key_is_exposed(generated.private_path)


@pytest.mark.parametrize("loader", [load_public_key, load_private_key], ids=["public", "private"])
def test_a_folder_is_not_a_key_file(tmp_path: Path, loader) -> None:
    folder = tmp_path / "edgeml.pub"
    folder.mkdir()
    with pytest.raises(ConfigError):
        loader(folder)
