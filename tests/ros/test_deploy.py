"""A deployed controller (config/controller.yaml's defaults) over real DDS: it holds until a validated policy
arrives, keeps no batches for a learner that is not configured, and holds positions where asked to."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (pip install -e '.[ros]')")

from node_helpers import DEPLOY, NS, TASK, collect, small_policy_bundle, start_controller, start_sim

from mbmpo_ros.codec import arrays_to_joint_state, decode_command, decode_transitions, encode_policy
from mbmpo_ros.qos import COMMAND_QOS, POLICY_QOS, STATE_PUB_QOS, TRANSITIONS_QOS

pytestmark = pytest.mark.ros


def test_deployed_controller_holds_until_a_policy_arrives_and_keeps_no_batches(ros_graph: Any) -> None:
    from std_msgs.msg import Float64MultiArray, UInt8MultiArray

    from sim import make_task

    commands = collect(ros_graph, f"/{NS}/command", Float64MultiArray, COMMAND_QOS)
    start_sim(ros_graph)
    ctrl = start_controller(ros_graph, **DEPLOY, ramp_s=0.0)
    assert ros_graph.spin_until(lambda: len(commands) >= 30, timeout=10.0)
    assert all(decode_command(m, 1)[0] == 0.0 for m in commands)  # no random warm-up on a robot
    assert ctrl.hold_counts["no_policy"] >= 30 and ctrl.book.seq == 0  # nothing recorded while holding
    assert ctrl.diagnostics_message() == "holding: no policy yet" and ctrl.diagnostics()["policy_id"] == ""

    bundle = small_policy_bundle(make_task(TASK, horizon=15), TASK, inner_lr=0.1)
    ros_graph.node("publisher").create_publisher(UInt8MultiArray, "/mbmpo/policy", POLICY_QOS).publish(
        encode_policy(bundle))
    # The policy acts (exploring: sampled actions are never exactly 0) and its episodes are batched ...
    assert ros_graph.spin_until(lambda: ctrl.policy_id == bundle.policy_id and ctrl.book.seq >= 4, timeout=10.0)
    assert any(decode_command(m, 1)[0] != 0.0 for m in commands[-10:])
    # ... but with no learner configured and nobody subscribed, none is kept.
    assert len(ctrl.outbox) == 0 and ctrl.outbox.sent == 0 and ctrl.batches_discarded == ctrl.book.seq
    assert ctrl.diagnostics()["batches_discarded"] == str(ctrl.batches_discarded)
    # A late subscriber (e.g. ros2 bag record) gets the batches made from then on, live.
    discarded = ctrl.batches_discarded
    batches = collect(ros_graph, f"/{NS}/mbmpo/transitions", Float64MultiArray, TRANSITIONS_QOS)
    assert ros_graph.spin_until(lambda: len(batches) >= 3, timeout=10.0)
    seqs = [decode_transitions(m).seq for m in batches]
    assert seqs[0] >= discarded and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len(ctrl.outbox) == 0


def test_position_hold_commands_the_measured_positions(ros_graph: Any) -> None:
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    commands = collect(ros_graph, f"/{NS}/command", Float64MultiArray, COMMAND_QOS)
    ctrl = start_controller(ros_graph, **DEPLOY, hold_mode="position", obs_clip=0.0)
    assert ctrl.task.joint_names == ["slider"]  # InvertedPendulum: one action, on the slider joint
    driver = ros_graph.node("driver")
    states = driver.create_publisher(JointState, f"/{NS}/joint_states", STATE_PUB_QOS)

    def hold_at(slider: float, expected: float) -> None:
        commands.clear()
        for _ in range(100):
            obs = np.array([slider, 0.1, 0.0, 0.0])
            states.publish(arrays_to_joint_state(ctrl.task.obs_names, obs, None, None, stamp=driver.get_clock().now()))
            if ros_graph.spin_until(lambda: len(commands) >= 5, timeout=0.05):
                break
        held = [decode_command(m, 1)[0] for m in commands[1:]]  # the first may answer the previous state
        assert len(held) >= 4 and all(c == expected for c in held), held

    assert ros_graph.spin_until(lambda: False, timeout=0.5) is False and commands == []  # no state: no command
    hold_at(0.7, 0.7)
    hold_at(5.0, 3.0)  # clipped into the slider's action bounds
    assert ctrl.hold_counts["no_policy"] >= 8 and ctrl.diagnostics()["hold_mode"] == "position"
