"""The ROS parameters of the three nodes, as tables, and one way to declare them with descriptors.

Each :class:`ParamSpec` gives a parameter's name, default (which fixes its type), description, the range or the
values it may take, and whether it is read-only. The nodes read every parameter once, when they start, and
apply no change made later: so every parameter here is read-only, and ``ros2 param set`` answers "read-only"
instead of silently doing nothing. Restart the node (or relaunch) to change one.

The defaults equal the package's parameter files (``config/controller.yaml``, ``sim_robot.yaml``,
``learner.yaml``; a test holds them together), so a node started with ``ros2 run`` and one started by a launch
file behave the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node

ParamValue = bool | int | float | str | list[str]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: ``low``/``high`` bound a number (inclusive), ``choices`` a string."""

    name: str
    default: ParamValue
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = True

    @property
    def ros_type(self) -> int:
        """The ``rcl_interfaces/ParameterType`` of the default."""
        return ros_type(self.default)

    def allowed(self) -> str:
        """The constraint in words ('' if none), e.g. ``>= 1``, ``in [0, 1]``, ``one of: random, zero``."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        if self.low is not None and self.high is not None:
            return f"in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f">= {self.low:g}"
        if self.high is not None:
            return f"<= {self.high:g}"
        return ""


def ros_type(value: ParamValue) -> int:
    """The ROS parameter type of a Python value (bool before int: ``True`` is an int too)."""
    if isinstance(value, bool):
        return ParameterType.PARAMETER_BOOL
    if isinstance(value, int):
        return ParameterType.PARAMETER_INTEGER
    if isinstance(value, float):
        return ParameterType.PARAMETER_DOUBLE
    if isinstance(value, str):
        return ParameterType.PARAMETER_STRING
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ParameterType.PARAMETER_STRING_ARRAY
    raise TypeError(f"no ROS parameter type for {value!r}")


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The descriptor ``ros2 param describe`` shows: type, description, range or choices, read-only."""
    desc = ParameterDescriptor(name=spec.name, type=spec.ros_type, description=spec.description,
                               read_only=spec.read_only, additional_constraints=spec.allowed())
    if spec.low is None and spec.high is None:
        return desc
    if spec.ros_type == ParameterType.PARAMETER_INTEGER:
        low = INT64_MIN if spec.low is None else int(spec.low)
        high = INT64_MAX if spec.high is None else int(spec.high)
        desc.integer_range = [IntegerRange(from_value=low, to_value=high, step=0)]
    elif spec.ros_type == ParameterType.PARAMETER_DOUBLE:
        low_f = -math.inf if spec.low is None else float(spec.low)
        high_f = math.inf if spec.high is None else float(spec.high)
        desc.floating_point_range = [FloatingPointRange(from_value=low_f, to_value=high_f, step=0.0)]
    else:
        raise TypeError(f"parameter {spec.name}: a range needs a number, not {spec.default!r}")
    return desc


