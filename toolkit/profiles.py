"""Hardware profiles: what a build targets, read from one TOML file per target.

A profile names the architecture, the onnxruntime execution providers in order of preference,
the precisions to try in order of preference, quantization settings, the maximum opset, the
session settings (threads, graph optimization level), the tolerance an optimized model must
keep against its source model, and the budgets a bundle must meet (DESIGN.md, "Hardware
profiles" and "Budgets").

Profiles are frozen dataclasses that validate themselves when constructed; ``from_dict`` also
refuses unknown and missing keys. Every error is a :class:`~edgeml.toolkit.errors.ProfileError`
whose message names the file and the key (``budgets.max_size_mb``). Built-in profiles ship as
package data in ``edgeml.hardware_profiles``; a user's own profile is any path to a ``.toml``
file.

This module only reads TOML files. Building, quantizing and checking budgets are left to
``edgeml.converters``; choosing an execution provider at run time is left to the scoring engine.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from edgeml.toolkit.errors import ProfileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "ARCHITECTURES",
    "CALIBRATION_METHODS",
    "EXECUTION_PROVIDERS",
    "GRAPH_OPTIMIZATION_LEVELS",
    "OBJECTIVES",
    "OPTIONAL_PASSES",
    "PRECISIONS",
    "QUANTIZATION_MODES",
    "QUANT_TYPES",
    "Budgets",
    "HardwareProfile",
    "Optimization",
    "QuantizationSettings",
    "Tolerance",
    "builtin_profile_names",
    "list_profiles",
    "load_profile",
]

#: The package whose ``*.toml`` files are the built-in profiles.
BUILTIN_PACKAGE = "edgeml.hardware_profiles"

ARCHITECTURES: tuple[str, ...] = ("aarch64", "x86_64", "armv7l")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
GRAPH_OPTIMIZATION_LEVELS: tuple[str, ...] = ("disable", "basic", "extended", "all")
QUANTIZATION_MODES: tuple[str, ...] = ("dynamic", "static")
QUANT_TYPES: tuple[str, ...] = ("qint8", "quint8")
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
#: Passes a profile may list in ``[optimization] passes``; the precision passes (quantization,
#: fp16) follow from ``precisions`` and ``[quantization] mode`` and are not listed.
OPTIONAL_PASSES: tuple[str, ...] = ("simplify", "prune-structured", "prune-magnitude")
OBJECTIVES: tuple[str, ...] = ("size", "accuracy")

#: Execution provider names onnxruntime knows (``onnxruntime.get_all_providers()`` of 1.2x,
#: kept here so that loading a profile does not import onnxruntime). A name outside this list is
#: almost always a typo that would silently fall back to the CPU; extend it when onnxruntime
#: adds a provider.
EXECUTION_PROVIDERS: tuple[str, ...] = (
    "ACLExecutionProvider",
    "ArmNNExecutionProvider",
    "AzureExecutionProvider",
    "CANNExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "DmlExecutionProvider",
    "DnnlExecutionProvider",
    "JsExecutionProvider",
    "MIGraphXExecutionProvider",
    "NnapiExecutionProvider",
    "NvTensorRTRTXExecutionProvider",
    "OpenVINOExecutionProvider",
    "QNNExecutionProvider",
    "RknpuExecutionProvider",
    "ROCMExecutionProvider",
    "SNPEExecutionProvider",
    "TensorrtExecutionProvider",
    "VitisAIExecutionProvider",
    "VSINPUExecutionProvider",
    "WebGpuExecutionProvider",
    "WebNNExecutionProvider",
    "XnnpackExecutionProvider",
)

_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")
_NAME_RULE = "lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
_MIN_OPSET = 7


# --- checks -----------------------------------------------------------------------------------


class _InvalidKey(ProfileError):
    """A key of a profile is missing, unknown or holds a wrong value; the file is not known here.

    ``HardwareProfile.from_dict`` catches it and raises a ``ProfileError`` that names the file.
    """


def _describe(value: Any) -> str:
    """Render a value as it would appear in TOML, with its type where that helps."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array" if value else "an empty array"
    if value is None:
        return "nothing"
    return f"{value!r} (a {type(value).__name__})"


