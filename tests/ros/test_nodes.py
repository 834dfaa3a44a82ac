"""sim_robot + controller over real DDS, in-process, on InvertedPendulum-v5 (cheap physics)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (pip install -e '.[ros]')")

from node_helpers import NS, TASK, collect, small_policy_bundle, start_controller, start_sim

from mbmpo_core.bundle import PolicyBundle
from mbmpo_ros.codec import arrays_to_joint_state, decode_command, decode_transitions, encode_policy
from mbmpo_ros.qos import COMMAND_QOS, DIAGNOSTICS_QOS, POLICY_QOS, STATE_PUB_QOS, TRANSITIONS_QOS

pytestmark = pytest.mark.ros


def test_lockstep_transitions_match_env(ros_graph: Any) -> None:
    from std_msgs.msg import Float64MultiArray

    batches = collect(ros_graph, f"/{NS}/mbmpo/transitions", Float64MultiArray, TRANSITIONS_QOS)
    sim = start_sim(ros_graph)
    ctrl = start_controller(ros_graph)
    assert ros_graph.spin_until(lambda: ctrl.book.episodes_done >= 2 and len(batches) >= 3, timeout=12.0)
    decoded = [decode_transitions(m, expected_obs_dim=4, expected_act_dim=1) for m in batches]
    assert [b.seq for b in decoded] == list(range(len(decoded)))
    assert all(b.robot == NS and b.policy_id == "warmup-random" for b in decoded)
    obs = np.concatenate([b.obs for b in decoded])
    act = np.concatenate([b.act for b in decoded])
    nxt = np.concatenate([b.next_obs for b in decoded])
    rew = np.concatenate([b.reward for b in decoded])
    np.testing.assert_allclose(rew, ctrl.task.reward(obs, act, nxt))
    episodes = np.concatenate([b.episode for b in decoded])
    assert episodes.max() >= 1 and sim.resets >= 3  # initial reset + one per finished episode
    for e in np.unique(episodes):  # steps of each episode run 0, 1, 2, ... and pair consecutive states
        rows = np.flatnonzero(episodes == e)
        np.testing.assert_array_equal(np.concatenate([b.step for b in decoded])[rows], np.arange(len(rows)))
        np.testing.assert_array_equal(obs[rows[1:]], nxt[rows[:-1]])
    env_reward = {float(a[0]): r for a, r in sim.step_log}  # random actions are unique keys
    np.testing.assert_allclose(rew, [env_reward[float(a)] for a in act[:, 0]], atol=1e-9)
    assert np.all(np.abs(act) <= 3.0)


def test_policy_late_joiner_then_rejections(ros_graph: Any) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Float64MultiArray, UInt8MultiArray

    from sim import make_task

    task = make_task(TASK, horizon=15)
    good = small_policy_bundle(task, TASK, inner_lr=0.1)
    pid = good.policy_id
    pub = ros_graph.node("learner_stub").create_publisher(UInt8MultiArray, "/mbmpo/policy", POLICY_QOS)
    pub.publish(encode_policy(good))  # before the controller exists
    batches = collect(ros_graph, f"/{NS}/mbmpo/transitions", Float64MultiArray, TRANSITIONS_QOS)
    diags = collect(ros_graph, "/diagnostics", DiagnosticArray, DIAGNOSTICS_QOS)
    start_sim(ros_graph)
    ctrl = start_controller(ros_graph)

    def saw_policy() -> bool:
        return any(decode_transitions(m).policy_id == pid for m in batches) and any(
            kv.key == "policy_id" and kv.value == pid for d in diags for s in d.status for kv in s.values
        )

    assert ros_graph.spin_until(saw_policy, timeout=8.0)
    # Depth 1 keeps only the latest policy: let each one arrive before sending the next.
    pub.publish(encode_policy(PolicyBundle({"policy.onnx": os.urandom(500)}, {}, "junk")))
    assert ros_graph.spin_until(lambda: ctrl.rejected_policies >= 1, timeout=5.0)
    pub.publish(encode_policy(small_policy_bundle(task, "Hopper-v5", inner_lr=0.1)))
    assert ros_graph.spin_until(lambda: ctrl.rejected_policies >= 2, timeout=5.0)
    n_before = len(batches)
    assert ros_graph.spin_until(lambda: len(batches) >= n_before + 2, timeout=5.0)  # still running
    assert ctrl.policy_id == pid
    assert decode_transitions(batches[-1]).policy_id == pid


def test_estop_stale_and_nan_hold(ros_graph: Any) -> None:
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Float64MultiArray

    ctrl = start_controller(ros_graph, state_timeout_s=0.2)
    commands: list[np.ndarray] = []
    driver = ros_graph.node("driver")
    driver.create_subscription(Float64MultiArray, f"/{NS}/command", lambda m: commands.append(decode_command(m, 1)),
                               COMMAND_QOS)
    state_pub = driver.create_publisher(JointState, f"/{NS}/joint_states", STATE_PUB_QOS)
    estop_pub = driver.create_publisher(Bool, f"/{NS}/estop", COMMAND_QOS)
    names = ctrl.task.obs_names

    def send(obs: list[float]) -> None:
        state_pub.publish(arrays_to_joint_state(names, np.array(obs), None, None, stamp=driver.get_clock().now()))

    def run_with_states(obs: list[float], until: Any) -> bool:
        for _ in range(100):
            send(obs)
            if ros_graph.spin_until(until, timeout=0.05):
                return True
        return False

    assert run_with_states([0.0] * 4, lambda: len(commands) >= 5)
    assert any(c[0] != 0.0 for c in commands)  # warm-up acts (random, never exactly 0)
    estop_pub.publish(Bool(data=True))
    assert run_with_states([0.0] * 4, lambda: ctrl.estop and ctrl.hold_counts["estop"] >= 3)
    commands.clear()
    assert run_with_states([0.0] * 4, lambda: len(commands) >= 3)
    assert all(c[0] == 0.0 for c in commands)
    estop_pub.publish(Bool(data=False))
    assert run_with_states([0.0, float("nan"), 0.0, 0.0], lambda: not ctrl.estop and ctrl.hold_counts["bad_obs"] >= 3)
    commands.clear()
    assert ros_graph.spin_until(lambda: ctrl.hold_counts["stale_state"] >= 3 and len(commands) >= 3, timeout=3.0)
    assert all(c[0] == 0.0 for c in commands)
    assert ctrl.diagnostics()["hold.stale_state"] == str(ctrl.hold_counts["stale_state"])


class _SilentResetClient:
    """A reset client whose requests are never answered (a lost DDS service response), counting the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def service_is_ready(self) -> bool:
        return True

    def call_async(self, request: Any) -> Any:
        from rclpy.task import Future

        self.calls += 1
        return Future()  # never completes


