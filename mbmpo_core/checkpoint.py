"""The run checkpoint, ``<run_dir>/checkpoints/checkpoint.pt``: written atomically, read with one clear error.

Layout: the :meth:`MetaLearner.state_dict` keys at the top level (``iteration``, ``ensemble``, ``policy``,
``meta``, ``rng``, ``generator``; ``mbmpo export`` reads ``policy``, ``meta`` and ``iteration``), ``format``, and
one section of the program that wrote it: ``sim_loop`` (:class:`mbmpo_core.sim_loop.SimTrainingLoop`) or
``learner_node`` (:class:`mbmpo_ros.learner.Learner`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "mbmpo-checkpoint-v2"  # v1 (before MetaLearner) had no format key and kept the ensemble's fit count apart


def checkpoint_path(run_dir: str | Path) -> Path:
    """Where the checkpoint of ``run_dir`` lives."""
    return Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_NAME


def write_checkpoint(run_dir: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` as the checkpoint of ``run_dir``: readers see the previous one or this one, never a part."""
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{CHECKPOINT_NAME}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # makes the rename itself durable
    return path


def read_checkpoint(source: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint at ``source`` (a run directory or the file), tensors on ``device``.

    Raises ``FileNotFoundError`` if there is none and ``ValueError`` (one line) if it is not a current checkpoint.
    """
    path = Path(source)
    if path.is_dir():
        path = checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        first_line = next(iter(str(exc).splitlines()), "")
        raise ValueError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {first_line})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format", "none") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: checkpoint format {found!r}, this mbmpo resumes {FORMAT!r} "
                         "(`mbmpo export` still reads the policy)")
    return state


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
