"""The launch graph (mbmpo_ros.graph) and its two renderings: the launch files and ``mbmpo launch``.

``launch`` is a ROS 2 distribution package, not on PyPI: where it is missing, the launch files run against small
stand-ins for the few launch APIs they use, which record what the files build; where it is installed, they also
run against the real API.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import yaml

from mbmpo_core.config import ConfigError
from mbmpo_core.registry import UnknownTaskError
from mbmpo_ros.graph import (
    DEPLOY_ARGUMENTS,
    TRAIN_ARGUMENTS,
    GraphError,
    NodeDescription,
    deploy_graph,
    train_graph,
    train_graph_from_launch,
)
from mbmpo_ros.launcher import _parser, command_line, launch_main, ros_arg_value, train_nodes

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "config"
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
ALLOWED_IMPORTS = {"launch", "launch_ros", "ament_index_python", "os", "pathlib", "yaml", "mbmpo_ros"}
SKIP_REASON = "launch is not installed (ROS 2 distribution package, not on PyPI)"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_both_launch_files_exist() -> None:
    assert {p.name for p in LAUNCH_FILES} >= {"train.launch.py", "deploy.launch.py"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_imports_only_launch_apis(path: Path) -> None:
    roots = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= ALLOWED_IMPORTS, roots - ALLOWED_IMPORTS


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_defines_generate_launch_description(path: Path) -> None:
    names = {n.name for n in _tree(path).body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in names


def test_parameter_files_use_the_ros_format() -> None:
    for name in ("learner.yaml", "controller.yaml", "sim_robot.yaml"):
        raw = yaml.safe_load((CONFIG_DIR / name).read_text())
        assert set(raw) == {"/**"} and set(raw["/**"]) == {"ros__parameters"}, name


# ------------------------------------------------------------------------------------------ the description
def test_train_graph_nodes_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("task: Hopper-v5\nloop: {horizon: 77}\n")
    nodes = train_graph(CONFIG_DIR, sim=True, robots=2, config=str(config), run_dir="runs/x", steps=500, rate_hz=50)
    assert [n.label for n in nodes] == ["learner", "robot_0/controller", "robot_0/sim_robot",
                                        "robot_1/controller", "robot_1/sim_robot"]
    learner, controller, sim = nodes[0], nodes[3], nodes[4]
    assert dict(learner.overrides) == {"robots": ["robot_0", "robot_1"], "task": "Hopper-v5",
                                       "config": str(config), "run_dir": str(Path("runs/x").resolve()),
                                       "exit_after_steps": 500}
    assert dict(controller.overrides) == {"task": "Hopper-v5", "seed": 1, "horizon": 77, "rate_hz": 50.0,
                                          "warmup_policy": "random", "learner": True,
                                          "log_dir": str(Path("runs/x").resolve())}  # adaptation.jsonl: the run's
    assert (sim.namespace, dict(sim.overrides)) == ("robot_1", {"task": "Hopper-v5", "seed": 1})
    assert [n.parameter_files for n in nodes[:3]] == [(CONFIG_DIR / "learner.yaml",),
                                                      (CONFIG_DIR / "controller.yaml",),
                                                      (CONFIG_DIR / "sim_robot.yaml",)]
    # Without sim: no sim_robot; without --task: the config's task; default config: default.yaml's.
    assert [n.executable for n in train_graph(CONFIG_DIR, sim=False, robots=1)] == ["learner", "controller"]
    assert "log_dir" not in train_graph(CONFIG_DIR, sim=False)[1].overrides  # a real robot logs where it is told
    # Sim without a run_dir: the graph names the learner's run directory, and the controllers log there.
    learner, controller, _ = train_graph(CONFIG_DIR, sim=True, task="Hopper-v5", seed=4)
    run_dir = Path(str(learner.overrides["run_dir"]))
    assert run_dir.is_absolute() and run_dir.name.startswith("learner-Hopper-v5-s4-") and not run_dir.exists()
    assert controller.overrides["log_dir"] == str(run_dir)
    assert train_graph(CONFIG_DIR, sim=False)[1].overrides["task"] == "HalfCheetah-v5"


def test_a_bare_config_name_is_the_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # ros2 launch runs anywhere: a bare name must not depend on the working directory
    for name in ("quickstart.yaml", "quickstart"):
        assert train_graph(CONFIG_DIR, config=name)[0].overrides["config"] == str(CONFIG_DIR / "quickstart.yaml")
    (tmp_path / "mine.yaml").write_text("task: Hopper-v5\n")  # not in the package: the working directory's
    assert train_graph(CONFIG_DIR, config="mine.yaml")[0].overrides["config"] == str(tmp_path / "mine.yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "quickstart.yaml").write_text("task: Hopper-v5\n")  # a path with a folder: as given
    assert train_graph(CONFIG_DIR, config="sub/quickstart.yaml")[0].overrides["task"] == "Hopper-v5"
    with pytest.raises(GraphError) as info:
        train_graph(CONFIG_DIR, config="nope.yaml")
    message = str(info.value)
    assert message.startswith(f"config 'nope.yaml' is neither in {CONFIG_DIR} (") and "default.yaml, " in message
    assert message.endswith(") nor in the working directory") and "quickstart.yaml" in message
    assert "controller.yaml" not in message  # node parameter files are no mbmpo configs


def test_resume_and_seed(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    learner, controller, sim = train_graph(CONFIG_DIR, run_dir=str(tmp_path / "run"), resume=True, seed=3)
    assert learner.overrides["resume"] is True and learner.overrides["seed"] == 3
    assert controller.overrides["seed"] == sim.overrides["seed"] == 3000
    assert "resume" not in train_graph(CONFIG_DIR)[0].overrides and "seed" not in train_graph(CONFIG_DIR)[0].overrides
    with pytest.raises(GraphError, match=r"^resume needs the run directory to continue \(run_dir\), got 'none'$"):
        train_graph(CONFIG_DIR, resume=True)
    with pytest.raises(GraphError, match="resume needs the run directory"):
        train_graph(CONFIG_DIR, resume=True, run_dir=str(tmp_path / "missing"))
    values = {arg.name: arg.default for arg in TRAIN_ARGUMENTS} | {"resume": "true",
                                                                   "run_dir": str(tmp_path / "run")}
    assert train_graph_from_launch(CONFIG_DIR, values)[0].overrides["resume"] is True


def test_random_warmup_only_where_training_asks_for_it() -> None:
    """Simulated robots explore with random actions until the first policy; real robots hold unless told to."""
    def warmup(**kwargs: Any) -> Any:
        return [n.overrides.get("warmup_policy") for n in train_graph(CONFIG_DIR, **kwargs)
                if n.executable == "controller"]

    assert warmup(sim=True, robots=2) == ["random", "random"]
    assert warmup(sim=False) == ["hold"]
    assert warmup(sim=False, warmup_policy="random") == ["random"]
    controller_yaml = yaml.safe_load((CONFIG_DIR / "controller.yaml").read_text())["/**"]["ros__parameters"]
    assert (controller_yaml["warmup_policy"], controller_yaml["learner"]) == ("hold", False)  # deploy defaults
    [deployed] = deploy_graph(CONFIG_DIR)
    assert "warmup_policy" not in deployed.overrides and "learner" not in deployed.overrides
    with pytest.raises(GraphError, match=r"^warmup_policy must be one of random, zero, hold, got 'wild'$"):
        train_graph(CONFIG_DIR, warmup_policy="wild")


def test_every_node_is_a_package_executable_with_existing_parameter_files() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    nodes = [*train_graph(CONFIG_DIR, sim=True, robots=2), *deploy_graph(CONFIG_DIR)]
    assert {n.executable for n in nodes} == {"learner", "controller", "sim_robot"}
    for node in nodes:
        assert scripts[node.executable] == f"{node.module}:main", node.executable
        assert node.parameter_files and all(path.is_file() for path in node.parameter_files), node.label


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"robots": 0}, GraphError, "the number of robots must be >= 1, got 0"),
    ({"rate_hz": float("nan")}, GraphError, "rate_hz must be finite and >= 0, got nan"),
    ({"steps": -2}, GraphError, "steps must be >= 0 (or -1: never stop), got -2"),
    ({"task": "Nope-v0"}, UnknownTaskError, "unknown task 'Nope-v0'; valid names: "),
    ({"config": "/nonexistent/c.yaml"}, ConfigError, "/nonexistent/c.yaml"),
])
def test_bad_train_graph_input_is_one_line(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        train_graph(CONFIG_DIR, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("sim", "maybe", "launch argument sim must be true or false, got 'maybe'"),
    ("num_robots", "two", "launch argument num_robots must be an integer, got 'two'"),
    ("rate_hz", "fast", "launch argument rate_hz must be a number, got 'fast'"),
    ("resume", "yes", "launch argument resume must be true or false, got 'yes'"),
    ("num_robots", "0", "the number of robots must be >= 1, got 0"),
])
def test_bad_launch_argument_is_one_line(name: str, text: str, message: str) -> None:
    values = {arg.name: arg.default for arg in TRAIN_ARGUMENTS} | {name: text}
    with pytest.raises(GraphError, match=f"^{message}$"):
        train_graph_from_launch(CONFIG_DIR, values)


@pytest.mark.parametrize(("argv", "message"), [
    (["--robots", "0"], "the number of robots must be >= 1, got 0"),
    (["--task", "Nope-v0"], "unknown task 'Nope-v0'; valid names: Ant-v5, "),
])
def test_launcher_rejects_bad_input_before_starting_nodes(argv: list[str], message: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert launch_main(["train", "--sim", *argv]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith(f"mbmpo launch: error: {message}") and out.err.count("\n") == 1


@pytest.mark.parametrize("value", ["", "Hopper-v5", "123", "true", '{"mass_scale": 1.5}', "/a b/c", 0, -3, 2.0,
                                   0.0, 1e-5, True, False, ["robot_0", "robot_1"], ["1", "a,b"]])
def test_ros_arg_value_parses_back_to_the_same_type_and_value(value: Any) -> None:
    parsed = yaml.safe_load(ros_arg_value(value))
    assert type(parsed) is type(value) and parsed == value


# ------------------------------------------------------------------------------------------ the renderings
def _parse_command(cmd: list[str]) -> dict[str, Any]:
    """A launcher command line back into module, parameter files, overrides, node name and namespace."""
    assert cmd[1:2] == ["-m"] and cmd[3] == "--ros-args"
    out: dict[str, Any] = {"module": cmd[2], "files": [], "overrides": {}, "name": None, "namespace": None}
    args = iter(cmd[4:])
    for flag in args:
        value = next(args)
        if flag == "--params-file":
            out["files"].append(value)
        elif flag == "-p":
            key, _, text = value.partition(":=")
            out["overrides"][key] = yaml.safe_load(text)
        elif flag == "-r" and value.startswith("__node:="):
            out["name"] = value.removeprefix("__node:=")
        elif flag == "-r" and value.startswith("__ns:=/"):
            out["namespace"] = value.removeprefix("__ns:=/")
        else:
            raise AssertionError(f"unexpected argument {flag} {value}")
    return out


def _from_description(node: NodeDescription) -> dict[str, Any]:
    return {"module": node.module, "files": [str(p) for p in node.parameter_files],
            "overrides": dict(node.overrides), "name": node.name, "namespace": node.namespace or None}


class _Recorded:
    """Stands in for a launch class: keeps its arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context: dict[str, str]) -> str:
        return context[self.args[0]]


