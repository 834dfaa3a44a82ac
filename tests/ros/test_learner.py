"""The learner node over real DDS: persistence, rejection, policy publication, restart with resume.

Data is real (the simulated InvertedPendulum under random actions), encoded with the codec and published
from a test node, exactly as a controller would send it. Training runs on a tiny config.
"""

from __future__ import annotations

import csv
import itertools
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mbmpo_core.store import TransitionStore

pytestmark = pytest.mark.ros

TASK = "InvertedPendulum-v5"
TINY = {
    "task": TASK,
    "ensemble": {"num_models": 2, "hidden_sizes": [32, 32], "batch_size": 64, "max_epochs": 3},
    "policy": {"hidden_sizes": [16, 16]},
    "meta": {"meta_batch_size": 2, "rollouts_per_task": 4, "meta_steps": 1},
    "loop": {"random_steps": 100, "steps_per_iter": 100, "total_steps": 300, "eval_episodes": 1, "horizon": 20},
}
BATCH = 25


def write_config(path: Path, random_steps: int = 100) -> Path:
    raw = {**TINY, "loop": {**TINY["loop"], "random_steps": random_steps}}
    path.write_text(yaml.safe_dump(raw))
    return path


def real_batches(count: int, robot: str = "robot_0", seed: int = 0, first_seq: int = 0) -> list[Any]:
    """``count`` consecutive TransitionBatches of BATCH real steps each."""
    from mbmpo_core.sampler import RealSampler, uniform_random_actions
    from mbmpo_ros.codec import TransitionBatch
    from sim import make_task

    task = make_task(TASK, horizon=20)
    sampler = RealSampler([task.make_env(seed=seed)], 20, task.action_low, task.action_high, seed=seed)
    data = sampler.sample(uniform_random_actions(task.action_low, task.action_high, np.random.default_rng(seed)),
                          count * BATCH)
    out = []
    for i in range(count):
        s = slice(i * BATCH, (i + 1) * BATCH)
        out.append(TransitionBatch(obs=data.obs[s], act=data.act[s], next_obs=data.next_obs[s],
                                   reward=data.reward[s], done=data.done[s], step=data.step[s],
                                   episode=data.episode[s], adapted=np.zeros(BATCH, dtype=bool), robot=robot,
                                   policy_id="random", seq=first_seq + i))
    return out


