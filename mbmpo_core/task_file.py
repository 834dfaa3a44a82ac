"""A robot's task from a YAML file: what MB-MPO needs to know about a robot the simulator does not model.

    name: two_link_arm              # the task's name: policies carry it, controllers check it
    rate_hz: 20.0                   # control rate
    horizon: 100                    # steps per episode (a caller's horizon overrides it)
    joints: [shoulder, elbow]       # joints of the robot's sensor_msgs/JointState
    observation: [position, velocity]  # per joint, in this order: qpos.<joint>, then qvel.<joint> (effort.<joint>)
    extra_observations: []          # optional: names the robot publishes in joint_states that are no joint
    action:
      command: velocity             # position | velocity | effort: what the robot's forward command controller takes
      joints: [shoulder, elbow]     # action i commands this joint (the command array's order)
      low: [-1.0, -1.0]
      high: [1.0, 1.0]
    reward: arm_task:reward         # module:function; a module.py beside this file is found first
    done: arm_task:done             # optional (default: episodes end at the horizon only)
    position_obs: []                # optional: observation names the models and the policy must not take as input

The observation is ``[<field>.<joint> for field in observation for joint in joints] + extra_observations``, with
fields named ``qpos``, ``qvel``, ``effort`` (the controller reads them from JointState by name). The action names
are ``<command>.<joint>``; the task's ``joint_names`` (what a policy's metadata must match) are the commanded
joints. ``reward(obs [B, obs_dim], act [B, act_dim], next_obs [B, obs_dim]) -> [B]`` and ``done(next_obs) -> [B]``
must work on numpy arrays (the robot) and torch tensors (the learner's imagined rollouts); both are probed with
numpy when the file is loaded.

Loading a task file imports numpy, yaml and the reward module only: no simulator, no torch (a robot running such
a task never loads MuJoCo, gymnasium or torch). A bad file is a one-line :class:`TaskFileError` naming the file.
Task files resolve by path through :mod:`mbmpo_core.registry` (a name ending in ``.yaml`` or ``.yml``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

SUFFIXES = (".yaml", ".yml")
FIELDS = {"position": "qpos", "velocity": "qvel", "effort": "effort"}
COMMANDS = ("position", "velocity", "effort")
REQUIRED = ("name", "rate_hz", "horizon", "joints", "observation", "action", "reward")
OPTIONAL = ("extra_observations", "done", "position_obs")
ACTION_KEYS = ("command", "joints", "low", "high")


class TaskFileError(ValueError):
    """A task file that cannot describe a task; the message is one line naming the file."""


@dataclass(frozen=True, eq=False)
class FileTask:
    """A task read from a task file (see module docstring); the :class:`mbmpo_core.task.TaskSpec` fields a robot
    and the learner need. It has no simulator: :meth:`make_env` and :meth:`sample_initial_obs` raise."""

    name: str
    horizon: int
    dt: float
    obs_names: list[str]
    act_names: list[str]
    joint_names: list[str]
    action_low: np.ndarray
    action_high: np.ndarray
    command: str
    source: Path
    reward_fn: Callable[..., Any] = field(repr=False)
    done_fn: Callable[..., Any] | None = field(repr=False)
    position_obs: tuple[int, ...] = ()

    @property
    def obs_dim(self) -> int:
        return len(self.obs_names)

    @property
    def act_dim(self) -> int:
        return len(self.act_names)

    def reward(self, obs: Any, act: Any, next_obs: Any) -> Any:
        """``[B]`` rewards of ``obs [B, obs_dim] --act [B, act_dim]--> next_obs``; numpy or torch, same out."""
        return self.reward_fn(obs, act, next_obs)

    def done(self, next_obs: Any) -> Any:
        """``[B]`` termination mask; all False without a ``done`` function (episodes end at the horizon)."""
        if self.done_fn is not None:
            return self.done_fn(next_obs)
        if isinstance(next_obs, np.ndarray):
            return np.zeros(next_obs.shape[:-1], dtype=bool)
        return next_obs.new_zeros(next_obs.shape[:-1]).bool()  # a torch tensor: same device, no torch import

    def make_env(self, seed: int = 0, perturbation: Mapping[str, Any] | None = None) -> Any:
        raise NotImplementedError(f"task {self.name} ({self.source}) is a real robot: there is no simulator to build")

    def sample_initial_obs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError(f"task {self.name} ({self.source}) is a real robot: start states come from its "
                                  "recorded episodes")


def is_task_file(name: str) -> bool:
    """True for a task name that is a task file path (ends in .yaml or .yml)."""
    return name.endswith(SUFFIXES)


def load_task_file(path: str | Path, horizon: int | None = None) -> FileTask:
    """The task of the file ``path``; ``horizon`` (if given) overrides the file's. Raises :class:`TaskFileError`."""
    path = Path(path)
    raw = _read(path)
    spec = _Spec(path, raw)
    name = spec.string("name")
    rate = spec.number("rate_hz", positive=True)
    file_horizon = spec.integer("horizon")
    joints = spec.names("joints", raw["joints"])
    fields = spec.names("observation", raw["observation"])
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise spec.error("observation", f"fields must be among {', '.join(FIELDS)}, got {unknown}")
    obs_names = [f"{FIELDS[f]}.{j}" for f in fields for j in joints]
    obs_names += spec.names("extra_observations", raw.get("extra_observations", []), allow_empty=True)
    if len(set(obs_names)) != len(obs_names):
        raise spec.error("extra_observations", "repeat an observation name")
    command, act_joints, low, high = _action(spec, raw["action"], joints)
    position_names = spec.names("position_obs", raw.get("position_obs", []), allow_empty=True)
    missing = [n for n in position_names if n not in obs_names]
    if missing:
        raise spec.error("position_obs", f"names {missing} are not observations")
    reward_fn = _function(spec, "reward")
    done_fn = _function(spec, "done") if raw.get("done") else None
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
        raise TaskFileError(f"{path}: horizon must be a positive int, got {horizon!r}")
    task = FileTask(
        name=name, horizon=file_horizon if horizon is None else horizon, dt=1.0 / rate, obs_names=obs_names,
        act_names=[f"{command}.{j}" for j in act_joints], joint_names=act_joints, action_low=low, action_high=high,
        command=command, source=path, reward_fn=reward_fn, done_fn=done_fn,
        position_obs=tuple(obs_names.index(n) for n in position_names),
    )
    _probe(spec, task)
    return task


