"""The "optimize" benchmark: what each optimization pass does to each reference model.

For the four reference models, every pass is applied to the model's fp32 conversion (the same
units ``edgeml build`` composes, from ``edgeml.converters.passes``), and the result is measured
against fp32 in the same run: model size (and deflated size, which is what a bundle holds),
accuracy on the validation rows, single-row p50 latency and batch-1024 throughput in a bare
onnxruntime session on this host. A pass that does not apply to a model says why.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from reference_models import REFERENCE_SPECS, ReferenceModel, train_reference_model
from timing import Timing, TimingSettings, measure

from edgeml.converters.onnx_graph import normalise
from edgeml.converters.passes import PassContext, PassFailed, PassSkipped, onnx_pass
from edgeml.converters.passes.prune import prune_mlp_units
from edgeml.converters.source_model import load_source_model, to_onnx
from edgeml.toolkit.profiles import load_profile

OPSET = 17


@dataclass(frozen=True)
class Variant:
    """One pass applied to one model, as measured."""

    name: str
    profile: str  # whose settings the pass took
    status: str  # "applied" or why not
    model_bytes: int = 0
    deflated_bytes: int = 0
    accuracy: float | None = None
    timing: Timing | None = None


@dataclass
class ModelVariants:
    """A reference model's fp32 baseline and its variants."""

    model: str
    baseline: Variant
    variants: list[Variant] = field(default_factory=list)


@dataclass(frozen=True)
class OptimizeBenchmark:
    """Everything the benchmark measured."""

    models: list[ModelVariants]
    timing: TimingSettings


def _session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _measure(
    name: str, profile: str, model: Any, reference: ReferenceModel, timing: TimingSettings
) -> Variant:
    data = normalise(model).SerializeToString()
    session = _session(data)
    labels = session.run(None, {"features": reference.X_val.astype(np.float32)})[0]
    accuracy = float(np.mean(np.asarray(labels).ravel() == reference.y_val))
    figures = measure(
        lambda x: session.run(None, {"features": x}), reference.X_val, np.float32, timing
    )
    return Variant(
        name, profile, "applied", len(data), len(zlib.compress(data, 9)), accuracy, figures
    )


PassMaker = Callable[[Any, ReferenceModel], Any]


def _onnx_pass(name: str, profile: str, **params: Any) -> PassMaker:
    def make(model: Any, reference: ReferenceModel) -> Any:
        context = PassContext(load_profile(profile), reference.X_train[:512], "features", params)
        return onnx_pass(name)(model, context)

    return make


def _structured(ratio: float, fine_tune: bool, then: str | None = None) -> PassMaker:
    def make(model: Any, reference: ReferenceModel) -> Any:
        source = load_source_model(reference.model_path)
        assert source.sklearn is not None
        train = (reference.X_train, _train_target(reference)) if fine_tune else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruned = prune_mlp_units(source.sklearn.estimator, ratio, train)
        converted, _ = to_onnx(source, OPSET, pruned.estimator)
        if then is not None:
            converted = _onnx_pass(then, "raspberry-pi-4")(normalise(converted), reference)
        return converted

    return make


def _train_target(reference: ReferenceModel) -> np.ndarray:
    from reference_models import load_dataset

    X, y, _ = load_dataset(reference.spec.dataset)
    order = np.random.default_rng(0).permutation(len(X))
    return y[order][: len(reference.X_train)]


VARIANTS: tuple[tuple[str, str, PassMaker], ...] = (
    ("simplify", "raspberry-pi-4", _onnx_pass("simplify", "raspberry-pi-4")),
    (
        "int8 dynamic, per-channel",
        "raspberry-pi-4",
        _onnx_pass("quantize-dynamic", "raspberry-pi-4"),
    ),
    ("int8 static QDQ (MinMax)", "x86-64-server", _onnx_pass("quantize-static", "x86-64-server")),
    ("fp16", "jetson-orin", _onnx_pass("fp16", "jetson-orin")),
    (
        "magnitude pruning 50%",
        "raspberry-pi-4",
        _onnx_pass("prune-magnitude", "raspberry-pi-4", sparsity=0.5),
    ),
    ("50% of hidden units, no fine-tune", "raspberry-pi-4", _structured(0.5, False)),
    ("50% of hidden units, fine-tuned", "raspberry-pi-4", _structured(0.5, True)),
    (
        "50% of hidden units, fine-tuned, then int8",
        "raspberry-pi-4",
        _structured(0.5, True, "quantize-dynamic"),
    ),
)


def benchmark_model(
    reference: ReferenceModel, timing: TimingSettings, log: Callable[[str], None]
) -> ModelVariants:
    """Measure fp32 and every variant of one reference model."""
    source = load_source_model(reference.model_path)
    base, _ = to_onnx(source, OPSET)
    log(f"{reference.spec.kind}: fp32")
    result = ModelVariants(
        reference.spec.label, _measure("fp32 (conversion)", "—", base, reference, timing)
    )
    for name, profile, make in VARIANTS:
        log(f"{reference.spec.kind}: {name}")
        try:
            model = make(base, reference)
        except (PassSkipped, PassFailed) as reason:
            result.variants.append(Variant(name, profile, f"not applied: {reason}"))
            continue
        result.variants.append(_measure(name, profile, model, reference, timing))
    return result


def run_optimize_benchmark(
    work: Path, timing: TimingSettings, log: Callable[[str], None]
) -> OptimizeBenchmark:
    """Train the reference models in ``work`` and measure every pass on each."""
    models = []
    for spec in REFERENCE_SPECS:
        reference = train_reference_model(spec, work / spec.kind)
        models.append(benchmark_model(reference, timing, log))
    return OptimizeBenchmark(models, timing)
