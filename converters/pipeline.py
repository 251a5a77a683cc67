"""The per-profile build: convert, prove the conversion, optimize, gate, choose, sign.

``build_bundles`` is the API behind ``edgeml build``. For each hardware profile:

1. convert the source model to ONNX at the profile's opset and prove that it reproduces the
   source model on the validation rows (the ``conversion`` gate, exit 4 when it does not);
2. make every candidate the profile allows (``edgeml.converters.candidates``): pruning,
   simplification, int8 or fp16, each pass checked to load and run;
3. evaluate each on the validation data: agreement with the source model within the
   tolerance, the task metric and its drop, bundle size, and latency on this host;
4. choose the best candidate within budgets by deterministic figures, and assemble its signed
   bundle with the data contract, the drift baseline and the golden rows of that variant;
5. check the bundle as a device would (verify, self-test) before renaming it into place.

Bundles are written only when every profile found a candidate (all or nothing); the build
report (``report.md``, ``report.json``) is written either way.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeml.converters import onnx_graph
from edgeml.converters.candidates import Recipe, rank_key, recipes_for
from edgeml.converters.dataset import (
    ValidationData,
    feature_rows,
    prepare_validation,
    target_labels,
)
from edgeml.converters.golden_rows import choose_golden_rows
from edgeml.converters.latency import measure_latency
from edgeml.converters.metrics import metric_drop_points, primary_metric, task_metrics
from edgeml.converters.passes import PassContext, PassFailed, PassSkipped, onnx_pass
from edgeml.converters.passes.graph import check_runs
from edgeml.converters.passes.prune import prune_mlp_units
from edgeml.converters.source_model import SourceModel, load_source_model, to_onnx
from edgeml.toolkit import __version__ as edgeml_version
from edgeml.toolkit import drift
from edgeml.toolkit.bundle import (
    BASELINE,
    GOLDEN,
    MODEL,
    bundle_bytes,
    sha256_file,
    verify_bundle,
    write_atomically,
)
from edgeml.toolkit.contract import DataContract
from edgeml.toolkit.errors import ConversionError, GateError, InputError
from edgeml.toolkit.golden import GoldenSet, OutputComparison, compare_outputs
from edgeml.toolkit.manifest import (
    BUNDLE_SUFFIX,
    NAME_PATTERN,
    VERSION_PATTERN,
    Manifest,
    TensorSpec,
    bundle_id,
    canonical_json,
    parse_utc,
)
from edgeml.toolkit.profiles import HardwareProfile
from edgeml.toolkit.runtime import ModelOutputs, available_providers, create_session, run_model
from edgeml.toolkit.tabular import read_table
from edgeml.toolkit.trust import TrustStore

LATENCY_MARGIN = 1.2
"""Host latency may exceed the budget by this factor before the gate fails: timings on a
shared build host jitter, and they gate but never rank (DESIGN.md)."""

ProgressCallback = Callable[[str, str], None]


@dataclass(frozen=True)
class BuildRequest:
    """Everything ``edgeml build`` was asked to do."""

    model_path: Path
    profiles: Sequence[HardwareProfile]
    signing_key: Ed25519PrivateKey
    out_dir: Path
    validation_path: Path
    target: str
    name: str | None = None
    version: str = "1.0.0"
    calibration_path: Path | None = None
    train_path: Path | None = None
    trusted_types: Sequence[str] = ()
    latency_budget_s: float = 1.0
    expires_at: str | None = None
    """When the bundles expire (ISO-8601 UTC, ``2027-01-31T00:00:00Z``); None: never. Signed in
    the manifest; devices refuse to install a bundle from then on."""


@dataclass(frozen=True)
class GateResult:
    """One gate: passed, failed or not checked, with its figure and threshold."""

    gate: str
    status: str
    figure: float | None = None
    threshold: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        return f"{self.gate} {self.figure} against {self.threshold} ({self.detail})"


HOST_GATES = ("max_latency_ms",)


@dataclass
class Candidate:
    """One optimized variant of the model for a profile, and how it fared."""

    recipe: Recipe
    status: str = "pending"  # skipped | failed | rejected | within budgets | chosen
    reason: str = ""
    passes: list[dict[str, Any]] = field(default_factory=list)
    model: bytes = b""
    outputs: ModelOutputs | None = None
    agreement: OutputComparison | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    drop_points: float | None = None
    gates: list[GateResult] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)
    bundle_size: int = 0
    session: Any = None

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if g.status == "failed"]

    def reject_if_failed(self) -> None:
        if self.failed_gates and self.status == "pending":
            self.status = "rejected"
            self.reason = "; ".join(g.describe() for g in self.failed_gates)

    def to_report(self) -> dict[str, Any]:
        """Everything, host timings included (for report.json)."""
        return {
            "name": self.name,
            "precision": self.recipe.precision,
            "status": self.status,
            "reason": self.reason,
            "passes": self.passes,
            "model_bytes": len(self.model),
            "bundle_bytes": self.bundle_size,
            "metrics": self.metrics,
            "drop_points": self.drop_points,
            "agreement": self.agreement.to_dict() if self.agreement else None,
            "gates": [g.to_dict() for g in self.gates],
            "latency": self.latency,
        }

    def to_manifest(self) -> dict[str, Any]:
        """Deterministic figures only (for the signed manifest)."""
        if self.status in ("skipped", "failed"):
            outcome = f"{self.status}: {self.reason}"
        else:
            deterministic = [g.gate for g in self.failed_gates if g.gate not in HOST_GATES]
            outcome = "chosen" if self.status == "chosen" else "not chosen"
            if deterministic:
                outcome = "rejected: " + ", ".join(deterministic)
        return {
            "name": self.name,
            "precision": self.recipe.precision,
            "passes": [p["name"] for p in self.passes],
            "model_bytes": len(self.model),
            "metrics": self.metrics,
            "drop_points": self.drop_points,
            "outcome": outcome,
        }


@dataclass
class ProfileBuild:
    """The outcome of one profile's build."""

    profile: HardwareProfile
    bundle_id: str
    bundle_path: Path
    conversion: GateResult | None = None
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    notes: list[str] = field(default_factory=list)
    data: bytes = b""
    source_task: str = "classification"
    source_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            self.chosen is not None
            and self.conversion is not None
            and self.conversion.status == "passed"
        )

    # The chosen candidate's figures, for callers that want one line per profile.
    @property
    def precision(self) -> str:
        return self.chosen.recipe.precision if self.chosen else "—"

    @property
    def metrics(self) -> dict[str, Any]:
        """The primary metric's name, the source's and the chosen candidate's metrics."""
        return {
            "primary": primary_metric(self.source_task),
            "source": self.source_metrics,
            "bundled": self.chosen.metrics if self.chosen else {},
            "drop_points": self.chosen.drop_points if self.chosen else None,
        }

    @property
    def agreement(self) -> OutputComparison | None:
        return self.chosen.agreement if self.chosen else None

    @property
    def latency(self) -> dict[str, Any]:
        return self.chosen.latency if self.chosen else {}

    @property
    def bundle_size(self) -> int:
        return len(self.data) if self.data else 0

    @property
    def passes(self) -> list[dict[str, Any]]:
        return self.chosen.passes if self.chosen else []

    @property
    def gates(self) -> list[GateResult]:
        gates = [self.conversion] if self.conversion else []
        return gates + (self.chosen.gates if self.chosen else [])

    def closest(self) -> Candidate | None:
        """The best candidate that was evaluated but broke a budget (for the failure report)."""
        evaluated = [c for c in self.candidates if c.status == "rejected"]
        return min(
            evaluated, key=lambda c: (len(c.failed_gates), c.drop_points or 0.0), default=None
        )

    def failure(self) -> str:
        if self.conversion is not None and self.conversion.status == "failed":
            return f"the ONNX model does not reproduce the source model: {self.conversion.detail}"
        closest = self.closest()
        if closest is None:
            reasons = "; ".join(f"{c.name}: {c.reason}" for c in self.candidates)
            return f"no candidate could be made ({reasons})"
        return f"no candidate within budgets; closest {closest.name}: {closest.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "bundle_id": self.bundle_id,
            "bundle": str(self.bundle_path) if self.passed else None,
            "passed": self.passed,
            "failure": None if self.passed else self.failure(),
            "chosen": self.chosen.name if self.chosen else None,
            "precision": self.precision,
            "bundle_bytes": self.bundle_size,
            "conversion": self.conversion.to_dict() if self.conversion else None,
            "candidates": [c.to_report() for c in self.candidates],
            "notes": self.notes,
        }


