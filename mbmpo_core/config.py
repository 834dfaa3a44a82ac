"""Typed run configuration loaded from YAML.

Every section is a frozen dataclass whose defaults are the paper's (Clavera et al., 2018), with two measured
shortcuts of the outer step that do not change its result (``meta.kl_hessian``, ``meta.hvp_subsample``); they equal
``config/default.yaml``. ``config/cpu.yaml`` is the CPU profile (smaller models and meta-batch) that a run without a
config gets on a machine without CUDA (:mod:`mbmpo_core.runtime`). A YAML file
may set any subset of the keys; an unknown key or a value of the wrong type is a ``ConfigError`` whose
message is one line naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message is one line."""


@dataclass(frozen=True)
class EnsembleConfig:
    num_models: int = 5
    hidden_sizes: tuple[int, ...] = (512, 512)
    activation: str = "relu"
    lr: float = 1e-3
    batch_size: int = 500
    valid_fraction: float = 0.2
    patience: int = 5  # a model stops after this many epochs without a relative improvement_threshold gain
    improvement_threshold: float = 0.01
    max_epochs: int = 50
    capacity: int = 100_000
    # Loss weight member k gives rows of physics group g with g % num_models == k (other rows: 1). 1 = every
    # member fits all data alike (the paper); > 1 makes members differ along the physics the data came from.
    member_emphasis: float = 1.0


@dataclass(frozen=True)
class PolicyConfig:
    hidden_sizes: tuple[int, ...] = (32, 32)
    init_std: float = 1.0


@dataclass(frozen=True)
class MetaConfig:
    algo: str = "trpo"  # "trpo" (MAML-TRPO) or "promp"
    inner_lr: float = 1e-3  # 0 gives ME-TRPO
    learn_inner_lr: bool = False
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15
    meta_batch_size: int = 20
    rollouts_per_task: int = 50
    meta_steps: int = 30
    gamma: float = 0.99
    gae_lambda: float = 1.0
    real_start_fraction: float = 0.0  # share of imagined rollouts that start from stored real states
    obs_clip: float = 1e4
    reward_clip: float = 1e4
    first_order: bool = False  # outer gradient without differentiating through the inner step (FO-MAML)
    # Outer KL Hessian at J = I ("first_order") or through the inner step ("exact"), on a share of every rollout's
    # steps: measured against the exact full-batch step (benchmarks/outer_step.py, HalfCheetah, M=20 x 10 x 200):
    # CG direction cos 0.998 (alpha 1e-3; 0.996 at 1e-2), same surrogate gain and KL, 6-7x less CPU time.
    kl_hessian: str = "first_order"
    hvp_subsample: float = 0.2  # share of every rollout's steps the KL Hessian-vector products use (1 = all)
    inner_surrogate: str = "ratio"  # "ratio" (importance weighted) or "log_prob"; same inner step at theta_old
    clip_eps: float = 0.3  # ProMP: likelihood-ratio clip
    target_inner_kl: float = 0.01  # ProMP: inner KL the adaptive penalty aims at
    init_inner_kl_coef: float = 5e-4  # ProMP: initial inner-KL penalty
    adapt_inner_kl_coef: bool = True  # ProMP: halve / double the penalty around target_inner_kl
    promp_lr: float = 1e-3  # ProMP: Adam step size of the outer update
    promp_steps: int = 5  # ProMP: Adam steps per outer update
    # > 0: the scalar inner step size starts at inner_lr and is rescaled after every meta-step (at most 2x, within
    # [1e-6, 10]) so the true inner KL, KL(pi_theta || pi_theta'_m) on pre-update samples, meets this; 0: fixed.
    # Not ProMP's target_inner_kl (its penalty on the pre-update policy's change). Excludes learn_inner_lr. Set
    # kl_hessian: exact with it: at the alpha a 0.01-0.02 target gives a fresh HalfCheetah policy (0.7-1.0),
    # first_order's CG direction has cos 0.67-0.72 with exact, exact on hvp_subsample 0.2 0.94-0.97 (outer_step.py).
    inner_kl_target: float = 0.0


