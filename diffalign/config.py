"""Typed configuration: dataclass sections, TOML recipes, ``--set section.key=value`` overrides.

A config is a set of named *sections*; each section is a dataclass registered with
:func:`register_section`. The core sections (``run``, ``model``, ``reward``, ``prompts``,
``sampling``, ``train``, ``advantage``, ``eval``) live here; every trainer registers its own
section (``[ddpo]``, ``[awm]``, later ``[dpo]``, ``[kto]`` ...) next to its code, so adding a trainer
never touches this loader::

    @register_section("mytrainer")
    @dataclass
    class MyTrainerConfig:
        beta: float = 0.1

Loading validates everything: an unknown section or key, or a value of the wrong type, raises
:class:`ConfigError` naming the key and listing the allowed keys or the expected type. Sections may
define ``validate(self)`` for cross-field checks (raise :class:`ConfigError` there too).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from diffalign.errors import MAX_STEPS, UserError, read_toml

__all__ = [
    "Config",
    "ConfigError",
    "SECTIONS",
    "load_config",
    "parse_override",
    "register_section",
    "to_toml",
]


class ConfigError(UserError):
    """A bad recipe or override; the message names the offending key."""


#: section name -> dataclass
SECTIONS: dict[str, type] = {}
#: modules imported before reporting an unknown section (they register trainer sections)
SECTION_PROVIDERS: list[str] = ["diffalign.training.algorithms", "diffalign.preferences"]


def register_section(name: str):
    """Class decorator registering a dataclass as the config section ``[name]``."""

    def add(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"config section {name!r}: {cls.__name__} is not a dataclass")
        SECTIONS[name] = cls
        return cls

    return add


def _load_providers() -> None:
    for module in SECTION_PROVIDERS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # provider not installed: nothing to register
            if err.name is None or not module.startswith(err.name):
                raise


# ------------------------------------------------------------------------------------------ core
@register_section("run")
@dataclass
class RunConfig:
    """Where and how a run happens."""

    name: str = "run"
    #: the run folder is ``output_dir/name`` unless ``diffalign train --out DIR`` names it
    output_dir: str = "runs"
    #: a registered algorithm (ddpo, flow_grpo, awm, ...); the typed trainers set it themselves
    algorithm: str = ""
    seed: int = 0
    epochs: int = 100
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    cpu: bool = False
    #: accelerate trackers; those not installed are skipped with a warning (metrics.jsonl is always written)
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    #: consecutive non-finite optimizer steps tolerated before training stops
    max_bad_steps: int = 3
    progress: bool = True

    def validate(self) -> None:
        _positive(self, "run", ("epochs", "keep_checkpoints", "max_bad_steps"))
        _non_negative(self, "run", ("checkpoint_every", "seed"))


@register_section("model")
@dataclass
class ModelConfig:
    """The model being aligned and how it is trained (LoRA or full)."""

    #: hub id, local folder or shipped model name (``shapes-sd``, ``shapes-flow``)
    source: str = "shapes-sd"
    lora: bool = True
    lora_rank: int = 4
    lora_alpha: float | None = None
    #: empty: the adapter's default attention projections
    lora_targets: list[str] = field(default_factory=list)
    lora_init: str = "gaussian"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        _positive(self, "model", ("lora_rank",))


@register_section("reward")
@dataclass
class RewardConfig:
    """Reward: a scorer spec for ``diffalign.scorers.load`` (weighted sums as ``"a:0.5,b:0.5"``)."""

    spec: str = "jpeg_compressibility"
    options: dict[str, Any] = field(default_factory=dict)


@register_section("prompts")
@dataclass
class PromptsConfig:
    """Training and held-out prompts: a named prompt set, a ``.txt``/``.jsonl`` file or an inline list."""

    train: str = "shapes"
    train_list: list[str] = field(default_factory=list)
    #: empty: a draw from the training source with ``eval.seed`` (the same for every ``run.seed``)
    eval: str = ""
    eval_list: list[str] = field(default_factory=list)
    num_eval: int = 16
    #: options for the named source (e.g. ShapesWorld ``tasks``)
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        _positive(self, "prompts", ("num_eval",))


@register_section("sampling")
@dataclass
class SamplingConfig:
    """Rollouts collected each epoch (per process)."""

    steps: int = 50
    guidance_scale: float = 5.0
    #: False: the deterministic sampler (ODE / DDIM η=0); only AWM accepts it
    stochastic: bool = True
    eta: float = 1.0
    noise_level: float = 0.7
    negative_prompt: str = ""
    batch_size: int = 8
    batches_per_epoch: int = 4
    #: images per prompt; a group spans processes (Flow-GRPO / AWM), 1 for DDPO
    group_size: int = 1
    height: int | None = None
    width: int | None = None
    #: video models: frames per sample (empty: the pipeline's default)
    num_frames: int | None = None
    #: video models: frames per second of the MP4s written (samples, eval grids, preference media)
    fps: int = 8
    #: Flow-GRPO-Fast: only this many consecutive steps are stochastic (and trained), the rest
    #: deterministic; the window's start is drawn each epoch inside ``sde_window_range``. 0: every step
    sde_window: int = 0
    #: ``[lo, hi]``: the window lies within steps ``lo .. hi-1``; empty: the first half of the schedule,
    #: ``[0, steps // 2]`` (Flow-GRPO-Fast), widened to ``[0, sde_window]`` when the window is longer
    sde_window_range: list[int] = field(default_factory=list)
    #: every sample of a group starts from the same initial noise (Flow-GRPO's ``same_latent``)
    same_latent: bool = False

    def window_range(self) -> tuple[int, int]:
        """``(lo, hi)`` of the SDE window's placement."""
        lo, hi = self.sde_window_range if self.sde_window_range else (0, max(self.steps // 2, self.sde_window))
        return int(lo), int(hi)

    def validate(self) -> None:
        _positive(self, "sampling", ("steps", "batch_size", "batches_per_epoch", "group_size"))
        _at_most(self, "sampling", {"steps": MAX_STEPS})
        _non_negative(self, "sampling", ("sde_window",))
        _positive(self, "sampling", ("fps",))
        for key in ("height", "width", "num_frames"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"sampling.{key} must be positive, got {getattr(self, key)}")
        if self.sde_window_range and len(self.sde_window_range) != 2:
            raise ConfigError(f"sampling.sde_window_range must be [lo, hi], got {self.sde_window_range}")
        if self.sde_window:
            if not self.stochastic:
                raise ConfigError("sampling.sde_window needs sampling.stochastic = true (the window is where noise is injected)")
            lo, hi = self.window_range()
            if not 0 <= lo < hi <= self.steps or hi - lo < self.sde_window:
                raise ConfigError(
                    f"sampling.sde_window = {self.sde_window} does not fit sampling.sde_window_range = [{lo}, {hi}] "
                    f"within sampling.steps = {self.steps} (need 0 <= lo < hi <= steps and hi - lo >= sde_window)"
                )
        if self.same_latent and not self.stochastic:
            raise ConfigError("sampling.same_latent needs sampling.stochastic = true: deterministic samples of a group would be identical")


@register_section("train")
@dataclass
class TrainConfig:
    """Optimisation. Gradient accumulation is derived from these and the algorithm (and printed)."""

    batch_size: int = 4
    #: optimizer steps per pass over the epoch's samples (AWM always takes one per epoch)
    updates_per_epoch: int = 1
    inner_epochs: int = 1
    learning_rate: float = 3e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    #: exponential moving average of the trainable weights, used for evaluation
    ema: bool = False
    ema_decay: float = 0.9
    ema_every: int = 8

    def validate(self) -> None:
        _positive(self, "train", ("batch_size", "updates_per_epoch", "inner_epochs", "ema_every"))
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")


@register_section("advantage")
@dataclass
class AdvantageConfig:
    """How rewards become advantages (see :mod:`diffalign.training.advantages`)."""

    #: per_prompt: DDPO history tracker; group: Flow-GRPO/AWM group-relative; batch: whole-batch normalisation
    mode: Literal["per_prompt", "group", "batch"] = "per_prompt"
    buffer_size: int = 16
    min_count: int = 16
    #: group mode: std over the whole batch (True, the Flow-GRPO/AWM default) or per group
    global_std: bool = True
    clip_max: float = 5.0
    #: drop samples whose advantage is 0 before training (Flow-GRPO's filter; not for AWM)
    drop_zero: bool = False

    def validate(self) -> None:
        _positive(self, "advantage", ("buffer_size", "min_count"))
        if self.clip_max <= 0:
            raise ConfigError(f"advantage.clip_max must be positive, got {self.clip_max}")


@register_section("eval")
@dataclass
class EvalConfig:
    """Periodic evaluation on held-out prompts: mean reward with a fixed noise seed."""

    every: int = 10
    at_start: bool = True
    steps: int = 20
    guidance_scale: float = 5.0
    stochastic: bool = False
    batch_size: int = 8
    use_ema: bool = True
    grid_images: int = 16
    seed: int = 1234
    #: video models: frames per evaluation sample (empty: ``sampling.num_frames``)
    num_frames: int | None = None
    #: video models: frames per second of the evaluation MP4 (empty: ``sampling.fps``)
    fps: int | None = None
    #: a scorer spec scored beside the reward at every evaluation and never optimised ("" = none), e.g. "shapes"
    gold: str = ""
    gold_options: dict[str, Any] = field(default_factory=dict)
    #: reward hacking = the reward rose by more than the tolerance while the gold fell by more than it,
    #: between the first and the last of this many evaluations (diffalign.training.gold)
    hacking_window: int = 3
    hacking_tolerance: float = 0.0

    def validate(self) -> None:
        _positive(self, "eval", ("steps", "batch_size"))
        for key in ("num_frames", "fps"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"eval.{key} must be positive, got {getattr(self, key)}")
        _at_most(self, "eval", {"steps": MAX_STEPS})
        _non_negative(self, "eval", ("every", "grid_images"))
        if self.hacking_window < 2:
            raise ConfigError(f"eval.hacking_window must span at least 2 evaluations, got {self.hacking_window}")
        if not math.isfinite(self.hacking_tolerance) or self.hacking_tolerance < 0:
            raise ConfigError(f"eval.hacking_tolerance must be a finite number >= 0, got {self.hacking_tolerance}")


def _positive(section: Any, name: str, keys: Sequence[str]) -> None:
    for key in keys:
        value = getattr(section, key)
        if value <= 0:
            raise ConfigError(f"{name}.{key} must be positive, got {value}")


def _at_most(section: Any, name: str, limits: Mapping[str, int]) -> None:
    for key, limit in limits.items():
        value = getattr(section, key)
        if value > limit:
            raise ConfigError(f"{name}.{key} must be <= {limit}, got {value}")


def _non_negative(section: Any, name: str, keys: Sequence[str]) -> None:
    for key in keys:
        value = getattr(section, key)
        if value < 0:
            raise ConfigError(f"{name}.{key} must be >= 0, got {value}")


# ------------------------------------------------------------------------------------- container
class Config:
    """Sections by name: ``config.train.learning_rate``; ``config.section("awm")`` for a trainer's own."""

    def __init__(self, sections: Mapping[str, Any]):
        object.__setattr__(self, "_sections", dict(sections))

    def __getattr__(self, name: str) -> Any:
        sections = object.__getattribute__(self, "_sections")
        if name in sections:
            return sections[name]
        raise AttributeError(f"config has no section {name!r}; sections: {', '.join(sections)}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("set values through load_config(..., overrides=...) so they are validated")

    def section(self, name: str) -> Any:
        """The section ``[name]``, with defaults if the recipe did not give it."""
        sections = object.__getattribute__(self, "_sections")
        if name not in sections:
            if name not in SECTIONS:
                _load_providers()
            if name not in SECTIONS:
                raise ConfigError(f"unknown config section {name!r}; known: {', '.join(sorted(SECTIONS))}")
            sections[name] = SECTIONS[name]()
        return sections[name]

    @property
    def names(self) -> list[str]:
        return list(object.__getattribute__(self, "_sections"))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(value) for name, value in object.__getattribute__(self, "_sections").items()}

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` with lists/dicts as strings (for trackers' hparams)."""
        out: dict[str, Any] = {}
        for name, values in self.to_dict().items():
            for key, value in values.items():
                out[f"{name}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
        return out

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"


# ------------------------------------------------------------------------------------ type checks
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, from_text: bool) -> Any:
    """Check ``value`` against ``tp`` (and convert text from ``--set``); raise _Mismatch if it does not fit."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (from_text and str(value).lower() in ("none", "null"))):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, from_text)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if from_text and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        return [_coerce(v, inner, from_text) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, (str, int)):
            text = str(value).lower()
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and from_text:
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if from_text:
            return str(value)
        raise _Mismatch
    if isinstance(value, tp):
        return value
    raise _Mismatch


def _section_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _build_section(name: str, values: Mapping[str, Any], from_text: Mapping[str, bool]) -> Any:
    cls = SECTIONS[name]
    fields = _section_fields(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key {name}.{key}; allowed keys in [{name}]: {', '.join(fields)}")
        _check_finite(f"{name}.{key}", value)
        try:
            kwargs[key] = _coerce(value, fields[key], from_text.get(key, False))
        except _Mismatch:
            raise ConfigError(
                f"{name}.{key} = {value!r} has the wrong type: expected {_type_name(fields[key])}"
            ) from None
    section = cls(**kwargs)
    if hasattr(section, "validate"):
        section.validate()
    return section


#: integers beyond this come from a typo (``1e99``), not from a setting
MAX_INT = 2**63 - 1


def _check_finite(key: str, value: Any) -> None:
    """Refuse NaN and infinity in every float and absurd integers (``--set sampling.steps=1e99``)."""
    values = value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{key} = {value!r} must be a finite number")
        if isinstance(item, (int, float)) and not isinstance(item, bool) and abs(item) > MAX_INT:
            raise ConfigError(f"{key} = {value!r} is out of range (at most {MAX_INT})")


# --------------------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[str, str, Any]:
    """``"section.key=value"`` -> ``(section, key, value)``; the value is read as TOML when it parses
    (``1e-4``, ``true``, ``[1, 2]``, ``"x"``) and kept as raw text otherwise (``shapes-sd``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    dotted = dotted.strip()
    if dotted.count(".") != 1 or not all(dotted.split(".")):
        raise ConfigError(f"override key {dotted!r} must look like section.key (e.g. train.learning_rate)")
    section, key = dotted.split(".")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


# ------------------------------------------------------------------------------------------ loading
def load_config(
    source: str | Path | Mapping[str, Any] | Config | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> Config:
    """Build a validated :class:`Config` from a TOML file / dict / Config and ``--set`` style overrides.

    ``overrides`` is a list of ``"section.key=value"`` strings (coerced to the field's type) or a
    mapping ``{"section.key": value}`` (type-checked as given).
    """
    if isinstance(source, Config):
        data: dict[str, dict[str, Any]] = source.to_dict()
    elif source is None:
        data = {}
    elif isinstance(source, Mapping):
        data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in source.items()}
    else:
        try:
            data = read_toml(source, "recipe")
        except UserError as err:  # the config's own error type, same message
            raise ConfigError(str(err)) from None
    from_text: dict[str, dict[str, bool]] = {}
    items = (
        [parse_override(o) + (True,) for o in overrides]
        if not isinstance(overrides, Mapping)
        else [(*_split_key(k), v, False) for k, v in overrides.items()]
    )
    for section, key, value, is_text in items:
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{section} is a value, not a section")
        table[key] = value
        from_text.setdefault(section, {})[key] = is_text
    sections = {}
    for name, values in data.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"top-level key {name!r} must be a [section]; known sections: {', '.join(sorted(SECTIONS))}")
        if name not in SECTIONS:
            _load_providers()
        if name not in SECTIONS:
            raise ConfigError(f"unknown config section [{name}]; known sections: {', '.join(sorted(SECTIONS))}")
        sections[name] = _build_section(name, values, from_text.get(name, {}))
    core = ("run", "model", "reward", "prompts", "sampling", "train", "advantage", "eval")
    for name in core:
        sections.setdefault(name, SECTIONS[name]())
    ordered = {name: sections[name] for name in core}
    ordered.update({k: v for k, v in sections.items() if k not in ordered})
    return Config(ordered)


def _split_key(dotted: str) -> tuple[str, str]:
    if dotted.count(".") != 1:
        raise ConfigError(f"override key {dotted!r} must look like section.key")
    section, key = dotted.split(".")
    return section, key


# ------------------------------------------------------------------------------------------ writing
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def to_toml(config: Config) -> str:
    """Serialise a config (``None`` values are left out: absent means default)."""
    lines = []
    for name, values in config.to_dict().items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
