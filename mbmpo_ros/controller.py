"""``controller``: the on-robot loop. Observation from ``joint_states`` -> ONNX policy (onnxruntime) ->
safety chain -> ``command``; transitions (reward and done computed from observations with the task spec)
batched to ``mbmpo/transitions`` (kept in :mod:`mbmpo_ros.outbox` while no learner subscribes); policies
hot-swapped from ``/mbmpo/policy``; health on ``/diagnostics``.

Never imports torch (checked by a test): the policy runs on :mod:`mbmpo_core.onnx_runtime`.

Tick (timer at ``rate_hz``), acting only on a *new* state (a stamp not seen before), so that in lockstep
each state gets exactly one command and each transition pairs consecutive states:

1. swap in a validated pending policy (tick boundary);
2. hold if e-stopped, if no new state arrived for ``state_timeout_s``, or if the observation is NaN/Inf;
3. otherwise close the open transition with this observation (reward/done; episode end -> async ``reset``
   service call, no commands until it answers), run the policy (sampled if ``explore``), clip, rate-limit;
4. publish the command; open the next transition (holds open none: their outcome is not trusted data).

Online few-shot adaptation (:mod:`mbmpo_ros.adaptation`, parameters ``adapt``, ``adapt_episodes``,
``adapt_steps_max``, ``revert_margin``, ``adapt_mode``, ``adapt_imagined_rollouts``, ``adapt_ridge``): the
meta-policy ``theta`` runs ``adapt_episodes`` episodes, then an inner PG step ``theta'`` is computed in a worker
thread (``ThreadPoolExecutor`` with one thread: the tick only hands over the recorded episodes and never waits);
the tick switches to ``theta'`` at the next episode start, up to ``adapt_steps_max`` steps, reverting to ``theta``
if the adapted return falls more than ``revert_margin`` (absolute; < 0 = never) below theta's. In ``model`` mode
(the default, for a bundle that carries the dynamics ensemble) the worker identifies the dynamics on the real
episodes and takes the step on imagined rollouts from their start states; in ``direct`` mode (and for a bundle
without dynamics, with one warning) on the real episodes. Needs the policy's adapt graph and ``explore`` (the PG
step needs the raw SAMPLED actions; with ``explore: false`` adaptation is off). Transitions keep theta's policy
id and set ``adapted`` on rows run by adapted parameters. With ``log_dir`` set, the worker appends one JSON line
per finished batch and per step to ``<log_dir>/adaptation.jsonl`` (:mod:`mbmpo_ros.adaptation_log`).

Lifecycle: a managed node (``rclpy.lifecycle``), so ``ros2 lifecycle set <node> configure|activate|deactivate|
cleanup|shutdown`` and launch's lifecycle events drive it: ``configure`` (unconfigured -> inactive: warms up the
onnxruntime session of the received policy), ``activate`` (inactive -> active: actions are scaled from 0 to 1
over ``ramp_s`` seconds), ``deactivate`` (active -> inactive: every fresh state gets the hold action, reason
``inactive``; no transitions are recorded), ``cleanup`` (inactive -> unconfigured), ``shutdown`` (-> finalized).
Unconfigured or finalized, the node publishes no command. ``autostart`` configures and activates at start (the
sim-only launch needs no transition calls). Policies are received and validated in every state. The command
publisher is a plain one, not a lifecycle publisher: an inactive controller must still command the hold.

Safe by default on a robot (``config/controller.yaml``): until a validated policy arrives the controller holds
(``warmup_policy: hold``; hold mode ``hold_mode``: zero or the measured positions), and with no learner
configured (``learner: false``) transition batches go only to whoever subscribes at that moment, none kept.
Training (train.launch.py) sets ``learner: true`` and, on simulated robots, ``warmup_policy: random``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import enum
import os
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, Int64MultiArray, UInt8MultiArray
from std_srvs.srv import Trigger

from mbmpo_core.onnx_runtime import OnnxPolicy, validate_bundle
from mbmpo_core.registry import make_task
from mbmpo_ros.adaptation import AdaptJob, AdaptMode, AdaptResult, ModelImagination, OnlineAdapter
from mbmpo_ros.adaptation_log import AdaptationLog, check_log_dir
from mbmpo_ros.codec import (
    CodecError,
    TransitionBatch,
    decode_ack,
    decode_policy,
    encode_command,
    encode_transitions,
    new_session_id,
)
from mbmpo_ros.outbox import Outbox
from mbmpo_ros.params import CONTROLLER_PARAMS, declare_parameters
from mbmpo_ros.publish import read_saved_policy
from mbmpo_ros.qos import ACK_QOS, COMMAND_QOS, DIAGNOSTICS_QOS, POLICY_QOS, STATE_QOS, TRANSITIONS_QOS
from mbmpo_ros.safety import (
    EpisodeBook,
    HoldMode,
    HoldReason,
    SafetyChain,
    hold_reason,
    obs_from_joint_state,
    position_indices,
)
from mbmpo_ros.spin import run_node


def load_task(name: str, horizon: int | None) -> Any:
    """The task spec (names, bounds, dt, numpy reward/done) by name from :mod:`mbmpo_core.registry`; ``horizon``
    None is the task's own (a task file's).

    A MuJoCo task comes from :mod:`sim`, which loads no torch; a robot's task file
    (:mod:`mbmpo_core.task_file`) loads neither MuJoCo nor gymnasium nor torch; an unknown name or a bad task
    file is a one-line ``ValueError``.
    """
    return make_task(name, horizon=horizon)


WORKER_NICENESS = 10  # added to the adaptation worker thread's nice value (Linux: per thread)


def lower_thread_priority() -> None:
    """Give the calling thread a lower CPU priority (nice + :data:`WORKER_NICENESS`); a no-op where threads
    have no nice value of their own (Linux has; elsewhere setpriority would change the whole process)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICENESS)
    except OSError:  # a sandbox that forbids it: run at the normal priority
        pass


