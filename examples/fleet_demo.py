"""The fleet demo: a local Mosquitto, the fleet service and five device agents on this machine.

Enrolls the five devices (broker credentials, agent configs, the broker's password file and
per-device ACL) and shows that one device cannot speak for another. Then publishes a good
bundle and stages it to every device (canary first), publishes a bad one (its drift baseline
does not match the devices' traffic), watches it break the drift gate on the canary and roll
back by itself, and prints what happened: the rollouts' tables, the devices' versions and
health, and the audit log. Run by ``./demo.sh`` after the build.

    python examples/fleet_demo.py --out demo-out --good B1.edgeml --bad B2.edgeml --trust K.pub
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

EDGEML = str(Path(sys.executable).with_name("edgeml"))
DEVICES = ("pi-01", "pi-02", "pi-03", "pi-04", "pi-05")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def mosquitto_binary() -> str:
    for candidate in ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        found = shutil.which(candidate)
        if found:
            return found
    sys.exit("the fleet demo needs Mosquitto: apt-get install -y mosquitto")


def edgeml(*args: str) -> str:
    wide = {**os.environ, "COLUMNS": "200"}  # tables printed whole, not squeezed to 80
    done = subprocess.run([EDGEML, *args], capture_output=True, text=True, timeout=120, env=wide)
    if done.returncode != 0:
        sys.exit(f"edgeml {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def edgeml_json(*args: str) -> Any:
    return json.loads(edgeml(*args, "--json"))


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


class Processes:
    """Child processes started by the demo, stopped at the end whatever happens."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    sys.exit(f"timed out after {timeout:.0f} s waiting for {what}")