class _Node(_Recorded):
    """Stands in for launch_ros.actions.Node."""


class _LifecycleNode(_Node):
    """Stands in for launch_ros.actions.LifecycleNode."""


@pytest.fixture
def stand_in_launch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """launch, launch_ros and ament_index_python as stand-ins (the package share directory is the source tree)."""
    modules = {
        "launch": {"LaunchDescription": lambda entities: list(entities)},
        "launch.actions": {"DeclareLaunchArgument": _Recorded, "OpaqueFunction": _Recorded,
                           "RegisterEventHandler": _Recorded, "EmitEvent": _Recorded},
        "launch.event_handlers": {"OnProcessExit": _Recorded},
        "launch.events": {"Shutdown": _Recorded},
        "launch.substitutions": {"LaunchConfiguration": _LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": _Node, "LifecycleNode": _LifecycleNode},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda package: str(ROOT)},
    }
    for name, attrs in modules.items():
        module = ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules.pop("mbmpo_ros.launch_render", None)  # imported on the stand-ins here, and forgotten after
    yield
    sys.modules.pop("mbmpo_ros.launch_render", None)


def _load_launch_file(name: str) -> Any:
    path = ROOT / "launch" / name
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch_actions(name: str, arguments: dict[str, str]) -> tuple[list[str], list[Any]]:
    """Run a launch file on the stand-ins: its argument names and the actions it builds for ``arguments``."""
    entities = _load_launch_file(name).generate_launch_description()
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if "default_value" in e.kwargs}
    [opaque] = [e for e in entities if "function" in e.kwargs]
    return list(declared), opaque.kwargs["function"]({**declared, **arguments})


