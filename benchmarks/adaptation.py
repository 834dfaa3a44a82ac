"""Few-shot adaptation under perturbed physics: MB-MPO meta-policy vs its ME-TRPO counterpart.

For each policy variant, each perturbation and each seed: evaluate ``theta`` (deterministic mean action),
then ``--steps`` times collect ``--adapt-episodes`` stochastic episodes with the current parameters, compute
advantages and take ONE inner step, evaluating the parameters after every step. The inner step is the
on-robot controller's computation (:class:`mbmpo_ros.adaptation.AdaptJob`: padded episodes, the policy's
``gamma``/``gae_lambda``, linear baseline, normalized advantages, torch-free ONNX ``OnnxPolicy.adapt``), but
the MuJoCo env is stepped directly here, not through the ROS graph (no controller node, no timing, no
action smoothing/holds; raw sampled actions are recorded and the clipped ones sent to the env).

Variants:
* ``MB-MPO``: the meta-policy with its own adapt graph (inner lr baked in, 1e-3 for cpu_small).
* ``ME-TRPO``: the policy trained with ``meta.inner_lr: 0``, stepped with its own adapt graph (lr 0 baked in,
  so theta' == theta: a control that the pipeline itself adds nothing).
* ``MB-MPO random-dir`` (``--random-control``): MB-MPO's inner step with its direction replaced by a random
  one of the same per-tensor norm: the noise floor of "any parameter change of this size".
* ``ME-TRPO+lr``: the same ME-TRPO policy stepped with ``theta + --metrpo-lr * OnnxPolicy.gradient(...)``
  (default 1e-3, MB-MPO's inner lr): adaptation without meta-training, for a fair comparison.

Evaluation episodes reset with fixed seeds shared by every stage and variant (common random numbers), so
``return_1step - return_theta`` is not diluted by initial-state noise.

Command (from the repository root; about 1 min per variant for 10 seeds on one core):
    OMP_NUM_THREADS=1 python benchmarks/adaptation.py \\
        --mbmpo benchmarks/results/runs/HalfCheetah-v5-cpu_small-s0/policy.onnx \\
        --metrpo benchmarks/results/runs/HalfCheetah-v5-cpu_small_metrpo-s0/policy.onnx \\
        --seeds 0 1 2 3 4 5 6 7 8 9 --eval-episodes 5 --adapt-episodes 4 --steps 3 --random-control \\
        --out benchmarks/results/adaptation.csv --plot benchmarks/results/adaptation.png
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from mbmpo_core.onnx_runtime import OnnxPolicy
from mbmpo_ros.adaptation import AdaptJob
from mbmpo_ros.evaluate import run_episode
from sim import make_task

PERTURBATIONS: dict[str, dict] = {
    "nominal": {},
    "mass x0.5": {"mass_scale": 0.5},
    "mass x1.5": {"mass_scale": 1.5},
    "damping x2": {"damping_scale": 2.0},
    "actuator0 x0.3": {"weaken_actuator": {0: 0.3}},
}

Params = dict[str, np.ndarray]
StepFn = Callable[[Params, np.ndarray, np.ndarray, np.ndarray, np.ndarray], Params]


def evaluate(env, policy, params, seeds, low, high) -> float:
    return float(np.mean([run_episode(env, policy, params, s, low, high, None).ret for s in seeds]))


def step_fns(policy: OnnxPolicy, lr: float | None) -> StepFn:
    """Inner step: the file's adapt graph (lr None) or ``theta + lr * grad`` computed here."""
    if lr is None:
        return lambda p, o, a, adv, m: policy.adapt(p, o, a, adv, m)

    def manual(p, o, a, adv, m):
        base = policy.params if p is None else p
        grad = policy.gradient(p, o, a, adv, m)
        return {k: (base[k] + np.float32(lr) * grad[k]).astype(np.float32) for k in policy.param_names}

    return manual


