"""The three floors, as tests: the controller path never loads torch; mbmpo_core never loads ROS or the simulator;
sim never loads ROS.

Each import check runs in a fresh interpreter (sys.modules starts clean). A lazy import inside a function would
slip past an import check, so the source of mbmpo_core and sim is also scanned with ``ast``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAS_RCLPY = importlib.util.find_spec("rclpy") is not None
NO_RCLPY = "needs the ROS 2 wheels (pip install -e '.[ros]')"

# What runs on the robot: policy load and inference, online adaptation, safety chain, wire codec, task lookup,
# and the model on the robot (ONNX ensemble, identification, imagination).
TORCH_FREE_CORE = ["mbmpo_core.onnx_session", "mbmpo_core.onnx_runtime", "mbmpo_core.onnx_dynamics",
                   "mbmpo_core.identification", "mbmpo_core.onnx_imagination"]
CONTROLLER_PATH = [*TORCH_FREE_CORE, "mbmpo_core.registry", "mbmpo_ros.adaptation", "mbmpo_ros.safety",
                   "mbmpo_ros.codec", "mbmpo_ros.outbox"]
ROS = {"rclpy", "rcl_interfaces", "rosidl_runtime_py", "std_msgs", "sensor_msgs", "diagnostic_msgs", "std_srvs",
       "launch", "launch_ros", "mbmpo_ros"}
SIMULATOR = {"sim", "gymnasium", "mujoco"}

# The child imports each module in turn and reports, per module, the top-level packages it loaded first.
_CHILD = textwrap.dedent("""
    import importlib, json, sys
    loaded = {}
    for name in sys.argv[1:]:
        before = {m.split(".")[0] for m in sys.modules}
        importlib.import_module(name)
        loaded[name] = sorted({m.split(".")[0] for m in sys.modules} - before)
    print(json.dumps(loaded))
""")


def first_loaders(modules: list[str]) -> dict[str, set[str]]:
    """Import ``modules`` in order in a fresh interpreter -> {module: top-level packages it loaded first}."""
    result = subprocess.run([sys.executable, "-c", _CHILD, *modules], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return {name: set(found) for name, found in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def offenders(modules: list[str], forbidden: set[str]) -> dict[str, set[str]]:
    return {name: found & forbidden for name, found in first_loaders(modules).items() if found & forbidden}


def package_modules(package: str) -> list[str]:
    return sorted(f"{package}.{path.stem}" for path in (ROOT / package).glob("*.py") if path.stem != "__init__")


def imported_roots(path: Path) -> set[str]:
    """Top-level names ``path`` imports anywhere (also inside functions), including import_module("x")."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add((node.module or "").split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)):
            roots.add(str(node.args[0].value).split(".")[0])
    return roots


def test_the_checks_can_fail() -> None:
    """The import probe sees what a module loads (json loads nothing forbidden; the probe sees 'decimal')."""
    assert offenders(["json", "fractions"], {"decimal"}) == {"fractions": {"decimal"}}
    assert "numpy" in imported_roots(ROOT / "mbmpo_core" / "normalizer.py")


# ------------------------------------------------------------------------------------------ controller path
def test_controller_path_never_loads_torch() -> None:
    assert offenders(CONTROLLER_PATH, {"torch"}) == {}


@pytest.mark.parametrize("module", TORCH_FREE_CORE)
def test_torch_free_core_source_imports_no_torch(module: str) -> None:
    """Also no lazy import inside a function (the import check above would not see one that never ran)."""
    assert "torch" not in imported_roots(ROOT / (module.replace(".", "/") + ".py"))


@pytest.mark.skipif(not HAS_RCLPY, reason=NO_RCLPY)
def test_controller_node_never_loads_torch() -> None:
    assert offenders(["mbmpo_ros.controller", "mbmpo_ros.params", "mbmpo_ros.qos"], {"torch"}) == {}


@pytest.mark.skipif(not HAS_RCLPY, reason=NO_RCLPY)
def test_controller_task_spec_and_policy_runtime_are_torch_free() -> None:
    """What the controller runs on the robot — task spec, numpy reward/done, ONNX runtime — never loads torch."""
    code = textwrap.dedent("""
        import sys, numpy as np
        from mbmpo_ros.controller import load_task
        import mbmpo_core.onnx_runtime
        task = load_task('Hopper-v5', 200)
        obs = np.zeros((3, task.obs_dim)); obs[:, 1] = 1.25
        r = task.reward(obs, np.zeros((3, task.act_dim)), obs); d = task.done(obs)
        assert r.shape == (3,) and d.dtype == bool
        print('torch' in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


# ------------------------------------------------------------------------------------------ mbmpo_core
def test_mbmpo_core_modules_never_load_ros_or_the_simulator() -> None:
    modules = ["mbmpo_core", *package_modules("mbmpo_core")]
    assert len(modules) > 10
    assert offenders(modules, ROS | SIMULATOR) == {}


@pytest.mark.parametrize("path", sorted((ROOT / "mbmpo_core").glob("*.py")), ids=lambda p: p.name)
def test_mbmpo_core_source_imports_no_ros_and_no_simulator(path: Path) -> None:
    assert imported_roots(path) & (ROS | SIMULATOR) == set()


# ------------------------------------------------------------------------------------------ sim
def test_sim_never_loads_ros() -> None:
    assert offenders(["sim", *package_modules("sim")], ROS) == {}


@pytest.mark.parametrize("path", sorted((ROOT / "sim").glob("*.py")), ids=lambda p: p.name)
def test_sim_source_imports_no_ros(path: Path) -> None:
    assert imported_roots(path) & ROS == set()
