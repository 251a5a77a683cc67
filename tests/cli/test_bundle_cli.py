"""``edgeml verify`` and ``edgeml inspect``: tables or JSON on stdout, refusals exit 3 on stderr.

The tampering cases themselves (each refused by the CLI too) live in
``tests/toolkit/test_bundle_verification.py``; here are the command's own behaviours and one run
of the installed entry point.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeml.toolkit.cli import app
from edgeml.toolkit.keys import key_id, load_public_key

runner = CliRunner()

EDGEML = Path(sys.executable).with_name("edgeml")


def copy_with_manifest(src: Path, dst: Path, manifest: bytes, compress_type: int | None) -> Path:
    """A copy of ``src`` whose manifest.json is ``manifest`` (other entries unchanged); with
    ``compress_type`` the manifest's central-directory header names that compression method."""
    with zipfile.ZipFile(src) as original, zipfile.ZipFile(dst, "w") as out:
        for info in original.infolist():
            data = manifest if info.filename == "manifest.json" else original.read(info)
            header = zipfile.ZipInfo(info.filename, info.date_time)
            header.compress_type = zipfile.ZIP_DEFLATED
            header.external_attr = info.external_attr
            out.writestr(header, data)
            if info.filename == "manifest.json" and compress_type is not None:
                out.filelist[-1].compress_type = compress_type
    return dst


# --- verify -----------------------------------------------------------------------------------


def test_verify_a_good_bundle(built_bundle: Path, key_dir: Path) -> None:
    result = runner.invoke(app, ["verify", str(built_bundle), "--trust", str(key_dir)])
    assert result.exit_code == 0, result.stderr
    kid = key_id(load_public_key(key_dir / "edgeml.pub"))
    assert f"verified {built_bundle.stem}, signed by key {kid}" in result.stdout
    for check in ("archive", "trusted key", "signature", "manifest", "entries", "sizes", "hashes"):
        assert check in result.stdout
    assert "FAILED" not in result.stdout
    assert result.stderr == ""