@dataclass
class BuildResult:
    """All profiles' outcomes, and where the bundles and the report went."""

    request: BuildRequest
    builds: list[ProfileBuild]
    warnings: list[str]
    report_json: Path | None = None
    report_md: Path | None = None

    @property
    def passed(self) -> bool:
        return all(b.passed for b in self.builds)


@dataclass
class _BuildInputs:
    """What every profile's build shares: the source, its outputs, the data, caches."""

    request: BuildRequest
    source: SourceModel
    data: ValidationData
    target: np.ndarray
    calibration: np.ndarray | None
    train: tuple[np.ndarray, np.ndarray] | None
    name: str
    source_outputs: ModelOutputs | None = None
    source_metrics: dict[str, float] = field(default_factory=dict)
    golden_index: np.ndarray | None = None
    converted: dict[tuple[int, float], tuple[Any, list[dict[str, Any]]]] = field(
        default_factory=dict
    )
    pruned: dict[float, Any] = field(default_factory=dict)


def _git_commit(folder: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"edgeml": edgeml_version}
    for package in (
        "onnx",
        "onnxruntime",
        "skl2onnx",
        "onnxconverter-common",
        "scikit-learn",
        "numpy",
    ):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def _source_outputs(shared: _BuildInputs, inputs: list[TensorSpec]) -> ModelOutputs:
    source, data = shared.source, shared.data
    if source.sklearn is not None:
        try:
            return source.sklearn.predict(data.matrix)
        except ValueError as error:
            where = data.first_missing()
            if where is not None:
                raise InputError(
                    f"{data.source}: row {where[1]}, column {where[0]!r} is empty and the "
                    f"{source.type_name} does not accept missing values"
                ) from error
            raise InputError(
                f"{data.source}: the {source.type_name} refuses the validation rows: {error}"
            ) from error
    session = create_session(source.onnx_model.SerializeToString())
    return run_model(session, inputs, source.task, data.matrix)


