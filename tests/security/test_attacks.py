"""Attacks refused (issue 7, part 3): none crashes a process or changes what a device runs.

One real agent process (``edgeml agent run`` against a real Mosquitto) serves a good bundle,
``cancer-1.1.0``, for the whole module. Every malicious bundle reaches it through the real
transfer path (an install command, transfer requests, hashed chunks): tampered entries,
extra, missing or renamed entries, path traversal and symlinks in the archive, a key nobody
trusts, a replay of an older signed bundle (downgrade), another profile's bundle
(mix-and-match), and a sender of endless data. Each is refused with a detail that names the
check, and afterwards the agent is alive, ``/v1/health`` names the good bundle, a prediction
is answered by it, and nothing of the attack is left in ``incoming/``.

Malformed, oversized and wrong-schema messages go to every topic the agent reads (its
commands and transfer topics) and every topic the fleet service reads (devices' status,
telemetry and events): each is dropped and counted, the agent still answers a ping, and the
fleet still stores the next good message with its registry otherwise unchanged.

The agent trusts a folder (``edgeml.pub``, ``retired.pub`` and ``revoked-keys.txt`` naming the
retired key): a bundle signed by the retired key, whose ``.pub`` is still there, is refused
because the key is revoked. Revocation through a signed trust document is
tests/agent/test_agent_trust.py's. Not here: forged commands from a device's credentials are
refused by the broker's ACL (tests/fleet/test_broker_acl.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sqlite3
import stat
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from agent_process import Agent, write_config
from background import Background
from broker import MosquittoBroker
from conftest import TrainedModel, build_bundle
from protocol_peer import ProtocolPeer

from edgeml.agent.slots import slot_bundle
from edgeml.fleet.registry import FleetRegistry
from edgeml.fleet.service import BrokerConnection, FleetService
from edgeml.toolkit.bundle import MANIFEST, bundle_bytes, verify_bundle
from edgeml.toolkit.keys import generate_key_pair, key_id, load_private_key, load_public_key
from edgeml.toolkit.protocol import (
    DEFAULT_CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    TRANSFER_WINDOW,
    Chunk,
    Command,
    CommandResult,
    Status,
    TelemetryWindow,
    TopicKind,
    TransferRequest,
    device_topic,
)
from edgeml.toolkit.trust import load_trust_store

DEVICE = "pi-1"
GOOD = "cancer-1.1.0-raspberry-pi-4"
TARGET = "cancer-2.0.0-raspberry-pi-4"  # the id every tampered bundle claims


def _sibling(relative: str, name: str) -> ModuleType:
    """Another test module's helpers, loaded by path (``toolkit`` and ``fleet`` would resolve
    to the source packages as import names)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


tampering = _sibling("toolkit/test_bundle_verification.py", "bundle_tampering_helpers")


# --- the peer that lies --------------------------------------------------------------------


