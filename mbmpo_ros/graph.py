"""The ROS graphs of a training run and of a deployment, described once as plain data.

``launch/train.launch.py`` and ``launch/deploy.launch.py`` render these descriptions as ``launch_ros`` nodes,
``mbmpo launch`` (:mod:`mbmpo_ros.launcher`) as processes; neither builds its own node list. Nothing here imports
``launch`` (not on PyPI), so the description is tested anywhere.

Training: one learner, then per robot namespace ``<prefix><i>`` a controller and, in sim mode, a sim_robot. Every
node runs the task of the learner's config (a controller on another task would reject every policy), checked
through :mod:`mbmpo_core.registry` before any node starts; the controllers' episodes have the config's horizon.
In sim mode the controllers log their online adaptation (``log_dir``) to the learner's run directory, which the
graph names when none is given (as the learner would: ``runs/learner-<task>-s<seed>-<time>``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mbmpo_core import registry
from mbmpo_core.config import load_config
from mbmpo_core.task_file import is_task_file, load_task_file

PACKAGE = "mbmpo_ros"
WARMUP_POLICIES = ("random", "zero", "hold")
ParamValue = bool | int | float | str | list[str]


class GraphError(ValueError):
    """A launch argument that cannot describe a graph; the message is one line."""


@dataclass(frozen=True)
class NodeDescription:
    """One node: the package's ``executable`` (also the module ``<package>.<executable>``), its name and
    namespace ('' = global), its parameter files, then the parameters that override them; ``lifecycle``: a
    managed node (launch_ros renders it as a ``LifecycleNode``)."""

    executable: str
    name: str
    namespace: str = ""
    parameter_files: tuple[Path, ...] = ()
    overrides: Mapping[str, ParamValue] = field(default_factory=dict)
    package: str = PACKAGE
    lifecycle: bool = False

    @property
    def module(self) -> str:
        """The Python module run as ``python -m``."""
        return f"{self.package}.{self.executable}"

    @property
    def label(self) -> str:
        """``<namespace>/<name>``, or the name of a global node: the prefix of its output lines."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class LaunchArgument:
    """A launch argument of a launch file: name, default (as ``ros2 launch`` passes it: a string), description."""

    name: str
    default: str
    description: str


TRAIN_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("sim", "true", "start a MuJoCo sim_robot per robot (true|false)"),
    LaunchArgument("config", "", "mbmpo YAML config: a path, or a bare name (quickstart, quickstart.yaml) of the "
                   "package's config/ ('' = by device: config/default.yaml on CUDA, config/cpu.yaml otherwise)"),
    LaunchArgument("task", "", "task name ('' = the config's)"),
    LaunchArgument("num_robots", "1", "number of robot namespaces"),
    LaunchArgument("namespace_prefix", "robot_", "robot i is <prefix><i>"),
    LaunchArgument("run_dir", "", "learner run directory ('' = a new one)"),
    LaunchArgument("resume", "false", "continue the run in run_dir from its checkpoint and stored transitions"),
    LaunchArgument("seed", "-1", "random seed of the learner (and of the robots' exploration: 1000 * seed + i); "
                   "-1 = the config's"),
    LaunchArgument("steps", "0", "stop when the learner has stored this many real steps (0 = the config's "
                   "loop.total_steps, -1 = never)"),
    LaunchArgument("rate_hz", "0.0", "control rate of the controllers (0 = the task's)"),
    LaunchArgument("warmup_policy", "", "what the robots run until the first policy: random|zero|hold ('' = "
                   "random with sim:=true, hold on real robots: set random to let a real robot explore)"),
)

DEPLOY_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("namespace", "robot_0", "robot namespace"),
    LaunchArgument("task", "InvertedPendulum-v5", "task name or task file (.yaml)"),
    LaunchArgument("explore", "false", "sample actions (true) or act on the policy's mean (false)"),
    LaunchArgument("autostart", "false", "configure and activate the controller at start (false: ros2 lifecycle "
                   "set <namespace>/controller configure, then activate)"),
    LaunchArgument("policy_file", "", "policy to start with: a policy.onnx or a run directory ('' = wait for "
                   "/mbmpo/policy)"),
    LaunchArgument("hold_mode", "zero", "what a hold commands: zero, or position (the measured joint positions)"),
)


def default_config_file(config_dir: Path) -> Path:
    """The config a learner without one uses (the same choice it makes: the paper's on CUDA, the CPU profile
    otherwise), so the graph reads the task, horizon and warm-up the learner will run."""
    from mbmpo_core.runtime import default_config

    return default_config(config_dir).path


