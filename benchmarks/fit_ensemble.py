"""Time DynamicsEnsemble.fit with the paper's defaults on HalfCheetah-v5 data.

Default: two runs from fresh weights on the same random-action data:
  * ``fixed``: exactly ``--epochs`` epochs (early stopping off) -> seconds/epoch;
  * ``early_stop``: until every model early-stopped or ``--max-epochs``.
Each run appends a row to benchmarks/results/fit_ensemble.csv.

``--replay``: the fits of a training run, replayed: random-action warm-up data, then one chunk per
iteration collected by a different behaviour policy (random linear-Gaussian feedback, so each chunk
visits new states, as a learning policy's data does), one warm-started fit after each chunk on all data
so far. Per fit: wall and CPU seconds (CPU is the steadier figure on a shared machine), epochs,
validation loss, the one-step error on fresh data of the newest behaviour policy and of random actions
(raw units, comparable across versions), and how many members ended with their pre-fit weights.
``--src`` times another checkout's ensemble (A/B). Rows go to benchmarks/results/fit_ensemble_replay.csv.

The transitions are cached under benchmarks/results/ (not meant for git).

Examples::

    python benchmarks/fit_ensemble.py --device cpu --transitions 100000 --epochs 5
    python benchmarks/fit_ensemble.py --replay --chunks 2000,2000,2000,2000,2000 --hidden 256 \
        --batch-size 256 --max-epochs 30 [--src /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import inspect
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if "--src" in sys.argv:  # another checkout's ensemble (A/B): first on the path
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--src") + 1]).resolve()))
elif str(REPO_ROOT) not in sys.path:  # allow `python benchmarks/fit_ensemble.py` without installing
    sys.path.insert(0, str(REPO_ROOT))

from mbmpo_core.ensemble import DynamicsEnsemble, EpochInfo, FitReport  # noqa: E402

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
CSV_FIELDS = [
    "timestamp", "machine", "device", "torch", "threads", "transitions", "mode", "epochs", "max_epochs",
    "seconds", "seconds_per_epoch", "valid_mse", "num_models", "hidden_sizes",
]


def collect_halfcheetah(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` uniformly random-action HalfCheetah-v5 transitions (positions kept in obs), cached on disk."""
    cache = RESULTS_DIR / f"halfcheetah_v5_random_{n}_seed{seed}.npz"
    if cache.exists():
        with np.load(cache) as f:
            return {k: f[k] for k in ("obs", "act", "next_obs")}
    import gymnasium as gym  # only needed when the cache is cold

    env = gym.make("HalfCheetah-v5", exclude_current_positions_from_observation=False)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    obs_buf = np.empty((n, env.observation_space.shape[0]), np.float32)  # type: ignore[index]
    act_buf = np.empty((n, env.action_space.shape[0]), np.float32)  # type: ignore[index]
    next_buf = np.empty_like(obs_buf)
    for i in tqdm(range(n), desc="collect", unit="step"):
        act = env.action_space.sample()
        nxt, _, term, trunc, _ = env.step(act)
        obs_buf[i], act_buf[i], next_buf[i] = obs, act, nxt
        obs = env.reset()[0] if (term or trunc) else nxt
    env.close()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(cache, obs=obs_buf, act=act_buf, next_obs=next_buf)
    return {"obs": obs_buf, "act": act_buf, "next_obs": next_buf}