def random_direction(policy: OnnxPolicy, inner: StepFn, seed: int) -> StepFn:
    """Control: take the inner step, then replace its direction by a random one of the same norm per tensor
    (tells a gradient-driven change from the return's sensitivity to ANY parameter change of that size)."""
    rng = np.random.default_rng([seed, 99])

    def control(p, o, a, adv, m):
        base = policy.params if p is None else p
        new = inner(p, o, a, adv, m)
        out = {}
        for k in policy.param_names:
            d = new[k] - base[k]
            r = rng.standard_normal(d.shape).astype(np.float32)
            out[k] = (base[k] + r * (np.linalg.norm(d) / max(np.linalg.norm(r), 1e-12))).astype(np.float32)
        return out

    return control


def run_case(policy: OnnxPolicy, step: StepFn, task, pert: dict, seed: int, args) -> dict[str, float]:
    env = task.make_env(seed, pert)
    low, high = task.action_low, task.action_high
    eval_seeds = [10_000 + 100 * seed + k for k in range(args.eval_episodes)]
    meta = policy.metadata
    gamma, lam = float(meta.get("gamma", 0.99)), float(meta.get("gae_lambda", 1.0))
    rng = np.random.default_rng([seed, 7])  # same exploration noise stream for every variant
    out = {"return_theta": evaluate(env, policy, None, eval_seeds, low, high)}
    params: Params | None = None
    collect_returns = []
    for k in range(1, args.steps + 1):
        batch = [run_episode(env, policy, params, 20_000 + 1000 * seed + 100 * k + e, low, high, rng)
                 for e in range(args.adapt_episodes)]
        collect_returns.append(np.mean([e.ret for e in batch]))
        obs, act, adv, mask = AdaptJob(policy, params, batch, gamma, lam, 0).advantages()
        params = step(params, obs, act, adv, mask)
        out[f"return_{k}step"] = evaluate(env, policy, params, eval_seeds, low, high)
    env.close()
    delta = np.sqrt(sum(float(np.sum((params[n] - policy.params[n]) ** 2)) for n in policy.param_names))
    norm = np.sqrt(sum(float(np.sum(policy.params[n] ** 2)) for n in policy.param_names))
    out["param_rel_change"] = delta / norm
    out["collect_return_theta"] = float(collect_returns[0])
    return out