@dataclass(frozen=True)
class LoopConfig:
    random_steps: int = 5000
    steps_per_iter: int = 4000
    total_steps: int = 100_000
    eval_episodes: int = 1  # real evaluation episodes per task (env) and policy set; the paper: one rollout per task
    horizon: int = 200


@dataclass(frozen=True)
class RandomizeConfig:
    """Domain randomisation of the simulated training loop's collection envs: each ``*_range`` (``[lo, hi]``;
    empty = that key off) scales the masses / joint damping / friction / actuator gears (``sim/perturb.py``) by a
    factor drawn uniformly from it: one factor for the whole robot per physics draw (like the evaluation
    perturbations), or with ``per_object`` one per body / dof / geom / actuator. Physics draw d, seeded by
    (seed, d), is fixed for the run; collection env m uses draw m % ensemble.num_models. Evaluation envs stay
    nominal."""

    mass_scale_range: tuple[float, ...] = ()
    damping_scale_range: tuple[float, ...] = ()
    friction_scale_range: tuple[float, ...] = ()
    gear_scale_range: tuple[float, ...] = ()
    per_object: bool = False

    def ranges(self) -> dict[str, list[float]]:
        """The set ``*_range`` keys and their ``[lo, hi]`` (``{}``: randomisation off)."""
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name.endswith("_range") and getattr(self, f.name)}


@dataclass(frozen=True)
class Config:
    task: str = "HalfCheetah-v5"
    seed: int = 0
    device: str = "cpu"
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    randomize: RandomizeConfig = field(default_factory=RandomizeConfig)


T = TypeVar("T")


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Read ``path`` (YAML; None = defaults) and apply top-level ``overrides`` (None values are ignored)."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        raw = _read_yaml(Path(path))
    for key, value in overrides.items():
        if value is not None:
            raw[key] = value
    config = _build(Config, raw, source, prefix="")
    _check_ranges(config, source)
    return config


