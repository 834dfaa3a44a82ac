"""ROS-mode runs report like simulated ones: progress rows with the robots' own returns before and after online
adaptation, the config's step budget, one naming form for diagnostic statuses, a description on every parameter."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (pip install -e '.[ros]')")

from node_helpers import collect, start_controller, start_sim
from test_learner import drop_learner, make_learner, send, transitions_pub, write_config

from mbmpo_ros.codec import TransitionBatch, encode_transitions

pytestmark = pytest.mark.ros
HORIZON = 20  # test_learner's TINY config


def episode_batch(seq: int, episode: int, rewards: list[float], adapted: bool, policy: str) -> TransitionBatch:
    """One episode of a robot as one batch: random states (the learner fits them), the given rewards."""
    n = len(rewards)
    rng = np.random.default_rng(seq)
    return TransitionBatch(obs=rng.normal(size=(n, 4)), act=rng.uniform(-3, 3, (n, 1)),
                           next_obs=rng.normal(size=(n, 4)), reward=np.asarray(rewards, np.float64),
                           done=np.zeros(n, bool), step=np.arange(n),
                           episode=np.full(n, episode), adapted=np.full(n, adapted), robot="robot_0",
                           policy_id=policy, seq=seq, session="s1")


def test_progress_rows_carry_the_robots_returns_before_and_after_adaptation(ros_graph: Any, tmp_path: Path) -> None:
    batches = [
        episode_batch(0, 0, [1.0] * HORIZON, adapted=False, policy="p0"),  # theta: 20
        episode_batch(1, 1, [0.5] * HORIZON, adapted=False, policy="p0"),  # theta: 10
        episode_batch(2, 2, [2.0] * HORIZON, adapted=True, policy="p0"),  # adapted theta': 40
        episode_batch(3, 3, [9.0] * 5, adapted=True, policy="p0"),  # still running: not in the row
    ]
    stored = sum(b.n for b in batches)
    learner = make_learner(ros_graph, tmp_path / "run", write_config(tmp_path / "c.yaml", random_steps=stored))
    try:
        send(ros_graph, transitions_pub(ros_graph, learner), [encode_transitions(b) for b in batches])
        assert ros_graph.spin_until(lambda: learner.iteration >= 1, 120.0), learner.state
        with (tmp_path / "run" / "progress.csv").open() as f:
            [row] = list(csv.DictReader(f))
        assert float(row["real_steps"]) == stored
        assert float(row["return_pre"]) == pytest.approx(15.0) and float(row["return_post"]) == pytest.approx(40.0)
        assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 1000
    finally:
        drop_learner(ros_graph, learner)


def test_step_budget_is_the_configs_unless_the_parameter_says_otherwise(ros_graph: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml")  # loop.total_steps 300
    for value, expected in ((0, 300), (120, 120), (-1, 0)):  # 0: never stops
        learner = make_learner(ros_graph, tmp_path / f"run{value}", config, exit_after_steps=value)
        try:
            assert learner.exit_after_steps == expected
        finally:
            drop_learner(ros_graph, learner)


def test_diagnostic_status_names_and_parameter_descriptions(ros_graph: Any, tmp_path: Path) -> None:
    from diagnostic_msgs.msg import DiagnosticArray

    from mbmpo_ros.qos import DIAGNOSTICS_QOS

    seen = collect(ros_graph, "/diagnostics", DiagnosticArray, DIAGNOSTICS_QOS)
    learner = make_learner(ros_graph, tmp_path / "run", write_config(tmp_path / "c.yaml"))
    try:
        sim = start_sim(ros_graph)
        controller = start_controller(ros_graph)
        names = lambda: {s.name for m in seen for s in m.status}  # noqa: E731
        assert ros_graph.spin_until(lambda: {"mbmpo/learner", "mbmpo/controller/r1"} <= names(), 10.0), names()
        for node in (learner, controller, sim):
            declared = [n for n in node._parameters if n != "use_sim_time"]  # use_sim_time: rclpy's own
            assert len(declared) >= 6
            for name, desc in zip(declared, node.describe_parameters(declared), strict=True):
                assert len(desc.description) > 10 and desc.read_only, (node.get_name(), name)
    finally:
        drop_learner(ros_graph, learner)
