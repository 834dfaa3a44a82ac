"""The comparison study: MB-MPO against model-based and model-free methods at equal real-step budgets.

    python benchmarks/compare.py run --arm sac --task HalfCheetah-v5 --seeds 0 1 2   # runs or resumes
    python benchmarks/compare.py run --all --jobs 2                                    # everything not finished
    python benchmarks/compare.py report                                                # plots + Markdown table
    python benchmarks/compare.py list                                                  # arms, budgets, status

Arms (:data:`ARMS`): MB-MPO and ME-TRPO (benchmarks/model_based.py, the project's SimTrainingLoop with
benchmarks/cpu_small.yaml and cpu_small_metrpo.yaml), MB-MPC (benchmarks/mpc.py, random shooting on the same
ensemble), to 100k real steps; SAC to 300k, PPO and TRPO to 1M (benchmarks/model_free.py, stable-baselines3 and
sb3-contrib with rl-zoo's hyperparameters; `pip install -e .[bench]`). Tasks HalfCheetah-v5 and Hopper-v5 at
horizon 200. MBPO / PETS from mbrl-lib are not an arm: mbrl 0.2.0 pins gymnasium==0.26.3 and hydra-core==1.0.3,
which does not import on Python 3.11 (every mbrl module imports hydra).

Every arm is evaluated by the protocol of benchmarks/eval_protocol.py (fixed real-step marks, 10 paired evaluation
episodes, stochastic and deterministic). A run writes benchmarks/results/compare/<task>/<arm>-s<seed>.csv (one row
per mark) and checkpoints as it goes under <task>/checkpoints/ (ignored by git: after every mark, model-based arms
after every iteration); rerunning the same command resumes it, and a run whose CSV reaches its budget is never
redone. Each run is a one-thread process, so `--jobs 2` keeps two going on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# One thread per run (numpy's BLAS reads these at import; torch is set in the runners too).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from eval_protocol import RunSpec, evaluation_marks, read_curve

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "compare"
TASKS: tuple[str, ...] = ("HalfCheetah-v5", "Hopper-v5")
HORIZON = 200  # the MB-MPO paper track
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
TABLE_MARKS: tuple[int, ...] = (25_000, 50_000, 100_000)
REFERENCE_ARM = "mbmpo"  # the sample-efficiency ratio is measured against this arm's return at 100k steps
REFERENCE_STEPS = 100_000
BOOTSTRAP_SAMPLES = 10_000


Runner = Callable[[RunSpec], None]


@dataclass(frozen=True)
class Arm:
    """One method of the study. ``runner`` is None while the arm is registered but not implemented (see ``missing``).

    ``steps_per_s`` is a one-thread estimate (from the smoke runs) that only orders `run --all`, longest first.
    """

    name: str
    label: str
    family: str  # "model-based" | "model-free"
    budget: int
    steps_per_s: float
    runner: Runner | None
    missing: str = ""


BENCHMARKS = REPO / "benchmarks"
MB_CONFIG = BENCHMARKS / "cpu_small.yaml"  # the project's CPU configuration of MB-MPO (model-based arms share it)
METRPO_CONFIG = BENCHMARKS / "cpu_small_metrpo.yaml"  # the same with meta.inner_lr 0


# The runners import their libraries (stable-baselines3, the trainer) only in the process that runs them.
def _model_free(spec: RunSpec) -> None:
    from model_free import run_model_free

    run_model_free(spec)


def _mbmpo(spec: RunSpec) -> None:
    from model_based import run_meta_rl

    run_meta_rl(spec, MB_CONFIG)


def _metrpo(spec: RunSpec) -> None:
    from model_based import run_meta_rl

    run_meta_rl(spec, METRPO_CONFIG)


def _mbmpc(spec: RunSpec) -> None:
    from mpc import run_mpc

    run_mpc(spec, MB_CONFIG)


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("mbmpo", "MB-MPO (cpu_small)", "model-based", 100_000, 20.0, _mbmpo),
    Arm("metrpo", "ME-TRPO (cpu_small, inner_lr 0)", "model-based", 100_000, 25.0, _metrpo),
    Arm("mbmpc", "MB-MPC (random shooting 1000 x 20)", "model-based", 100_000, 10.0, _mbmpc),
    Arm("sac", "SAC (SB3, rl-zoo)", "model-free", 300_000, 60.0, _model_free),
    Arm("ppo", "PPO (SB3, rl-zoo)", "model-free", 1_000_000, 400.0, _model_free),
    Arm("trpo", "TRPO (sb3-contrib, rl-zoo)", "model-free", 1_000_000, 800.0, _model_free),
)}


def run_spec(arm: Arm, task: str, seed: int, out: Path, steps: int | None, mark_every: int | None) -> RunSpec:
    budget = steps or arm.budget
    return RunSpec(arm=arm.name, task=task, seed=seed, budget=budget, marks=evaluation_marks(budget, mark_every),
                   horizon=HORIZON, curve_path=out / task / f"{arm.name}-s{seed}.csv",
                   checkpoint_dir=out / task / "checkpoints" / f"{arm.name}-s{seed}")


def steps_done(spec: RunSpec) -> int:
    """Real steps of the last evaluated mark in the run's CSV (-1 when it has none)."""
    if not spec.curve_path.is_file():
        return -1
    rows = read_curve(spec.curve_path)
    return int(rows[-1]["real_steps"]) if rows else -1