# ---------------------------------------------------------------------------------------------- parsing
def _read(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TaskFileError(f"task file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise TaskFileError(f"task file {path}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise TaskFileError(f"task file {path}: expected a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(REQUIRED) - set(OPTIONAL))
    missing = [k for k in REQUIRED if k not in raw]
    if unknown or missing:
        raise TaskFileError(f"task file {path}: " + "; ".join(
            ([f"unknown keys {unknown} (known: {', '.join(REQUIRED + OPTIONAL)})"] if unknown else [])
            + ([f"missing keys {missing}"] if missing else [])))
    return raw


@dataclass(frozen=True)
class _Spec:
    """Typed reads of a task file's keys, each failing with one line naming the file and the key."""

    path: Path
    raw: dict[str, Any]

    def error(self, key: str, reason: str) -> TaskFileError:
        return TaskFileError(f"task file {self.path}: {key}: {reason}".replace("\n", " "))

    def string(self, key: str) -> str:
        value = self.raw[key]
        if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
            raise self.error(key, f"must be a name without spaces, got {value!r}")
        return value

    def number(self, key: str, positive: bool = False) -> float:
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or (
                positive and value <= 0):
            raise self.error(key, f"must be a {'positive ' if positive else ''}number, got {value!r}")
        return float(value)

    def integer(self, key: str) -> int:
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(key, f"must be a positive integer, got {value!r}")
        return value

    def names(self, key: str, value: Any, allow_empty: bool = False) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v and " " not in v for v in value):
            raise self.error(key, f"must be a list of names, got {value!r}")
        if not value and not allow_empty:
            raise self.error(key, "must not be empty")
        if len(set(value)) != len(value):
            raise self.error(key, f"repeats a name: {value}")
        return list(value)

    def bounds(self, key: str, value: Any, n: int) -> np.ndarray:
        array = np.asarray(value, dtype=np.float64) if _numbers(value) else None
        if array is None or array.shape != (n,) or not np.isfinite(array).all():
            raise self.error(key, f"must be {n} finite numbers (one per commanded joint), got {value!r}")
        return array


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)


def _action(spec: _Spec, raw: Any, joints: list[str]) -> tuple[str, list[str], np.ndarray, np.ndarray]:
    if not isinstance(raw, dict) or set(raw) != set(ACTION_KEYS):
        raise spec.error("action", f"must have exactly the keys {', '.join(ACTION_KEYS)}, got {raw!r}")
    command = raw["command"]
    if command not in COMMANDS:
        raise spec.error("action.command", f"must be one of {', '.join(COMMANDS)}, got {command!r}")
    act_joints = spec.names("action.joints", raw["joints"])
    strangers = [j for j in act_joints if j not in joints]
    if strangers:
        raise spec.error("action.joints", f"{strangers} are not among joints {joints}")
    low = spec.bounds("action.low", raw["low"], len(act_joints))
    high = spec.bounds("action.high", raw["high"], len(act_joints))
    if not np.all(low < high):
        raise spec.error("action", "low must be below high for every joint")
    return command, act_joints, low, high


# ---------------------------------------------------------------------------------------------- functions
def _function(spec: _Spec, key: str) -> Callable[..., Any]:
    """``module:function`` of the file: ``module.py`` beside the file first, else an importable module."""
    text = spec.raw[key]
    module_name, _, attr = text.partition(":") if isinstance(text, str) else ("", "", "")
    if not module_name or not attr:
        raise spec.error(key, f"must be 'module:function', got {text!r}")
    try:
        module = _import(spec.path.parent, module_name)
        target: Any = module
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, SyntaxError) as exc:
        raise spec.error(key, f"{text} cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]})") \
            from None
    if not callable(target):
        raise spec.error(key, f"{text} is not callable")
    return target


