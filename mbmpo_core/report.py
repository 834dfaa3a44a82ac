"""Run-directory reporting: ``progress.csv`` (one row per iteration), TensorBoard scalars, ``learning_curve.png``."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROGRESS_COLUMNS = [
    "iteration", "real_steps", "return_pre", "return_post", "return_pre_det", "return_post_det",
    "return_adapted_real", "return_train",
    "model_train_loss", "model_valid_loss", "model_epochs", "inner_kl", "inner_lr", "outer_kl", "outer_accepted",
    "imagined_return_pre", "imagined_return_post",
    "time_sample", "time_fit", "time_imagine", "time_inner", "time_outer", "time_eval", "time_total",
]


class ProgressLog:
    """Appends one row per iteration to ``progress.csv`` and mirrors the numbers to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / "progress.csv"
        self.run_dir = run_dir
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency; a broken install should not stop training
                self._tb = None
            else:
                self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def rows(self) -> list[dict[str, float]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]

    def truncate(self, iterations: int) -> None:
        """Keep only rows of iterations < ``iterations`` (a resumed run rewrites what came after its checkpoint)."""
        kept = [r for r in self.rows() if r["iteration"] < iterations]
        self.path.unlink(missing_ok=True)
        for row in kept:
            self._write_csv(row)

    def append(self, row: Mapping[str, float]) -> None:
        unknown = set(row) - set(PROGRESS_COLUMNS)
        if unknown:
            raise ValueError(f"progress row has unknown columns: {sorted(unknown)}")
        self._write_csv(row)
        if self._tb is not None:
            step = int(row["real_steps"])
            for key, value in row.items():
                if key not in ("iteration", "real_steps"):
                    self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()

    def _write_csv(self, row: Mapping[str, float]) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=PROGRESS_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in PROGRESS_COLUMNS})

    def plot(self, title: str) -> Path:
        """Write ``learning_curve.png``: real (stochastic) return of the pre- and post-update policies against real
        steps."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows()
        fig, ax = plt.subplots(figsize=(6, 4))
        steps = [r["real_steps"] for r in rows]
        ax.plot(steps, [r["return_pre"] for r in rows], marker="o", label="pre-update theta")
        ax.plot(steps, [r["return_post"] for r in rows], marker="s", label="post-update theta'_m (mean over tasks)")
        # Episodes of the data-collecting policies (the robots' own returns in the ROS learner).
        ax.plot(steps, [r["return_train"] for r in rows], marker=".", ls=":", label="data collection")
        ax.set_xlabel("real environment steps")
        ax.set_ylabel("average return")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = self.run_dir / "learning_curve.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
