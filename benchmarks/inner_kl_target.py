"""What ``meta.inner_kl_target`` does to a trained run: its inner KL at the run's alpha, the alpha a target reaches,
and the first-order KL Hessian's CG direction there.

From a run directory's checkpoint (a copy: nothing is written there), with its stored transitions and ensemble:

1. the true inner KL (mean over tasks of KL(pi_theta || pi_theta'_m) on imagined pre-update rollouts) at the
   run's own alpha, and the alpha (3 significant digits) whose inner KL meets each ``--targets`` on that batch;
2. ``--meta-steps`` meta-steps (no model fit) with ``inner_kl_target = --follow`` from the run's alpha: alpha and
   the inner KL of every step, i.e. where the target takes alpha while theta keeps training;
3. at the alpha reached: the cosine of the CG direction with ``kl_hessian`` first_order (and exact on a 0.2
   subsample) against exact on all steps, and CPU seconds of each outer step.

    OMP_NUM_THREADS=1 python benchmarks/inner_kl_target.py RUN_DIR --follow 0.01
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mbmpo_core.checkpoint import read_checkpoint
from mbmpo_core.config import load_config
from mbmpo_core.meta import MetaOptimizer, RolloutBatch, inner_step
from mbmpo_core.meta_learner import MetaLearner
from mbmpo_core.registry import make_task
from mbmpo_core.store import TransitionStore


def inner_kl_at(meta: MetaOptimizer, pre: RolloutBatch, alpha: float) -> float:
    """True inner KL of ``pre`` (rollouts of the current theta) at step size ``alpha``."""
    return float(meta.inner_kl(inner_step(meta.policy, meta.policy.params(), pre, alpha), pre).mean())


def alpha_for(meta: MetaOptimizer, pre: RolloutBatch, target: float) -> float:
    low, high = 1e-6, 10.0
    for _ in range(40):  # bisection in log alpha: the KL grows with alpha
        mid = math.sqrt(low * high)
        low, high = (mid, high) if inner_kl_at(meta, pre, mid) < target else (low, mid)
    return float(f"{math.sqrt(low * high):.3g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.01, 0.02])
    ap.add_argument("--follow", type=float, default=0.01, help="inner_kl_target of the meta-steps")
    ap.add_argument("--meta-steps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.run_dir / "config.yaml")
    task = make_task(config.task, config.loop.horizon)
    data = TransitionStore(args.run_dir / "transitions", task.obs_dim, task.act_dim).load_all()
    learner = MetaLearner(replace(config, meta=replace(config.meta, inner_kl_target=args.follow)), task)
    state = read_checkpoint(args.run_dir)
    learner.load_state_dict(state)
    starts, obs = data["obs"][data["step"] == 0], data["obs"]
    meta = learner.meta
    print(f"{args.run_dir}: iteration {learner.iteration}, {len(obs)} transitions, alpha {meta.inner_lr:g}")

    pre = meta._with_pre_dist(learner._imagine_batch(learner._theta_per_task(), starts, obs))
    print(f"true inner KL at alpha {meta.inner_lr:g}: {inner_kl_at(meta, pre, meta.inner_lr):.3g}")
    for target in args.targets:
        alpha = alpha_for(meta, pre, target)
        print(f"target {target:g}: alpha {alpha:g} (inner KL {inner_kl_at(meta, pre, alpha):.3g})")

    for k in range(args.meta_steps):
        pre = learner._imagine_batch(learner._theta_per_task(), starts, obs)
        post = learner._imagine_batch(learner._adapt(pre), starts, obs)
        stats = meta.outer_step(pre, post)
        print(f"meta-step {k}: alpha {stats['inner_lr']:.4g} inner KL {stats['inner_kl']:.4g} "
              f"outer KL {stats['kl']:.4g} accepted {stats['accepted']:.0f} "
              f"imagined return pre {pre.rewards.sum(-1).mean():.1f} post {post.rewards.sum(-1).mean():.1f}")
    print(f"alpha after {args.meta_steps} meta-steps: {meta.inner_lr:.4g}")

    pre = learner._imagine_batch(learner._theta_per_task(), starts, obs)
    post = learner._imagine_batch(learner._adapt(pre), starts, obs)
    print(f"at alpha {meta.inner_lr:.4g}: inner KL {meta.inner_kl(learner._adapt(pre), pre).mean():.4g}")
    variants = {"exact": {"kl_hessian": "exact", "hvp_subsample": 1.0},
                "first_order": {"kl_hessian": "first_order", "hvp_subsample": 1.0},
                "exact_sub0.2": {"kl_hessian": "exact", "hvp_subsample": 0.2},
                "first_order_sub0.2": {"kl_hessian": "first_order", "hvp_subsample": 0.2}}
    reference = None
    for name, kwargs in variants.items():
        other = MetaOptimizer.from_config(learner.policy, replace(config.meta, inner_lr=meta.inner_lr,
                                                                  inner_kl_target=0.0, **kwargs))
        direction = other.natural_direction(pre, post)
        reference = direction if reference is None else reference
        cos = float(torch.nn.functional.cosine_similarity(direction, reference, dim=0))
        policy_state = {k: v.clone() for k, v in learner.policy.state_dict().items()}
        c0 = time.process_time()
        stats = other.outer_step(pre, post)
        cpu = time.process_time() - c0
        learner.policy.load_state_dict(policy_state)  # every variant steps from the same theta
        print(f"{name}: cos with exact {cos:.4f}, CPU {cpu:.2f} s, surrogate gain "
              f"{stats['surrogate_after'] - stats['surrogate_before']:.4g}, outer KL {stats['kl']:.4g}")
    print("returns in the run's progress.csv (last):", np.round(np.loadtxt(args.run_dir / "progress.csv",
          delimiter=",", skiprows=1, usecols=2)[-1], 1))


if __name__ == "__main__":
    main()