def _classes(
    shared: _BuildInputs, outputs: ModelOutputs, notes: list[str]
) -> tuple[Any, ...] | None:
    source = shared.source
    if source.task != "classification":
        return None
    if source.classes is not None:
        return source.classes
    assert outputs.probabilities is not None and outputs.labels is not None
    seen = sorted(
        set(np.asarray(outputs.labels).tolist()) | set(np.asarray(shared.target).tolist()), key=str
    )
    width = outputs.probabilities.shape[1]
    if len(seen) != width:
        raise ConversionError(
            f"{source.path}: the probabilities have {width} columns but the labels and the "
            f"target hold {len(seen)} classes; cannot tell which column is which class"
        )
    notes.append(f"classes taken as the sorted labels {seen} (the ONNX file does not name them)")
    return tuple(seen)


def _comparable(shared: _BuildInputs, outputs: ModelOutputs) -> ModelOutputs:
    """Outputs reduced to what the source model has (labels only without predict_proba)."""
    sk = shared.source.sklearn
    if shared.source.task == "classification" and sk is not None and not sk.has_probabilities:
        return ModelOutputs(labels=outputs.labels)
    return outputs


def _decisions(outputs: ModelOutputs) -> ModelOutputs:
    """What a model decides: a classifier's labels, a regressor's values."""
    return ModelOutputs(labels=outputs.labels) if outputs.labels is not None else outputs


