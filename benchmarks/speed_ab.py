"""Paired A/B timing of MB-MPO training iterations: a base commit against HEAD, one torch thread.

    python benchmarks/speed_ab.py                                  # 4d8ae97 vs HEAD, both cases, 2 pairs
    python benchmarks/speed_ab.py --cases cpu_small --pairs 3
    python benchmarks/speed_ab.py --base <commit> --head <commit> --device cuda

Both commits are checked out into ``git worktree``s (``--workdir``, default /tmp/mbmpo_speed_ab), and every
measurement is a fresh child process of this interpreter with that worktree first on ``sys.path``: the two sides
share the Python environment and differ only in the repository's code, each with its own copy of the config file
(its own defaults). The runs alternate A B A B ...: on a machine shared with other jobs the load drifts slowly
compared with one pair, so each pair's ratio A/B is its own measurement; the table gives the median over pairs.

Cases (HalfCheetah-v5, horizon 200):

* ``cpu_small``: ``benchmarks/cpu_small.yaml`` from scratch, iterations 0 (the random warm-up's) and 1 (the first
  collected by the adapted policies); seconds per iteration and per phase of each.
* ``default_100k``: ``config/default.yaml`` (the paper's) with a 100k-transition buffer: the run directory's store
  is preloaded with 100k random-action transitions, the ensemble starts from weights fitted on them until the
  patience rule stopped (as a run's ensemble is once it holds 100k steps), and one
  iteration is timed as a later iteration of a run would be (iteration index 1: the policy collects
  ``steps_per_iter`` steps, the ensemble is fitted warm on the newest 100k, meta-training, evaluation). The data and
  the pre-fitted weights are made once, by the HEAD worktree's code, and shared by both sides
  (``--workdir``/cache). On a slow machine ``--meta-steps K`` runs K of the 30 meta-steps on both sides and
  ``--base-epochs E`` caps side A's fit at E of its 50 epochs (the commit before this round fits every model for
  all 50: its rolling-average stop never fired); the table then adds the full-iteration estimate, the
  meta-training phases scaled by 30 / K and a capped fit by 50 / E (side B's fit, stopped by patience, is timed
  whole). Per meta-step costs are steady within an iteration, so the estimate is close; the CSV keeps both.

Rows go to ``benchmarks/results/speed_ab.csv`` (one per side, pair and iteration) with the commit, machine,
threads and load average at the start of the run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CSV_PATH = HERE / "results" / "speed_ab.csv"
PHASES = ("sample", "fit", "imagine", "inner", "outer", "eval", "total")
CASES = ("cpu_small", "default_100k")
BUFFER = 100_000
PREFIT_MAX_EPOCHS = 300  # the pre-fit stops by patience long before
PREFIT_FILE = "ensemble_converged.pt"
CSV_FIELDS = ["timestamp", "case", "side", "commit", "pair", "iteration", "machine", "load_avg", "threads", "device",
              "wall_s", "cpu_s", "estimate_s", *(f"time_{p}" for p in PHASES), "meta_steps_run", "full_meta_steps",
              "max_epochs_run", "full_max_epochs", "return_pre", "return_post", "model_valid_loss", "model_epochs",
              "outer_kl"]


# ----------------------------------------------------------------------------------------- child (one worktree)
def child(args: argparse.Namespace) -> None:
    """Runs inside one worktree (sys.path[0]); prints one JSON line per timed iteration."""
    import torch

    torch.set_num_threads(args.threads)
    if args.child == "prepare":
        prepare(Path(args.cache), Path(args.src), args.device)
        return
    from mbmpo_core.config import load_config
    from sim import make_task

    config_file = "benchmarks/cpu_small.yaml" if args.child == "cpu_small" else "config/default.yaml"
    config = load_config(Path(args.src) / config_file, task="HalfCheetah-v5", device=args.device)
    full = {"full_meta_steps": config.meta.meta_steps, "full_max_epochs": config.ensemble.max_epochs}
    config = _scaled(config, getattr(args, "meta_steps", 0), getattr(args, "max_epochs", 0))
    run = {"meta_steps_run": config.meta.meta_steps, "max_epochs_run": config.ensemble.max_epochs}
    task = make_task(config.task, horizon=config.loop.horizon)
    loop = _training_loop(config, task, Path(args.run_dir))
    if args.child == "cpu_small":
        timed = [0, 1]
    else:
        _preload(loop, Path(args.cache), torch.device(args.device))
        timed = [1]
    for iteration in timed:
        t0, c0 = time.perf_counter(), time.process_time()
        row = loop.iteration()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print("ROW " + json.dumps({**row, **full, **run, "iteration": iteration, "wall_s": wall, "cpu_s": cpu}),
              flush=True)


def _scaled(config: Any, meta_steps: int, max_epochs: int) -> Any:
    """``config`` with fewer meta-steps / a lower epoch cap (0: as it is), for the estimate of a full iteration."""
    import dataclasses

    if meta_steps:
        config = dataclasses.replace(config, meta=dataclasses.replace(config.meta, meta_steps=meta_steps))
    if max_epochs:
        config = dataclasses.replace(config, ensemble=dataclasses.replace(config.ensemble, max_epochs=max_epochs))
    return config


def full_iteration_estimate(row: dict[str, Any]) -> float:
    """Seconds of the unscaled iteration: meta-training phases times full / run meta-steps; the fit times
    full / run epoch cap where the fit ran to its cap (a fit stopped by patience is what it is)."""
    meta = row["full_meta_steps"] / max(row["meta_steps_run"], 1)
    capped = row["model_epochs"] >= row["max_epochs_run"] and row["max_epochs_run"] < row["full_max_epochs"]
    fit = row["full_max_epochs"] / row["max_epochs_run"] if capped else 1.0
    return float(row["time_sample"] + row["time_eval"] + row["time_fit"] * fit
                 + (row["time_imagine"] + row["time_inner"] + row["time_outer"]) * meta)


def _training_loop(config: Any, task: Any, run_dir: Path) -> Any:
    """HEAD's SimTrainingLoop, or the Trainer of commits before the MetaLearner split."""
    try:
        from mbmpo_core.sim_loop import SimTrainingLoop

        return SimTrainingLoop(config, task, run_dir, log=lambda _: None)
    except ImportError:
        from mbmpo_core.trainer import Trainer  # type: ignore[import-not-found]

        return Trainer(config, task, run_dir, log=lambda _: None)


