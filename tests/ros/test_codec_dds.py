"""The wire contract over real DDS: delivery, ordering, latching, QoS pairs, rejection of malformed data.

Run as a script (``python test_codec_dds.py publish``) it is the publisher process of the cross-process test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

N_BATCHES = 50
OBS_DIM, ACT_DIM = 17, 6


def make_batch(seq: int, n: int = 64) -> Any:
    """Deterministic batch ``seq`` (both processes rebuild it from the number alone)."""
    from mbmpo_ros.codec import TransitionBatch

    rng = np.random.default_rng(seq)
    return TransitionBatch(
        obs=rng.normal(size=(n, OBS_DIM)),
        act=rng.uniform(-1, 1, size=(n, ACT_DIM)),
        next_obs=rng.normal(size=(n, OBS_DIM)),
        reward=rng.normal(size=n),
        done=np.arange(n) == n - 1,
        step=np.arange(n) + seq * n,
        episode=np.full(n, seq // 4),
        adapted=np.full(n, seq % 2 == 1),
        robot="robot_7",
        policy_id="ab" * 32,
        seq=seq,
    )


def _wait_matched(graph: Any, pub: Any, sub: Any, timeout: float = 5.0) -> None:
    """VOLATILE topics lose what is published before discovery completes: wait for both ends."""
    assert graph.spin_until(lambda: pub.get_subscription_count() > 0 and sub.get_publisher_count() > 0, timeout)


def test_transitions_cross_process_complete_and_in_order(ros_graph: Any) -> None:
    from std_msgs.msg import Float64MultiArray

    from mbmpo_ros.codec import SeqKind, SequenceTracker, decode_transitions
    from mbmpo_ros.qos import TRANSITIONS_QOS

    received: list[Any] = []
    node = ros_graph.node("learner_probe")
    node.create_subscription(Float64MultiArray, "/r7/mbmpo/transitions", received.append, TRANSITIONS_QOS)
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros_graph.domain_id)}
    proc = subprocess.Popen([sys.executable, __file__, "publish"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        ros_graph.spin_until(lambda: len(received) >= N_BATCHES or proc.poll() not in (None, 0), 20.0)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert len(received) == N_BATCHES, out
    tracker = SequenceTracker()
    for seq, msg in enumerate(received):
        got = decode_transitions(msg, expected_obs_dim=OBS_DIM, expected_act_dim=ACT_DIM)
        want = make_batch(seq)
        assert tracker.observe(got.robot, got.seq).kind == SeqKind.OK
        for name in ("obs", "act", "next_obs", "reward", "done", "step", "episode", "adapted"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=f"{seq}:{name}")
        assert (got.seq, got.robot, got.policy_id) == (seq, want.robot, want.policy_id)


def test_policy_reaches_late_joiner(ros_graph: Any) -> None:
    import onnx
    from std_msgs.msg import UInt8MultiArray

    from mbmpo_core.bundle import PolicyBundle
    from mbmpo_ros.codec import decode_policy, encode_policy
    from mbmpo_ros.qos import POLICY_QOS

    def bundle(pid: str, size: int) -> PolicyBundle:
        """An ONNX file of ``size`` random bytes' worth that states ``pid`` (the codec reads only metadata)."""
        model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []), doc_string=os.urandom(size).hex())
        onnx.helper.set_model_props(model, {"policy_id": pid, "adapt_file": ""})
        return PolicyBundle.from_files({"policy.onnx": model.SerializeToString()})

    pub = ros_graph.node("learner").create_publisher(UInt8MultiArray, "/mbmpo/policy", POLICY_QOS)
    old, new = bundle("old", 25_000), bundle("new", 30_000)
    pub.publish(encode_policy(old))
    pub.publish(encode_policy(new))  # depth 1: only this one is kept for late joiners
    received: list[Any] = []
    ros_graph.node("controller").create_subscription(UInt8MultiArray, "/mbmpo/policy", received.append, POLICY_QOS)
    assert ros_graph.spin_until(lambda: len(received) >= 1, 5.0)
    ros_graph.spin_until(lambda: len(received) > 1, 0.3)  # would catch a replay of the old one
    assert [decode_policy(m) for m in received] == [new]


