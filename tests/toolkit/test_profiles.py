"""Hardware profiles: the built-ins load, round trips hold, and every bad file names its key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeml.toolkit.errors import ProfileError
from edgeml.toolkit.profiles import (
    Budgets,
    HardwareProfile,
    QuantizationSettings,
    Tolerance,
    builtin_profile_names,
    list_profiles,
    load_profile,
)

BUILTINS = [
    "jetson-orin",
    "nvidia-gpu",
    "raspberry-pi-4",
    "raspberry-pi-5",
    "x86-64-generic",
    "x86-64-server",
]

MINIMAL = """\
name = "my-board"
architecture = "aarch64"
execution_providers = ["CPUExecutionProvider"]
precisions = ["int8", "fp32"]
"""


def write_profile(tmp_path: Path, text: str, filename: str = "my-board.toml") -> Path:
    path = tmp_path / filename
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ProfileError) as caught:
        load_profile(str(path))
    return str(caught.value)


# --- built-ins --------------------------------------------------------------------------------


def test_builtin_names() -> None:
    assert builtin_profile_names() == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_loads(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert Path(profile.source).name == f"{name}.toml"
    assert profile.max_opset == 17
    assert profile.graph_optimization_level == "all"
    assert profile.description


def test_list_profiles_is_sorted_and_complete() -> None:
    assert [profile.name for profile in list_profiles()] == BUILTINS


def test_raspberry_pi_4_settings() -> None:
    profile = load_profile("raspberry-pi-4")
    assert profile.architecture == "aarch64"
    assert profile.execution_providers == ("CPUExecutionProvider",)
    assert profile.precisions == ("int8", "fp32")
    assert profile.threads == 4
    assert profile.quantization == QuantizationSettings(
        mode="dynamic", per_channel=True, reduce_range=False
    )
    assert profile.budgets == Budgets(max_size_mb=50, max_accuracy_drop=1, max_latency_ms=10)


def test_gpu_profiles_prefer_fp16() -> None:
    jetson = load_profile("jetson-orin")
    assert jetson.execution_providers == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    assert jetson.precisions == ("fp16", "fp32")
    gpu = load_profile("nvidia-gpu")
    assert gpu.architecture == "x86_64"
    assert gpu.execution_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_x86_profiles() -> None:
    server = load_profile("x86-64-server")
    assert server.quantization.mode == "static"
    assert server.quantization.per_channel
    assert not server.quantization.reduce_range
    generic = load_profile("x86-64-generic")
    assert generic.precisions == ("fp32",)
    assert generic.quantization.reduce_range


# --- round trips and defaults -----------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
def test_round_trip_through_json(name: str) -> None:
    profile = load_profile(name)
    document = json.loads(json.dumps(profile.to_dict()))
    again = HardwareProfile.from_dict(document, source="manifest.json")
    assert again == profile
    assert again.to_dict() == profile.to_dict()
    assert again.source == "manifest.json"


def test_user_file_with_defaults(tmp_path: Path) -> None:
    path = write_profile(tmp_path, MINIMAL)
    profile = load_profile(str(path))
    assert profile.source == str(path)
    assert profile.description == ""
    assert profile.max_opset == 17
    assert profile.threads == 0
    assert profile.graph_optimization_level == "all"
    assert profile.quantization == QuantizationSettings()
    assert profile.tolerance == Tolerance()
    assert profile.budgets == Budgets()
    assert profile.to_dict()["budgets"] == {
        "max_size_mb": None,
        "max_accuracy_drop": None,
        "max_latency_ms": None,
    }


def test_user_file_name_need_not_match_file_name(tmp_path: Path) -> None:
    path = write_profile(tmp_path, MINIMAL, filename="another-name.toml")
    assert load_profile(str(path)).name == "my-board"


def test_integers_are_accepted_where_floats_are_expected(tmp_path: Path) -> None:
    text = MINIMAL + "[budgets]\nmax_size_mb = 5\n[tolerance]\nlabel_agreement = 1\n"
    path = write_profile(tmp_path, text)
    profile = load_profile(str(path))
    assert profile.budgets.max_size_mb == 5.0
    assert isinstance(profile.budgets.max_size_mb, float)
    assert profile.tolerance.label_agreement == 1.0


def test_a_path_without_toml_suffix_is_a_path(tmp_path: Path) -> None:
    path = write_profile(tmp_path, MINIMAL, filename="board.profile")
    assert load_profile(str(path)).name == "my-board"


def test_profiles_are_frozen_and_hashable() -> None:
    profile = load_profile("raspberry-pi-4")
    with pytest.raises(AttributeError):
        profile.threads = 1  # type: ignore[misc]
    assert hash(profile) == hash(load_profile("raspberry-pi-4"))


# --- errors: each names the file and the key --------------------------------------------------


BAD_PROFILES = [
    pytest.param(MINIMAL + "colour = 'red'\n", '"colour"', id="unknown-top-level-key"),
    pytest.param(
        MINIMAL + "[budgets]\nmax_size = 5\n", '"budgets.max_size"', id="unknown-budgets-key"
    ),
    pytest.param(MINIMAL + "[wishes]\nfast = true\n", '"wishes"', id="unknown-table"),
    pytest.param(
        MINIMAL + "[quantization]\nsymmetric = true\n",
        '"quantization.symmetric"',
        id="unknown-quantization-key",
    ),
    pytest.param(MINIMAL + 'max_opset = "17"\n', '"max_opset"', id="string-for-int"),
    pytest.param(MINIMAL + "max_opset = 17.0\n", '"max_opset"', id="float-for-int"),
    pytest.param(MINIMAL + "threads = true\n", '"threads"', id="bool-for-int"),
    pytest.param(
        MINIMAL + "[budgets]\nmax_latency_ms = true\n",
        '"budgets.max_latency_ms"',
        id="bool-for-float",
    ),
    pytest.param(
        MINIMAL + "[quantization]\nper_channel = 1\n",
        '"quantization.per_channel"',
        id="int-for-bool",
    ),
    pytest.param(MINIMAL + "budgets = 5\n", '"budgets"', id="number-for-table"),
    pytest.param(MINIMAL.replace('name = "my-board"\n', ""), '"name"', id="missing-name"),
    pytest.param(
        MINIMAL.replace('architecture = "aarch64"\n', ""), '"architecture"', id="missing-arch"
    ),
    pytest.param(
        MINIMAL + "[budgets]\nmax_size_mb = 0\n", '"budgets.max_size_mb"', id="zero-budget"
    ),
    pytest.param(
        MINIMAL + "[budgets]\nmax_size_mb = -1\n", '"budgets.max_size_mb"', id="negative-budget"
    ),
    pytest.param(
        MINIMAL + "[budgets]\nmax_accuracy_drop = nan\n",
        '"budgets.max_accuracy_drop"',
        id="nan-budget",
    ),
    pytest.param(MINIMAL.replace("aarch64", "arm64"), '"architecture"', id="bad-architecture"),
    pytest.param(MINIMAL.replace('"int8", "fp32"', '"int4"'), '"precisions[0]"', id="bad-prec"),
    pytest.param(
        MINIMAL.replace('"int8", "fp32"', '"fp32", "fp32"'), '"precisions"', id="duplicate-prec"
    ),
    pytest.param(MINIMAL.replace('["int8", "fp32"]', "[]"), '"precisions"', id="no-precisions"),
    pytest.param(
        MINIMAL.replace("CPUExecutionProvider", "CpuExecutionProvider"),
        '"execution_providers[0]"',
        id="bad-provider",
    ),
    pytest.param(
        MINIMAL + "[quantization]\nmode = 'qat'\n", '"quantization.mode"', id="bad-quant-mode"
    ),
    pytest.param(
        MINIMAL + "[quantization]\ncalibration_method = 'histogram'\n",
        '"quantization.calibration_method"',
        id="bad-calibration",
    ),
    pytest.param(
        MINIMAL + "graph_optimization_level = 'max'\n",
        '"graph_optimization_level"',
        id="bad-graph-level",
    ),
    pytest.param(MINIMAL + "max_opset = 6\n", '"max_opset"', id="opset-too-low"),
    pytest.param(MINIMAL + "threads = -1\n", '"threads"', id="negative-threads"),
    pytest.param(
        MINIMAL + "[tolerance]\nlabel_agreement = 1.5\n",
        '"tolerance.label_agreement"',
        id="share-above-one",
    ),
    pytest.param(
        MINIMAL + "[tolerance]\nvalue_atol = -0.1\n",
        '"tolerance.value_atol"',
        id="negative-tolerance",
    ),
    pytest.param(MINIMAL.replace("my-board", "My Board"), '"name"', id="bad-name"),
]


@pytest.mark.parametrize(("text", "key"), BAD_PROFILES)
def test_bad_profile_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = write_profile(tmp_path, text)
    message = load_error(path)
    assert str(path) in message
    assert key in message


def test_negative_budget_message(tmp_path: Path) -> None:
    path = write_profile(tmp_path, MINIMAL + "[budgets]\nmax_size_mb = -1\n")
    assert load_error(path) == (
        f'{path}: key "budgets.max_size_mb" must be a positive number, got -1'
    )


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write_profile(tmp_path, MINIMAL + "[budgets]\nmax_size_mbs = 5\n")
    message = load_error(path)
    assert 'did you mean "budgets.max_size_mb"' in message
    assert "max_accuracy_drop" in message  # the known keys are listed


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write_profile(tmp_path, MINIMAL + "threads = \n")
    message = load_error(path)
    assert str(path) in message
    assert "invalid TOML" in message
    assert "line 5" in message
    assert "column" in message


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(MINIMAL.encode() + b'description = "caf\xe9"\n')
    assert str(path) in load_error(path)


def test_mistyped_provider_gets_a_suggestion(tmp_path: Path) -> None:
    path = write_profile(tmp_path, MINIMAL.replace("CPUExecutionProvider", "cpuexecutionprovider"))
    assert 'did you mean "CPUExecutionProvider"' in load_error(path)


def test_unknown_builtin_lists_known_names() -> None:
    with pytest.raises(ProfileError) as caught:
        load_profile("raspberry-pi-3")
    message = str(caught.value)
    assert '"raspberry-pi-3"' in message
    for name in BUILTINS:
        assert name in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    message = load_error(path)
    assert str(path) in message


def test_relative_missing_path() -> None:
    with pytest.raises(ProfileError, match="no-such-dir/board"):
        load_profile("no-such-dir/board")


def test_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "profiles.toml"
    folder.mkdir()
    assert str(folder) in load_error(folder)


# --- constructors validate too ----------------------------------------------------------------


def test_constructors_validate() -> None:
    with pytest.raises(ProfileError, match=r'"budgets\.max_latency_ms"'):
        Budgets(max_latency_ms=0)
    with pytest.raises(ProfileError, match=r'"quantization\.weight_type"'):
        QuantizationSettings(weight_type="int8")
    with pytest.raises(ProfileError, match=r'"tolerance\.probability_atol"'):
        Tolerance(probability_atol=True)  # type: ignore[arg-type]
    with pytest.raises(ProfileError, match=r'^mine\.toml: key "architecture"'):
        HardwareProfile(
            name="mine",
            architecture="riscv64",
            execution_providers=("CPUExecutionProvider",),
            precisions=("fp32",),
            source="mine.toml",
        )


def test_from_dict_names_its_source() -> None:
    document = load_profile("nvidia-gpu").to_dict()
    document["budgets"]["max_latency_ms"] = -2
    with pytest.raises(ProfileError, match=r'^bundle\.edgeml: key "budgets\.max_latency_ms"'):
        HardwareProfile.from_dict(document, source="bundle.edgeml")


def test_builtin_name_must_match_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "other_profiles"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "board-a.toml").write_text(MINIMAL.replace("my-board", "board-b"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("edgeml.toolkit.profiles.BUILTIN_PACKAGE", "other_profiles")
    with pytest.raises(ProfileError, match=r'board-a\.toml: key "name" must be "board-a"'):
        load_profile("board-a")