class Traffic(threading.Thread):
    """Every agent scores rows of the validation data through its local API, all the time."""

    def __init__(self, ports: list[int], rows: list[dict[str, float]]) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.rows = rows
        self.requests = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        start = 0
        while not self.stopping.is_set():
            for port in self.ports:
                batch = self.rows[start : start + 40] or self.rows[:40]
                start = (start + 40) % len(self.rows)
                body = json.dumps({"rows": batch}).encode()
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/predict",
                    body,
                    {"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=5) as answer:
                        answer.read()
                    self.requests += 1
                except OSError:
                    pass  # no bundle yet, or switching bundles
            self.stopping.wait(0.1)


def forge_as(device: str, victim: str, folder: Path, port: int) -> None:
    """Log in with ``device``'s own credentials and try to speak for ``victim``: a status
    claiming it runs another bundle, and an install command sent to it."""
    import paho.mqtt.client as mqtt

    from edgeml.toolkit.protocol import Command, Status, device_topic

    password = (folder / device / "broker-password").read_text().strip()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"forger-{device}")
    client.username_pw_set(device, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    forged = Status(victim, True, time.time(), "raspberry-pi-4", [], "evil-6.6.6-raspberry-pi-4")
    order = Command("forged-1", "rollback", time.time())
    client.publish(device_topic(victim, "status"), forged.to_bytes(), qos=1, retain=True)
    client.publish(device_topic(victim, "commands"), order.to_bytes(), qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def watch(db: Path, rollout_id: str, timeout: float) -> dict[str, Any]:
    """Print each change of the rollout's state and stage until it ends; its last status."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = edgeml_json("fleet", "rollout", "status", rollout_id, "--db", str(db))
        line = f"{status['state']}: {status['reason']}"
        if line != seen:
            print(f"    [{time.strftime('%H:%M:%S')}] {line}", flush=True)
            seen = line
        if status["state"] not in ("running", "waiting-approval", "paused"):
            return status
        time.sleep(0.5)
    sys.exit(f"rollout {rollout_id} did not end within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--good", type=Path, required=True, help="the good bundle")
    parser.add_argument("--bad", type=Path, required=True, help="the bundle that drifts")
    parser.add_argument("--trust", type=Path, required=True, help="the release key's .pub")
    parser.add_argument("--validation", type=Path, required=True, help="rows for the traffic")
    options = parser.parse_args()
    folder = (options.out / "fleet").resolve()
    if folder.exists():
        shutil.rmtree(folder)  # a fresh fleet each run
    folder.mkdir(parents=True)
    trust = options.trust.resolve()
    db = folder / "fleet.db"
    with options.validation.open() as handle:
        rows = [
            {k: float(v) for k, v in row.items() if k != "diagnosis"}
            for row in csv.DictReader(handle)
        ]

    processes = Processes()
    try:
        say("enroll five devices: broker credentials, agent config, per-device ACL")
        port = free_port()
        broker = f"mqtt://127.0.0.1:{port}"
        api_ports = []
        for index, device in enumerate(DEVICES):
            api_ports.append(free_port())
            tag = "canary" if index == 0 else "plant-1"
            home = folder / device
            edgeml(
                "fleet", "enroll", device, "--profile", "raspberry-pi-4", "--tag", tag,
                "--db", str(db), "--out", str(home), "--broker", broker,
                "--trust", str(trust), "--state-dir", str(home / "state"),
                "--api-listen", f"127.0.0.1:{api_ports[-1]}",
            )  # fmt: skip
            with (home / "agent.toml").open("a") as config:
                config.write("\n[telemetry]\nwindow_s = 1  # the demo's short windows\n")
            print(f"    {device} ({tag}): {home / 'agent.toml'}, {home / 'broker-password'} (0600)")
        owner = ["--broker-user", "mosquitto"] if os.geteuid() == 0 else []
        edgeml(
            "fleet", "broker-config", "--db", str(db), "--out", str(folder / "broker"),
            "--listen", f"127.0.0.1:{port}", *owner,
        )  # fmt: skip
        print(f"    broker config: {folder / 'broker'} (passwords, acl, mosquitto.conf)")

        say("a local Mosquitto with that config, the fleet service and the five agents")
        processes.start(
            [mosquitto_binary(), "-c", str(folder / "broker" / "mosquitto.conf")],
            folder / "mosquitto.log",
        )
        time.sleep(0.5)
        processes.start(
            [
                *(EDGEML, "fleet", "serve", "--db", str(db), "--broker", broker),
                *("--trust", str(trust), "--tick", "0.5", "--health-every", "1"),
                *("--username", "edgeml-fleet"),
                *("--password-file", str(folder / "broker" / "fleet-password")),
            ],
            folder / "fleet.log",
        )
        for device in DEVICES:
            config = folder / device / "agent.toml"
            processes.start(
                [EDGEML, "agent", "run", "--config", str(config)], config.parent / "agent.log"
            )
        wait_for(
            lambda: (
                sum(d["online"] for d in edgeml_json("fleet", "devices", "--db", str(db)))
                == len(DEVICES)
            ),
            60,
            "the five devices to come online",
        )
        print(f"    {len(DEVICES)} devices online; registry {db}")
        traffic = Traffic(api_ports, rows)
        traffic.start()

        say(f"publish {options.good.name} and roll it out in stages 1, 50%, 100%")
        good = edgeml_json(
            "fleet", "publish", str(options.good), "--db", str(db), "--trust", str(trust)
        )
        first = edgeml_json(
            "fleet", "rollout", "start", good["bundle_id"], "--db", str(db),
            "--stages", "1,50%,100%", "--soak", "3", "--min-requests", "5",
        )["rollout_id"]  # fmt: skip
        watch(db, first, 180)
        print(edgeml("fleet", "rollout", "status", first, "--db", str(db)))

        say("pi-02 uses its own credentials to speak for pi-03 (a status and a command)")
        before = {d["device_id"]: d for d in edgeml_json("fleet", "devices", "--db", str(db))}
        forge_as("pi-02", "pi-03", folder, port)
        time.sleep(2)
        after = {d["device_id"]: d for d in edgeml_json("fleet", "devices", "--db", str(db))}
        unchanged = after["pi-03"]["active"] == before["pi-03"]["active"]
        print(
            f"    the broker's ACL dropped both: the fleet still sees pi-03 running "
            f"{after['pi-03']['active']}"
            if unchanged
            else "    !! the forged status got through"
        )

        say(f"publish {options.bad.name}, whose drift baseline does not match the traffic")
        bad = edgeml_json(
            "fleet", "publish", str(options.bad), "--db", str(db), "--trust", str(trust)
        )
        second = edgeml_json(
            "fleet", "rollout", "start", bad["bundle_id"], "--db", str(db),
            "--stages", "1,100%", "--soak", "15", "--min-requests", "5",
        )["rollout_id"]  # fmt: skip
        status = watch(db, second, 180)
        print(edgeml("fleet", "rollout", "status", second, "--db", str(db)))
        wait_for(
            lambda: (
                {d["active"] for d in edgeml_json("fleet", "devices", "--db", str(db))}
                == {good["bundle_id"]}
            ),
            60,
            "every device back on the good bundle",
        )
        say("the devices, as they report themselves")
        print(edgeml("fleet", "devices", "--db", str(db)))
        traffic.stopping.set()

        say("what happened")
        failure = status.get("failure") or {}
        print(f"    rollout {first}: {good['bundle_id']} reached all {len(DEVICES)} devices")
        print(
            f"    rollout {second}: {bad['bundle_id']} {status['state']}: {failure.get('reason')}"
        )
        for device, figures in (failure.get("figures") or {}).items():
            print(
                f"      {device}: max PSI {figures.get('max_psi')} "
                f"({figures.get('max_psi_feature')}), error rate {figures.get('error_rate')}"
            )
        print(
            f"    every device runs {good['bundle_id']} again; {traffic.requests} requests served"
        )
        print("    pi-02's forged status and command for pi-03 were dropped by the broker's ACL")
        print(f"    audit log: {db} (table audit); logs in {folder}")
    finally:
        processes.stop()


if __name__ == "__main__":
    main()
