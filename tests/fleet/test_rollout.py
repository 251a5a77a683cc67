"""The rollout engine as a pure function: stages, gates, approval, time-outs, rollback.

No broker, no database, no clock: a tiny in-memory world (tuf's RepositorySimulator is the
model) answers the engine's commands the way agents do, and time is a number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeml.fleet.gates import DeviceHealth, Gates
from edgeml.fleet.rollout import (
    STATES,
    CommandOutcome,
    Decision,
    DeviceView,
    Observations,
    OperatorRequest,
    RequestsHandled,
    Rollout,
    SendActivate,
    SendInstall,
    is_settled,
    new_rollout,
    parse_selector,
    parse_stages,
    step,
    summary,
    target_devices,
)
from edgeml.toolkit.errors import InputError

GOOD = "model-1.0.0-raspberry-pi-4"
NEW = "model-1.1.0-raspberry-pi-4"
HEALTHY = DeviceHealth(windows=5, requests=100, rows=100, errors=0, p95_ms=2.0, psi={"f0": 0.01})


@dataclass
class World:
    """Devices that answer install and activate commands like agents do."""

    views: dict[str, DeviceView]
    refuse: set[str] = field(default_factory=set)  # these devices fail the install
    silent: set[str] = field(default_factory=set)  # these never answer
    health: dict[str, DeviceHealth] = field(default_factory=dict)  # on the new bundle
    results: dict[str, CommandOutcome] = field(default_factory=dict)
    sent: list[object] = field(default_factory=list)

    @classmethod
    def of(cls, n: int, canaries: int = 1, profile: str = "raspberry-pi-4") -> World:
        views = {
            f"d{i:02d}": DeviceView(
                f"d{i:02d}", profile, frozenset({"canary"} if i < canaries else ()), True, GOOD
            )
            for i in range(n)
        }
        return cls(views)

    def observe(self, requests: tuple[OperatorRequest, ...] = ()) -> Observations:
        health = {d: self.health.get(d, HEALTHY) for d in self.views}
        return Observations(dict(self.views), dict(self.results), health, requests)

    def apply(self, actions: list[object]) -> None:
        for action in actions:
            self.sent.append(action)
            if isinstance(action, SendInstall | SendActivate) and action.device_id in self.silent:
                continue
            if isinstance(action, SendInstall):
                view = self.views[action.device_id]
                if action.device_id in self.refuse:
                    detail = "golden self-test failed on row(s) 3"
                    self.results[action.command_id] = CommandOutcome("failed", detail)
                else:
                    self.views[action.device_id] = replace(
                        view, active=action.bundle_id, previous=view.active
                    )
                    self.results[action.command_id] = CommandOutcome("succeeded")
            elif isinstance(action, SendActivate):
                view = self.views[action.device_id]
                if view.previous == action.bundle_id:
                    self.views[action.device_id] = replace(
                        view, active=view.previous, previous=view.active
                    )
                self.results[action.command_id] = CommandOutcome("succeeded")


def run(
    rollout: Rollout,
    world: World,
    *,
    start: float = 1000.0,
    tick: float = 1.0,
    steps: int = 50,
    requests: dict[int, tuple[OperatorRequest, ...]] | None = None,
) -> tuple[Rollout, float]:
    now = start
    for i in range(steps):
        rollout, actions = step(rollout, world.observe((requests or {}).get(i, ())), now)
        world.apply(actions)
        now += tick
        if not rollout.live(now) and i > 0:
            break
    return rollout, now


def make(
    stages: str = "1,50%,100%", gates: Gates | None = None, target: tuple[str, ...] = ()
) -> Rollout:
    return new_rollout(
        "ro-1",
        NEW,
        "raspberry-pi-4",
        parse_stages(stages),
        now=1000.0,
        target=tuple(parse_selector(t) for t in target),
        gates=gates or Gates(soak_s=0, min_requests=1),
    )


def installs(world: World) -> list[SendInstall]:
    return [a for a in world.sent if isinstance(a, SendInstall)]


# ----------------------------------------------------------------------------------- parsing


def test_stages_parse_counts_and_shares() -> None:
    stages = parse_stages("1,10%,50%,100%")
    assert [s.devices(200) for s in stages] == [1, 20, 100, 200]
    assert [s.devices(3) for s in stages] == [1, 1, 2, 3]
    assert str(stages[1]) == "10%"


@pytest.mark.parametrize("text", ["", "0", "1,,2", "150%", "0%", "ten", "50%,10%", "-1"])
def test_bad_stages_name_the_part(text: str) -> None:
    with pytest.raises(InputError, match="--stages"):
        parse_stages(text)


@pytest.mark.parametrize("text", ["plant-3", "site=3", "tag=", "=x"])
def test_bad_selectors_are_refused(text: str) -> None:
    with pytest.raises(InputError, match="--target"):
        parse_selector(text)


def test_a_profile_selector_other_than_the_bundles_is_refused() -> None:
    with pytest.raises(InputError, match="only goes to devices of its profile"):
        make(target=("profile=jetson-orin",))


def test_gates_refuse_impossible_thresholds() -> None:
    with pytest.raises(InputError, match="success-threshold"):
        Gates(success_threshold=1.5)
    with pytest.raises(InputError, match="max-latency-ratio"):
        Gates(max_latency_ratio=0)


# ---------------------------------------------------------------------------- happy rollout


def test_stages_go_canary_first_to_every_device() -> None:
    world = World.of(10, canaries=2)
    rollout, _ = run(make("1,50%,100%"), world)
    assert rollout.state == "succeeded"
    sent = [a.device_id for a in installs(world)]
    assert sent[0] == "d00"  # a canary first
    assert sorted(sent) == sorted(world.views)  # every device, once
    assert len(sent) == len(set(sent))
    assert all(v.active == NEW and v.previous == GOOD for v in world.views.values())
    assert [s.outcome for s in rollout.stage_log] == ["passed"] * 3
    assert [s.size for s in rollout.stage_log] == [1, 5, 10]


def test_only_devices_of_the_profile_and_target_are_reached() -> None:
    world = World.of(6)
    world.views["x1"] = DeviceView("x1", "jetson-orin", frozenset({"canary"}), True, None)
    world.views["d03"] = replace(world.views["d03"], tags=frozenset({"plant-3"}))
    world.views["d04"] = replace(world.views["d04"], tags=frozenset({"plant-3"}))
    rollout, _ = run(make("100%", target=("tag=plant-3",)), world)
    assert rollout.state == "succeeded"
    assert sorted(a.device_id for a in installs(world)) == ["d03", "d04"]


def test_soak_holds_each_stage_before_the_next() -> None:
    world = World.of(4)
    rollout = make("1,100%", Gates(soak_s=30, min_requests=1))
    rollout, actions = step(rollout, world.observe(), 1000)
    world.apply(actions)
    for now in (1001, 1010, 1030):  # installed at 1001, soaking from 1001
        rollout, actions = step(rollout, world.observe(), now)
        world.apply(actions)
        assert rollout.stage_index == 0
    rollout, actions = step(rollout, world.observe(), 1031)
    assert rollout.stage_index == 1
    assert len([a for a in actions if isinstance(a, SendInstall)]) == 3


def test_manual_approval_waits_between_stages() -> None:
    world = World.of(4)
    gates = Gates(soak_s=0, min_requests=1, manual_approval=True)
    rollout, now = run(make("1,100%", gates), world, steps=10)
    assert rollout.state == "waiting-approval"
    assert len(installs(world)) == 1
    approve = OperatorRequest(7, "approve", reason="canary looks fine")
    rollout, actions = step(rollout, world.observe((approve,)), now)
    world.apply(actions)
    assert RequestsHandled((7,)) in actions
    assert any(isinstance(a, Decision) and "canary looks fine" in a.reason for a in actions)
    rollout, _ = run(rollout, world, start=now + 1)
    assert rollout.state == "succeeded"
    assert len(installs(world)) == 4


def test_pause_stops_new_stages_and_resume_goes_on() -> None:
    world = World.of(4)
    rollout = make("1,100%")
    pause = {0: (OperatorRequest(1, "pause"),)}
    rollout, now = run(rollout, world, steps=5, requests=pause)
    assert rollout.state == "paused"
    assert installs(world) == []  # paused before the first stage started
    rollout, _ = run(rollout, world, start=now, requests={0: (OperatorRequest(2, "resume"),)})
    assert rollout.state == "succeeded"


def test_abort_stops_and_leaves_devices_as_they_are() -> None:
    world = World.of(4)
    rollout, now = run(make("1,100%", Gates(soak_s=100, min_requests=1)), world, steps=3)
    rollout, actions = step(rollout, world.observe((OperatorRequest(3, "abort"),)), now)
    assert rollout.state == "aborted"
    assert not any(isinstance(a, SendInstall | SendActivate) for a in actions)
    assert world.views["d00"].active == NEW
    rollout2, actions = step(rollout, world.observe(), now + 500)
    assert rollout2 == rollout and actions == []


def test_a_request_that_does_not_apply_is_recorded_and_ignored() -> None:
    world = World.of(2)
    rollout, actions = step(make(), world.observe((OperatorRequest(1, "approve"),)), 1000)
    assert rollout.state == "running"
    assert any(isinstance(a, Decision) and a.action == "request-ignored" for a in actions)


def test_waits_for_devices_when_none_is_registered() -> None:
    rollout, _ = step(make(), Observations(), 1000)
    assert rollout.stage_index == -1
    assert rollout.reason == "waiting for devices"
    world = World.of(2)
    rollout, _ = run(rollout, world, start=1001)
    assert rollout.state == "succeeded"


# -------------------------------------------------------------------------------- failures


def test_a_failed_canary_rolls_back_with_the_gate_named() -> None:
    world = World.of(5)
    world.refuse.add("d00")
    rollout, _ = run(make(), world)
    assert rollout.state == "rolled-back"
    assert rollout.failure is not None
    assert rollout.failure.gates == {"self-test": ("d00",)}
    assert "self-test failed" in rollout.failure.figures["d00"]["detail"]
    assert len(installs(world)) == 1  # no further stage
    assert all(v.active == GOOD for v in world.views.values())


@pytest.mark.parametrize(
    ("health", "gate", "figure"),
    [
        (replace(HEALTHY, errors=10), "error-rate", 0.1),
        (replace(HEALTHY, p95_ms=9.0, baseline_p95_ms=2.0), "latency", 4.5),
        (replace(HEALTHY, psi={"f0": 0.01, "f3": 1.7}), "drift", 1.7),
    ],
)
def test_each_health_gate_breaks_on_its_figure(
    health: DeviceHealth, gate: str, figure: float
) -> None:
    world = World.of(6, canaries=2)
    world.health["d01"] = health
    rollout, _ = run(make("2,100%", Gates(soak_s=5, min_requests=1)), world)
    assert rollout.state == "rolled-back"
    assert rollout.failure is not None and rollout.failure.gates == {gate: ("d01",)}
    entry = rollout.devices["d01"]
    assert entry.state == "rolled-back"
    key = {"error-rate": "error_rate", "latency": "latency_ratio", "drift": "max_psi"}[gate]
    assert entry.figures[key] == pytest.approx(figure)
    rollbacks = [a for a in world.sent if isinstance(a, SendActivate)]
    assert {a.device_id for a in rollbacks} == {"d00", "d01"}
    assert all(a.bundle_id == GOOD for a in rollbacks)
    assert all(v.active == GOOD for v in world.views.values())
    status = summary(rollout)
    assert status["gate_figures"][gate]["worst"] == pytest.approx(figure)
    assert status["gate_figures"][gate]["device_id"] == "d01"
    json.dumps(status)


def test_figures_under_min_requests_are_not_judged() -> None:
    world = World.of(3)
    world.health["d00"] = DeviceHealth(requests=3, errors=3, p95_ms=1.0)
    rollout, _ = run(make("1,100%", Gates(soak_s=0, min_requests=20)), world)
    assert rollout.state == "succeeded"


def test_error_threshold_tolerates_a_few_failures() -> None:
    world = World.of(20)
    world.refuse.add("d15")
    rollout, _ = run(make("1,100%", Gates(soak_s=0, min_requests=1, success_threshold=0.9)), world)
    assert rollout.state == "succeeded"  # 1 of 20 = 5 %, not over 5 %
    assert rollout.devices["d15"].state == "failed"


def test_silent_devices_are_resent_then_fail_at_the_time_out() -> None:
    world = World.of(3)
    world.silent.add("d00")
    gates = Gates(soak_s=0, min_requests=1, resend_after_s=5, max_attempts=3)
    rollout, _ = run(make("1,100%", gates), world, steps=40)
    sent_to_d00 = [a for a in installs(world) if a.device_id == "d00"]
    assert [a.command_id for a in sent_to_d00] == ["ro-1.d00.i1", "ro-1.d00.i2", "ro-1.d00.i3"]
    assert rollout.state == "rolled-back"
    assert rollout.failure is not None and rollout.failure.gates == {"timeout": ("d00",)}


def test_offline_devices_are_skipped_at_the_stage_time_out() -> None:
    world = World.of(4, canaries=0)
    world.views["d03"] = replace(world.views["d03"], online=False)
    world.silent.add("d03")
    gates = Gates(soak_s=0, min_requests=1, stage_timeout_s=20)
    rollout, _ = run(make("100%", gates), world, steps=40)
    assert rollout.state == "succeeded"
    assert rollout.devices["d03"].state == "offline"
    assert target_devices(rollout, world.views.values())[-1].device_id == "d03"


def test_a_device_that_leaves_the_bundle_is_sent_it_again() -> None:
    world = World.of(3)
    rollout, now = run(make("1,100%", Gates(soak_s=50, min_requests=1)), world, steps=3)
    assert rollout.devices["d00"].state == "installed"
    view = world.views["d00"]  # re-imaged: runs the old bundle again
    world.views["d00"] = replace(view, active=GOOD, previous=None)
    rollout, actions = step(rollout, world.observe(), now)
    world.apply(actions)
    assert [a.command_id for a in actions if isinstance(a, SendInstall)] == ["ro-1.d00.i2"]
    rollout, _ = run(rollout, world, start=now + 1, steps=200)
    assert rollout.state == "succeeded"
    assert world.views["d00"].active == NEW


def test_a_late_install_after_the_rollback_is_rolled_back_too() -> None:
    world = World.of(4, canaries=2)
    world.silent.add("d01")
    world.refuse.add("d00")
    rollout, now = run(make("2,100%"), world, steps=3)
    assert rollout.state == "rolled-back"
    world.silent.discard("d01")  # its install lands after the rollback began
    world.views["d01"] = replace(world.views["d01"], active=NEW, previous=GOOD)
    rollout, _ = run(rollout, world, start=now)
    assert world.views["d01"].active == GOOD
    assert rollout.devices["d01"].state == "rolled-back"


def test_the_document_survives_a_json_round_trip() -> None:
    world = World.of(5)
    world.health["d00"] = replace(HEALTHY, errors=50)
    rollout, _ = run(make(), world)
    again = Rollout.from_dict(json.loads(json.dumps(rollout.to_dict())))
    assert again == rollout


# ------------------------------------------------------------------------------ properties

device_plans = st.lists(
    st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),  # refuse, silent,
    min_size=1,  # canary, bad health
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(
    plans=device_plans,
    stages=st.sampled_from(["1,100%", "1,10%,50%,100%", "2,3", "100%", "50%"]),
    crash_at=st.integers(0, 30),
    gates=st.builds(
        Gates,
        soak_s=st.sampled_from([0.0, 3.0]),
        error_threshold=st.sampled_from([0.0, 0.05, 0.5]),
        success_threshold=st.sampled_from([0.5, 0.95, 1.0]),
        min_requests=st.just(1),
        resend_after_s=st.just(4.0),
        stage_timeout_s=st.just(30.0),
    ),
)
def test_invariants_hold_for_any_fleet(
    plans: list[tuple[bool, bool, bool, bool]], stages: str, crash_at: int, gates: Gates
) -> None:
    world = World.of(0)
    for i, (refuse, silent, canary, bad) in enumerate(plans):
        device = f"d{i:02d}"
        world.views[device] = DeviceView(
            device, "raspberry-pi-4", frozenset({"canary"} if canary else ()), True, GOOD
        )
        if refuse:
            world.refuse.add(device)
        if silent:
            world.silent.add(device)
        if bad:
            world.health[device] = replace(HEALTHY, errors=50)
    world.views["other"] = DeviceView("other", "jetson-orin", frozenset({"canary"}), True, None)
    rollout = make(stages, gates)
    now = 1000.0
    for i in range(120):
        if i == crash_at:  # the service restarts: the document comes back from its JSON
            rollout = Rollout.from_dict(json.loads(json.dumps(rollout.to_dict())))
        before = rollout
        rollout, actions = step(rollout, world.observe(), now)
        assert rollout.state in STATES
        assert rollout.stage_index >= before.stage_index
        for action in actions:
            if isinstance(action, SendInstall):
                assert action.device_id != "other"  # never another profile
                assert before.state in ("running", "waiting-approval")
        assert step(before, world.observe(), now) == (rollout, actions)  # a pure function
        world.apply(actions)
        now += 1.0
        if not rollout.live(now):
            break
    assert set(rollout.devices) <= set(world.views) - {"other"}
    commands = [a.command_id for a in world.sent if isinstance(a, SendInstall | SendActivate)]
    assert len(commands) == len(set(commands))  # command ids are never reused
    if rollout.state == "rolled-back":
        # Every device that took the new bundle and could go back did.
        for device, entry in rollout.devices.items():
            if entry.from_bundle is not None and device not in world.silent:
                assert world.views[device].active != NEW
    if rollout.state == "succeeded":
        failed = [e for e in rollout.devices.values() if e.state in ("failed", "unhealthy")]
        counted = [e for e in rollout.devices.values() if e.state != "offline"]
        assert len(failed) <= gates.error_threshold * len(counted)


def test_a_status_document_is_settled_when_nothing_more_will_happen_on_its_own() -> None:
    """``rollout status --watch`` stops there: succeeded or aborted, or rolled back with no
    device still on its way back."""
    for state in ("succeeded", "aborted"):
        assert is_settled({"state": state, "devices": []})
    for state in ("running", "waiting-approval", "paused"):
        assert not is_settled({"state": state, "devices": []})
    going_back = [{"device_id": "pi-1", "state": "rolling-back"}, {"state": "rolled-back"}]
    assert not is_settled({"state": "rolled-back", "devices": going_back})
    assert is_settled({"state": "rolled-back", "devices": going_back[1:]})
