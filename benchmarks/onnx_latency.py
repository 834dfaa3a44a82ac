"""Policy latency on one CPU thread: ONNX (onnxruntime) against torch eager, and the ONNX inner step.

    python benchmarks/onnx_latency.py --task HalfCheetah-v5

Per-action latency (batch 1, p50/p99 over --calls calls) of the exported (32, 32) tanh policy, and the time of
one adaptation step (gradient + adapted parameters) on 1k and 4k transitions. Appends rows to
benchmarks/results/onnx_latency.csv.
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mbmpo_core.export import export_bundle
from mbmpo_core.onnx_runtime import OnnxPolicy
from mbmpo_core.policy import GaussianMLPPolicy
from sim import make_task

RESULTS = Path(__file__).parent / "results" / "onnx_latency.csv"


def percentiles(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    for _ in range(min(100, calls)):
        fn()  # warm-up
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return float(np.percentile(times, 50) * 1e6), float(np.percentile(times, 99) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="HalfCheetah-v5")
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = make_task(args.task, horizon=200)
    policy = GaussianMLPPolicy(task.obs_dim, task.act_dim)
    bundle = export_bundle(policy, task_name=task.name, obs_names=task.obs_names, act_names=task.act_names,
                  joint_names=task.joint_names, action_low=task.action_low, action_high=task.action_high,
                  control_rate_hz=1 / task.dt, horizon=200, inner_lr=1e-3, gamma=0.99, gae_lambda=1.0, iteration=0)
    onnx_policy = OnnxPolicy.from_bundle(bundle)
    obs = np.random.default_rng(0).normal(size=(1, task.obs_dim)).astype(np.float32)
    obs_t = torch.as_tensor(obs)
    rows = []
    p50, p99 = percentiles(lambda: onnx_policy.act(obs), args.calls)
    rows.append(("onnxruntime action", 1, p50, p99))

    def torch_act() -> None:
        with torch.no_grad():
            policy(obs_t)

    p50, p99 = percentiles(torch_act, args.calls)
    rows.append(("torch eager action", 1, p50, p99))
    rng = np.random.default_rng(1)
    for n in (1000, 4000):
        o = rng.normal(size=(n, task.obs_dim)).astype(np.float32)
        a = rng.normal(size=(n, task.act_dim)).astype(np.float32)
        adv = rng.normal(size=n).astype(np.float32)
        p50, p99 = percentiles(lambda o=o, a=a, adv=adv: onnx_policy.adapt(None, o, a, adv), 200)
        rows.append(("onnxruntime adapt step", n, p50, p99))
    RESULTS.parent.mkdir(exist_ok=True)
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["machine", "task", "what", "batch", "p50_us", "p99_us"])
        for what, n, p50, p99 in rows:
            print(f"{what:24s} batch {n:5d}: p50 {p50:8.1f} us, p99 {p99:8.1f} us")
            writer.writerow([platform.processor() or platform.machine(), task.name, what, n, f"{p50:.1f}",
                             f"{p99:.1f}"])


if __name__ == "__main__":
    main()