def plot(rows: list[dict], steps: int, path: Path, title: str, ylabel: str = "deterministic return") -> None:
    """Bars of return_theta / 1 step / ``steps`` steps per perturbation, one panel per policy variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["policy"] for r in rows))
    perts = list(dict.fromkeys(r["perturbation"] for r in rows))
    cols = ["return_theta", "return_1step", f"return_{steps}step"]
    ncol = 2 if len(variants) > 2 else len(variants)
    nrow = -(-len(variants) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 4 * nrow), sharey=True, squeeze=False)
    x = np.arange(len(perts))
    w = 0.8 / len(cols)
    for ax, var in zip(axes.flat, variants, strict=False):  # axes may have one spare
        for j, col in enumerate(cols):
            vals = [[r[col] for r in rows if r["policy"] == var and r["perturbation"] == p] for p in perts]
            mean = np.array([np.mean(v) for v in vals])
            lo = mean - np.array([np.min(v) for v in vals])
            hi = np.array([np.max(v) for v in vals]) - mean
            ax.bar(x + (j - 1) * w, mean, w, yerr=[lo, hi], capsize=2, label=col.replace("return_", ""))
        ax.set_xticks(x, perts, rotation=30, ha="right")
        ax.set_title(var)
        ax.axhline(0, color="k", lw=0.5)
    for row in axes:
        row[0].set_ylabel(ylabel)
    for ax in list(axes.flat)[len(variants):]:
        ax.set_visible(False)
    axes[0][0].legend()
    fig.suptitle(f"{title}\nmean over seeds, error bars = min/max over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summary(rows: list[dict], steps: int) -> str:
    """Markdown table: means over seeds, the paired change (k-step - theta, mean +- s.e. over seeds) and
    the share of the return lost to the perturbation (nominal theta - perturbed theta) recovered by k steps."""
    last = f"return_{steps}step"
    lines = ["| policy | perturbation | theta | 1 step | " + f"{steps} steps | {steps}-step - theta (+-s.e.) "
             "| lost | recovered share |", "|---|---|---|---|---|---|---|---|"]
    for var in dict.fromkeys(r["policy"] for r in rows):
        nominal = np.mean([r["return_theta"] for r in rows if r["policy"] == var and r["perturbation"] == "nominal"])
        for pert in dict.fromkeys(r["perturbation"] for r in rows):
            sel = [r for r in rows if r["policy"] == var and r["perturbation"] == pert]
            th, one, k = (np.array([r[c] for r in sel]) for c in ("return_theta", "return_1step", last))
            diff = k - th
            se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            lost = nominal - th.mean()
            share = f"{diff.mean() / lost:+.2f}" if pert != "nominal" and lost > 0 else "-"
            lines.append(f"| {var} | {pert} | {th.mean():.1f} | {one.mean():.1f} | {k.mean():.1f} | "
                         f"{diff.mean():+.1f} +- {se:.1f} | {lost if pert != 'nominal' else 0:.1f} | {share} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mbmpo", type=Path, required=True, help="MB-MPO policy.onnx (adapt graph beside it)")
    ap.add_argument("--metrpo", type=Path, required=True, help="ME-TRPO (inner_lr 0) policy.onnx")
    ap.add_argument("--metrpo-lr", type=float, default=1e-3, help="lr for the manual ME-TRPO inner step")
    ap.add_argument("--task", default="HalfCheetah-v5")
    ap.add_argument("--horizon", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-episodes", type=int, default=3)
    ap.add_argument("--adapt-episodes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--random-control", action="store_true",
                    help="also run MB-MPO with each inner step replaced by a random direction of the same norm")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/adaptation.csv"))
    ap.add_argument("--plot", type=Path, default=Path("benchmarks/results/adaptation.png"))
    args = ap.parse_args()

    task = make_task(args.task, horizon=args.horizon)
    mbmpo, metrpo = OnnxPolicy(args.mbmpo), OnnxPolicy(args.metrpo)
    for name, pol in (("MB-MPO", mbmpo), ("ME-TRPO", metrpo)):
        print(f"{name}: {args.mbmpo if pol is mbmpo else args.metrpo} inner_lr={json.dumps(pol.metadata['inner_lr'])} "
              f"iteration={pol.metadata.get('learner_iteration')} can_adapt={pol.can_adapt}", flush=True)
    variants = [("MB-MPO", mbmpo, step_fns(mbmpo, None)), ("ME-TRPO", metrpo, step_fns(metrpo, None)),
                (f"ME-TRPO+lr{args.metrpo_lr:g}", metrpo, step_fns(metrpo, args.metrpo_lr))]
    if args.random_control:
        variants.append(("MB-MPO random-dir", mbmpo, random_direction(mbmpo, step_fns(mbmpo, None), 0)))
    rows = []
    for var, pol, step in variants:
        for pname, pert in PERTURBATIONS.items():
            for seed in args.seeds:
                t0 = time.perf_counter()
                res = run_case(pol, step, task, pert, seed, args)
                rows.append({"policy": var, "perturbation": pname, "seed": seed, **res})
                print(f"{var:>16} {pname:>15} s{seed}: " + " ".join(
                    f"{k}={v:.1f}" if "return" in k else f"{k}={v:.2e}" for k, v in res.items())
                      + f" ({time.perf_counter() - t0:.1f}s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["policy", "perturbation", "seed", "return_theta"] + [f"return_{k}step" for k in
                                                                   range(1, args.steps + 1)]
    fields += ["param_rel_change", "collect_return_theta"]
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    plot(rows, args.steps, args.plot, f"{args.task} (horizon {args.horizon}): return before / after inner steps "
         "under perturbed physics")
    print(summary(rows, args.steps))
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