def _preload(loop: Any, cache: Path, device: Any) -> None:
    """Make ``loop`` a run at iteration 1 with the 100k-transition buffer and the pre-fitted ensemble."""
    import numpy as np
    import torch

    data = dict(np.load(cache / "random_100k.npz"))
    for lo in range(0, len(data["obs"]), 10_000):  # chunks as a run writes them
        loop.store.append({k: v[lo:lo + 10_000] for k, v in data.items()})
    loop.real_steps = len(loop.store)
    learner = getattr(loop, "learner", loop)  # MetaLearner (HEAD) or the Trainer itself (base)
    state = torch.load(cache / PREFIT_FILE, map_location=device, weights_only=True)
    result = learner.ensemble.load_state_dict(state, strict=False)
    odd = [k for k in (*result.missing_keys, *result.unexpected_keys) if k != "_extra_state"]
    if odd:
        raise SystemExit(f"the pre-fitted ensemble does not fit this commit's ensemble: {odd}")
    obs = torch.as_tensor(data["obs"])
    learner.policy.set_obs_normalizer(obs.mean(0), obs.std(0), ignore=loop.task.position_obs)
    if hasattr(learner, "iteration_index"):
        learner.iteration_index = 1
    else:
        learner.iteration = 1
    theta = {k: v.detach() for k, v in learner.policy.params().items()}
    collectors = len(loop.sampler.envs)  # one adapted policy per collecting env
    loop.collect_params = {k: v.unsqueeze(0).expand(collectors, *v.shape).clone() for k, v in theta.items()}