# rclpy's own handler for "incompatible QoS" events calls a deprecated logger method: expected noise here.
@pytest.mark.filterwarnings("ignore:Deprecated in favor of:DeprecationWarning")
def test_qos_pairs(ros_graph: Any) -> None:
    from rclpy.qos import QoSCompatibility, QoSProfile, ReliabilityPolicy, qos_check_compatible
    from std_msgs.msg import Float64MultiArray

    from mbmpo_ros import qos

    best_effort_pub = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
    reliable_sub = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pairs = {  # topic: (publisher QoS, subscriber QoS, should connect)
        "policy": (qos.POLICY_QOS, qos.POLICY_QOS, True),
        "transitions": (qos.TRANSITIONS_QOS, qos.TRANSITIONS_QOS, True),
        "state_from_ros2_control": (qos.STATE_PUB_QOS, qos.STATE_QOS, True),
        "state_from_sensor_driver": (qos.STATE_QOS, qos.STATE_QOS, True),
        "command": (qos.COMMAND_QOS, qos.COMMAND_QOS, True),
        "diagnostics": (qos.DIAGNOSTICS_QOS, qos.DIAGNOSTICS_QOS, True),
        "best_effort_to_reliable": (best_effort_pub, reliable_sub, False),
        "volatile_to_latched": (qos.TRANSITIONS_QOS, qos.POLICY_QOS, False),
    }
    pub_node, sub_node = ros_graph.node("pubs"), ros_graph.node("subs")
    got: dict[str, int] = dict.fromkeys(pairs, 0)
    pubs = []
    for topic, (pub_qos, sub_qos, connects) in pairs.items():
        assert qos.compatible(pub_qos, sub_qos) is connects, topic
        rclpy_says = qos_check_compatible(pub_qos, sub_qos)[0]
        assert (rclpy_says == QoSCompatibility.OK) is connects, (topic, rclpy_says)
        pubs.append(pub_node.create_publisher(Float64MultiArray, topic, pub_qos))

        def count(_msg: Any, topic: str = topic) -> None:
            got[topic] += 1

        sub_node.create_subscription(Float64MultiArray, topic, count, sub_qos)
    msg = Float64MultiArray(data=[1.0])
    pub_node.create_timer(0.05, lambda: [p.publish(msg) for p in pubs])
    should = [t for t, (_, _, c) in pairs.items() if c]
    assert ros_graph.spin_until(lambda: all(got[t] for t in should), 8.0), got
    ros_graph.spin_until(lambda: False, 0.5)  # give the incompatible pairs more time to (wrongly) deliver
    assert got["best_effort_to_reliable"] == 0 and got["volatile_to_latched"] == 0, got


def test_malformed_transitions_rejected_good_ones_still_decoded(ros_graph: Any) -> None:
    import array

    from std_msgs.msg import Float64MultiArray

    from mbmpo_ros.codec import CodecError, decode_transitions, encode_transitions
    from mbmpo_ros.qos import TRANSITIONS_QOS

    def bad_version(m: Any) -> None:
        m.layout.dim[0].label = "codec=99"

    def nan(m: Any) -> None:
        m.data[20] = float("nan")

    def truncated(m: Any) -> None:
        m.data = array.array("d", m.data[:-7])

    def random_labels(m: Any) -> None:
        for i, dim in enumerate(m.layout.dim):
            dim.label = f"x{i}?"

    corruptions = [bad_version, nan, truncated, random_labels]
    outgoing = []
    for i, corrupt in enumerate(corruptions):
        bad = encode_transitions(make_batch(100 + i, n=8))
        corrupt(bad)
        outgoing += [bad, encode_transitions(make_batch(i, n=8))]
    decoded: list[Any] = []
    errors: list[str] = []

    def on_msg(m: Any) -> None:
        try:
            decoded.append(decode_transitions(m, expected_obs_dim=OBS_DIM, expected_act_dim=ACT_DIM))
        except CodecError as exc:
            errors.append(str(exc))

    pub = ros_graph.node("robot").create_publisher(Float64MultiArray, "/r/mbmpo/transitions", TRANSITIONS_QOS)
    sub = ros_graph.node("learner").create_subscription(Float64MultiArray, "/r/mbmpo/transitions", on_msg,
                                                       TRANSITIONS_QOS)
    _wait_matched(ros_graph, pub, sub)
    for m in outgoing:
        pub.publish(m)
    assert ros_graph.spin_until(lambda: len(decoded) + len(errors) >= len(outgoing), 5.0)
    assert [b.seq for b in decoded] == list(range(len(corruptions)))
    assert len(errors) == len(corruptions), errors
    for reason, expected in zip(errors, ("unknown codec version", "NaN", "data has", "missing header label"),
                                strict=True):
        assert expected in reason


def _publish_main() -> int:
    """Publisher process: wait for the subscriber, send N_BATCHES batches, wait until all are acknowledged."""
    import rclpy
    from std_msgs.msg import Float64MultiArray

    from mbmpo_ros.codec import encode_transitions
    from mbmpo_ros.qos import TRANSITIONS_QOS

    rclpy.init()  # domain from ROS_DOMAIN_ID, set by the test
    node = rclpy.create_node("robot_7_controller")
    pub = node.create_publisher(Float64MultiArray, "/r7/mbmpo/transitions", TRANSITIONS_QOS)
    deadline = time.monotonic() + 10.0
    while pub.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            print("no subscriber matched")
            return 1
        rclpy.spin_once(node, timeout_sec=0.05)
    for seq in range(N_BATCHES):
        pub.publish(encode_transitions(make_batch(seq)))
    from rclpy.duration import Duration

    acked = pub.wait_for_all_acked(Duration(seconds=10))
    node.destroy_node()
    rclpy.shutdown()
    print(f"published {N_BATCHES}, acked={acked}")
    return 0 if acked else 1


if __name__ == "__main__" and sys.argv[1:] == ["publish"]:
    sys.exit(_publish_main())