def task_and_horizon(config_dir: Path, config: str = "", task: str = "") -> tuple[str, int]:
    """The config's task (unless ``task`` names one) and its episode horizon; the task must resolve.

    ``config`` '' is the learner's default (:func:`default_config_file`). A task file's path is made absolute
    (the nodes may run elsewhere), and its horizon must equal the config's ``loop.horizon`` (the learner
    imagines episodes of that length). A bad config, an unknown task or a bad task file is a one-line ``ValueError``.
    """
    cfg = load_config(config or default_config_file(config_dir), task=task or None)
    name = resolve_task(cfg.task)
    if is_task_file(name):
        file_horizon = load_task_file(name).horizon
        if file_horizon != cfg.loop.horizon:
            raise GraphError(f"task file {cfg.task} has horizon {file_horizon} but the config's loop.horizon is "
                             f"{cfg.loop.horizon}: set loop.horizon: {file_horizon} in the config")
    return name, cfg.loop.horizon


PARAMETER_FILES = ("learner.yaml", "controller.yaml", "sim_robot.yaml")  # node parameters, not mbmpo configs


def resolve_config(config_dir: Path, config: str) -> str:
    """The absolute path of ``config`` ('' stays ''): a path with a folder as given; a bare name (``quickstart``,
    ``quickstart.yaml``) from ``config_dir`` (the package's config/), else from the working directory. A bare
    name found in neither is a one-line :class:`GraphError` listing the package's configs."""
    config = config.strip()
    if not config:
        return ""
    path = Path(config).expanduser()
    if len(path.parts) > 1 or path.is_absolute():
        return str(path.resolve())
    for candidate in (config_dir / config, config_dir / f"{config}.yaml", Path(config)):
        if candidate.is_file():
            return str(candidate.resolve())
    known = sorted(p.name for p in config_dir.glob("*.yaml") if p.name not in PARAMETER_FILES)
    raise GraphError(f"config {config!r} is neither in {config_dir} ({', '.join(known) or 'none'}) nor in the "
                     f"working directory")


def resolve_task(task: str) -> str:
    """``task`` as the nodes get it (a task file's path made absolute), after checking that it resolves."""
    name = str(Path(task).expanduser().resolve()) if is_task_file(task) else task
    registry.resolve(name)
    return name