class LyingPeer(ProtocolPeer):
    """A fleet side that may serve other bytes than it announced, and say any total size."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, client_id="attacker-fleet")
        self.totals: dict[str, int] = {}  # bundle id -> the total_size its chunks claim

    def offer(
        self, device: str, bundle_id: str, served: bytes, size: int, sha256: str, chunk: int
    ) -> str:
        """An install command announcing ``size`` and ``sha256``; requests get ``served``."""
        self.bundles[bundle_id] = served
        self.totals[bundle_id] = size
        command = Command(
            command_id=uuid.uuid4().hex,
            kind="install",
            issued_at=time.time(),
            bundle_id=bundle_id,
            bundle_size=size,
            bundle_sha256=sha256,
            chunk_size=chunk,
        )
        self.chunk_sizes[command.command_id] = chunk
        self.client.publish(device_topic(device, "commands"), command.to_bytes(), qos=1)
        return command.command_id

    def install(self, device: str, bundle: Path, chunk_size: int = DEFAULT_CHUNK_BYTES) -> str:
        self.totals.pop(bundle.name.removesuffix(".edgeml"), None)
        return super().install(device, bundle, chunk_size)

    def _serve(self, device: str, request: TransferRequest) -> None:
        data = self.bundles.get(request.bundle_id)
        if data is None:
            return
        total = self.totals.get(request.bundle_id, len(data))
        size = self.chunk_sizes.get(request.command_id, DEFAULT_CHUNK_BYTES)
        offset = request.offset
        for _ in range(TRANSFER_WINDOW):
            if offset >= len(data):
                return
            payload = data[offset : offset + size]
            chunk = Chunk.of(request.command_id, request.bundle_id, offset, total, payload)
            self.client.publish(device_topic(device, "transfer"), chunk.to_bytes(), qos=1)
            self.served.append((request.command_id, offset))
            offset += len(payload)


# --- the agent under attack ----------------------------------------------------------------


@dataclass
class Target:
    agent: Agent
    peer: LyingPeer
    state_dir: Path
    rows: Any


@pytest.fixture(scope="module")
def good_bundle(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, logreg: TrainedModel
) -> Path:
    return build_bundle(logreg, key_dir, tmp_path_factory.mktemp("good"), "cancer", version="1.1.0")


@pytest.fixture(scope="module")
def newer_bundle(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, logreg: TrainedModel
) -> Path:
    """A good 2.0.0: what every tampered bundle starts from (not a downgrade, not active)."""
    return build_bundle(
        logreg, key_dir, tmp_path_factory.mktemp("newer"), "cancer", version="2.0.0"
    )


@pytest.fixture(scope="module")
def retired_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key pair ``retired.key`` / ``retired.pub`` that signed bundles once."""
    folder = tmp_path_factory.mktemp("retired-key")
    generate_key_pair(folder, "retired")
    return folder


@pytest.fixture(scope="module")
def trust_folder(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, retired_key_dir: Path
) -> Path:
    """The device's trust: the signing key, and the retired key, whose ``.pub`` is still
    there but which ``revoked-keys.txt`` revokes."""
    folder = tmp_path_factory.mktemp("trust")
    shutil.copy(key_dir / "edgeml.pub", folder)
    shutil.copy(retired_key_dir / "retired.pub", folder)
    retired = key_id(load_public_key(retired_key_dir / "retired.pub"))
    (folder / "revoked-keys.txt").write_text(f"# retired after a leak\n{retired}\n")
    return folder


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory,
    key_dir: Path,
    trust_folder: Path,
    good_bundle: Path,
    logreg: TrainedModel,
) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("attacked-device")
    broker = MosquittoBroker(root / "broker")
    broker.start()
    peer = LyingPeer("127.0.0.1", broker.port)
    agent: Agent | None = None
    try:
        config = write_config(root / "device", broker, key_dir, 0.5, DEVICE)
        trusted = f'trust = "{key_dir / "edgeml.pub"}"'
        assert trusted in config.read_text()
        config.write_text(config.read_text().replace(trusted, f'trust = "{trust_folder}"'))
        agent = Agent(config)
        peer.wait(lambda: DEVICE in peer.statuses and peer.statuses[DEVICE].online, 20, "the agent")
        installed = peer.result(peer.install(DEVICE, good_bundle))
        assert installed.outcome == "succeeded", installed.detail
        yield Target(agent, peer, root / "device" / "state", logreg.X_val[:5])
    finally:
        if agent is not None:
            agent.stop()
        peer.close()
        broker.stop()


def assert_unharmed(target: Target) -> None:
    """The agent runs, serves the good bundle, answers with it, and kept nothing of the attack."""
    agent = target.agent
    assert agent.process.poll() is None, agent.log.read_text()[-3000:]
    code, health = agent.get("/v1/health")
    assert (code, health.get("bundle")) == (200, GOOD), health
    code, answer = agent.predict(target.rows)
    assert code == 200 and answer["bundle"] == GOOD and len(answer["predictions"]) == 5
    incoming = target.state_dir / "incoming"
    assert not incoming.exists() or sorted(p.name for p in incoming.iterdir()) == []
    slots = target.state_dir / "slots"
    assert TARGET not in {p.name for p in slots.iterdir()}, "a refused bundle got a slot"


