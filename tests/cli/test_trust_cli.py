"""Keys over time through the CLI: ``keys trust init | update | show``, ``verify`` against a
trust document with a revoked key and of an expired bundle, ``agent trust-update`` and
``agent install`` of an expired bundle on a device without a daemon, ``build --expires-in``."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TrainedModel
from typer.testing import CliRunner

from edgeml.toolkit.bundle import MANIFEST, bundle_bytes, verify_bundle
from edgeml.toolkit.cli import app
from edgeml.toolkit.keys import generate_key_pair, load_private_key
from edgeml.toolkit.manifest import format_utc, parse_utc
from edgeml.toolkit.trust import load_trust_store, read_trust_document

runner = CliRunner()


def keys_cli(*args: str):
    return runner.invoke(app, ["keys", "trust", *map(str, args)])


@pytest.fixture
def keys(tmp_path: Path, key_dir: Path) -> dict[str, Path]:
    """Key pairs by name (``NAME.key`` / ``NAME.pub`` paths by ``NAME`` and ``NAME.pub``):
    ``a`` is the session's key, which signs the built bundle."""
    found: dict[str, Path] = {"a": key_dir / "edgeml.key", "a.pub": key_dir / "edgeml.pub"}
    for name in ("b", "root"):
        pair = generate_key_pair(tmp_path / "keys", name)
        found[name], found[f"{name}.pub"] = pair.private_path, pair.public_path
    return found


def kid_of(path: Path) -> str:
    from edgeml.toolkit.keys import key_id, load_public_key

    return key_id(load_public_key(path))


@pytest.fixture
def v1(tmp_path: Path, keys: dict[str, Path]) -> Path:
    out = tmp_path / "trust-v1.json"
    result = keys_cli("init", "--key", keys["a.pub"], "--sign-with", keys["root"], "--out", out)
    assert result.exit_code == 0, result.stderr
    return out


def test_init_writes_a_first_document_signed_by_its_root(
    tmp_path: Path, keys: dict[str, Path], v1: Path
) -> None:
    store = load_trust_store(v1)
    assert store.version == 1
    assert store.trusted_ids == (kid_of(keys["a.pub"]),)
    assert set(store.roots) == {kid_of(keys["root.pub"])}
    again = keys_cli("init", "--key", keys["a.pub"], "--sign-with", keys["root"], "--out", v1)
    assert again.exit_code == 2 and "refusing to overwrite" in again.stderr
    unsigned = keys_cli("init", "--key", keys["a.pub"], "--out", tmp_path / "x.json")
    assert unsigned.exit_code == 2 and "--sign-with" in unsigned.stderr


def test_init_from_plain_keys_needs_their_countersignature(
    tmp_path: Path, keys: dict[str, Path], key_dir: Path
) -> None:
    args = ["init", "--key", keys["b.pub"], "--root", keys["root.pub"], "--previous", key_dir]
    alone = keys_cli(*args, "--sign-with", keys["root"], "--out", tmp_path / "alone.json")
    assert alone.exit_code == 3 and "trusted version 0" in alone.stderr
    assert not (tmp_path / "alone.json").exists()
    both = keys_cli(
        *args,
        "--sign-with",
        keys["root"],
        "--sign-with",
        keys["a"],
        "--out",
        tmp_path / "both.json",
        "--json",
    )
    assert both.exit_code == 0, both.stderr
    summary = json.loads(both.stdout)
    assert summary["root_keys"] == [kid_of(keys["root.pub"])], "a countersigner is no root"
    assert set(summary["signed_by"]) == {kid_of(keys["root.pub"]), kid_of(keys["a.pub"])}


