"""The per-profile build: convert, prove the conversion, gate, and assemble signed bundles.

``build_bundles`` is the API behind ``edgeml build``. For each hardware profile it converts the
source model to ONNX at the profile's opset, checks that the ONNX model reproduces the source
model on the validation rows, derives the data contract, the drift baseline and the golden
rows, assembles a signed bundle in memory, gates it against the profile's budgets, and checks
the bundle it made by verifying it and running its self-test. Bundles are written only when
every profile passed (all or nothing, atomically); the build report is written either way.
"""

from __future__ import annotations

import hashlib
import subprocess
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeml.converters import onnx_graph, sklearn_frontend
from edgeml.converters.dataset import ValidationData, prepare_validation, target_labels
from edgeml.converters.golden_rows import choose_golden_rows
from edgeml.converters.latency import measure_latency
from edgeml.converters.metrics import metric_drop_points, primary_metric, task_metrics
from edgeml.toolkit import __version__ as edgeml_version
from edgeml.toolkit import drift
from edgeml.toolkit.bundle import (
    BASELINE,
    GOLDEN,
    MODEL,
    bundle_bytes,
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
    trusted_types: Sequence[str] = ()


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


@dataclass
class ProfileBuild:
    """The outcome of one profile's build."""

    profile: HardwareProfile
    bundle_id: str
    bundle_path: Path
    gates: list[GateResult] = field(default_factory=list)
    agreement: OutputComparison | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    model_bytes: int = 0
    bundle_size: int = 0
    precision: str = "fp32"
    passes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: bytes = b""

    @property
    def passed(self) -> bool:
        return all(g.status != "failed" for g in self.gates)

    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if g.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "bundle_id": self.bundle_id,
            "bundle": str(self.bundle_path) if self.passed else None,
            "passed": self.passed,
            "precision": self.precision,
            "passes": self.passes,
            "model_bytes": self.model_bytes,
            "bundle_bytes": self.bundle_size,
            "metrics": self.metrics,
            "agreement": self.agreement.to_dict() if self.agreement else None,
            "gates": [g.to_dict() for g in self.gates],
            "latency": self.latency,
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


@dataclass(frozen=True)
class SourceModel:
    """The model as given: a scikit-learn estimator or an ONNX file, and how to run it."""

    path: Path
    sha256: str
    kind: str
    task: str
    classes: tuple[Any, ...] | None
    feature_names: tuple[str, ...] | None
    n_features: int | None
    sklearn: sklearn_frontend.SklearnModel | None = None
    onnx_model: Any = None
    type_name: str = ""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _onnx_task(outputs: Sequence[TensorSpec], path: Path) -> str:
    if (
        len(outputs) >= 2
        and outputs[0].dtype in ("int64", "int32", "string")
        and outputs[1].dtype.startswith("float")
    ):
        return "classification"
    if len(outputs) == 1 and outputs[0].dtype.startswith("float"):
        return "regression"
    shown = ", ".join(f"{o.name}:{o.dtype}" for o in outputs)
    raise ConversionError(
        f"{path}: cannot tell the task from the outputs ({shown}); edgeml expects [label, "
        "probabilities] for a classifier (export with zipmap=False) or one float output "
        "for a regressor"
    )


def load_source_model(
    path: Path, trusted_types: Sequence[str] = (), warn: Callable[[str], None] | None = None
) -> SourceModel:
    """Load the model a build starts from.

    Raises:
        ConversionError: an unsupported file type or estimator, or a file that does not load.
    """
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    digest = _sha256_file(path)
    if suffix == ".onnx":
        model = onnx_graph.load_onnx(path)
        outputs = onnx_graph.graph_outputs(model)
        return SourceModel(
            path,
            digest,
            "onnx",
            _onnx_task(outputs, path),
            None,
            None,
            None,
            onnx_model=model,
            type_name="ONNX model",
        )
    if suffix in sklearn_frontend.SKLEARN_SUFFIXES:
        estimator = sklearn_frontend.load_estimator(path, trusted_types, warn)
        described = sklearn_frontend.describe_estimator(estimator)
        return SourceModel(
            path,
            digest,
            "sklearn",
            described.task,
            described.classes,
            described.feature_names,
            described.n_features,
            sklearn=described,
            type_name=described.type_name,
        )
    raise InputError(
        f"model file {path}: unsupported type {suffix!r}; use .skops, .joblib, .pkl or .onnx"
    )


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
    for package in ("onnx", "onnxruntime", "skl2onnx", "scikit-learn", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def _convert(
    source: SourceModel,
    profile: HardwareProfile,
    cache: dict[int, tuple[bytes, list[dict[str, Any]]]],
) -> tuple[bytes, list[dict[str, Any]]]:
    """The normalised ONNX bytes for the profile's opset, and the passes that made them."""
    opset = profile.max_opset
    if opset in cache:
        return cache[opset]
    if source.kind == "sklearn":
        assert source.sklearn is not None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = sklearn_frontend.convert_to_onnx(source.sklearn, opset)
        passes = [
            {
                "name": "convert-skl2onnx",
                "params": {"target_opset": opset, "zipmap": False, "input_dtype": "float32"},
            }
        ]
    else:
        model = source.onnx_model
        found = onnx_graph.default_opset(model)
        if found > opset:
            raise ConversionError(
                f"{source.path} uses opset {found}; profile {profile.name} allows at most {opset} "
                "(export the model at a lower opset)"
            )
        passes = [{"name": "import-onnx", "params": {"opset": found}}]
    normalised = onnx_graph.normalise(model)
    passes.append({"name": "normalise", "params": {}})
    cache[opset] = (normalised.SerializeToString(), passes)
    return cache[opset]


def _source_outputs(
    source: SourceModel, data: ValidationData, inputs: list[TensorSpec]
) -> ModelOutputs:
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
    session = create_session(source.onnx_model.SerializeToString(), threads=0)
    return run_model(session, inputs, source.task, data.matrix)


def _classes(
    source: SourceModel, outputs: ModelOutputs, target: np.ndarray, notes: list[str]
) -> tuple[Any, ...] | None:
    if source.task != "classification":
        return None
    if source.classes is not None:
        return source.classes
    assert outputs.probabilities is not None and outputs.labels is not None
    seen = sorted(
        set(np.asarray(outputs.labels).tolist()) | set(np.asarray(target).tolist()), key=str
    )
    width = outputs.probabilities.shape[1]
    if len(seen) != width:
        raise ConversionError(
            f"{source.path}: the probabilities have {width} columns but the labels and the target "
            f"hold {len(seen)} classes; cannot tell which column is which class"
        )
    notes.append(f"classes taken as the sorted labels {seen} (the ONNX file does not name them)")
    return tuple(seen)


def _baseline(
    data: ValidationData, task: str, outputs: ModelOutputs, classes: Sequence[Any] | None
) -> dict[str, Any]:
    features = {
        c.name: drift.feature_baseline(data.matrix[:, i], c.missing)
        for i, c in enumerate(data.features)
    }
    if task == "classification":
        assert outputs.labels is not None and classes is not None
        labels = np.asarray(outputs.labels)
        prediction = drift.class_baseline(labels.astype(str), [str(c) for c in classes])
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


def _round_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}


def _build_profile(
    request: BuildRequest,
    source: SourceModel,
    data: ValidationData,
    profile: HardwareProfile,
    cache: dict[int, tuple[bytes, list[dict[str, Any]]]],
    name: str,
    step: Callable[[str], None],
) -> ProfileBuild:
    bid = bundle_id(name, request.version, profile.name)
    result = ProfileBuild(profile, bid, request.out_dir / f"{bid}{BUNDLE_SUFFIX}")
    tolerance = profile.tolerance

    step("converting")
    model_bytes, passes = _convert(source, profile, cache)
    import onnx

    model = onnx.load_model_from_string(model_bytes)
    inputs = onnx_graph.assign_features(
        onnx_graph.graph_inputs(model), data.feature_names, data.source
    )
    outputs_spec = onnx_graph.graph_outputs(model)
    result.passes = passes
    result.model_bytes = len(model_bytes)
    if "fp32" not in profile.precisions[:1]:
        result.notes.append(
            f"profile {profile.name} prefers {profile.precisions[0]}; this build bundles the fp32 "
            "model (optimization passes are not applied yet)"
        )

    step("checking the conversion")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        session = create_session(
            model_bytes,
            profile.execution_providers,
            profile.threads,
            profile.graph_optimization_level,
        )
    result.notes.extend(str(w.message) for w in caught)
    source_outputs = _source_outputs(source, data, inputs)
    bundled_outputs = run_model(session, inputs, source.task, data.matrix)
    if source.task == "classification" and source.sklearn and not source.sklearn.has_probabilities:
        source_outputs = ModelOutputs(labels=source_outputs.labels)
        bundled_outputs = ModelOutputs(labels=bundled_outputs.labels)
    agreement = compare_outputs(bundled_outputs, source_outputs, tolerance)
    result.agreement = agreement
    result.gates.append(
        GateResult(
            "conversion",
            "passed" if agreement.passed else "failed",
            agreement.label_agreement
            if agreement.label_agreement is not None
            else agreement.values_within_tolerance,
            tolerance.label_agreement,
            agreement.describe(),
        )
    )

    target = target_labels(data.target, source.classes)
    classes = _classes(source, bundled_outputs, target, result.notes)
    source_metrics = task_metrics(source.task, source_outputs, target)
    bundled_metrics = task_metrics(source.task, bundled_outputs, target)
    drop = metric_drop_points(source.task, source_metrics, bundled_metrics)
    result.metrics = {
        "primary": primary_metric(source.task),
        "source": source_metrics,
        "bundled": bundled_metrics,
        "drop_points": drop,
        "validation_rows": data.n_rows,
        "model_bytes": len(model_bytes),
    }

    step("assembling the bundle")
    golden_index = choose_golden_rows(source.task, bundled_outputs)
    golden = GoldenSet(data.matrix[golden_index], bundled_outputs.take(golden_index), tolerance)
    contract = DataContract(tuple(data.feature_specs()))
    baseline = _baseline(data, source.task, bundled_outputs, classes)
    profile_settings = profile.to_dict()
    profile_settings.pop("source", None)
    manifest = Manifest(
        name=name,
        version=request.version,
        profile=profile.name,
        task=source.task,  # type: ignore[arg-type]
        inputs=tuple(inputs),
        outputs=tuple(outputs_spec),
        contract=contract.to_dict(),
        metrics=result.metrics,
        precision="fp32",
        passes=tuple(passes),
        provenance={
            "source_model": {
                "file": source.path.name,
                "sha256": source.sha256,
                "type": source.type_name,
            },
            "validation_data": {
                "file": request.validation_path.name,
                "sha256": _sha256_file(request.validation_path),
                "target": request.target,
            },
            "versions": _versions(),
            "git_commit": _git_commit(source.path.resolve().parent),
        },
        profile_settings=profile_settings,
        classes=classes,
        candidates=(
            {
                "precision": "fp32",
                "passes": [p["name"] for p in passes],
                "metrics": bundled_metrics,
                "model_bytes": len(model_bytes),
                "chosen": True,
            },
        ),
    )
    entries = {
        MODEL: model_bytes,
        BASELINE: canonical_json(baseline),
        GOLDEN: canonical_json(golden.to_dict()),
    }
    data_bytes = bundle_bytes(manifest, entries, request.signing_key)
    result.bundle_size = len(data_bytes)
    result.data = data_bytes

    step("gating")
    budgets = profile.budgets
    if budgets.max_accuracy_drop is not None:
        ok = drop <= budgets.max_accuracy_drop
        result.gates.append(
            GateResult(
                "max_accuracy_drop",
                "passed" if ok else "failed",
                drop,
                budgets.max_accuracy_drop,
                f"{primary_metric(source.task)} drop in points",
            )
        )
    else:
        result.gates.append(
            GateResult("max_accuracy_drop", "not checked", drop, None, "no budget in the profile")
        )
    size_mb = round(len(data_bytes) / 1e6, 6)
    if budgets.max_size_mb is not None:
        ok = size_mb <= budgets.max_size_mb
        result.gates.append(
            GateResult(
                "max_size_mb",
                "passed" if ok else "failed",
                size_mb,
                budgets.max_size_mb,
                "bundle size in MB (10^6 bytes)",
            )
        )
    else:
        result.gates.append(
            GateResult("max_size_mb", "not checked", size_mb, None, "no budget in the profile")
        )
    step("measuring latency")
    result.latency = measure_latency(session, inputs, data.matrix)
    p50 = result.latency["single_row_ms_p50"]
    primary_provider = profile.execution_providers[0]
    if budgets.max_latency_ms is None:
        result.gates.append(
            GateResult("max_latency_ms", "not checked", p50, None, "no budget in the profile")
        )
    elif primary_provider not in available_providers([primary_provider])[0]:
        result.gates.append(
            GateResult(
                "max_latency_ms",
                "not checked",
                None,
                budgets.max_latency_ms,
                f"this host has no {primary_provider}",
            )
        )
    else:
        ok = p50 <= budgets.max_latency_ms * LATENCY_MARGIN
        result.gates.append(
            GateResult(
                "max_latency_ms",
                "passed" if ok else "failed",
                p50,
                budgets.max_latency_ms,
                f"single-row p50 on this host, margin x{LATENCY_MARGIN}",
            )
        )
    return result


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
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_path.stem).strip("-._") or "model"
    return name[:64]


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
        The result, when every profile passed.

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
    notify = on_step or (lambda _profile, _step: None)
    messages: list[str] = []

    def collect(message: str) -> None:
        messages.append(message)
        if warn is not None:
            warn(message)

    notify("", "loading the model")
    source = load_source_model(request.model_path, request.trusted_types, collect)
    notify("", "reading the validation data")
    table = read_table(request.validation_path)
    if table.n_rows == 0:
        raise InputError(f"{request.validation_path}: holds no rows")
    data = prepare_validation(table, request.target, source.feature_names, source.n_features)
    if data.ignored_columns:
        collect(
            f"{request.validation_path.name}: columns the model does not use are ignored: "
            + ", ".join(data.ignored_columns)
        )
    if request.calibration_path is not None:
        collect(
            "--calibration is read by static quantization, which this build does not apply "
            "yet; ignored"
        )

    cache: dict[int, tuple[bytes, list[dict[str, Any]]]] = {}
    builds = []
    for profile in request.profiles:
        builds.append(
            _build_profile(
                request, source, data, profile, cache, name, lambda s, p=profile.name: notify(p, s)
            )
        )
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
        failed = [
            f"{b.profile.name}: "
            + "; ".join(
                f"{g.gate} {g.detail} (figure {g.figure}, threshold {g.threshold})"
                for g in b.failed_gates()
            )
            for b in builds
            if not b.passed
        ]
        raise GateError(
            "build failed its gates, no bundle written. "
            + " | ".join(failed)
            + f". Report: {result.report_md}"
        )
    return result
