"""Time one MAML-TRPO outer step, and compare its variants with the exact full-batch step.

The batch is the shape of meta.py's docstring, M = 20 tasks x N = 10 rollouts x H = 200 steps of
HalfCheetah-v5 (obs 18 with x, act 6), imagined in a 5-model ensemble briefly fitted on random-action
data, with the (32, 32) tanh policy: pre-update rollouts of theta, the inner step (alpha), post-update
rollouts of theta'. It is built once and cached (benchmarks/results/cache/), so that two checkouts time
the same numbers:

    python benchmarks/outer_step.py                        # this checkout: every variant
    python benchmarks/outer_step.py --src /path/to/other   # another checkout (A/B), the variants it has
    python benchmarks/outer_step.py --inner-kl-target 0.01 # at the alpha whose true inner KL is 0.01

``--inner-kl-target``: alpha is set (3 significant digits) so that the true inner KL of the batch's pre-update
rollouts, mean over tasks of KL(pi_theta || pi_theta'_m), meets the target (bisection in log alpha; the
pre-update rollouts do not depend on alpha), which is where ``meta.inner_kl_target`` would hold it.

Variants: ``kl_hessian`` exact / first_order, each on all rollouts and with ``hvp_subsample``. Per
variant: median wall and CPU seconds of ``MetaOptimizer.outer_step`` (one thread unless ``--threads``;
CPU seconds are the steadier figure on a shared machine), surrogate
gain and KL of the accepted step, and (where the checkout has ``natural_direction``) the cosine of its
CG direction with the exact full-batch one, and the true inner KL at alpha. Appends rows to
benchmarks/results/outer_step.csv.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
CACHE = HERE / "results" / "cache"
CSV_PATH = HERE / "results" / "outer_step.csv"
CSV_FIELDS = [
    "timestamp", "commit", "machine", "threads", "variant", "alpha", "tasks", "rollouts", "horizon", "seconds",
    "cpu_seconds", "surrogate_gain", "kl", "cos_exact", "inner_kl",
]
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("exact", {"kl_hessian": "exact"}),
    ("first_order", {"kl_hessian": "first_order"}),
    ("exact_sub0.2", {"kl_hessian": "exact", "hvp_subsample": 0.2}),
    ("first_order_sub0.2", {"kl_hessian": "first_order", "hvp_subsample": 0.2}),
]


def build_batch(args: argparse.Namespace) -> dict[str, Any]:
    """Imagined pre/post rollouts and the policy that produced them (cached by shape and alpha)."""
    path = CACHE / f"outer_step_m{args.tasks}_n{args.rollouts}_h{args.horizon}_a{args.alpha:g}.pt"
    if path.exists():
        blob: dict[str, Any] = torch.load(path, weights_only=True)
        return blob
    from benchmarks.fit_ensemble import collect_halfcheetah
    from mbmpo_core.advantages import compute_advantages
    from mbmpo_core.ensemble import DynamicsEnsemble
    from mbmpo_core.imagination import imagine
    from mbmpo_core.meta import RolloutBatch, inner_step
    from mbmpo_core.policy import GaussianMLPPolicy
    from sim import make_task

    task = make_task("HalfCheetah-v5", horizon=args.horizon)
    data = collect_halfcheetah(5000, seed=0)
    ensemble = DynamicsEnsemble(task.obs_dim, task.act_dim, hidden_sizes=(200, 200), seed=0,
                                ignored_obs=task.position_obs)
    ensemble.fit(data["obs"], data["act"], data["next_obs"], epochs=10)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(task.obs_dim, task.act_dim)
    obs = torch.as_tensor(data["obs"])
    policy.set_obs_normalizer(obs.mean(0), obs.std(0), ignore=task.position_obs)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def rollouts(params: dict[str, torch.Tensor]) -> RolloutBatch:
        start = torch.as_tensor(task.sample_initial_obs(args.tasks * args.rollouts, rng), dtype=torch.float32)
        traj = imagine(ensemble, policy, params, task, start.reshape(args.tasks, args.rollouts, -1),
                       args.horizon, 1e4, 1e4, generator=gen)
        adv, _ = compute_advantages(traj.rewards, traj.obs, traj.mask, 0.99, 1.0)
        with torch.no_grad():
            old = policy.log_prob(traj.obs, traj.act, params)
        return RolloutBatch(traj.obs, traj.act, traj.rewards, traj.mask, adv, old)

    theta = {k: v.detach().unsqueeze(0).expand(args.tasks, *v.shape) for k, v in policy.params().items()}
    pre = rollouts(theta)
    adapted = {k: v.detach().clone() for k, v in inner_step(policy, policy.params(), pre, args.alpha).items()}
    post = rollouts(adapted)
    fields = ("obs", "act", "rewards", "mask", "advantages", "old_log_prob")
    blob = {"policy": policy.state_dict(), "obs_dim": task.obs_dim, "act_dim": task.act_dim,
            "pre": {f: getattr(pre, f) for f in fields}, "post": {f: getattr(post, f) for f in fields}}
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return blob


def inner_kl_at(blob: dict[str, Any], alpha: float) -> float:
    """True inner KL of the cached pre-update rollouts at step size ``alpha`` (this checkout's mbmpo_core)."""
    from mbmpo_core.meta import MetaOptimizer, RolloutBatch, inner_step
    from mbmpo_core.policy import GaussianMLPPolicy

    policy = GaussianMLPPolicy(blob["obs_dim"], blob["act_dim"])
    policy.load_state_dict(blob["policy"])
    pre = RolloutBatch(**blob["pre"])
    meta = MetaOptimizer(policy, inner_lr=alpha)
    with torch.no_grad():
        pre = meta._with_pre_dist(pre)
        kl = meta.kl(inner_step(policy, policy.params(), pre, alpha), pre)
    return float(kl.mean())


def alpha_for_inner_kl(blob: dict[str, Any], target: float, low: float = 1e-5, high: float = 10.0) -> float:
    """The alpha (3 significant digits) whose true inner KL on ``blob``'s pre-update rollouts is ``target``."""
    for _ in range(40):  # bisection in log alpha: the KL grows with alpha
        mid = math.sqrt(low * high)
        low, high = (mid, high) if inner_kl_at(blob, mid) < target else (low, mid)
    return float(f"{math.sqrt(low * high):.3g}")


def run_variant(blob: dict[str, Any], kwargs: dict[str, Any], args: argparse.Namespace,
                reference: torch.Tensor | None) -> dict[str, float] | None:
    from mbmpo_core.meta import MetaOptimizer, RolloutBatch
    from mbmpo_core.policy import GaussianMLPPolicy

    def fresh() -> GaussianMLPPolicy:
        policy = GaussianMLPPolicy(blob["obs_dim"], blob["act_dim"])
        policy.load_state_dict(blob["policy"])
        return policy

    try:
        MetaOptimizer(fresh(), inner_lr=args.alpha, **kwargs)
    except TypeError:
        return None  # this checkout does not have the option
    pre, post = (RolloutBatch(**blob[k]) for k in ("pre", "post"))
    seconds, cpu_seconds, stats = [], [], {}
    for _ in range(args.repeats):
        meta = MetaOptimizer(fresh(), inner_lr=args.alpha, **kwargs)
        t0, c0 = time.perf_counter(), time.process_time()
        stats = meta.outer_step(copy.copy(pre), copy.copy(post))
        seconds.append(time.perf_counter() - t0)
        cpu_seconds.append(time.process_time() - c0)
    gain = stats["surrogate_after"] - stats["surrogate_before"]
    row = {"seconds": statistics.median(seconds), "cpu_seconds": statistics.median(cpu_seconds),
           "surrogate_gain": gain, "kl": stats["kl"], "cos_exact": float("nan")}
    meta = MetaOptimizer(fresh(), inner_lr=args.alpha, **kwargs)
    if reference is not None and hasattr(meta, "natural_direction"):
        direction = meta.natural_direction(pre, post)
        row["cos_exact"] = float(torch.nn.functional.cosine_similarity(direction, reference, dim=0))
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=HERE.parent, help="checkout whose mbmpo_core is timed")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--inner-kl-target", type=float, default=0.0,
                        help="> 0: set alpha so the pre-update rollouts' true inner KL meets this (overrides --alpha)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE.parent))
    blob = build_batch(args)  # built with this checkout, so both sides of an A/B see the same batch
    if args.inner_kl_target > 0:
        before = args.alpha
        args.alpha = alpha_for_inner_kl(blob, args.inner_kl_target)
        print(f"inner KL {inner_kl_at(blob, before):.3g} at alpha {before:g}; target {args.inner_kl_target:g} "
              f"-> alpha {args.alpha:g}")
        blob = build_batch(args)
    inner_kl = inner_kl_at(blob, args.alpha)
    print(f"alpha {args.alpha:g}: true inner KL {inner_kl:.4g}")
    for name in [m for m in sys.modules if m == "mbmpo_core" or m.startswith("mbmpo_core.")]:
        del sys.modules[name]
    sys.path.insert(0, str(args.src.resolve()))
    import mbmpo_core

    print(f"mbmpo_core from {Path(mbmpo_core.__file__).parent}")
    commit = subprocess.run(["git", "-C", str(args.src), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    reference = None
    from mbmpo_core.meta import MetaOptimizer, RolloutBatch
    from mbmpo_core.policy import GaussianMLPPolicy

    if hasattr(MetaOptimizer, "natural_direction"):
        policy = GaussianMLPPolicy(blob["obs_dim"], blob["act_dim"])
        policy.load_state_dict(blob["policy"])
        pre, post = (RolloutBatch(**blob[k]) for k in ("pre", "post"))
        reference = MetaOptimizer(policy, inner_lr=args.alpha, kl_hessian="exact").natural_direction(pre, post)
    for name, kwargs in VARIANTS:
        row = run_variant(blob, kwargs, args, reference)
        if row is None:
            print(f"{name}: not in this checkout")
            continue
        print(f"{name}: {row['seconds']:.3f} s ({row['cpu_seconds']:.3f} s CPU), "
              f"surrogate gain {row['surrogate_gain']:.5f}, kl {row['kl']:.5f}, cos with exact {row['cos_exact']:.5f}")
        write_row({"variant": name, "commit": commit, **row, "inner_kl": inner_kl}, args)


def write_row(row: dict[str, Any], args: argparse.Namespace) -> None:
    full = {"timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()}", "threads": torch.get_num_threads(),
            "alpha": args.alpha, "tasks": args.tasks, "rollouts": args.rollouts, "horizon": args.horizon, **row}
    CSV_PATH.parent.mkdir(parents=True, exist_ok=True)
    if CSV_PATH.exists():  # a file from before a column was added gets the new header (old rows: empty there)
        with CSV_PATH.open(newline="") as f:
            reader = csv.DictReader(f)
            old = list(reader) if reader.fieldnames != CSV_FIELDS else None
        if old is not None:
            with CSV_PATH.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
                writer.writeheader()
                writer.writerows(old)
    new = not CSV_PATH.exists()
    with CSV_PATH.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in full.items()})


if __name__ == "__main__":
    main()