def _launch_nodes(name: str, arguments: dict[str, str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Run a launch file on the stand-ins: its argument names and the Node kwargs it builds for ``arguments``."""
    declared, actions = _launch_actions(name, arguments)
    return declared, [action.kwargs for action in actions if isinstance(action, _Node)]


def _from_launch_node(kwargs: dict[str, Any]) -> dict[str, Any]:
    *files, overrides = kwargs["parameters"]
    assert kwargs["package"] == "mbmpo_ros" and kwargs["output"] == "screen"
    return {"module": f"mbmpo_ros.{kwargs['executable']}", "files": files, "overrides": overrides,
            "name": kwargs["name"], "namespace": kwargs["namespace"]}


@pytest.mark.usefixtures("stand_in_launch")
def test_train_launch_file_and_launcher_render_the_same_description(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    cli = ["train", "--sim", "--robots", "2", "--task", "Hopper-v5", "--steps", "500", "--rate-hz", "40",
           "--run-dir", run_dir]
    launch_args = {"sim": "true", "num_robots": "2", "task": "Hopper-v5", "steps": "500", "rate_hz": "40",
                   "run_dir": run_dir}
    description = [_from_description(n) for n in train_graph(CONFIG_DIR, sim=True, robots=2, task="Hopper-v5",
                                                               steps=500, rate_hz=40.0, run_dir=run_dir)]
    declared, launch_nodes = _launch_nodes("train.launch.py", launch_args)
    assert declared == [arg.name for arg in TRAIN_ARGUMENTS]
    assert [_from_launch_node(kwargs) for kwargs in launch_nodes] == description
    specs = train_nodes(_parser().parse_args(cli))
    assert [_parse_command(spec.cmd) for spec in specs] == description
    assert [spec.label for spec in specs] == ["learner", "robot_0/controller", "robot_0/sim_robot",
                                              "robot_1/controller", "robot_1/sim_robot"]
    assert description[0]["overrides"]["exit_after_steps"] == 500 and description[4]["namespace"] == "robot_1"


@pytest.mark.usefixtures("stand_in_launch")
def test_train_launch_file_defaults_and_a_bad_argument() -> None:
    _, nodes = _launch_nodes("train.launch.py", {})
    assert [(n["executable"], n["namespace"]) for n in nodes] == [("learner", None), ("controller", "robot_0"),
                                                                   ("sim_robot", "robot_0")]
    with pytest.raises(GraphError, match="launch argument sim must be true or false, got 'maybe'"):
        _launch_nodes("train.launch.py", {"sim": "maybe"})


@pytest.mark.usefixtures("stand_in_launch")
def test_deploy_launch_file_renders_deploy_graph() -> None:
    declared, actions = _launch_actions("deploy.launch.py", {"namespace": "arm_3", "task": "Hopper-v5",
                                                             "explore": "true", "autostart": "true"})
    assert declared == [arg.name for arg in DEPLOY_ARGUMENTS]
    [expected] = deploy_graph(CONFIG_DIR, namespace="arm_3", task="Hopper-v5", explore=True, autostart=True)
    nodes = [a for a in actions if isinstance(a, _Node)]
    assert [type(n) for n in nodes] == [_LifecycleNode]  # a managed node: launch's lifecycle events reach it
    assert [_from_launch_node(n.kwargs) for n in nodes] == [_from_description(expected)]
    assert expected.overrides == {"task": "Hopper-v5", "explore": True, "autostart": True, "hold_mode": "zero"}
    assert _parse_command(command_line(expected)) == _from_description(expected)
    [default] = deploy_graph(CONFIG_DIR)
    assert default.overrides["autostart"] is False and default.lifecycle  # deploy waits for ros2 lifecycle set


def test_deploy_policy_file_is_made_absolute_and_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "policy.onnx").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    [node] = deploy_graph(CONFIG_DIR, policy_file="policy.onnx")
    assert node.overrides["policy_file"] == str(tmp_path / "policy.onnx")
    with pytest.raises(GraphError, match=r"^policy_file nope.onnx: no such file or run directory$"):
        deploy_graph(CONFIG_DIR, policy_file="nope.onnx")


@pytest.mark.usefixtures("stand_in_launch")
def test_a_failing_node_stops_the_launch_and_the_learner_finishing_ends_it() -> None:
    """Each node's OnProcessExit handler: an error exit raises one line (launch prints it, stops, exits 1); the
    learner's clean exit emits Shutdown; exits during a shutdown say nothing."""
    from mbmpo_ros.launch_render import NodeFailed

    _, actions = _launch_actions("train.launch.py", {})
    handlers = {}
    for action in actions:
        if not isinstance(action, _Node):  # RegisterEventHandler(OnProcessExit(target_action=..., on_exit=...))
            target = action.args[0].kwargs["target_action"].kwargs
            handlers[(target["namespace"], target["name"])] = action.args[0].kwargs["on_exit"]
    assert set(handlers) == {(None, "learner"), ("robot_0", "controller"), ("robot_0", "sim_robot")}
    running, stopping = SimpleNamespace(is_shutdown=False), SimpleNamespace(is_shutdown=True)
    on_exit = handlers[("robot_0", "controller")]
    with pytest.raises(NodeFailed, match=r"^robot_0/controller exited with code 2; stopping the launch$"):
        on_exit(SimpleNamespace(returncode=2), running)
    assert on_exit(SimpleNamespace(returncode=0), running) is None
    assert on_exit(SimpleNamespace(returncode=-15), stopping) is None
    [shutdown] = handlers[(None, "learner")](SimpleNamespace(returncode=0), running)
    assert shutdown.kwargs["event"].kwargs == {"reason": "learner finished"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_files_run_on_the_real_launch_api(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:  # the repository's own launch/ folder is importable as a namespace package: check the real API
        import ament_index_python.packages as ament
        from launch import LaunchContext
        from launch.actions import DeclareLaunchArgument, OpaqueFunction
        from launch_ros.actions import LifecycleNode, Node
    except ImportError:
        pytest.skip(SKIP_REASON)
    monkeypatch.setattr(ament, "get_package_share_directory", lambda package: str(ROOT))  # no colcon install
    description = _load_launch_file(path.name).generate_launch_description()
    context = LaunchContext()
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.execute(context)  # sets the argument's default
    [opaque] = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    nodes = [a for a in opaque.execute(context) if isinstance(a, Node)]
    expected = train_graph(CONFIG_DIR) if path.name == "train.launch.py" else deploy_graph(CONFIG_DIR)
    assert [n.node_executable for n in nodes] == [n.executable for n in expected]
    assert [isinstance(n, LifecycleNode) for n in nodes] == [n.lifecycle for n in expected]


# ------------------------------------------------------------------------------------------ launcher arguments
@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "-5"], "argument --steps: must be a whole number >= 1, got '-5'"),
    (["--steps", "abc"], "argument --steps: must be a whole number >= 1, got 'abc'"),
    (["--seed", "-3"], "argument --seed: must be a whole number >= 0, got '-3'"),
])
def test_launcher_arguments_are_checked_in_user_words(argv: list[str], message: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        launch_main(["train", "--sim", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.splitlines()[-1] == f"mbmpo launch train: error: {message}"


def test_launcher_refuses_a_run_directory_that_holds_a_run_unless_resume(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from mbmpo_core.store import TransitionStore

    run = tmp_path / "run"
    TransitionStore(run / "transitions", 2, 1).append(
        {"obs": np.zeros((1, 2)), "act": np.zeros((1, 1)), "next_obs": np.zeros((1, 2)), "reward": np.zeros(1),
         "done": np.zeros(1, bool)})
    (tmp_path / "file").write_text("x")
    cases = [
        (["--run-dir", str(run)], f"--run-dir {run} already holds a run (1 stored transition batch); continue it "
                                  "with --resume or choose another run directory"),
        (["--run-dir", str(tmp_path / "file")], f"--run-dir {tmp_path / 'file'} is a file, not a run directory"),
        (["--run-dir", str(tmp_path / "empty"), "--resume"], f"--run-dir {tmp_path / 'empty'}: nothing to resume"),
        (["--resume"], "resume needs the run directory to continue (run_dir), got 'none'"),
    ]
    for argv, message in cases:
        assert launch_main(["train", "--sim", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mbmpo launch: error: {message}") and err.count("\n") == 1, err


def test_launcher_resume_and_seed_reach_the_nodes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint.pt").write_bytes(b"x")
    specs = train_nodes(_parser().parse_args(["train", "--sim", "--robots", "2", "--run-dir", str(run), "--resume",
                                              "--seed", "3"]))
    learner, *robots = (_parse_command(spec.cmd) for spec in specs)
    assert learner["overrides"]["resume"] is True and learner["overrides"]["seed"] == 3
    assert [r["overrides"]["seed"] for r in robots] == [3000, 3000, 3001, 3001]  # controller and sim per robot


def test_steps_below_the_warm_up_say_what_will_happen(tmp_path: Path) -> None:
    from mbmpo_ros.launcher import warm_up_warning

    config = tmp_path / "c.yaml"
    config.write_text("loop: {random_steps: 1000}\n")
    args = _parser().parse_args(["train", "--sim", "--steps", "10", "--config", str(config)])
    assert warm_up_warning(args) == ("--steps 10 is below the warm-up (loop.random_steps = 1000): the learner "
                                     "stores 10 random steps and exits without training")
    assert warm_up_warning(_parser().parse_args(["train", "--sim", "--steps", "1000", "--config", str(config)])) == ""