def collect_behaviour(n: int, seed: int, policy_seed: int) -> dict[str, np.ndarray]:
    """``n`` HalfCheetah-v5 transitions of the linear-Gaussian policy ``policy_seed`` (cached on disk):
    ``a = clip(W (obs / scale) + b + 0.3 eps, -1, 1)``, ``W ~ N(0, 0.3^2)``, ``b ~ U(-0.5, 0.5)``."""
    cache = RESULTS_DIR / f"halfcheetah_v5_linear{policy_seed}_{n}_seed{seed}.npz"
    if cache.exists():
        with np.load(cache) as f:
            return {k: f[k] for k in ("obs", "act", "next_obs")}
    import gymnasium as gym

    env = gym.make("HalfCheetah-v5", exclude_current_positions_from_observation=False)
    prng = np.random.default_rng(10_000 + policy_seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]  # type: ignore[index]
    gain = prng.normal(0.0, 0.3, (act_dim, obs_dim))
    gain[:, 0] = 0.0  # not the absolute position
    bias = prng.uniform(-0.5, 0.5, act_dim)
    scale = np.r_[np.ones(9), np.full(obs_dim - 9, 5.0)]  # velocities are ~5x larger than angles
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    rows = []
    for _ in range(n):
        act = np.clip(gain @ (obs / scale) + bias + 0.3 * rng.standard_normal(act_dim), -1.0, 1.0)
        nxt, _, term, trunc, _ = env.step(act)
        rows.append((obs, act, nxt))
        obs = env.reset()[0] if (term or trunc) else nxt
    env.close()
    data = {k: np.asarray(c, np.float32) for k, c in zip(("obs", "act", "next_obs"), zip(*rows, strict=True),
                                                          strict=True)}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **data)
    return data


def machine_name(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = f"{platform.node()} {cpu} x{torch.get_num_threads()}thr"
    if device.startswith("cuda"):
        name += f" {torch.cuda.get_device_name(torch.device(device))}"
    return name


def timed_fit(data: dict[str, np.ndarray], args: argparse.Namespace, epochs: int, early_stop: bool) -> FitReport:
    model = DynamicsEnsemble(data["obs"].shape[1], data["act"].shape[1], device=args.device, seed=args.seed)
    obs, act, nxt = (torch.as_tensor(data[k], device=args.device) for k in ("obs", "act", "next_obs"))
    bar = tqdm(total=epochs, desc="early_stop" if early_stop else "fixed", unit="epoch")

    def progress(info: EpochInfo) -> None:
        bar.update(1)
        bar.set_postfix(valid=f"{info.valid_mse.mean():.4f}", active=int(info.active.sum()))

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    report = model.fit(obs, act, nxt, epochs=epochs, progress=progress, early_stop=early_stop)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    bar.close()
    return report


def write_row(args: argparse.Namespace, mode: str, max_epochs: int, report: FitReport) -> dict[str, object]:
    epochs = int(report.epochs.max())
    row: dict[str, object] = {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_name(args.device),
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "transitions": args.transitions,
        "mode": mode,
        "epochs": epochs,
        "max_epochs": max_epochs,
        "seconds": round(report.seconds, 3),
        "seconds_per_epoch": round(report.seconds / max(epochs, 1), 4),
        "valid_mse": round(float(report.valid_mse.mean()), 6),
        "num_models": len(report.epochs),
        "hidden_sizes": "512x512",
    }
    path = RESULTS_DIR / "fit_ensemble.csv"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)
    return row


REPLAY_FIELDS = [
    "timestamp", "commit", "machine", "threads", "hidden", "batch_size", "max_epochs", "patience", "seed", "fit",
    "rows", "seconds", "cpu_seconds",
    "epochs_mean", "epochs_max", "valid_mse", "initial_valid_mse", "test_newest", "test_random", "kept_prefit",
]