# --- malicious bundles ---------------------------------------------------------------------


@dataclass(frozen=True)
class Forge:
    """What the attacker has: a good newer bundle to tamper with, older and foreign bundles
    signed by the trusted key, the trusted key itself (a replay re-signed under the active
    id), a key nobody trusts and a revoked one."""

    newer: Path
    older: Path
    foreign: Path
    trusted_key: Any
    untrusted_key: Any
    revoked_key: Any
    folder: Path

    def rewrite(self, name: str, **changes: Any) -> Path:
        out = self.folder / name
        out.mkdir(parents=True, exist_ok=True)
        return tampering.rewrite_bundle(self.newer, out / f"{TARGET}.edgeml", **changes)

    def entries(self) -> dict[str, bytes]:
        return tampering.read_entries(self.newer)


@pytest.fixture(scope="module")
def forge(
    tmp_path_factory: pytest.TempPathFactory,
    key_dir: Path,
    other_key_dir: Path,
    newer_bundle: Path,
    built_bundle: Path,
    logreg: TrainedModel,
    retired_key_dir: Path,
) -> Forge:
    folder = tmp_path_factory.mktemp("forged")
    foreign = build_bundle(
        logreg, key_dir, folder / "x86", "cancer", profile="x86-64-server", version="2.0.0"
    )
    return Forge(
        newer=newer_bundle,
        older=built_bundle,  # cancer-1.0.0, signed by the trusted key
        foreign=foreign,
        trusted_key=load_private_key(key_dir / "edgeml.key"),
        untrusted_key=load_private_key(other_key_dir / "other.key"),
        revoked_key=load_private_key(retired_key_dir / "retired.key"),
        folder=folder,
    )


def _flip(name: str) -> Callable[[Forge], Path]:
    return lambda f: f.rewrite(
        f"flip-{name}", replace={name: tampering.flip_byte(f.entries()[name])}
    )


def _unsigned_manifest(f: Forge) -> Path:
    document = json.loads(f.entries()[MANIFEST])
    document["metrics"]["bundled"] = {k: 1.0 for k in document["metrics"]["bundled"]}
    return f.rewrite("manifest", replace={MANIFEST: json.dumps(document).encode()})


def _symlink(name: str) -> zipfile.ZipInfo:
    return tampering.entry_info(name, (stat.S_IFLNK | 0o777) << 16)


def _untrusted(f: Forge) -> Path:
    resigned = tampering.resigned_manifest(f.newer, f.untrusted_key, lambda document: None)
    return f.rewrite("untrusted", replace=resigned)


def _revoked(f: Forge) -> Path:
    resigned = tampering.resigned_manifest(f.newer, f.revoked_key, lambda document: None)
    return f.rewrite("revoked", replace=resigned)


def _renamed(f: Forge) -> Path:
    model = f.entries()["model.onnx"]
    return f.rewrite("renamed", remove=["model.onnx"], add=[("model.bin", model)])


def _truncated(f: Forge) -> Path:
    out = f.folder / "truncated" / f"{TARGET}.edgeml"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = f.newer.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def _copy(which: str) -> Callable[[Forge], Path]:
    return lambda f: getattr(f, which)


