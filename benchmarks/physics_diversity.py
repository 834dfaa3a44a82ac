"""Do the ensemble's tasks contain physics? Member spread and task-gradient cosines with and without domain
randomisation + member emphasis (issue 11, part 1).

Arms, all on HalfCheetah-v5 with the same seed and the same number of random-action transitions, collected by the
simulated training loop's own warm-up (:class:`~mbmpo_core.sim_loop.SimTrainingLoop`, so randomised data carries
its ``physics`` column), and fitted by :meth:`MetaLearner.improve` (meta_steps 0: the ensemble fit of an iteration):

* ``nominal``: ``--config`` without its ``randomize`` section and with ``member_emphasis`` 1 (today's run);
* ``dr``: the randomisation, every member fitting all data alike (``member_emphasis`` 1);
* ``dr_emphasis_<w>``: the randomisation with ``member_emphasis`` w (``--emphasis``; default the config's).

Measured per arm:

(a) member spread: the std over members of the predicted next observation, averaged over rows and coordinates
    (raw units), on held-out random-action data of nominal physics and of each test perturbation (mass x0.5, x1.5,
    damping x2, actuator 0 x0.3); with it the members' one-step MSE (mean over members, and the best member's).
    Members that differ along physics spread more off-nominal than on it, and their best member is well below
    their mean there (what identification on the robot picks).
(b) task-gradient cosines: one fixed policy (the seeded initial policy, or ``--policy`` a checkpoint's) with the
    nominal arm's observation normaliser; ``--tasks-per-member`` tasks per member, each ``rollouts_per_task``
    imagined rollouts from stored episode starts, exactly as in meta-training; the inner-step gradient of each task
    (``mbmpo_core.meta.inner_gradient``); the cosine between tasks of different members against the cosine between
    tasks of the same member (the noise floor of a batch of that size). Tasks that contain physics: the
    same-member cosine is clearly above the different-member one.

Rows go to benchmarks/results/physics_diversity.csv (one per arm x measurement). Example (about 8 CPU-minutes)::

    OMP_NUM_THREADS=1 python benchmarks/physics_diversity.py --config benchmarks/cpu_small_dr.yaml
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # allow `python benchmarks/physics_diversity.py` without installing
    sys.path.insert(0, str(REPO_ROOT))

from mbmpo_core.checkpoint import read_checkpoint  # noqa: E402
from mbmpo_core.config import Config, RandomizeConfig, load_config  # noqa: E402
from mbmpo_core.meta import inner_gradient, task_batched  # noqa: E402
from mbmpo_core.meta_learner import MetaLearner  # noqa: E402
from mbmpo_core.registry import make_task  # noqa: E402
from mbmpo_core.sampler import RealSampler, uniform_random_actions  # noqa: E402
from mbmpo_core.sim_loop import SimTrainingLoop  # noqa: E402
from mbmpo_core.task import TaskSpec  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "physics_diversity.csv"
# Held-out physics: the test perturbations, and nominal.
TEST_PHYSICS: dict[str, dict[str, Any] | None] = {
    "nominal": None,
    "mass_x0.5": {"mass_scale": 0.5},
    "mass_x1.5": {"mass_scale": 1.5},
    "damping_x2": {"damping_scale": 2.0},
    "actuator0_x0.3": {"weaken_actuator": {0: 0.3}},
}
FIELDS = ["timestamp", "commit", "machine", "threads", "arm", "transitions", "member_emphasis", "randomize",
          "measure", "physics", "value", "n"]


def arms(config: Config, emphases: list[float]) -> dict[str, Config]:
    """The arms of the module docstring (one ``dr_emphasis_<w>`` per member emphasis w)."""
    plain = replace(config.ensemble, member_emphasis=1.0)
    out = {"nominal": replace(config, randomize=RandomizeConfig(), ensemble=plain),
           "dr": replace(config, ensemble=plain)}
    for w in emphases:
        out[f"dr_emphasis_{w:g}"] = replace(config, ensemble=replace(config.ensemble, member_emphasis=w))
    return out


def describe(config: Config) -> str:
    """The arm's randomisation in one CSV cell."""
    ranges = config.randomize.ranges()
    if not ranges:
        return "off"
    return " ".join(f"{k}={v[0]:g}..{v[1]:g}" for k, v in ranges.items()) + (
        " per_object" if config.randomize.per_object else " whole_robot")


def collect(config: Config, task: TaskSpec, steps: int) -> dict[str, np.ndarray]:
    """``steps`` random-action transitions from the sim loop's warm-up (collection envs with the config's
    physics draws), as the store holds them."""
    config = replace(config, loop=replace(config.loop, random_steps=steps))
    with tempfile.TemporaryDirectory() as run_dir:
        loop = SimTrainingLoop(config, task, run_dir, log=lambda _: None)
        loop._collect()  # the warm-up: random actions until loop.random_steps are stored
        data = loop.store.load_all()
        loop.close()
    return data


def held_out(task: TaskSpec, perturbation: dict[str, Any] | None, steps: int, seed: int) -> dict[str, np.ndarray]:
    """``steps`` random-action transitions of one physics, from envs the training never used."""
    envs = [task.make_env(seed=seed + i, perturbation=perturbation) for i in range(4)]
    sampler = RealSampler(envs, task.horizon, task.action_low, task.action_high, seed=seed)
    batch = sampler.sample(uniform_random_actions(task.action_low, task.action_high,
                                                  np.random.default_rng(seed)), steps)
    for env in envs:
        env.close()
    return batch.transitions()


