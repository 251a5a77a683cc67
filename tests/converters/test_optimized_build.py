"""Builds that optimize: one verified bundle per profile, each the right variant, within budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TrainedModel

from edgeml.converters.pipeline import BuildRequest, build_bundles
from edgeml.toolkit.bundle import GOLDEN, MODEL, verify_bundle
from edgeml.toolkit.errors import GateError
from edgeml.toolkit.golden import GoldenSet, compare_outputs
from edgeml.toolkit.keys import load_private_key
from edgeml.toolkit.profiles import load_profile
from edgeml.toolkit.runtime import create_session, run_manifest_model
from edgeml.toolkit.trust import load_trust_store


def request(model: TrainedModel, key_dir: Path, out: Path, *profiles: str, **extra) -> BuildRequest:
    return BuildRequest(
        model_path=model.model_path,
        profiles=[load_profile(p) for p in profiles],
        signing_key=load_private_key(key_dir / "edgeml.key"),
        out_dir=out,
        validation_path=model.validation_path,
        target=model.target,
        latency_budget_s=0.05,
        **extra,
    )


def custom_profile(folder: Path, name: str, body: str) -> str:
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\narchitecture = "aarch64"\n'
        'execution_providers = ["CPUExecutionProvider"]\n' + body
    )
    return str(path)


def test_the_mlp_gets_int8_for_the_pi_int8_qdq_for_the_server_and_fp16_for_the_jetson(
    tmp_path: Path, key_dir: Path, digits_mlp: TrainedModel
) -> None:
    train = digits_mlp.validation_path.parent / "digits-mlp-train.csv"
    result = build_bundles(
        request(
            digits_mlp,
            key_dir,
            tmp_path,
            "raspberry-pi-4",
            "x86-64-server",
            "jetson-orin",
            train_path=train,
        )
    )
    trust = load_trust_store(key_dir)
    passes = {}
    for build in result.builds:
        bundle = verify_bundle(build.bundle_path, trust)
        manifest = bundle.manifest
        passes[build.profile.name] = [p["name"] for p in manifest.passes]
        assert (
            manifest.precision
            == {"raspberry-pi-4": "int8", "x86-64-server": "int8", "jetson-orin": "fp16"}[
                build.profile.name
            ]
        )
        # the bundle's golden rows hold the outputs of the bundled variant: its self-test passes
        golden = GoldenSet.from_dict(bundle.json_entry(GOLDEN))
        outputs = run_manifest_model(create_session(bundle.entries[MODEL]), manifest, golden.rows)
        assert compare_outputs(outputs, golden.expected, golden.tolerance, every_row=True).passed
        # within budgets, and the manifest lists every candidate tried
        assert manifest.metrics["drop_points"] <= build.profile.budgets.max_accuracy_drop
        assert build.bundle_path.stat().st_size <= build.profile.budgets.max_size_mb * 1e6
        assert {c["name"] for c in manifest.candidates} == {c.name for c in build.candidates}
        assert sum(c["outcome"] == "chosen" for c in manifest.candidates) == 1
    assert "quantize-dynamic" in passes["raspberry-pi-4"]
    assert "quantize-static" in passes["x86-64-server"]
    assert "fp16" in passes["jetson-orin"]
    sizes = {b.profile.name: b.bundle_path.read_bytes() for b in result.builds}
    assert len(set(sizes.values())) == 3, "three different bundles"
    report = json.loads((tmp_path / "report.json").read_text())
    for profile in report["profiles"]:
        assert len(profile["candidates"]) >= 2
        assert all("latency" in c for c in profile["candidates"])
    assert "int8-dynamic+units-50" in (tmp_path / "report.md").read_text()


def test_tree_ensembles_pass_through_with_the_reason_recorded(
    tmp_path: Path, key_dir: Path
) -> None:
    from conftest import train_model

    forest = train_model(tmp_path / "m", "forest")
    result = build_bundles(request(forest, key_dir, tmp_path / "out", "raspberry-pi-4"))
    build = result.builds[0]
    assert build.chosen.name == "fp32"
    skipped = {c.name: c.reason for c in build.candidates if c.status == "skipped"}
    assert "TreeEnsembleClassifier" in skipped["int8-dynamic"]
    assert "applies to MLPs" in skipped["fp32+units-25"]
    manifest = verify_bundle(build.bundle_path, load_trust_store(key_dir)).manifest
    outcomes = {c["name"]: c["outcome"] for c in manifest.candidates}
    assert outcomes["int8-dynamic"].startswith("skipped: quantize-dynamic: no MatMul")


def test_the_accuracy_gate_catches_aggressive_magnitude_pruning(
    tmp_path: Path, key_dir: Path, digits_mlp: TrainedModel
) -> None:
    profile = custom_profile(
        tmp_path,
        "sparse",
        'precisions = ["fp32"]\n[optimization]\npasses = ["prune-magnitude"]\n'
        "magnitude_sparsity = [0.5, 0.95]\n"
        "candidate_label_agreement = 0.5\ncandidate_probability_atol = 1.0\n"
        "[budgets]\nmax_accuracy_drop = 1.0\n",
    )
    result = build_bundles(request(digits_mlp, key_dir, tmp_path / "out", profile))
    build = result.builds[0]
    by_name = {c.name: c for c in build.candidates}
    heavy = by_name["fp32+sparse-95"]
    assert heavy.status == "rejected"
    assert heavy.drop_points > 1.0
    assert "max_accuracy_drop" in heavy.reason
    assert build.chosen.name in ("fp32", "fp32+sparse-50")


def test_a_profile_whose_budgets_nothing_meets_fails_with_the_closest_candidate(
    tmp_path: Path, key_dir: Path, digits_mlp: TrainedModel
) -> None:
    profile = custom_profile(
        tmp_path,
        "impossible",
        'precisions = ["int8", "fp32"]\n[budgets]\nmax_size_mb = 0.01\n',
    )
    out = tmp_path / "out"
    with pytest.raises(GateError) as caught:
        build_bundles(request(digits_mlp, key_dir, out, profile))
    message = str(caught.value)
    assert caught.value.exit_code == 4
    assert (
        "closest int8-dynamic" in message and "max_size_mb" in message and "against 0.01" in message
    )
    assert not list(out.glob("*.edgeml"))
    report = json.loads((out / "report.json").read_text())
    statuses = {c["name"]: c["status"] for c in report["profiles"][0]["candidates"]}
    assert statuses == {"int8-dynamic": "rejected", "fp32": "rejected"}


def test_an_optimized_build_is_byte_identical_when_repeated(
    tmp_path: Path, key_dir: Path, digits_mlp: TrainedModel
) -> None:
    first = build_bundles(
        request(digits_mlp, key_dir, tmp_path / "a", "raspberry-pi-4", "x86-64-server")
    )
    second = build_bundles(
        request(digits_mlp, key_dir, tmp_path / "b", "raspberry-pi-4", "x86-64-server")
    )
    for a, b in zip(first.builds, second.builds, strict=True):
        assert a.chosen.name == b.chosen.name
        assert a.bundle_path.read_bytes() == b.bundle_path.read_bytes()


def test_a_regressor_mlp_is_quantized_and_judged_by_r2(tmp_path: Path, key_dir: Path) -> None:
    from conftest import train_model

    model = train_model(tmp_path / "m", "mlp-regressor")
    profile = custom_profile(
        tmp_path,
        "reg",
        'precisions = ["int8", "fp32"]\n[optimization]\n'
        "candidate_value_rtol = 0.2\ncandidate_value_atol = 5.0\n"
        "candidate_label_agreement = 0.9\n[budgets]\nmax_accuracy_drop = 5.0\n",
    )
    result = build_bundles(request(model, key_dir, tmp_path / "out", profile))
    build = result.builds[0]
    assert set(build.chosen.metrics) == {"r2", "mae"}
    assert {c.name for c in build.candidates} == {"int8-dynamic", "fp32"}
    assert all(c.status in ("chosen", "within budgets", "rejected") for c in build.candidates)


def test_a_pass_whose_output_onnxruntime_refuses_fails_its_candidate_only(
    tmp_path: Path, key_dir: Path, digits_mlp: TrainedModel, monkeypatch
) -> None:
    """The fp16 trap itself: onnxconverter-common straight on skl2onnx's MLP (keep_io_types)
    makes a model onnxruntime refuses to load. Put in place of edgeml's fp16 pass, the build
    must report that candidate as failed and bundle fp32."""
    from onnxconverter_common import float16

    import edgeml.converters.passes as passes

    registry = passes._registry

    def with_raw_fp16() -> dict:
        table = registry()
        table["fp16"] = lambda model, _context: float16.convert_float_to_float16(
            model, keep_io_types=True
        )
        return table

    monkeypatch.setattr(passes, "_registry", with_raw_fp16)
    profile = custom_profile(
        tmp_path, "gpu", 'precisions = ["fp16", "fp32"]\n[optimization]\npasses = []\n'
    )
    result = build_bundles(request(digits_mlp, key_dir, tmp_path / "out", profile))
    by_name = {c.name: c for c in result.builds[0].candidates}
    assert by_name["fp16"].status == "failed"
    assert "onnxruntime cannot run the result" in by_name["fp16"].reason
    assert result.builds[0].chosen.name == "fp32"