def is_finished(spec: RunSpec) -> bool:
    return steps_done(spec) >= spec.budget


def resume_command(arm: str, task: str, seeds: list[int], out: Path = RESULTS) -> str:
    command = f"python benchmarks/compare.py run --arm {arm} --task {task} --seeds {' '.join(map(str, seeds))}"
    return command if out.resolve() == RESULTS.resolve() else f"{command} --out {out}"


# ----------------------------------------------------------------------------------------------------- run


def run_in_process(arm: Arm, specs: list[RunSpec]) -> int:
    """Run (or resume) the given seeds one after the other in this process; finished ones are skipped."""
    if arm.runner is None:
        print(f"{arm.name}: {arm.missing}", file=sys.stderr)
        return 2
    for spec in specs:
        if is_finished(spec):
            print(f"{spec.name}: finished ({spec.budget} steps in {spec.curve_path}), skipped", flush=True)
            continue
        arm.runner(spec)
    return 0


def _child_command(spec: RunSpec, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "run", "--arm", spec.arm, "--task", spec.task,
               "--seeds", str(spec.seed), "--out", str(args.out)]
    if args.steps:
        command += ["--steps", str(args.steps)]
    if args.mark_every:
        command += ["--mark-every", str(args.mark_every)]
    return command


def _pump(process: subprocess.Popen[str], log_path: Path) -> None:
    """Copy a child's output to our stdout and to its log file, line by line."""
    assert process.stdout is not None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            log.flush()


def _pending_runs(args: argparse.Namespace) -> list[tuple[float, RunSpec]]:
    """(estimated one-thread seconds left, spec) of every unfinished run of the chosen arms, longest first."""
    todo: list[tuple[float, RunSpec]] = []
    for name in args.arms:
        arm = ARMS[name]
        if arm.runner is None:
            print(f"skipping {arm.name}: {arm.missing}", flush=True)
            continue
        for task in args.tasks:
            for seed in args.seeds:
                spec = run_spec(arm, task, seed, args.out, args.steps, args.mark_every)
                if not is_finished(spec):
                    todo.append(((spec.budget - max(steps_done(spec), 0)) / arm.steps_per_s, spec))
    return sorted(todo, key=lambda item: -item[0])