def prepare(cache: Path, src: Path, device: str) -> None:
    """100k random-action HalfCheetah transitions and an ensemble (``src``'s config/default.yaml) fitted on them."""
    import numpy as np
    import torch

    from mbmpo_core.config import load_config
    from mbmpo_core.ensemble import DynamicsEnsemble
    from mbmpo_core.sampler import RealSampler, uniform_random_actions
    from sim import make_task

    cache.mkdir(parents=True, exist_ok=True)
    task = make_task("HalfCheetah-v5", horizon=200)
    if not (cache / "random_100k.npz").exists():
        sampler = RealSampler([task.make_env(seed=1000 + i) for i in range(20)], 200, task.action_low,
                              task.action_high, seed=1000)
        batch = sampler.sample(uniform_random_actions(task.action_low, task.action_high, np.random.default_rng(0)),
                               BUFFER)
        np.savez(cache / "random_100k.npz", **batch.transitions())
        print(f"prepare: {BUFFER} random transitions -> {cache / 'random_100k.npz'}", flush=True)
    if (cache / PREFIT_FILE).exists():
        return
    data = np.load(cache / "random_100k.npz")
    e = load_config(src / "config" / "default.yaml").ensemble
    ensemble = DynamicsEnsemble.from_config(task.obs_dim, task.act_dim, e, device=torch.device(device), seed=0,
                                            ignored_obs=task.position_obs)
    partial = cache / "ensemble_prefit.pt"  # a shorter pre-fit of an earlier version of this script: go on from it
    if partial.exists():
        ensemble.load_state_dict(torch.load(partial, map_location=torch.device(device), weights_only=True))
    t0 = time.perf_counter()
    # Until the patience rule stops every model: as fitted as the ensemble of a run that has reached 100k steps.
    report = ensemble.fit(data["obs"], data["act"], data["next_obs"], epochs=PREFIT_MAX_EPOCHS)
    torch.save(ensemble.state_dict(), cache / PREFIT_FILE)
    print(f"prepare: ensemble fitted {report.epochs.tolist()} epochs in {time.perf_counter() - t0:.0f} s, valid mse "
          f"{np.round(report.valid_mse, 4).tolist()}", flush=True)