BUNDLE_ATTACKS: dict[str, tuple[Callable[[Forge], Path], str]] = {
    # attack: (the bundle file offered, what the refusal's detail names)
    "tampered-model": (_flip("model.onnx"), "check 'hashes' failed"),
    "tampered-baseline": (_flip("baseline.json"), "check 'hashes' failed"),
    "tampered-golden": (_flip("golden.json"), "check 'hashes' failed"),
    "tampered-manifest": (_unsigned_manifest, "check 'signature' failed"),
    "extra-entry": (
        lambda f: f.rewrite("extra", add=[("payload.sh", b"#!/bin/sh\nrm -rf /\n")]),
        "check 'entries' failed",
    ),
    "missing-entry": (
        lambda f: f.rewrite("missing", remove=["baseline.json"]),
        "check 'entries' failed",
    ),
    "renamed-entry": (_renamed, "check 'entries' failed"),
    "path-traversal": (
        lambda f: f.rewrite("dotdot", add=[("../../evil.py", b"import os")]),
        "check 'entry names' failed",
    ),
    "absolute-path": (
        lambda f: f.rewrite("absolute", add=[("/etc/cron.d/evil", b"* * * * * root true")]),
        "check 'entry names' failed",
    ),
    "symlink-entry": (
        lambda f: f.rewrite("symlink", add=[(_symlink("link"), b"/etc/shadow")]),
        "check 'entry names' failed",
    ),
    "model-replaced-by-symlink": (
        lambda f: f.rewrite(
            "symlink-model",
            remove=["model.onnx"],
            add=[(_symlink("model.onnx"), f.entries()["model.onnx"])],
        ),
        "check 'entry names' failed",
    ),
    "truncated-archive": (_truncated, "check 'archive' failed"),
    "untrusted-key": (_untrusted, "check 'trusted key' failed"),
    "revoked-key": (_revoked, "which is revoked"),
    "downgrade-replay-of-1.0.0": (_copy("older"), "downgrade refused"),
    "mix-and-match-x86-64-server": (_copy("foreign"), "hardware profile 'x86-64-server'"),
}


@pytest.mark.parametrize("attack", list(BUNDLE_ATTACKS))
def test_a_malicious_bundle_is_refused_over_mqtt(
    attack: str, target: Target, forge: Forge, key_dir: Path
) -> None:
    make, named = BUNDLE_ATTACKS[attack]
    bundle = make(forge)
    if attack.startswith(("downgrade", "mix")):  # signed by the trusted key: verifies
        verify_bundle(bundle, load_trust_store(key_dir))
    result = target.peer.result(target.peer.install(DEVICE, bundle))
    assert result.outcome == "refused", result
    assert named in result.detail, result.detail
    assert result.active == GOOD
    assert_unharmed(target)


def test_endless_data_ends_the_transfer(target: Target, forge: Forge) -> None:
    """A sender that keeps sending past the announced size (its chunks claiming the announced
    total): the chunk that crosses it ends the transfer and the partial file is removed."""
    data = forge.newer.read_bytes()
    chunk = 1024 if len(data) % 1024 else 1031  # a chunk must straddle the announced end
    served = data + bytes(64 * 1024)
    command_id = target.peer.offer(
        DEVICE, TARGET, served, len(data), hashlib.sha256(data).hexdigest(), chunk
    )
    result = target.peer.result(command_id)
    assert result.outcome == "refused", result
    assert "past the announced size" in result.detail, result.detail
    assert_unharmed(target)


def test_a_file_whose_hash_is_not_the_announced_one_is_refused(
    target: Target, forge: Forge
) -> None:
    data = forge.newer.read_bytes()
    swapped = tampering.flip_byte(data)  # the bytes served differ from the hash announced
    command_id = target.peer.offer(
        DEVICE, TARGET, swapped, len(data), hashlib.sha256(data).hexdigest(), 4096
    )
    result = target.peer.result(command_id)
    assert result.outcome == "refused", result
    assert "announced one" in result.detail, result.detail
    assert_unharmed(target)


def test_a_replay_under_the_active_id_with_other_content_changes_nothing(
    target: Target, forge: Forge, good_bundle: Path, key_dir: Path
) -> None:
    """Other (re-signed) content under the active bundle's id: the device refuses it (a bundle
    id names one content) and keeps its own verified copy, byte for byte."""
    verified = verify_bundle(good_bundle, load_trust_store(key_dir))
    entries = {n: d for n, d in verified.entries.items() if n != MANIFEST}
    entries["golden.json"] = json.dumps(json.loads(entries["golden.json"]), indent=1).encode()
    other = forge.folder / "same-id" / f"{GOOD}.edgeml"
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_bytes(bundle_bytes(replace(verified.manifest), entries, forge.trusted_key))
    assert other.read_bytes() != good_bundle.read_bytes()
    result = target.peer.result(target.peer.install(DEVICE, other))
    assert result.active == GOOD and result.outcome == "refused", result
    assert "already active with other content" in result.detail
    assert slot_bundle(target.state_dir, GOOD).read_bytes() == good_bundle.read_bytes()
    assert_unharmed(target)