def _import(folder: Path, module_name: str) -> Any:
    """``folder/<module_name>.py`` under a name unique to its path (two robots' ``task.py`` do not collide), else
    ``importlib.import_module``."""
    beside = folder / (module_name.replace(".", "/") + ".py")
    if not beside.is_file():
        return importlib.import_module(module_name)
    unique = "mbmpo_task_file_" + hashlib.sha256(str(beside.resolve()).encode()).hexdigest()[:12]
    if unique in sys.modules:
        return sys.modules[unique]
    loader_spec = importlib.util.spec_from_file_location(unique, beside)
    if loader_spec is None or loader_spec.loader is None:
        raise ImportError(f"cannot load {beside}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[unique] = module
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[unique]
        raise
    return module


def _probe(spec: _Spec, task: FileTask) -> None:
    """Call reward and done on a numpy batch of 2: shapes ``[2]`` and finite rewards, or one line saying why."""
    obs = np.zeros((2, task.obs_dim))
    act = np.tile((task.action_low + task.action_high) / 2, (2, 1))
    try:
        reward = np.asarray(task.reward(obs, act, obs), dtype=np.float64)
        done = np.asarray(task.done(obs))
    except Exception as exc:
        raise spec.error("reward", f"reward/done fail on numpy arrays ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if reward.shape != (2,) or not np.isfinite(reward).all():
        raise spec.error("reward", f"must return [B] finite rewards for [B, obs_dim] inputs, got shape {reward.shape}")
    if done.shape != (2,) or done.dtype != bool:
        raise spec.error("done", f"must return a [B] bool mask, got shape {done.shape} dtype {done.dtype}")