# ----------------------------------------------------------------------------------------------- parent
def worktree(commit: str, workdir: Path) -> tuple[Path, str]:
    """A worktree of ``commit`` (reused if it is there already); returns its path and the full commit id."""
    sha = _git("rev-parse", f"{commit}^{{commit}}")
    path = workdir / sha[:12]
    if not (path / ".git").exists():
        workdir.mkdir(parents=True, exist_ok=True)
        _git("worktree", "add", "--detach", str(path), sha)
    return path, sha


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def run_side(src: Path, case: str, args: argparse.Namespace, run_root: Path, max_epochs: int = 0
             ) -> list[dict[str, Any]]:
    """One child process in worktree ``src`` (``max_epochs``: its epoch cap in default_100k, 0 = the config's);
    returns its timed rows."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{case}-", dir=run_root))
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS":
           str(args.threads)}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--src", str(src), "--run-dir",
               str(run_dir), "--cache", str(args.workdir / "cache"), "--threads", str(args.threads), "--device",
               args.device]
    if case == "default_100k":
        command += ["--meta-steps", str(args.meta_steps), "--max-epochs", str(max_epochs)]
    out = subprocess.run(command, env=env, cwd=src, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{case} in {src} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return [json.loads(line[4:]) for line in out.stdout.splitlines() if line.startswith("ROW ")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="4d8ae97", help="side A (default: the commit before this round)")
    parser.add_argument("--head", default="HEAD", help="side B")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--pairs", type=int, default=2, help="A B pairs per case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mbmpo_speed_ab",
                        help="worktrees, the shared 100k data and pre-fitted weights, run directories")
    parser.add_argument("--meta-steps", type=int, default=0,
                        help="default_100k: run this many meta-steps (both sides) and scale the meta-training "
                             "phases to the config's count (0: all of them)")
    parser.add_argument("--base-epochs", type=int, default=0,
                        help="default_100k: side A's ensemble epoch cap (its fit always runs to the cap), scaled to "
                             "the config's cap (0: the config's)")
    parser.add_argument("--max-epochs", type=int, default=0, help=argparse.SUPPRESS)  # child: this side's cap
    parser.add_argument("--child", choices=(*CASES, "prepare"), help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    args.workdir = args.workdir.resolve()
    sides = {"A": worktree(args.base, args.workdir), "B": worktree(args.head, args.workdir)}
    run_root = args.workdir / "runs"
    run_root.mkdir(parents=True, exist_ok=True)
    if "default_100k" in args.cases:
        t0 = time.perf_counter()
        run_side(sides["B"][0], "prepare", args, run_root)
        print(f"prepared the 100k buffer and pre-fitted ensemble ({time.perf_counter() - t0:.0f} s)", flush=True)
    results: list[dict[str, Any]] = []
    for case in args.cases:
        for pair in range(args.pairs):
            for side, (src, sha) in sides.items():
                load = os.getloadavg()[0]
                cap = args.base_epochs if side == "A" else 0
                for row in run_side(src, case, args, run_root, max_epochs=cap):
                    result = {**row, "case": case, "side": side, "commit": sha[:12], "pair": pair, "load_avg": load,
                              "estimate_s": full_iteration_estimate(row)}
                    results.append(result)
                    write_row(result, args)
                    print(f"{case} pair {pair} {side} {sha[:9]} iteration {row['iteration']}: "
                          f"{row['wall_s']:.1f} s (" + ", ".join(f"{p} {row.get(f'time_{p}', 0.0):.1f}"
                                                                 for p in PHASES[:-1])
                          + f"; {row['model_epochs']:.0f} epochs, {row['meta_steps_run']} meta-steps; full-iteration "
                          f"estimate {result['estimate_s']:.1f} s; CPU {row['cpu_s']:.1f} s), load {load:.1f}",
                          flush=True)
    print_table(results, sides)


def write_row(result: dict[str, Any], args: argparse.Namespace) -> None:
    full = {"timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores", "threads": args.threads,
            "device": args.device, **result}
    CSV_PATH.parent.mkdir(parents=True, exist_ok=True)
    new = not CSV_PATH.exists()
    with CSV_PATH.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in full.items()})


def print_table(results: list[dict[str, Any]], sides: dict[str, tuple[Path, str]]) -> None:
    """Median seconds per iteration and phase of each side, the full-iteration estimate (= the wall time where
    nothing was scaled), and the median over pairs of the estimates' ratio A / B."""
    print(f"\nA = {sides['A'][1][:12]}, B = {sides['B'][1][:12]}; median over pairs (seconds)")
    print(f"{'case':14s} {'iter':>4s} {'side':>4s} {'wall':>8s} " + " ".join(f"{p:>8s}" for p in PHASES[:-1])
          + f" {'full est':>9s} {'CPU':>8s}")
    keys = sorted({(r["case"], r["iteration"]) for r in results})
    for case, iteration in keys:
        rows = [r for r in results if r["case"] == case and r["iteration"] == iteration]
        for side in ("A", "B"):
            mine = [r for r in rows if r["side"] == side]
            med = {k: statistics.median(r.get(k, 0.0) for r in mine)
                   for k in ("wall_s", "cpu_s", "estimate_s", *(f"time_{p}" for p in PHASES[:-1]))}
            print(f"{case:14s} {iteration:4d} {side:>4s} {med['wall_s']:8.1f} "
                  + " ".join(f"{med[f'time_{p}']:8.1f}" for p in PHASES[:-1])
                  + f" {med['estimate_s']:9.1f} {med['cpu_s']:8.1f}")
        ratios = [a["estimate_s"] / b["estimate_s"] for a in rows if a["side"] == "A" for b in rows
                  if b["side"] == "B" and b["pair"] == a["pair"]]
        print(f"{case:14s} {iteration:4d}  A/B {statistics.median(ratios):7.2f}x  (pairs: "
              + ", ".join(f"{x:.2f}" for x in ratios) + ")")


if __name__ == "__main__":
    main()
