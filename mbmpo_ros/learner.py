"""The ``learner`` node: persists every transition the robots send, trains MB-MPO on them, publishes policies.

    <ns>/mbmpo/transitions (each robot) --> ingest: decode, check, de-duplicate, persist    [executor thread]
                                             |  enough new data
                                             v
        worker thread: snapshot of the store -> MetaLearner.improve -> progress.csv, checkpoint, policy.onnx
                       -> /mbmpo/policy (latched)

The node holds a :class:`MetaLearner` (ensemble, policy, meta-optimizer), the run's transition store (through
:class:`Ingest`), a progress log and its checkpoint. It builds no env: imagined rollouts start from the episode
starts the robots recorded.

Threads and what each owns (callbacks run on one single-threaded executor):

* executor thread: the subscriptions (:meth:`Ingest.handle`: decode, append to the store, per-robot counters) and
  the diagnostics timer (reads the counters, ``Ingest.stored()`` and ``status``). The callback never waits for
  training.
* worker thread: the MetaLearner, the progress log, the checkpoint, ``policy.onnx`` and policy publication. It
  trains on its own snapshot of the store (:meth:`Ingest.snapshot`), never on the live store.
* shared, each behind one lock: the store's chunk list and the finished episode returns (``Ingest.lock``), and
  the training status (:class:`SharedStatus`: state, iteration, last policy id, transitions of the last
  iteration, last error), written by the worker and read by the diagnostics timer. ``_wake``, ``_stop`` and
  ``finished`` are events.

Status goes to ``/diagnostics`` once a second; while an iteration runs, ``progress.*`` values say where it is
(phase, model epoch, meta-step, elapsed and estimated remaining seconds), from MetaLearner.improve's progress events.

Parameters: ``config`` (mbmpo YAML; default by device: the package's config/default.yaml on CUDA, config/cpu.yaml
otherwise), ``threads`` (torch threads; 0: chosen for the machine, set before any work), ``task`` and ``seed``
(override the config), ``run_dir``, ``robots`` (namespaces), ``min_new_steps`` (0: loop.steps_per_iter),
``resume``, ``exit_after_steps`` (0: the config's ``loop.total_steps``; -1: never), ``shutdown_timeout_s``.

``progress.csv`` as in a simulated run: ``return_pre`` / ``return_post`` are the robots' own episodes since the
last iteration, run by the meta-policy / by its online-adapted parameters (:mod:`mbmpo_ros.robot_returns`).

Run: ``python -m mbmpo_ros.learner --ros-args -p task:=InvertedPendulum-v5 -p run_dir:=runs/x``.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray, Int64MultiArray, UInt8MultiArray

from mbmpo_core.bundle import PolicyBundle, PolicyValidationError
from mbmpo_core.checkpoint import existing_run, has_checkpoint, read_checkpoint, write_checkpoint
from mbmpo_core.config import Config, load_config, save_config
from mbmpo_core.export import export_bundle
from mbmpo_core.meta_learner import ImproveProgress, MetaLearner
from mbmpo_core.registry import make_task
from mbmpo_core.report import ProgressLog
from mbmpo_core.store import TransitionStore, reconcile, robot_groups
from mbmpo_core.task import TaskSpec
from mbmpo_ros.codec import CodecError, encode_ack, encode_policy, new_session_id
from mbmpo_ros.ingest import Ingest, IngestResult
from mbmpo_ros.qos import ACK_QOS, DIAGNOSTICS_QOS, POLICY_QOS, TRANSITIONS_QOS
from mbmpo_ros.robot_returns import robot_returns
from mbmpo_ros.spin import ignore_sigint, shut_down_meanwhile, stop_on_sigint

POLICY_TOPIC = "/mbmpo/policy"
POLICY_FILE = "policy.onnx"
PACKAGE = "mbmpo_ros"


def default_config_path() -> str:
    """The config of a learner without one, by device (:func:`mbmpo_core.runtime.default_config`: the paper's
    default.yaml on CUDA, the CPU profile cpu.yaml otherwise) from the installed share directory, else from the
    source tree ("" if neither)."""
    from mbmpo_core.runtime import default_config

    folders = [Path(__file__).resolve().parent.parent / "config"]
    try:
        from ament_index_python.packages import get_package_share_directory

        folders.insert(0, Path(get_package_share_directory(PACKAGE)) / "config")
    except (ImportError, LookupError, ValueError, OSError):
        pass  # not installed by colcon: use the source tree
    for folder in folders:
        chosen = default_config(folder)
        if chosen.path.is_file():
            return str(chosen.path)
    return ""


def transitions_topic(namespace: str) -> str:
    """Absolute transitions topic of a robot namespace (``robot_0`` -> ``/robot_0/mbmpo/transitions``)."""
    ns = "/" + namespace.strip("/")
    return (ns if ns != "/" else "") + "/mbmpo/transitions"


def ack_topic(namespace: str) -> str:
    """Absolute acknowledgement topic of a robot namespace (``/robot_0/mbmpo/transitions_ack``)."""
    return transitions_topic(namespace) + "_ack"


@dataclass(frozen=True)
class TrainingStatus:
    """What the worker thread tells the diagnostics: one immutable value, replaced as a whole."""

    state: str = "waiting for data"
    iteration: int = 0  # iterations done
    policy_id: str = ""  # of the last published policy
    trained_on: int = 0  # transitions of the last iteration (a resumed run counts what it already has as used)
    error: str = ""  # of the failed iteration, if one failed
    progress: tuple[tuple[str, str], ...] = ()  # where the running iteration is (progress.* diagnostics values)


class SharedStatus:
    """A :class:`TrainingStatus` written by one thread and read by another, behind one lock."""

    def __init__(self, status: TrainingStatus) -> None:
        self._lock = threading.Lock()
        self._status = status

    def get(self) -> TrainingStatus:
        with self._lock:
            return self._status

    def update(self, **changes: Any) -> TrainingStatus:
        """Replace the named fields; returns the new status."""
        with self._lock:
            self._status = replace(self._status, **changes)
            return self._status


class Learner(Node):
    """MB-MPO learner node; ``node_kwargs`` go to :class:`rclpy.node.Node` (context, parameter_overrides...)."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("learner", **node_kwargs)
        self._declare_parameters()
        self._set_threads()
        self.config = self._load_config()
        self.run_dir = self._run_dir()
        self.resume = bool(self._param("resume"))
        self.task: TaskSpec = make_task(self.config.task, horizon=self.config.loop.horizon)
        self.learner_id = new_session_id()  # in every ack: controllers resend what a new learner lacks
        self.ingest = Ingest(self._open_store(), self.task.obs_dim, self.task.act_dim, learner_id=self.learner_id)
        self.meta_learner = MetaLearner(self.config, self.task)
        self.progress = ProgressLog(self.run_dir)
        save_config(self.config, self.run_dir / "config.yaml")
        self.status = SharedStatus(TrainingStatus())
        self._restore()
        self.min_new_steps = int(self._param("min_new_steps")) or self.config.loop.steps_per_iter
        budget = int(self._param("exit_after_steps"))  # 0: the config's step budget; -1: unbounded
        self.exit_after_steps = self.config.loop.total_steps if budget == 0 else max(budget, 0)
        self.shutdown_timeout_s = float(self._param("shutdown_timeout_s"))
        self.finished = threading.Event()  # exit_after_steps reached and the last iteration done
        self._stop = threading.Event()
        self._commit = threading.Lock()  # held while an iteration's results are written: shutdown waits for it
        self._abandon = threading.Event()  # shutdown gave up on the running iteration: write none of its results
        self._wake = threading.Event()
        self._policy_pub = self.create_publisher(UInt8MultiArray, POLICY_TOPIC, POLICY_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self.robots = [str(r) for r in self._param("robots")]
        self._subs = [self._subscribe(robot) for robot in self.robots]
        self._ack_pubs: dict[str, Any] = {}
        self._acknowledge_stored()
        self._diag_timer = self.create_timer(1.0, self.publish_diagnostics)
        if self.resume:
            self.status.update(policy_id=self.publish_latest())
        self._worker = threading.Thread(target=self._worker_loop, name="mbmpo-learner-train", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"learner: task {self.task.name}, run_dir {self.run_dir}, robots {self.robots}, "
            f"{self.ingest.stored()} stored transitions, iteration {self.meta_learner.iteration}")

    # ------------------------------------------------------------------ setup
    def _declare_parameters(self) -> None:
        # The table lives in mbmpo_ros.params with the other nodes' (descriptors, ranges, all read-only); a bad
        # value is a one-line ValueError. (Imported here only to keep this edit inside this method.)
        from mbmpo_ros.params import LEARNER_PARAMS, declare_parameters

        declare_parameters(self, LEARNER_PARAMS)

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _set_threads(self) -> None:
        """torch threads, before any torch work: the ``threads`` parameter, else chosen for the machine."""
        from mbmpo_core.runtime import apply_threads, choose_threads

        choice = choose_threads(int(self._param("threads")))
        apply_threads(choice)
        self.get_logger().info(choice.describe())

    def _load_config(self) -> Config:
        path = str(self._param("config")) or default_config_path() or None
        if not str(self._param("config")):
            self.get_logger().info(f"config: {path or 'the built-in paper defaults'} (no config parameter: chosen "
                                   "by device, the paper's default.yaml on CUDA, the CPU profile cpu.yaml otherwise)")
        seed = int(self._param("seed"))
        return load_config(path, task=str(self._param("task")) or None, seed=seed if seed >= 0 else None)

    def _run_dir(self) -> Path:
        given = str(self._param("run_dir"))
        if given:
            return Path(given)
        return Path("runs") / f"learner-{self.config.task}-s{self.config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"

    def _open_store(self) -> TransitionStore:
        """The run's transition store; a run directory that already holds a run needs ``resume:=true``."""
        held = existing_run(self.run_dir)  # (a file there: one-line ValueError)
        if held and not self.resume:
            raise ValueError(f"{self.run_dir} already holds a run ({held}); set resume:=true to continue it")
        return TransitionStore(self.run_dir / "transitions", self.task.obs_dim, self.task.act_dim)

    def _restore(self) -> None:
        """Resume: the meta-learner from the checkpoint; every stored transition counts as trained on."""
        if not (self.resume and has_checkpoint(self.run_dir)):
            return
        state = read_checkpoint(self.run_dir, self.meta_learner.device,
                                warn=lambda message: self.get_logger().warning(message))
        self.meta_learner.load_state_dict(state)
        self.progress.truncate(self.meta_learner.iteration)
        account = reconcile(state.get("learner_node", {}), self.ingest.store)
        if account.lost or account.newer:
            self.get_logger().info(f"resume: {account.describe()}; {account.held} stored transitions")
        self.status.update(iteration=self.meta_learner.iteration, trained_on=account.held)

    def _subscribe(self, robot: str) -> Any:
        def callback(msg: Float64MultiArray) -> None:
            self._on_transitions(msg, robot)

        return self.create_subscription(Float64MultiArray, transitions_topic(robot), callback, TRANSITIONS_QOS)

    # ---------------------------------------------------------- status (read-only views of self.status)
    @property
    def state(self) -> str:
        return self.status.get().state

    @property
    def iteration(self) -> int:
        return self.status.get().iteration

    @property
    def last_policy_id(self) -> str:
        return self.status.get().policy_id

    @property
    def last_error(self) -> str:
        return self.status.get().error

    @property
    def steps_at_last_iteration(self) -> int:
        return self.status.get().trained_on

    # ----------------------------------------------------------------- ingest
    def _acknowledge_stored(self) -> None:
        """One latched ack publisher per robot, each publishing what the store already holds of the robot's newest
        session (a controller that outlived the last learner resends the rest); gaps in the store are reported."""
        for (robot, session), missing in sorted(self.ingest.holes().items()):
            self.get_logger().warning(f"{robot} (session {session}): {missing} batches missing from the store; "
                                      "the controller sends them again if it still has them")
        for robot in self.robots:
            self._ack_pubs[robot] = self.create_publisher(Int64MultiArray, ack_topic(robot), ACK_QOS)
            self._publish_ack(robot, robot, self.ingest.ledger.newest.get(robot))

    def _publish_ack(self, robot: str, sender: str, session: str | None) -> None:
        """Publish on ``robot``'s ack topic what is stored of ``sender``'s ``session`` (the batch's labels)."""
        ack = None if session is None else self.ingest.ack(sender, session)
        pub = self._ack_pubs.get(robot)
        if ack is None or pub is None:
            return
        try:
            pub.publish(encode_ack(ack))
        except CodecError as exc:  # labels the codec refuses cannot come from a decoded batch; never stop ingest
            self.get_logger().error(f"{robot}: cannot acknowledge: {exc}", throttle_duration_sec=10.0)

    def _on_transitions(self, msg: Float64MultiArray, robot: str) -> None:
        result: IngestResult = self.ingest.handle(msg, robot)
        if result.session is not None:  # stored now or before: the controller may let go of the batch
            self._publish_ack(robot, result.sender, result.session)
        if result.kind == "rejected":
            self.get_logger().warning(f"{robot}: rejected a transitions batch: {result.reason}",
                                      throttle_duration_sec=5.0)
            return
        if result.kind == "accepted":
            self._wake.set()

    # --------------------------------------------------------------- training (worker thread)
    def _iteration_due(self, stored: int) -> bool:
        if self.meta_learner.iteration == 0:
            return stored >= self.config.loop.random_steps
        return stored - self.steps_at_last_iteration >= self.min_new_steps

    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            if self._stop.is_set():
                break
            stored = self.ingest.stored()
            try:
                if self._iteration_due(stored) or self._final_iteration_due(stored):
                    self.run_iteration()
            except Exception as exc:  # keep ingesting: the data is safe, training can be retried by a restart
                if not rclpy.ok(context=self.context):  # Ctrl-C while publishing: the node is going, not failing
                    break
                self.status.update(state="failed", error=f"{type(exc).__name__}: {exc}")
                self.get_logger().error(f"training iteration failed: {traceback.format_exc()}")
                self._stop.set()
            if self.exit_after_steps and stored >= self.exit_after_steps and (
                    self.steps_at_last_iteration >= self.exit_after_steps
                    or stored < self.config.loop.random_steps):  # (too few steps for any iteration)
                self.finished.set()
                break  # no further iteration: main() is about to shut down

    def _final_iteration_due(self, stored: int) -> bool:
        """The run's step budget is reached: train once more on the data that did not make a full iteration."""
        return (bool(self.exit_after_steps) and stored >= self.exit_after_steps
                and stored > self.steps_at_last_iteration and stored >= self.config.loop.random_steps)

    def run_iteration(self) -> dict[str, float] | None:
        """Train on a snapshot of the store, checkpoint, export and publish the policy; returns the progress row
        (None: shutdown began during the iteration, whose results are dropped; the last checkpoint stands)."""
        data, coverage = self.ingest.covered_snapshot()  # frozen: batches that arrive meanwhile wait for the next
        data["physics"] = robot_groups(data)  # many robots, many physics: ensemble.member_emphasis weighs them
        stored = len(data["obs"])
        status = self.status.update(state=f"training iteration {self.meta_learner.iteration}")
        returns = self.ingest.take_returns(status.policy_id)
        robots = robot_returns(data, status.trained_on, status.policy_id, self.config.loop.horizon)
        report = self.meta_learner.improve(data, progress=self._on_progress)
        with self._commit:  # shutdown waits for a write under way, and none starts once it gave up waiting
            if self._abandon.is_set():
                return None
            return self._commit_iteration(report, stored, returns, robots, coverage)

    def _commit_iteration(self, report: Any, stored: int, returns: list[float], robots: Any,
                          coverage: Any) -> dict[str, float]:
        """Progress row, plot, checkpoint, policy.onnx, then the policy on /mbmpo/policy."""
        row: dict[str, float] = report.progress_row(stored, returns, return_pre=robots.pre, return_post=robots.post)
        self.progress.append(row)
        self.progress.plot(f"MB-MPO on {self.task.name}")
        write_checkpoint(self.run_dir, {**self.meta_learner.state_dict(), "learner_node": coverage})
        bundle = export_bundle(self.meta_learner.policy, **self.meta_learner.export_args())
        bundle.write(self.run_dir)  # the run's policy.onnx (deploy, resume); what is published is the bundle in memory
        self.status.update(state="publishing", iteration=self.meta_learner.iteration, trained_on=stored)
        status = self.status.update(state="waiting for data", policy_id=self.publish(bundle))
        self.get_logger().info(
            f"iteration {report.iteration}: {stored} transitions, policy {status.policy_id[:12]}, "
            f"train return {row['return_train']:.2f}, model valid loss {row['model_valid_loss']:.4g}")
        return row

    def _on_progress(self, event: ImproveProgress) -> None:
        """MetaLearner.improve's progress (worker thread), shown on /diagnostics while the iteration runs."""
        self.status.update(progress=(
            ("progress.phase", "model fit" if event.phase == "fit" else "meta-training"),
            ("progress.model_epoch", f"{event.epoch}/{event.max_epochs}"),
            ("progress.meta_step", f"{event.meta_step}/{event.meta_steps}"),
            ("progress.elapsed_s", f"{event.elapsed_s:.0f}"),
            ("progress.eta_s", f"{event.eta_s:.0f}" if math.isfinite(event.eta_s) else "unknown")))

    def publish(self, bundle: PolicyBundle) -> str:
        """Validate ``bundle`` (from memory) and publish it latched; returns its id, or the last published id if it
        does not validate (a warning says why)."""
        from mbmpo_core.onnx_runtime import validate_bundle

        try:
            validate_bundle(bundle, expected_task=self.task.name)
        except PolicyValidationError as exc:
            self.get_logger().warning(f"not publishing policy {bundle.policy_id[:12]}: {exc}")
            return self.last_policy_id
        self._policy_pub.publish(encode_policy(bundle))
        return bundle.policy_id

    def publish_latest(self) -> str:
        """Publish the run's saved ``<run_dir>/policy.onnx`` (a resumed learner's last policy); returns its id."""
        path = self.run_dir / POLICY_FILE
        if not path.is_file():
            return self.last_policy_id
        try:
            bundle = PolicyBundle.from_file(path)
        except (PolicyValidationError, OSError) as exc:
            self.get_logger().warning(f"not publishing {path}: {exc}")
            return self.last_policy_id
        return self.publish(bundle)

    # ------------------------------------------------------------ diagnostics
    def diagnostic_status(self) -> DiagnosticStatus:
        """The learner's status: store, per-robot ingest counters, iteration, policy, training state."""
        status = self.status.get()
        values = {"stored_transitions": self.ingest.stored(), "iteration": status.iteration,
                  "last_policy_id": status.policy_id, "training_state": status.state,
                  "steps_at_last_iteration": status.trained_on, "run_dir": str(self.run_dir)}
        if status.state.startswith("training"):
            values.update(status.progress)
        gaps = 0
        for robot, c in sorted(self.ingest.counters.items()):
            gaps += c.gaps
            for key in ("accepted", "rejected", "duplicate", "gaps", "missing", "reordered", "restarts",
                        "transitions", "last_error"):
                values[f"{robot}/{key}"] = getattr(c, key)
        diag = DiagnosticStatus(name="mbmpo/learner", hardware_id=str(self.run_dir))
        if status.state == "failed":
            diag.level, diag.message = DiagnosticStatus.ERROR, f"training failed: {status.error}"
        elif gaps:
            diag.level, diag.message = DiagnosticStatus.WARN, f"{status.state}; {gaps} sequence gaps"
        else:
            diag.level, diag.message = DiagnosticStatus.OK, status.state
        diag.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        return diag

    def publish_diagnostics(self) -> None:
        """Timer callback: one DiagnosticArray on /diagnostics."""
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [self.diagnostic_status()]
        self._diag_pub.publish(msg)

    # --------------------------------------------------------------- shutdown
    def stop(self) -> None:
        """Stop the worker; a running iteration gets ``shutdown_timeout_s`` to finish, then it is abandoned: its
        results are never written (the last checkpoint and every stored transition stay as they are)."""
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=self.shutdown_timeout_s)
        if self._worker.is_alive():
            with self._commit:  # a write under way ends first; none starts after this
                self._abandon.set()
            # Printed, not logged: after Ctrl-C the node's logger cannot reach /rosout any more.
            print(f"[{self.get_name()}] abandoning the running iteration; every transition and the last checkpoint "
                  "are stored (resume:=true continues)", file=sys.stderr, flush=True)

    @property
    def training_abandoned(self) -> bool:
        """True after :meth:`stop` left an iteration computing in the worker thread (main() then exits at once)."""
        return self._abandon.is_set() and self._worker.is_alive()

    def destroy_node(self) -> None:
        """Stop training, then release the ROS entities."""
        self.stop()
        if not self._worker.is_alive():  # an abandoned iteration still writes to it (daemon: ends with the process)
            self.progress.close()
        super().destroy_node()


def main(args: Sequence[str] | None = None) -> int:
    """Entry point (``learner`` executable, ``python -m mbmpo_ros.learner``); exits 0 on SIGINT."""
    rclpy.init(args=list(args) if args is not None else sys.argv)
    node: Learner | None = None
    try:
        node = Learner()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        stop = stop_on_sigint()
        while rclpy.ok() and not node.finished.is_set() and not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
        if node.finished.is_set():
            node.get_logger().info(f"reached exit_after_steps={node.exit_after_steps}; exiting")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except _rclpy.RCLError:
        # Ctrl-C while the executor builds its wait set surfaces as RCLError rather than a shutdown exception.
        if node is None or not shut_down_meanwhile(node):
            raise
    except ValueError as exc:  # bad parameters / config: one line, no traceback
        print(f"learner: error: {exc}", file=sys.stderr)
        return 2
    finally:
        ignore_sigint()  # the launch relays a second Ctrl-C: it must not cut the cleanup short with a traceback
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        ignore_sigint()
        if node is not None and node.training_abandoned:  # do not wait for (or finalize under) a running iteration
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