# --- malformed messages to the agent -------------------------------------------------------


def _ping(case: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "command",
        "command_id": f"bad-{case}",
        "kind": "ping",
        "issued_at": 1.0,
        **fields,
    }


def _install(case: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "command",
        "command_id": f"bad-{case}",
        "kind": "install",
        "issued_at": 1.0,
        "bundle_id": TARGET,
        "bundle_size": 1000,
        "bundle_sha256": "0" * 64,
        **fields,
    }


def _raw(document: dict[str, Any], field: str, literal: bytes) -> bytes:
    """The document with one field's value replaced by raw JSON text (NaN, a huge number)."""
    marker = "__RAW__"
    return json.dumps({**document, field: marker}).encode().replace(f'"{marker}"'.encode(), literal)


def _chunk(command_id: str = "nope", **fields: Any) -> dict[str, Any]:
    document = Chunk.of(command_id, TARGET, 0, 1000, b"x" * 100).to_dict()
    return {**document, **fields}


def _deep(depth: int = 100_000) -> bytes:
    return b'{"type": "command", "kind": ' + b"[" * depth + b"]" * depth + b"}"


OVERSIZED = json.dumps(_ping("oversized", pad="x" * (300 * 1024))).encode()
assert len(OVERSIZED) > MAX_MESSAGE_BYTES

AGENT_GARBAGE: dict[str, tuple[TopicKind, bytes | dict[str, Any]]] = {
    # case: (topic kind, payload)
    "commands-non-utf8": ("commands", b"\xff\xfe\x00\x9c garbage"),
    "commands-non-json": ("commands", b'{"type": "command", "kind": "ping"'),
    "commands-empty": ("commands", b""),
    "commands-json-array": ("commands", b'[{"type": "command", "kind": "ping"}]'),
    "commands-json-string": ("commands", b'"ping"'),
    "commands-300KiB": ("commands", OVERSIZED),
    "commands-deep-nesting": ("commands", _deep()),
    "commands-unknown-type": ("commands", {**_ping("unknown-type"), "type": "reboot"}),
    "commands-no-type": ("commands", {k: v for k, v in _ping("no-type").items() if k != "type"}),
    "commands-unknown-field": ("commands", _ping("unknown-field", sudo=True)),
    "commands-unknown-kind": ("commands", _ping("unknown-kind", kind="format-disk")),
    "commands-status-on-commands": (
        "commands",
        Status(DEVICE, True, 1.0, active=TARGET).to_dict(),
    ),
    "commands-chunk-on-commands": ("commands", _chunk()),
    "commands-negative-time": ("commands", _ping("negative-time", issued_at=-1.0)),
    "commands-nan-time": ("commands", _raw(_ping("nan-time"), "issued_at", b"NaN")),
    "commands-huge-number": ("commands", _raw(_ping("huge"), "issued_at", b"1" + b"0" * 400)),
    "commands-5000-digits": ("commands", _raw(_ping("digits"), "issued_at", b"7" * 5000)),
    "commands-id-too-long": ("commands", _ping("x", command_id="x" * 10_000)),
    "commands-chunk-size-too-small": ("commands", _install("chunk-size", chunk_size=1)),
    "commands-bundle-size-zero": ("commands", _install("size-zero", bundle_size=0)),
    "commands-bundle-size-over-limit": ("commands", _install("size-over", bundle_size=2**40)),
    "commands-sha-not-hex": ("commands", _install("sha", bundle_sha256="z" * 64)),
    "commands-bundle-id-traversal": (
        "commands",
        _install("traversal", bundle_id="../../etc/passwd"),
    ),
    "commands-trust-without-document": ("commands", _ping("trust-nothing", kind="trust")),
    "commands-install-announcing-nothing": (
        "commands",
        {k: v for k, v in _install("no-size").items() if k != "bundle_size"},
    ),
    "transfer-non-utf8": ("transfer", b"\xc3\x28\xa0\xa1"),
    "transfer-non-json": ("transfer", b"chunk chunk chunk"),
    "transfer-json-array": ("transfer", b"[]"),
    "transfer-300KiB": ("transfer", OVERSIZED),
    "transfer-deep-nesting": ("transfer", _deep()),
    "transfer-unknown-type": ("transfer", {**_chunk(), "type": "chunk2"}),
    "transfer-command-on-transfer": ("transfer", _ping("on-transfer")),
    "transfer-unknown-field": ("transfer", _chunk(more="data")),
    "transfer-bad-base64": ("transfer", _chunk(data="!!!not base64!!!")),
    "transfer-hash-mismatch": ("transfer", _chunk(sha256="0" * 64)),
    "transfer-negative-offset": ("transfer", _chunk(offset=-1)),
    "transfer-total-size-not-a-number": ("transfer", _chunk(total_size="1000")),
    "transfer-huge-offset": ("transfer", _raw(_chunk(), "offset", b"9" * 400)),
    "transfer-over-128KiB-decoded": (
        "transfer",
        Chunk.of("nope", TARGET, 0, 10**6, bytes(129 * 1024)).to_dict(),
    ),
}


