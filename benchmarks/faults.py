"""Fault benchmark: kill -9 at random moments, and malformed messages on every subscribed topic.

    OMP_NUM_THREADS=1 python benchmarks/faults.py [--kills 20] [--fuzz 1000] [--parts train learner fuzz] [--seed 0]

Part ``train``: one ``mbmpo train`` run of a tiny InvertedPendulum config (warm-up 200 steps, 200 steps per
iteration, no step budget) is killed with SIGKILL ``--kills`` times, each at a random moment (uniform in 1-25 s
after the process started: imports, warm-up, model fit, meta-steps, evaluation, checkpoint writes), and each time
resumed with ``mbmpo train --resume``; the last resume runs two more iterations to its end. Counted: resumes that
failed (exited non-zero by themselves, or printed a traceback), duplicates stored (batches whose transitions are
byte-identical to another's), transitions lost (corrupt batches; transitions the final checkpoint covered that the
store lacks; steps counted in progress.csv but not stored), and whether progress.csv lists each iteration once.

Part ``learner``: sim_robot + controller + learner as ``mbmpo launch`` starts them (200 Hz lockstep, batches of
10 transitions, a tiny config that trains every 400 steps), the learner process killed with SIGKILL ``--kills``
times at random moments (uniform in 1-8 s after it stored its first new batch: ingest, fits, meta-steps,
checkpoint and policy writes) and restarted with ``resume:=true``. Then the sim robot stops, the controller
delivers what it still holds, and the store is compared with what the controller made (its diagnostics):
batches lost, batches stored twice, restarts that failed, whether the last checkpoint loads.

Part ``fuzz``: a learner and a controller process; ``--fuzz`` malformed or random messages on each topic one of
them subscribes to (learner: ``robot_0/mbmpo/transitions``; controller: ``robot_0/joint_states``,
``robot_0/estop``, ``/mbmpo/policy``, ``robot_0/mbmpo/transitions_ack``), built by mutating valid messages
(labels, sizes, strides, lengths, NaN/Inf, huge values, random bytes, wrong ids) and from scratch. After each
topic: is each process alive, does it still publish diagnostics, does the learner still store a valid batch.
Counted: crashes per topic, and the rejections the nodes report on /diagnostics.

Prints a table and appends one row per part to benchmarks/results/faults.csv. Exits 1 if a target (0) is missed.
"""

from __future__ import annotations

import argparse
import array
import copy
import csv
import dataclasses
import hashlib
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "faults.csv"
TASK = "InvertedPendulum-v5"
TRAIN_CONFIG = {
    "task": TASK, "seed": 0,
    "ensemble": {"num_models": 2, "hidden_sizes": [32, 32], "batch_size": 64, "max_epochs": 5},
    "policy": {"hidden_sizes": [16, 16]},
    "meta": {"meta_batch_size": 2, "rollouts_per_task": 4, "meta_steps": 3},
    "loop": {"random_steps": 200, "steps_per_iter": 200, "total_steps": 10**6, "eval_episodes": 1, "horizon": 50},
}
LEARNER_CONFIG = {**TRAIN_CONFIG, "loop": {**TRAIN_CONFIG["loop"], "random_steps": 400, "steps_per_iter": 400,
                                           "total_steps": 10**9, "horizon": 50}}
QUIET_CONFIG = {**TRAIN_CONFIG, "loop": {**TRAIN_CONFIG["loop"], "random_steps": 10**9, "total_steps": 10**12}}


