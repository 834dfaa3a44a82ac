"""``<log_dir>/adaptation.jsonl``: one JSON object per line, appended, for every online adaptation step and batch.

Each line goes out in ONE ``write`` on a file opened with ``O_APPEND`` (the kernel places it at the end as a
whole; two writers never interleave within a line). A failed or short write (full disk, removed folder) never
raises: it is counted, reported through ``warn`` at most once per ``warn_every_s``, and the next line starts on
a fresh line, so a torn line stays alone and every other line parses. The folder is created at the first line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

LOG_FILE = "adaptation.jsonl"


def check_log_dir(log_dir: str) -> Path | None:
    """The ``log_dir`` parameter as a folder (None for ''); a path that is a file is a one-line ``ValueError``."""
    if not log_dir.strip():
        return None
    path = Path(log_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"parameter log_dir {log_dir!r} is a file, not a folder")
    return path


class AdaptationLog:
    """Appends records to ``folder/adaptation.jsonl`` (see module docstring); safe to call from one thread."""

    def __init__(self, folder: Path, warn: Callable[[str], object], warn_every_s: float = 30.0) -> None:
        self.path = folder / LOG_FILE
        self.written = 0
        self.failed = 0
        self._warn, self._warn_every_s = warn, warn_every_s
        self._last_warning = -float("inf")
        self._torn = False  # the last write was short: start the next line on a fresh line

    def append(self, record: Mapping[str, Any]) -> bool:
        """Write ``record`` (plus ``time``, Unix seconds) as one line; False if it did not reach the file."""
        line = json.dumps({"time": round(time.time(), 3), **record}, allow_nan=False) + "\n"
        data = (("\n" if self._torn else "") + line).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                done = os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            return self._failed(f"{type(exc).__name__}: {exc.strerror or exc}")
        if done < len(data):
            self._torn = True
            return self._failed(f"short write ({done} of {len(data)} bytes)")
        self._torn = False
        self.written += 1
        return True

    def _failed(self, reason: str) -> bool:
        self.failed += 1
        now = time.monotonic()
        if now - self._last_warning >= self._warn_every_s:
            self._last_warning = now
            self._warn(f"cannot append to {self.path} ({self.failed} lines lost so far): {reason}")
        return False