def _payload(value: bytes | dict[str, Any]) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def dropped_by_agent(state_dir: Path) -> int:
    """The agent's count of dropped messages, from ``agent.json`` (its status file)."""
    try:
        return int(json.loads((state_dir / "agent.json").read_text())["dropped_messages"])
    except (OSError, ValueError, KeyError):
        return -1


def ping_answered(target: Target) -> None:
    result = target.peer.result(target.peer.command(DEVICE, "ping"), timeout=20)
    assert (result.outcome, result.detail, result.active) == ("succeeded", "pong", GOOD)


@pytest.mark.parametrize("case", list(AGENT_GARBAGE))
def test_a_malformed_message_to_the_agent_is_dropped(case: str, target: Target) -> None:
    kind, value = AGENT_GARBAGE[case]
    payload = _payload(value)
    before = dropped_by_agent(target.state_dir)
    assert before >= 0
    info = target.peer.client.publish(device_topic(DEVICE, kind), payload, qos=1)
    info.wait_for_publish(timeout=10)
    target.peer.wait(
        lambda: dropped_by_agent(target.state_dir) == before + 1,
        20,
        f"the agent to drop the {case} message",
    )
    ping_answered(target)
    with target.peer._lock:
        answered = [r for r in target.peer.results if r.command_id.startswith("bad-")]
    assert answered == [], "a malformed command was acted on"
    assert_unharmed(target)


def test_chunks_of_another_command_are_ignored(target: Target, forge: Forge) -> None:
    """Valid chunks that belong to no transfer the agent runs (and one for a transfer that is
    not this command's) write nothing."""
    data = forge.newer.read_bytes()
    for command_id in ("not-a-command", "bad-stale"):
        chunk = Chunk.of(command_id, TARGET, 0, len(data), data[:4096])
        target.peer.client.publish(device_topic(DEVICE, "transfer"), chunk.to_bytes(), qos=1)
    ping_answered(target)
    assert_unharmed(target)


def test_commands_that_name_what_the_device_does_not_hold_change_nothing(
    target: Target,
) -> None:
    refused = target.peer.result(target.peer.command(DEVICE, "activate", TARGET))
    assert refused.outcome == "refused" and "holds no bundle" in refused.detail
    assert refused.active == GOOD
    assert_unharmed(target)


def test_the_agent_logged_no_traceback(target: Target) -> None:
    """Runs after the attacks above (file order): every refusal was handled, none escaped."""
    log = target.agent.log.read_text()
    assert "Traceback" not in log, log[-4000:]
    # Every signature, the forged ones too, was judged by a child process, none left to the
    # daemon (which would then load cryptography: edgeml.toolkit.signatures).
    assert "gave no verdict" not in log, log[-4000:]
    assert "cryptography" not in target.agent.mapped_files()


