"""Controller online adaptation and lifecycle, in-process over real DDS (sim_robot in lockstep)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (pip install -e '.[ros]')")

from node_helpers import NS, TASK, collect, small_policy_bundle, start_controller, start_sim

from mbmpo_ros.codec import decode_command, decode_transitions, encode_policy
from mbmpo_ros.qos import COMMAND_QOS, POLICY_QOS, TRANSITIONS_QOS

pytestmark = pytest.mark.ros


def _call(graph: Any, node: Any, name: str) -> Any:
    from std_srvs.srv import Trigger

    client = node.create_client(Trigger, name)
    assert graph.spin_until(client.service_is_ready, timeout=5.0)
    future = client.call_async(Trigger.Request())
    assert graph.spin_until(future.done, timeout=5.0)
    return future.result()


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


def test_lifecycle_hold_and_ramp(ros_graph: Any) -> None:
    from std_msgs.msg import Float64MultiArray

    got: list[tuple[float, float]] = []
    probe = ros_graph.node("probe")
    probe.create_subscription(Float64MultiArray, f"/{NS}/command",
                              lambda m: got.append((time.monotonic(), float(decode_command(m, 1)[0]))), COMMAND_QOS)
    start_sim(ros_graph)
    ramp_s = 1.0
    ctrl = start_controller(ros_graph, autostart=False, ramp_s=ramp_s)  # warm-up policy: uniform in [-3, 3]
    assert ctrl.lifecycle.value == "unconfigured"
    assert not _call(ros_graph, probe, f"/{NS}/controller/activate").success  # must configure first
    assert _call(ros_graph, probe, f"/{NS}/controller/configure").success
    got.clear()
    assert ros_graph.spin_until(lambda: len(got) >= 10, timeout=5.0)
    assert all(c == 0.0 for _, c in got) and ctrl.hold_counts["inactive"] >= 10  # inactive: holds
    assert _call(ros_graph, probe, f"/{NS}/controller/activate").success
    start = time.monotonic()
    got.clear()
    assert ros_graph.spin_until(lambda: time.monotonic() - start > ramp_s + 0.5, timeout=5.0)
    ramp = [(t, c) for t, c in got if t - start < ramp_s]
    assert len(ramp) >= 10
    # Received at t, published earlier: |action| <= 3 * (t - start) / ramp_s (scale rises linearly).
    assert all(abs(c) <= 3.0 * (t - start) / ramp_s + 1e-9 for t, c in ramp)
    assert max(abs(c) for t, c in got if t - start > ramp_s) > 1.5 and ctrl.action_scale == 1.0
    assert _call(ros_graph, probe, f"/{NS}/controller/deactivate").success
    got.clear()
    assert ros_graph.spin_until(lambda: len(got) >= 10, timeout=5.0)
    assert all(c == 0.0 for _, c in got[2:])  # commands published before the call may still arrive
    assert ctrl.diagnostics()["lifecycle"] == "inactive"
    assert np.isfinite(float(ctrl.diagnostics()["action_scale"]))