def replay(args: argparse.Namespace) -> None:
    """Warm-started fits after each chunk of a replayed run (see the module docstring)."""
    torch.set_num_threads(args.threads)
    chunks = [int(c) for c in args.chunks.split(",")]
    parts = [collect_halfcheetah(chunks[0], args.seed)]
    parts += [collect_behaviour(n, args.seed + i, policy_seed=i) for i, n in enumerate(chunks[1:], start=1)]
    newest = collect_behaviour(2000, args.seed + 1000, policy_seed=len(chunks) - 1)  # fresh, never trained on
    random_test = collect_halfcheetah(2000, args.seed + 1000)
    kwargs: dict[str, Any] = {"hidden_sizes": (args.hidden, args.hidden), "batch_size": args.batch_size,
                              "max_epochs": args.max_epochs, "device": args.device, "seed": args.seed}
    if args.patience is not None:  # a checkout with the patience rule
        kwargs.update(patience=args.patience, improvement_threshold=args.improvement_threshold)
    model = DynamicsEnsemble(parts[0]["obs"].shape[1], parts[0]["act"].shape[1], **kwargs)
    has_first_row = "first_row" in inspect.signature(model.fit).parameters
    source = Path(sys.modules[DynamicsEnsemble.__module__].__file__ or ".").parent
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    print(f"ensemble from {source} ({commit})")
    for i in range(len(chunks)):
        data = {k: np.concatenate([p[k] for p in parts[: i + 1]]) for k in ("obs", "act", "next_obs")}
        before = [p.detach().clone() for p in model.parameters()]
        extra = {"first_row": 0} if has_first_row else {}
        cpu = time.process_time()
        report = model.fit(data["obs"], data["act"], data["next_obs"], **extra)
        cpu = time.process_time() - cpu
        kept = sum(all(torch.equal(b[k], p[k]) for b, p in zip(before, model.parameters(), strict=True))
                   for k in range(model.num_models))
        row = {
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
            "machine": machine_name(args.device), "threads": torch.get_num_threads(), "hidden": args.hidden,
            "batch_size": args.batch_size, "max_epochs": args.max_epochs, "patience": args.patience,
            "seed": args.seed, "fit": i, "rows": len(data["obs"]),
            "seconds": round(report.seconds, 2), "cpu_seconds": round(cpu, 2),
            "epochs_mean": float(report.epochs.mean()),
            "epochs_max": int(report.epochs.max()), "valid_mse": round(float(report.valid_mse.mean()), 5),
            "initial_valid_mse": round(float(report.initial_valid_mse.mean()), 5),
            "test_newest": round(float(model.validation_error(newest["obs"], newest["act"], newest["next_obs"]).mean()),
                                 5),
            "test_random": round(float(model.validation_error(random_test["obs"], random_test["act"],
                                                              random_test["next_obs"]).mean()), 5),
            "kept_prefit": kept if i else 0,
        }
        print(", ".join(f"{k} {row[k]}" for k in REPLAY_FIELDS[9:]))
        path = RESULTS_DIR / "fit_ensemble_replay.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=REPLAY_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--transitions", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the fixed-length run (0 skips it)")
    parser.add_argument("--max-epochs", type=int, default=50, help="cap of the early-stopped run (0 skips it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay", action="store_true", help="replay the fits of a run (see above)")
    parser.add_argument("--chunks", default="2000,2000,2000,2000,2000", help="rows per iteration (replay)")
    parser.add_argument("--hidden", type=int, default=512, help="hidden width (replay)")
    parser.add_argument("--batch-size", type=int, default=500, help="minibatch (replay)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (replay)")
    parser.add_argument("--src", default=None, help="checkout whose mbmpo_core is timed (replay A/B)")
    parser.add_argument("--patience", type=int, default=None, help="ensemble patience (replay; default: the class's)")
    parser.add_argument("--improvement-threshold", type=float, default=0.01, help="with --patience (replay)")
    args = parser.parse_args(argv)
    if args.replay:
        replay(args)
        return

    t0 = time.perf_counter()
    data = collect_halfcheetah(args.transitions, args.seed)
    print(f"data: {len(data['obs'])} transitions ({time.perf_counter() - t0:.1f} s to collect/load)")
    runs = [("fixed", args.epochs, False), ("early_stop", args.max_epochs, True)]
    for mode, epochs, early_stop in runs:
        if epochs <= 0:
            continue
        report = timed_fit(data, args, epochs, early_stop)
        row = write_row(args, mode, epochs, report)
        print(
            f"{mode}: {row['seconds']} s for {row['epochs']} epochs "
            f"({row['seconds_per_epoch']} s/epoch), per-model epochs {report.epochs.tolist()}, "
            f"valid MSE (normalized) {[round(float(v), 4) for v in report.valid_mse]}"
        )


if __name__ == "__main__":
    main()
