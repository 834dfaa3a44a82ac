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
4. ``n`` is ``effort.<j>`` and ``<j>`` is a joint name: the ``effort`` of ``<j>``.

So a real driver that publishes plain actuated joints (position, velocity, effort) feeds the same function, as
long as it (or a state estimator beside it) also publishes the non-joint entries under their obs names.

Hold: whenever the chain cannot trust its input (e-stop, stale state, NaN/Inf observation or action, no policy
on a deployed robot, an inactive lifecycle state) it publishes the *hold action*, in one of two modes:

* ``zero`` (default): zero clipped into the bounds, i.e. no actuator effort. Right for torque/force and velocity
  commands (the MuJoCo tasks are torque actuated): "keep pushing with the last torque" is not a safe default.
* ``position``: the last finite measured position of each commanded joint, clipped into the bounds. Right for
  position commands, where zero would drive every joint to its zero angle. Before any position was measured
  there is nothing safe to command, so a hold publishes nothing (the robot's driver keeps its own state).

A hold bypasses the rate limit (stopping must be immediate) and becomes the rate limiter's new reference.
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
    NO_POLICY = "no_policy"  # no policy yet and no warm-up asked for (a deployed robot)


class HoldMode(str, enum.Enum):
    """What the hold action commands (see module docstring)."""

    ZERO = "zero"
    POSITION = "position"


# ------------------------------------------------------------------------------------------ observations
_FIELDS = {"qpos": 0, "qvel": 1, "effort": 2}  # obs name prefix -> JointState array (position, velocity, effort)


def _resolve(names: Sequence[str], obs_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per obs entry: (field 0=position/1=velocity/2=effort, index into the message arrays); CodecError if
    missing."""
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise CodecError("joint_states has duplicated joint names")
    fields, idx, missing = [], [], []
    for n in obs_names:
        prefix, _, joint = n.partition(".")
        if n in index:
            fields.append(0)
            idx.append(index[n])
        elif prefix in _FIELDS and joint in index:
            fields.append(_FIELDS[prefix])
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
    out = np.empty(len(idx))
    for code, field_name in enumerate(("position", "velocity", "effort")):
        used = fields == code
        if not used.any():
            continue  # a driver may leave the arrays it has no values for empty
        values = np.asarray(getattr(msg, field_name), dtype=np.float64)
        if values.shape != (n,):
            raise CodecError(f"joint_states {field_name} has {values.size} values for {n} names")
        out[used] = values[idx[used]]
    return out


def position_indices(obs_names: Sequence[str], joints: Sequence[str]) -> np.ndarray:
    """Index in the observation of each joint's position (``qpos.<j>`` or ``<j>``): what a position hold
    commands. ``ValueError`` (one line) naming the joints whose position the observation lacks."""
    index = {n: i for i, n in enumerate(obs_names)}
    found = [index.get(f"qpos.{j}", index.get(j)) for j in joints]
    missing = [j for j, i in zip(joints, found, strict=True) if i is None]
    if missing or not joints:
        raise ValueError(f"hold_mode position needs the position of every commanded joint in the observation "
                         f"(qpos.<joint>); missing: {missing or 'no joints named'}")
    return np.asarray(found, np.intp)


# ------------------------------------------------------------------------------------------ safety chain
@dataclass
class SafetyChain:
    """Obs clip -> finiteness -> action clip -> per-tick rate limit, with hold on any doubt.

    ``rate_limit <= 0`` disables the rate limit; ``obs_clip <= 0`` disables the observation clip.
    ``position_index`` (obs index of each commanded joint's position, :func:`position_indices`) selects the
    ``position`` hold mode; None is the ``zero`` mode (see module docstring).
    """

    low: np.ndarray
    high: np.ndarray
    rate_limit: float = 0.0
    obs_clip: float = 0.0
    position_index: np.ndarray | None = None
    last_action: np.ndarray | None = field(init=False)  # the rate limiter's reference
    _position: np.ndarray | None = field(init=False, default=None)  # last finite measured joint positions

    def __post_init__(self) -> None:
        self.low = np.asarray(self.low, np.float64)
        self.high = np.asarray(self.high, np.float64)
        if self.position_index is not None and self.position_index.shape != self.low.shape:
            raise ValueError(f"{self.position_index.size} joint positions for {self.low.size} actions")
        self.last_action = self.hold_action()

    @property
    def mode(self) -> HoldMode:
        return HoldMode.ZERO if self.position_index is None else HoldMode.POSITION

    def observe(self, obs: np.ndarray) -> None:
        """Remember the commanded joints' positions of a finite observation (the position hold's target)."""
        if self.position_index is not None and np.isfinite(obs).all():
            self._position = np.asarray(obs, np.float64)[self.position_index].copy()

    def hold_action(self) -> np.ndarray | None:
        """Zero mode: zero effort clipped into the bounds (bounds that exclude 0 hold at the nearest bound).
        Position mode: the last measured positions clipped into the bounds; None if none was measured yet."""
        if self.position_index is None:
            return np.clip(np.zeros_like(self.low), self.low, self.high)
        return None if self._position is None else np.clip(self._position, self.low, self.high)

    def clip_obs(self, obs: np.ndarray) -> np.ndarray:
        """Observation clipped to ``[-obs_clip, obs_clip]`` (NaN stays NaN, so it is still caught)."""
        obs = np.asarray(obs, np.float64)
        return np.clip(obs, -self.obs_clip, self.obs_clip) if self.obs_clip > 0 else obs

    def hold(self) -> np.ndarray | None:
        """The hold action (None: nothing safe to command yet), which also becomes the rate limiter's reference."""
        self.last_action = self.hold_action()
        return None if self.last_action is None else self.last_action.copy()

    def filter(self, raw_action: np.ndarray) -> tuple[np.ndarray | None, HoldReason | None]:
        """Raw policy action -> (executed action, None), or (hold action, BAD_ACTION) if it is not finite."""
        raw = np.asarray(raw_action, np.float64).reshape(-1)
        if raw.shape != self.low.shape or not np.isfinite(raw).all():
            return self.hold(), HoldReason.BAD_ACTION
        act = np.clip(raw, self.low, self.high)
        reference = self.last_action if self.last_action is not None else self.hold_action()
        if self.rate_limit > 0 and reference is not None:
            act = np.clip(act, reference - self.rate_limit, reference + self.rate_limit)
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
    session: str = ""  # the controller's run: seq counts from 0 in each (see mbmpo_ros.codec)
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
        self._ready.append(_rows_to_batch(self._rows, self.robot, self._rows_policy, self.seq, self.session))
        self.seq += 1
        self._rows = []


def _rows_to_batch(rows: list[Any], robot: str, policy_id: str, seq: int, session: str = "") -> TransitionBatch:
    obs, act, nxt, rew, done, step, ep, adapted = zip(*rows, strict=True)
    return TransitionBatch(
        obs=np.stack(obs), act=np.stack(act), next_obs=np.stack(nxt), reward=np.asarray(rew, np.float64),
        done=np.asarray(done, bool), step=np.asarray(step, np.int64), episode=np.asarray(ep, np.int64),
        adapted=np.asarray(adapted, bool), robot=robot, policy_id=policy_id, seq=seq, session=session,
    )
