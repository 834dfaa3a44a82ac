"""Unit tests for mbmpo_core.store.TransitionStore."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mbmpo_core.store import SCHEMA, TransitionStore, fifo_tail

OBS_DIM, ACT_DIM = 3, 2
REPO_ROOT = Path(__file__).resolve().parents[2]


def make_batch(n: int, tag: int = 0, **extra: Any) -> dict[str, Any]:
    """Deterministic batch whose values encode ``tag`` (so order can be checked)."""
    rng = np.random.default_rng(tag)
    batch: dict[str, Any] = {
        "obs": rng.standard_normal((n, OBS_DIM)) + tag,
        "act": rng.uniform(-1, 1, (n, ACT_DIM)),
        "next_obs": rng.standard_normal((n, OBS_DIM)),
        "reward": np.full(n, float(tag)),
        "done": np.arange(n) == n - 1,
    }
    batch.update(extra)
    return batch


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    store = TransitionStore(tmp_path / "s", OBS_DIM, ACT_DIM)
    b0 = make_batch(5, 0)
    b1 = make_batch(7, 1, episode=np.arange(7), step=np.arange(7) * 2, robot="cheetah", policy_id="p3",
                    adapted=np.ones(7, dtype=bool))
    store.append(b0)
    store.append(b1)
    assert len(store) == 12 and store.num_batches == 2
    for reopened in (store, TransitionStore(tmp_path / "s")):
        data = reopened.load_all()
        assert set(data) == {spec.name for spec in SCHEMA}
        np.testing.assert_array_equal(data["obs"], np.concatenate([b0["obs"], b1["obs"]]))
        np.testing.assert_array_equal(data["act"], np.concatenate([b0["act"], b1["act"]]))
        np.testing.assert_array_equal(data["next_obs"], np.concatenate([b0["next_obs"], b1["next_obs"]]))
        np.testing.assert_array_equal(data["reward"], [0.0] * 5 + [1.0] * 7)
        assert data["done"].dtype == np.bool_ and data["done"].sum() == 2
        # Missing optional fields come back as their defaults.
        np.testing.assert_array_equal(data["episode"], [-1] * 5 + list(range(7)))
        np.testing.assert_array_equal(data["step"], [-1] * 5 + list(range(0, 14, 2)))
        assert data["episode"].dtype == np.int64
        assert list(data["robot"]) == [""] * 5 + ["cheetah"] * 7
        assert list(data["policy_id"]) == [""] * 5 + ["p3"] * 7
        np.testing.assert_array_equal(data["adapted"], [False] * 5 + [True] * 7)
        assert len(reopened) == 12 and reopened.num_batches == 2
    assert [len(b["obs"]) for b in TransitionStore(tmp_path / "s").iter_batches()] == [5, 7]


def test_empty_store_and_dims_metadata(tmp_path: Path) -> None:
    store = TransitionStore(tmp_path, OBS_DIM, ACT_DIM)
    data = store.load_all()
    assert len(store) == 0 and data["obs"].shape == (0, OBS_DIM) and data["act"].shape == (0, ACT_DIM)
    with pytest.raises(ValueError, match="obs_dim"):
        TransitionStore(tmp_path, OBS_DIM + 1, ACT_DIM)
    with pytest.raises(ValueError, match="act_dim"):
        TransitionStore(tmp_path, OBS_DIM, ACT_DIM + 1)
    with pytest.raises(ValueError):
        TransitionStore(tmp_path / "new")  # no dims for a new store
    assert TransitionStore(tmp_path).obs_dim == OBS_DIM


def test_corrupt_chunks_are_skipped_with_warning(tmp_path: Path) -> None:
    store = TransitionStore(tmp_path, OBS_DIM, ACT_DIM)
    paths = [store.append(make_batch(4, tag)) for tag in range(4)]
    # Truncate the last chunk (a torn write) and scribble over a middle one.
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])
    garbled = bytearray(paths[1].read_bytes())
    garbled[40:60] = b"\xff" * 20
    paths[1].write_bytes(bytes(garbled))
    (tmp_path / "chunk-000000009.mbt").write_bytes(b"")  # empty file, e.g. from a broken copy

    with pytest.warns(RuntimeWarning, match="corrupt chunk") as record:
        reopened = TransitionStore(tmp_path)
    assert len(record) == 3
    assert reopened.num_batches == 2 and len(reopened) == 8
    np.testing.assert_array_equal(reopened.load_all()["reward"], [0.0] * 4 + [2.0] * 4)
    # New appends never overwrite a corrupt chunk's name.
    new_path = reopened.append(make_batch(2, 7))
    assert new_path.name == "chunk-000000010.mbt"
    assert reopened.load_all()["reward"].tolist() == [0.0] * 4 + [2.0] * 4 + [7.0] * 2


def test_corruption_is_accounted_for_by_chunk(tmp_path: Path) -> None:
    """What a checkpoint covers is named by chunk index, so transitions lost to corruption can be counted."""
    store = TransitionStore(tmp_path, OBS_DIM, ACT_DIM)
    paths = [store.append(make_batch(n, tag)) for tag, n in enumerate((3, 4, 5))]
    assert store.last_chunk == 2 and store.transitions_through(1) == 7 and store.corrupt == []
    paths[1].write_bytes(paths[1].read_bytes()[:-1])
    with pytest.warns(RuntimeWarning, match="corrupt chunk"):
        reopened = TransitionStore(tmp_path)
    assert reopened.corrupt == [paths[1]] and reopened.last_chunk == 2
    assert reopened.transitions_through(1) == 3 and reopened.transitions_through(2) == 8


def test_batch_keys_name_each_sent_batch(tmp_path: Path) -> None:
    store = TransitionStore(tmp_path, OBS_DIM, ACT_DIM)
    store.append(make_batch(2, 0))  # no seq (e.g. the simulated loop's own data): no key
    store.append(make_batch(2, 1, robot="r0", session="s1", seq=np.full(2, 4)))
    store.append(make_batch(3, 2, robot="r0", session="s2", seq=np.full(3, 0)))
    keys = list(TransitionStore(tmp_path).batch_keys())
    assert [(k.robot, k.session, k.seq) for k in keys] == [("r0", "s1", 4), ("r0", "s2", 0)]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "unreadable store metadata"), (b"[1, 2]", "not an object"),
     (b'{"obs_dim": 3}', "act_dim"), (b'{"obs_dim": 0, "act_dim": 2}', "not the metadata"),
     (b"\xff\xfe", "unreadable store metadata")],
)
def test_corrupt_store_json_is_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    TransitionStore(tmp_path, OBS_DIM, ACT_DIM)
    (tmp_path / "store.json").write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        TransitionStore(tmp_path)
    assert "\n" not in str(info.value) and "store.json" in str(info.value)


def test_a_file_where_the_store_should_be_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        TransitionStore(tmp_path / "f", OBS_DIM, ACT_DIM)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("obs", np.full((4, OBS_DIM), np.nan), "obs"),
        ("next_obs", np.array([[0.0, np.inf, 0.0]] * 4), "next_obs"),
        ("reward", np.array([0.0, -np.inf, 0.0, 0.0]), "reward"),
        ("act", np.zeros((4, ACT_DIM + 1)), "act"),
        ("obs", np.zeros((4, OBS_DIM, 1)), "obs"),
        ("reward", np.zeros(3), "reward"),  # mismatched N
        ("done", np.zeros(5, dtype=bool), "done"),  # mismatched N
        ("obs", np.array([["a", "b", "c"]] * 4), "obs"),  # non-numeric
        ("act", np.array([[object(), object()]] * 4, dtype=object), "act"),
        ("reward", np.zeros(4, dtype=complex), "reward"),
        ("done", np.array([0.5, 0.0, 0.0, 1.0]), "done"),
        ("episode", np.zeros(4, dtype=float), "episode"),
        ("robot", 3, "robot"),
        ("bogus", np.zeros(4), "bogus"),
    ],
)
def test_bad_input_raises_and_stores_nothing(tmp_path: Path, field: str, value: Any, match: str) -> None:
    store = TransitionStore(tmp_path, OBS_DIM, ACT_DIM)
    store.append(make_batch(4, 0))
    batch = make_batch(4, 1)
    batch[field] = value
    with pytest.raises(ValueError, match=match):
        store.append(batch)
    missing = make_batch(4, 1)
    del missing["done"]
    with pytest.raises(ValueError, match="done"):
        store.append(missing)
    assert len(store) == 4 and len(TransitionStore(tmp_path)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk-000000000.mbt", "store.json"]


def _run_child(code: str, root: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(root)], env=env, cwd=REPO_ROOT)


CHILD_PRELUDE = """
import os, sys
import numpy as np
from mbmpo_core.store import TransitionStore

