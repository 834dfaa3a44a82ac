"""Time DynamicsEnsemble.fit with the paper's defaults on HalfCheetah-v5 random data.

Two runs from fresh weights on the same data:
  * ``fixed``: exactly ``--epochs`` epochs (early stopping off) -> seconds/epoch;
  * ``early_stop``: until every model early-stopped or ``--max-epochs``.

Each run appends a row to benchmarks/results/fit_ensemble.csv. The random
transitions are cached under benchmarks/results/ (not meant for git).

Example::

    python benchmarks/fit_ensemble.py --device cpu --transitions 100000 --epochs 5
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # allow `python benchmarks/fit_ensemble.py` without installing
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--transitions", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the fixed-length run (0 skips it)")
    parser.add_argument("--max-epochs", type=int, default=50, help="cap of the early-stopped run (0 skips it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

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
