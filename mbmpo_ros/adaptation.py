"""Online few-shot adaptation on the robot: pure logic (no ROS, no torch), driven by the controller's tick.

:class:`OnlineAdapter` is the state machine. It runs the meta-policy ``theta`` for ``episodes`` complete
episodes, recording per step the observation, the RAW sampled action (before clipping: the log-probability
of the PG step is of what the policy sampled) and the reward. With that batch it builds an
:class:`AdaptJob`: advantages computed as in training (:func:`compute_advantages` on numpy arrays, linear
feature baseline, the policy's ``gamma`` / ``gae_lambda``, normalized over all episodes of the batch) and
one inner step ``OnnxPolicy.adapt`` (the exact inner step of meta-training). The job runs OFF the control
tick (the node hands it to a worker thread); its result is :meth:`deliver`-ed, and the adapter switches to
the new parameters at the next EPISODE START (a tick boundary at which no episode is in progress), so every
episode is run by one parameter set. It repeats from the current adapted parameters with data collected
with them until ``steps_max`` inner steps have been taken, then keeps the last ones.

Revert rule: after each step the new parameters run ``episodes`` episodes; if their mean return is below
the PRE-ADAPTATION return (mean return of ``theta``'s first batch) minus ``revert_margin`` (absolute, in
return units; ``inf`` never reverts), the adapter goes back to ``theta`` and stops adapting until a new
meta-policy arrives (:meth:`reset`): adapting again from the same data would only repeat the failure.

Which episodes count: only complete episodes that started at step 0 under the current parameters and were
not interrupted (:meth:`drop` after a hold, a ramp, a skipped tick); the others are discarded.

Thread safety: :meth:`deliver` may be called from any thread; every other method from the tick only.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mbmpo_core.advantages import compute_advantages
from mbmpo_core.episodes import pad_episodes

Params = dict[str, np.ndarray]


class AdaptablePolicy(Protocol):
    """What the adapter needs of :class:`mbmpo_core.onnx_runtime.OnnxPolicy`."""

    metadata: dict[str, Any]

    @property
    def can_adapt(self) -> bool: ...

    def adapt(self, params: Mapping[str, np.ndarray] | None, obs: np.ndarray, act: np.ndarray,
              advantages: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]: ...


class Phase(str, enum.Enum):
    """Where the adapter is."""

    DISABLED = "disabled"      # no policy, no adapt graph, or adaptation switched off
    COLLECTING = "collecting"  # running the current parameters for a batch of episodes
    COMPUTING = "computing"    # a job is out (worker thread); episodes meanwhile are not used
    DONE = "done"              # steps_max reached, or reverted to theta


@dataclass
class Episode:
    """One episode's records; ``version`` = the parameter set that ran it."""

    version: int
    obs: list[np.ndarray] = field(default_factory=list)
    act: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    tainted: bool = False

    @property
    def ret(self) -> float:
        return float(sum(self.rewards))


