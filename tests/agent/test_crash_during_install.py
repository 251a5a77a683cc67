"""SIGKILL during an install, at every step boundary and at random moments (issue 5, point 4).

Each case runs an install (or a rollback) in a child process that kills itself with SIGKILL
at one checkpoint of ``install_bundle`` (or is killed by this process after a random delay).
Then recovery runs, as the agent does on start, and the device must serve the old or the new
bundle, verified and passing its golden self-test, never a partial one, with no leftovers; at
a checkpoint, which one of the two is known exactly: the new one from ``state-replaced`` on.

SIGKILL stops the process, not the kernel: what the page cache holds survives. The fsyncs
are for power loss, which a test cannot cut; docs/agent-install.md says what each protects.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgeml.agent.install import CHECKPOINTS, install_bundle, recover, run_self_test
from edgeml.agent.slots import (
    BundleRef,
    leftovers,
    read_state,
    slot_bundle,
    slot_dir,
    slot_folders,
)
from edgeml.toolkit.bundle import MANIFEST, bundle_bytes, verify_bundle
from edgeml.toolkit.keys import load_private_key
from edgeml.toolkit.trust import TrustStore, load_trust_store

PROFILE = "raspberry-pi-4"
SWITCH = CHECKPOINTS.index("state-replaced")

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from edgeml.agent.install import install_bundle, rollback

    mode, target, bundle, state, trust = sys.argv[1:6]

    def checkpoint(step):
        if step == target:
            os.kill(os.getpid(), signal.SIGKILL)

    print("go", flush=True)
    if mode == "install":
        install_bundle(bundle, state, trust, "raspberry-pi-4", checkpoint=checkpoint)
    else:
        rollback(state, trust, checkpoint=checkpoint)
    print("finished", flush=True)
    """
)


def resign(source: Path, key_dir: Path, out: Path, version: str) -> Path:
    verified = verify_bundle(source, load_trust_store(key_dir / "edgeml.pub"))
    entries = {name: data for name, data in verified.entries.items() if name != MANIFEST}
    manifest = replace(verified.manifest, version=version)
    path = out / f"{manifest.bundle_id}.edgeml"
    path.write_bytes(bundle_bytes(manifest, entries, load_private_key(key_dir / "edgeml.key")))
    return path


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, built_bundle: Path
) -> dict[str, Any]:
    """A device that installed 0.9.0 then 1.0.0 (so installing 1.1.0 also removes a slot)."""
    root = tmp_path_factory.mktemp("crash")
    trust = load_trust_store(key_dir / "edgeml.pub")
    older = resign(built_bundle, key_dir, root, "0.9.0")
    newer = resign(built_bundle, key_dir, root, "1.1.0")
    template = root / "template"
    install_bundle(older, template, trust, PROFILE)
    install_bundle(built_bundle, template, trust, PROFILE)
    refs = {
        name: BundleRef.of(verify_bundle(path, trust))
        for name, path in (("0.9", older), ("old", built_bundle), ("new", newer))
    }
    return {"template": template, "new": newer, "trust": trust, "refs": refs, "key_dir": key_dir}


def device_copy(setup: dict[str, Any], tmp_path: Path) -> Path:
    state_dir = tmp_path / "state"
    shutil.copytree(setup["template"], state_dir)
    return state_dir


def child(setup: dict[str, Any], state_dir: Path, mode: str, target: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            mode,
            target,
            str(setup["new"]),
            str(state_dir),
            str(setup["key_dir"] / "edgeml.pub"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def assert_serves_a_whole_bundle(state_dir: Path, trust: TrustStore) -> BundleRef:
    """Recover as the agent does on start; the active bundle verifies and passes its self-test;
    nothing partial is left. Returns the active bundle."""
    result = recover(state_dir, trust, self_test=True)
    assert result.serving and result.problems == (), result
    active = result.active
    assert active is not None and read_state(state_dir).active == active
    bundle = verify_bundle(slot_bundle(state_dir, active.bundle_id), trust)
    assert BundleRef.of(bundle) == active
    assert run_self_test(slot_dir(state_dir, active.bundle_id), bundle).passed
    assert leftovers(state_dir) == []
    assert not [p for p in state_dir.rglob("*") if p.name.endswith(".tmp")]
    held = {r.bundle_id for r in (result.active, result.previous) if r is not None}
    assert {p.name for p in slot_folders(state_dir)} == held
    json.loads((state_dir / "state.json").read_text())
    return active


def kill_points() -> list[str]:
    return list(dict.fromkeys(CHECKPOINTS))  # gc-partial is reached once here


@pytest.mark.parametrize("target", kill_points())
def test_sigkill_at_every_step_of_an_install_leaves_the_old_or_the_new_bundle(
    setup: dict[str, Any], tmp_path: Path, target: str
) -> None:
    state_dir = device_copy(setup, tmp_path)
    process = child(setup, state_dir, "install", target)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"never reached {target}: {out}"
    active = assert_serves_a_whole_bundle(state_dir, setup["trust"])
    refs = setup["refs"]
    if CHECKPOINTS.index(target) < SWITCH:
        assert active == refs["old"]
        assert read_state(state_dir).previous == refs["0.9"]
    else:
        assert active == refs["new"]
        assert read_state(state_dir).previous == refs["old"]
    # and the device installs again after the crash
    result = install_bundle(setup["new"], state_dir, setup["trust"], PROFILE)
    assert result.active == refs["new"] and result.previous == refs["old"]


@pytest.mark.parametrize(
    "target", ["copied", "verified", "self-tested", "state-temp-partial", "state-replaced", "done"]
)
def test_sigkill_during_a_rollback_leaves_one_of_the_two_bundles(
    setup: dict[str, Any], tmp_path: Path, target: str
) -> None:
    state_dir = device_copy(setup, tmp_path)
    process = child(setup, state_dir, "rollback", target)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"never reached {target}: {out}"
    active = assert_serves_a_whole_bundle(state_dir, setup["trust"])
    refs = setup["refs"]
    assert active == (refs["old"] if CHECKPOINTS.index(target) < SWITCH else refs["0.9"])


def test_sigkill_at_random_moments_of_an_install(setup: dict[str, Any], tmp_path: Path) -> None:
    rng = random.Random(5)
    # How long an install takes in the child, from its "go" to its "finished".
    timings = []
    for attempt in range(2):
        state_dir = device_copy(setup, tmp_path / f"calibrate-{attempt}")
        process = child(setup, state_dir, "install", "none")
        assert process.stdout is not None and process.stdout.readline() == "go\n"
        start = time.perf_counter()
        assert process.stdout.readline() == "finished\n"
        timings.append(time.perf_counter() - start)
        process.wait(timeout=60)
    window = max(timings)
    outcomes = []
    for attempt in range(8):
        state_dir = device_copy(setup, tmp_path / f"random-{attempt}")
        process = child(setup, state_dir, "install", "none")
        assert process.stdout is not None and process.stdout.readline() == "go\n"
        delay = rng.uniform(0.0, window)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        active = assert_serves_a_whole_bundle(state_dir, setup["trust"])
        assert active in (setup["refs"]["old"], setup["refs"]["new"])
        outcomes.append((round(delay * 1000, 1), process.returncode, active.version))
    print(f"install takes ~{window * 1000:.0f} ms; (delay ms, rc, active): {outcomes}")