def test_update_rotates_and_revokes_and_is_checked_as_a_device_would(
    tmp_path: Path, keys: dict[str, Path], v1: Path
) -> None:
    v2 = tmp_path / "trust-v2.json"
    by_release = keys_cli(
        "update", v1, "--add", keys["b.pub"], "--sign-with", keys["a"], "--out", v2
    )
    assert by_release.exit_code == 3
    assert "not signed by a root key of the trusted version 1" in by_release.stderr
    assert not v2.exists()
    result = keys_cli(
        "update",
        v1,
        "--add",
        keys["b.pub"],
        "--revoke",
        keys["a.pub"],
        "--sign-with",
        keys["root"],
        "--expires-in",
        "365",
        "--out",
        v2,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["version"] == 2 and summary["keys"] == [kid_of(keys["b.pub"])]
    assert summary["revoked"] == [kid_of(keys["a.pub"])]
    assert summary["expires_at"] > format_utc(time.time())
    assert read_trust_document(v2).version == 2
    shown = keys_cli("show", v2, "--previous", v1)
    assert shown.exit_code == 0 and "trust version 2 verifies" in shown.stdout
    back = keys_cli("show", v1, "--previous", v2)
    assert back.exit_code == 3 and "trust rollback refused" in back.stderr
    comes_back = keys_cli(
        "update", v2, "--add", keys["a.pub"], "--sign-with", keys["root"], "--out", tmp_path / "3"
    )
    assert comes_back.exit_code == 2 and "never comes back" in comes_back.stderr


def test_verify_refuses_a_revoked_key_and_an_expired_bundle(
    tmp_path: Path, keys: dict[str, Path], v1: Path, built_bundle: Path, key_dir: Path
) -> None:
    assert runner.invoke(app, ["verify", str(built_bundle), "--trust", str(v1)]).exit_code == 0
    v2 = tmp_path / "trust-v2.json"
    keys_cli(
        "update", v1, "--add", keys["b.pub"], "--revoke", kid_of(keys["a.pub"]),
        "--sign-with", keys["root"], "--out", v2,
    )  # fmt: skip
    result = runner.invoke(app, ["verify", str(built_bundle), "--trust", str(v2)])
    assert result.exit_code == 3
    assert "check 'key not revoked' failed" in result.stderr
    assert kid_of(keys["a.pub"]) in result.stderr and "FAILED" in result.stdout
    expired = expired_bundle(built_bundle, key_dir, tmp_path)
    result = runner.invoke(app, ["verify", str(expired), "--trust", str(key_dir), "--json"])
    assert result.exit_code == 3
    assert "check 'not expired' failed" in result.stderr
    assert "expired at 2026-01-01T00:00:00Z" in result.stderr
    document = json.loads(result.stdout)
    assert document["expires_at"] == "2026-01-01T00:00:00Z"
    assert document["checks"][-1]["check"] == "not expired"


def expired_bundle(built_bundle: Path, key_dir: Path, out: Path) -> Path:
    verified = verify_bundle(built_bundle, load_trust_store(key_dir))
    manifest = replace(verified.manifest, version="1.9.0", expires_at="2026-01-01T00:00:00Z")
    entries = {n: d for n, d in verified.entries.items() if n != MANIFEST}
    path = out / f"{manifest.bundle_id}.edgeml"
    path.write_bytes(bundle_bytes(manifest, entries, load_private_key(key_dir / "edgeml.key")))
    return path


def device_config(tmp_path: Path, trust: Path) -> Path:
    config = tmp_path / "device" / "agent.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        f'device_id = "pi-9"\nprofile = "raspberry-pi-4"\n'
        f'state_dir = "{tmp_path / "device" / "state"}"\ntrust = "{trust}"\n'
    )
    return config


def test_agent_trust_update_and_install_without_a_daemon(
    tmp_path: Path, keys: dict[str, Path], v1: Path, built_bundle: Path, key_dir: Path
) -> None:
    config = device_config(tmp_path, v1)
    expired = expired_bundle(built_bundle, key_dir, tmp_path)
    refused = runner.invoke(app, ["agent", "install", str(expired), "--config", str(config)])
    assert refused.exit_code == 3
    assert "expired at 2026-01-01T00:00:00Z" in refused.stderr
    installed = runner.invoke(app, ["agent", "install", str(built_bundle), "--config", str(config)])
    assert installed.exit_code == 0, installed.stderr

    v2 = tmp_path / "trust-v2.json"
    keys_cli(
        "update", v1, "--add", keys["b.pub"], "--revoke", keys["a.pub"],
        "--sign-with", keys["root"], "--out", v2,
    )  # fmt: skip
    result = runner.invoke(app, ["agent", "trust-update", str(v2), "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    assert "trust version 2 accepted (was 1)" in result.stdout
    assert "serving nothing" in result.stdout
    status = json.loads(
        runner.invoke(app, ["agent", "status", "--config", str(config), "--json"]).stdout
    )
    assert status["active"] is None and status["trust"]["version"] == 2
    assert status["trust"]["revoked"] == [kid_of(keys["a.pub"])]

    back = runner.invoke(app, ["agent", "trust-update", str(v1), "--config", str(config)])
    assert back.exit_code == 3 and "trust rollback refused" in back.stderr
    again = runner.invoke(app, ["agent", "install", str(built_bundle), "--config", str(config)])
    assert again.exit_code == 3 and "check 'key not revoked' failed" in again.stderr


def build_args(model: TrainedModel, key_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "build", str(model.model_path), "--profile", "raspberry-pi-4",
        "--key", str(key_dir / "edgeml.key"), "--out", str(out),
        "--validation", str(model.validation_path), "--target", model.target,
        "--name", "cancer", *extra,
    ]  # fmt: skip


def test_build_with_an_expiry(tmp_path: Path, key_dir: Path, logreg: TrainedModel) -> None:
    for extra, message in (
        (["--expires", "2020-01-01"], "not in the future"),
        (["--expires-in", "3", "--expires", "2099-01-01"], "not both"),
        (["--expires-in", "-1"], "positive"),
    ):
        result = runner.invoke(app, build_args(logreg, key_dir, tmp_path / "bad", *extra))
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    before = time.time()
    result = runner.invoke(app, build_args(logreg, key_dir, tmp_path, "--expires-in", "30"))
    assert result.exit_code == 0, result.stderr
    bundle = tmp_path / "cancer-1.0.0-raspberry-pi-4.edgeml"
    manifest = verify_bundle(bundle, load_trust_store(key_dir)).manifest
    assert manifest.expires_at is not None
    expires = parse_utc(manifest.expires_at)
    assert before + 30 * 86400 - 2 <= expires <= time.time() + 30 * 86400
    inspected = runner.invoke(app, ["inspect", str(bundle)])
    assert f"expires: {manifest.expires_at}" in inspected.stdout