# --- malformed messages to the fleet -------------------------------------------------------

FLEET_DEVICE = "pi-7"


def _status(**fields: Any) -> dict[str, Any]:
    status = Status(FLEET_DEVICE, True, 1.0, profile="raspberry-pi-4", active=GOOD)
    return {**status.to_dict(), **fields}


def _window(seq: int, **fields: Any) -> dict[str, Any]:
    window = TelemetryWindow(
        device_id=FLEET_DEVICE,
        seq=seq,
        window_start=1000.0,
        window_end=1060.0,
        bundle_id=GOOD,
        requests=10,
        rows=10,
        errors=0,
        contract_violations=0,
        latency_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0, "mean": 1.5},
        predictions={"0": 6, "1": 4},
        drift_psi={"mean_radius": 0.01},
    )
    return {**window.to_dict(), **fields}


def _result(**fields: Any) -> dict[str, Any]:
    result = CommandResult("c-1", "install", "succeeded", 1.0, "", GOOD, GOOD, None)
    return {**result.to_dict(), **fields}


BAD_SEQ = 999  # no garbage window may be stored (the sentinels use seq 1, 2, ...)

FLEET_GARBAGE: dict[str, tuple[TopicKind, bytes | dict[str, Any]]] = {
    "status-non-utf8": ("status", b"\x80\x81\x82"),
    "status-non-json": ("status", b"{'type': 'status'}"),
    "status-empty": ("status", b""),
    "status-json-array": ("status", json.dumps([_status()]).encode()),
    "status-300KiB": ("status", json.dumps(_status(detail="x" * (300 * 1024))).encode()),
    "status-deep-nesting": (
        "status",
        b'{"type": "status", "tags": ' + b"[" * 90_000 + b"]" * 90_000 + b"}",
    ),
    "status-unknown-type": ("status", _status(type="status2")),
    "status-unknown-field": ("status", _status(root=True)),
    "status-wrong-type-telemetry": ("status", _window(BAD_SEQ)),
    "status-other-device": ("status", _status(device_id="pi-8")),
    "status-online-not-bool": ("status", _status(online="yes")),
    "status-65-tags": ("status", _status(tags=[f"t{i}" for i in range(65)])),
    "status-unknown-state": ("status", _status(state="rooted")),
    "status-huge-number": ("status", _raw(_status(), "sent_at", b"1" + b"0" * 400)),
    "status-5000-digits": ("status", _raw(_status(), "sent_at", b"3" * 5000)),
    "telemetry-non-utf8": ("telemetry", b"\xff" * 100),
    "telemetry-json-array": ("telemetry", b"[1, 2, 3]"),
    "telemetry-300KiB": ("telemetry", json.dumps(_window(BAD_SEQ, pad="x" * 300 * 1024)).encode()),
    "telemetry-deep-nesting": ("telemetry", b"[" * 100_000 + b"]" * 100_000),
    "telemetry-wrong-type-status": ("telemetry", _status()),
    "telemetry-unknown-field": ("telemetry", _window(BAD_SEQ, raw_rows=[[1, 2]])),
    "telemetry-other-device": ("telemetry", _window(BAD_SEQ, device_id="pi-8")),
    "telemetry-seq-zero": ("telemetry", _window(0)),
    "telemetry-negative-rows": ("telemetry", _window(BAD_SEQ, rows=-5)),
    "telemetry-ends-before-it-starts": ("telemetry", _window(BAD_SEQ, window_end=1.0)),
    "telemetry-2000-classes": (
        "telemetry",
        _window(BAD_SEQ, predictions={str(i): 1 for i in range(2000)}),
    ),
    "telemetry-huge-latency": (
        "telemetry",
        json.dumps(_window(BAD_SEQ)).encode().replace(b'"p50": 1.0', b'"p50": 1' + b"0" * 400),
    ),
    "telemetry-infinite-start": ("telemetry", _raw(_window(BAD_SEQ), "window_start", b"Infinity")),
    "events-non-json": ("events", b"\x00\x01\x02"),
    "events-json-string": ("events", b'"command-result"'),
    "events-unknown-type": ("events", _result(type="shell")),
    "events-wrong-type-command": ("events", _ping("on-events")),
    "events-wrong-type-telemetry": ("events", _window(BAD_SEQ)),
    "events-unknown-outcome": ("events", _result(outcome="pwned")),
    "events-unknown-field": ("events", _result(admin=True)),
    "events-request-negative-offset": (
        "events",
        {"type": "transfer-request", "command_id": "c-1", "bundle_id": GOOD, "offset": -1},
    ),
    "events-huge-number": ("events", _raw(_result(), "sent_at", b"9" * 400)),
    "events-300KiB": ("events", json.dumps(_result(detail="y" * 300 * 1024)).encode()),
}