def env_for(domain_id: int | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")}
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    return env


# ------------------------------------------------------------------------------------------ part 1: mbmpo train
def train_part(kills: int, rng: random.Random, work: Path) -> dict[str, Any]:
    from mbmpo_core.checkpoint import existing_run, read_checkpoint
    from mbmpo_core.store import TransitionStore, reconcile

    config, run = work / "train.yaml", work / "train_run"
    config.write_text(yaml.safe_dump(TRAIN_CONFIG))
    fresh = [sys.executable, "-m", "mbmpo_ros.cli", "train", "--config", str(config), "--run-dir", str(run),
             "--no-progress", "--threads", "1"]
    resume = [sys.executable, "-m", "mbmpo_ros.cli", "train", "--resume", str(run), "--no-progress", "--threads", "1"]
    failed, tracebacks, restarts_from_scratch = 0, 0, 0
    for k in range(kills + 1):
        cmd = resume if existing_run(run) else fresh
        if k == kills:  # the last one ends by itself: two more iterations
            held = len(TransitionStore(run / "transitions")) if existing_run(run) else 0
            final_steps = max(held, 200) + 400
            cmd = [*cmd, "--steps", str(final_steps)]
        restarts_from_scratch += k > 0 and cmd is fresh
        proc = subprocess.Popen(cmd, env=env_for(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        if k < kills:
            moment = rng.uniform(1.0, 25.0)
            try:
                out, _ = proc.communicate(timeout=moment)
                ended_by_itself = True
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                out, _ = proc.communicate()
                ended_by_itself = False
        else:
            out, _ = proc.communicate(timeout=1800)
            ended_by_itself = True
        tracebacks += "Traceback" in out
        if ended_by_itself and proc.returncode != 0:
            failed += 1
            print(f"  train: run {k} exited with {proc.returncode}: {out.strip().splitlines()[-1:]}", flush=True)
        print(f"  train: {'kill' if k < kills else 'final'} {k}: {'ended' if ended_by_itself else 'killed'}, "
              f"{len(list((run / 'transitions').glob('chunk-*.mbt')))} batches stored, "
              f"{_progress_rows(run)} progress rows", flush=True)
    store = TransitionStore(run / "transitions")
    payloads = Counter(hashlib.sha256(np.ascontiguousarray(b["obs"]).tobytes() + b["act"].tobytes()).hexdigest()
                       for b in store.iter_batches())
    with (run / "progress.csv").open() as f:
        rows = list(csv.DictReader(f))
    iterations = [int(float(r["iteration"])) for r in rows]
    own = read_checkpoint(run)["sim_loop"]
    account = reconcile(own["store"], store)
    last_steps = int(float(rows[-1]["real_steps"])) if rows else 0
    return {"part": "train", "kills": kills, "resumes_failed": failed, "tracebacks": tracebacks,
            "restarts_from_scratch": restarts_from_scratch,
            "duplicates_stored": sum(n - 1 for n in payloads.values()),
            "transitions_lost": account.lost + max(0, last_steps - len(store)),
            "corrupt_batches": len(store.corrupt), "stored": len(store),
            "progress_ok": int(iterations == list(range(len(iterations))) and len(store) >= final_steps)}


def _progress_rows(run: Path) -> int:
    path = run / "progress.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


# ------------------------------------------------------------------------------------------ part 2: learner kills
class Graph:
    """An rclpy context on its own domain with a /diagnostics probe (the newest values per status name)."""

    def __init__(self, domain_id: int) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        from mbmpo_ros.qos import DIAGNOSTICS_QOS

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.node = rclpy.create_node("faults_probe", context=self.context)
        self.executor.add_node(self.node)
        self.status: dict[str, dict[str, str]] = {}
        self.heard: Counter[str] = Counter()
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, DIAGNOSTICS_QOS)

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            self.status[status.name] = {kv.key: kv.value for kv in status.values}
            self.heard[status.name] += 1

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                return False
            self.executor.spin_once(timeout_sec=0.05)
        return True

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def node_commands(run_dir: Path, config: Path) -> dict[str, list[str]]:
    from mbmpo_ros.graph import train_graph
    from mbmpo_ros.launcher import CONFIG_DIR, command_line

    out = {}
    for node in train_graph(CONFIG_DIR, sim=True, config=str(config), run_dir=str(run_dir), rate_hz=200.0):
        if node.executable == "controller":
            node = dataclasses.replace(node, overrides={**node.overrides, "batch_size": 10})
        out[node.executable] = command_line(node)
    return out


def stored_keys(run_dir: Path) -> list[tuple[str, str, int]]:
    from mbmpo_core.store import TransitionStore

    path = run_dir / "transitions"
    if not (path / "store.json").is_file():
        return []
    return [(k.robot, k.session, k.seq) for k in TransitionStore(path).batch_keys()]


def start(cmd: list[str], domain_id: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env_for(domain_id), cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def learner_part(kills: int, rng: random.Random, work: Path, domain_id: int) -> dict[str, Any]:
    from mbmpo_core.checkpoint import read_checkpoint

    run, config = work / "learner_run", work / "learner.yaml"
    config.write_text(yaml.safe_dump(LEARNER_CONFIG))
    cmds = node_commands(run, config)
    graph = Graph(domain_id)
    procs: list[subprocess.Popen[bytes]] = []
    failed = 0
    try:
        learner = start(cmds["learner"], domain_id, work / "learner.log")
        sim = start(cmds["sim_robot"], domain_id, work / "sim_robot.log")
        controller = start(cmds["controller"], domain_id, work / "controller.log")
        procs += [learner, sim, controller]
        for k in range(kills):
            before = len(stored_keys(run))
            up = graph.wait(lambda n=before, p=learner: len(stored_keys(run)) > n or p.poll() is not None, 120.0)
            if not up or learner.poll() is not None:
                failed += 1
                print(f"  learner: restart {k} did not store anything (exit {learner.poll()})", flush=True)
            graph.spin(rng.uniform(1.0, 8.0))
            learner.send_signal(signal.SIGKILL)
            learner.wait()
            print(f"  learner: kill {k}: {len(stored_keys(run))} batches stored", flush=True)
            graph.spin(rng.uniform(0.0, 2.0))
            learner = start([*cmds["learner"], "-p", "resume:=true"], domain_id, work / "learner.log")
            procs.append(learner)
        before = len(stored_keys(run))
        graph.wait(lambda p=learner: len(stored_keys(run)) > before or p.poll() is not None, 120.0)
        sim.send_signal(signal.SIGINT)
        sim.wait(timeout=30)
        controller_name = "mbmpo/controller/robot_0"

        def delivered() -> bool:
            values = graph.status.get(controller_name, {})
            made = int(values.get("batches_made", "-1"))
            return made > 0 and values.get("batches_unacknowledged") == "0" and len(stored_keys(run)) >= made

        graph.wait(delivered, 180.0)
        values = graph.status.get(controller_name, {})
        made, session = int(values.get("batches_made", "0")), values.get("session", "")
        counts = Counter(seq for robot, sess, seq in stored_keys(run) if (robot, sess) == ("robot_0", session))
        if learner.poll() is not None:
            failed += 1
        learner.send_signal(signal.SIGINT)
        learner.wait(timeout=30)
        try:
            iteration = int(read_checkpoint(run)["iteration"])
        except (FileNotFoundError, ValueError):
            iteration = -1
        return {"part": "learner", "kills": kills, "resumes_failed": failed, "batches_made": made,
                "batches_lost": sum(1 for s in range(made) if s not in counts),  # of <= 10 transitions each
                "duplicates_stored": sum(n - 1 for n in counts.values()),
                "resent": int(values.get("batches_resent", "0")), "dropped": int(values.get("batches_dropped", "0")),
                "checkpoint_iteration": iteration}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        graph.close()


# ------------------------------------------------------------------------------------------ part 3: fuzzing
def _valid_batch(rng: np.random.Generator, seq: int) -> Any:
    from mbmpo_ros.codec import TransitionBatch

    n = int(rng.integers(1, 20))
    return TransitionBatch(obs=rng.normal(size=(n, 4)), act=rng.normal(size=(n, 1)), next_obs=rng.normal(size=(n, 4)),
                           reward=rng.normal(size=n), done=np.zeros(n, bool), step=np.arange(n),
                           episode=np.zeros(n, np.int64), adapted=np.zeros(n, bool), robot="robot_0",
                           policy_id="fuzz", seq=seq, session="fuzz-session")


def _junk_float(rng: np.random.Generator) -> float:
    return float(rng.choice([np.nan, np.inf, -np.inf, 1e308, -1e308, 2.0**60, 0.5, -1.0, 0.0]))


def fuzz_transitions(rng: np.random.Generator, i: int) -> Any:
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension

    from mbmpo_ros.codec import encode_transitions

    if i % 10 == 0:  # from scratch
        msg = Float64MultiArray()
        msg.layout.dim = [MultiArrayDimension(label=_junk_label(rng), size=int(rng.integers(0, 2**32)),
                                              stride=int(rng.integers(0, 2**32))) for _ in range(rng.integers(0, 12))]
        msg.layout.data_offset = int(rng.integers(0, 2**32))
        msg.data = array.array("d", rng.normal(size=int(rng.integers(0, 200))).tolist())
        return msg
    msg = encode_transitions(_valid_batch(rng, int(rng.integers(0, 50))))
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 8))
        dims = msg.layout.dim
        if kind == 0 and dims:
            dims[int(rng.integers(0, len(dims)))].label = _junk_label(rng)
        elif kind == 1 and dims:
            dims[int(rng.integers(0, len(dims)))].size = int(rng.integers(0, 2**32))
        elif kind == 2 and dims:
            dims[int(rng.integers(0, len(dims)))].stride = int(rng.integers(0, 2**32))
        elif kind == 3 and len(msg.data):
            msg.data[int(rng.integers(0, len(msg.data)))] = _junk_float(rng)
        elif kind == 4:
            msg.data = array.array("d", list(msg.data)[: int(rng.integers(0, len(msg.data) + 1))])
        elif kind == 5:
            msg.layout.data_offset = int(rng.integers(0, 2**32))
        elif kind == 6 and dims:
            del dims[int(rng.integers(0, len(dims)))]
        else:
            msg.data[int(rng.integers(0, 4))] = _junk_float(rng)  # seq, episode, step, flags
    return msg


def _junk_label(rng: np.random.Generator) -> str:
    choices = ["codec=2", "codec=1", "robot=", "session=", "policy_id=", "obs", "act", "=", "",
               "x" * int(rng.integers(0, 400)), "codec=2\n", "robot=\x00", "policy_id=é" * 50]
    return str(choices[int(rng.integers(0, len(choices)))])


def fuzz_joint_state(rng: np.random.Generator, i: int) -> Any:
    from sensor_msgs.msg import JointState

    names = ["slider", "hinge", "hinge", "x" * 300, "", "joint_é"]
    msg = JointState()
    msg.name = [names[int(k)] for k in rng.integers(0, len(names), size=int(rng.integers(0, 6)))]
    for field in ("position", "velocity", "effort"):
        values = [_junk_float(rng) if rng.random() < 0.3 else float(rng.normal()) for _ in
                  range(int(rng.integers(0, 6)))]
        setattr(msg, field, values)
    msg.header.stamp.sec = int(rng.integers(-(2**31), 2**31))
    msg.header.stamp.nanosec = int(rng.integers(0, 2**32))
    return msg


def fuzz_estop(rng: np.random.Generator, i: int) -> Any:
    from std_msgs.msg import Bool

    return Bool(data=bool(rng.random() < 0.5))


def fuzz_policy(rng: np.random.Generator, i: int, valid: Any) -> Any:
    from std_msgs.msg import MultiArrayDimension, UInt8MultiArray

    msg = copy.deepcopy(valid)
    kind = i % 6
    if kind == 0:  # random bytes and header
        msg = UInt8MultiArray()
        msg.layout.dim = [MultiArrayDimension(label=_junk_label(rng), size=int(rng.integers(0, 2**32)))
                          for _ in range(rng.integers(0, 6))]
        msg.data = array.array("B", rng.integers(0, 256, size=int(rng.integers(0, 5000))).astype(np.uint8).tobytes())
    elif kind == 1:  # flipped payload bytes (sha mismatch)
        data = bytearray(msg.data)
        for pos in rng.integers(0, len(data), size=5):
            data[int(pos)] ^= 0xFF
        msg.data = array.array("B", bytes(data))
    elif kind == 2:  # garbage with a matching sha256: decoding gets past the checksum
        body = rng.integers(0, 256, size=len(msg.data)).astype(np.uint8).tobytes()
        msg.data = array.array("B", body)
        msg.layout.dim[2].label = f"sha256={hashlib.sha256(body).hexdigest()}"
    elif kind == 3:  # a lying file size
        msg.layout.dim[3].size = int(rng.integers(0, 2**32))
    elif kind == 4:  # a path in a file name, or a wrong id
        msg.layout.dim[int(rng.integers(1, len(msg.layout.dim)))].label = str(
            rng.choice(["file=../x.onnx", "policy_id=other", "file=policy.onnx", "codec=7", "sha256=zz"]))
    else:  # truncated
        msg.data = array.array("B", bytes(msg.data)[: int(rng.integers(0, len(msg.data)))])
    return msg


def fuzz_ack(rng: np.random.Generator, i: int, session: str) -> Any:
    from std_msgs.msg import Int64MultiArray, MultiArrayDimension

    msg = Int64MultiArray()
    labels = ["codec=1", "robot=robot_0", f"session={session}", "learner=fuzz"]
    if i % 4 == 0:
        labels = [_junk_label(rng) for _ in range(int(rng.integers(0, 6)))]
    elif i % 4 == 1:
        labels[int(rng.integers(0, 4))] = _junk_label(rng)
    msg.layout.dim = [MultiArrayDimension(label=label) for label in labels]
    length = int(rng.integers(0, 300))
    msg.data = array.array("q", rng.integers(-(2**62), 2**62, size=length).tolist() if i % 3 == 0 else
                           sorted(int(x) for x in rng.integers(-5, 10**6, size=length)))
    return msg


def fuzz_part(count: int, seed: int, work: Path, domain_id: int) -> dict[str, Any]:
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Float64MultiArray, Int64MultiArray, UInt8MultiArray

    from mbmpo_ros.codec import encode_policy, encode_transitions
    from mbmpo_ros.qos import ACK_QOS, COMMAND_QOS, POLICY_QOS, STATE_PUB_QOS, TRANSITIONS_QOS

    config = work / "quiet.yaml"
    config.write_text(yaml.safe_dump(QUIET_CONFIG))
    cmds = node_commands(work / "fuzz_run", config)
    graph = Graph(domain_id)
    learner = start(cmds["learner"], domain_id, work / "fuzz_learner.log")
    controller = start(cmds["controller"], domain_id, work / "fuzz_controller.log")
    rng = np.random.default_rng(seed)
    result: dict[str, Any] = {"part": "fuzz", "messages_per_topic": count}
    try:
        names = ("mbmpo/learner", "mbmpo/controller/robot_0")
        if not graph.wait(lambda: all(n in graph.status for n in names), 120.0):
            raise RuntimeError("learner or controller did not come up")
        session = graph.status["mbmpo/controller/robot_0"].get("session", "")
        valid_policy = encode_policy(_policy_bundle())
        topics = [
            ("learner", "/robot_0/mbmpo/transitions", Float64MultiArray, TRANSITIONS_QOS, fuzz_transitions, 0.002),
            ("controller", "/robot_0/joint_states", JointState, STATE_PUB_QOS, fuzz_joint_state, 0.002),
            ("controller", "/robot_0/estop", Bool, COMMAND_QOS, fuzz_estop, 0.002),
            ("controller", "/mbmpo/policy", UInt8MultiArray, POLICY_QOS,
             lambda r, i: fuzz_policy(r, i, valid_policy), 0.02),
            ("controller", "/robot_0/mbmpo/transitions_ack", Int64MultiArray, ACK_QOS,
             lambda r, i: fuzz_ack(r, i, session), 0.01),
        ]
        crashes = 0
        seq = 10**6
        for owner, topic, msg_type, qos, make, pause in topics:
            pub = graph.node.create_publisher(msg_type, topic, qos)
            graph.wait(lambda p=pub: p.get_subscription_count() > 0, 30.0)
            sent = 0
            for i in range(count):
                pub.publish(make(rng, i))
                sent += 1
                graph.spin(pause)
            proc = learner if owner == "learner" else controller
            name = names[0] if owner == "learner" else names[1]
            heard = graph.heard[name]
            alive = proc.poll() is None and graph.wait(lambda n=name, h=heard: graph.heard[n] > h + 1, 10.0)
            if owner == "learner" and alive:  # still ingesting: a valid batch is stored
                stored = int(graph.status[name].get("stored_transitions", "0"))
                tr = graph.node.create_publisher(Float64MultiArray, "/robot_0/mbmpo/transitions", TRANSITIONS_QOS)
                graph.wait(lambda t=tr: t.get_subscription_count() > 0, 10.0)
                tr.publish(encode_transitions(_valid_batch(rng, seq)))
                seq += 1
                alive = graph.wait(lambda s=stored, n=name: int(graph.status[n].get("stored_transitions", "0")) > s,
                                   15.0)
            crashes += not alive
            key = topic.strip("/").replace("/", ".")
            result[f"sent.{key}"] = sent
            result[f"crash.{key}"] = int(not alive)
            print(f"  fuzz: {topic}: {sent} sent, {'alive' if alive else 'CRASHED or unresponsive'}", flush=True)
        learner_values, controller_values = graph.status[names[0]], graph.status[names[1]]
        result.update({"crashes": crashes,
                       "learner_rejected": int(learner_values.get("robot_0/rejected", "0")),
                       "learner_accepted": int(learner_values.get("robot_0/accepted", "0")),
                       "controller_rejected_policies": int(controller_values.get("rejected_policies", "0")),
                       "controller_rejected_acks": int(controller_values.get("rejected_acks", "0"))})
        return result
    finally:
        for proc in (learner, controller):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        graph.close()


def _policy_bundle() -> Any:
    from mbmpo_core.export import export_bundle
    from mbmpo_core.policy import GaussianMLPPolicy
    from sim import make_task

    task = make_task(TASK, horizon=50)
    return export_bundle(GaussianMLPPolicy(task.obs_dim, task.act_dim, hidden_sizes=(8,)), task_name=TASK,
                         obs_names=task.obs_names, act_names=task.act_names, joint_names=task.joint_names,
                         action_low=task.action_low, action_high=task.action_high, control_rate_hz=1.0 / task.dt,
                         horizon=50, inner_lr=0.1, gamma=0.99, gae_lambda=1.0, iteration=0)


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kill -9 moments per kill part")
    parser.add_argument("--fuzz", type=int, default=1000, help="messages per subscribed topic")
    parser.add_argument("--parts", nargs="+", default=["train", "learner", "fuzz"],
                        choices=["train", "learner", "fuzz"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domain-id", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", "87")))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, run directories)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()  # the code under test: the commit at the start
    work = Path(tempfile.mkdtemp(prefix="mbmpo-faults-"))
    print(f"work directory: {work}", flush=True)
    rows = []
    started = time.monotonic()
    try:
        for part in args.parts:
            t = time.monotonic()
            if part == "train":
                row = train_part(args.kills, rng, work)
            elif part == "learner":
                row = learner_part(args.kills, rng, work, args.domain_id)
            else:
                row = fuzz_part(args.fuzz, args.seed, work, args.domain_id)
            row["seconds"] = round(time.monotonic() - t, 1)
            rows.append(row)
            print(f"{part}: {row}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["date", "commit", "machine", "seed", "part", "figures"])
        for row in rows:
            writer.writerow([time.strftime("%Y-%m-%d %H:%M"), commit, f"{platform.node()} {os.cpu_count()} cores",
                             args.seed, row["part"], yaml.safe_dump(row, default_flow_style=True,
                                                                    width=1 << 20).strip()])
    missed = [r["part"] for r in rows if r.get("resumes_failed") or r.get("duplicates_stored")
              or r.get("transitions_lost") or r.get("batches_lost") or r.get("crashes") or r.get("tracebacks")
              or r.get("progress_ok") == 0]
    print(f"total {time.monotonic() - started:.0f} s; targets missed in: {missed or 'none'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