def episodes_to_arrays(episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Episodes -> ``obs [E, H, obs_dim], act [E, H, act_dim], rewards [E, H], mask [E, H]`` (float64),
    zero-padded with mask 0 to the longest episode (as the trainer pads real episodes)."""
    return pad_episodes([(np.stack(e.obs), np.stack(e.act), np.asarray(e.rewards)) for e in episodes])


@dataclass
class AdaptJob:
    """One inner step to run off the tick: ``run()`` is pure (numpy + onnxruntime) and thread-safe."""

    policy: AdaptablePolicy
    params: Params | None  # the parameters that collected the episodes (None = theta)
    episodes: list[Episode]
    gamma: float
    lam: float
    generation: int

    def advantages(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(obs, act, advantages, mask)``, each flattened ``[E * H, ...]``: the adapt graph's inputs."""
        obs, act, rewards, mask = episodes_to_arrays(self.episodes)
        adv, _ = compute_advantages(rewards, obs, mask, self.gamma, self.lam)
        flat = obs.shape[0] * obs.shape[1]
        return obs.reshape(flat, -1), act.reshape(flat, -1), adv.reshape(flat), mask.reshape(flat)

    def run(self) -> AdaptResult:
        """theta' = params + alpha * grad J(params) on this batch."""
        obs, act, adv, mask = self.advantages()
        return AdaptResult(self.policy.adapt(self.params, obs, act, adv, mask), self.generation)


@dataclass
class AdaptResult:
    """Adapted parameters, or ``None`` if the job failed (then the adapter stays where it is)."""

    params: Params | None
    generation: int


class OnlineAdapter:
    """Few-shot adaptation state machine (see module docstring).

    Per control step, in this order: :meth:`begin_step` (params to act with; switches at episode start),
    :meth:`record` (the raw action sampled on the obs), and on the next tick :meth:`close` (its reward,
    whether the episode ended), which may return an :class:`AdaptJob`. :meth:`drop` marks the running
    episode unusable.
    """

    def __init__(self, episodes: int = 2, steps_max: int = 3, revert_margin: float = float("inf")) -> None:
        if episodes < 1 or steps_max < 0 or revert_margin < 0:
            raise ValueError("need episodes >= 1, steps_max >= 0, revert_margin >= 0")
        self.episodes, self.steps_max, self.revert_margin = episodes, steps_max, revert_margin
        self._lock = threading.Lock()
        self._generation = 0
        self.reset(None)

    # -------------------------------------------------------------------------------------- state
    def reset(self, policy: AdaptablePolicy | None, enabled: bool = True) -> None:
        """Start over with a new meta-policy (None: nothing to adapt); results of older jobs are ignored."""
        with self._lock:
            self._generation += 1
            self._delivered: AdaptResult | None = None
        self.policy = policy
        can = policy is not None and enabled and policy.can_adapt and self.steps_max > 0
        self.phase = Phase.COLLECTING if can else Phase.DISABLED
        self.params: Params | None = None  # None = theta
        self.steps = 0
        self.reverted = 0
        self.pre_return: float | None = None
        self.post_return: float | None = None
        self._version = 0  # bumped at every switch of parameters
        self._batch: list[Episode] = []
        self._ep: Episode | None = None
        self._open = False

    @property
    def adapted(self) -> bool:
        """True while acting with adapted parameters (not theta)."""
        return self.params is not None

    # -------------------------------------------------------------------------------------- per step
    def begin_step(self, step: int) -> Params | None:
        """Params for this step (None = theta). Between episodes, a delivered result is switched in first;
        an episode whose first recorded step is not ``step == 0`` is not used."""
        if self._ep is None:
            self._apply_delivered()
            self._ep = Episode(self._version, tainted=step != 0)
        return self.params

    def record(self, obs: np.ndarray, raw_action: np.ndarray) -> None:
        """The policy (with :meth:`begin_step`'s params) sampled ``raw_action`` on ``obs``."""
        if self._ep is None:
            return
        self._ep.obs.append(np.asarray(obs, np.float64).reshape(-1).copy())
        self._ep.act.append(np.asarray(raw_action, np.float64).reshape(-1).copy())
        self._open = True

    def drop(self) -> None:
        """The running episode is interrupted (hold, ramp, unrecorded action): do not use it."""
        if self._ep is not None:
            self._ep.tainted = True
        self._open = False

    def close(self, reward: float, ended: bool) -> AdaptJob | None:
        """The recorded step got ``reward``; ``ended``: that was the episode's last step. Returns a job to
        run off the tick when a batch is complete."""
        if self._ep is not None and self._open:
            self._ep.rewards.append(float(reward))
        elif self._ep is not None:
            self._ep.tainted = True  # a reward without its action: the step was not recorded
        self._open = False
        if not ended or self._ep is None:
            return None
        ep, self._ep = self._ep, None
        return self._finish(ep)

    # -------------------------------------------------------------------------------------- transitions
    def _finish(self, ep: Episode) -> AdaptJob | None:
        if self.phase is not Phase.COLLECTING or ep.tainted or ep.version != self._version or not ep.rewards:
            return None
        self._batch.append(ep)
        if len(self._batch) < self.episodes:
            return None
        batch, self._batch = self._batch, []
        mean = float(np.mean([e.ret for e in batch]))
        if self._version == 0:
            self.pre_return = mean
        else:
            self.post_return = mean
            assert self.pre_return is not None
            if mean < self.pre_return - self.revert_margin:
                self._revert()
                return None
        if self.steps >= self.steps_max:
            self.phase = Phase.DONE
            return None
        self.phase = Phase.COMPUTING
        assert self.policy is not None
        meta = self.policy.metadata
        return AdaptJob(self.policy, self.params, batch, float(meta.get("gamma", 0.99)),
                        float(meta.get("gae_lambda", 1.0)), self._generation)

    def _revert(self) -> None:
        self.params = None
        self.reverted += 1
        self._version += 1
        self.phase = Phase.DONE

    def deliver(self, result: AdaptResult) -> None:
        """A job's result (any thread); used at the next episode start unless the policy changed since."""
        with self._lock:
            if result.generation == self._generation:
                self._delivered = result

    def _apply_delivered(self) -> None:
        with self._lock:
            result, self._delivered = self._delivered, None
        if result is None or self.phase is not Phase.COMPUTING:
            return
        if result.params is None:  # the job failed: keep the current parameters, stop adapting
            self.phase = Phase.DONE
            return
        self.params = result.params
        self.steps += 1
        self._version += 1
        self.phase = Phase.COLLECTING  # evaluate the new parameters (and collect data for the next step)

    def summary(self) -> dict[str, str]:
        """Diagnostics values (strings; '' for a return not measured yet)."""
        def fmt(x: float | None) -> str:
            return "" if x is None else f"{x:.6g}"

        return {
            "adapt.phase": self.phase.value, "adapt.steps": str(self.steps), "adapt.reverted": str(self.reverted),
            "adapt.adapted": str(self.adapted), "adapt.pre_return": fmt(self.pre_return),
            "adapt.post_return": fmt(self.post_return),
        }
