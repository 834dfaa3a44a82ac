"""Robot tasks from YAML files (mbmpo_core.task_file): the worked example, reward parity numpy/torch, one-line
errors for bad files, resolution through the registry, the launch graph's checks, no simulator loaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mbmpo_core.registry import UnknownTaskError, make_task, resolve
from mbmpo_core.task_file import TaskFileError, load_task_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "two_link_arm"
TASK_FILE = EXAMPLE / "task.yaml"


def test_the_worked_example() -> None:
    task = load_task_file(TASK_FILE)
    assert (task.name, task.horizon, task.dt, task.command) == ("two_link_arm", 100, 0.05, "velocity")
    assert task.obs_names == ["qpos.shoulder", "qpos.elbow", "qvel.shoulder", "qvel.elbow"]
    assert task.act_names == ["velocity.shoulder", "velocity.elbow"] and task.joint_names == ["shoulder", "elbow"]
    assert (task.obs_dim, task.act_dim, task.position_obs) == (4, 2, ())
    np.testing.assert_array_equal(task.action_low, [-1.0, -1.0])
    np.testing.assert_array_equal(task.action_high, [1.0, 1.0])
    obs = np.array([[0.0, 0.0, 0.0, 0.0], [0.8, -0.6, 0.3, 0.0], [2.6, 0.0, 0.0, 0.0]])
    act = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(task.reward(obs, act, obs), [-(0.64 + 0.36) - 0.01, 0.0, -(1.8**2 + 0.36)])
    np.testing.assert_array_equal(task.done(obs), [False, False, True])  # shoulder beyond the workspace
    with pytest.raises(NotImplementedError, match="is a real robot"):
        task.make_env()


def test_reward_and_done_agree_on_numpy_and_torch() -> None:
    torch = pytest.importorskip("torch")
    task = load_task_file(TASK_FILE)
    rng = np.random.default_rng(0)
    obs, nxt = rng.uniform(-3, 3, (64, 4)), rng.uniform(-3, 3, (64, 4))
    act = rng.uniform(-1, 1, (64, 2))
    as_torch = [torch.as_tensor(x, dtype=torch.float64) for x in (obs, act, nxt)]
    np.testing.assert_allclose(task.reward(*as_torch).numpy(), task.reward(obs, act, nxt), rtol=1e-12)
    np.testing.assert_array_equal(task.done(as_torch[2]).numpy(), task.done(nxt))
    assert task.done(nxt).any() and not task.done(nxt).all()


def test_resolved_by_path_with_its_own_horizon_unless_one_is_given() -> None:
    assert resolve(str(TASK_FILE)) is load_task_file
    assert make_task(str(TASK_FILE)).horizon == 100
    assert make_task(str(TASK_FILE), horizon=7).horizon == 7


GOOD = {
    "name": "arm", "rate_hz": 10, "horizon": 50, "joints": ["a", "b"], "observation": ["position", "effort"],
    "action": {"command": "effort", "joints": ["b"], "low": [-2.0], "high": [2.0]}, "reward": "rules:reward",
}
RULES = """
def reward(obs, act, next_obs):
    return -(next_obs * next_obs).sum(-1)


def wrong_shape(obs, act, next_obs):
    return obs


def crash(obs, act, next_obs):
    raise RuntimeError("boom")