# (dotted key, predicate, what it must be): the values a well-typed file can still get wrong.
_RANGES: list[tuple[str, Any, str]] = [
    ("device", lambda v: v == "cpu" or v.startswith("cuda"), "'cpu' or 'cuda[:N]'"),
    ("ensemble.num_models", lambda v: v >= 1, ">= 1"),
    ("ensemble.hidden_sizes", lambda v: len(v) >= 1 and min(v) >= 1, "a non-empty list of positive ints"),
    ("ensemble.activation", lambda v: v in ("relu", "tanh", "swish"), "relu, tanh or swish"),
    ("ensemble.lr", lambda v: v > 0, "> 0"),
    ("ensemble.batch_size", lambda v: v >= 1, ">= 1"),
    ("ensemble.valid_fraction", lambda v: 0 < v < 1, "in (0, 1)"),
    ("ensemble.patience", lambda v: v >= 1, ">= 1"),
    ("ensemble.improvement_threshold", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("ensemble.max_epochs", lambda v: v >= 1, ">= 1"),
    ("ensemble.capacity", lambda v: v >= 1, ">= 1"),
    ("ensemble.member_emphasis", lambda v: 0 < v < math.inf, "finite and > 0"),
    ("policy.hidden_sizes", lambda v: len(v) >= 1 and min(v) >= 1, "a non-empty list of positive ints"),
    ("policy.init_std", lambda v: v > 0, "> 0"),
    ("meta.algo", lambda v: v in ("trpo", "promp"), "trpo or promp"),
    ("meta.inner_lr", lambda v: v >= 0, ">= 0"),
    ("meta.max_kl", lambda v: v > 0, "> 0"),
    ("meta.cg_iters", lambda v: v >= 1, ">= 1"),
    ("meta.cg_damping", lambda v: v >= 0, ">= 0"),
    ("meta.max_backtracks", lambda v: v >= 1, ">= 1"),
    ("meta.backtrack_ratio", lambda v: 0 < v < 1, "in (0, 1)"),
    ("meta.meta_batch_size", lambda v: v >= 1, ">= 1"),
    ("meta.rollouts_per_task", lambda v: v >= 1, ">= 1"),
    ("meta.meta_steps", lambda v: v >= 0, ">= 0"),
    ("meta.gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("meta.gae_lambda", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("meta.real_start_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("meta.obs_clip", lambda v: v > 0, "> 0"),
    ("meta.reward_clip", lambda v: v > 0, "> 0"),
    ("meta.kl_hessian", lambda v: v in ("exact", "first_order"), "exact or first_order"),
    ("meta.hvp_subsample", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("meta.inner_surrogate", lambda v: v in ("ratio", "log_prob"), "ratio or log_prob"),
    ("meta.clip_eps", lambda v: 0 < v < 1, "in (0, 1)"),
    ("meta.target_inner_kl", lambda v: v > 0, "> 0"),
    ("meta.init_inner_kl_coef", lambda v: v >= 0, ">= 0"),
    ("meta.promp_lr", lambda v: v > 0, "> 0"),
    ("meta.promp_steps", lambda v: v >= 1, ">= 1"),
    ("meta.inner_kl_target", lambda v: v >= 0, ">= 0"),
    ("loop.random_steps", lambda v: v >= 1, ">= 1"),
    ("loop.steps_per_iter", lambda v: v >= 1, ">= 1"),
    ("loop.total_steps", lambda v: v >= 1, ">= 1"),
    ("loop.eval_episodes", lambda v: v >= 1, ">= 1"),
    ("loop.horizon", lambda v: v >= 1, ">= 1"),
    *((f"randomize.{key}", lambda v: not v or (len(v) == 2 and 0 < v[0] <= v[1] < math.inf),
       "empty or [low, high] with 0 < low <= high (finite)")
      for key in ("mass_scale_range", "damping_scale_range", "friction_scale_range", "gear_scale_range")),
]


def _check_ranges(config: Config, source: str) -> None:
    for dotted, ok, must in _RANGES:
        value: Any = config
        for part in dotted.split("."):
            value = getattr(value, part)
        if not ok(value):
            raise ConfigError(f"{source}: '{dotted}' must be {must}, got {value!r}")
    if config.meta.meta_batch_size % config.ensemble.num_models:
        raise ConfigError(
            f"{source}: 'meta.meta_batch_size' ({config.meta.meta_batch_size}) must be a multiple of "
            f"'ensemble.num_models' ({config.ensemble.num_models}) so every model gets the same number of tasks"
        )
    if config.meta.inner_kl_target > 0 and (config.meta.learn_inner_lr or config.meta.inner_lr == 0):
        raise ConfigError(f"{source}: 'meta.inner_kl_target' sets the inner step size from a fixed 'meta.inner_lr' "
                          f"> 0; it cannot be combined with 'meta.learn_inner_lr' or 'meta.inner_lr: 0'")


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain YAML-safe dict (tuples become lists) of a config."""
    return _plain(dataclasses.asdict(config))


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _build(cls: type[T], raw: dict[str, Any], source: str, prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{dotted}' (valid: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(hints[key], value, source, dotted)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, source: str, dotted: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{dotted}' must be a mapping, got {type(value).__name__}")
        return _build(hint, value, source, prefix=f"{dotted}.")  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{dotted}' must be a list of {item.__name__}, got {value!r}")
        return tuple(_coerce(item, v, source, dotted) for v in value)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{source}: '{dotted}' has an unsupported union type")  # not used by Config
    return _scalar(hint, value, source, dotted)


def _scalar(hint: type, value: Any, source: str, dotted: str) -> Any:
    # bool is an int in Python; a YAML "true" for an int field is a mistake, not a 1.
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        # PyYAML reads "1e-3" (no dot) as a string; accept what float() accepts.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(f"{source}: '{dotted}' must be {hint.__name__}, got {value!r}")
    return value
