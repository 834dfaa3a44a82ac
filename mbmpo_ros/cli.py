"""The ``mbmpo`` command line.

    mbmpo train --config FILE [--task NAME] [--steps N] [--seed S] [--device cpu|cuda] [--run-dir DIR] [--resume DIR]
    mbmpo export RUN_DIR|CHECKPOINT -o policy.onnx
    mbmpo launch train --sim [--task T] [--robots N] [--run-dir DIR] [--config FILE] [--steps N]
    mbmpo eval POLICY.onnx --task NAME [--perturb KEY=VALUE ...] [--adapt-steps N] [--episodes N]
    mbmpo publish RUN_DIR|POLICY.onnx [--task NAME] [--duration S]

Bad input (config, task name, paths) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# config/ of the source tree (editable install), else the one setup.py installs to share/mbmpo_ros/config.
CONFIG_DIRS = (Path(__file__).resolve().parent.parent / "config", Path(sys.prefix) / "share" / "mbmpo_ros" / "config")
DEFAULT_CONFIG = CONFIG_DIRS[0] / "default.yaml"
PROGRESS_EVERY_S = 2.0  # the bar's postfix shows where an iteration is, refreshed at most this often
PROGRESS_LINE_EVERY_S = 30.0  # without a bar (--no-progress): a progress line at most this often


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["launch"]:
        # The launcher parses its own arguments (argparse's REMAINDER would swallow "-h" badly).
        from mbmpo_ros.launcher import launch_main

        return launch_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"mbmpo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mbmpo: interrupted; the run directory holds every stored transition and the last checkpoint",
              file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mbmpo", description="Model-based meta-policy optimization (MB-MPO).")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train MB-MPO on a MuJoCo task")
    train.add_argument("--config", type=Path, default=None,
                       help="YAML config (default: by device: the paper's config/default.yaml on CUDA, the CPU "
                            "profile config/cpu.yaml otherwise)")
    train.add_argument("--task", help="task name, e.g. HalfCheetah-v5 (overrides the config)")
    train.add_argument("--steps", type=positive_int, help="real environment steps (overrides loop.total_steps)")
    train.add_argument("--seed", type=int, help="random seed (overrides the config)")
    train.add_argument("--device", help="cpu or cuda[:N] (overrides the config)")
    train.add_argument("--run-dir", type=Path, help="run directory (default: runs/<task>-s<seed>-<time>)")
    train.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--threads", type=positive_int, default=None,
                       help="torch threads (default: chosen for the machine, 1 on <= 4 cores; OMP_NUM_THREADS)")
    train.set_defaults(func=_train)
    export = sub.add_parser("export", help="export a run's meta-policy as ONNX (with its inner-step graph)")
    export.add_argument("source", type=Path, help="run directory or checkpoint file")
    export.add_argument("-o", "--output", type=Path, required=True, help="policy file to write (.onnx)")
    export.set_defaults(func=_export)
    ev = sub.add_parser("eval", help="return of an ONNX policy on a (perturbed) task, before and after adaptation")
    ev.add_argument("policy", type=Path, help="policy.onnx (its inner-step graph beside it)")
    ev.add_argument("--task", required=True, help="task name, e.g. HalfCheetah-v5")
    ev.add_argument("--perturb", nargs="*", default=[], metavar="KEY=VALUE",
                    help="physics perturbation, e.g. mass_scale=1.5 damping_scale=2 'weaken_actuator={\"0\": 0.3}'")
    ev.add_argument("--adapt-steps", type=int, default=1, help="inner steps on real episodes (0: none)")
    ev.add_argument("--adapt-episodes", type=positive_int, default=4, help="episodes per inner step")
    ev.add_argument("--episodes", type=positive_int, default=5, help="evaluation episodes per parameter set")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_eval)
    pub = sub.add_parser("publish", help="publish a saved policy, validated, latched on /mbmpo/policy (deploy)")
    pub.add_argument("source", help="policy.onnx (its inner-step graph beside it) or a run directory")
    pub.add_argument("--task", help="refuse a policy trained on another task")
    pub.add_argument("--duration", type=float, default=0.0, metavar="S",
                     help="stop after S seconds (default: stay up until Ctrl-C, serving controllers that start later)")
    pub.set_defaults(func=_publish)
    # Listed for --help only: main() hands "launch ..." to the launcher before parsing.
    sub.add_parser("launch", help="start the ROS graph of launch/train.launch.py without a ROS 2 install "
                                  "(mbmpo launch -h)")
    return parser


def _export(args: argparse.Namespace) -> int:
    from mbmpo_core.config import ConfigError
    from mbmpo_core.export import export_from_checkpoint

    if not args.source.exists():
        raise UsageError(f"{args.source}: no such run directory or checkpoint")
    try:
        policy_id = export_from_checkpoint(args.source, args.output, _task_for_export)
    except (ConfigError, FileNotFoundError, ValueError) as exc:  # ValueError: e.g. -o not a plain '<name>.onnx'
        raise UsageError(str(exc).splitlines()[0]) from None
    print(f"wrote {args.output} (policy id {policy_id})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from mbmpo_core.bundle import PolicyBundle
    from mbmpo_core.onnx_runtime import PolicyValidationError, validate_bundle
    from mbmpo_ros.evaluate import evaluate_with_adaptation, parse_perturbations

    if args.adapt_steps < 0:
        raise UsageError(f"--adapt-steps must be >= 0, got {args.adapt_steps}")
    try:
        perturbation = parse_perturbations(args.perturb)
        # Loaded once; without inner steps a bad adapt graph does not matter (and is not loaded).
        policy = validate_bundle(PolicyBundle.from_file(args.policy), expected_task=args.task,
                                 adapt=args.adapt_steps > 0)
    except (ValueError, PolicyValidationError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    meta = policy.metadata
    task = _make_task(args.task, horizon=int(meta["horizon"]))
    try:
        env = task.make_env(seed=args.seed, perturbation=perturbation)
    except ValueError as exc:
        raise UsageError(f"--perturb: {str(exc).splitlines()[0]}") from None
    if args.adapt_steps and not policy.can_adapt:
        raise UsageError(f"{args.policy}: no inner-step graph beside it; use --adapt-steps 0")
    report = evaluate_with_adaptation(policy, env, task.action_low, task.action_high, args.episodes,
                                      args.adapt_steps, args.adapt_episodes, args.seed)
    env.close()
    print(f"{args.task} {perturbation or 'nominal'}, mean ± std over {args.episodes} episodes per row (policy "
          f"{str(meta['policy_id'])[:12]}):")
    for k, (ret, std) in enumerate(zip(report.returns, report.stds, strict=True)):
        print(f"  {'theta' if k == 0 else f'after {k} inner step(s)':24s} return {ret:10.2f} ± {std:.2f}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from mbmpo_ros.publish import publish_policy

    return publish_policy(args.source, task=args.task, duration_s=args.duration)


def _task_for_export(name: str) -> Any:
    return _make_task(name, horizon=1000)  # export reads names, bounds and dt; the horizon comes from the config


def positive_int(text: str) -> int:
    """argparse type of a count (``mbmpo train`` and ``mbmpo launch``): its error reads "argument --steps: must be a
    whole number >= 1, got 'abc'"."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _train(args: argparse.Namespace) -> int:
    from mbmpo_core.config import ConfigError, load_config

    config_path = args.config
    if args.resume is not None:
        if args.run_dir is not None and args.run_dir != args.resume:
            raise UsageError("--resume DIR continues the run in DIR: leave out --run-dir")
        config_path = _resume_config(args.resume, args.config)
    try:
        # The dataclass defaults equal config/default.yaml (a test holds them together); an installed
        # (non-editable) package has no config/ beside it, so fall back to them.
        device = args.device
        if config_path is None:
            config_path, device = _default_config(args.device)
        config = load_config(config_path, task=args.task, seed=args.seed, device=device)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if args.steps is not None:
        config = _with_total_steps(config, args.steps)
    task = _make_task(config.task, config.loop.horizon)
    _check_device(config.device)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.resume or args.run_dir or Path("runs") / f"{config.task}-s{config.seed}-{stamp}"
    _check_run_dir(Path(run_dir), resume=args.resume is not None)
    _warn_below_warm_up(config)
    return _run_training(config, task, Path(run_dir), resume=args.resume is not None, progress=not args.no_progress,
                         threads=args.threads or 0)


