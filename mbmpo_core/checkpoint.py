"""The run checkpoint, ``<run_dir>/checkpoints/checkpoint.pt``: written atomically, the previous one kept, read with
one clear error; and what a run directory holds.

Layout: the :meth:`MetaLearner.state_dict` keys at the top level (``iteration``, ``ensemble``, ``policy``,
``meta``, ``rng``, ``generator``; ``mbmpo export`` reads ``policy``, ``meta`` and ``iteration``), ``format``, and
one section of the program that wrote it: ``sim_loop`` (:class:`mbmpo_core.sim_loop.SimTrainingLoop`) or
``learner_node`` (:class:`mbmpo_ros.learner.Learner`). Each section records the stored data the checkpoint covers
(:func:`mbmpo_core.store.store_coverage`: transitions, and the newest chunk of the store then), so that a resume can
tell data that came later from data lost to corruption since (:func:`mbmpo_core.store.reconcile`).

Writing keeps the checkpoint it replaces as ``checkpoint.prev.pt``: a latest checkpoint that cannot be read (a
disk that lied about a write, a copy cut short) falls back to it with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"
TRANSITIONS_DIR = "transitions"
FORMAT = "mbmpo-checkpoint-v2"  # v1 (before MetaLearner) had no format key and kept the ensemble's fit count apart


def checkpoint_path(run_dir: str | Path) -> Path:
    """Where the checkpoint of ``run_dir`` lives."""
    return Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_NAME


def previous_checkpoint_path(run_dir: str | Path) -> Path:
    """Where the checkpoint before the latest one of ``run_dir`` is kept."""
    return Path(run_dir) / CHECKPOINT_DIR / PREVIOUS_NAME


def has_checkpoint(run_dir: str | Path) -> bool:
    """True if ``run_dir`` holds a checkpoint (the latest or the previous one)."""
    return checkpoint_path(run_dir).is_file() or previous_checkpoint_path(run_dir).is_file()


def write_checkpoint(run_dir: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` as the checkpoint of ``run_dir``: readers see the previous one or this one, never a part.

    The one it replaces stays as ``checkpoint.prev.pt`` (hard-linked first, so that at every moment a complete
    latest checkpoint exists).
    """
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{CHECKPOINT_NAME}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        if path.is_file():
            _keep_as_previous(path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # makes the renames themselves durable
    return path


def _keep_as_previous(path: Path) -> None:
    previous = path.with_name(PREVIOUS_NAME)
    link = path.with_name(f".{PREVIOUS_NAME}.{os.getpid()}.tmp")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # a file system without hard links: a copy does the same, slower
        link.write_bytes(path.read_bytes())
    os.replace(link, previous)


def read_checkpoint(source: str | Path, device: str | torch.device = "cpu",
                    warn: Callable[[str], object] | None = None) -> dict[str, Any]:
    """The checkpoint at ``source`` (a run directory or the file), tensors on ``device``.

    For a run directory whose latest checkpoint is missing or unreadable, the previous one is read instead and
    ``warn`` (default: a ``RuntimeWarning``) says so. Raises ``FileNotFoundError`` if there is none and
    ``ValueError`` (one line) if it is not a current checkpoint.
    """
    path = Path(source)
    if not path.is_dir():
        return _read(path, device)
    latest, previous = checkpoint_path(path), previous_checkpoint_path(path)
    try:
        return _read(latest, device)
    except (FileNotFoundError, ValueError) as exc:
        if not previous.is_file():
            raise
        state = _read(previous, device)
        message = f"{exc}; resuming from the previous checkpoint {previous} (iteration {state.get('iteration')})"
        if warn is None:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        else:
            warn(message)
        return state


def _read(path: Path, device: str | torch.device) -> dict[str, Any]:
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


# ------------------------------------------------------------------ the run directory and its stored data
def existing_run(run_dir: str | Path) -> str:
    """What makes ``run_dir`` hold a run ('' if nothing: a fresh run may use it), e.g. ``"a checkpoint and 12
    stored transition batches"``. Raises ``ValueError`` (one line) if ``run_dir`` is a file."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file, not a run directory")
    parts = []
    if has_checkpoint(run_dir):
        parts.append("a checkpoint")
    chunks = len(list((run_dir / TRANSITIONS_DIR).glob("chunk-*.mbt"))) if (run_dir / TRANSITIONS_DIR).is_dir() else 0
    if chunks:
        parts.append(f"{chunks} stored transition batch{'' if chunks == 1 else 'es'}")
    return " and ".join(parts)


def check_fresh_or_resume(run_dir: str | Path, resume: bool, how_to_resume: str) -> None:
    """A fresh run refuses a directory that holds a run; a resume needs one. ``how_to_resume`` is the user's way
    to say resume (``--resume``, ``resume:=true``). Raises ``ValueError`` with one line."""
    held = existing_run(run_dir)
    if held and not resume:
        raise ValueError(f"{run_dir} already holds a run ({held}); continue it with {how_to_resume} or choose "
                         "another run directory")
    if resume and not held:
        raise ValueError(f"{run_dir}: nothing to resume (no checkpoint, no stored transitions)")