def test_unanswered_reset_is_asked_again_and_the_loop_goes_on(ros_graph: Any) -> None:
    start_sim(ros_graph)
    controller = start_controller(ros_graph, reset_timeout_s=0.2)
    silent = _SilentResetClient()
    real = controller._reset_client
    controller._reset_client = silent
    # The first episode ends (horizon 15); its reset is never answered: the controller must ask again.
    assert ros_graph.spin_until(lambda: silent.calls >= 3, 20.0), silent.calls
    assert controller.reset_timeouts >= 2 and controller.diagnostics()["reset_timeouts"] != "0"
    # Once the robot answers again, episodes go on.
    controller._reset_client = real
    done = controller.book.episodes_done
    assert ros_graph.spin_until(lambda: controller.book.episodes_done >= done + 2, 20.0)


def test_batches_made_before_any_learner_reach_a_late_learner_in_order(ros_graph: Any) -> None:
    from std_msgs.msg import Float64MultiArray

    start_sim(ros_graph)
    controller = start_controller(ros_graph)
    # No subscriber on the transitions topic yet: the batches wait in the controller.
    assert ros_graph.spin_until(lambda: len(controller.outbox) >= 6, 20.0)
    assert controller.outbox.sent == 0 and "wait for a learner" in controller.diagnostics_message()
    batches = collect(ros_graph, f"/{NS}/mbmpo/transitions", Float64MultiArray, TRANSITIONS_QOS)
    assert ros_graph.spin_until(lambda: len(batches) >= 10, 20.0)
    seqs = [decode_transitions(m).seq for m in batches]
    assert seqs == list(range(len(seqs)))  # from the first batch the robot made, none lost, in order
    assert controller.outbox.dropped == 0


def test_outbox_cap_drops_the_oldest_and_says_so(ros_graph: Any) -> None:
    start_sim(ros_graph)
    controller = start_controller(ros_graph, outbox_batches=3)
    assert ros_graph.spin_until(lambda: controller.outbox.dropped >= 2, 20.0)
    assert len(controller.outbox) == 3 and int(controller.diagnostics()["batches_dropped"]) >= 2