class Lifecycle(str, enum.Enum):
    """Controller states (see module docstring)."""

    UNCONFIGURED = "unconfigured"
    INACTIVE = "inactive"
    ACTIVE = "active"
    FINALIZED = "finalized"


class Controller(LifecycleNode):
    """The on-robot controller node (see module docstring)."""

    def __init__(self, node_name: str = "controller", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        p = declare_parameters(self, CONTROLLER_PARAMS)  # all read-only: read here, once
        self.task = load_task(str(p["task"]), int(p["horizon"]) or None)
        rate = float(p["rate_hz"])
        self.rate_hz = rate if rate > 0 else 1.0 / self.task.dt
        self.warmup = str(p["warmup_policy"])
        self.explore = bool(p["explore"])
        self.state_timeout_s = float(p["state_timeout_s"])
        self.reset_timeout_s = float(p["reset_timeout_s"])
        ns = self.get_namespace().strip("/")
        self.robot_id = str(p["robot_id"]) or ns or "robot"
        self.session = new_session_id()  # this run's batches are seq 0, 1, ... of this session
        self.rng = np.random.default_rng(int(p["seed"]))
        self.safety = SafetyChain(self.task.action_low, self.task.action_high,
                                  rate_limit=float(p["action_rate_limit"]), obs_clip=float(p["obs_clip"]),
                                  position_index=self._hold_positions(str(p["hold_mode"])))
        self.book = EpisodeBook(self.task.horizon, self.task.reward, self.task.done, int(p["batch_size"]),
                                robot=self.robot_id, session=self.session)
        self.outbox: Outbox[TransitionBatch] = Outbox(int(p["outbox_batches"]), seq_of=lambda batch: batch.seq)
        self.rejected_acks = 0
        self.learner_configured = bool(p["learner"])
        self.batches_discarded = 0  # made with no learner configured and nobody subscribed
        self.adapt_enabled = bool(p["adapt"])
        margin = float(p["revert_margin"])
        self.adapter = OnlineAdapter(int(p["adapt_episodes"]), int(p["adapt_steps_max"]),
                                     margin if margin >= 0 else float("inf"), seed=int(p["seed"]))
        self.adapt_mode = AdaptMode(str(p["adapt_mode"]))
        self.imagined_rollouts = int(p["adapt_imagined_rollouts"])
        self.ridge = float(p["adapt_ridge"])
        self._warned_no_dynamics = False
        log_dir = check_log_dir(str(p["log_dir"]))
        self.adaptation_log = None if log_dir is None else AdaptationLog(
            log_dir, lambda text: self.get_logger().warning(text))
        # The inner step (model mode: identification and imagination, ~0.5 s at HalfCheetah's CPU sizes) runs at a
        # lower CPU priority than the tick's thread, so that on a busy machine the scheduler keeps the tick on time.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapt",
                                                           initializer=lower_thread_priority)
        # Validating a policy (ONNX load, test inference) takes tens of ms: never on the executor thread, which
        # runs the tick. One worker keeps arrival order, so the newest policy is the one swapped in last.
        self._policy_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self.ramp_s = float(p["ramp_s"])
        self.lifecycle = Lifecycle.UNCONFIGURED
        self.action_scale = 0.0
        self._active_since = 0.0
        self.policy: OnnxPolicy | None = None
        self.policy_id = "" if self.warmup == "hold" else f"warmup-{self.warmup}"
        self._next_policy: OnnxPolicy | None = self._saved_policy(str(p["policy_file"]))  # swapped in at tick 1
        self.rejected_policies = 0
        self.hold_counts: collections.Counter[str] = collections.Counter()
        self.estop = False
        self._state: tuple[Any, np.ndarray | None, float] | None = None  # (stamp, obs or None, arrival)
        self._used_stamp: Any = None
        self._resetting = False
        self._reset_attempt = 0
        self._reset_deadline = 0.0
        self.reset_timeouts = 0
        self._cmd_pub = self.create_publisher(Float64MultiArray, "command", COMMAND_QOS)
        self._tr_pub = self.create_publisher(Float64MultiArray, "mbmpo/transitions", TRANSITIONS_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self.create_subscription(JointState, "joint_states", self._on_state, STATE_QOS)
        self.create_subscription(Bool, "estop", self._on_estop, COMMAND_QOS)
        self.create_subscription(UInt8MultiArray, "/mbmpo/policy", self._on_policy, POLICY_QOS)
        self._subscribe_acks()
        self._reset_client: Any = self.create_client(Trigger, "reset")
        self._started = time.monotonic()
        if bool(p["autostart"]):
            self.trigger_configure()
            self.trigger_activate()
        self.create_timer(1.0 / self.rate_hz, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)

    # ---------------------------------------------------------------------------------------- inputs
    def _on_state(self, msg: JointState) -> None:
        try:
            obs: np.ndarray | None = self.safety.clip_obs(obs_from_joint_state(msg, self.task.obs_names))
        except CodecError as exc:
            self.get_logger().warning(f"unusable joint_states: {exc}", throttle_duration_sec=5.0)
            obs = None
        if obs is not None:
            self.safety.observe(obs)  # a position hold holds the last finite measured positions
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self._state = (stamp, obs, time.monotonic())

    def _on_estop(self, msg: Bool) -> None:
        self.estop = bool(msg.data)

    def _on_policy(self, msg: UInt8MultiArray) -> None:
        self._policy_pool.submit(self._validate_policy, msg)

    def _saved_policy(self, source: str) -> OnnxPolicy | None:
        """The ``policy_file`` to start with (a policy.onnx or a run directory), validated against the task;
        None if none is set. A policy that must not run is a one-line ``ValueError`` (the node exits 2)."""
        if not source:
            return None
        bundle, policy = read_saved_policy(source, self.task.name, self.task.obs_names, self.task.joint_names)
        self.get_logger().info(f"policy {bundle.policy_id[:12]} from {source} validated")
        return policy

    def _validate_policy(self, msg: UInt8MultiArray) -> None:
        """Worker thread: decode, validate and load a received policy, all in memory; the tick swaps it in."""
        try:
            bundle = decode_policy(msg)
            # Validation loads the policy once (both onnxruntime sessions from the bundle's bytes) and returns it.
            policy = validate_bundle(bundle, self.task.name, self.task.obs_names, self.task.joint_names)
        except Exception as exc:  # CodecError, PolicyValidationError, onnxruntime: reject, keep running
            self.rejected_policies += 1
            self.get_logger().warning(f"rejected policy ({self.rejected_policies} so far): {exc}")
            return
        self._next_policy = policy  # swapped in at the next tick boundary
        self.get_logger().info(f"policy {bundle.policy_id[:12]} validated")

    # ---------------------------------------------------------------------------------------- tick
    def _tick(self) -> None:
        if len(self.outbox):  # a backlog goes out whenever a learner is there, also while the robot waits
            self._flush_outbox()
        if self._next_policy is not None:
            self.policy, self._next_policy = self._next_policy, None
            self.policy_id = self.policy.policy_id
            self.adapter.reset(self.policy, enabled=self.adapt_enabled and self.explore,
                               imagination=self._imagination(self.policy))
            self._log({"event": "policy", "mode": self.adapter.mode.value, "phase": self.adapter.phase.value})
        if self._resetting:
            if time.monotonic() > self._reset_deadline:
                self._retry_reset()
            return
        if self.lifecycle in (Lifecycle.UNCONFIGURED, Lifecycle.FINALIZED):
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
        if reason is None and self.lifecycle is not Lifecycle.ACTIVE:
            reason = HoldReason.INACTIVE
        if reason is None and self.policy is None and self.warmup == "hold":
            reason = HoldReason.NO_POLICY  # a deployed robot waits for a validated policy
        if reason is not None:
            self._hold(reason)
            return
        assert obs is not None
        if self._close_transition(obs):
            self._hand_over_batches()
            self._request_reset()
            return
        self._act(obs)
        self._hand_over_batches()

    def _close_transition(self, obs: np.ndarray) -> bool:
        """Close the open transition (book and adapter); True if the episode ended."""
        step = self.book.step
        ended = self.book.observe(obs)
        if self.book.step != step:  # a transition was closed (not the first tick of an episode)
            job = self.adapter.close(self.book.last_reward, ended, obs)
            for record in self.adapter.take_records():  # the batch first, then the step computed from it
                self._log(record)
            self._submit(job)
        return ended

    def _act(self, obs: np.ndarray) -> None:
        """Policy (theta or adapted params) -> ramp -> safety chain -> command; open the next transition."""
        params = self.adapter.begin_step(self.book.step)
        raw = self._raw_action(obs, params)
        scale = self._ramp_scale()
        action, reason = self.safety.filter(raw * scale)
        if reason is not None or action is None:
            self._hold(reason or HoldReason.BAD_ACTION)
            return
        self._cmd_pub.publish(encode_command(action))
        if self.policy is not None and self.explore and scale >= 1.0:
            self.adapter.record(obs, raw, action)
        else:  # warm-up, deterministic or ramped actions are not samples of the policy: unusable for the PG step
            self.adapter.drop()
        self.book.act(obs, action, self.policy_id, adapted=self.policy is not None and self.adapter.adapted)

    def _ramp_scale(self) -> float:
        elapsed = time.monotonic() - self._active_since
        self.action_scale = 1.0 if self.ramp_s <= 0 else min(1.0, elapsed / self.ramp_s)
        return self.action_scale

    def _raw_action(self, obs: np.ndarray, params: dict[str, np.ndarray] | None = None) -> np.ndarray:
        if self.policy is not None:
            try:
                action = self.policy.act(obs, params=params, deterministic=not self.explore, rng=self.rng)
                return np.asarray(action, np.float64)
            except Exception as exc:  # onnxruntime errors must end in a hold, never in a dead timer
                self.get_logger().error(f"policy inference failed: {exc}", throttle_duration_sec=5.0)
                return np.full(self.task.act_dim, np.nan)
        if self.warmup == "zero":
            return np.zeros(self.task.act_dim)
        return self.rng.uniform(self.task.action_low, self.task.action_high)

    def _hold_positions(self, mode: str) -> np.ndarray | None:
        """Obs index of each commanded joint's position for ``hold_mode: position``; None for ``zero``."""
        if HoldMode(mode) is HoldMode.ZERO:
            return None
        return position_indices(self.task.obs_names, self.task.joint_names)

    def _hold(self, reason: HoldReason) -> None:
        self.hold_counts[reason.value] += 1
        self.book.drop_pending()
        self.adapter.drop()
        action = self.safety.hold()
        if action is not None:  # a position hold before any measured position commands nothing
            self._cmd_pub.publish(encode_command(action))

    def _hand_over_batches(self) -> None:
        """The book's finished batches: to the learner's outbox where one is configured (``learner``); on a
        robot without one, to whoever subscribes right now (e.g. ``ros2 bag record``), never kept."""
        if self.learner_configured:
            self._publish_batches()
            return
        batches = self.book.take_batches()
        if not batches:
            return
        if self._tr_pub.get_subscription_count() == 0:
            self.batches_discarded += len(batches)
            return
        for batch in batches:
            self._tr_pub.publish(encode_transitions(batch))

    def _publish_batches(self) -> None:
        """Queue the book's new batches; send the queue in order while a learner subscribes (see outbox)."""
        if self.outbox.add(self.book.take_batches()):
            self.get_logger().warning(
                f"no learner for {len(self.outbox)} batches: dropped the oldest ({self.outbox.dropped} so far); "
                "raise outbox_batches to keep more", throttle_duration_sec=10.0)
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        self.outbox.flush(self._send_batch, self._tr_pub.get_subscription_count(), time.monotonic())

    def _subscribe_acks(self) -> None:
        """The learner's latched account of what it stored of this robot (``mbmpo/transitions_ack``)."""
        self.create_subscription(Int64MultiArray, "mbmpo/transitions_ack", self._on_ack, ACK_QOS)

    def _on_ack(self, msg: Int64MultiArray) -> None:
        """Release the batches the learner has stored; queue again those it lost (see :mod:`mbmpo_ros.outbox`)."""
        try:
            ack = decode_ack(msg)
        except CodecError as exc:
            self.rejected_acks += 1
            self.get_logger().warning(f"unusable transitions ack ({self.rejected_acks} so far): {exc}",
                                      throttle_duration_sec=10.0)
            return
        if (ack.robot, ack.session) == (self.robot_id, self.session):  # else: of another robot or an earlier run
            self.outbox.acknowledge(ack)

    def _send_batch(self, batch: TransitionBatch) -> None:
        try:
            self._tr_pub.publish(encode_transitions(batch))
        except CodecError as exc:  # should not happen: obs are finite; never kill the loop over it
            self.get_logger().error(f"dropping transition batch {batch.seq}: {exc}")

    # ---------------------------------------------------------------------------------------- adaptation
    def _imagination(self, policy: OnnxPolicy) -> ModelImagination | None:
        """The model step for ``policy`` in model mode (None: direct mode). A bundle without the dynamics ensemble
        falls back to direct, with one warning per node."""
        if self.adapt_mode is AdaptMode.DIRECT or not (self.adapt_enabled and self.explore):
            return None
        dynamics = getattr(policy, "dynamics", None)  # loaded by validate_bundle from the bundle's dynamics graph
        if dynamics is None:
            if not self._warned_no_dynamics:
                self._warned_no_dynamics = True
                self.get_logger().warning(f"policy {policy.policy_id[:12]} carries no dynamics model: adapting "
                                          "directly on the real episodes (adapt_mode direct) for such policies")
            return None
        return ModelImagination(dynamics, self.task.reward, getattr(self.task, "done", None), self.task.action_low,
                                self.task.action_high, self.imagined_rollouts, int(policy.metadata["horizon"]),
                                self.ridge)

    def _submit(self, job: AdaptJob | None) -> None:
        """Run an inner step in the worker thread; its result reaches the adapter, never the tick directly."""
        if job is not None:
            self._pool.submit(self._run_job, job, self._log_context())

    def _run_job(self, job: AdaptJob, context: dict[str, str]) -> None:
        """Worker thread: the step, its delivery, its log line. A failed step keeps the current parameters."""
        try:
            result = job.run()
        except Exception as exc:  # the tick is unaffected; the adapter stops adapting this policy
            self.get_logger().error(f"adaptation step failed: {type(exc).__name__}: {exc}")
            result = AdaptResult(None, job.generation, mode=job.mode.value, step=job.step,
                                 error=f"{type(exc).__name__}: {str(exc)[:200]}")
        self.adapter.deliver(result)
        if self.adaptation_log is not None:
            self.adaptation_log.append({**context, **result.record()})

    def _log_context(self) -> dict[str, str]:
        return {"robot": self.robot_id, "policy_id": self.policy_id}

    def _log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to adaptation.jsonl from the worker thread (file I/O never runs on the tick)."""
        if self.adaptation_log is not None:
            self._pool.submit(self.adaptation_log.append, {**self._log_context(), **record})

    # ---------------------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """unconfigured -> inactive: warm up the received policy (first onnxruntime runs are slow)."""
        for policy in (self._next_policy, self.policy):
            if policy is not None:
                policy.act(np.zeros(self.task.obs_dim))
        self.lifecycle = Lifecycle.INACTIVE
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """inactive -> active: actions ramp in from zero over ``ramp_s``."""
        self._active_since = time.monotonic()
        self.lifecycle = Lifecycle.ACTIVE
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """active -> inactive: hold."""
        self.lifecycle = Lifecycle.INACTIVE
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """inactive -> unconfigured: no commands; the open transition is not trusted data any more."""
        self.lifecycle = Lifecycle.UNCONFIGURED
        self.book.drop_pending()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """any state -> finalized: no commands from now on (the node waits to be destroyed)."""
        self.lifecycle = Lifecycle.FINALIZED
        self.book.drop_pending()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A failed transition callback: back to unconfigured (no commands)."""
        self.lifecycle = Lifecycle.UNCONFIGURED
        return TransitionCallbackReturn.SUCCESS

    # ---------------------------------------------------------------------------------------- episodes
    def _request_reset(self) -> None:
        """Ask the robot to reset without blocking the timer; the next episode starts when it answers."""
        if not self._reset_client.service_is_ready():
            self.get_logger().warning("no reset service: starting the next episode without a reset",
                                      throttle_duration_sec=30.0)
            self.book.new_episode()
            return
        self._resetting = True
        self._reset_attempt += 1
        self._reset_deadline = time.monotonic() + self.reset_timeout_s
        future = self._reset_client.call_async(Trigger.Request())
        future.add_done_callback(lambda f, attempt=self._reset_attempt: self._on_reset_done(f, attempt))

    def _retry_reset(self) -> None:
        """A reset answer that never comes (DDS can lose a service response, e.g. right after discovery) must
        not stop the robot's loop for good: ask again; a late answer to the old request is ignored."""
        self.reset_timeouts += 1
        self.get_logger().warning(f"reset not answered within {self.reset_timeout_s} s; asking again "
                                  f"({self.reset_timeouts} so far)", throttle_duration_sec=5.0)
        self._resetting = False
        self._request_reset()

    def _on_reset_done(self, future: Any, attempt: int) -> None:
        if not self._resetting or attempt != self._reset_attempt:
            return  # answer to a request that was given up on
        self.book.new_episode()
        self.get_logger().info(
            f"episode {self.book.episodes_done} return {self.book.last_return:.4g} policy {self.policy_id[:12]}",
            throttle_duration_sec=10.0,
        )
        self._hand_over_batches()
        self._resetting = False

    # ---------------------------------------------------------------------------------------- diagnostics
    def diagnostics(self) -> dict[str, str]:
        """The values published on /diagnostics, as strings."""
        last = self.book.last_return
        values = {
            "robot_id": self.robot_id, "policy_id": self.policy_id, "episodes": str(self.book.episodes_done),
            "last_episode_return": "" if last is None else f"{last:.6g}",
            "rejected_policies": str(self.rejected_policies), "reset_timeouts": str(self.reset_timeouts),
            "batches_made": str(self.book.seq), "batches_sent": str(self.outbox.sent),
            "batches_waiting_for_learner": str(len(self.outbox)), "batches_dropped": str(self.outbox.dropped),
            **self._delivery_diagnostics(),
            "batches_discarded": str(self.batches_discarded), "hold_mode": self.safety.mode.value,
            "estop": str(self.estop),
            "lifecycle": self.lifecycle.value, "action_scale": f"{self.action_scale:.3g}",
            **self.adapter.summary(),
            "adapt.log_lines_lost": str(0 if self.adaptation_log is None else self.adaptation_log.failed),
        }
        values.update({f"hold.{r.value}": str(self.hold_counts[r.value]) for r in HoldReason})
        return values

    def _delivery_diagnostics(self) -> dict[str, str]:
        """At-least-once delivery to the learner: what it acknowledged, what was sent again."""
        last = self.outbox.last_ack
        return {"session": self.session, "batches_unacknowledged": str(len(self.outbox)),
                "batches_acknowledged": str(self.outbox.acked), "batches_resent": str(self.outbox.resent),
                "last_acknowledged_seq": "" if last is None else str(last.highest),
                "rejected_acks": str(self.rejected_acks)}

    def _holding(self) -> bool:
        stale = self._state is not None and time.monotonic() - self._state[2] > self.state_timeout_s
        no_policy = self.policy is None and self.warmup == "hold"
        return self.lifecycle is not Lifecycle.ACTIVE or self.estop or stale or no_policy

    def diagnostics_message(self) -> str:
        """The one-line status on /diagnostics."""
        message = "holding" if self._holding() else "running"
        if self.policy is None and self.warmup == "hold":
            message = "holding: no policy yet"
        if len(self.outbox):
            message += f"; {len(self.outbox)} transition batches wait for a learner"
        return message

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f"mbmpo/controller/{self.robot_id}", hardware_id=self.robot_id)
        status.level = DiagnosticStatus.WARN if self._holding() or self.outbox.dropped else DiagnosticStatus.OK
        status.message = self.diagnostics_message()
        status.values = [KeyValue(key=k, value=v) for k, v in self.diagnostics().items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def destroy_node(self) -> None:
        """Stop the worker threads (each absent if the constructor failed early). A running validation is waited
        for (it logs through the node destroyed next); a running inner step finishes on its own."""
        policy_pool = getattr(self, "_policy_pool", None)
        if policy_pool is not None:
            policy_pool.shutdown(wait=True, cancel_futures=True)
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """``ros2 run mbmpo_ros controller`` entry point."""
    rclpy.init(args=args)
    # Single-threaded on purpose: rclpy's MultiThreadedExecutor busy-loops on ready timers (a 100 Hz tick kept
    # a core at 100 % and starved the node on 2 cores); slow work runs in the node's own worker threads.
    return run_node("controller", Controller, SingleThreadedExecutor())


if __name__ == "__main__":
    sys.exit(main())