@dataclass
class FleetUnderAttack:
    service: FleetService
    db: Path
    device: mqtt.Client
    sentinels: int = 0

    def publish(self, kind: TopicKind, payload: bytes) -> None:
        info = self.device.publish(device_topic(FLEET_DEVICE, kind), payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()

    def sentinel(self) -> int:
        """A good window with the next seq; returns once the registry stored it."""
        self.sentinels += 1
        seq = self.sentinels
        self.publish("telemetry", json.dumps(_window(seq)).encode())
        ProtocolPeer.wait(lambda: seq in self.stored_seqs(), 20, f"the good window {seq} stored")
        return seq

    def stored_seqs(self) -> set[int]:
        with closing(self.read()) as conn:
            rows = conn.execute(
                "SELECT seq FROM telemetry WHERE device_id = ?", (FLEET_DEVICE,)
            ).fetchall()
        return {seq for (seq,) in rows}

    def read(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table but the good windows (the sentinels)."""
        with closing(self.read()) as conn:
            tables = [
                name
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            ]
            found = {}
            for table in tables:
                rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
                if table == "telemetry":
                    rows = [
                        r for r in rows if not (r[0] == FLEET_DEVICE and r[1] <= self.sentinels)
                    ]
                found[table] = sorted(rows, key=repr)
        return found


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, key_dir: Path) -> Iterator[FleetUnderAttack]:
    root = tmp_path_factory.mktemp("attacked-fleet")
    broker = MosquittoBroker(root / "broker")
    broker.start()
    db = root / "fleet.db"
    FleetRegistry.open(db).close()
    service = FleetService(db, BrokerConnection(broker.url), load_trust_store(key_dir), tick_s=0.1)
    running = Background(service.run, "fleet-under-attack")
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"device-{FLEET_DEVICE}")
    try:
        ProtocolPeer.wait(service.connected.is_set, 10, "the fleet service connected")
        device.connect("127.0.0.1", broker.port)
        device.loop_start()
        attacked = FleetUnderAttack(service, db, device)
        attacked.publish("status", json.dumps(_status()).encode())
        ProtocolPeer.wait(
            lambda: FLEET_DEVICE in {r[0] for r in attacked.snapshot()["devices"]},
            10,
            "the device registered",
        )
        attacked.sentinel()
        yield attacked
    finally:
        device.disconnect()
        device.loop_stop()
        service.stop()
        running.thread.join(timeout=10)
        broker.stop()
    assert not running.thread.is_alive(), "the fleet service did not stop"
    assert not running.errors, running.errors


@pytest.mark.parametrize("case", list(FLEET_GARBAGE))
def test_a_malformed_message_to_the_fleet_is_dropped(case: str, fleet: FleetUnderAttack) -> None:
    kind, value = FLEET_GARBAGE[case]
    before = fleet.snapshot()
    dropped = fleet.service.counters.dropped_messages
    fleet.publish(kind, _payload(value))
    fleet.sentinel()  # the next good message is still processed
    assert fleet.service.counters.dropped_messages == dropped + 1
    assert fleet.snapshot() == before, "the registry changed"
    assert BAD_SEQ not in fleet.stored_seqs()