def test_verify_json(built_bundle: Path, key_dir: Path) -> None:
    result = runner.invoke(
        app, ["verify", str(built_bundle), "--trust", str(key_dir / "edgeml.pub"), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["verified"] is True
    assert document["bundle"] == str(built_bundle)
    assert document["bundle_id"] == built_bundle.stem
    assert document["key_id"] == key_id(load_public_key(key_dir / "edgeml.pub"))
    assert [c["check"] for c in document["checks"]] == [
        "archive",
        "key not revoked",
        "trusted key",
        "signature",
        "manifest",
        "entries",
        "sizes",
        "hashes",
        "not expired",
    ]
    assert document["expires_at"] is None
    assert all(c["passed"] for c in document["checks"])


def test_verify_against_the_wrong_key_exits_3(built_bundle: Path, other_key_dir: Path) -> None:
    result = runner.invoke(app, ["verify", str(built_bundle), "--trust", str(other_key_dir)])
    assert result.exit_code == 3
    assert "check 'trusted key' failed" in result.stderr
    assert "not in the trust store" in result.stderr


def test_verify_a_missing_bundle_exits_3(tmp_path: Path, key_dir: Path) -> None:
    missing = tmp_path / "nope.edgeml"
    result = runner.invoke(app, ["verify", str(missing), "--trust", str(key_dir)])
    assert result.exit_code == 3
    assert "check 'archive' failed" in result.stderr
    assert "does not exist" in result.stderr


def test_verify_with_a_trust_folder_without_pub_exits_2(
    tmp_path: Path, built_bundle: Path, key_dir: Path
) -> None:
    folder = tmp_path / "trust"
    folder.mkdir()
    shutil.copy(key_dir / "edgeml.key", folder)  # a private key is not a trust anchor
    result = runner.invoke(app, ["verify", str(built_bundle), "--trust", str(folder)])
    assert result.exit_code == 2
    assert "holds no .pub file" in result.stderr
    assert result.stdout == ""


def test_verify_with_a_missing_trust_path_exits_2(tmp_path: Path, built_bundle: Path) -> None:
    result = runner.invoke(app, ["verify", str(built_bundle), "--trust", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_verify_with_a_non_key_trust_file_exits_2(tmp_path: Path, built_bundle: Path) -> None:
    bogus = tmp_path / "bogus.pub"
    bogus.write_text("not a key")
    result = runner.invoke(app, ["verify", str(built_bundle), "--trust", str(bogus)])
    assert result.exit_code == 2
    assert str(bogus) in result.stderr


def test_verify_needs_trust(built_bundle: Path) -> None:
    result = runner.invoke(app, ["verify", str(built_bundle)])
    assert result.exit_code == 2
    assert "--trust" in result.stderr


# --- inspect ----------------------------------------------------------------------------------


def test_inspect_json(built_bundle: Path, key_dir: Path) -> None:
    result = runner.invoke(app, ["inspect", str(built_bundle), "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["bundle_id"] == built_bundle.stem == "cancer-1.0.0-raspberry-pi-4"
    assert document["key_id"] == key_id(load_public_key(key_dir / "edgeml.pub"))
    assert document["task"] == "classification"
    features = document["contract"]["features"]
    assert len(features) == 30  # breast cancer
    assert {"name", "kind", "nullable", "min", "max"} <= set(features[0])
    assert "source" in document["metrics"] and "bundled" in document["metrics"]
    assert document["provenance"]["versions"]
    assert document["verified"] is False  # inspect never claims to have verified
    assert document["file"] == str(built_bundle)
    assert document["file_bytes"] == built_bundle.stat().st_size
    assert set(document["entries"]) == {"model.onnx", "baseline.json", "golden.json"}


def test_inspect_table(built_bundle: Path) -> None:
    result = runner.invoke(app, ["inspect", str(built_bundle)])
    assert result.exit_code == 0, result.stderr
    assert built_bundle.stem in result.stdout
    assert "not verified here" in result.stdout
    assert "model.onnx" in result.stdout


@pytest.mark.parametrize(
    "content", [b"", b"plain text, not a zip\n", b"PK\x03\x04" + bytes(40)], ids=str
)
def test_inspect_a_non_zip_exits_3(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.edgeml"
    path.write_bytes(content)
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 3
    assert "not a readable bundle" in result.stderr
    assert result.stdout == ""


def test_inspect_a_missing_file_exits_3(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope.edgeml")])
    assert result.exit_code == 3
    assert "not a readable bundle" in result.stderr


def test_inspect_a_zip_without_manifest_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "other.edgeml"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 3
    assert "manifest.json" in result.stderr


def test_inspect_a_manifest_that_is_not_json_exits_3(tmp_path: Path, built_bundle: Path) -> None:
    path = copy_with_manifest(built_bundle, tmp_path / "b.edgeml", b"{not json", None)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 3


def test_inspect_a_damaged_manifest_entry_exits_3(tmp_path: Path, built_bundle: Path) -> None:
    manifest = zipfile.ZipFile(built_bundle).read("manifest.json")
    path = copy_with_manifest(built_bundle, tmp_path / "b.edgeml", manifest, 99)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 3, result.stderr


def test_inspect_a_manifest_with_an_infinite_size_exits_3(
    tmp_path: Path, built_bundle: Path
) -> None:
    document = json.loads(zipfile.ZipFile(built_bundle).read("manifest.json"))
    document["entries"]["model.onnx"]["size"] = "__INF__"
    manifest = json.dumps(document).replace('"__INF__"', "1e999").encode()
    path = copy_with_manifest(built_bundle, tmp_path / "b.edgeml", manifest, None)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 3, result.stderr


# --- the installed entry point ----------------------------------------------------------------


def test_installed_entry_point_verifies(built_bundle: Path, key_dir: Path) -> None:
    assert EDGEML.exists(), f"no edgeml script next to {sys.executable}"
    completed = subprocess.run(
        [str(EDGEML), "verify", str(built_bundle), "--trust", str(key_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["verified"] is True
    assert document["bundle_id"] == built_bundle.stem
