"""Real return of MB-MPO against real steps, per seed: runs (or resumes) `mbmpo train` runs and plots them.

    python benchmarks/returns.py --config config/default.yaml --task HalfCheetah-v5 --seeds 0 1 2 --steps 100000

Each seed's run lives in benchmarks/results/runs/<task>-<config>-s<seed>/ and resumes from its checkpoint, so
a study can span several sessions; finished seeds are not redone. The per-seed progress is copied to
benchmarks/results/returns/<task>-<config>-s<seed>.csv and the curves to <task>-<config>.png.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np

from mbmpo_core.checkpoint import checkpoint_path
from mbmpo_core.config import load_config
from mbmpo_core.sim_loop import SimTrainingLoop
from sim import make_task

RESULTS = Path(__file__).parent / "results"


def run_seed(config_path: Path, task_name: str, seed: int, steps: int, device: str) -> Path:
    config = load_config(config_path, task=task_name, seed=seed, device=device)
    name = f"{task_name}-{config_path.stem}-s{seed}"
    run_dir = RESULTS / "runs" / name
    loop = SimTrainingLoop(config, make_task(task_name, horizon=config.loop.horizon), run_dir)
    if checkpoint_path(run_dir).is_file():
        loop.load_checkpoint(run_dir)
    loop.train(steps, on_iteration=lambda r: print(
        f"{name}: {int(r['real_steps'])} steps, return pre {r['return_pre']:.1f} post {r['return_post']:.1f}, "
        f"{r['time_total']:.0f} s", flush=True))
    loop.close()
    out = RESULTS / "returns" / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "progress.csv", out)
    return out


def plot(csvs: list[Path], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for path in csvs:
        with path.open() as f:
            rows = list(csv.DictReader(f))
        steps = np.array([float(r["real_steps"]) for r in rows])
        ax.plot(steps, [float(r["return_pre"]) for r in rows], marker="o", label=f"{path.stem} pre")
        ax.plot(steps, [float(r["return_post"]) for r in rows], ls="--", label=f"{path.stem} post")
    ax.set_xlabel("real environment steps")
    ax.set_ylabel("average return (real env)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config/default.yaml"))
    parser.add_argument("--task", default="HalfCheetah-v5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    csvs = [run_seed(args.config, args.task, seed, args.steps, args.device) for seed in args.seeds]
    out = RESULTS / "returns" / f"{args.task}-{args.config.stem}.png"
    plot(csvs, f"MB-MPO {args.task} ({args.config.stem})", out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
