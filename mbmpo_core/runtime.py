"""Where a run executes: how many torch threads this machine should use, and which config a run gets by default.

Both are decided once, before any work, by the ``mbmpo train`` command line and by the learner node, and printed
with the reason, so a slow run is never a silent mystery.

* Threads: an explicit request wins, then ``OMP_NUM_THREADS``; otherwise one thread on a machine with at most
  4 CPU cores (measured on a shared 2-core machine: two torch threads made an iteration 5x slower than one, with
  identical returns, as the threads fight the MuJoCo envs and each other), half the cores (at most 8) above that.
* Config: the paper's ``default.yaml`` on a CUDA device, the CPU profile ``cpu.yaml`` otherwise (the paper's
  compute takes minutes per iteration on a laptop CPU; the profile gives a first policy in minutes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SMALL_MACHINE_CORES = 4  # at most this many cores: one thread
MAX_AUTO_THREADS = 8
PAPER_CONFIG = "default.yaml"
CPU_CONFIG = "cpu.yaml"


@dataclass(frozen=True)
class ThreadChoice:
    """The torch intra-op thread count of a run and why."""

    threads: int
    reason: str

    def describe(self) -> str:
        return f"torch threads: {self.threads} ({self.reason})"


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def choose_threads(requested: int = 0, cores: int | None = None,
                   environ: Mapping[str, str] | None = None) -> ThreadChoice:
    """Threads for a run: ``requested`` if >= 1 (0 = choose), else ``OMP_NUM_THREADS`` if it is a whole number
    >= 1, else by the number of ``cores`` (default: :func:`cpu_cores`). ``ValueError`` for a negative request."""
    if requested < 0:
        raise ValueError(f"threads must be >= 0 (0 = chosen for the machine), got {requested}")
    if requested:
        return ThreadChoice(requested, "asked for")
    env = os.environ if environ is None else environ
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return ThreadChoice(int(omp), "OMP_NUM_THREADS")
    n = cpu_cores() if cores is None else cores
    if n <= SMALL_MACHINE_CORES:
        return ThreadChoice(1, f"{n} CPU cores: one thread, as more oversubscribe a small machine")
    threads = min(n // 2, MAX_AUTO_THREADS)
    return ThreadChoice(threads, f"{n} CPU cores: half of them, at most {MAX_AUTO_THREADS}")


def apply_threads(choice: ThreadChoice) -> None:
    """Set torch's intra-op thread count (call before any torch work)."""
    import torch

    torch.set_num_threads(choice.threads)


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class DefaultConfig:
    """The config file a run without one gets, the device it runs on, and why."""

    path: Path
    device: str
    reason: str

    def describe(self) -> str:
        return f"config: {self.path} ({self.reason})"


def default_config(config_dir: Path, device: str = "") -> DefaultConfig:
    """The paper's config on CUDA, the CPU profile otherwise. ``device`` '' = CUDA if this torch sees a GPU."""
    if not device:
        device = "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda"):
        return DefaultConfig(config_dir / PAPER_CONFIG, device, f"the paper's config on {device}")
    return DefaultConfig(config_dir / CPU_CONFIG, device,
                         f"the CPU profile: no CUDA device; for the paper's compute pass {config_dir / PAPER_CONFIG}")
