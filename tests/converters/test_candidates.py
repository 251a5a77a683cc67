"""Which candidates a profile asks for and which one wins: pure logic, no model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgeml.converters.candidates import Recipe, choose, rank_key, recipes_for
from edgeml.toolkit.profiles import HardwareProfile, load_profile


def profile_with(**optimization) -> HardwareProfile:
    return HardwareProfile.from_dict(
        {
            "name": "test",
            "architecture": "aarch64",
            "execution_providers": ["CPUExecutionProvider"],
            "precisions": ["int8", "fp32"],
            "optimization": optimization,
        }
    )


def test_built_in_profiles_ask_for_their_precisions() -> None:
    names = {
        p: [r.name for r in recipes_for(load_profile(p), True)]
        for p in ("raspberry-pi-4", "x86-64-server", "jetson-orin", "x86-64-generic")
    }
    assert names["raspberry-pi-4"][:2] == ["int8-dynamic", "fp32"]
    assert names["x86-64-server"][:2] == ["int8-qdq", "fp32"]
    assert names["jetson-orin"] == ["fp16", "fp32"]
    assert names["x86-64-generic"] == ["fp32"]
    assert "int8-dynamic+units-50" in names["raspberry-pi-4"]


def test_without_training_rows_structured_pruning_is_milder() -> None:
    profile = profile_with(passes=["prune-structured"], structured_ratios=[0.5, 0.2])
    with_train = sorted({r.amount for r in recipes_for(profile, True) if r.pruning})
    without = sorted({r.amount for r in recipes_for(profile, False) if r.pruning})
    assert with_train == [0.2, 0.5]
    assert without == [0.1, 0.25]


def test_fp32_is_always_a_candidate_and_the_only_lossless_one() -> None:
    profile = HardwareProfile.from_dict(
        {
            "name": "gpu",
            "architecture": "x86_64",
            "execution_providers": ["CUDAExecutionProvider"],
            "precisions": ["fp16"],
        }
    )
    recipes = recipes_for(profile, False)
    assert [r.name for r in recipes] == ["fp16", "fp32"]
    assert [r.lossless for r in recipes] == [False, True]


def test_passes_run_in_order() -> None:
    recipe = Recipe("int8", "quantize-static", "prune-magnitude", 0.5, simplify=True)
    assert recipe.onnx_passes() == ["prune-magnitude", "simplify", "quantize-static"]
    assert recipe.name == "int8-qdq+sparse-50"
    assert Recipe("fp32", None, None, 0.0, simplify=False).onnx_passes() == []


def test_precision_order_comes_first_then_the_objective() -> None:
    size = profile_with(objective="size")
    accuracy = profile_with(objective="accuracy")
    candidates = [
        ("fp32", 1000, 0.99, "fp32"),
        ("int8", 400, 0.95, "int8-dynamic"),
        ("int8", 300, 0.94, "int8-dynamic+units-50"),
    ]
    by_size = [rank_key(size, *c) for c in candidates]
    by_accuracy = [rank_key(accuracy, *c) for c in candidates]
    assert candidates[choose(by_size)][3] == "int8-dynamic+units-50"
    assert candidates[choose(by_accuracy)][3] == "int8-dynamic"
    assert choose([]) is None


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["int8", "fp32"]),
            st.integers(1, 10**6),
            st.floats(0, 1),
            st.text(min_size=1, max_size=5),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_the_choice_does_not_depend_on_the_order_candidates_come_in(candidates) -> None:
    profile = profile_with()
    keys = [rank_key(profile, *c) for c in candidates]
    best = keys[choose(keys)]
    assert best == keys[::-1][choose(keys[::-1])]
    assert all(best <= key for key in keys)