def spread_rows(learner: MetaLearner, tests: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """(a): member spread (and its ratio to nominal physics') and one-step MSE per test physics (nominal first)."""
    rows: list[dict[str, Any]] = []
    nominal_spread = float("nan")
    for name, data in tests.items():
        pred = learner.ensemble.predict_all(data["obs"], data["act"]).cpu().numpy()  # [K, N, obs_dim]
        mse = ((pred - data["next_obs"][None]) ** 2).mean(axis=(1, 2))  # [K]
        n = len(data["obs"])
        spread = float(pred.std(axis=0).mean())
        nominal_spread = spread if name == "nominal" else nominal_spread
        rows += [{"measure": "member_spread", "physics": name, "value": spread, "n": n},
                 {"measure": "member_spread_vs_nominal", "physics": name, "value": spread / nominal_spread, "n": n},
                 {"measure": "mse_mean_member", "physics": name, "value": float(mse.mean()), "n": n},
                 {"measure": "mse_best_member", "physics": name, "value": float(mse.min()), "n": n},
                 {"measure": "best_member", "physics": name, "value": int(mse.argmin()), "n": n}]
    return rows


def gradient_rows(learner: MetaLearner, data: dict[str, np.ndarray], repeats: int) -> list[dict[str, Any]]:
    """(b): cosines between the inner-step gradients of tasks in different members and in the same member."""
    m = learner.config.meta.meta_batch_size
    k = learner.config.ensemble.num_models
    member = np.arange(m) // (m // k)  # task -> member (mbmpo_core.imagination.task_models)
    starts = data["obs"][data["step"] == 0]
    same: list[float] = []
    other: list[float] = []
    for _ in range(repeats):
        batch = learner._imagine_batch(learner._theta_per_task(), starts, data["obs"])
        base = task_batched(learner.policy, learner.policy.params(), m)
        grads = inner_gradient(learner.policy, base, batch)
        flat = torch.cat([g.reshape(m, -1) for g in grads.values()], dim=1)  # [M, P]
        unit = torch.nn.functional.normalize(flat, dim=1)
        cos = (unit @ unit.T).cpu().numpy()
        for i in range(m):
            for j in range(i + 1, m):
                (same if member[i] == member[j] else other).append(cos[i, j])
    rows = []
    for name, values in (("grad_cos_same_member", same), ("grad_cos_other_member", other)):
        v = np.asarray(values)
        rows += [{"measure": f"{name}_mean", "physics": "imagined", "value": float(v.mean()), "n": len(v)},
                 {"measure": f"{name}_std", "physics": "imagined", "value": float(v.std()), "n": len(v)}]
    return rows


def fixed_policy(learner: MetaLearner, checkpoint: str | None) -> dict[str, torch.Tensor]:
    """The policy every arm's gradients are taken at: the nominal arm's after its improve (the seeded initial policy,
    meta_steps 0, with the observation normaliser of nominal data), or the policy of ``checkpoint``."""
    if checkpoint is not None:
        learner.policy.load_state_dict(read_checkpoint(checkpoint, learner.device)["policy"])
    return {k: v.clone() for k, v in learner.policy.state_dict().items()}


def commit() -> str:
    out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False)
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "mbmpo_core", "sim"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "benchmarks" / "cpu_small_dr.yaml"))
    parser.add_argument("--steps-per-draw", type=int, default=2000, help="training transitions per physics draw")
    parser.add_argument("--test-steps", type=int, default=1000, help="held-out transitions per test physics")
    parser.add_argument("--tasks-per-member", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="imagined batches for the gradient cosines")
    parser.add_argument("--emphasis", type=float, nargs="+", default=None,
                        help="member_emphasis values of the randomised arms (default: the config's)")
    parser.add_argument("--policy", default=None, help="checkpoint whose policy the gradients are taken at")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = load_config(args.config)
    if not base.randomize.ranges():
        parser.error(f"{args.config} has no randomize section: nothing to compare")
    k = base.ensemble.num_models
    base = replace(base, meta=replace(base.meta, meta_steps=0, meta_batch_size=k * args.tasks_per_member))
    task = make_task(base.task, horizon=base.loop.horizon)
    steps = k * args.steps_per_draw
    tests = {name: held_out(task, p, args.test_steps, seed=10_000 + 10 * i)
             for i, (name, p) in enumerate(TEST_PHYSICS.items())}
    meta_info = {"timestamp": dt.datetime.now().isoformat(timespec="seconds"), "commit": commit(),
                 "machine": platform.node(), "threads": torch.get_num_threads(), "transitions": steps}
    policy_state = None
    rows = []
    for arm, config in arms(base, args.emphasis or [base.ensemble.member_emphasis]).items():
        t = time.perf_counter()
        data = collect(config, task, steps)
        learner = MetaLearner(config, task)
        report = learner.improve(data)
        policy_state = fixed_policy(learner, args.policy) if policy_state is None else policy_state
        learner.policy.load_state_dict(policy_state)
        arm_rows = spread_rows(learner, tests) + gradient_rows(learner, data, args.repeats)
        info = {**meta_info, "arm": arm, "member_emphasis": config.ensemble.member_emphasis,
                "randomize": describe(config)}
        rows += [{**info, **row} for row in arm_rows]
        print(f"{arm}: fit {int(report.fit.epochs.max())} epochs, {time.perf_counter() - t:.0f} s", flush=True)
        for row in arm_rows:
            print(f"  {row['measure']:<28} {row['physics']:<15} {row['value']:.4f}  (n={row['n']})")
    out = Path(args.out)
    new = not out.exists()
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"appended {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
