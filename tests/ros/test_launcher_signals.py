"""``mbmpo launch`` and signals, with real node processes over DDS: SIGINT, SIGTERM and SIGHUP stop every node
within 5 s, and no node survives its launcher, not even a launcher killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[2]
STOP_WITHIN_S = 5.0


def children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def drain(stream: Any) -> tuple[threading.Thread, list[str]]:
    """Read ``stream`` to its end in a thread, into the returned list: a launcher whose output nobody reads blocks
    on a full pipe, its "stopping every node" line too, which would stall the very stop being measured."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(stream), daemon=True)
    reader.start()
    return reader, lines


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_no_node_outlives_the_launcher(domain_id: int, tmp_path: Path, sig: signal.Signals) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"task": "InvertedPendulum-v5", "loop": {"random_steps": 10**9, "horizon": 20}}))
    run = tmp_path / "run"
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "mbmpo_ros.launcher", "train", "--sim", "--rate-hz", "100",
                                 "--run-dir", str(run), "--config", str(config)],
                                env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader, output = drain(launcher.stdout)
    nodes: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while not list((run / "transitions").glob("chunk-*.mbt")):  # every node is up: data reaches the store
            assert time.monotonic() < deadline and launcher.poll() is None, "the graph did not come up"
            time.sleep(0.2)
        nodes = children(launcher.pid)
        assert len(nodes) == 3
        started = time.monotonic()
        launcher.send_signal(sig)
        while any(alive(pid) for pid in nodes) and time.monotonic() - started < 15:
            time.sleep(0.05)
        seconds = time.monotonic() - started
        launcher.wait(timeout=15)
    finally:
        for pid in nodes:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    reader.join(timeout=10)
    out = "".join(output)
    assert not [pid for pid in nodes if alive(pid)] and seconds < STOP_WITHIN_S, (seconds, out[-3000:])
    if sig == signal.SIGKILL:
        return  # (its output ends where it was killed)
    assert launcher.returncode == 128 + sig, out[-3000:]
    assert f"[launch] {'Ctrl-C' if sig == signal.SIGINT else sig.name}: stopping every node" in out
    assert "Traceback" not in out, out[-3000:]