def _base_model(
    shared: _BuildInputs, profile: HardwareProfile, ratio: float
) -> tuple[Any, list[dict[str, Any]]]:
    """The converted fp32 model (optionally of the MLP pruned by ``ratio``), cached."""
    key = (profile.max_opset, ratio)
    if key not in shared.converted:
        if ratio == 0.0:
            model, step = to_onnx(shared.source, profile.max_opset)
            steps = [step]
        else:
            if ratio not in shared.pruned:
                shared.pruned[ratio] = prune_mlp_units(
                    shared.source.sklearn.estimator, ratio, shared.train
                )
            pruned = shared.pruned[ratio]
            model, step = to_onnx(shared.source, profile.max_opset, pruned.estimator)
            prune_step = {
                "name": "prune-structured",
                "params": {
                    "ratio": ratio,
                    "hidden_before": list(pruned.hidden_before),
                    "hidden_after": list(pruned.hidden_after),
                    "fine_tune_epochs": pruned.fine_tuned_epochs,
                },
            }
            steps = [prune_step, step]
        shared.converted[key] = (model, [*steps, {"name": "normalise", "params": {}}])
    return shared.converted[key]


def _make(
    candidate: Candidate,
    shared: _BuildInputs,
    profile: HardwareProfile,
    width: int,
    input_name: str,
) -> None:
    """Run the candidate's passes; mark it skipped or failed when a pass says so."""
    recipe = candidate.recipe
    if recipe.pruning == "prune-structured":
        from edgeml.converters.passes.prune import structured_ratio_skip_reason

        reason = (
            "structured pruning needs the scikit-learn model"
            if shared.source.sklearn is None
            else structured_ratio_skip_reason(shared.source.sklearn.estimator)
        )
        if reason:
            candidate.status, candidate.reason = "skipped", reason
            return
    try:
        model, steps = _base_model(
            shared, profile, recipe.amount if recipe.pruning == "prune-structured" else 0.0
        )
    except ConversionError as error:
        candidate.status, candidate.reason = "failed", str(error)
        return
    candidate.passes = list(steps)
    for pass_name in recipe.onnx_passes():
        params = {"sparsity": recipe.amount} if pass_name == "prune-magnitude" else {}
        context = PassContext(profile, shared.calibration, input_name, params)
        try:
            model = onnx_pass(pass_name)(model, context)
        except PassSkipped as skipped:
            if pass_name == "simplify":
                continue
            candidate.status, candidate.reason = "skipped", f"{pass_name}: {skipped}"
            return
        except PassFailed as failed:
            candidate.status, candidate.reason = "failed", f"{pass_name}: {failed}"
            return
        except Exception as error:  # a converter library refusing this model fails the candidate
            first_line = str(error).splitlines()[0][:300] if str(error) else ""
            candidate.status = "failed"
            candidate.reason = f"{pass_name}: {type(error).__name__}: {first_line}"
            return
        candidate.passes.append(
            {"name": pass_name, "params": _pass_params(pass_name, profile, params)}
        )
    try:
        check_runs(model, width, input_name)
    except PassFailed as failed:
        candidate.status, candidate.reason = "failed", str(failed)
        return
    candidate.model = onnx_graph.normalise(model).SerializeToString()


def _pass_params(
    pass_name: str, profile: HardwareProfile, params: dict[str, Any]
) -> dict[str, Any]:
    q = profile.quantization
    if pass_name == "quantize-dynamic":
        return {
            "weight_type": q.weight_type,
            "per_channel": q.per_channel,
            "reduce_range": q.reduce_range,
        }
    if pass_name == "quantize-static":
        return {
            "format": "QDQ",
            "weight_type": q.weight_type,
            "activation_type": q.activation_type,
            "per_channel": q.per_channel,
            "reduce_range": q.reduce_range,
            "calibration_method": q.calibration_method,
        }
    if pass_name == "simplify":
        return {"level": "basic"}
    if pass_name == "fp16":
        return {"keep_io_types": True}
    return params