def declare_parameters(node: Node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare ``specs`` on ``node`` and return their values (defaults, parameter files, ``-p`` overrides).

    A value of the wrong type, out of range or not among the choices raises ``ValueError`` with one line
    naming the parameter (a node's ``main`` prints it and exits with code 2).
    """
    values: dict[str, Any] = {}
    for spec in specs:
        try:
            value: Any = node.declare_parameter(spec.name, spec.default, descriptor(spec)).value
        except InvalidParameterTypeException as exc:
            reason = str(exc).splitlines()[0].removesuffix(f": {spec.name}")  # rclpy appends the name
            raise ValueError(f"parameter {spec.name}: {reason}") from None
        except InvalidParameterValueException:
            raise ValueError(f"parameter {spec.name} must be {spec.allowed()}") from None
        if spec.choices and value not in spec.choices:
            raise ValueError(f"parameter {spec.name} must be {spec.allowed()}, got {value!r}")
        values[spec.name] = value
    return values


CONTROLLER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("task", "InvertedPendulum-v5", "task name, resolved by mbmpo_core.registry (a MuJoCo task, an "
              "installed task entry point, 'package.module:factory', or a robot's task file .yaml)"),
    ParamSpec("horizon", 0, "steps per episode (then the robot's reset service is called); 0 = the task's own "
              "(a task file's horizon; 1000 for a MuJoCo task)", low=0),
    ParamSpec("rate_hz", 0.0, "control rate in Hz; 0 = the task's (1 / task.dt)", low=0.0),
    ParamSpec("warmup_policy", "hold", "what acts until the first policy arrives: hold (the hold action, nothing "
              "recorded: a deployed robot), random (uniform random actions, recorded: training's warm-up data) or "
              "zero (zero actions, recorded)", choices=("hold", "random", "zero")),
    ParamSpec("hold_mode", "zero", "what a hold commands: zero (no effort: torque or velocity commands) or position "
              "(the last measured position of each commanded joint: position commands)", choices=("zero", "position")),
    ParamSpec("action_rate_limit", 0.0, "max |change of an action| per tick; 0 = no limit", low=0.0),
    ParamSpec("obs_clip", 100.0, "clip observations to +-this before the policy; 0 = off", low=0.0),
    ParamSpec("state_timeout_s", 0.5, "no new joint state for this long -> hold", low=0.0),
    ParamSpec("reset_timeout_s", 2.0, "ask the robot's reset service again after this long without an answer",
              low=0.0),
    ParamSpec("batch_size", 200, "transitions per batch sent to the learner", low=1),
    ParamSpec("learner", False, "a learner trains on this robot's transitions: batches wait for it while it is "
              "away; false: batches go only to current subscribers, none kept"),
    ParamSpec("outbox_batches", 2000, "with learner: batches kept until the learner acknowledges them as stored "
              "(resent if it restarts or loses one; the oldest dropped beyond, counted)", low=1),
    ParamSpec("robot_id", "", "robot id in transitions and diagnostics; '' = the node's namespace"),
    ParamSpec("seed", 0, "seed of exploration noise and warm-up actions", low=0),
    ParamSpec("explore", True, "sample actions from the policy (the learner and adaptation need it) or act on "
              "its mean"),
    ParamSpec("adapt", True, "few-shot adaptation online (needs the policy's adapt graph and explore)"),
    ParamSpec("adapt_episodes", 2, "episodes per inner adaptation step", low=1),
    ParamSpec("adapt_steps_max", 3, "inner steps taken online per meta-policy", low=0),
    ParamSpec("revert_margin", 0.0, "back to the meta-policy if the adapted return < its return - this "
              "(absolute); < 0 = never"),
    ParamSpec("adapt_mode", "model", "where the inner step's data comes from: model (identify the bundle's "
              "dynamics ensemble on the real episodes, then step on imagined rollouts from their starts; a bundle "
              "without dynamics falls back to direct, with one warning) or direct (step on the real episodes)",
              choices=("model", "direct")),
    ParamSpec("adapt_imagined_rollouts", 20, "model mode: imagined rollouts (of the policy's horizon) per inner "
              "step", low=1, high=100000),
    ParamSpec("adapt_ridge", 0.03, "model mode: ridge of the last-layer identification, relative to the "
              "features' scale (larger: closer to the trained last layer)", low=1e-12, high=1e6),
    ParamSpec("log_dir", "", "folder for adaptation.jsonl (one JSON line per adaptation step and batch); '' = no "
              "log"),
    ParamSpec("policy_file", "", "policy to start with: a policy.onnx (its inner-step graph beside it) or a run "
              "directory, validated at start; '' = hold until one arrives on /mbmpo/policy"),
    ParamSpec("autostart", True, "configure and activate at start; false: wait for the lifecycle transitions "
              "(ros2 lifecycle set <node> configure, then activate)"),
    ParamSpec("ramp_s", 1.0, "on activate, actions ramp from 0 to full over this many seconds", low=0.0),
)

SIM_ROBOT_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("task", "InvertedPendulum-v5", "simulated task, resolved by mbmpo_core.registry (must build an "
              "env: a MuJoCo task of sim)"),
    ParamSpec("rate_hz", 0.0, "physics steps per second when free-running; 0 = the task's (1 / task.dt)",
              low=0.0),
    ParamSpec("perturbation", "", "physics perturbation as JSON, e.g. {\"mass_scale\": 1.5}; '' = none"),
    ParamSpec("seed", 0, "env seed (reset i uses seed + i)", low=0),
    ParamSpec("lockstep", True, "one physics step per received command (false: free-running at rate_hz)"),
    ParamSpec("lockstep_timeout_s", 1.0, "in lockstep, republish the state after this long without a command",
              low=0.001),
)

LEARNER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("config", "", "mbmpo YAML config; '' = by device: the package's config/default.yaml on CUDA, "
              "config/cpu.yaml otherwise"),
    ParamSpec("task", "", "task name (overrides the config's); '' = the config's"),
    ParamSpec("run_dir", "", "run directory; '' = runs/learner-<task>-s<seed>-<time>"),
    ParamSpec("robots", ["robot_0"], "robot namespaces whose <ns>/mbmpo/transitions are ingested"),
    ParamSpec("min_new_steps", 0, "new real steps between iterations; 0 = the config's loop.steps_per_iter", low=0),
    ParamSpec("seed", -1, "random seed (overrides the config's); -1 = the config's", low=-1),
    ParamSpec("resume", False, "reopen run_dir and continue from its checkpoint and stored transitions"),
    ParamSpec("exit_after_steps", 0, "exit after this many stored real steps (and a last iteration); 0 = the "
              "config's loop.total_steps, -1 = never", low=-1),
    ParamSpec("threads", 0, "torch threads; 0 = chosen for the machine (1 on <= 4 cores; OMP_NUM_THREADS)",
              low=0),
    ParamSpec("shutdown_timeout_s", 2.0, "on shutdown, how long a running iteration may take to finish; after "
              "that it is abandoned (the last checkpoint stands; resume:=true continues)", low=0.0),
)
