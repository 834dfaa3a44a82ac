"""``sim_robot``: a simulated task (a MuJoCo task of ``sim``, by name through :mod:`mbmpo_core.registry`) behind the
same topics a real robot driver offers.

Topics and services (relative names, so they land in the node's namespace ``<ns>``):

* publishes ``joint_states`` (``sensor_msgs/JointState``, STATE_PUB_QOS) as an *observation joint state*:
  ``name = task.obs_names``, ``position = the task observation``, velocity/effort empty (see
  :mod:`mbmpo_ros.safety` for how the controller maps names to observations). ``header.stamp`` is the node
  time at which that state was produced by a physics step or reset; a republished state keeps its stamp,
  so the controller can tell a new state from a repeated one.
* subscribes ``command`` (``std_msgs/Float64MultiArray``, COMMAND_QOS): the action, held until the next one
  (zero-order hold, as actuators do). Invalid commands are counted, warned about (rate-limited), ignored.
* serves ``reset`` (``std_srvs/Trigger``): resets the env and publishes the initial state at once.

Modes: free-running (one physics step per timer tick at ``rate_hz``, default ``1 / task.dt``) or
``lockstep`` (one physics step per command, the state published right after it; if no command comes for
``lockstep_timeout_s`` the current state is republished, so a lost message cannot stall the loop).
The env is built with a very long time limit: episodes are ended by the controller (its ``horizon``),
like on a real robot, and physics keeps running after a task's termination condition until a reset.
Parameters: :data:`mbmpo_ros.params.SIM_ROBOT_PARAMS` (all read-only).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from mbmpo_core.registry import make_task
from mbmpo_ros.codec import CodecError, arrays_to_joint_state, decode_command
from mbmpo_ros.params import SIM_ROBOT_PARAMS, declare_parameters
from mbmpo_ros.qos import COMMAND_QOS, STATE_PUB_QOS
from mbmpo_ros.spin import run_node

_SIM_TIME_LIMIT = 10**9  # steps; effectively no TimeLimit truncation (the controller ends episodes)
_WARN_PERIOD_S = 5.0


def _perturbation(text: str) -> dict[str, Any] | None:
    """The ``perturbation`` parameter: a JSON object, or '' for none; anything else is a one-line ValueError."""
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"parameter perturbation is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"parameter perturbation must be a JSON object, got {text!r}")
    return value


class SimRobot(Node):
    """A simulated robot: MuJoCo env stepping on commands or on a timer (see module docstring)."""

    def __init__(self, node_name: str = "sim_robot", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        p = declare_parameters(self, SIM_ROBOT_PARAMS)  # all read-only: read here, once
        self.task = make_task(str(p["task"]), horizon=_SIM_TIME_LIMIT)
        if not callable(getattr(self.task, "make_env", None)):
            raise ValueError(f"task {p['task']!r} has no simulator (make_env): sim_robot cannot run it")
        rate = float(p["rate_hz"])
        self.rate_hz = rate if rate > 0 else 1.0 / self.task.dt
        self.seed = int(p["seed"])
        self.lockstep = bool(p["lockstep"])
        self.lockstep_timeout_s = float(p["lockstep_timeout_s"])
        self.env = self.task.make_env(seed=self.seed, perturbation=_perturbation(str(p["perturbation"])))
        self.act_dim = self.task.act_dim
        self.action = np.zeros(self.act_dim)
        self.invalid_commands = 0
        self.steps = 0
        self.resets = 0
        # (action, env reward) of every physics step: lets in-process tests compare with the controller's.
        self.step_log: list[tuple[np.ndarray, float]] = []
        self._last_warn = -np.inf
        self._obs = np.zeros(self.task.obs_dim)
        self._stamp: Any = None
        self._last_pub = time.monotonic()
        self._pub = self.create_publisher(JointState, "joint_states", STATE_PUB_QOS)
        self.create_subscription(Float64MultiArray, "command", self._on_command, COMMAND_QOS)
        self.create_service(Trigger, "reset", self._on_reset)
        self._do_reset()
        period = min(self.lockstep_timeout_s, 0.05) if self.lockstep else 1.0 / self.rate_hz
        self.create_timer(period, self._on_timer)

    def _do_reset(self) -> None:
        obs, _ = self.env.reset(seed=self.seed + self.resets)
        self.resets += 1
        self.action = np.zeros(self.act_dim)
        self._set_state(np.asarray(obs, np.float64))

    def _set_state(self, obs: np.ndarray) -> None:
        self._obs = obs
        self._stamp = self.get_clock().now().to_msg()
        self._publish()

    def _publish(self) -> None:
        self._pub.publish(arrays_to_joint_state(self.task.obs_names, self._obs, None, None, stamp=self._stamp))
        self._last_pub = time.monotonic()

    def _step(self) -> None:
        obs, reward, _terminated, _truncated, _ = self.env.step(self.action.astype(np.float32))
        self.steps += 1
        self.step_log.append((self.action.copy(), float(reward)))
        self._set_state(np.asarray(obs, np.float64))

    def _on_command(self, msg: Float64MultiArray) -> None:
        try:
            self.action = decode_command(msg, self.act_dim)
        except CodecError as exc:
            self.invalid_commands += 1
            now = time.monotonic()
            if now - self._last_warn > _WARN_PERIOD_S:
                self._last_warn = now
                self.get_logger().warning(f"ignoring invalid command ({self.invalid_commands} so far): {exc}")
            return
        if self.lockstep:
            self._step()

    def _on_timer(self) -> None:
        if not self.lockstep:
            self._step()
        elif time.monotonic() - self._last_pub >= self.lockstep_timeout_s:
            self._publish()  # same stamp: the controller sees it is no new state

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._do_reset()
        response.success = True
        response.message = f"reset {self.resets}"
        return response

    def destroy_node(self) -> None:
        """Close the env with the node (absent if the constructor failed early)."""
        env = getattr(self, "env", None)
        if env is not None:
            env.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """``ros2 run mbmpo_ros sim_robot`` entry point."""
    rclpy.init(args=args)
    return run_node("sim_robot", SimRobot, SingleThreadedExecutor())


if __name__ == "__main__":
    sys.exit(main())
