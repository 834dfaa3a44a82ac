"""The controller as a managed (lifecycle) node over real DDS: the standard ``lifecycle_msgs`` services that
``ros2 lifecycle set`` calls, with the controller's meaning (hold while inactive, ramp in on activate)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (pip install -e '.[ros]')")

from node_helpers import NS, collect, start_controller, start_sim

from mbmpo_ros.codec import decode_command
from mbmpo_ros.qos import COMMAND_QOS

pytestmark = pytest.mark.ros
NODE = f"/{NS}/controller"


def change_state(graph: Any, client_node: Any, label: str) -> bool:
    """``ros2 lifecycle set /r1/controller <label>``: a ChangeState request by transition label."""
    from lifecycle_msgs.srv import ChangeState

    client = client_node.create_client(ChangeState, f"{NODE}/change_state")
    assert graph.spin_until(client.service_is_ready, timeout=5.0)
    request = ChangeState.Request()
    request.transition.label = label
    future = client.call_async(request)
    assert graph.spin_until(future.done, timeout=5.0)
    return bool(future.result().success)


def current_state(graph: Any, client_node: Any) -> str:
    """``ros2 lifecycle get /r1/controller``."""
    from lifecycle_msgs.srv import GetState

    client = client_node.create_client(GetState, f"{NODE}/get_state")
    assert graph.spin_until(client.service_is_ready, timeout=5.0)
    future = client.call_async(GetState.Request())
    assert graph.spin_until(future.done, timeout=5.0)
    return str(future.result().current_state.label)


def test_lifecycle_transitions_hold_and_ramp(ros_graph: Any) -> None:
    from lifecycle_msgs.msg import TransitionEvent
    from std_msgs.msg import Float64MultiArray

    got: list[tuple[float, float]] = []
    probe = ros_graph.node("probe")
    probe.create_subscription(Float64MultiArray, f"/{NS}/command",
                              lambda m: got.append((time.monotonic(), float(decode_command(m, 1)[0]))), COMMAND_QOS)
    events = collect(ros_graph, f"{NODE}/transition_event", TransitionEvent, 10)
    start_sim(ros_graph)
    ramp_s = 1.0
    ctrl = start_controller(ros_graph, autostart=False, ramp_s=ramp_s)  # warm-up policy: uniform in [-3, 3]
    assert current_state(ros_graph, probe) == "unconfigured" and ctrl.lifecycle.value == "unconfigured"
    assert ros_graph.spin_until(lambda: False, timeout=0.5) is False and got == []  # unconfigured: no commands
    assert not change_state(ros_graph, probe, "activate")  # must configure first
    assert change_state(ros_graph, probe, "configure") and current_state(ros_graph, probe) == "inactive"
    got.clear()
    assert ros_graph.spin_until(lambda: len(got) >= 10, timeout=5.0)
    assert all(c == 0.0 for _, c in got) and ctrl.hold_counts["inactive"] >= 10  # inactive: holds
    assert change_state(ros_graph, probe, "activate")
    start = time.monotonic()
    got.clear()
    assert ros_graph.spin_until(lambda: time.monotonic() - start > ramp_s + 0.5, timeout=5.0)
    ramp = [(t, c) for t, c in got if t - start < ramp_s]
    assert len(ramp) >= 10
    # Received at t, published earlier: |action| <= 3 * (t - start) / ramp_s (scale rises linearly).
    assert all(abs(c) <= 3.0 * (t - start) / ramp_s + 1e-9 for t, c in ramp)
    assert max(abs(c) for t, c in got if t - start > ramp_s) > 1.5 and ctrl.action_scale == 1.0
    assert current_state(ros_graph, probe) == "active"
    assert change_state(ros_graph, probe, "deactivate")
    got.clear()
    assert ros_graph.spin_until(lambda: len(got) >= 10, timeout=5.0)
    assert all(c == 0.0 for _, c in got[2:])  # commands published before the call may still arrive
    assert ctrl.diagnostics()["lifecycle"] == "inactive"
    assert np.isfinite(float(ctrl.diagnostics()["action_scale"]))
    # cleanup -> unconfigured, shutdown -> finalized: no commands at all.
    assert change_state(ros_graph, probe, "cleanup") and current_state(ros_graph, probe) == "unconfigured"
    assert change_state(ros_graph, probe, "shutdown") and current_state(ros_graph, probe) == "finalized"
    got.clear()
    assert ros_graph.spin_until(lambda: False, timeout=0.5) is False and got == []
    assert ctrl.diagnostics()["lifecycle"] == "finalized"
    assert ros_graph.spin_until(lambda: len(events) >= 6, timeout=3.0)
    assert [e.goal_state.label for e in events[:6]] == [
        "configuring", "inactive", "activating", "active", "deactivating", "inactive"]


def test_autostart_configures_and_activates(ros_graph: Any) -> None:
    probe = ros_graph.node("probe")
    start_sim(ros_graph)
    ctrl = start_controller(ros_graph, autostart=True)
    assert current_state(ros_graph, probe) == "active" and ctrl.lifecycle.value == "active"
