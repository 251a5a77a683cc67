"""Installing real signed bundles into a real state folder: activation, refusals that leave the
old bundle active, rollback, recovery from damaged slots, the lock, and a full disk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgeml.agent.install import (
    InstallError,
    NoPreviousBundleError,
    SelfTestError,
    install_bundle,
    recover,
    rollback,
    run_self_test,
)
from edgeml.agent.locking import LOCK_FILE, LockTimeoutError, install_lock
from edgeml.agent.slots import (
    BUNDLE_FILE,
    STATE_FILE,
    BundleRef,
    active_bundle_path,
    leftovers,
    read_state,
    slot_bundle,
    slot_dir,
)
from edgeml.toolkit.bundle import GOLDEN, MANIFEST, bundle_bytes, verify_bundle
from edgeml.toolkit.errors import BundleError, ConfigError, GateError
from edgeml.toolkit.keys import load_private_key
from edgeml.toolkit.manifest import canonical_json
from edgeml.toolkit.trust import TrustStore, load_trust_store

PROFILE = "raspberry-pi-4"


# --- helpers ----------------------------------------------------------------------------------


def resign(
    source: Path,
    key_dir: Path,
    out: Path,
    *,
    golden: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    **manifest_changes: Any,
) -> Path:
    """A copy of a bundle with its manifest (or golden rows) changed, signed by a trusted key."""
    verified = verify_bundle(source, load_trust_store(key_dir / "edgeml.pub"))
    entries = {name: data for name, data in verified.entries.items() if name != MANIFEST}
    if golden is not None:
        entries[GOLDEN] = canonical_json(golden(json.loads(entries[GOLDEN])))
    manifest = replace(verified.manifest, **manifest_changes)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{manifest.bundle_id}.edgeml"
    path.write_bytes(bundle_bytes(manifest, entries, load_private_key(key_dir / "edgeml.key")))
    return path


def wrong_labels(golden: dict[str, Any]) -> dict[str, Any]:
    """Golden rows whose expected outputs are wrong on rows 0 and 3: the other label, and the
    class probabilities swapped (with the labels alone, the tie rule of ``compare_outputs``
    would accept them)."""
    labels = list(golden["expected"]["labels"])
    probabilities = [list(p) for p in golden["expected"]["probabilities"]]
    for row in (0, 3):
        labels[row] = 1 - labels[row]
        probabilities[row] = probabilities[row][::-1]
    expected = {**golden["expected"], "labels": labels, "probabilities": probabilities}
    return {**golden, "expected": expected}


def ref_of(path: Path, trust: TrustStore) -> BundleRef:
    return BundleRef.of(verify_bundle(path, trust))


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def snapshot(state_dir: Path) -> dict[str, bytes]:
    """Every file of a state folder but the lock, by relative path."""
    return {
        str(p.relative_to(state_dir)): p.read_bytes()
        for p in sorted(state_dir.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def assert_clean(state_dir: Path) -> None:
    assert leftovers(state_dir) == []
    assert not [p for p in state_dir.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def trust(key_dir: Path) -> TrustStore:
    return load_trust_store(key_dir / "edgeml.pub")


@pytest.fixture(scope="module")
def bundles(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, built_bundle: Path, logreg: Any
) -> dict[str, Path]:
    """1.0.0 (the session's bundle), a real 1.1.0 build, and re-signed variants."""
    from edgeml.converters.pipeline import BuildRequest, build_bundles
    from edgeml.toolkit.profiles import load_profile

    out = tmp_path_factory.mktemp("agent-bundles")
    build = build_bundles(
        BuildRequest(
            model_path=logreg.model_path,
            profiles=[load_profile(PROFILE)],
            signing_key=load_private_key(key_dir / "edgeml.key"),
            out_dir=out / "build",
            validation_path=logreg.validation_path,
            target=logreg.target,
            name="cancer",
            version="1.1.0",
        )
    )
    return {
        "1.0.0": built_bundle,
        "1.1.0": build.builds[0].bundle_path,
        "1.2.0": resign(built_bundle, key_dir, out, version="1.2.0"),
        "0.9.0": resign(built_bundle, key_dir, out, version="0.9.0"),
        "1.0.0-resigned": resign(
            built_bundle, key_dir, out / "resigned", provenance={"rebuilt": "elsewhere"}
        ),
        "bad-self-test": resign(built_bundle, key_dir, out, version="1.3.0", golden=wrong_labels),
        "jetson": resign(built_bundle, key_dir, out, profile="jetson-orin"),
    }


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


# --- installing -------------------------------------------------------------------------------


def test_a_good_bundle_becomes_active_in_its_own_verified_slot(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    seen: list[str] = []
    result = install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE, checkpoint=seen.append)
    expected = ref_of(bundles["1.0.0"], trust)
    assert result.bundle == result.active == expected and result.previous is None
    assert result.changed and not result.rolled_back and result.self_test.passed
    assert result.self_test.rows == 16
    assert seen[0] == "locked" and seen[-1] == "done" and "state-replaced" in seen
    slot = slot_dir(state_dir, expected.bundle_id)
    assert sorted(p.name for p in slot.iterdir()) == sorted(
        [BUNDLE_FILE, MANIFEST, "model.onnx", "baseline.json", "golden.json"]
    )
    assert (slot / BUNDLE_FILE).read_bytes() == bundles["1.0.0"].read_bytes()
    state = read_state(state_dir)
    assert state.active == expected and state.previous is None
    assert [h.event for h in state.history] == ["installed"]
    assert active_bundle_path(state_dir) == slot / BUNDLE_FILE
    document = json.loads((state_dir / STATE_FILE).read_text())
    assert document["active"]["bundle_id"] == "cancer-1.0.0-raspberry-pi-4"
    assert_clean(state_dir)
    assert bundles["1.0.0"].exists()  # copied, not moved


def test_an_upgrade_keeps_the_old_bundle_as_previous_and_older_slots_are_removed(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    for version in ("0.9.0", "1.0.0", "1.1.0"):
        result = install_bundle(bundles[version], state_dir, trust, PROFILE)
    assert result.active == ref_of(bundles["1.1.0"], trust)
    assert result.previous == ref_of(bundles["1.0.0"], trust)
    assert result.removed_slots == ("cancer-0.9.0-raspberry-pi-4",)
    slots = sorted(p.name for p in (state_dir / "slots").iterdir())
    assert slots == ["cancer-1.0.0-raspberry-pi-4", "cancer-1.1.0-raspberry-pi-4"]
    assert [h.event for h in read_state(state_dir).history] == ["installed"] * 3


def test_installing_the_active_bundle_again_changes_nothing(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE)
    before = snapshot(state_dir)
    result = install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE)
    assert not result.changed and result.active == ref_of(bundles["1.1.0"], trust)
    assert snapshot(state_dir) == before


@pytest.mark.parametrize("damage", ["flip-middle", "truncate", "untrusted-key"])
def test_a_bundle_that_does_not_verify_is_refused_and_the_old_one_stays_active(
    state_dir: Path,
    bundles: dict[str, Path],
    trust: TrustStore,
    tmp_path: Path,
    other_key_dir: Path,
    damage: str,
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    before = snapshot(state_dir)
    bad = tmp_path / "cancer-1.1.0-raspberry-pi-4.edgeml"
    bad.write_bytes(bundles["1.1.0"].read_bytes())
    if damage == "flip-middle":
        flip_byte(bad)
    elif damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(BundleError, match="refused, check") as caught:
        install_bundle(
            bad,
            state_dir,
            load_trust_store(other_key_dir / "other.pub") if damage == "untrusted-key" else trust,
            PROFILE,
        )
    assert caught.value.exit_code == 3 and str(bad) in str(caught.value)
    assert snapshot(state_dir) == before
    assert_clean(state_dir)


def test_a_bundle_failing_its_self_test_is_refused_naming_the_rows(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    before = snapshot(state_dir)
    with pytest.raises(SelfTestError) as caught:
        install_bundle(bundles["bad-self-test"], state_dir, trust, PROFILE)
    error = caught.value
    assert isinstance(error, GateError) and error.exit_code == 4
    assert error.bundle_id == "cancer-1.3.0-raspberry-pi-4"
    assert error.rows == (0, 3)
    assert "row(s) 0, 3" in str(error) and "golden self-test failed" in str(error)
    assert snapshot(state_dir) == before
    assert_clean(state_dir)
    assert not slot_dir(state_dir, "cancer-1.3.0-raspberry-pi-4").exists()


def test_a_downgrade_is_refused_unless_it_is_a_rollback_to_the_previous_bundle(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE)
    before = snapshot(state_dir)
    for older in ("0.9.0", "1.0.0"):
        with pytest.raises(BundleError, match="downgrade refused") as caught:
            install_bundle(bundles[older], state_dir, trust, PROFILE)
        assert caught.value.exit_code == 3
    with pytest.raises(BundleError, match="downgrade refused"):
        install_bundle(bundles["0.9.0"], state_dir, trust, PROFILE, allow_rollback_to_previous=True)
    assert snapshot(state_dir) == before
    result = install_bundle(
        bundles["1.0.0"], state_dir, trust, PROFILE, allow_rollback_to_previous=True
    )
    assert result.rolled_back and result.active == ref_of(bundles["1.0.0"], trust)
    assert result.previous == ref_of(bundles["1.1.0"], trust)


def test_the_same_version_with_other_content_is_refused(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    with pytest.raises(BundleError, match="other content"):
        install_bundle(bundles["1.0.0-resigned"], state_dir, trust, PROFILE)


def test_a_bundle_for_another_profile_is_refused(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    with pytest.raises(BundleError, match="jetson-orin") as caught:
        install_bundle(bundles["jetson"], state_dir, trust, PROFILE)
    assert "raspberry-pi-4" in str(caught.value)
    assert read_state(state_dir).active is None
    assert_clean(state_dir)


def test_a_missing_bundle_file_is_refused(state_dir: Path, trust: TrustStore) -> None:
    with pytest.raises(BundleError, match="archive"):
        install_bundle(state_dir.parent / "nope.edgeml", state_dir, trust, PROFILE)


# --- rollback ---------------------------------------------------------------------------------


def test_rollback_switches_to_the_previous_bundle_and_back(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    v1, v2 = ref_of(bundles["1.0.0"], trust), ref_of(bundles["1.1.0"], trust)
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE)
    result = rollback(state_dir, trust)
    assert result.rolled_back and result.changed
    assert (result.active, result.previous) == (v1, v2)
    assert read_state(state_dir).history[-1].event == "rolled-back"
    result = rollback(state_dir, trust)
    assert (result.active, result.previous) == (v2, v1)
    assert_clean(state_dir)


def test_rollback_without_a_previous_bundle_is_an_error(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    with pytest.raises(NoPreviousBundleError, match="no previous bundle") as caught:
        rollback(state_dir, trust)
    assert caught.value.exit_code == 2
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    with pytest.raises(NoPreviousBundleError):
        rollback(state_dir, trust)


def test_rollback_to_a_damaged_previous_bundle_is_refused_and_the_active_one_stays(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE)
    flip_byte(slot_bundle(state_dir, "cancer-1.0.0-raspberry-pi-4"))
    with pytest.raises(BundleError, match="refused"):
        rollback(state_dir, trust)
    assert read_state(state_dir).active == ref_of(bundles["1.1.0"], trust)


def test_rollback_repairs_a_previous_slot_whose_unpacked_files_are_damaged(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE)
    model = slot_dir(state_dir, "cancer-1.0.0-raspberry-pi-4") / "model.onnx"
    flip_byte(model)
    result = rollback(state_dir, trust)
    assert result.active == ref_of(bundles["1.0.0"], trust)
    assert any("replaced" in w for w in result.warnings)
    assert recover(state_dir, trust, self_test=True).problems == ()


# --- recovery ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damaged", [BUNDLE_FILE, "model.onnx", "golden.json", "missing-slot"])
def test_recovery_falls_back_to_the_previous_bundle_when_the_active_slot_is_damaged(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore, damaged: str
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE)
    slot = slot_dir(state_dir, "cancer-1.1.0-raspberry-pi-4")
    if damaged == "missing-slot":
        for path in slot.iterdir():
            path.unlink()
        slot.rmdir()
    else:
        flip_byte(slot / damaged)
    result = recover(state_dir, trust)
    assert result.fell_back and result.serving
    assert result.active == ref_of(bundles["1.0.0"], trust) and result.previous is None
    assert len(result.problems) == 1
    assert "active bundle cancer-1.1.0-raspberry-pi-4 is damaged" in result.problems[0]
    state = read_state(state_dir)
    assert state.active == result.active and state.history[-1].event == "recovered"
    assert not slot.exists()
    verify_bundle(slot_bundle(state_dir, state.active.bundle_id), trust)
    # the next start finds nothing to do
    again = recover(state_dir, trust, self_test=True)
    assert not again.fell_back and again.problems == () and again.cleaned == ()


def test_recovery_reports_no_active_bundle_when_neither_slot_verifies(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE)
    for version in ("1.0.0", "1.1.0"):
        flip_byte(slot_bundle(state_dir, f"cancer-{version}-raspberry-pi-4"))
    result = recover(state_dir, trust)
    assert not result.serving and result.fell_back and len(result.problems) == 2
    assert read_state(state_dir).active is None
    assert active_bundle_path(state_dir) is None
    # the version floor survives: an old bundle is still refused, a new one is installed
    with pytest.raises(BundleError, match="downgrade"):
        install_bundle(bundles["0.9.0"], state_dir, trust, PROFILE)
    assert install_bundle(bundles["1.2.0"], state_dir, trust, PROFILE).changed


def test_recovery_drops_a_damaged_previous_bundle(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE)
    flip_byte(slot_bundle(state_dir, "cancer-1.0.0-raspberry-pi-4"))
    result = recover(state_dir, trust)
    assert not result.fell_back and result.active == ref_of(bundles["1.1.0"], trust)
    assert result.previous is None and "previous bundle" in result.problems[0]


def test_recovery_removes_leftovers_and_unnamed_slots(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    (state_dir / "slots" / ".staging-deadbeef").mkdir()
    (state_dir / "slots" / ".staging-deadbeef" / BUNDLE_FILE).write_bytes(b"half")
    (state_dir / ".state.json.x1y2.tmp").write_bytes(b"{")
    orphan = state_dir / "slots" / "cancer-1.2.0-raspberry-pi-4"
    orphan.mkdir()
    result = recover(state_dir, trust)
    assert not result.fell_back and result.problems == ()
    assert ".staging-deadbeef" in result.cleaned and ".state.json.x1y2.tmp" in result.cleaned
    assert not orphan.exists()
    assert_clean(state_dir)


def test_recovery_of_an_empty_or_missing_state_folder(tmp_path: Path, trust: TrustStore) -> None:
    result = recover(tmp_path / "new", trust)
    assert not result.serving and not result.fell_back and result.problems == ()
    assert (tmp_path / "new" / LOCK_FILE).exists()


def test_a_damaged_state_file_is_moved_aside_and_reported(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    (state_dir / STATE_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=r"state\.json"):
        read_state(state_dir)
    with pytest.raises(ConfigError, match=r"state\.json"):
        install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE)
    result = recover(state_dir, trust)
    assert not result.serving and "state.json" in result.problems[0]
    assert (state_dir / "state.json.damaged").read_text() == "{not json"
    assert slot_dir(state_dir, "cancer-1.0.0-raspberry-pi-4").exists()  # kept for people
    assert install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE).changed


def test_the_self_test_runs_on_the_unpacked_slot(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    slot = slot_dir(state_dir, "cancer-1.0.0-raspberry-pi-4")
    bundle = verify_bundle(slot / BUNDLE_FILE, trust)
    assert run_self_test(slot, bundle).passed
    flip_byte(slot / "model.onnx")
    with pytest.raises(BundleError, match="differs from the verified bundle"):
        run_self_test(slot, bundle)


# --- the lock ---------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from edgeml.agent.install import install_bundle
    from edgeml.toolkit.errors import BundleError

    bundle, state, trust, log = sys.argv[1:5]

    def note(what):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()} {what}\\n")

    def checkpoint(step):
        if step in ("locked", "done"):
            note(step)
        if step == "self-tested":
            time.sleep(0.4)  # long enough for the other install to run into the lock

    note("start")
    try:
        install_bundle(bundle, state, trust, "raspberry-pi-4", checkpoint=checkpoint)
    except BundleError as error:
        note("refused")
    """
)


def test_the_lock_serialises_two_concurrent_installs(
    state_dir: Path, bundles: dict[str, Path], key_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                str(bundles[version]),
                str(state_dir),
                str(key_dir / "edgeml.pub"),
                str(log),
            ]
        )
        for version in ("1.0.0", "1.1.0")
    ]
    assert [child.wait(timeout=60) for child in children] == [0, 0]
    lines = [line.split() for line in log.read_text().splitlines()]
    starts = [i for i, (_, what) in enumerate(lines) if what == "start"]
    first_done = next(i for i, (_, what) in enumerate(lines) if what == "done")
    assert starts[1] < first_done, f"the two installs did not run at the same time: {lines}"
    held = [(pid, what) for pid, what in lines if what != "start"]
    # whoever took the lock first finished before the other one took it
    first = held[0][0]
    assert held[0] == (first, "locked") and held[1] == (first, "done"), lines
    assert held[2][1] == "locked" and held[2][0] != first, lines
    trust = load_trust_store(key_dir / "edgeml.pub")
    assert read_state(state_dir).active == ref_of(bundles["1.1.0"], trust)


def test_a_held_lock_makes_an_install_wait_or_time_out(
    state_dir: Path, bundles: dict[str, Path], trust: TrustStore
) -> None:
    holder = f"last taken by process {os.getpid()}"
    with install_lock(state_dir), pytest.raises(LockTimeoutError, match=holder):
        install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE, lock_timeout=0.2)
    assert install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE, lock_timeout=0.2).changed
    with install_lock(state_dir, shared=True), install_lock(state_dir, shared=True):
        pass  # readers share it


# --- a full disk ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target", [BUNDLE_FILE, "model.onnx", "manifest.json", ".state.json."], ids=str
)
def test_a_full_disk_during_an_install_leaves_the_old_bundle_active(
    state_dir: Path,
    bundles: dict[str, Path],
    trust: TrustStore,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
) -> None:
    install_bundle(bundles["1.0.0"], state_dir, trust, PROFILE)
    before = snapshot(state_dir)
    real_write = os.write

    def full_disk(fd: int, data: Any) -> int:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if str(state_dir) in name and Path(name).name.startswith(target):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(InstallError, match="no space left on the device"):
        install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE)
    monkeypatch.undo()
    assert snapshot(state_dir) == before
    assert_clean(state_dir)
    assert install_bundle(bundles["1.1.0"], state_dir, trust, PROFILE).changed
