"""The evaluation protocol every arm of the comparison study (benchmarks/compare.py) shares.

* Evaluation happens at fixed real-step marks (:func:`evaluation_marks`): every 5k steps to 100k, every 25k to
  300k, every 50k to 1M, so the paper-style curve and the table at 25k/50k/100k read the same marks for every arm.
* At each mark the current policy runs :data:`EVAL_EPISODES` episodes on a separate evaluation env, once sampling
  its actions (stochastic) and once taking its mean action (deterministic). These steps are not training data and
  do not count as real steps.
* Evaluation is paired: every mark of every arm and seed resets the evaluation env with the same
  :data:`EVAL_SEEDS`, so two curves differ by their policies, not by their start states.
* Actions are clipped to the env's bounds before they are executed, as the project's sampler and SB3 both do.
* A run appends one row per mark to its CSV (:class:`CurveLog`); wall and CPU seconds are cumulative over every
  session of the run (:class:`RunClock`), so a resumed run reports its whole cost.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EVAL_EPISODES = 10
# Far from any training seed (0..99), so no evaluation episode starts where a training episode did.
EVAL_SEEDS: tuple[int, ...] = tuple(1_000_000 + i for i in range(EVAL_EPISODES))
# (mark spacing, up to this many real steps): the dense part covers the model-based budget.
MARK_SCHEDULE: tuple[tuple[int, int], ...] = ((5_000, 100_000), (25_000, 300_000), (50_000, 1_000_000))
CURVE_COLUMNS: tuple[str, ...] = (
    "real_steps", "return_stoch", "return_det", "std_stoch", "std_det", "wall_s", "cpu_s", "eval_wall_s",
)

# obs: [obs_dim] raw task observation, deterministic -> action [act_dim]
Policy = Callable[[np.ndarray, bool], np.ndarray]


def evaluation_marks(budget: int, every: int | None = None) -> list[int]:
    """Real-step marks ``0 < m_1 < ... < budget`` at which a run of ``budget`` steps is evaluated (mark 0 too).

    ``every`` replaces the schedule by a fixed spacing (smoke tests with tiny budgets).
    """
    if budget <= 0:
        raise ValueError(f"budget must be a positive number of real steps, got {budget}")
    if every is not None:
        if every <= 0:
            raise ValueError(f"mark spacing must be positive, got {every}")
        marks = set(range(0, budget, every))
    else:
        marks, start = {0}, 0
        for spacing, end in MARK_SCHEDULE:
            marks.update(range(start, min(end, budget), spacing))
            start = end
        marks.update(range(start, budget, MARK_SCHEDULE[-1][0]))
    marks.add(budget)
    return sorted(marks)


@dataclass(frozen=True)
class RunSpec:
    """One run of one arm: where its curve and checkpoint live and which marks it evaluates at."""

    arm: str
    task: str
    seed: int
    budget: int
    marks: list[int]
    horizon: int
    curve_path: Path
    checkpoint_dir: Path

    @property
    def name(self) -> str:
        return f"{self.task}/{self.arm}-s{self.seed}"

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this run."""
        return {"arm": self.arm, "task": self.task, "seed": self.seed, "budget": self.budget, "marks": self.marks,
                "horizon": self.horizon}


@dataclass(frozen=True)
class MarkResult:
    """Returns of the 10 paired evaluation episodes in both modes: ``stoch``, ``det``: [EVAL_EPISODES]."""

    stoch: np.ndarray
    det: np.ndarray


def run_episode(policy: Policy, env: Any, seed: int, deterministic: bool) -> float:
    """Undiscounted return of one episode from ``env.reset(seed=seed)`` until termination or the time limit."""
    obs, _ = env.reset(seed=seed)
    low, high = env.action_space.low, env.action_space.high
    total, done = 0.0, False
    while not done:
        action = np.clip(policy(np.asarray(obs), deterministic), low, high)
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
    return total


def evaluate(policy: Policy, env: Any, seeds: Sequence[int] = EVAL_SEEDS, single_mode: bool = False) -> MarkResult:
    """Run ``policy`` on ``env`` from every seed in ``seeds``, stochastic and deterministic.

    ``single_mode``: the policy has no deterministic mode (a random-shooting planner); its episodes are run once
    and reported in both columns.
    """
    stoch = [run_episode(policy, env, seed, deterministic=False) for seed in seeds]
    det = stoch if single_mode else [run_episode(policy, env, seed, deterministic=True) for seed in seeds]
    return MarkResult(np.asarray(stoch), np.asarray(det))


class RunClock:
    """Wall and CPU seconds of a run, cumulative over sessions (a resumed run starts from the saved totals).

    CPU seconds are this process's (user + system); runs are one-thread processes, so they are the run's cost.
    """

    def __init__(self, wall_s: float = 0.0, cpu_s: float = 0.0, eval_wall_s: float = 0.0) -> None:
        self._wall0, self._cpu0 = time.perf_counter() - wall_s, time.process_time() - cpu_s
        self.eval_wall_s = eval_wall_s

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self._wall0

    @property
    def cpu_s(self) -> float:
        return time.process_time() - self._cpu0

    def totals(self) -> dict[str, float]:
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "eval_wall_s": self.eval_wall_s}