def _evaluate(
    candidate: Candidate,
    shared: _BuildInputs,
    profile: HardwareProfile,
    inputs: list[TensorSpec],
    notes: list[str],
) -> None:
    """Run the candidate on the validation rows: agreement, metrics and the accuracy gate."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            candidate.session = create_session(
                candidate.model,
                profile.execution_providers,
                profile.threads,
                profile.graph_optimization_level,
            )
        for warning in caught:
            if str(warning.message) not in notes:
                notes.append(str(warning.message))
        outputs = run_model(candidate.session, inputs, shared.source.task, shared.data.matrix)
    except Exception as error:  # onnxruntime refusing a pass's output is a candidate failure
        candidate.status, candidate.reason = (
            "failed",
            f"onnxruntime cannot run it: {str(error).splitlines()[0]}",
        )
        return
    assert shared.source_outputs is not None and shared.golden_index is not None
    candidate.outputs = outputs
    tolerance = (
        profile.tolerance if candidate.recipe.lossless else profile.optimization.candidate_tolerance
    )
    source = _comparable(shared, shared.source_outputs)
    mine = _comparable(shared, outputs)
    candidate.agreement = compare_outputs(mine, source, tolerance)
    # On the golden rows every label must be the source model's (a device's self-test is
    # held to every row); probabilities are judged on the validation rows above.
    golden = compare_outputs(
        _decisions(mine.take(shared.golden_index)),
        _decisions(source.take(shared.golden_index)),
        tolerance,
        every_row=True,
    )
    candidate.metrics = task_metrics(shared.source.task, outputs, shared.target)
    candidate.drop_points = metric_drop_points(
        shared.source.task, shared.source_metrics, candidate.metrics
    )
    agreement = candidate.agreement
    shares = (
        agreement.label_agreement,
        agreement.probabilities_within_tolerance,
        agreement.values_within_tolerance,
    )
    share = min(x for x in shares if x is not None)  # the binding figure
    ok = candidate.agreement.passed and golden.passed
    detail = candidate.agreement.describe()
    if not golden.passed:
        detail += f"; golden rows: {golden.describe()}"
    candidate.gates.append(
        GateResult(
            "tolerance", "passed" if ok else "failed", share, tolerance.label_agreement, detail
        )
    )
    budget = profile.budgets.max_accuracy_drop
    metric = primary_metric(shared.source.task)
    if budget is None:
        candidate.gates.append(
            GateResult("max_accuracy_drop", "not checked", candidate.drop_points, None, "no budget")
        )
    else:
        status = "passed" if candidate.drop_points <= budget else "failed"
        candidate.gates.append(
            GateResult(
                "max_accuracy_drop",
                status,
                candidate.drop_points,
                budget,
                f"{metric} drop in points",
            )
        )


def _manifest(
    shared: _BuildInputs,
    profile: HardwareProfile,
    build: ProfileBuild,
    inputs: list[TensorSpec],
    outputs_spec: list[TensorSpec],
    classes: Any,
) -> Manifest:
    request, source = shared.request, shared.source
    chosen = build.chosen
    assert chosen is not None
    profile_settings = profile.to_dict()
    return Manifest(
        name=shared.name,
        version=request.version,
        profile=profile.name,
        task=source.task,  # type: ignore[arg-type]
        inputs=tuple(inputs),
        outputs=tuple(outputs_spec),
        contract=DataContract(tuple(shared.data.feature_specs())).to_dict(),
        metrics={
            "primary": primary_metric(source.task),
            "source": shared.source_metrics,
            "bundled": chosen.metrics,
            "drop_points": chosen.drop_points,
            "agreement": chosen.agreement.to_dict() if chosen.agreement else None,
            "validation_rows": shared.data.n_rows,
            "model_bytes": len(chosen.model),
        },
        precision=chosen.recipe.precision,
        passes=tuple(chosen.passes),
        provenance={
            "source_model": {
                "file": source.path.name,
                "sha256": source.sha256,
                "type": source.type_name,
            },
            "validation_data": {
                "file": request.validation_path.name,
                "sha256": sha256_file(request.validation_path),
                "target": request.target,
            },
            "training_data": {
                "file": request.train_path.name,
                "sha256": sha256_file(request.train_path),
            }
            if request.train_path
            else None,
            "calibration_data": {
                "file": request.calibration_path.name,
                "sha256": sha256_file(request.calibration_path),
            }
            if request.calibration_path
            else None,
            "versions": _versions(),
            "git_commit": _git_commit(source.path.resolve().parent),
        },
        profile_settings=profile_settings,
        classes=classes,
        candidates=tuple(c.to_manifest() for c in build.candidates),
        expires_at=request.expires_at,
    )


def _assemble(
    shared: _BuildInputs,
    build: ProfileBuild,
    candidate: Candidate,
    inputs: list[TensorSpec],
    outputs_spec: list[TensorSpec],
    classes: Any,
) -> bytes:
    """The signed bundle of a candidate (as if it were chosen).

    The golden rows' expected outputs come from running them as one batch, the way a device
    runs its self-test: dynamic quantization scales activations per batch, so the outputs of
    a row depend on the batch it is in.
    """
    assert candidate.outputs is not None and shared.golden_index is not None
    index = shared.golden_index
    rows = shared.data.matrix[index]
    session = candidate.session or create_session(candidate.model)
    expected = run_model(session, inputs, shared.source.task, rows)
    profile = build.profile
    tolerance = (
        profile.tolerance if candidate.recipe.lossless else profile.optimization.candidate_tolerance
    )
    golden = GoldenSet(rows, expected, tolerance)
    previous = build.chosen
    build.chosen = candidate
    try:
        manifest = _manifest(shared, profile, build, inputs, outputs_spec, classes)
    finally:
        build.chosen = previous
    entries = {
        MODEL: candidate.model,
        BASELINE: canonical_json(
            _baseline(shared.data, shared.source.task, candidate.outputs, classes)
        ),
        GOLDEN: canonical_json(golden.to_dict()),
    }
    return bundle_bytes(manifest, entries, shared.request.signing_key)


def _baseline(
    data: ValidationData, task: str, outputs: ModelOutputs, classes: Sequence[Any] | None
) -> dict[str, Any]:
    features = {
        c.name: drift.feature_baseline(data.matrix[:, i], c.missing)
        for i, c in enumerate(data.features)
    }
    if task == "classification":
        assert outputs.labels is not None and classes is not None
        prediction = drift.class_baseline(
            np.asarray(outputs.labels).astype(str), [str(c) for c in classes]
        )
        prediction["classes"] = list(classes)
    else:
        assert outputs.values is not None
        prediction = drift.value_baseline(outputs.values)
    return {
        "bins": drift.DEFAULT_BINS,
        "rows": data.n_rows,
        "features": features,
        "prediction": prediction,
    }


def _size_gate(candidate: Candidate, profile: HardwareProfile) -> GateResult:
    size_mb = round(candidate.bundle_size / 1e6, 6)
    budget = profile.budgets.max_size_mb
    if budget is None:
        return GateResult("max_size_mb", "not checked", size_mb, None, "no budget")
    return GateResult(
        "max_size_mb",
        "passed" if size_mb <= budget else "failed",
        size_mb,
        budget,
        "bundle size in MB (10^6 bytes)",
    )


def _latency_gate(candidate: Candidate, profile: HardwareProfile) -> GateResult:
    p50 = candidate.latency.get("single_row_ms_p50")
    budget = profile.budgets.max_latency_ms
    provider = profile.execution_providers[0]
    if budget is None:
        return GateResult("max_latency_ms", "not checked", p50, None, "no budget")
    if not available_providers([provider])[0]:
        return GateResult(
            "max_latency_ms", "not checked", p50, budget, f"this host has no {provider}"
        )
    status = "passed" if p50 <= budget * LATENCY_MARGIN else "failed"
    return GateResult(
        "max_latency_ms",
        status,
        p50,
        budget,
        f"single-row p50 on this host, margin x{LATENCY_MARGIN}",
    )


def _build_profile(
    shared: _BuildInputs, profile: HardwareProfile, step: Callable[[str], None]
) -> ProfileBuild:
    request = shared.request
    bid = bundle_id(shared.name, request.version, profile.name)
    build = ProfileBuild(profile, bid, request.out_dir / f"{bid}{BUNDLE_SUFFIX}")
    build.source_task = shared.source.task

    step("converting")
    base, _ = _base_model(shared, profile, 0.0)
    inputs = onnx_graph.assign_features(
        onnx_graph.graph_inputs(base), shared.data.feature_names, shared.data.source
    )
    outputs_spec = onnx_graph.graph_outputs(base)
    if shared.source_outputs is None:
        shared.source_outputs = _source_outputs(shared, inputs)
        shared.source_metrics = task_metrics(
            shared.source.task, shared.source_outputs, shared.target
        )
        shared.golden_index = choose_golden_rows(shared.source.task, shared.source_outputs)
    build.source_metrics = shared.source_metrics
    width = len(shared.data.feature_names)
    input_name = inputs[0].name

    for recipe in recipes_for(profile, shared.train is not None):
        candidate = Candidate(recipe)
        build.candidates.append(candidate)
        step(f"candidate {recipe.name}")
        if len(inputs) > 1 and not recipe.lossless:
            candidate.status, candidate.reason = (
                "skipped",
                "optimization passes take models with one input",
            )
            continue
        _make(candidate, shared, profile, width, input_name)
        if candidate.status != "pending":
            continue
        _evaluate(candidate, shared, profile, inputs, build.notes)
        if (
            candidate.recipe.lossless
            and build.conversion is None
            and candidate.agreement is not None
        ):
            gate = candidate.gates[0]
            build.conversion = GateResult(
                "conversion", gate.status, gate.figure, gate.threshold, gate.detail
            )
    if build.conversion is None:
        raise ConversionError(
            f"profile {profile.name}: the fp32 model could not be made or run: "
            + "; ".join(c.reason for c in build.candidates if c.recipe.lossless)
        )

    assert shared.source_outputs is not None
    classes = _classes(shared, shared.source_outputs, build.notes)
    for candidate in build.candidates:
        if candidate.status != "pending":
            continue
        candidate.reject_if_failed()
        if candidate.status != "pending":
            continue
        candidate.bundle_size = len(
            _assemble(shared, build, candidate, inputs, outputs_spec, classes)
        )
        candidate.gates.append(_size_gate(candidate, profile))
        candidate.reject_if_failed()
        if candidate.status != "pending":
            continue
        step(f"measuring {candidate.name}")
        candidate.latency = measure_latency(
            candidate.session, inputs, shared.data.matrix, budget_s=request.latency_budget_s
        )
        candidate.gates.append(_latency_gate(candidate, profile))
        candidate.reject_if_failed()
        if candidate.status == "pending":
            candidate.status = "within budgets"
    if build.conversion.status != "passed":
        _release_sessions(build)
        return build
    within = [c for c in build.candidates if c.status == "within budgets"]
    if within:
        metric = primary_metric(shared.source.task)
        best = min(
            within,
            key=lambda c: rank_key(
                profile, c.recipe.precision, c.bundle_size, c.metrics[metric], c.name
            ),
        )
        best.status = "chosen"
        build.chosen = best
        step("assembling the bundle")
        build.data = _assemble(shared, build, best, inputs, outputs_spec, classes)
        final = _size_gate(Candidate(best.recipe, bundle_size=len(build.data)), profile)
        if final.status == "failed":  # the final manifest lists every candidate: a few bytes more
            best.status, best.reason = "rejected", final.describe()
            build.chosen, build.data = None, b""
    _release_sessions(build)
    return build


def _release_sessions(build: ProfileBuild) -> None:
    for candidate in build.candidates:
        candidate.session = None


def _check_written(path: Path, request: BuildRequest, build: ProfileBuild) -> None:
    """Verify a bundle just written and run its golden self-test, as a device would."""
    bundle = verify_bundle(path, TrustStore.of(request.signing_key.public_key()))
    golden = GoldenSet.from_dict(bundle.json_entry(GOLDEN))
    session = create_session(bundle.entries[MODEL], ("CPUExecutionProvider",))
    outputs = run_model(session, bundle.manifest.inputs, bundle.manifest.task, golden.rows)
    comparison = compare_outputs(outputs, golden.expected, golden.tolerance, every_row=True)
    if not comparison.passed:
        raise RuntimeError(
            f"bundle {build.bundle_id} fails its own self-test: {comparison.describe()}"
        )


def default_name(model_path: Path) -> str:
    """The bundle name when none is given: the model file's stem, made a valid name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_path.stem).strip("-._") or "model"
    return name[:64]


