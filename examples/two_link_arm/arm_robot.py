"""A stand-in for a real two-joint arm, as its ROS 2 driver would look to mbmpo: ``joint_states`` out
(``sensor_msgs/JointState``: shoulder, elbow, position and velocity), joint velocity commands in (``command``,
``std_msgs/Float64MultiArray``, as a ros2_control forward command controller takes them), and a ``reset``
service (``std_srvs/Trigger``) that brings the arm back to its start pose. No simulator: numpy only.

    python examples/two_link_arm/arm_robot.py --ros-args -r __ns:=/robot_0 [-p rate_hz:=20.0 -p seed:=0]

Dynamics, per tick of ``step_s`` seconds (0.05, the task's control period, however fast ``rate_hz`` runs the
clock): each joint's velocity follows its command with a first-order lag (time constant ``lag_s``), the
position integrates the velocity, and hard stops at +-3 rad zero the velocity. A command of the wrong size or
with NaN is ignored (counted, with a rate-limited warning); no command for ``command_timeout_s`` means zero
velocity, as a driver's watchdog would.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

JOINTS = ("shoulder", "elbow")
HARD_STOP = 3.0  # rad


class ArmRobot(Node):
    """The stand-in arm (see module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("arm_robot", **kwargs)
        self.rate_hz = float(self.declare_parameter("rate_hz", 20.0).value)
        self.step_s = float(self.declare_parameter("step_s", 0.05).value)
        self.lag_s = float(self.declare_parameter("lag_s", 0.1).value)
        self.command_timeout_s = float(self.declare_parameter("command_timeout_s", 0.5).value)
        self.rng = np.random.default_rng(int(self.declare_parameter("seed", 0).value))
        if min(self.rate_hz, self.step_s, self.lag_s, self.command_timeout_s) <= 0:
            raise ValueError("rate_hz, step_s, lag_s and command_timeout_s must be > 0")
        self.position = np.zeros(len(JOINTS))
        self.velocity = np.zeros(len(JOINTS))
        self.command = np.zeros(len(JOINTS))
        self.commands = 0  # accepted commands
        self.bad_commands = 0
        self.resets = 0
        self._last_command = self.get_clock().now()
        self._state_pub = self.create_publisher(JointState, "joint_states", 10)
        self.create_subscription(Float64MultiArray, "command", self._on_command, 10)
        self.create_service(Trigger, "reset", self._on_reset)
        self.reset()
        self.create_timer(1.0 / self.rate_hz, self._tick)

    def reset(self) -> None:
        """Back to the start pose (small random offsets), at rest."""
        self.position = self.rng.uniform(-0.05, 0.05, len(JOINTS))
        self.velocity[:] = 0.0
        self.command[:] = 0.0

    def _on_command(self, msg: Float64MultiArray) -> None:
        values = np.asarray(msg.data, dtype=np.float64)
        if values.shape != (len(JOINTS),) or not np.isfinite(values).all():
            self.bad_commands += 1
            self.get_logger().warning(f"ignored a command of {values.size} values ({self.bad_commands} so far); "
                                      f"expected {len(JOINTS)} finite joint velocities", throttle_duration_sec=5.0)
            return
        self.command = values
        self.commands += 1
        self._last_command = self.get_clock().now()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.reset()
        self.resets += 1
        response.success, response.message = True, "at the start pose"
        return response

    def _tick(self) -> None:
        idle_s = (self.get_clock().now() - self._last_command).nanoseconds * 1e-9
        target = self.command if idle_s < self.command_timeout_s else np.zeros(len(JOINTS))
        self.velocity += (target - self.velocity) * min(1.0, self.step_s / self.lag_s)
        self.position += self.velocity * self.step_s
        stopped = np.abs(self.position) >= HARD_STOP
        self.position = np.clip(self.position, -HARD_STOP, HARD_STOP)
        self.velocity[stopped] = 0.0
        msg = JointState(name=list(JOINTS), position=self.position.tolist(), velocity=self.velocity.tolist())
        msg.header.stamp = self.get_clock().now().to_msg()
        self._state_pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    try:
        node = ArmRobot()
    except ValueError as exc:
        print(f"arm_robot: error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
