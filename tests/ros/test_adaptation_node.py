"""Controller online adaptation, in-process over real DDS (sim_robot in lockstep): direct mode, model mode with a
bundle that carries the dynamics ensemble (identification and imagination torch-free in the worker thread, the
step in /diagnostics and adaptation.jsonl), the fallback for a bundle without dynamics, and bad parameters."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (pip install -e '.[ros]')")

from node_helpers import NS, TASK, collect, params, small_policy_bundle, start_controller, start_sim

from mbmpo_core.bundle import PolicyBundle
from mbmpo_ros.adaptation import Phase
from mbmpo_ros.codec import decode_transitions, encode_policy
from mbmpo_ros.qos import COMMAND_QOS, POLICY_QOS, TRANSITIONS_QOS

pytestmark = pytest.mark.ros


def publish(ros_graph: Any, bundle: PolicyBundle) -> None:
    from std_msgs.msg import UInt8MultiArray

    pub = ros_graph.node("learner_stub").create_publisher(UInt8MultiArray, "/mbmpo/policy", POLICY_QOS)
    pub.publish(encode_policy(bundle))


def bundle_with_dynamics(task: Any) -> PolicyBundle:
    """A fresh (8,) policy and a 2-member (16, 16) ensemble fitted briefly on random transitions of the task."""
    import numpy as np
    import torch

    from mbmpo_core.ensemble import DynamicsEnsemble
    from mbmpo_core.export import export_bundle
    from mbmpo_core.policy import GaussianMLPPolicy

    torch.manual_seed(0)
    env = task.make_env(seed=0)
    obs, _ = env.reset(seed=0)
    rows: list[tuple[Any, Any, Any]] = []
    for _ in range(300):
        act = env.action_space.sample()
        nxt, _, term, trunc, _ = env.step(act)
        rows.append((obs, act, nxt))
        obs = env.reset()[0] if term or trunc else nxt
    ensemble = DynamicsEnsemble(task.obs_dim, task.act_dim, num_models=2, hidden_sizes=(16, 16), max_epochs=3)
    ensemble.fit(*(np.array(col) for col in zip(*rows, strict=True)))
    return export_bundle(
        GaussianMLPPolicy(task.obs_dim, task.act_dim, hidden_sizes=(8,)), task_name=TASK, obs_names=task.obs_names,
        act_names=task.act_names, joint_names=task.joint_names, action_low=task.action_low,
        action_high=task.action_high, control_rate_hz=1.0 / task.dt, horizon=15, inner_lr=0.5, gamma=0.99,
        gae_lambda=1.0, iteration=0, ensemble=ensemble)


def test_controller_adapts_online(ros_graph: Any) -> None:
    from std_msgs.msg import Float64MultiArray

    from sim import make_task

    bundle = small_policy_bundle(make_task(TASK, horizon=15), TASK, inner_lr=0.5)
    pid = bundle.policy_id
    publish(ros_graph, bundle)
    batches = collect(ros_graph, f"/{NS}/mbmpo/transitions", Float64MultiArray, TRANSITIONS_QOS)
    commands = collect(ros_graph, f"/{NS}/command", Float64MultiArray, COMMAND_QOS)
    start_sim(ros_graph)
    ctrl = start_controller(ros_graph, ramp_s=0.0, adapt_episodes=2, adapt_steps_max=2, revert_margin=1e9)

    def adapted_rows() -> bool:
        return any(decode_transitions(m).adapted.any() for m in batches)

    assert ros_graph.spin_until(lambda: ctrl.adapter.steps >= 1 and adapted_rows(), timeout=15.0)
    diag = ctrl.diagnostics()
    assert int(diag["adapt.steps"]) >= 1 and diag["adapt.pre_return"] != "" and diag["adapt.reverted"] == "0"
    # A bundle without dynamics: model mode (the default) falls back to the direct step, warned once.
    assert diag["adapt.mode"] == "direct" and ctrl._warned_no_dynamics and diag["adapt.ident_error_after"] == ""
    decoded = [decode_transitions(m) for m in batches]
    assert all(b.policy_id == pid for b in decoded if b.adapted.any())  # theta's id on adapted rows
    assert any(b.policy_id == pid and not b.adapted.any() for b in decoded)  # theta ran first
    n_cmd = len(commands)
    assert ros_graph.spin_until(lambda: len(commands) >= n_cmd + 20, timeout=5.0)  # the tick keeps going


def test_controller_adapts_through_the_model(ros_graph: Any, tmp_path: Path) -> None:
    from std_msgs.msg import Float64MultiArray

    from sim import make_task

    task = make_task(TASK, horizon=15)
    bundle = bundle_with_dynamics(task)
    assert bundle.dynamics_file
    publish(ros_graph, bundle)
    commands = collect(ros_graph, f"/{NS}/command", Float64MultiArray, COMMAND_QOS)
    start_sim(ros_graph)
    log_dir = tmp_path / "run"
    ctrl = start_controller(ros_graph, ramp_s=0.0, adapt_episodes=2, adapt_steps_max=2, revert_margin=-1.0,
                            adapt_imagined_rollouts=7, log_dir=str(log_dir))
    assert ros_graph.spin_until(lambda: ctrl.adapter.phase is Phase.DONE, timeout=20.0)  # 2 steps, evaluated
    diag = ctrl.diagnostics()
    assert diag["adapt.mode"] == "model" and not ctrl._warned_no_dynamics
    before, after, job_s = (float(diag[k]) for k in ("adapt.ident_error_before", "adapt.ident_error_after",
                                                     "adapt.job_s"))
    assert before > 0 and after > 0 and math.isfinite(before + after) and 0 < job_s < 10
    assert diag["adapt.post_return"] != "" and diag["adapt.log_lines_lost"] == "0"
    assert ros_graph.spin_until(lambda: (log_dir / "adaptation.jsonl").exists()
                                and len((log_dir / "adaptation.jsonl").read_text().splitlines()) >= 6, timeout=5.0)
    lines = [json.loads(line) for line in (log_dir / "adaptation.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "policy" and lines[0]["mode"] == "model" and lines[0]["policy_id"] == bundle.policy_id
    steps = [r for r in lines if r["event"] == "step"]
    assert [r["step"] for r in steps] == [1, 2] and all(r["ok"] and r["mode"] == "model" for r in steps)
    assert all(len(r["ident_error_before"]) == 2 == len(r["ident_error_after"]) for r in steps)
    assert all(r["member"] in (0, 1) and r["imagine_s"] > 0 and r["robot"] == NS for r in steps)
    assert [(r["event"], r.get("steps", r.get("step"))) for r in lines[1:6]] == [
        ("batch", 0), ("step", 1), ("batch", 1), ("step", 2), ("batch", 2)]  # each batch, then the step from it
    batches = [r for r in lines if r["event"] == "batch"]
    assert [r["steps"] for r in batches] == [0, 1, 2] and all(isinstance(r["return"], float) for r in batches)
    n_cmd = len(commands)
    assert ros_graph.spin_until(lambda: len(commands) >= n_cmd + 20, timeout=5.0)  # the tick keeps going


def test_direct_mode_ignores_the_dynamics(ros_graph: Any) -> None:
    from sim import make_task

    publish(ros_graph, bundle_with_dynamics(make_task(TASK, horizon=15)))
    start_sim(ros_graph)
    ctrl = start_controller(ros_graph, ramp_s=0.0, adapt_episodes=1, adapt_steps_max=1, adapt_mode="direct")
    assert ros_graph.spin_until(lambda: ctrl.adapter.steps >= 1, timeout=15.0)
    diag = ctrl.diagnostics()
    assert diag["adapt.mode"] == "direct" and diag["adapt.ident_error_before"] == "" and diag["adapt.job_s"] != ""
    assert ctrl.adapter.last_result is not None and ctrl.adapter.last_result.mode == "direct"


@pytest.mark.parametrize(("override", "message"), [
    (("adapt_mode", "imagined"), "parameter adapt_mode must be one of: model, direct, got 'imagined'"),
    (("adapt_ridge", 0.0), "parameter adapt_ridge must be in [1e-12, 1e+06]"),
    (("adapt_ridge", math.nan), "parameter adapt_ridge must be in [1e-12, 1e+06]"),
    (("adapt_imagined_rollouts", 0), "parameter adapt_imagined_rollouts must be in [1, 100000]"),
    (("log_dir", "/etc/hostname"), "parameter log_dir '/etc/hostname' is a file, not a folder"),
])
def test_a_bad_adaptation_parameter_is_one_line(ros_graph: Any, override: tuple[str, Any], message: str) -> None:
    from mbmpo_ros.controller import Controller

    with pytest.raises(ValueError) as info:
        Controller(context=ros_graph.context, namespace=NS, parameter_overrides=params(task=TASK, **dict([override])))
    assert str(info.value) == message
