"""``edgeml keys generate``: files written once, passphrases only from the environment."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from edgeml.toolkit.cli import app
from edgeml.toolkit.keys import key_id, load_private_key, load_public_key

runner = CliRunner()

SECRET = "s3cret-passphrase-do-not-print"


def test_generate_writes_the_pair_and_prints_the_key_id(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = runner.invoke(app, ["keys", "generate", "--out", str(out), "--name", "ci"])
    assert result.exit_code == 0, result.stderr
    private, public = out / "ci.key", out / "ci.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    kid = key_id(load_public_key(public))
    assert result.stdout.strip() == kid  # stdout: only the id, for scripts
    assert str(private) in result.stderr
    assert str(public) in result.stderr


def test_generate_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document == {
        "key_id": key_id(load_public_key(tmp_path / "edgeml.pub")),
        "private_key": str(tmp_path / "edgeml.key"),
        "public_key": str(tmp_path / "edgeml.pub"),
        "encrypted": False,
    }


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    assert runner.invoke(app, ["keys", "generate", "--out", str(tmp_path)]).exit_code == 0
    before = (tmp_path / "edgeml.key").read_bytes()
    result = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "already exists" in result.stderr
    assert (tmp_path / "edgeml.key").read_bytes() == before


def test_generate_refuses_a_bad_name(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path), "--name", "../x"])
    assert result.exit_code == 2
    assert "key name" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_encrypted_key_with_passphrase_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MYVAR", raising=False)
    result = runner.invoke(
        app,
        ["keys", "generate", "--out", str(tmp_path), "--passphrase-env", "MYVAR", "--json"],
        env={"MYVAR": SECRET},
    )
    assert result.exit_code == 0, result.stderr
    assert SECRET not in result.stdout
    assert SECRET not in result.stderr
    document = json.loads(result.stdout)
    assert document["encrypted"] is True
    private = tmp_path / "edgeml.key"
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()

    monkeypatch.setenv("MYVAR", SECRET)
    assert key_id(load_private_key(private, "MYVAR").public_key()) == document["key_id"]


def test_encrypted_key_plain_output_hides_the_passphrase(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["keys", "generate", "--out", str(tmp_path), "--passphrase-env", "MYVAR"],
        env={"MYVAR": SECRET},
    )
    assert result.exit_code == 0, result.stderr
    assert "encrypted" in result.stderr
    assert SECRET not in result.output
    assert SECRET not in result.stderr


def test_unset_passphrase_variable_exits_2(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("UNSETVAR", raising=False)
    out = tmp_path / "keys"
    result = runner.invoke(
        app, ["keys", "generate", "--out", str(out), "--passphrase-env", "UNSETVAR"]
    )
    assert result.exit_code == 2
    assert "UNSETVAR" in result.stderr
    assert not out.exists()  # no key written, not even an unencrypted one


def test_passphrase_is_not_a_command_line_option(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["keys", "generate", "--out", str(tmp_path), "--passphrase", SECRET]
    )
    assert result.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_keys_without_a_command_shows_help() -> None:
    result = runner.invoke(app, ["keys"])
    assert "generate" in result.output
