"""Pure (ROS-free, torch-free) logic of the on-robot controller: observation building, the safety chain,
and episode/transition bookkeeping. Unit-tested without ROS in ``tests/unit/test_safety.py``.

Observation from ``sensor_msgs/JointState`` (:func:`obs_from_joint_state`), resolved BY NAME for each
observation name ``n`` of the task, first rule that applies:

1. ``n`` is a joint name of the message: that joint's ``position``. The sim robot publishes its whole
   observation this way ("observation joint state": ``name = task.obs_names``, ``position = obs``, velocity
   and effort empty), which also covers entries that are no joint (root coordinates, contact forces,
   Reacher's cos/sin and fingertip vector).
2. ``n`` is ``qpos.<j>`` and ``<j>`` is a joint name: the ``position`` of ``<j>``.
3. ``n`` is ``qvel.<j>`` and ``<j>`` is a joint name: the ``velocity`` of ``<j>``.

So a real driver that publishes plain actuated joints (position + velocity) feeds the same function, as
long as it (or a state estimator beside it) also publishes the non-joint entries under their obs names.

Hold: whenever the chain cannot trust its input (e-stop, stale state, NaN/Inf observation or action) it
publishes the *hold action*: zero (clipped into the bounds), i.e. no actuator effort, because the MuJoCo
tasks are torque/force actuated and "keep pushing with the last torque" is not a safe default. A hold
bypasses the rate limit (stopping must be immediate) and becomes the rate limiter's new reference.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbmpo_ros.codec import CodecError, TransitionBatch


class HoldReason(str, enum.Enum):
    """Why a tick published the hold action instead of the policy's."""

    ESTOP = "estop"
    STALE = "stale_state"
    BAD_OBS = "bad_obs"
    BAD_ACTION = "bad_action"
    INACTIVE = "inactive"  # lifecycle: configured but not active (or not configured)