def _read_train(
    request: BuildRequest, source: SourceModel, data: ValidationData
) -> tuple[np.ndarray, np.ndarray] | None:
    if request.train_path is None:
        return None
    table = read_table(request.train_path)
    train = prepare_validation(
        table, request.target, source.feature_names or data.feature_names, source.n_features
    )
    return train.matrix, target_labels(train.target, source.classes)


def _read_calibration(
    request: BuildRequest, data: ValidationData, collect: Callable[[str], None]
) -> np.ndarray:
    if request.calibration_path is None:
        if any(
            p.quantization.mode == "static" and "int8" in p.precisions for p in request.profiles
        ):
            collect("no --calibration rows: static quantization calibrates on the validation rows")
        return data.matrix
    table = read_table(request.calibration_path)
    return feature_rows(table, data.feature_names, request.target)


def build_bundles(
    request: BuildRequest,
    on_step: ProgressCallback | None = None,
    warn: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build, gate and write one signed bundle per profile, plus the build report.

    Args:
        request: what to build.
        on_step: called with (profile name, step) as the build goes.
        warn: called with each warning for people (pickle files, missing providers).

    Returns:
        The result, when every profile found a candidate within budgets.

    Raises:
        InputError: bad model, data, name or version (exit 2).
        ConversionError: the model cannot be converted (exit 2).
        GateError: a profile's conversion or budgets failed (exit 4); the report is written,
            no bundle is.
    """
    name = request.name or default_name(request.model_path)
    if not NAME_PATTERN.match(name):
        raise InputError(f"--name {name!r} must match {NAME_PATTERN.pattern}")
    if not VERSION_PATTERN.match(request.version):
        raise InputError(
            f"--version {request.version!r} must look like 1.2.3 (optionally 1.2.3rc1)"
        )
    if not request.profiles:
        raise InputError("give at least one --profile")
    if request.expires_at is not None:
        try:
            parse_utc(request.expires_at)
        except ValueError as error:
            raise InputError(f"expiry: {error}") from None
    notify = on_step or (lambda _profile, _step: None)
    messages: list[str] = []

    def collect(message: str) -> None:
        messages.append(message)
        if warn is not None:
            warn(message)

    notify("", "loading the model")
    source = load_source_model(request.model_path, request.trusted_types, collect)
    notify("", "reading the data")
    table = read_table(request.validation_path)
    if table.n_rows == 0:
        raise InputError(f"{request.validation_path}: holds no rows")
    data = prepare_validation(table, request.target, source.feature_names, source.n_features)
    if data.ignored_columns:
        collect(
            f"{request.validation_path.name}: columns the model does not use are ignored: "
            + ", ".join(data.ignored_columns)
        )
    shared = _BuildInputs(
        request=request,
        source=source,
        data=data,
        target=target_labels(data.target, source.classes),
        calibration=_read_calibration(request, data, collect),
        train=_read_train(request, source, data),
        name=name,
    )
    builds = [
        _build_profile(shared, profile, lambda s, p=profile.name: notify(p, s))
        for profile in request.profiles
    ]
    result = BuildResult(request, builds, messages)

    from edgeml.converters.report import write_report

    request.out_dir.mkdir(parents=True, exist_ok=True)
    if result.passed:
        for build in builds:
            notify(build.profile.name, "writing and verifying")
            tmp = build.bundle_path.with_name(f".{build.bundle_path.name}.check")
            write_atomically(tmp, build.data)
            try:
                _check_written(tmp, request, build)
                tmp.replace(build.bundle_path)
            finally:
                tmp.unlink(missing_ok=True)
    result.report_json, result.report_md = write_report(result)
    if not result.passed:
        failed = [f"{b.profile.name}: {b.failure()}" for b in builds if not b.passed]
        raise GateError(
            "build failed its gates, no bundle written. "
            + " | ".join(failed)
            + f". Report: {result.report_md}"
        )
    return result