def batch(tag):
    n = 50
    return {"obs": np.full((n, 3), float(tag)), "act": np.zeros((n, 2)), "next_obs": np.full((n, 3), tag + 1.0),
            "reward": np.full(n, float(tag)), "done": np.zeros(n, dtype=bool)}

store = TransitionStore(sys.argv[1], 3, 2)
"""


def test_crash_mid_append_leaves_consistent_store(tmp_path: Path) -> None:
    child = _run_child(
        CHILD_PRELUDE
        + """
store.append(batch(0))
store.append(batch(1))
os.replace = lambda *a, **k: os._exit(3)  # die after the temp file is fully written, before the rename
store.append(batch(2))
""",
        tmp_path,
    )
    assert child.wait(timeout=60) == 3
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1  # the torn write is still there ...
    store = TransitionStore(tmp_path)  # ... and ignored
    assert store.num_batches == 2 and len(store) == 100
    assert np.unique(store.load_all()["reward"]).tolist() == [0.0, 1.0]
    store.append({"obs": np.zeros((1, 3)), "act": np.zeros((1, 2)), "next_obs": np.zeros((1, 3)),
                  "reward": np.zeros(1), "done": np.zeros(1, dtype=bool)})
    assert TransitionStore(tmp_path).num_batches == 3


def test_sigkill_during_append_loop(tmp_path: Path) -> None:
    child = _run_child(CHILD_PRELUDE + "\ntag = 0\nwhile True:\n    store.append(batch(tag))\n    tag += 1\n", tmp_path)
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("chunk-*.mbt"))) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    store = TransitionStore(tmp_path)  # must not warn: every renamed chunk is complete
    m = store.num_batches
    assert m >= 5
    data = store.load_all()
    # Batches 0..m-1, each complete and in order.
    np.testing.assert_array_equal(data["reward"], np.repeat(np.arange(m, dtype=float), 50))
    np.testing.assert_array_equal(data["next_obs"][:, 0], data["obs"][:, 0] + 1.0)


def test_fifo_tail() -> None:
    arrays = {"a": np.arange(10), "b": np.arange(20).reshape(10, 2)}
    tail = fifo_tail(arrays, 4)
    np.testing.assert_array_equal(tail["a"], [6, 7, 8, 9])
    assert tail["b"].shape == (4, 2)
    assert len(fifo_tail(arrays, 100)["a"]) == 10
    with pytest.raises(ValueError):
        fifo_tail({"a": np.arange(3), "b": np.arange(4)}, 2)