# ------------------------------------------------------------------------------------------ observations
def _resolve(names: Sequence[str], obs_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per obs entry: (field 0=position/1=velocity, index into the message arrays); CodecError if missing."""
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise CodecError("joint_states has duplicated joint names")
    fields, idx, missing = [], [], []
    for n in obs_names:
        prefix, _, joint = n.partition(".")
        if n in index:
            fields.append(0)
            idx.append(index[n])
        elif prefix in ("qpos", "qvel") and joint in index:
            fields.append(0 if prefix == "qpos" else 1)
            idx.append(index[joint])
        else:
            missing.append(n)
    if missing:
        raise CodecError(f"joint_states lacks observation entries {missing[:5]}")
    return np.asarray(fields, np.intp), np.asarray(idx, np.intp)


_RESOLVE_CACHE: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[np.ndarray, np.ndarray]] = {}


def obs_from_joint_state(msg: Any, obs_names: Sequence[str]) -> np.ndarray:
    """``sensor_msgs/JointState`` -> float64 observation ``[len(obs_names)]`` (mapping in the module docstring).

    NaN/Inf values are passed through (the safety chain decides what to do with them); a missing entry,
    duplicated names or arrays whose length differs from the names raise CodecError.
    """
    key = (tuple(msg.name), tuple(obs_names))
    resolved = _RESOLVE_CACHE.get(key)
    if resolved is None:
        resolved = _resolve(key[0], key[1])
        if len(_RESOLVE_CACHE) > 64:  # name lists are few and stable; bound the cache anyway
            _RESOLVE_CACHE.clear()
        _RESOLVE_CACHE[key] = resolved
    fields, idx = resolved
    n = len(key[0])
    pos = np.asarray(msg.position, dtype=np.float64)
    vel = np.asarray(msg.velocity, dtype=np.float64)
    if pos.shape != (n,):
        raise CodecError(f"joint_states position has {pos.size} values for {n} names")
    if fields.any() and vel.shape != (n,):
        raise CodecError(f"joint_states velocity has {vel.size} values for {n} names")
    out = pos[idx]
    if fields.any():
        out = np.where(fields == 1, vel[idx] if vel.size else 0.0, out)
    return out


# ------------------------------------------------------------------------------------------ safety chain
@dataclass
class SafetyChain:
    """Obs clip -> finiteness -> action clip -> per-tick rate limit, with hold on any doubt.

    ``rate_limit <= 0`` disables the rate limit; ``obs_clip <= 0`` disables the observation clip.
    """

    low: np.ndarray
    high: np.ndarray
    rate_limit: float = 0.0
    obs_clip: float = 0.0
    last_action: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.low = np.asarray(self.low, np.float64)
        self.high = np.asarray(self.high, np.float64)
        self.last_action = self.hold_action()

    def hold_action(self) -> np.ndarray:
        """Zero effort, clipped into the bounds (bounds that exclude 0 hold at the nearest bound)."""
        return np.clip(np.zeros_like(self.low), self.low, self.high)

    def clip_obs(self, obs: np.ndarray) -> np.ndarray:
        """Observation clipped to ``[-obs_clip, obs_clip]`` (NaN stays NaN, so it is still caught)."""
        obs = np.asarray(obs, np.float64)
        return np.clip(obs, -self.obs_clip, self.obs_clip) if self.obs_clip > 0 else obs

    def hold(self) -> np.ndarray:
        """The hold action, which also becomes the rate limiter's reference."""
        self.last_action = self.hold_action()
        return self.last_action.copy()

    def filter(self, raw_action: np.ndarray) -> tuple[np.ndarray, HoldReason | None]:
        """Raw policy action -> (executed action, None), or (hold action, BAD_ACTION) if it is not finite."""
        raw = np.asarray(raw_action, np.float64).reshape(-1)
        if raw.shape != self.low.shape or not np.isfinite(raw).all():
            return self.hold(), HoldReason.BAD_ACTION
        act = np.clip(raw, self.low, self.high)
        if self.rate_limit > 0:
            act = np.clip(act, self.last_action - self.rate_limit, self.last_action + self.rate_limit)
        self.last_action = act
        return act.copy(), None


def hold_reason(estop: bool, stale: bool, obs: np.ndarray | None) -> HoldReason | None:
    """Reasons checked before the policy runs, in priority order; None means the policy may act."""
    if estop:
        return HoldReason.ESTOP
    if stale:
        return HoldReason.STALE
    if obs is None or not np.isfinite(obs).all():
        return HoldReason.BAD_OBS
    return None


# ------------------------------------------------------------------------------------------ episodes
RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
DoneFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class EpisodeBook:
    """Pairs each tick's (obs, executed action) with the next tick's obs into transitions and batches them.

    Per tick: :meth:`observe` with the fresh, finite observation (closes the open transition), then
    :meth:`act` with the action executed on it (opens the next one). :meth:`drop_pending` forgets the open
    transition (after a hold or stale state its next obs cannot be trusted). A batch is cut every
    ``batch_size`` rows, at episode end, and when the policy id changes (one policy id per batch);
    :meth:`take_batches` hands them out with consecutive ``seq`` numbers.
    """

    horizon: int
    reward_fn: RewardFn
    done_fn: DoneFn
    batch_size: int
    robot: str = ""
    episode: int = 0
    step: int = 0
    episode_return: float = 0.0
    last_return: float | None = None
    last_reward: float = 0.0  # reward of the transition closed by the last observe()
    episodes_done: int = 0
    seq: int = 0
    _pending: tuple[np.ndarray, np.ndarray, str, bool] | None = None
    _rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, bool, int, int, bool]] = field(default_factory=list)
    _rows_policy: str = ""
    _ready: list[TransitionBatch] = field(default_factory=list)

    def observe(self, obs: np.ndarray) -> bool:
        """Close the open transition with ``obs``; True if that ended the episode (reset the robot, then
        call :meth:`new_episode`)."""
        if self._pending is None:
            return False
        prev, act, pid, adapted = self._pending
        self._pending = None
        nxt = np.asarray(obs, np.float64).copy()
        reward = float(np.asarray(self.reward_fn(prev[None], act[None], nxt[None]))[0])
        done = bool(np.asarray(self.done_fn(nxt[None]))[0])
        if self._rows and pid != self._rows_policy:
            self._emit()
        self._rows.append((prev, act, nxt, reward, done, self.step, self.episode, adapted))
        self.last_reward = reward
        self._rows_policy = pid
        self.step += 1
        self.episode_return += reward
        ended = done or self.step >= self.horizon
        if ended or len(self._rows) >= self.batch_size:
            self._emit()
        return ended

    def act(self, obs: np.ndarray, action: np.ndarray, policy_id: str, adapted: bool = False) -> None:
        """Open a transition: ``action`` was executed on ``obs`` under ``policy_id`` (the meta-policy's id;
        ``adapted``: by parameters adapted online from it)."""
        self._pending = (np.asarray(obs, np.float64).copy(), np.asarray(action, np.float64).copy(), policy_id,
                         bool(adapted))

    def drop_pending(self) -> None:
        """Forget the open transition."""
        self._pending = None

    def new_episode(self) -> None:
        """Start the next episode (after the robot was reset)."""
        self._emit()
        self.last_return = self.episode_return
        self.episodes_done += 1
        self.episode += 1
        self.step = 0
        self.episode_return = 0.0
        self._pending = None

    def take_batches(self) -> list[TransitionBatch]:
        """Batches due for publishing, oldest first (each handed out once)."""
        ready, self._ready = self._ready, []
        return ready

    def _emit(self) -> None:
        if not self._rows:
            return
        self._ready.append(_rows_to_batch(self._rows, self.robot, self._rows_policy, self.seq))
        self.seq += 1
        self._rows = []


def _rows_to_batch(rows: list[Any], robot: str, policy_id: str, seq: int) -> TransitionBatch:
    obs, act, nxt, rew, done, step, ep, adapted = zip(*rows, strict=True)
    return TransitionBatch(
        obs=np.stack(obs), act=np.stack(act), next_obs=np.stack(nxt), reward=np.asarray(rew, np.float64),
        done=np.asarray(done, bool), step=np.asarray(step, np.int64), episode=np.asarray(ep, np.int64),
        adapted=np.asarray(adapted, bool), robot=robot, policy_id=policy_id, seq=seq,
    )