def run_all(args: argparse.Namespace) -> int:
    """Every unfinished run of the chosen arms, ``--jobs`` one-thread processes at a time, longest first.

    Each run's output goes to our stdout and to <out>/<task>/logs/<arm>-s<seed>.log. Stopping this process
    (Ctrl-C, SIGTERM) stops the runs; each resumes from its last checkpoint next time.
    """
    todo = _pending_runs(args)
    print(f"{len(todo)} runs to go, {args.jobs} at a time: "
          + ", ".join(f"{spec.name} (~{cost / 3600:.1f} h)" for cost, spec in todo), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    running: list[tuple[RunSpec, subprocess.Popen[str], threading.Thread]] = []
    failed: list[str] = []
    queue = [spec for _, spec in todo]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    try:
        while queue or running:
            while queue and len(running) < args.jobs:
                spec = queue.pop(0)
                process = subprocess.Popen(_child_command(spec, args), cwd=REPO, env=env, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                log_path = args.out / spec.task / "logs" / f"{spec.arm}-s{spec.seed}.log"
                pump = threading.Thread(target=_pump, args=(process, log_path), daemon=True)
                pump.start()
                running.append((spec, process, pump))
            time.sleep(1.0)
            for item in [item for item in running if item[1].poll() is not None]:
                spec, process, pump = item
                pump.join()
                running.remove(item)
                if process.returncode != 0:
                    log = f"{spec.task}/logs/{spec.arm}-s{spec.seed}.log"
                    failed.append(f"{spec.name} (exit {process.returncode}; log {log})")
    finally:
        for _, process, _ in running:
            process.terminate()
        for _, process, _ in running:
            process.wait()
    if failed:
        print("failed: " + "; ".join(failed), file=sys.stderr)
        return 1
    print("all runs finished", flush=True)
    return 0


# -------------------------------------------------------------------------------------------------- report


@dataclass
class ArmCurves:
    """The curves of one arm on one task: seed -> rows, and which seeds reached the budget."""

    arm: Arm
    task: str
    curves: dict[int, list[dict[str, float]]]
    budget: int

    @property
    def finished(self) -> list[int]:
        return sorted(s for s, rows in self.curves.items() if rows and rows[-1]["real_steps"] >= self.budget)

    @property
    def unfinished(self) -> list[int]:
        return sorted(s for s in self.curves if s not in self.finished)

    def drawn(self) -> ArmCurves:
        """The seeds a plot draws: the finished ones once any is (a seed still running would cut the mean curve off
        at its last mark), else every seed, over the marks all of them have reached."""
        keep = self.finished or list(self.curves)
        return ArmCurves(self.arm, self.task, {seed: self.curves[seed] for seed in keep}, self.budget)

    def values_at(self, steps: int, column: str) -> np.ndarray:
        """[n_seeds] the column at exactly ``steps`` real steps, over the seeds whose curve has that mark."""
        return np.array([row[column] for rows in self.curves.values() for row in rows if row["real_steps"] == steps])

    def mean_curve(self, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Marks [M] every seed has reached, the mean over seeds [M] and the 95 % bootstrap half-band [2, M]."""
        common = sorted(set.intersection(*({row["real_steps"] for row in rows} for rows in self.curves.values())))
        marks = np.array(common)
        values = np.array([[row[column] for row in rows if row["real_steps"] in common]
                           for rows in self.curves.values()])
        low, high = np.array([bootstrap_ci(values[:, j]) for j in range(len(common))]).T.reshape(2, -1)
        return marks, values.mean(axis=0), np.vstack([low, high])


def bootstrap_ci(values: np.ndarray, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` [n] (resampled seeds); a single seed has none."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(BOOTSTRAP_SAMPLES, len(values)), replace=True).mean(axis=1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


def load_curves(out: Path, task: str, steps: int | None = None) -> dict[str, ArmCurves]:
    """Every arm's curves on ``task`` found under ``out`` (arms without a CSV are left out).

    A run is finished at its arm's budget, or at ``steps`` for a smoke study made with ``run --steps``: never at
    the last mark a stopped run happened to reach.
    """
    found: dict[str, ArmCurves] = {}
    for arm in ARMS.values():
        curves = {}
        for path in sorted((out / task).glob(f"{arm.name}-s*.csv")):
            seed = path.stem.rsplit("-s", 1)[1]
            if seed.isdigit():
                rows = read_curve(path)
                if rows:
                    curves[int(seed)] = rows
        if curves:
            found[arm.name] = ArmCurves(arm, task, curves, steps or arm.budget)
    return found


def steps_to_reach(curves: ArmCurves, target: float, column: str) -> int | None:
    """First mark at which the seed-mean curve reaches ``target`` (None if it never does)."""
    marks, mean, _ = curves.mean_curve(column)
    hits = np.nonzero(mean >= target)[0]
    return int(marks[hits[0]]) if len(hits) else None


def provenance() -> str:
    """The command, commit and machine a figure or table comes from."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "benchmarks/compare.py", "benchmarks/eval_protocol.py",
                            "benchmarks/model_free.py"], cwd=REPO, capture_output=True, text=True).stdout
    machine = f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, runs on 1 thread each"
    return (f"`{' '.join(['python', 'benchmarks/compare.py', *sys.argv[1:]])}` at commit {commit.strip() or '?'}"
            f"{' (modified)' if dirty.strip() else ''}, {machine}")


def _fmt_ci(values: np.ndarray) -> str:
    if len(values) == 0:
        return "-"
    low, high = bootstrap_ci(values)
    interval = f" [{low:.0f}, {high:.0f}]" if np.isfinite(low) else ""
    return f"{values.mean():.0f}{interval} (n={len(values)})"


def table(out: Path, tasks: list[str], column: str, seeds: list[int], steps: int | None = None) -> str:
    """The Markdown table of the study (see the module docstring of the report)."""
    lines = [
        f"Return ({'deterministic' if column == 'return_det' else 'stochastic'} policy, 10 paired evaluation "
        f"episodes of {HORIZON} steps) at real-step marks: mean over seeds [95 % bootstrap interval]; "
        f"cost per run (mean over finished seeds); real steps to reach MB-MPO's return at {REFERENCE_STEPS // 1000}k "
        "and their ratio to it.",
        "",
        "| task | arm | " + " | ".join(f"{m // 1000}k" for m in TABLE_MARKS)
        + " | wall h / run | CPU h / run | steps to MB-MPO@100k | ratio | status |",
        "|---|---|" + "---|" * (len(TABLE_MARKS) + 5),
    ]
    for task in tasks:
        curves = load_curves(out, task, steps)
        reference = curves.get(REFERENCE_ARM)
        target = reference.values_at(REFERENCE_STEPS, column) if reference else np.array([])
        for arm in ARMS.values():
            found = curves.get(arm.name)
            cells = [_fmt_ci(found.values_at(m, column)) if found else "-" for m in TABLE_MARKS]
            lines.append(f"| {task} | {arm.label} | " + " | ".join(cells) + " | "
                         + " | ".join(_cost_cells(found)) + " | "
                         + " | ".join(_efficiency_cells(arm, found, target, column)) + " | "
                         + _status(arm, task, found, seeds, out) + " |")
    lines += ["", f"Source: {provenance()}."]
    return "\n".join(lines)


def _cost_cells(found: ArmCurves | None) -> list[str]:
    if found is None or not found.finished:
        return ["-", "-"]
    wall = np.mean([found.curves[s][-1]["wall_s"] for s in found.finished]) / 3600
    cpu = np.mean([found.curves[s][-1]["cpu_s"] for s in found.finished]) / 3600
    return [f"{wall:.2f}", f"{cpu:.2f}"]


def _efficiency_cells(arm: Arm, found: ArmCurves | None, target: np.ndarray, column: str) -> list[str]:
    if arm.family != "model-free":
        return ["", ""]
    if len(target) == 0:
        return ["n/a (no MB-MPO@100k yet)", ""]
    if found is None:
        return ["-", ""]
    steps = steps_to_reach(found, float(target.mean()), column)
    if steps is None:
        reached = int(found.mean_curve(column)[0][-1])
        return [f"not reached in {reached // 1000}k", f"> {reached / REFERENCE_STEPS:.1f}x"]
    return [f"{steps // 1000}k", f"{steps / REFERENCE_STEPS:.1f}x"]


def _status(arm: Arm, task: str, found: ArmCurves | None, seeds: list[int], out: Path) -> str:
    if arm.runner is None:
        return "not implemented"
    done = found.finished if found else []
    todo = [s for s in seeds if s not in done]
    if not todo:
        return f"{len(done)} seed{'s' if len(done) != 1 else ''} done"
    partial = [f"seed {s} at {int(found.curves[s][-1]['real_steps']) // 1000}k" for s in todo
               if found and s in found.curves]
    return (f"{len(done)}/{len(seeds)} seeds done{' (' + ', '.join(partial) + ')' if partial else ''}; "
            f"resume: `{resume_command(arm.name, task, todo, out)}`")


def plot(out: Path, tasks: list[str], column: str, log_x: bool, steps: int | None = None) -> Path:
    """Return against real steps per task, mean and 95 % bootstrap band over seeds; log-x: the model-free range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        curves = load_curves(out, task, steps)
        for name, all_seeds in curves.items():
            found = all_seeds.drawn()
            marks, mean, band = found.mean_curve(column)
            keep = marks > 0 if log_x else marks <= REFERENCE_STEPS  # log-x: the untrained policy has no place
            marks, mean, band = marks[keep], mean[keep], band[:, keep]
            color = f"C{list(ARMS).index(name)}"  # one colour per arm across both tasks and both plots
            ax.plot(marks, mean, color=color, label=f"{found.arm.label} (n={len(found.curves)})",
                    ls="-" if found.arm.family == "model-based" else "--")
            ax.fill_between(marks, band[0], band[1], color=color, alpha=0.2)
            if log_x and name == REFERENCE_ARM:
                reference = found.values_at(REFERENCE_STEPS, column)
                if len(reference):
                    ax.axhline(reference.mean(), color=color, ls=":", lw=1)
        if log_x:
            ax.set_xscale("log")
        ax.set_title(f"{task} (horizon {HORIZON})")
        ax.set_xlabel("real environment steps")
        ax.set_ylabel(f"average return ({'deterministic' if column == 'return_det' else 'stochastic'})")
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=7)
    fig.text(0.01, 0.005, provenance().replace("`", ""), fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / f"compare_{'logx' if log_x else 'linear'}_{column}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or resume runs")
    which = run.add_mutually_exclusive_group(required=True)
    which.add_argument("--arm", choices=sorted(ARMS))
    which.add_argument("--all", action="store_true", help="every unfinished run of every implemented arm")
    run.add_argument("--task", choices=TASKS, help="with --arm (default: both tasks with --all)")
    run.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="with --all")
    run.add_argument("--jobs", type=int, default=2, help="with --all: processes at a time")
    run.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS), help="with --all")
    report = sub.add_parser("report", help="plots (PNG) and the Markdown table")
    report.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    report.add_argument("--returns", choices=("det", "stoch"), default="det", help="which evaluation return")
    sub.add_parser("list", help="arms, budgets and whether they run")
    for command in (run, report):
        command.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
        command.add_argument("--out", type=Path, default=RESULTS, help="results folder (smoke tests: a scratch one)")
    run.add_argument("--steps", type=int, help="budget override (smoke tests); default: the arm's budget")
    report.add_argument("--steps", type=int, help="the budget of a smoke study (`run --steps`); default: the arm's")
    run.add_argument("--mark-every", type=int, help="fixed mark spacing (smoke tests); default: the protocol's")
    return parser


def main() -> int:
    args = _parser().parse_args()
    if args.command == "list":
        for arm in ARMS.values():
            state = "runs" if arm.runner else f"not implemented: {arm.missing}"
            print(f"{arm.name:7s} {arm.family:12s} budget {arm.budget:>9,d}  {arm.label}: {state}")
        return 0
    if args.command == "report":
        if args.steps is not None and args.steps <= 0:
            print("--steps must be positive", file=sys.stderr)
            return 2
        column = f"return_{args.returns}"
        if not any(load_curves(args.out, task, args.steps) for task in args.tasks):
            print(f"no curves under {args.out} yet: start runs with `python benchmarks/compare.py run ...`")
            return 1
        for log_x in (False, True):
            print(f"wrote {plot(args.out, args.tasks, column, log_x, args.steps)}")
        print(table(args.out, args.tasks, column, args.seeds, args.steps))
        return 0
    if (args.steps is not None and args.steps <= 0) or args.jobs <= 0 or (args.mark_every or 1) <= 0:
        print("--steps, --mark-every and --jobs must be positive", file=sys.stderr)
        return 2
    if args.all:
        return run_all(args)
    if args.task is None:
        print("run --arm needs --task", file=sys.stderr)
        return 2
    arm = ARMS[args.arm]
    return run_in_process(arm, [run_spec(arm, args.task, s, args.out, args.steps, args.mark_every) for s in args.seeds])


if __name__ == "__main__":
    sys.exit(main())
