"""Few-shot adaptation through the model, against its controls (issue 11): train, evaluate, report.

Arms, each evaluated on the same perturbed env with the same reset seeds (paired):

* ``theta``: the MB-MPO meta-policy (``benchmarks/adapt_mbmpo_dr.yaml``: physics-diverse collection, members
  leaning on one physics draw each, inner step sized by an inner-KL target), no adaptation;
* ``metrpo``: the ME-TRPO policy trained the same way (``benchmarks/adapt_metrpo_dr.yaml``: no inner step);
* ``direct``: theta after the controller's direct step: one inner step on the 4 real episodes;
* ``model``: theta after the controller's model step on the same 4 episodes: identify the dynamics (ridge fit of
  every member's last layer), imagine rollouts from their start states in the best identified member, take the inner
  step with ``policy.adapt.onnx`` on them (``--model-steps`` times, each on fresh imagined rollouts).

The two adaptation arms run the controller's own job (:class:`mbmpo_ros.adaptation.AdaptJob`, torch-free, with
:class:`~mbmpo_ros.adaptation.ModelImagination` for the model step) on episodes stepped here directly (no ROS graph;
``benchmarks/adaptation_graph.py`` runs it through the nodes). For each evaluation seed s the 4 adaptation episodes
of theta and the evaluation episodes (3 stochastic, 3 deterministic) reset with seeds derived from s, the same for
every arm.

Commands (one thread per process; ``train`` runs two at a time, resumes unfinished runs, skips finished ones):

    python benchmarks/adaptation_model.py train --tasks HalfCheetah-v5 Hopper-v5 --seeds 0 1 2
    python benchmarks/adaptation_model.py eval --tasks HalfCheetah-v5 Hopper-v5 --seeds 0 1 2 --eval-seeds 10
    python benchmarks/adaptation_model.py report --tasks HalfCheetah-v5 Hopper-v5 \\
        --plot benchmarks/results/adaptation_model.png
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from mbmpo_core.bundle import PolicyBundle
from mbmpo_core.onnx_runtime import OnnxPolicy, validate_bundle
from mbmpo_core.registry import make_task
from mbmpo_ros.adaptation import AdaptJob, Episode, ModelImagination
from mbmpo_ros.evaluate import run_episode

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "results" / "runs" / "adapt"
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = {"mbmpo": ROOT / "benchmarks" / "adapt_mbmpo_dr.yaml", "metrpo": ROOT / "benchmarks" / "adapt_metrpo_dr.yaml"}
ARMS = ("theta", "metrpo", "direct", "model")
ADAPT_EPISODES = 4
# Covered by the training randomisation (mass 0.5-1.5, damping 0.5-2, actuator gears 0.3-1.2), then two it never saw.
PERTURBATIONS: dict[str, dict[str, Any]] = {
    "nominal": {},
    "mass x0.5": {"mass_scale": 0.5},
    "mass x1.5": {"mass_scale": 1.5},
    "damping x2": {"damping_scale": 2.0},
    "actuator 0 x0.3": {"weaken_actuator": {0: 0.3}},
    "friction x0.3 (unseen)": {"friction_scale": 0.3},
    "actuator 1 off (unseen)": {"disable_actuator": 1},
}
FIELDS = ("task", "train_seed", "perturbation", "eval_seed", "arm", "return_stoch", "return_det",
          "ident_error_before", "ident_error_after", "job_s", "commit")


def run_dir(task: str, algo: str, seed: int) -> Path:
    return RUNS / f"{task}-{algo}-s{seed}"


# ------------------------------------------------------------------------------------------ train
def finished(directory: Path, total_steps: int) -> bool:
    progress = directory / "progress.csv"
    if not progress.exists():
        return False
    with progress.open() as f:
        rows = list(csv.DictReader(f))
    return bool(rows) and float(rows[-1]["real_steps"]) >= total_steps


def train_command(task: str, algo: str, seed: int) -> list[str]:
    directory = run_dir(task, algo, seed)
    base = [sys.executable, "-m", "mbmpo_ros.cli", "train", "--no-progress", "--threads", "1"]
    if (directory / "checkpoints").exists():
        return [*base, "--resume", str(directory)]
    return [*base, "--config", str(CONFIGS[algo]), "--task", task, "--seed", str(seed), "--run-dir", str(directory)]


def train(tasks: list[str], seeds: list[int], jobs: int, total_steps: int) -> None:
    """Every unfinished run, ``jobs`` one-thread processes at a time; each logs to ``<run dir>.log``."""
    todo = [(t, a, s) for t in tasks for s in seeds for a in CONFIGS if not finished(run_dir(t, a, s), total_steps)]
    running: list[tuple[subprocess.Popen[bytes], str]] = []
    RUNS.mkdir(parents=True, exist_ok=True)
    while todo or running:
        while todo and len(running) < jobs:
            task, algo, seed = todo.pop(0)
            log = run_dir(task, algo, seed).with_suffix(".log").open("ab")
            proc = subprocess.Popen(train_command(task, algo, seed), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
            running.append((proc, f"{task} {algo} s{seed}"))
            print(f"started {task} {algo} seed {seed}", flush=True)
        time.sleep(5)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                print(f"{name}: exit {proc.returncode}", flush=True)


# ------------------------------------------------------------------------------------------ evaluate
def load_policy(task: str, algo: str, seed: int) -> OnnxPolicy:
    return validate_bundle(PolicyBundle.from_dir(run_dir(task, algo, seed)), expected_task=task)


def mean_return(env: Any, policy: OnnxPolicy, params: Any, seed: int, episodes: int, low: np.ndarray,
                high: np.ndarray, stochastic: bool) -> float:
    """Mean return of ``episodes`` episodes reset with seeds from ``seed`` (and action noise from it if stochastic)."""
    rets = [run_episode(env, policy, params, 1_000_000 + 100 * seed + j, low, high,
                        np.random.default_rng([2_000_000, seed, j]) if stochastic else None).ret
            for j in range(episodes)]
    return float(np.mean(rets))


def adapt(policy: OnnxPolicy, episodes: list[Episode], imagination: ModelImagination | None, steps: int,
          seed: int) -> tuple[Any, float, float, float]:
    """``steps`` inner steps (direct: one on the real episodes); returns params, ident errors, seconds."""
    meta = policy.metadata
    params, before, after, seconds = None, float("nan"), float("nan"), 0.0
    for step in range(1, steps + 1):
        job = AdaptJob(policy, params, episodes, float(meta["gamma"]), float(meta["gae_lambda"]), 0,
                       imagination=imagination, step=step, seed=seed)
        result = job.run()
        params, seconds = result.params, seconds + result.job_s
        if step == 1:
            before, after = result.ident_errors
    return params, before, after, seconds


def evaluate_case(task_name: str, seed: int, perturbation: str, eval_seeds: int, model_steps: int,
                  rollouts: int, commit: str, eval_episodes: int = 3) -> Iterator[dict[str, Any]]:
    """Rows of every arm for evaluation seeds 0..eval_seeds-1 of one training seed and perturbation; each return is
    the mean of ``eval_episodes`` evaluation episodes."""
    task = make_task(task_name, horizon=200)
    policy, control = load_policy(task_name, "mbmpo", seed), load_policy(task_name, "metrpo", seed)
    low, high = task.action_low, task.action_high
    env = task.make_env(seed=0, perturbation=PERTURBATIONS[perturbation])
    imagination = ModelImagination(policy.dynamics, task.reward, task.done, low, high, rollouts,
                                   int(policy.metadata["horizon"]), 0.03)
    try:
        for s in range(eval_seeds):
            noise = np.random.default_rng([seed, s])
            episodes = [run_episode(env, policy, None, 10_000 * s + j, low, high, noise) for j in range(ADAPT_EPISODES)]
            direct = adapt(policy, episodes, None, 1, s)
            model = adapt(policy, episodes, imagination, model_steps, s)
            arms = {"theta": (policy, None, (None, float("nan"), float("nan"), 0.0)),
                    "metrpo": (control, None, (None, float("nan"), float("nan"), 0.0)),
                    "direct": (policy, direct[0], direct), "model": (policy, model[0], model)}
            for arm, (pol, params, (_, before, after, seconds)) in arms.items():
                yield {"task": task_name, "train_seed": seed, "perturbation": perturbation, "eval_seed": s, "arm": arm,
                       "return_stoch": mean_return(env, pol, params, s, eval_episodes, low, high, stochastic=True),
                       "return_det": mean_return(env, pol, params, s, eval_episodes, low, high, stochastic=False),
                       "ident_error_before": before, "ident_error_after": after, "job_s": seconds, "commit": commit}
    finally:
        env.close()


def results_path(task: str) -> Path:
    return RESULTS / f"adaptation_model_{task}.csv"


def evaluate(tasks: list[str], seeds: list[int], eval_seeds: int, model_steps: int, rollouts: int) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    for task in tasks:
        path = results_path(task)
        done = {(r["train_seed"], r["perturbation"]) for r in read_rows(path)}
        for seed in seeds:
            for perturbation in PERTURBATIONS:
                if (str(seed), perturbation) in done:
                    continue
                t = time.perf_counter()
                rows = list(evaluate_case(task, seed, perturbation, eval_seeds, model_steps, rollouts, commit.strip()))
                append_rows(path, rows)
                print(f"{task} s{seed} {perturbation}: {summary_line(rows)} ({time.perf_counter() - t:.0f} s)",
                      flush=True)


def summary_line(rows: list[dict[str, Any]]) -> str:
    by_arm = defaultdict(list)
    for r in rows:
        by_arm[r["arm"]].append(float(r["return_stoch"]))
    return ", ".join(f"{arm} {np.mean(v):.1f}" for arm, v in by_arm.items())


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------------------------------ report
def seed_means(rows: list[dict[str, str]], column: str) -> dict[tuple[str, str, int], float]:
    """(perturbation, arm, training seed) -> mean over evaluation seeds."""
    cells: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        cells[(r["perturbation"], r["arm"], int(r["train_seed"]))].append(float(r[column]))
    return {k: float(np.mean(v)) for k, v in cells.items()}


def report(tasks: list[str], column: str) -> str:
    """Markdown: per task and perturbation, each arm's return (mean over training seeds +- s.e. over them), its
    difference from theta, and the share of theta's loss to the perturbation it recovers, per training seed."""
    lines = []
    for task in tasks:
        rows = read_rows(results_path(task))
        if not rows:
            continue
        means = seed_means(rows, column)
        seeds = sorted({s for (_, _, s) in means})
        lines += [f"\n**{task}** ({column}, {len(seeds)} training seeds x "
                  f"{len({r['eval_seed'] for r in rows})} paired evaluation seeds)\n",
                  "| perturbation | theta | metrpo - theta | direct - theta | model - theta | model recovers "
                  "(per training seed) |", "|---|---|---|---|---|---|"]
        for pert in PERTURBATIONS:
            if (pert, "theta", seeds[0]) not in means:
                continue
            theta = np.array([means[(pert, "theta", s)] for s in seeds])
            cells = [f"{theta.mean():.1f} ± {sem(theta):.1f}"]
            for arm in ("metrpo", "direct", "model"):
                diff = np.array([means[(pert, arm, s)] for s in seeds]) - theta
                cells.append(f"{diff.mean():+.1f} ± {sem(diff):.1f}")
            cells.append(recovery(means, pert, seeds) if pert != "nominal" else "—")
            lines.append(f"| {pert} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


MIN_LOSS = 10.0  # return units: below this a perturbation cost theta nothing worth recovering (the share is noise)


def recovery(means: dict[tuple[str, str, int], float], pert: str, seeds: list[int]) -> str:
    """Per training seed: (model - theta) / (theta nominal - theta perturbed), or the loss itself where it is below
    ``MIN_LOSS`` (the perturbation cost nothing: the share is undefined)."""
    parts = []
    for s in seeds:
        lost = means[("nominal", "theta", s)] - means[(pert, "theta", s)]
        gain = means[(pert, "model", s)] - means[(pert, "theta", s)]
        parts.append(f"{gain / lost:.0%}" if lost >= MIN_LOSS else f"lost {lost:.0f}")
    return ", ".join(parts)


def plot(tasks: list[str], column: str, path: Path) -> None:
    """One panel per task: each arm's return minus theta's per perturbation, mean ± s.e. over training seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tasks), 1, figsize=(11, 3.6 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        means = seed_means(read_rows(results_path(task)), column)
        seeds = sorted({s for (_, _, s) in means})
        perts = [p for p in PERTURBATIONS if (p, "theta", seeds[0]) in means] if seeds else []
        x = np.arange(len(perts))
        for i, arm in enumerate(("metrpo", "direct", "model")):
            diffs = np.array([[means[(p, arm, s)] - means[(p, "theta", s)] for s in seeds] for p in perts])
            ax.bar(x + (i - 1) * 0.27, diffs.mean(1), 0.27, yerr=[sem(d) for d in diffs], capsize=3,
                   label=f"{arm} - theta")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, perts, fontsize=8)
        ax.set_ylabel(f"{column} difference")
        ax.set_title(f"{task}: {len(seeds)} training seeds, paired evaluation seeds")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def sem(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "eval", "report"):
        p = sub.add_parser(name)
        p.add_argument("--tasks", nargs="+", default=["HalfCheetah-v5", "Hopper-v5"])
        p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    sub.choices["train"].add_argument("--jobs", type=int, default=2)
    sub.choices["train"].add_argument("--total-steps", type=int, default=20_000)
    sub.choices["eval"].add_argument("--eval-seeds", type=int, default=10)
    sub.choices["eval"].add_argument("--model-steps", type=int, default=1)
    sub.choices["eval"].add_argument("--rollouts", type=int, default=20)
    sub.choices["report"].add_argument("--column", choices=("return_stoch", "return_det"), default="return_stoch")
    sub.choices["report"].add_argument("--plot", type=Path, help="also draw the differences as a PNG")
    args = parser.parse_args()
    if args.command == "train":
        train(args.tasks, args.seeds, args.jobs, args.total_steps)
    elif args.command == "eval":
        evaluate(args.tasks, args.seeds, args.eval_seeds, args.model_steps, args.rollouts)
    else:
        print(report(args.tasks, args.column))
        if args.plot:
            plot(args.tasks, args.column, args.plot)


if __name__ == "__main__":
    main()