def new_run_dir(config_dir: Path, config: str, task: str, seed: int) -> Path:
    """The run directory a learner without one would create (``runs/learner-<task>-s<seed>-<time>``, absolute;
    a task file by its stem); ``seed`` -1 = the config's."""
    cfg = load_config(config or default_config_file(config_dir), task=task, seed=seed if seed >= 0 else None)
    name = Path(task).stem if is_task_file(task) else task
    return (Path("runs") / f"learner-{name}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()


def controller_node(config_dir: Path, namespace: str, **overrides: ParamValue) -> NodeDescription:
    """The controller of robot ``namespace`` with config/controller.yaml and ``overrides``."""
    return NodeDescription("controller", "controller", namespace, (config_dir / "controller.yaml",), overrides,
                           lifecycle=True)


def train_graph(config_dir: Path, *, sim: bool = True, robots: int = 1, task: str = "", config: str = "",
                run_dir: str = "", resume: bool = False, seed: int = -1, steps: int = 0, rate_hz: float = 0.0,
                warmup_policy: str = "", namespace_prefix: str = "robot_") -> list[NodeDescription]:
    """The nodes of a training run: the learner first, then per robot a controller (and a sim_robot if ``sim``).

    ``config_dir`` holds the parameter files and default.yaml (the source tree's or the installed package's
    config/); ``config`` (a bare name is one of ``config_dir``'s, see :func:`resolve_config`) and ``run_dir`` are
    made absolute (the nodes may run elsewhere); ``resume`` needs an existing ``run_dir``. The controllers keep
    their batches for the learner; until the first policy they run ``warmup_policy`` ('' = random actions on
    simulated robots, the hold action on real ones: a real robot explores only when asked to). With ``sim`` the
    controllers' ``log_dir`` is the learner's run directory (named here if ``run_dir`` is '').
    """
    if robots < 1:
        raise GraphError(f"the number of robots must be >= 1, got {robots}")
    if steps < -1:
        raise GraphError(f"steps must be >= 0 (or -1: never stop), got {steps}")
    if not 0 <= rate_hz < math.inf:
        raise GraphError(f"rate_hz must be finite and >= 0, got {rate_hz}")
    if resume and not (run_dir and Path(run_dir).is_dir()):
        raise GraphError(f"resume needs the run directory to continue (run_dir), got {run_dir or 'none'!r}")
    if seed < -1:
        raise GraphError(f"seed must be >= 0 (or -1: the config's), got {seed}")
    config = resolve_config(config_dir, config)
    warmup = warmup_policy or ("random" if sim else "hold")
    if warmup not in WARMUP_POLICIES:
        raise GraphError(f"warmup_policy must be one of {', '.join(WARMUP_POLICIES)}, got {warmup_policy!r}")
    task_name, horizon = task_and_horizon(config_dir, config, task)
    namespaces = [f"{namespace_prefix}{i}" for i in range(robots)]
    learner: dict[str, ParamValue] = {"robots": namespaces, "task": task_name}
    if config:
        learner["config"] = config
    if run_dir:
        learner["run_dir"] = str(Path(run_dir).resolve())
    elif sim:  # the controllers log adaptation to the learner's run directory: name it for both
        learner["run_dir"] = str(new_run_dir(config_dir, config, task_name, seed))
    if resume:
        learner["resume"] = True
    if seed >= 0:
        learner["seed"] = seed
    if steps:
        learner["exit_after_steps"] = steps
    nodes = [NodeDescription("learner", "learner", "", (config_dir / "learner.yaml",), learner)]
    for i, ns in enumerate(namespaces):
        robot_seed = i if seed < 0 else 1000 * seed + i  # sim seeds 1000 apart: no shared reset states
        controller: dict[str, ParamValue] = {"task": task_name, "seed": robot_seed, "horizon": horizon,
                                             "rate_hz": float(rate_hz), "warmup_policy": warmup, "learner": True}
        if sim:
            controller["log_dir"] = learner["run_dir"]
        nodes.append(controller_node(config_dir, ns, **controller))
        if sim:
            nodes.append(NodeDescription("sim_robot", "sim_robot", ns, (config_dir / "sim_robot.yaml",),
                                         {"task": task_name, "seed": robot_seed}))
    return nodes


def deploy_graph(config_dir: Path, *, namespace: str = "robot_0", task: str = "InvertedPendulum-v5",
                 explore: bool = False, autostart: bool = False, policy_file: str = "",
                 hold_mode: str = "zero") -> list[NodeDescription]:
    """The nodes of a deployment: one managed controller (the robot's driver provides joint_states and command),
    unconfigured until ``ros2 lifecycle set`` (or ``autostart``), holding until a policy arrives (``policy_file``
    or ``/mbmpo/policy``); a policy file is made absolute and must exist."""
    overrides: dict[str, ParamValue] = {"task": resolve_task(task), "explore": explore, "autostart": autostart,
                                        "hold_mode": hold_mode}
    if policy_file:
        path = Path(policy_file).expanduser().resolve()
        if not path.exists():
            raise GraphError(f"policy_file {policy_file}: no such file or run directory")
        overrides["policy_file"] = str(path)
    return [controller_node(config_dir, namespace, **overrides)]


def train_graph_from_launch(config_dir: Path, values: Mapping[str, str]) -> list[NodeDescription]:
    """:func:`train_graph` from the strings of :data:`TRAIN_ARGUMENTS` (as ``ros2 launch`` gives them)."""
    return train_graph(config_dir, sim=parse_bool("sim", values["sim"]),
                       robots=_parse_int("num_robots", values["num_robots"]), task=values["task"],
                       config=values["config"], run_dir=values["run_dir"],
                       resume=parse_bool("resume", values["resume"]), seed=_parse_int("seed", values["seed"]),
                       steps=_parse_int("steps", values["steps"]),
                       rate_hz=_parse_float("rate_hz", values["rate_hz"]),
                       warmup_policy=values["warmup_policy"].strip(), namespace_prefix=values["namespace_prefix"])


def deploy_graph_from_launch(config_dir: Path, values: Mapping[str, str]) -> list[NodeDescription]:
    """:func:`deploy_graph` from the strings of :data:`DEPLOY_ARGUMENTS`."""
    return deploy_graph(config_dir, namespace=values["namespace"], task=values["task"],
                        explore=parse_bool("explore", values["explore"]),
                        autostart=parse_bool("autostart", values["autostart"]),
                        policy_file=values["policy_file"].strip(), hold_mode=values["hold_mode"].strip())


def parse_bool(name: str, text: str) -> bool:
    """A boolean launch argument as launch's conditions read it (true/false/1/0, any case)."""
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise GraphError(f"launch argument {name} must be true or false, got {text!r}")


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise GraphError(f"launch argument {name} must be an integer, got {text!r}") from None


def _parse_float(name: str, text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise GraphError(f"launch argument {name} must be a number, got {text!r}") from None
