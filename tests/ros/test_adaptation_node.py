"""Controller online adaptation, in-process over real DDS (sim_robot in lockstep)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (pip install -e '.[ros]')")

from node_helpers import NS, TASK, collect, small_policy_bundle, start_controller, start_sim

from mbmpo_ros.codec import decode_transitions, encode_policy
from mbmpo_ros.qos import COMMAND_QOS, POLICY_QOS, TRANSITIONS_QOS

pytestmark = pytest.mark.ros


def test_controller_adapts_online(ros_graph: Any) -> None:
    from std_msgs.msg import Float64MultiArray, UInt8MultiArray

    from sim import make_task

    bundle = small_policy_bundle(make_task(TASK, horizon=15), TASK, inner_lr=0.5)
    pid = bundle.policy_id
    pub = ros_graph.node("learner_stub").create_publisher(UInt8MultiArray, "/mbmpo/policy", POLICY_QOS)
    pub.publish(encode_policy(bundle))
    batches = collect(ros_graph, f"/{NS}/mbmpo/transitions", Float64MultiArray, TRANSITIONS_QOS)
    commands = collect(ros_graph, f"/{NS}/command", Float64MultiArray, COMMAND_QOS)
    start_sim(ros_graph)
    ctrl = start_controller(ros_graph, ramp_s=0.0, adapt_episodes=2, adapt_steps_max=2, revert_margin=1e9)

    def adapted_rows() -> bool:
        return any(decode_transitions(m).adapted.any() for m in batches)

    assert ros_graph.spin_until(lambda: ctrl.adapter.steps >= 1 and adapted_rows(), timeout=15.0)
    diag = ctrl.diagnostics()
    assert int(diag["adapt.steps"]) >= 1 and diag["adapt.pre_return"] != "" and diag["adapt.reverted"] == "0"
    decoded = [decode_transitions(m) for m in batches]
    assert all(b.policy_id == pid for b in decoded if b.adapted.any())  # theta's id on adapted rows
    assert any(b.policy_id == pid and not b.adapted.any() for b in decoded)  # theta ran first
    n_cmd = len(commands)
    assert ros_graph.spin_until(lambda: len(commands) >= n_cmd + 20, timeout=5.0)  # the tick keeps going