def forbid_sim_envs(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, building a MuJoCo env (for sampling, resets or start states) raises."""
    import sim.tasks

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("built a MuJoCo env")

    monkeypatch.setattr(sim.tasks.Task, "make_env", refuse)
    monkeypatch.setattr(sim.tasks.Task, "sample_initial_obs", refuse)


def make_learner(graph: Any, run_dir: Path, config: Path, **params: Any) -> Any:
    from rclpy.parameter import Parameter

    from mbmpo_ros.learner import Learner

    overrides = [Parameter("config", value=str(config)), Parameter("run_dir", value=str(run_dir)),
                 Parameter("shutdown_timeout_s", value=60.0)]
    overrides += [Parameter(k, value=v) for k, v in params.items()]
    node = Learner(context=graph.context, parameter_overrides=overrides)
    graph.executor.add_node(node)
    return node


def drop_learner(graph: Any, node: Any) -> None:
    graph.executor.remove_node(node)
    node.destroy_node()


def transitions_pub(graph: Any, learner: Any, robot: str = "robot_0") -> Any:
    from std_msgs.msg import Float64MultiArray

    from mbmpo_ros.qos import TRANSITIONS_QOS

    pub = graph.node(f"fake_controller_{len(graph.nodes)}").create_publisher(
        Float64MultiArray, f"/{robot}/mbmpo/transitions", TRANSITIONS_QOS)
    # VOLATILE: what is published before discovery completes is lost.
    assert graph.spin_until(lambda: pub.get_subscription_count() > 0, 10.0)
    return pub


def send(graph: Any, pub: Any, msgs: list[Any]) -> None:
    for msg in msgs:
        pub.publish(msg)
        graph.spin_until(lambda: False, 0.01)


def test_every_batch_is_persisted_complete_and_in_order(ros_graph: Any, tmp_path: Path) -> None:
    from mbmpo_ros.codec import encode_transitions

    learner = make_learner(ros_graph, tmp_path / "run", write_config(tmp_path / "c.yaml", random_steps=10**6))
    try:
        batches = real_batches(8)
        send(ros_graph, transitions_pub(ros_graph, learner), [encode_transitions(b) for b in batches])
        assert ros_graph.spin_until(lambda: learner.ingest.stored() == 8 * BATCH, 10.0)
        stored = learner.ingest.store.load_all()
        for key in ("obs", "act", "next_obs", "reward", "done", "step", "episode"):
            np.testing.assert_array_equal(stored[key], np.concatenate([getattr(b, key) for b in batches]))
        assert len(learner.ingest.snapshot()["obs"]) == 8 * BATCH  # what the next iteration would train on
        assert learner.ingest.counters["robot_0"].accepted == 8
    finally:
        drop_learner(ros_graph, learner)


def test_malformed_batches_are_counted_and_good_ones_kept(ros_graph: Any, tmp_path: Path) -> None:
    from mbmpo_ros.codec import encode_transitions

    learner = make_learner(ros_graph, tmp_path / "run", write_config(tmp_path / "c.yaml", random_steps=10**6))
    try:
        good = real_batches(4)
        wrong_dims = encode_transitions(replace(good[0], obs=good[0].obs[:, :3], next_obs=good[0].next_obs[:, :3]))
        nan = encode_transitions(good[1])
        nan.data[10] = float("nan")
        unknown = encode_transitions(good[1])
        unknown.layout.dim[0].label = "codec=99"
        msgs = [encode_transitions(good[0]), wrong_dims, nan, unknown, encode_transitions(good[1]),
                encode_transitions(good[1]), encode_transitions(good[2]), encode_transitions(good[3])]
        send(ros_graph, transitions_pub(ros_graph, learner), msgs)
        counters = learner.ingest.counters["robot_0"]
        assert ros_graph.spin_until(lambda: counters.accepted + counters.rejected + counters.duplicate == 8, 10.0)
        assert (counters.accepted, counters.rejected, counters.duplicate) == (4, 3, 1)
        np.testing.assert_array_equal(learner.ingest.store.load_all()["obs"],
                                      np.concatenate([b.obs for b in good]))
        values = {kv.key: kv.value for kv in learner.diagnostic_status().values}
        assert values["robot_0/rejected"] == "3" and values["stored_transitions"] == str(4 * BATCH)
    finally:
        drop_learner(ros_graph, learner)


def test_policy_is_published_latched_and_valid_then_resume_keeps_everything(ros_graph: Any, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from std_msgs.msg import UInt8MultiArray

    from mbmpo_core.onnx_runtime import validate_policy_file
    from mbmpo_ros.codec import decode_policy, encode_transitions
    from mbmpo_ros.qos import POLICY_QOS

    run_dir, config = tmp_path / "run", write_config(tmp_path / "c.yaml")
    batches = real_batches(6)
    forbid_sim_envs(monkeypatch)  # the learner trains and resumes on stored data alone
    learner = make_learner(ros_graph, run_dir, config)
    try:
        send(ros_graph, transitions_pub(ros_graph, learner), [encode_transitions(b) for b in batches[:4]])
        assert ros_graph.spin_until(lambda: learner.last_policy_id != "" or learner.state == "failed", 120.0)
        assert learner.last_policy_id, learner.last_error
        # A subscriber that joins after the publication still gets it (TRANSIENT_LOCAL, depth 1).
        got: list[Any] = []
        ros_graph.node("late_controller").create_subscription(UInt8MultiArray, "/mbmpo/policy", got.append,
                                                               POLICY_QOS)
        assert ros_graph.spin_until(lambda: bool(got), 10.0)
        bundle = decode_policy(got[-1])
        policy_id = bundle.policy_id
        assert policy_id == learner.last_policy_id
        # The inner-step graph and the dynamics ensemble travel too.
        assert list(bundle.files) == ["policy.onnx", "policy.adapt.onnx", "policy.dynamics.onnx"]
        for name, data in bundle.files.items():
            (tmp_path / name).write_bytes(data)
        meta = validate_policy_file(tmp_path / "policy.onnx", expected_task=TASK)
        assert meta["policy_id"] == policy_id and meta["adapt_file"] == "policy.adapt.onnx"
        assert meta["dynamics_file"] == "policy.dynamics.onnx"
    finally:
        drop_learner(ros_graph, learner)
    # Kill/restart: a new learner on the same run directory keeps every transition and appends new ones.
    resumed = make_learner(ros_graph, run_dir, config, resume=True)
    try:
        assert resumed.ingest.stored() == 4 * BATCH and resumed.iteration == 1
        assert resumed.last_policy_id == policy_id  # re-published from policy.onnx
        send(ros_graph, transitions_pub(ros_graph, resumed), [encode_transitions(b) for b in batches[4:]])
        assert ros_graph.spin_until(lambda: resumed.ingest.stored() == 6 * BATCH, 10.0)
        np.testing.assert_array_equal(resumed.ingest.store.load_all()["obs"],
                                      np.concatenate([b.obs for b in batches]))
    finally:
        drop_learner(ros_graph, resumed)


def test_learner_module_imports_no_simulator() -> None:
    """Tasks come through mbmpo_core.registry: importing the node loads neither sim nor MuJoCo nor gymnasium."""
    code = ("import sys, mbmpo_ros.learner; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('sim', 'gymnasium', 'mujoco')]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_learner_process_publishes_diagnostics_and_exits_0_on_sigint(ros_graph: Any, tmp_path: Path) -> None:
    from diagnostic_msgs.msg import DiagnosticArray

    from mbmpo_ros.qos import DIAGNOSTICS_QOS

    seen: list[Any] = []
    ros_graph.node("diag_probe").create_subscription(DiagnosticArray, "/diagnostics", seen.append, DIAGNOSTICS_QOS)
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros_graph.domain_id)}
    cmd = [sys.executable, "-m", "mbmpo_ros.learner", "--ros-args",
           "-p", f"config:={write_config(tmp_path / 'c.yaml')}", "-p", f"run_dir:={tmp_path / 'run'}",
           "-r", "__ns:=/test"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        ok = ros_graph.spin_until(lambda: any(s.name == "mbmpo/learner" for m in seen for s in m.status), 60.0)
        assert ok, "no diagnostics from the learner process"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sim_mode_end_to_end_improves_over_warmup(ros_graph: Any, tmp_path: Path) -> None:
    """``mbmpo launch train --sim``: sim_robot + controller + learner processes over DDS; the controller swaps
    in the learner's policies and the robot's return rises far above the random warm-up's."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros_graph.domain_id)}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mbmpo_ros.launcher", "train", "--sim", "--steps", "2000", "--rate-hz", "100",
           "--run-dir", str(run), "--config", str(root / "tests" / "learning" / "inverted_pendulum.yaml")]
    proc = run_launcher(cmd, env, root, timeout_s=400.0)
    log = proc.stdout[-4000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    assert "[launch] learner finished" in proc.stdout
    assert proc.stdout.count("validated") >= 1 and "rejected policy" not in proc.stdout, log
    with (run / "progress.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 2 and (run / "policy.onnx").is_file() and (run / "learning_curve.png").is_file()
    # Episode returns by the policy that ran them, from what the learner stored (complete episodes only).
    returns = episode_returns_by_policy(TransitionStore(run / "transitions"))
    warmup = returns.pop("warmup-random")
    learned = [r for episodes in returns.values() for r in episodes]
    # Random actions balance ~5 steps; the first learned policies balance for tens of steps (horizon 100).
    assert len(learned) >= 3, returns
    assert np.mean(warmup) < 15 and np.mean(learned) > max(30.0, 3 * np.mean(warmup)), (np.mean(warmup), returns)
    # The controller adapted online (its defaults: 2 episodes of theta, then inner steps): the run directory shows it.
    data = TransitionStore(run / "transitions").load_all()
    warmup_rows = data["policy_id"] == "warmup-random"
    assert data["adapted"][~warmup_rows].any() and not data["adapted"][warmup_rows].any()


def run_launcher(cmd: list[str], env: dict[str, str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run the launcher; past ``timeout_s`` it gets SIGINT (it stops its node processes, which run in their own
    sessions and would outlive a SIGKILL) and the test fails with the end of its output."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"launcher still running after {timeout_s:.0f} s; output ends with:\n{out[-4000:]}{err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def episode_returns_by_policy(store: TransitionStore) -> dict[str, list[float]]:
    """{policy id: returns of its complete episodes}; an episode is complete when a later row starts another."""
    data = store.load_all()
    starts = np.flatnonzero(data["step"] == 0)
    out: dict[str, list[float]] = {}
    for lo, hi in itertools.pairwise(starts):
        out.setdefault(str(data["policy_id"][lo]), []).append(float(data["reward"][lo:hi].sum()))
    return out


def test_threads_and_iteration_progress_on_diagnostics(ros_graph: Any, tmp_path: Path) -> None:
    import torch

    from mbmpo_core.meta_learner import ImproveProgress

    before = torch.get_num_threads()
    learner = make_learner(ros_graph, tmp_path / "run", write_config(tmp_path / "c.yaml", random_steps=10**6),
                           threads=2)
    try:
        assert torch.get_num_threads() == 2  # set at start, before any training
        learner._on_progress(ImproveProgress(iteration=0, phase="meta", epoch=12, max_epochs=30, meta_step=3,
                                             meta_steps=20, elapsed_s=41.4, eta_s=170.2))

        def values() -> dict[str, str]:
            return {kv.key: kv.value for kv in learner.diagnostic_status().values}

        assert "progress.phase" not in values()  # shown only while an iteration runs
        learner.status.update(state="training iteration 0")
        assert {k: v for k, v in values().items() if k.startswith("progress.")} == {
            "progress.phase": "meta-training", "progress.model_epoch": "12/30", "progress.meta_step": "3/20",
            "progress.elapsed_s": "41", "progress.eta_s": "170"}
    finally:
        drop_learner(ros_graph, learner)
        torch.set_num_threads(before)
