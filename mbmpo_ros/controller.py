"""``controller``: the on-robot loop. Observation from ``joint_states`` -> ONNX policy (onnxruntime) ->
safety chain -> ``command``; transitions (reward and done computed from observations with the task spec)
batched to ``mbmpo/transitions``; policies hot-swapped from ``/mbmpo/policy``; health on ``/diagnostics``.

Never imports torch (checked by a test): the policy runs on :mod:`mbmpo_core.onnx_runtime`.

Tick (timer at ``rate_hz``), acting only on a *new* state (a stamp not seen before), so that in lockstep
each state gets exactly one command and each transition pairs consecutive states:

1. swap in a validated pending policy (tick boundary);
2. hold if e-stopped, if no new state arrived for ``state_timeout_s``, or if the observation is NaN/Inf;
3. otherwise close the open transition with this observation (reward/done; episode end -> async ``reset``
   service call, no commands until it answers), run the policy (sampled if ``explore``), clip, rate-limit;
4. publish the command; open the next transition (holds open none: their outcome is not trusted data).
"""

from __future__ import annotations

import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, UInt8MultiArray
from std_srvs.srv import Trigger

from mbmpo_core.onnx_runtime import OnnxPolicy, PolicyValidationError, validate_policy_file
from mbmpo_ros.codec import CodecError, decode_policy, encode_command, encode_transitions
from mbmpo_ros.qos import COMMAND_QOS, DIAGNOSTICS_QOS, POLICY_QOS, STATE_QOS, TRANSITIONS_QOS
from mbmpo_ros.safety import EpisodeBook, HoldReason, SafetyChain, hold_reason, obs_from_joint_state
from mbmpo_ros.spin import run_node


def load_task(name: str, horizon: int) -> Any:
    """The task spec (names, bounds, dt, numpy reward/done) from :mod:`sim`, which loads no torch."""
    from sim import make_task

    return make_task(name, horizon=horizon)


