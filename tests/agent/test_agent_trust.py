"""Keys over time with the agent as a real process against a real Mosquitto: a ``trust`` command
rotates the release key without re-flashing, a revoked key's bundles are refused, the active
bundle falls back when its key is revoked, and a side-loaded trust document that revokes every
held bundle's key leaves the device serving nothing, also after a restart."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

from agent_process import EDGEML, Agent, write_config
from broker import MosquittoBroker
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from protocol_peer import ProtocolPeer

from edgeml.toolkit.bundle import MANIFEST, bundle_bytes, verify_bundle
from edgeml.toolkit.keys import key_id, load_private_key
from edgeml.toolkit.trust import load_trust_store, new_trust_document, next_trust_document

DEVICE = "pi-1"


def bid(version: str) -> str:
    return f"cancer-{version}-raspberry-pi-4"


def start(config: Path, peer: ProtocolPeer) -> Agent:
    running = Agent(config)
    peer.wait(
        lambda: DEVICE in peer.statuses and peer.statuses[DEVICE].online, 20, "the agent online"
    )
    return running


def test_rotation_and_revocation_without_re_flashing(
    tmp_path: Path,
    broker: MosquittoBroker,
    peer: ProtocolPeer,
    key_dir: Path,
    built_bundle: Path,
) -> None:
    a = load_private_key(key_dir / "edgeml.key")  # the key the device was provisioned with
    b, c, root = (Ed25519PrivateKey.generate() for _ in range(3))
    verified = verify_bundle(built_bundle, load_trust_store(key_dir))
    entries = {n: d for n, d in verified.entries.items() if n != MANIFEST}

    def bundle(version: str, key: Ed25519PrivateKey) -> Path:
        manifest = replace(verified.manifest, version=version)
        folder = tmp_path / "bundles" / f"{version}-{key_id(key.public_key())}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{manifest.bundle_id}.edgeml"
        path.write_bytes(bundle_bytes(manifest, entries, key))
        return path

    # The device runs plain keys (version 0): its key a signs the first trust document, which
    # adds b as a release key and an offline root for what follows.
    v1 = new_trust_document([a.public_key(), b.public_key()], [root.public_key()]).sign(root, a)
    v2 = next_trust_document(v1, revoke=[key_id(a.public_key())]).sign(root)
    v3 = next_trust_document(v2, add=[c.public_key()], revoke=[key_id(b.public_key())])
    v3_file = tmp_path / "trust-v3.json"
    v3_file.write_bytes(v3.sign(root).to_bytes())

    config = write_config(tmp_path / "device", broker, key_dir)
    agent = start(config, peer)
    try:
        assert peer.result(peer.install(DEVICE, built_bundle)).outcome == "succeeded"
        refused = peer.result(peer.install(DEVICE, bundle("1.1.0", b)))
        assert refused.outcome == "refused" and "trusted key" in refused.detail

        taken = peer.result(peer.trust(DEVICE, v1.to_dict()))
        assert taken.outcome == "succeeded", taken.detail
        assert "trust version 1 accepted (was 0)" in taken.detail
        assert peer.result(peer.install(DEVICE, bundle("1.1.0", b))).outcome == "succeeded"
        assert peer.result(peer.install(DEVICE, bundle("1.2.0", a))).outcome == "succeeded"

        # Key a is revoked: the active bundle (signed by a) gives way to the previous one.
        revoked = peer.result(peer.trust(DEVICE, v2.to_dict()))
        assert revoked.outcome == "succeeded", revoked.detail
        assert f"revoked {key_id(a.public_key())}" in revoked.detail
        assert f"now serving {bid('1.1.0')}" in revoked.detail
        assert (revoked.active, revoked.previous) == (bid("1.1.0"), None)
        status, health = agent.get("/v1/health")
        assert status == 200 and health["bundle"] == bid("1.1.0")
        peer.wait(
            lambda: "trust version 2" in peer.statuses[DEVICE].detail, 10, "the status detail"
        )

        again = peer.result(peer.install(DEVICE, bundle("1.3.0", a)))
        assert again.outcome == "refused" and "key not revoked" in again.detail
        assert key_id(a.public_key()) in again.detail
        rotated = peer.result(peer.install(DEVICE, bundle("1.3.0", b)))
        assert rotated.outcome == "succeeded" and rotated.active == bid("1.3.0")

        rollback = peer.result(peer.trust(DEVICE, v1.to_dict()))
        assert rollback.outcome == "refused" and "trust rollback refused" in rollback.detail

        # Side-loaded while the daemon runs: b is revoked too, no held bundle verifies.
        done = subprocess.run(
            [EDGEML, "agent", "trust-update", str(v3_file), "--config", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["active"] is None
        peer.wait(lambda: agent.get("/v1/health")[0] == 503, 10, "the daemon to stop serving")
    finally:
        agent.stop()

    agent = start(config, peer)  # the trust survives a restart; nothing is served
    try:
        assert agent.get("/v1/health")[0] == 503
        status = subprocess.run(
            [EDGEML, "agent", "status", "--config", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        document = json.loads(status.stdout)
        assert document["active"] is None
        assert document["trust"]["version"] == 3
        assert document["trust"]["keys"] == [key_id(c.public_key())]
        assert peer.result(peer.install(DEVICE, bundle("1.4.0", c))).outcome == "succeeded"
        assert agent.get("/v1/health")[1]["bundle"] == bid("1.4.0")
    finally:
        agent.stop()