def _default_config(device: str | None) -> tuple[Path | None, str | None]:
    """The config (and device) of a run without ``--config``, chosen by device and printed with the reason; the
    dataclass defaults (the paper's) where no config folder is installed."""
    from mbmpo_core.runtime import default_config

    folder = next((d for d in CONFIG_DIRS if d.is_dir()), None)
    if folder is None:
        print("config: the built-in paper defaults (no config/ folder found)")
        return None, device
    chosen = default_config(folder, device or "")
    print(chosen.describe())
    return chosen.path, chosen.device


def _resume_config(run_dir: Path, explicit: Path | None) -> Path:
    """The config of a resumed run: ``--config`` if given, else the one the run saved."""
    _check_run_dir(run_dir, resume=True)
    saved = run_dir / "config.yaml"
    if explicit is None and not saved.is_file():
        raise UsageError(f"--resume {run_dir}: the run's {saved.name} is missing; pass the run's --config")
    return explicit if explicit is not None else saved


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs a directory without a run in it; ``--resume`` one with a run (a checkpoint or stored data)."""
    from mbmpo_core.checkpoint import check_fresh_or_resume

    try:
        check_fresh_or_resume(run_dir, resume, how_to_resume=f"--resume {run_dir}")
    except ValueError as exc:
        raise UsageError(f"{'--resume' if resume else '--run-dir'} {exc}") from None


def _warn_below_warm_up(config: Any) -> None:
    warm_up, total = config.loop.random_steps, config.loop.total_steps
    if total < warm_up:
        print(f"mbmpo: warning: {total} steps is below the warm-up (loop.random_steps = {warm_up}): the run "
              f"collects {warm_up} random steps, trains one iteration and stops", file=sys.stderr)


def _with_total_steps(config: Any, steps: int) -> Any:
    import dataclasses

    return dataclasses.replace(config, loop=dataclasses.replace(config.loop, total_steps=steps))


def _make_task(name: str, horizon: int) -> Any:
    """Task ``name`` through the registry (a MuJoCo task, an installed entry point or 'module:factory')."""
    from mbmpo_core.registry import make_task

    try:
        return make_task(name, horizon=horizon)
    except ValueError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device '{device}' asked for, but this torch build sees no CUDA GPU")


def _run_training(config: Any, task: Any, run_dir: Path, resume: bool, progress: bool, threads: int = 0) -> int:
    from tqdm import tqdm

    from mbmpo_core.runtime import apply_threads, choose_threads
    from mbmpo_core.sim_loop import SimTrainingLoop

    choice = choose_threads(threads)
    apply_threads(choice)  # before any torch work
    print(choice.describe())
    bar = tqdm(total=config.loop.total_steps, unit="step", desc=f"MB-MPO {config.task}", disable=not progress,
               dynamic_ncols=True)
    try:  # a corrupt store.json or checkpoint, a checkpoint of another format or config: one line
        loop = SimTrainingLoop(config, task, run_dir, log=tqdm.write, progress=_progress_display(bar, progress))
        if resume:
            loop.resume()
    except ValueError as exc:
        bar.close()
        raise UsageError(str(exc).splitlines()[0]) from None
    bar.update(min(loop.real_steps, config.loop.total_steps))
    tqdm.write(f"run directory: {run_dir}")

    def report(row: dict[str, float]) -> None:
        bar.update(max(0, min(int(row["real_steps"]), config.loop.total_steps) - bar.n))
        bar.set_postfix_str(f"pre {row['return_pre']:.1f}, post {row['return_post']:.1f}")
        split = ", ".join(f"{k[5:]} {row[k]:.1f}s" for k in ("time_sample", "time_fit", "time_imagine",
                                                            "time_inner", "time_outer", "time_eval"))
        tqdm.write(f"iter {int(row['iteration'])}: real steps {int(row['real_steps'])}, return pre "
                   f"{row['return_pre']:.1f} post {row['return_post']:.1f}, model valid loss "
                   f"{row['model_valid_loss']:.4f} | {split}")

    try:
        loop.train(config.loop.total_steps, on_iteration=report)
    finally:
        bar.close()
        loop.close()
    tqdm.write(f"done: {loop.real_steps} real steps; see {run_dir / 'progress.csv'} and "
               f"{run_dir / 'learning_curve.png'}")
    return 0


def _progress_display(bar: Any, with_bar: bool) -> Any:
    """The loop's progress callback: where an iteration is (phase, model epoch or meta-step, elapsed, ETA), as the
    bar's postfix at most every PROGRESS_EVERY_S, or without a bar as a line at most every PROGRESS_LINE_EVERY_S."""
    from tqdm import tqdm

    from mbmpo_core.meta_learner import ImproveProgress

    every = PROGRESS_EVERY_S if with_bar else PROGRESS_LINE_EVERY_S
    last = [-float("inf")]

    def show(event: ImproveProgress) -> None:
        now = time.monotonic()
        first_of_phase = (event.epoch if event.phase == "fit" else event.meta_step) == 0
        if now - last[0] < every and not first_of_phase:
            return
        last[0] = now
        if with_bar:
            bar.set_postfix_str(event.describe())
        else:
            tqdm.write(event.describe())

    return show


if __name__ == "__main__":
    sys.exit(main())
