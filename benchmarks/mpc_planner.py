"""What the MB-MPC arm's planner size costs and buys: return and time per plan of random shooting on one trained
ensemble, for several candidate counts, horizons and ways of using the ensemble (benchmarks/mpc.py).

    python benchmarks/mpc_planner.py --task HalfCheetah-v5 \
        --checkpoint benchmarks/results/compare/HalfCheetah-v5/checkpoints/mbmpo-s0/run/checkpoints/checkpoint.pt

The ensemble is the one a finished comparison run ended with (100k real steps). Every planner runs the same
evaluation episodes (the study's paired seeds, horizon 200) on one thread; the CSV has one row per planner and
episode, and the summary the mean return with its standard error and the milliseconds per plan.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from eval_protocol import EVAL_SEEDS, run_episode
from mpc import RandomShootingPlanner

from mbmpo_core.config import load_config
from mbmpo_core.ensemble import DynamicsEnsemble
from mbmpo_core.registry import make_task

HORIZON = 200
MB_CONFIG = Path(__file__).parent / "cpu_small.yaml"
# (candidates, plan horizon, ensemble use): the arm's planner first, then the alternatives.
PLANNERS: tuple[tuple[int, int, str], ...] = (
    (1000, 20, "split"), (1000, 20, "mean"), (500, 20, "split"), (1000, 10, "split"), (250, 20, "split"),
)


def load_ensemble(checkpoint: Path, task_name: str) -> DynamicsEnsemble:
    """The ensemble of a comparison run's SimTrainingLoop checkpoint (built by the arms' config, cpu_small.yaml)."""
    config = load_config(MB_CONFIG, task=task_name, seed=0, device="cpu")
    task = make_task(task_name, horizon=HORIZON)
    ensemble = DynamicsEnsemble.from_config(task.obs_dim, task.act_dim, config.ensemble, seed=0,
                                            ignored_obs=task.position_obs)
    ensemble.load_state_dict(torch.load(checkpoint, weights_only=False)["ensemble"])
    return ensemble


class CountedPlanner:
    """The eval protocol's policy for a planner (every action planned), counting its plans."""

    def __init__(self, planner: RandomShootingPlanner) -> None:
        self.planner, self.plans = planner, 0

    def __call__(self, obs: np.ndarray, _deterministic: bool) -> np.ndarray:
        self.plans += 1
        return self.planner.plan(obs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=("HalfCheetah-v5", "Hopper-v5"))
    parser.add_argument("--checkpoint", type=Path, required=True, help="a SimTrainingLoop checkpoint.pt")
    parser.add_argument("--episodes", type=int, default=3, help="evaluation episodes per planner (paired seeds)")
    parser.add_argument("--out", type=Path, help="CSV (default benchmarks/results/mpc_planner_<task>.csv)")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        print(f"no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    if not 1 <= args.episodes <= len(EVAL_SEEDS):
        print(f"--episodes must be in 1..{len(EVAL_SEEDS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    task = make_task(args.task, horizon=HORIZON)
    ensemble = load_ensemble(args.checkpoint, args.task)
    env = task.make_env(seed=EVAL_SEEDS[0])
    out = args.out or Path(__file__).parent / "results" / f"mpc_planner_{args.task}.csv"
    rows = []
    for candidates, horizon, use in PLANNERS:
        returns, seconds, plans = [], 0.0, 0
        for episode, seed in enumerate(EVAL_SEEDS[: args.episodes]):
            policy = CountedPlanner(RandomShootingPlanner(ensemble, task, candidates, horizon, seed=episode,
                                                          ensemble_use=use))
            t0 = time.perf_counter()
            returns.append(run_episode(policy, env, seed, deterministic=True))
            elapsed = time.perf_counter() - t0
            seconds, plans = seconds + elapsed, plans + policy.plans
            rows.append({"candidates": candidates, "plan_horizon": horizon, "ensemble_use": use, "seed": seed,
                         "return": round(returns[-1], 2), "ms_per_plan": round(1000 * elapsed / policy.plans, 2)})
        r = np.array(returns)
        sem = r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else float("nan")
        print(f"{candidates:5d} x {horizon:2d} {use:5s}: return {r.mean():7.1f} +- {sem:5.1f}  "
              f"{1000 * seconds / plans:6.1f} ms per plan", flush=True)
    env.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
