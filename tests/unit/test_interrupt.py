"""Ctrl-C in the middle of a training iteration of ``mbmpo train``: one line, exit code 130, no traceback and no
abort, the last checkpoint intact (resuming from it: tests/unit/test_resume.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mbmpo_core.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SLOW = {  # ~0.1 s per meta-step on one core: an iteration takes seconds
    "task": "InvertedPendulum-v5",
    "ensemble": {"num_models": 2, "hidden_sizes": [32, 32], "batch_size": 64, "max_epochs": 3},
    "policy": {"hidden_sizes": [8, 8]},
    "meta": {"meta_batch_size": 2, "rollouts_per_task": 8, "meta_steps": 40},
    "loop": {"random_steps": 100, "steps_per_iter": 100, "total_steps": 10_000, "eval_episodes": 1, "horizon": 50},
}


def progress_rows(run: Path) -> int:
    path = run / "progress.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


def test_ctrl_c_mid_iteration_is_one_line_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    config, run = tmp_path / "slow.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(SLOW))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A child of a non-interactive shell may inherit SIGINT ignored: the interpreter then never raises
    # KeyboardInterrupt. Restore the default, as a terminal would have it.
    proc = subprocess.Popen([sys.executable, "-m", "mbmpo_ros.cli", "train", "--config", str(config), "--run-dir",
                             str(run), "--no-progress", "--threads", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not (run / "policy.onnx").is_file():  # iteration 0 done (row, checkpoint, policy): 1 is running
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(1.0)
        assert progress_rows(run) == 1
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert err.strip().splitlines()[-1].startswith("mbmpo: interrupted"), err[-2000:]
    assert "Traceback" not in err + out and "terminate called" not in err + out, err[-2000:]
    assert read_checkpoint(run)["iteration"] == 1  # iteration 0's checkpoint, as written
