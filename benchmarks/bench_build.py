"""The "build" benchmark: what ``edgeml build`` costs and what its bundle gives, per model.

For each reference model (``reference_models``) it builds a bundle for one profile through
the same API ``edgeml build`` calls (``build_bundles``), several times, and records the wall
time and its steps, the sizes, the conversion's agreement with the source model and the two
accuracies. It then opens the bundle as a device would (``verify_bundle``) and compares a
bare onnxruntime session on its ``model.onnx`` with scikit-learn's ``predict_proba`` in the
same process: label agreement over every row of the dataset, single-row p50 latency and batch
throughput. A build the gates refuse is a figure too: its report (``report.json``) gives the
figures of the fp32 candidate the conversion gate judged, and the runtimes are compared on
the plain conversion it would have bundled. Rendering the figures is ``build_report``'s job.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from reference_models import REFERENCE_SPECS, ReferenceModel, train_reference_model
from timing import Timing, TimingSettings, combine, measure

from edgeml.converters.pipeline import BuildRequest, ProfileBuild, build_bundles
from edgeml.converters.source_model import load_source_model, to_onnx
from edgeml.toolkit.bundle import MODEL, verify_bundle
from edgeml.toolkit.errors import GateError
from edgeml.toolkit.golden import OutputComparison
from edgeml.toolkit.keys import generate_key_pair, load_private_key
from edgeml.toolkit.profiles import HardwareProfile, load_profile
from edgeml.toolkit.trust import TrustStore

PROFILE = "x86-64-generic"

DASH = "—"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Agreement:
    """Labels and probabilities of the bundled model against scikit-learn on some rows.

    ``ties`` counts rows where the two models pick different labels but the source model's
    probabilities of the two tie (within the profile's ``probability_atol``). The build's
    check counts such a row as agreeing (``ties_accepted``); the benchmark's own check counts
    it as disagreeing, so that it is seen, and lists it in ``disagreeing_rows``.
    """

    rows: int
    label_agreement: float
    max_probability_diff: float
    disagreeing_rows: tuple[int, ...]
    ties: int = 0
    ties_accepted: bool = True

    @property
    def agreement_with_ties(self) -> float:
        """The label agreement when a tie counts as agreeing, as the build counts it."""
        if self.ties_accepted:
            return self.label_agreement
        return 1.0 - (len(self.disagreeing_rows) - self.ties) / self.rows

    @classmethod
    def from_dict(cls, found: dict[str, Any]) -> Agreement:
        """A comparison as ``OutputComparison.to_dict()`` and the build report write it."""
        return cls(
            found["rows"],
            found["label_agreement"],
            found.get("max_probability_diff") or 0.0,
            tuple(found.get("disagreeing_rows", ())),
            int(found.get("ties", 0)),
        )

    @classmethod
    def from_comparison(cls, found: OutputComparison) -> Agreement:
        """The build's own comparison (``ProfileBuild.agreement``)."""
        return cls.from_dict(found.to_dict())


@dataclass(frozen=True)
class BuildOutcome:
    """What one build said about its bundle: the figures the pipeline measured.

    For a build its gates refused, they come from the build report (the profile's first
    evaluated candidate, the fp32 one the conversion gate judges); ``refusal`` says why.
    """

    chosen: str
    agreement: Agreement | None
    source_accuracy: float | None
    bundled_accuracy: float | None
    bundle_bytes: int | None
    model_bytes: int | None
    p50_ms: float | None
    refusal: str | None = None

    @classmethod
    def of_build(cls, build: ProfileBuild) -> BuildOutcome:
        """The figures of a build that wrote its bundle."""
        return cls(
            chosen=build.chosen.name if build.chosen else DASH,
            agreement=Agreement.from_comparison(build.agreement) if build.agreement else None,
            source_accuracy=build.metrics["source"].get("accuracy"),
            bundled_accuracy=build.metrics["bundled"].get("accuracy"),
            bundle_bytes=build.bundle_size,
            model_bytes=len(build.chosen.model) if build.chosen else None,
            p50_ms=build.latency.get("single_row_ms_p50"),
        )

    @classmethod
    def of_refusal(cls, entry: dict[str, Any], source_accuracy: float) -> BuildOutcome:
        """The figures of a refused build, from the profile's entry in ``report.json``."""
        judged = next((c for c in entry.get("candidates", []) if c.get("agreement")), {})
        return cls(
            chosen=DASH,
            agreement=Agreement.from_dict(judged["agreement"]) if judged else None,
            source_accuracy=source_accuracy,
            bundled_accuracy=judged.get("metrics", {}).get("accuracy"),
            bundle_bytes=judged.get("bundle_bytes") or None,
            model_bytes=judged.get("model_bytes") or None,
            p50_ms=judged.get("latency", {}).get("single_row_ms_p50"),
            refusal=entry.get("failure") or "refused by the gates",
        )


@dataclass(frozen=True)
class BuildRun:
    """One call of ``build_bundles``: its wall time, its steps' times, what it made.

    ``bundle`` is the bundle file's bytes, or None when the gates refused it.
    """

    wall_s: float
    steps_s: dict[str, float]
    outcome: BuildOutcome
    bundle_path: Path | None
    bundle: bytes | None


@dataclass
class ModelFigures:
    """Everything the build benchmark measured for one reference model."""

    kind: str
    label: str
    dataset: str
    n_features: int
    n_classes: int
    validation_rows: int
    build_s: list[float] = field(default_factory=list)
    steps_s: dict[str, float] = field(default_factory=dict)
    outcome: BuildOutcome | None = None
    deterministic: bool | None = None
    all_rows_agreement: Agreement | None = None
    onnxruntime: Timing | None = None
    sklearn: Timing | None = None
    runtime_model: str = "bundle"
    failure: str | None = None

    @property
    def build_median_s(self) -> float:
        return statistics.median(self.build_s)

    @property
    def cold_s(self) -> float:
        return self.build_s[0]

    @property
    def refused(self) -> bool:
        """The build ran to the end but its gates refused the bundle."""
        return self.outcome is not None and self.outcome.refusal is not None


@dataclass(frozen=True)
class RuntimeSettings:
    """How to compare the runtimes: timing budgets, repetitions, the profile's tie margin."""

    timing: TimingSettings
    repetitions: int
    tie_margin: float


@dataclass(frozen=True)
class BuildBenchmark:
    """The whole benchmark: its settings and one ``ModelFigures`` per reference model."""

    profile: HardwareProfile
    repetitions: int
    timing: TimingSettings
    models: list[ModelFigures]


def time_build(request: BuildRequest, source_accuracy: float) -> BuildRun:
    """Run ``build_bundles`` once and time it, step by step (from its progress callback).

    A build its gates refuse is timed too: it ran to the end and wrote its report.
    """
    marks: list[tuple[str, float]] = []

    def on_step(_profile: str, step: str) -> None:
        marks.append((step, time.perf_counter()))

    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build = build_bundles(request, on_step=on_step).builds[0]
    except GateError:
        build = None
    end = time.perf_counter()
    steps: dict[str, float] = {}
    for (step, began), (_, ended) in zip(marks, [*marks[1:], ("end", end)], strict=True):
        steps[step] = steps.get(step, 0.0) + ended - began
    if build is None:
        report = json.loads((request.out_dir / "report.json").read_text())
        outcome = BuildOutcome.of_refusal(report["profiles"][0], source_accuracy)
        return BuildRun(end - start, steps, outcome, None, None)
    bundle = build.bundle_path.read_bytes()
    return BuildRun(end - start, steps, BuildOutcome.of_build(build), build.bundle_path, bundle)


def median_steps(runs: list[BuildRun]) -> dict[str, float]:
    """Each step's median time over the runs, in the order the build went through them."""
    names = list(dict.fromkeys(step for run in runs for step in run.steps_s))
    return {n: statistics.median(run.steps_s.get(n, 0.0) for run in runs) for n in names}


def bundled_model(bundle_path: Path, trust: TrustStore) -> bytes:
    """The model.onnx of a bundle, verified as a device would."""
    return verify_bundle(bundle_path, trust).entries[MODEL]


def plain_conversion(model: ReferenceModel, opset: int) -> bytes:
    """The model converted as the build converts it, before any optimization pass."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted, _ = to_onnx(load_source_model(model.model_path), opset)
    return converted.SerializeToString()


def bare_session(model_onnx: bytes) -> ort.InferenceSession:
    """A bare onnxruntime session: default options, CPU provider."""
    return ort.InferenceSession(model_onnx, providers=["CPUExecutionProvider"])


def onnx_predict(session: ort.InferenceSession) -> Callable[[np.ndarray], list[Any]]:
    """Run the session on float32 rows; returns ``[labels, probabilities]``."""
    name = session.get_inputs()[0].name
    return lambda rows: session.run(None, {name: rows})


def tied(source: np.ndarray, picked: np.ndarray, margin: float) -> np.ndarray:
    """Rows where the source's probability of the picked class is within ``margin`` of its
    highest: there either label is a right answer."""
    of_picked = source[np.arange(len(source)), picked]
    return of_picked >= source.max(axis=1) - margin


def runtime_agreement(
    session: ort.InferenceSession, estimator: Any, X: np.ndarray, tie_margin: float
) -> Agreement:
    """Labels and probabilities of the bare session against scikit-learn on the rows of X,
    every differing label counted as disagreeing (ties counted apart)."""
    labels, probabilities = onnx_predict(session)(X.astype(np.float32))
    probabilities = np.asarray(probabilities, dtype=np.float64)
    source = estimator.predict_proba(X)
    same = np.asarray(labels).ravel() == np.asarray(estimator.predict(X)).ravel()
    ties = ~same & tied(source, probabilities.argmax(axis=1), tie_margin)
    return Agreement(
        len(X),
        float(same.mean()),
        float(np.abs(probabilities - source).max()),
        tuple(np.flatnonzero(~same).tolist()),
        int(ties.sum()),
        ties_accepted=False,
    )


def record_builds(figures: ModelFigures, runs: list[BuildRun]) -> None:
    """Put the build runs' times, outcome and determinism into ``figures``."""
    figures.build_s = [run.wall_s for run in runs]
    figures.steps_s = median_steps(runs)
    figures.outcome = runs[0].outcome
    if runs[0].bundle is not None:
        figures.deterministic = all(run.bundle == runs[0].bundle for run in runs)


def record_runtimes(
    figures: ModelFigures,
    model: ReferenceModel,
    model_onnx: bytes,
    settings: RuntimeSettings,
) -> None:
    """Put the bare-session agreement and the onnxruntime vs scikit-learn timings in ``figures``.

    The two sides are timed in turn, ``settings.repetitions`` times each, so that a burst of
    other work on the machine falls on both alike; each side's figures are the medians.
    """
    session = bare_session(model_onnx)
    figures.all_rows_agreement = runtime_agreement(
        session, model.estimator, model.X_all, settings.tie_margin
    )
    onnx_side, sklearn_side = [], []
    for _ in range(settings.repetitions):
        onnx_side.append(measure(onnx_predict(session), model.X_val, np.float32, settings.timing))
        sklearn_side.append(
            measure(model.estimator.predict_proba, model.X_val, np.float64, settings.timing)
        )
    figures.onnxruntime = combine(onnx_side)
    figures.sklearn = combine(sklearn_side)


def benchmark_model(
    model: ReferenceModel,
    request_for: Callable[[int], BuildRequest],
    repetitions: int,
    trust: TrustStore,
    timing: TimingSettings,
) -> ModelFigures:
    """Build one model ``repetitions`` times, then compare the runtimes on its model.onnx.

    When the gates refuse the build there is no bundle; the runtimes are then compared on
    the plain conversion the build judged, and ``runtime_model`` says so.
    """
    figures = ModelFigures(
        kind=model.spec.kind,
        label=model.spec.label,
        dataset=model.spec.dataset,
        n_features=model.X_val.shape[1],
        n_classes=len(model.estimator.classes_),
        validation_rows=len(model.X_val),
    )
    source_accuracy = float(model.estimator.score(model.X_val, model.y_val))
    try:
        runs = [time_build(request_for(run), source_accuracy) for run in range(repetitions)]
    except Exception as error:  # the benchmark goes on with the other models
        figures.failure = f"{type(error).__name__}: {error}"
        return figures
    record_builds(figures, runs)
    if runs[0].bundle_path is not None:
        model_onnx = bundled_model(runs[0].bundle_path, trust)
    else:
        model_onnx = plain_conversion(model, request_for(0).profiles[0].max_opset)
        figures.runtime_model = "plain conversion (no bundle: the gates refused it)"
    tie_margin = request_for(0).profiles[0].tolerance.probability_atol
    record_runtimes(figures, model, model_onnx, RuntimeSettings(timing, repetitions, tie_margin))
    return figures


def run_build_benchmark(
    work: Path, repetitions: int, timing: TimingSettings, log: Log
) -> BuildBenchmark:
    """Train the reference models in ``work`` and benchmark the build of each.

    Args:
        work: an empty folder for models, keys and bundles.
        repetitions: builds per model; the median is reported, and the first run apart.
        timing: how long to time the runtimes.
        log: called with a line of progress for people.
    """
    generate_key_pair(work / "keys", "bench")
    signing_key = load_private_key(work / "keys" / "bench.key")
    trust = TrustStore.of(signing_key.public_key())
    profile = load_profile(PROFILE)
    results = []
    for spec in REFERENCE_SPECS:
        log(f"training {spec.kind} on {spec.dataset}")
        model = train_reference_model(spec, work / "models")

        def request_for(run: int, model: ReferenceModel = model) -> BuildRequest:
            return BuildRequest(
                model_path=model.model_path,
                profiles=[profile],
                signing_key=signing_key,
                out_dir=work / "bundles" / f"{model.spec.kind}-{run}",
                validation_path=model.validation_path,
                target="target",
                name=f"bench-{model.spec.kind}",
                version="1.0.0",
            )

        log(f"building {spec.kind} x{repetitions} and timing the runtimes")
        results.append(benchmark_model(model, request_for, repetitions, trust, timing))
    return BuildBenchmark(profile, repetitions, timing, results)