def _fail(key: str, expected: str, value: Any) -> NoReturn:
    raise _InvalidKey(f'key "{key}" must be {expected}, got {_describe(value)}')


def _one_of(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(f'"{choice}"' for choice in choices)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value in choices:
        return value
    close = _closest(value, choices)
    if close and len(choices) > 8:
        # A long list (the execution providers) would bury the answer: give the likely one.
        raise _InvalidKey(
            f'key "{key}" has unknown value {_describe(value)}; did you mean "{close}"?'
        )
    message = f'key "{key}" must be {_one_of(choices)}, got {_describe(value)}'
    if close:
        message += f' (did you mean "{close}"?)'
    raise _InvalidKey(message)


def _closest(value: Any, choices: tuple[str, ...]) -> str | None:
    """The choice a mistyped string most likely meant, ignoring case first."""
    if not isinstance(value, str):
        return None
    for choice in choices:
        if choice.lower() == value.lower():
            return choice
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.8)
    return close[0] if close else None


def _check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(key, "true or false", value)
    return value


def _check_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        _fail(key, "a string", value)
    return value


def _check_int(key: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(key, f"an integer >= {minimum}", value)
    if value < minimum:
        _fail(key, f"an integer >= {minimum}", value)
    return value


def _check_positive(key: str, value: Any) -> float | None:
    """A budget: a positive finite number, or None for no limit."""
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        _fail(key, "a positive number", value)
    return float(value)


def _check_non_negative(key: str, value: Any) -> float:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        _fail(key, "a number >= 0", value)
    return float(value)


def _check_share(key: str, value: Any) -> float:
    if not _is_number(value) or not 0 < value <= 1:
        _fail(key, "a number in (0, 1]", value)
    return float(value)


def _check_choices(key: str, value: Any, choices: tuple[str, ...]) -> tuple[str, ...]:
    """A non-empty array of distinct strings, each one of ``choices``."""
    if not isinstance(value, list | tuple) or not value:
        _fail(key, f"a non-empty array of strings, each {_one_of(choices)}", value)
    seen: set[str] = set()
    for index, item in enumerate(value):
        _check_choice(f"{key}[{index}]", item, choices)
        if item in seen:
            raise _InvalidKey(f'key "{key}" lists "{item}" twice')
        seen.add(item)
    return tuple(value)


def _set(instance: object, name: str, value: Any) -> None:
    """Store a normalised value on a frozen dataclass from ``__post_init__``."""
    object.__setattr__(instance, name, value)


def _check_table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(key, "a table", value)
    return value


def _check_keys(
    data: Mapping[str, Any], known: tuple[str, ...], prefix: str, table: str | None
) -> None:
    """Refuse a key the profile format does not know, suggesting the closest known one."""
    for key in data:
        if key in known:
            continue
        where = f"in [{table}]" if table else "at the top level"
        message = f'key "{prefix}{key}" is unknown; known keys {where}: {", ".join(known)}'
        close = difflib.get_close_matches(str(key), known, n=1)
        if close:
            message += f' (did you mean "{prefix}{close[0]}"?)'
        raise _InvalidKey(message)


# --- the profile --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budgets:
    """What a bundle built for a profile must meet; ``None`` means no limit.

    Attributes:
        max_size_mb: Largest bundle in megabytes (10**6 bytes).
        max_accuracy_drop: Largest drop of the validation metric against the source model, in
            percentage points.
        max_latency_ms: Largest single-row p50 latency in milliseconds, checked only on a build
            host that has the profile's execution provider.

    Raises:
        ProfileError: A value is not a positive finite number (zero and negatives included).
    """

    TABLE: ClassVar[str] = "budgets"

    max_size_mb: float | None = None
    max_accuracy_drop: float | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        for name in _field_names(self):
            _set(self, name, _check_positive(f"{self.TABLE}.{name}", getattr(self, name)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Budgets:
        """Read the ``[budgets]`` table; an omitted key (or null) means no limit.

        Raises:
            ProfileError: An unknown key or a value that is not a positive number.
        """
        return cls(**_table_kwargs(cls, data))

    def to_dict(self) -> dict[str, float | None]:
        """The budgets as JSON-able values, ``None`` (null) for no limit."""
        return {name: getattr(self, name) for name in _field_names(self)}


@dataclass(frozen=True)
class QuantizationSettings:
    """How to quantize a model when a profile asks for ``int8``.

    The defaults match onnxruntime's own defaults for ``quantize_dynamic``.

    Attributes:
        mode: ``dynamic`` (weights quantized ahead, activations at run time; no calibration
            data needed) or ``static`` (QDQ with activations calibrated on ``--calibration``
            rows).
        weight_type: ``qint8`` or ``quint8``.
        activation_type: ``qint8`` or ``quint8``; used by static mode only (dynamic mode
            always quantizes activations to uint8 at run time).
        per_channel: One scale per output channel of a weight instead of one per tensor.
        reduce_range: Quantize weights to 7 bits, for x86 CPUs without VNNI whose int8
            instructions can saturate.
        calibration_method: ``minmax``, ``entropy`` or ``percentile``; static mode only.

    Raises:
        ProfileError: A value of the wrong type or not among the allowed ones.
    """

    TABLE: ClassVar[str] = "quantization"

    mode: str = "dynamic"
    weight_type: str = "qint8"
    activation_type: str = "quint8"
    per_channel: bool = False
    reduce_range: bool = False
    calibration_method: str = "minmax"

    def __post_init__(self) -> None:
        key = f"{self.TABLE}."
        _check_choice(key + "mode", self.mode, QUANTIZATION_MODES)
        _check_choice(key + "weight_type", self.weight_type, QUANT_TYPES)
        _check_choice(key + "activation_type", self.activation_type, QUANT_TYPES)
        _check_bool(key + "per_channel", self.per_channel)
        _check_bool(key + "reduce_range", self.reduce_range)
        _check_choice(key + "calibration_method", self.calibration_method, CALIBRATION_METHODS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantizationSettings:
        """Read the ``[quantization]`` table; omitted keys take their defaults.

        Raises:
            ProfileError: An unknown key or a bad value.
        """
        return cls(**_table_kwargs(cls, data))

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able values."""
        return {name: getattr(self, name) for name in _field_names(self)}


@dataclass(frozen=True)
class Tolerance:
    """How closely an optimized or converted model's outputs must match the source model's.

    Attributes:
        label_agreement: Share of rows whose predicted labels are identical, in (0, 1].
        probability_atol: Largest absolute difference of a class probability.
        value_rtol: Relative tolerance for regression outputs and scores.
        value_atol: Absolute tolerance for regression outputs and scores.

    Raises:
        ProfileError: A value of the wrong type or out of range.
    """

    TABLE: ClassVar[str] = "tolerance"

    label_agreement: float = 0.999
    probability_atol: float = 1e-3
    value_rtol: float = 1e-3
    value_atol: float = 1e-4

    def __post_init__(self) -> None:
        key = f"{self.TABLE}."
        _set(self, "label_agreement", _check_share(key + "label_agreement", self.label_agreement))
        for name in ("probability_atol", "value_rtol", "value_atol"):
            _set(self, name, _check_non_negative(key + name, getattr(self, name)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tolerance:
        """Read the ``[tolerance]`` table; omitted keys take their defaults.

        Raises:
            ProfileError: An unknown key or a bad value.
        """
        return cls(**_table_kwargs(cls, data))

    def to_dict(self) -> dict[str, float]:
        """The tolerances as JSON-able values."""
        return {name: getattr(self, name) for name in _field_names(self)}


def _check_fractions(key: str, value: Any) -> tuple[float, ...]:
    """An array of distinct numbers in (0, 1), possibly empty."""
    if not isinstance(value, list | tuple):
        _fail(key, "an array of numbers in (0, 1)", value)
    result = []
    for index, item in enumerate(value):
        if not _is_number(item) or not 0 < item < 1:
            _fail(f"{key}[{index}]", "a number in (0, 1)", item)
        result.append(float(item))
    if len(set(result)) != len(result):
        raise _InvalidKey(f'key "{key}" lists a value twice')
    return tuple(result)


@dataclass(frozen=True)
class Optimization:
    """Which candidates a build tries for a profile, and how it picks one.

    Candidates are every combination of a pruning variant (none, and each ratio of each
    pruning pass listed) with each precision in ``precisions``; ``simplify`` runs first on
    all of them when listed. Of the candidates within budgets, the first in the profile's
    precision order wins, then by ``objective`` (``size``: smallest bundle, then best metric;
    ``accuracy``: best metric, then smallest bundle). Only deterministic figures rank.

    Attributes:
        passes: Optional passes to use: ``simplify``, ``prune-structured``, ``prune-magnitude``.
        objective: ``size`` or ``accuracy``.
        structured_ratios: Shares of MLP hidden units to remove (``prune-structured``).
        magnitude_sparsity: Shares of weights to zero (``prune-magnitude``).
        candidate_label_agreement: Least share of validation rows on which a lossy candidate
            (quantized, fp16, pruned) must give the source model's label.
        candidate_probability_atol: Largest probability difference allowed on those rows.
        candidate_value_rtol: Relative tolerance for a lossy regressor's values.
        candidate_value_atol: Absolute tolerance for a lossy regressor's values.

    Raises:
        ProfileError: A value of the wrong type or out of range.
    """

    TABLE: ClassVar[str] = "optimization"

    passes: tuple[str, ...] = ("simplify",)
    objective: str = "size"
    structured_ratios: tuple[float, ...] = (0.5, 0.25)
    magnitude_sparsity: tuple[float, ...] = (0.5,)
    candidate_label_agreement: float = 0.97
    candidate_probability_atol: float = 0.1
    candidate_value_rtol: float = 0.05
    candidate_value_atol: float = 0.01

    def __post_init__(self) -> None:
        key = f"{self.TABLE}."
        passes = self.passes
        if isinstance(passes, list | tuple) and not passes:
            _set(self, "passes", ())
        else:
            _set(self, "passes", _check_choices(key + "passes", passes, OPTIONAL_PASSES))
        _check_choice(key + "objective", self.objective, OBJECTIVES)
        for name in ("structured_ratios", "magnitude_sparsity"):
            _set(self, name, _check_fractions(key + name, getattr(self, name)))
        _set(
            self,
            "candidate_label_agreement",
            _check_share(key + "candidate_label_agreement", self.candidate_label_agreement),
        )
        for name in ("candidate_probability_atol", "candidate_value_rtol", "candidate_value_atol"):
            _set(self, name, _check_non_negative(key + name, getattr(self, name)))

    @property
    def candidate_tolerance(self) -> Tolerance:
        """The tolerance a lossy candidate must keep against the source model."""
        return Tolerance(
            label_agreement=self.candidate_label_agreement,
            probability_atol=self.candidate_probability_atol,
            value_rtol=self.candidate_value_rtol,
            value_atol=self.candidate_value_atol,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Optimization:
        """Read the ``[optimization]`` table; omitted keys take their defaults.

        Raises:
            ProfileError: An unknown key or a bad value.
        """
        return cls(**_table_kwargs(cls, data))

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able values."""
        document = {name: getattr(self, name) for name in _field_names(self)}
        for name in ("passes", "structured_ratios", "magnitude_sparsity"):
            document[name] = list(document[name])
        return document


_Table = type[Budgets] | type[QuantizationSettings] | type[Tolerance] | type[Optimization]


def _field_names(instance_or_class: Any) -> tuple[str, ...]:
    return tuple(item.name for item in fields(instance_or_class))


def _table_kwargs(cls: _Table, data: Any) -> dict[str, Any]:
    table = _check_table(cls.TABLE, data)
    _check_keys(table, _field_names(cls), f"{cls.TABLE}.", cls.TABLE)
    return dict(table)


@dataclass(frozen=True)
class HardwareProfile:
    """One target a bundle is built for.

    Attributes:
        name: The profile's name, ``[a-z0-9][a-z0-9._-]*``; part of a bundle's id.
        description: One line for people.
        architecture: ``aarch64``, ``x86_64`` or ``armv7l``.
        execution_providers: onnxruntime execution providers in order of preference.
        precisions: Precisions to try, in order of preference: ``fp32``, ``fp16``, ``int8``.
        max_opset: Highest ONNX opset the target's onnxruntime runs (at least 7).
        threads: Intra-op threads; 0 lets onnxruntime use every core.
        graph_optimization_level: ``disable``, ``basic``, ``extended`` or ``all``.
        quantization: How to quantize when ``int8`` is tried.
        tolerance: How closely the converted (fp32) model must reproduce the source model.
        budgets: Size, accuracy drop and latency a bundle must meet.
        optimization: Which optimized candidates to try and how to choose among them.
        source: The file the profile was read from (not part of ``to_dict`` and not compared,
            so a profile read back from a bundle manifest equals the one it was built with).

    Raises:
        ProfileError: A field has the wrong type or a bad value; the message names ``source``.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = (
        "name",
        "architecture",
        "execution_providers",
        "precisions",
    )

    name: str
    architecture: str
    execution_providers: tuple[str, ...]
    precisions: tuple[str, ...]
    description: str = ""
    max_opset: int = 17
    threads: int = 0
    graph_optimization_level: str = "all"
    quantization: QuantizationSettings = field(default_factory=QuantizationSettings)
    tolerance: Tolerance = field(default_factory=Tolerance)
    budgets: Budgets = field(default_factory=Budgets)
    optimization: Optimization = field(default_factory=Optimization)
    source: str = field(default="<dict>", compare=False)

    def __post_init__(self) -> None:
        try:
            self._validate()
        except _InvalidKey as error:
            raise ProfileError(f"{self.source}: {error}") from None

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.fullmatch(self.name):
            _fail("name", _NAME_RULE, self.name)
        _check_str("description", self.description)
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        _set(
            self,
            "execution_providers",
            _check_choices("execution_providers", self.execution_providers, EXECUTION_PROVIDERS),
        )
        _set(self, "precisions", _check_choices("precisions", self.precisions, PRECISIONS))
        _check_int("max_opset", self.max_opset, _MIN_OPSET)
        _check_int("threads", self.threads, 0)
        _check_choice(
            "graph_optimization_level", self.graph_optimization_level, GRAPH_OPTIMIZATION_LEVELS
        )
        for name, kind in (
            ("quantization", QuantizationSettings),
            ("tolerance", Tolerance),
            ("budgets", Budgets),
            ("optimization", Optimization),
        ):
            if not isinstance(getattr(self, name), kind):
                _fail(name, f"a {kind.__name__}", getattr(self, name))
        _check_str("source", self.source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> HardwareProfile:
        """Build a profile from a parsed TOML document or from ``to_dict()``'s output.

        Args:
            data: The profile's keys; tables for ``quantization``, ``tolerance``, ``budgets``.
            source: Where ``data`` came from, named in every error message.

        Returns:
            The validated profile.

        Raises:
            ProfileError: An unknown key, a missing required key, a wrong type or a bad value;
                the message names ``source`` and the key.
        """
        try:
            if not isinstance(data, Mapping):
                raise _InvalidKey(f"a profile must be a table of keys, got {_describe(data)}")
            known = tuple(name for name in _field_names(cls) if name != "source")
            _check_keys(data, known, "", None)
            for key in cls.REQUIRED:
                if key not in data:
                    raise _InvalidKey(f'required key "{key}" is missing')
            kwargs = {key: data[key] for key in known if key in data}
            kwargs["quantization"] = QuantizationSettings.from_dict(data.get("quantization", {}))
            kwargs["tolerance"] = Tolerance.from_dict(data.get("tolerance", {}))
            kwargs["budgets"] = Budgets.from_dict(data.get("budgets", {}))
            kwargs["optimization"] = Optimization.from_dict(data.get("optimization", {}))
        except _InvalidKey as error:
            raise ProfileError(f"{source}: {error}") from None
        return cls(**kwargs, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The profile as JSON-able values, every default filled in, without ``source``.

        This is what ``edgeml profiles show --json`` prints and what a bundle manifest embeds;
        ``HardwareProfile.from_dict(profile.to_dict())`` gives an equal profile back.
        """
        return {
            "name": self.name,
            "description": self.description,
            "architecture": self.architecture,
            "execution_providers": list(self.execution_providers),
            "precisions": list(self.precisions),
            "max_opset": self.max_opset,
            "threads": self.threads,
            "graph_optimization_level": self.graph_optimization_level,
            "quantization": self.quantization.to_dict(),
            "tolerance": self.tolerance.to_dict(),
            "budgets": self.budgets.to_dict(),
            "optimization": self.optimization.to_dict(),
        }


# --- loading ------------------------------------------------------------------------------------


def _parse(text: bytes, source: str) -> HardwareProfile:
    try:
        document = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ProfileError(
            f"{source}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"{source}: invalid TOML: {error}") from None
    return HardwareProfile.from_dict(document, source=source)


def _is_path(name_or_path: str) -> bool:
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return name_or_path.lower().endswith(".toml") or any(s in name_or_path for s in separators)


def builtin_profile_names() -> list[str]:
    """The names of the profiles that ship with edgeml, sorted.

    Returns:
        Each built-in TOML file's stem.
    """
    return sorted(
        entry.name.removesuffix(".toml")
        for entry in files(BUILTIN_PACKAGE).iterdir()
        if entry.name.endswith(".toml") and entry.is_file()
    )


def _load_builtin(name: str) -> HardwareProfile:
    names = builtin_profile_names()
    if name not in names:
        raise ProfileError(
            f'unknown hardware profile "{name}"; built-in profiles: {", ".join(names)} '
            "(or give the path to a .toml file of your own)"
        )
    entry = files(BUILTIN_PACKAGE).joinpath(f"{name}.toml")
    source = str(entry)
    profile = _parse(entry.read_bytes(), source)
    if profile.name != name:
        raise ProfileError(
            f'{source}: key "name" must be "{name}" (the file\'s name) in a built-in profile, '
            f'got "{profile.name}"'
        )
    return profile


def _load_file(path_text: str) -> HardwareProfile:
    path = Path(path_text)
    if not path.exists():
        raise ProfileError(f"{path_text}: no such hardware profile file")
    if not path.is_file():
        raise ProfileError(f"{path_text}: is not a file")
    try:
        text = path.read_bytes()
    except OSError as error:
        raise ProfileError(f"{path_text}: cannot be read ({error.strerror})") from None
    return _parse(text, path_text)


def load_profile(name_or_path: str) -> HardwareProfile:
    """Load a built-in profile by name or a user's profile from a TOML file.

    A value that ends in ``.toml`` or holds a path separator is a file path; anything else is
    the name of a built-in profile.

    Args:
        name_or_path: ``raspberry-pi-4``, or ``./my-board.toml``.

    Returns:
        The validated profile, its ``source`` set to the file it came from.

    Raises:
        ProfileError: The file is missing or unreadable, the name is not a built-in profile
            (the message lists the known ones), the TOML does not parse (the message gives the
            line and column), or a key is unknown, missing or wrong (the message names it).
    """
    if _is_path(name_or_path):
        return _load_file(name_or_path)
    return _load_builtin(name_or_path)


def list_profiles() -> list[HardwareProfile]:
    """Load every built-in profile.

    Returns:
        The built-in profiles, sorted by name.

    Raises:
        ProfileError: A built-in profile is invalid (a packaging bug).
    """
    return sorted((_load_builtin(name) for name in builtin_profile_names()), key=lambda p: p.name)
