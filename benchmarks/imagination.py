"""Imagined-rollout throughput: transitions per second of the batched ensemble + policy + reward loop.

    python benchmarks/imagination.py --device cpu --rollouts 1000 --horizon 200

Paper batch: 5 models of 512x512, HalfCheetah-v5 (obs 18, act 6), 1000 rollouts (20 tasks x 50) x 200 steps.
Appends a row to benchmarks/results/imagination.csv.
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mbmpo_core.ensemble import DynamicsEnsemble
from mbmpo_core.imagination import imagine
from mbmpo_core.policy import GaussianMLPPolicy
from sim import make_task

RESULTS = Path(__file__).parent / "results" / "imagination.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--task", default="HalfCheetah-v5")
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--rollouts", type=int, default=1000, help="tasks x rollouts per task")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    task = make_task(args.task, horizon=args.horizon)
    device = torch.device(args.device)
    ensemble = DynamicsEnsemble(task.obs_dim, task.act_dim, args.models, (args.hidden, args.hidden), device=device)
    policy = GaussianMLPPolicy(task.obs_dim, task.act_dim).to(device)
    per_task = args.rollouts // args.tasks
    params = {k: v.detach().unsqueeze(0).expand(args.tasks, *v.shape) for k, v in policy.params().items()}
    start = torch.as_tensor(task.sample_initial_obs(args.tasks * per_task, np.random.default_rng(0)),
                            dtype=torch.float32, device=device).reshape(args.tasks, per_task, -1)
    gen = torch.Generator(device=device).manual_seed(0)

    def one_pass() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        imagine(ensemble, policy, params, task, start, args.horizon, 1e4, 1e4, generator=gen)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    one_pass()  # warm-up (allocator, kernels)
    seconds = min(one_pass() for _ in range(args.repeats))
    transitions = args.tasks * per_task * args.horizon
    print(f"{transitions} transitions in {seconds * 1e3:.0f} ms: {transitions / seconds / 1e6:.3f} M transitions/s "
          f"({args.device}, {torch.get_num_threads()} threads)")
    RESULTS.parent.mkdir(exist_ok=True)
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["machine", "device", "threads", "torch", "models", "hidden", "rollouts", "horizon",
                             "seconds_per_pass", "transitions_per_s"])
        writer.writerow([platform.processor() or platform.machine(), args.device, torch.get_num_threads(),
                         torch.__version__, args.models, args.hidden, args.tasks * per_task, args.horizon,
                         f"{seconds:.4f}", f"{transitions / seconds:.0f}"])


if __name__ == "__main__":
    main()
