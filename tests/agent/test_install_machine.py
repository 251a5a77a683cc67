"""The install state machine, without a disk: every transition, every refusal, and properties
that hold for any sequence of events (hypothesis)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import hypothesis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeml.agent.install_machine import (
    CollectGarbage,
    DiscardCandidate,
    Fail,
    Finish,
    IllegalTransition,
    InstallState,
    Phase,
    PrepareSlot,
    Receive,
    RunSelfTest,
    SelfTestPassed,
    SwitchActive,
    Switched,
    Unpacked,
    Verified,
    VerifyBundle,
    activated,
    compare_versions,
    fall_back,
    refusal,
    step,
    version_key,
)
from edgeml.agent.slots import AgentState, BundleRef
from edgeml.toolkit.errors import EdgeMLError

PROFILE = "raspberry-pi-4"


def ref(version: str, name: str = "cancer", profile: str = PROFILE, salt: str = "") -> BundleRef:
    digest = hashlib.sha256(f"{name}|{version}|{profile}|{salt}".encode()).hexdigest()
    return BundleRef(f"{name}-{version}-{profile}", name, version, profile, digest)


def device_with(*installed: BundleRef) -> AgentState:
    """A device state after activating these bundles in order."""
    device = AgentState()
    for bundle in installed:
        device = activated(device, bundle)
    return device


def run(state: InstallState, *events: object) -> tuple[InstallState, list[object]]:
    actions: list[object] = []
    for event in events:
        state, more = step(state, event)  # type: ignore[arg-type]
        actions += more
    return state, actions


def install(device: AgentState, bundle: BundleRef, rollback: bool = False) -> InstallState:
    """Run a whole attempt for ``bundle``; stop where the machine fails."""
    state, _ = run(InstallState(PROFILE, device), Receive(rollback), Verified(bundle))
    if state.phase is Phase.FAILED:
        return state
    state, _ = run(state, Unpacked(), SelfTestPassed(), Switched())
    return state


# ------------------------------------------------------------------------------ versions


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.0.0", "1.0.1"),
        ("1.2", "1.10"),
        ("1.9.9", "2"),
        ("9.9.9.9", "10"),
        ("1.0dev1", "1.0a1"),
        ("1.0a1", "1.0b1"),
        ("1.0b2", "1.0rc1"),
        ("1.0rc2", "1.0rc10"),
        ("1.0rc1", "1.0x"),
        ("1.0x", "1.0"),
        ("1.0", "1.0post1"),
        ("1.0post1", "1.0.1a1"),
    ],
)
def test_versions_compare_by_numbers_then_suffix(lower: str, higher: str) -> None:
    assert compare_versions(lower, higher) == -1
    assert compare_versions(higher, lower) == 1
    assert version_key(lower) < version_key(higher)


@pytest.mark.parametrize(
    ("a", "b"), [("1.0", "1.0.0"), ("1.0a1", "1.0alpha1"), ("2.0c1", "2.0rc1")]
)
def test_equal_versions(a: str, b: str) -> None:
    assert compare_versions(a, b) == 0


@pytest.mark.parametrize("bad", ["", "v1", "1..0", "1.0-rc1", "1.0.0.0.0", "1.0RC1"])
def test_a_malformed_version_is_an_error(bad: str) -> None:
    with pytest.raises(ValueError, match="not a bundle version"):
        version_key(bad)


# --------------------------------------------------------------------------- transitions


def test_a_whole_install_goes_through_every_phase_with_its_actions() -> None:
    old, new = ref("1.0.0"), ref("1.1.0")
    state = InstallState(PROFILE, device_with(old))
    seen = []
    for event, phase, action_type in (
        (Receive(), Phase.RECEIVED, VerifyBundle),
        (Verified(new), Phase.VERIFIED, PrepareSlot),
        (Unpacked(), Phase.UNPACKED, RunSelfTest),
        (SelfTestPassed(), Phase.SELF_TESTED, SwitchActive),
        (Switched(), Phase.ACTIVATED, CollectGarbage),
    ):
        state, actions = step(state, event)
        assert state.phase is phase
        assert [type(a) for a in actions] == [action_type]
        seen.append(actions[0])
    switch = seen[3]
    assert isinstance(switch, SwitchActive) and switch.changed
    assert switch.state.active == new and switch.state.previous == old
    assert state.device.active == new and state.device.previous == old
    assert seen[4] == CollectGarbage((new.bundle_id, old.bundle_id))
    state, actions = step(state, Finish())
    assert state == InstallState(PROFILE, state.device) and actions == ()
    assert state.device.floor("cancer", PROFILE) == new


def test_the_active_pointer_changes_only_on_switched() -> None:
    old, new = ref("1.0.0"), ref("1.1.0")
    state = InstallState(PROFILE, device_with(old))
    for event in (Receive(), Verified(new), Unpacked(), SelfTestPassed()):
        state, _ = step(state, event)
        assert state.device.active == old
    state, _ = step(state, Switched())
    assert state.device.active == new


def states_in_every_phase() -> dict[Phase, InstallState]:
    device = device_with(ref("1.0.0"))
    new = ref("1.1.0")
    idle = InstallState(PROFILE, device)
    received, _ = step(idle, Receive())
    verified, _ = step(received, Verified(new))
    unpacked, _ = step(verified, Unpacked())
    tested, _ = step(unpacked, SelfTestPassed())
    active, _ = step(tested, Switched())
    failed, _ = step(verified, Fail("disk on fire"))
    return {
        Phase.IDLE: idle,
        Phase.RECEIVED: received,
        Phase.VERIFIED: verified,
        Phase.UNPACKED: unpacked,
        Phase.SELF_TESTED: tested,
        Phase.ACTIVATED: active,
        Phase.FAILED: failed,
    }


EVENTS = (
    Receive(),
    Verified(ref("1.1.0")),
    Unpacked(),
    SelfTestPassed(),
    Switched(),
    Fail("x"),
    Finish(),
)
LEGAL = {
    Phase.IDLE: {Receive},
    Phase.RECEIVED: {Verified, Fail},
    Phase.VERIFIED: {Unpacked, Fail},
    Phase.UNPACKED: {SelfTestPassed, Fail},
    Phase.SELF_TESTED: {Switched, Fail},
    Phase.ACTIVATED: {Finish},
    Phase.FAILED: {Finish},
}


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_illegal_transition_raises_and_leaves_the_state_unchanged(
    phase: Phase, event: object
) -> None:
    state = states_in_every_phase()[phase]
    if type(event) in LEGAL[phase]:
        step(state, event)  # type: ignore[arg-type]
        return
    before = replace(state)
    with pytest.raises(IllegalTransition, match=f"not allowed in phase {phase.value}"):
        step(state, event)  # type: ignore[arg-type]
    assert state == before and state.phase is phase
    assert issubclass(IllegalTransition, EdgeMLError)


@pytest.mark.parametrize(
    "phase", [Phase.RECEIVED, Phase.VERIFIED, Phase.UNPACKED, Phase.SELF_TESTED]
)
def test_a_failure_in_any_step_leaves_the_active_bundle_and_discards_the_candidate(
    phase: Phase,
) -> None:
    state = states_in_every_phase()[phase]
    failed, actions = step(state, Fail("no space left on the device"))
    assert failed.phase is Phase.FAILED and failed.reason == "no space left on the device"
    assert failed.device == state.device and failed.device.active == ref("1.0.0")
    assert actions == (DiscardCandidate(state.candidate, False),)
    idle, _ = step(failed, Finish())
    assert idle.phase is Phase.IDLE and idle.device == state.device and idle.reason == ""


# ------------------------------------------------------------------------------ admission


def refused(device: AgentState, bundle: BundleRef, rollback: bool = False) -> str:
    state = install(device, bundle, rollback)
    assert state.phase is Phase.FAILED, f"{bundle.bundle_id} was not refused"
    assert state.device == device
    return state.reason


def test_a_first_bundle_and_an_upgrade_are_admitted() -> None:
    assert install(AgentState(), ref("1.0.0")).device.active == ref("1.0.0")
    state = install(device_with(ref("1.0.0")), ref("1.0.1"))
    assert state.phase is Phase.ACTIVATED and state.device.previous == ref("1.0.0")


def test_a_bundle_for_another_profile_is_refused() -> None:
    reason = refused(device_with(ref("1.0.0")), ref("2.0.0", profile="jetson-orin"))
    assert "jetson-orin" in reason and PROFILE in reason and "profile" in reason
    reason = refused(AgentState(), ref("1.0.0", profile="x86-64-generic"))
    assert "x86-64-generic" in reason


def test_a_lower_version_is_refused_as_a_downgrade() -> None:
    device = device_with(ref("1.0.0"), ref("1.1.0"))
    reason = refused(device, ref("1.0.5"))
    assert "downgrade refused" in reason and "cancer-1.1.0-raspberry-pi-4" in reason


def test_replaying_the_previous_bundle_is_a_downgrade_unless_rollback_is_allowed() -> None:
    device = device_with(ref("1.0.0"), ref("1.1.0"))
    assert "downgrade refused" in refused(device, ref("1.0.0"))
    state = install(device, ref("1.0.0"), rollback=True)
    assert state.phase is Phase.ACTIVATED
    assert state.device.active == ref("1.0.0") and state.device.previous == ref("1.1.0")
    # the floor follows the rollback: a fixed 1.0.1 may come next
    assert install(state.device, ref("1.0.1")).phase is Phase.ACTIVATED


def test_rollback_allows_only_the_previous_bundle_itself() -> None:
    device = device_with(ref("0.9.0"), ref("1.0.0"), ref("1.1.0"))
    assert device.previous == ref("1.0.0")
    assert "downgrade refused" in refused(device, ref("0.9.0"), rollback=True)
    # same id, other content: a re-signed 1.0.0 is not the bundle the device holds
    reason = refused(device, ref("1.0.0", salt="evil"), rollback=True)
    assert "previous bundle" in reason


def test_the_same_version_with_other_content_is_refused() -> None:
    reason = refused(device_with(ref("1.0.0")), ref("1.0.0", salt="re-signed"))
    assert "other content" in reason
    assert "other content" in refused(device_with(ref("1.0.0")), ref("1.0", salt="x"))


def test_the_active_bundle_sent_again_is_admitted_and_changes_nothing() -> None:
    device = device_with(ref("1.0.0"), ref("1.1.0"))
    state, actions = run(
        InstallState(PROFILE, device), Receive(), Verified(ref("1.1.0")), Unpacked()
    )
    state, actions = step(state, SelfTestPassed())
    assert actions == (SwitchActive(device, False),)
    state, _ = step(state, Switched())
    assert state.device == device


def test_versions_are_compared_only_within_one_name_and_profile() -> None:
    device = device_with(ref("2.0.0", name="cancer"))
    state = install(device, ref("0.1.0", name="diabetes"))
    assert state.phase is Phase.ACTIVATED and state.device.previous == ref("2.0.0")


def test_no_downgrade_by_replay_after_another_model_was_active() -> None:
    device = device_with(ref("2.0.0", name="cancer"), ref("0.1.0", name="diabetes"))
    assert "last active bundle cancer-2.0.0" in refused(device, ref("1.0.0", name="cancer"))
    # rolling back to the previous bundle (cancer 2.0.0) is allowed, and so is an upgrade
    assert install(device, ref("2.0.0"), rollback=True).phase is Phase.ACTIVATED
    assert install(device, ref("2.1.0")).phase is Phase.ACTIVATED


def test_refusal_is_a_pure_function_of_the_candidate_and_the_device() -> None:
    device = device_with(ref("1.0.0"))
    assert refusal(ref("1.0.1"), device, PROFILE) is None
    assert refusal(ref("1.0.0"), device, PROFILE) is None
    assert refusal(ref("0.9.0"), device, PROFILE) is not None
    assert refusal(ref("1.0.1"), device, "jetson-orin") is not None


# ------------------------------------------------------------------------------- recovery


def test_fall_back_to_the_previous_bundle_when_the_active_one_is_damaged() -> None:
    device = device_with(ref("1.0.0"), ref("1.1.0"))
    same = fall_back(device, active_ok=True, previous_ok=True)
    assert same == device
    back = fall_back(device, active_ok=False, previous_ok=True)
    assert back.active == ref("1.0.0") and back.previous is None
    assert back.floor("cancer", PROFILE) == ref("1.0.0")
    none = fall_back(device, active_ok=False, previous_ok=False)
    assert none.active is None and none.previous is None
    dropped = fall_back(device, active_ok=True, previous_ok=False)
    assert dropped.active == ref("1.1.0") and dropped.previous is None
    assert fall_back(AgentState(), active_ok=False, previous_ok=False) == AgentState()


# ----------------------------------------------------------------------------- properties

REFS = [
    ref("1.0.0"),
    ref("1.1.0"),
    ref("1.1.0", salt="re-signed"),
    ref("0.9.0"),
    ref("2.0rc1"),
    ref("1.0.0", name="diabetes"),
    ref("1.0.0", profile="jetson-orin"),
]
event_strategy = st.one_of(
    st.builds(Receive, st.booleans()),
    st.builds(Verified, st.sampled_from(REFS)),
    st.just(Unpacked()),
    st.just(SelfTestPassed()),
    st.just(Switched()),
    st.just(Fail("boom")),
    st.just(Finish()),
)


def attempt(rollback: bool, bundle: BundleRef, steps: int, fail: bool) -> list[object]:
    """An install attempt cut short after ``steps`` events, perhaps failing there."""
    happy = [Receive(rollback), Verified(bundle), Unpacked(), SelfTestPassed(), Switched()]
    return [*happy[:steps], *([Fail("boom")] if fail else []), Finish()]


attempts = st.builds(
    attempt, st.booleans(), st.sampled_from(REFS), st.integers(1, 5), st.booleans()
)
# Whole attempts (most reach a switch) mixed with stray events (most of them illegal).
sequences = st.lists(st.one_of(attempts, st.lists(event_strategy, max_size=3)), max_size=12).map(
    lambda parts: [e for part in parts for e in part]
)


@settings(max_examples=400, deadline=None)
@given(sequences, st.sampled_from([None, *REFS[:2]]))
def test_any_event_sequence_never_activates_a_bundle_that_was_not_self_tested(
    events: list[object], start: BundleRef | None
) -> None:
    device = device_with(start) if start and start.profile == PROFILE else AgentState()
    state = InstallState(PROFILE, device)
    self_tested: BundleRef | None = None
    activations = []
    for event in events:
        before = state
        try:
            state, _ = step(state, event)  # type: ignore[arg-type]
        except IllegalTransition:
            assert state is before
            continue
        if isinstance(event, SelfTestPassed):
            self_tested = state.candidate
        if isinstance(event, Receive | Finish):
            self_tested = None
        if state.device.active != before.device.active:
            # only Switched moves the pointer, and only to the candidate just self-tested
            assert isinstance(event, Switched)
            assert state.device.active == self_tested == before.candidate
            activations.append((before, state.device.active))
        if state.phase is Phase.FAILED:
            assert state.device == before.device
        # every bundle the device serves runs on its profile
        assert state.device.active is None or state.device.active.profile == PROFILE
    hypothesis.event(f"activations: {min(len(activations), 3)}")
    for before, bundle in activations:
        floor = before.device.floor(bundle.name, bundle.profile)
        if floor is None:
            continue
        order = compare_versions(bundle.version, floor.version)
        # never backwards, except a rollback to the very previous bundle
        assert (
            order > 0 or bundle == floor or (before.rollback and bundle == before.device.previous)
        )