"""


def write_task(folder: Path, **changes: Any) -> Path:
    raw = {**GOOD, **changes}
    for key in [k for k, v in changes.items() if v is None]:
        del raw[key]
    (folder / "rules.py").write_text(textwrap.dedent(RULES))
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_minimal_file_effort_observation_and_no_done(tmp_path: Path) -> None:
    task = load_task_file(write_task(tmp_path, extra_observations=["tool.x"], position_obs=["tool.x"]))
    assert task.obs_names == ["qpos.a", "qpos.b", "effort.a", "effort.b", "tool.x"] and task.position_obs == (4,)
    assert task.act_names == ["effort.b"] and task.joint_names == ["b"] and task.dt == 0.1
    np.testing.assert_array_equal(task.done(np.zeros((3, 5))), [False, False, False])  # the horizon ends episodes


@pytest.mark.parametrize(("changes", "message"), [
    ({"speed": 3}, "unknown keys ['speed']"),
    ({"reward": None}, "missing keys ['reward']"),
    ({"rate_hz": 0}, "rate_hz: must be a positive number, got 0"),
    ({"horizon": 2.5}, "horizon: must be a positive integer, got 2.5"),
    ({"name": "my arm"}, "name: must be a name without spaces"),
    ({"joints": ["a", "a"]}, "joints: repeats a name"),
    ({"observation": ["torque"]}, "observation: fields must be among position, velocity, effort, got ['torque']"),
    ({"action": {"command": "jerk", "joints": ["b"], "low": [0.0], "high": [1.0]}},
     "action.command: must be one of position, velocity, effort, got 'jerk'"),
    ({"action": {"command": "effort", "joints": ["c"], "low": [0.0], "high": [1.0]}},
     "action.joints: ['c'] are not among joints ['a', 'b']"),
    ({"action": {"command": "effort", "joints": ["b"], "low": [0.0, 0.0], "high": [1.0]}},
     "action.low: must be 1 finite numbers (one per commanded joint)"),
    ({"action": {"command": "effort", "joints": ["b"], "low": [1.0], "high": [1.0]}},
     "action: low must be below high for every joint"),
    ({"action": {"command": "effort", "joints": ["b"]}}, "action: must have exactly the keys command, joints"),
    ({"position_obs": ["qvel.a"]}, "position_obs: names ['qvel.a'] are not observations"),
    ({"reward": "rules"}, "reward: must be 'module:function', got 'rules'"),
    ({"reward": "mbmpo_no_such_rules:reward"}, "reward: mbmpo_no_such_rules:reward cannot be loaded"),
    ({"reward": "rules:missing"}, "reward: rules:missing cannot be loaded (AttributeError"),
    ({"reward": "rules:wrong_shape"}, "reward: must return [B] finite rewards for [B, obs_dim] inputs"),
    ({"reward": "rules:crash"}, "reward: reward/done fail on numpy arrays (RuntimeError: boom)"),
])
def test_a_bad_task_file_is_one_line_naming_file_and_key(tmp_path: Path, changes: dict[str, Any],
                                                         message: str) -> None:
    path = write_task(tmp_path, **changes)
    with pytest.raises(TaskFileError) as info:
        load_task_file(path)
    text = str(info.value)
    assert text.startswith(f"task file {path}: ") and message in text and "\n" not in text, text
    with pytest.raises(UnknownTaskError, match=r"^task file "):  # the registry says the same, as an unknown task
        resolve(str(path))


def test_unreadable_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(TaskFileError, match="No such file"):
        load_task_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(TaskFileError, match="expected a mapping of keys, got list"):
        load_task_file(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(TaskFileError, match="not YAML"):
        load_task_file(tmp_path / "broken.yaml")


def test_two_task_files_with_modules_of_one_name_do_not_collide(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = load_task_file(write_task(tmp_path / "one"))
    (tmp_path / "two" / "rules.py").write_text("def reward(obs, act, next_obs):\n    return obs[..., 0] * 0 + 5.0\n")
    raw = {**GOOD}
    (tmp_path / "two" / "task.yaml").write_text(yaml.safe_dump(raw))
    two = load_task_file(tmp_path / "two" / "task.yaml")
    obs = np.ones((2, 4))
    act = np.zeros((2, 1))
    np.testing.assert_allclose(one.reward(obs, act, obs), [-4.0, -4.0])
    np.testing.assert_allclose(two.reward(obs, act, obs), [5.0, 5.0])


def test_loading_a_task_file_loads_no_simulator_and_no_torch() -> None:
    code = ("import sys; from mbmpo_core.registry import make_task; "
            f"task = make_task({str(TASK_FILE)!r}); import mbmpo_ros.safety; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('sim', 'mujoco', 'gymnasium', 'torch')]; "
            "assert not bad, bad; print(task.name)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "two_link_arm", result.stderr[-2000:]


def test_train_graph_takes_a_task_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mbmpo_ros.graph import GraphError, deploy_graph, train_graph

    config_dir = ROOT / "config"
    monkeypatch.chdir(ROOT)
    nodes = train_graph(config_dir, sim=False, task="examples/two_link_arm/task.yaml",
                        config=str(EXAMPLE / "config.yaml"), warmup_policy="random")
    learner, controller = nodes
    assert learner.overrides["task"] == controller.overrides["task"] == str(TASK_FILE)  # absolute for every node
    assert controller.overrides["horizon"] == 100 and controller.overrides["warmup_policy"] == "random"
    with pytest.raises(GraphError, match=r"has horizon 100 but the config's loop\.horizon is 200: set loop\.horizon: "
                                         r"100 in the config"):
        train_graph(config_dir, sim=False, task=str(TASK_FILE))  # default.yaml: horizon 200
    [deployed] = deploy_graph(config_dir, task="examples/two_link_arm/task.yaml", hold_mode="position")
    assert deployed.overrides["task"] == str(TASK_FILE)
    with pytest.raises(UnknownTaskError, match="No such file"):
        deploy_graph(config_dir, task="examples/nope.yaml")