class CurveLog:
    """One run's learning curve: a CSV with a row per evaluation mark (:data:`CURVE_COLUMNS`), flushed per row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = read_curve(path) if path.is_file() else []

    @property
    def last_steps(self) -> int:
        return int(self.rows[-1]["real_steps"]) if self.rows else -1

    def truncate(self, real_steps: int) -> None:
        """Drop rows after ``real_steps`` (rows written after the checkpoint a run resumes from) and rewrite."""
        kept = [row for row in self.rows if row["real_steps"] <= real_steps]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._write_all()

    def append(self, real_steps: int, result: MarkResult, clock: RunClock) -> dict[str, float]:
        row = {
            "real_steps": float(real_steps),
            "return_stoch": float(result.stoch.mean()), "return_det": float(result.det.mean()),
            "std_stoch": float(result.stoch.std()), "std_det": float(result.det.std()),
            **clock.totals(),
        }
        new_file = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
            if new_file:
                writer.writeheader()
            writer.writerow({key: _fmt(row[key]) for key in CURVE_COLUMNS})
        self.rows.append(row)
        return row

    def _write_all(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
            writer.writeheader()
            writer.writerows({key: _fmt(row[key]) for key in CURVE_COLUMNS} for row in self.rows)
        tmp.replace(self.path)


def read_curve(path: Path) -> list[dict[str, float]]:
    """Rows of a curve CSV as floats; a file without the protocol's columns is one clear error."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(CURVE_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a comparison curve (missing columns {', '.join(sorted(missing))})")
        return [{key: float(row[key]) for key in CURVE_COLUMNS} for row in reader]


def resume_state(path: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The run state a checkpoint saved with :func:`save_state` (None: start fresh).

    A state made for another run (other budget, marks, ...) ends the process with one line saying what to remove.
    """
    if not path.is_file():
        return None
    state: dict[str, Any] = json.loads(path.read_text())
    if state.get("identity") != spec.identity():
        raise SystemExit(f"{spec.name}: {path} belongs to {state.get('identity')}, not {spec.identity()}; "
                         f"remove {spec.checkpoint_dir} and {spec.curve_path} to start over")
    return state


def save_state(path: Path, spec: RunSpec, curve: CurveLog, clock: RunClock, **extra: Any) -> None:
    """Write the run's identity, last evaluated mark and clock (atomically) beside the arm's own checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"identity": spec.identity(), "last_mark": curve.last_steps, **clock.totals(),
                               **extra}, indent=1))
    tmp.replace(path)


def resume_curve(spec: RunSpec, state: dict[str, Any] | None) -> tuple[CurveLog, RunClock]:
    """The run's curve, cut back to the last mark its checkpoint had seen, and its clock from that checkpoint."""
    curve = CurveLog(spec.curve_path)
    if state is None:
        curve.truncate(-1)
        return curve, RunClock()
    curve.truncate(int(state["last_mark"]))
    return curve, RunClock(state["wall_s"], state["cpu_s"], state["eval_wall_s"])


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


class ProgressLine:
    """One line per evaluation mark: return, steps/s of this session, ETA of the run."""

    def __init__(self, name: str, start_steps: int, budget: int) -> None:
        self.name, self.start_steps, self.budget = name, start_steps, budget
        self.t0 = time.perf_counter()

    def __call__(self, row: dict[str, float]) -> str:
        steps = int(row["real_steps"])
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = (steps - self.start_steps) / elapsed
        eta = (self.budget - steps) / rate if rate > 0 else float("nan")
        return (f"{self.name}: {steps:>8d} steps  return stoch {row['return_stoch']:8.1f} det {row['return_det']:8.1f}"
                f"  {rate:6.1f} steps/s  ETA {_duration(eta)}  (wall {_duration(row['wall_s'])})")


class Heartbeat:
    """A line at most every ``period_s`` seconds between marks, so a long stretch (an MPC evaluation, a slow
    iteration) still shows progress; :meth:`reset` after any other progress line."""

    def __init__(self, period_s: float = 60.0) -> None:
        self.period_s = period_s
        self.last = time.perf_counter()

    def reset(self) -> None:
        self.last = time.perf_counter()

    def beat(self, message: Callable[[], str]) -> None:
        if time.perf_counter() - self.last >= self.period_s:
            print(message(), flush=True)
            self.reset()


@contextmanager
def ticking(message: Callable[[float], str], period_s: float = 60.0) -> Iterator[None]:
    """Print ``message(elapsed_s)`` every ``period_s`` seconds while the block runs (a call we cannot interrupt)."""
    stop = threading.Event()
    start = time.perf_counter()

    def tick() -> None:
        while not stop.wait(period_s):
            print(message(time.perf_counter() - start), flush=True)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"