class Controller(Node):
    """The on-robot controller node (see module docstring)."""

    def __init__(self, node_name: str = "controller", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        p = self._param
        self.task = load_task(p("task", "HalfCheetah-v5", "task name"), int(p("horizon", 200, "episode steps")))
        rate = float(p("rate_hz", 0.0, "control rate; 0 = 1/task.dt"))
        self.rate_hz = rate if rate > 0 else 1.0 / self.task.dt
        self.warmup = str(p("warmup_policy", "random", "random|zero: acts until a policy arrives"))
        self.explore = bool(p("explore", True, "sample actions from the policy (the learner needs exploration)"))
        self.state_timeout_s = float(p("state_timeout_s", 0.5, "no new state for this long -> hold"))
        ns = self.get_namespace().strip("/")
        self.robot_id = str(p("robot_id", "", "robot id in transitions; '' = node namespace")) or ns or "robot"
        self.rng = np.random.default_rng(int(p("seed", 0, "seed of exploration noise and warm-up actions")))
        self.safety = SafetyChain(
            self.task.action_low, self.task.action_high,
            rate_limit=float(p("action_rate_limit", 0.0, "max |delta action| per tick; 0 = off")),
            obs_clip=float(p("obs_clip", 0.0, "clip observations to +-this; 0 = off")),
        )
        self.book = EpisodeBook(self.task.horizon, self.task.reward, self.task.done,
                                int(p("batch_size", 50, "transitions per published batch")), robot=self.robot_id)
        self.policy: OnnxPolicy | None = None
        self.policy_id = f"warmup-{self.warmup}"
        self._next_policy: OnnxPolicy | None = None
        self.rejected_policies = 0
        self.hold_counts: collections.Counter[str] = collections.Counter()
        self.estop = False
        self._state: tuple[Any, np.ndarray | None, float] | None = None  # (stamp, obs or None, arrival)
        self._used_stamp: Any = None
        self._resetting = False
        self._tmp = tempfile.TemporaryDirectory(prefix="mbmpo_policy_")
        self._policy_count = 0
        self._cmd_pub = self.create_publisher(Float64MultiArray, "command", COMMAND_QOS)
        self._tr_pub = self.create_publisher(Float64MultiArray, "mbmpo/transitions", TRANSITIONS_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self.create_subscription(JointState, "joint_states", self._on_state, STATE_QOS)
        self.create_subscription(Bool, "estop", self._on_estop, COMMAND_QOS)
        # Own group: validating a policy (ONNX load, test inference) must not delay ticks in a multi-threaded spin.
        self.create_subscription(UInt8MultiArray, "/mbmpo/policy", self._on_policy, POLICY_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self._reset_client: Any = self.create_client(Trigger, "reset")
        self._started = time.monotonic()
        self.create_timer(1.0 / self.rate_hz, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)

    def _param(self, name: str, default: Any, description: str) -> Any:
        return self.declare_parameter(name, default, ParameterDescriptor(description=description)).value

    # ---------------------------------------------------------------------------------------- inputs
    def _on_state(self, msg: JointState) -> None:
        try:
            obs: np.ndarray | None = self.safety.clip_obs(obs_from_joint_state(msg, self.task.obs_names))
        except CodecError as exc:
            self.get_logger().warning(f"unusable joint_states: {exc}", throttle_duration_sec=5.0)
            obs = None
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self._state = (stamp, obs, time.monotonic())

    def _on_estop(self, msg: Bool) -> None:
        self.estop = bool(msg.data)

    def _on_policy(self, msg: UInt8MultiArray) -> None:
        try:
            files, pid = decode_policy(msg)
            self._policy_count += 1
            # Each policy in its own folder: the policy graph names its inner-step graph by a plain file name.
            folder = Path(self._tmp.name) / str(self._policy_count)
            folder.mkdir()
            for name, data in files.items():
                (folder / name).write_bytes(data)
            path = folder / next(iter(files))
            validate_policy_file(path, self.task.name, self.task.obs_names, self.task.joint_names)
            policy = OnnxPolicy(path)
        except (CodecError, PolicyValidationError, OSError) as exc:
            self.rejected_policies += 1
            self.get_logger().warning(f"rejected policy ({self.rejected_policies} so far): {exc}")
            return
        self._next_policy = policy  # swapped in at the next tick boundary
        self.get_logger().info(f"policy {pid[:12]} validated")

    # ---------------------------------------------------------------------------------------- tick
    def _tick(self) -> None:
        if self._next_policy is not None:
            self.policy, self._next_policy = self._next_policy, None
            self.policy_id = self.policy.policy_id
        if self._resetting:
            return
        state = self._state
        fresh = state is not None and state[0] != self._used_stamp
        stale = state is None or time.monotonic() - state[2] > self.state_timeout_s
        if stale and state is None and time.monotonic() - self._started < self.state_timeout_s:
            return  # start-up: wait for the first state before calling it stale
        if not fresh and not stale and not self.estop:
            return  # no new state yet (lockstep waits here); acting twice on one state breaks the pairing
        obs = state[1] if state is not None else None
        if state is not None:
            self._used_stamp = state[0]
        reason = hold_reason(self.estop, stale and not fresh, obs)
        if reason is not None:
            self._hold(reason)
            return
        assert obs is not None
        if self.book.observe(obs):
            self._publish_batches()
            self._request_reset()
            return
        action, reason = self.safety.filter(self._raw_action(obs))
        if reason is not None:
            self._hold(reason)
            return
        self._cmd_pub.publish(encode_command(action))
        self.book.act(obs, action, self.policy_id)
        self._publish_batches()

    def _raw_action(self, obs: np.ndarray) -> np.ndarray:
        if self.policy is not None:
            try:
                return np.asarray(self.policy.act(obs, deterministic=not self.explore, rng=self.rng), np.float64)
            except Exception as exc:  # onnxruntime errors must end in a hold, never in a dead timer
                self.get_logger().error(f"policy inference failed: {exc}", throttle_duration_sec=5.0)
                return np.full(self.task.act_dim, np.nan)
        if self.warmup == "zero":
            return np.zeros(self.task.act_dim)
        return self.rng.uniform(self.task.action_low, self.task.action_high)

    def _hold(self, reason: HoldReason) -> None:
        self.hold_counts[reason.value] += 1
        self.book.drop_pending()
        self._cmd_pub.publish(encode_command(self.safety.hold()))

    def _publish_batches(self) -> None:
        for batch in self.book.take_batches():
            try:
                self._tr_pub.publish(encode_transitions(batch))
            except CodecError as exc:  # should not happen: obs are finite; never kill the loop over it
                self.get_logger().error(f"dropping transition batch {batch.seq}: {exc}")

    # ---------------------------------------------------------------------------------------- episodes
    def _request_reset(self) -> None:
        """Ask the robot to reset without blocking the timer; the next episode starts when it answers."""
        if not self._reset_client.service_is_ready():
            self.get_logger().warning("no reset service: starting the next episode without a reset",
                                      throttle_duration_sec=30.0)
            self.book.new_episode()
            return
        self._resetting = True
        future = self._reset_client.call_async(Trigger.Request())
        future.add_done_callback(self._on_reset_done)

    def _on_reset_done(self, future: Any) -> None:
        self.book.new_episode()
        self.get_logger().info(
            f"episode {self.book.episodes_done} return {self.book.last_return:.4g} policy {self.policy_id[:12]}",
            throttle_duration_sec=10.0,
        )
        self._publish_batches()
        self._resetting = False

    # ---------------------------------------------------------------------------------------- diagnostics
    def diagnostics(self) -> dict[str, str]:
        """The values published on /diagnostics, as strings."""
        last = self.book.last_return
        values = {
            "robot_id": self.robot_id, "policy_id": self.policy_id, "episodes": str(self.book.episodes_done),
            "last_episode_return": "" if last is None else f"{last:.6g}",
            "rejected_policies": str(self.rejected_policies),
            "batches_published": str(self.book.seq), "estop": str(self.estop),
        }
        values.update({f"hold.{r.value}": str(self.hold_counts[r.value]) for r in HoldReason})
        return values

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f"mbmpo controller {self.robot_id}", hardware_id=self.robot_id)
        holding = self.estop or (self._state is not None and time.monotonic() - self._state[2] > self.state_timeout_s)
        status.level = DiagnosticStatus.WARN if holding else DiagnosticStatus.OK
        status.message = "holding" if holding else "running"
        status.values = [KeyValue(key=k, value=v) for k, v in self.diagnostics().items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def destroy_node(self) -> None:
        """Remove the temporary policy files with the node (absent if the constructor failed early)."""
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            tmp.cleanup()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """``ros2 run mbmpo_ros controller`` entry point."""
    rclpy.init(args=args)
    return run_node("controller", Controller, MultiThreadedExecutor(num_threads=2))


if __name__ == "__main__":
    sys.exit(main())
