"""Which optimized candidates a profile asks for, and which one wins: pure functions.

A candidate is a recipe: an optional pruning step (structured, on the MLP before conversion,
or magnitude, on the ONNX weights), then ``simplify`` when the profile lists it, then the
precision pass (none for fp32, dynamic or static quantization for int8, fp16). The profile's
``precisions``, ``[quantization] mode`` and ``[optimization]`` table decide the set. Ranking
uses only deterministic figures (DESIGN.md, "Deterministic bundles"): the profile's precision
order, then by the objective the bundle size or the primary metric, then the recipe's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgeml.toolkit.profiles import HardwareProfile

PRECISION_NAMES = {
    None: "fp32",
    "quantize-dynamic": "int8-dynamic",
    "quantize-static": "int8-qdq",
    "fp16": "fp16",
}


@dataclass(frozen=True)
class Recipe:
    """What one candidate runs."""

    precision: str
    precision_pass: str | None = None  # "quantize-dynamic" | "quantize-static" | "fp16"
    pruning: str | None = None  # "prune-structured" | "prune-magnitude"
    amount: float = 0.0  # the share of units removed, or the sparsity
    simplify: bool = True

    @property
    def name(self) -> str:
        """E.g. ``int8-dynamic``, ``fp16``, ``int8-qdq+units-50``, ``fp32+sparse-50``."""
        name = PRECISION_NAMES[self.precision_pass]
        if self.pruning == "prune-structured":
            name += f"+units-{round(self.amount * 100)}"
        elif self.pruning == "prune-magnitude":
            name += f"+sparse-{round(self.amount * 100)}"
        return name

    @property
    def lossless(self) -> bool:
        """fp32 without pruning: held to the conversion tolerance, not the candidate one."""
        return self.precision_pass is None and self.pruning is None

    def onnx_passes(self) -> list[str]:
        """The ONNX passes in order (structured pruning runs before conversion, not here)."""
        passes = []
        if self.pruning == "prune-magnitude":
            passes.append("prune-magnitude")
        if self.simplify:
            passes.append("simplify")
        if self.precision_pass:
            passes.append(self.precision_pass)
        return passes


def _precision_pass(profile: HardwareProfile, precision: str) -> str | None:
    if precision == "int8":
        return f"quantize-{profile.quantization.mode}"
    if precision == "fp16":
        return "fp16"
    return None


def recipes_for(profile: HardwareProfile, has_train_rows: bool) -> list[Recipe]:
    """Every candidate recipe the profile allows, fp32 without pruning always among them.

    Without training rows, structured pruning tries half the profile's ratios (milder, since
    it cannot fine-tune) and lets the gates decide.
    """
    settings = profile.optimization
    simplify = "simplify" in settings.passes
    prunings: list[tuple[str | None, float]] = [(None, 0.0)]
    if "prune-structured" in settings.passes:
        ratios = (
            settings.structured_ratios
            if has_train_rows
            else tuple(r / 2 for r in settings.structured_ratios)
        )
        prunings += [("prune-structured", r) for r in ratios]
    if "prune-magnitude" in settings.passes:
        prunings += [("prune-magnitude", s) for s in settings.magnitude_sparsity]
    precisions = list(profile.precisions)
    if "fp32" not in precisions:
        precisions.append("fp32")  # the reference every other candidate is measured against
    return [
        Recipe(p, _precision_pass(profile, p), pruning, amount, simplify)
        for pruning, amount in prunings
        for p in precisions
    ]


def rank_key(
    profile: HardwareProfile, precision: str, bundle_bytes: int, metric: float, name: str
) -> tuple[Any, ...]:
    """Sort key of a candidate within budgets: lower is better."""
    order = list(profile.precisions)
    precision_rank = order.index(precision) if precision in order else len(order)
    metric_key = -round(metric, 6)
    if profile.optimization.objective == "accuracy":
        return (precision_rank, metric_key, bundle_bytes, name)
    return (precision_rank, bundle_bytes, metric_key, name)


def choose(keys: Sequence[tuple[Any, ...]]) -> int | None:
    """The index of the best key, or None when there is none."""
    if not keys:
        return None
    return min(range(len(keys)), key=lambda i: keys[i])
