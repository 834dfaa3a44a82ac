"""Online few-shot adaptation on the robot: pure logic (no ROS, no torch), driven by the controller's tick.

:class:`OnlineAdapter` is the state machine. It runs the meta-policy ``theta`` for ``episodes`` complete
episodes, recording per step the observation, the RAW sampled action (before clipping: the log-probability
of the PG step is of what the policy sampled), the EXECUTED action (what the robot got: the dynamics models
learned from it), the reward and, at the end, the last observation. With that batch it builds an
:class:`AdaptJob` that takes one inner step ``OnnxPolicy.adapt`` (the exact inner step of meta-training) in one
of two modes (:class:`AdaptMode`):

* ``model`` (the bundle carries the dynamics ensemble): the real transitions only IDENTIFY the dynamics (a ridge
  fit of each member's last layer, :func:`mbmpo_core.identification.identify`) and give the START states; the
  inner step is taken on ``rollouts`` imagined rollouts of the policy's horizon in the identified best member
  (:func:`mbmpo_core.onnx_imagination.imagine`): the distribution the meta-policy was trained to adapt from, with
  the real robot as one more task (:class:`ModelImagination`).
* ``direct``: the step on the real episodes themselves (the controller's original adaptation, for comparison).

Either way the advantages are computed as in training (:func:`compute_advantages` on numpy arrays, linear
feature baseline, the policy's ``gamma`` / ``gae_lambda``, normalized over the batch). The job runs OFF the
control tick (the node hands it to a worker thread); its result is :meth:`deliver`-ed, and the adapter switches
to the new parameters at the next EPISODE START (a tick boundary at which no episode is in progress), so every
episode is run by one parameter set. It repeats from the current adapted parameters with data collected with
them until ``steps_max`` inner steps have been taken, then keeps the last ones.

Revert rule: after each step the new parameters run ``episodes`` episodes; if their mean return is below
the PRE-ADAPTATION return (mean return of ``theta``'s first batch) minus ``revert_margin`` (absolute, in
return units; ``inf`` never reverts), the adapter goes back to ``theta`` and stops adapting until a new
meta-policy arrives (:meth:`reset`): adapting again from the same data would only repeat the failure.

Which episodes count: only complete episodes that started at step 0 under the current parameters and were
not interrupted (:meth:`drop` after a hold, a ramp, a skipped tick); the others are discarded.

Records: every finished batch and every step's result become one JSON-ready dict each (:meth:`take_records`,
:meth:`AdaptResult.record`), which the controller appends to ``adaptation.jsonl``.

Thread safety: :meth:`deliver` may be called from any thread; every other method from the tick only.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mbmpo_core.advantages import compute_advantages
from mbmpo_core.episodes import pad_episodes
from mbmpo_core.identification import DEFAULT_HOLDOUT, identify
from mbmpo_core.onnx_imagination import imagine

Params = dict[str, np.ndarray]
IDENT_HOLDOUT = DEFAULT_HOLDOUT  # share of the real transitions (the last episodes) that measures the errors


class AdaptablePolicy(Protocol):
    """What the adapter needs of :class:`mbmpo_core.onnx_runtime.OnnxPolicy`."""

    metadata: dict[str, Any]

    @property
    def can_adapt(self) -> bool: ...

    def adapt(self, params: Mapping[str, np.ndarray] | None, obs: np.ndarray, act: np.ndarray,
              advantages: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]: ...


class AdaptMode(str, enum.Enum):
    """Where the inner step's data comes from (see module docstring)."""

    MODEL = "model"    # imagined rollouts in the identified dynamics model
    DIRECT = "direct"  # the real episodes


class Phase(str, enum.Enum):
    """Where the adapter is."""

    DISABLED = "disabled"      # no policy, no adapt graph, or adaptation switched off
    COLLECTING = "collecting"  # running the current parameters for a batch of episodes
    COMPUTING = "computing"    # a job is out (worker thread); episodes meanwhile are not used
    DONE = "done"              # steps_max reached, or reverted to theta


@dataclass
class Episode:
    """One episode's records; ``version`` = the parameter set that ran it. ``executed`` (the actions the robot
    got) and ``last_obs`` (the observation after the last step) are empty where the recorder did not give them."""

    version: int
    obs: list[np.ndarray] = field(default_factory=list)
    act: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    tainted: bool = False
    executed: list[np.ndarray] = field(default_factory=list)
    last_obs: np.ndarray | None = None

    @property
    def ret(self) -> float:
        return float(sum(self.rewards))


def episodes_to_arrays(episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Episodes -> ``obs [E, H, obs_dim], act [E, H, act_dim], rewards [E, H], mask [E, H]`` (float64),
    zero-padded with mask 0 to the longest episode (as the trainer pads real episodes)."""
    return pad_episodes([(np.stack(e.obs), np.stack(e.act), np.asarray(e.rewards)) for e in episodes])


def episode_transitions(episodes: list[Episode], action_low: np.ndarray,
                        action_high: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The real transitions of ``episodes`` in episode order: ``obs [N, obs_dim], act [N, act_dim] executed,
    next_obs [N, obs_dim]`` (float64). An episode without its executed actions uses its raw actions clipped to
    the bounds (what the safety chain does without a rate limit); one without ``last_obs`` loses its last step."""
    obs, act, nxt = [], [], []
    for e in episodes:
        o = np.stack(e.obs)
        a = np.stack(e.executed) if len(e.executed) == len(e.act) else np.clip(np.stack(e.act), action_low,
                                                                                action_high)
        following = o[1:] if e.last_obs is None else np.concatenate([o[1:], e.last_obs[None]])
        n = len(following)
        obs.append(o[:n])
        act.append(a[:n])
        nxt.append(following)
    return np.concatenate(obs), np.concatenate(act), np.concatenate(nxt)


# ------------------------------------------------------------------------------------------ model mode
@dataclass
class Imagined:
    """What a model step hands the inner step: rollouts ``obs [N, H, obs_dim], act [N, H, act_dim]`` (raw
    samples), ``rewards [N, H], mask [N, H]``, and what identification found (``error_before/after [K]``:
    held-out one-step MSE of each member with its trained / identified last layer; ``member``: the one used;
    ``refitted``: whether with its identified last layer, else the trained one)."""

    obs: np.ndarray
    act: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray
    member: int
    error_before: np.ndarray
    error_after: np.ndarray
    identify_s: float
    imagine_s: float
    refitted: bool = True


class ImagineStep(Protocol):
    """Identify the dynamics on the real episodes, then imagine rollouts of ``params`` from their states."""

    def __call__(self, policy: Any, params: Params | None, episodes: list[Episode],
                 rng: np.random.Generator) -> Imagined: ...


@dataclass
class ModelImagination:
    """The model-mode step with the bundle's ONNX ensemble (:class:`mbmpo_core.onnx_dynamics.OnnxEnsemble`).

    ``reward``/``done``: the task's numpy model-space functions; ``horizon``: the policy's (training's) imagined
    horizon; ``ridge``: :func:`~mbmpo_core.identification.identify`'s (relative) ridge. Start states are the
    batch's episode starts, drawn with replacement, as training starts imagination from stored episode starts.
    The model imagined in is the one with the lowest held-out error: the best member with its identified last
    layer, or, if a trained last layer predicted the held-out transitions better, that member as trained.
    ``identify_fn``/``imagine_fn`` default to the ONNX implementations (tests inject others).
    """

    dynamics: Any
    reward: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    done: Callable[[np.ndarray], np.ndarray] | None
    action_low: np.ndarray
    action_high: np.ndarray
    rollouts: int
    horizon: int
    ridge: float
    holdout: float = IDENT_HOLDOUT
    identify_fn: Callable[..., Any] = identify
    imagine_fn: Callable[..., Any] = imagine

    def __call__(self, policy: Any, params: Params | None, episodes: list[Episode],
                 rng: np.random.Generator) -> Imagined:
        t0 = time.perf_counter()
        obs, act, next_obs = episode_transitions(episodes, self.action_low, self.action_high)
        found = self.identify_fn(self.dynamics, obs, act, next_obs, ridge=self.ridge, holdout=self.holdout)
        t1 = time.perf_counter()
        before, after = np.asarray(found.error_before, float), np.asarray(found.error_after, float)
        refitted = bool(after[found.best_member] <= before.min())
        member = int(found.best_member) if refitted else int(np.argmin(before))
        firsts = np.stack([e.obs[0] for e in episodes])
        starts = firsts[rng.integers(0, len(firsts), size=self.rollouts)]
        o, a, r, m = self.imagine_fn(self.dynamics, member, found.last_layer if refitted else None, policy, params,
                                     starts, self.horizon, self.reward, self.done, rng, self.action_low,
                                     self.action_high)
        return Imagined(np.asarray(o, np.float64), np.asarray(a, np.float64), np.asarray(r, np.float64),
                        np.asarray(m, np.float64), member, before, after, t1 - t0, time.perf_counter() - t1,
                        refitted)


# ------------------------------------------------------------------------------------------ the job
@dataclass
class AdaptJob:
    """One inner step to run off the tick: ``run()`` is pure (numpy + onnxruntime) and thread-safe.

    ``imagination`` None: the direct step on ``episodes``; else the model step (see module docstring) with a
    random stream seeded by ``seed``, the generation and the step number (reproducible)."""

    policy: AdaptablePolicy
    params: Params | None  # the parameters that collected the episodes (None = theta)
    episodes: list[Episode]
    gamma: float
    lam: float
    generation: int
    imagination: ImagineStep | None = None
    step: int = 1  # this job's inner step number (1 = the first from theta)
    seed: int = 0

    @property
    def mode(self) -> AdaptMode:
        return AdaptMode.DIRECT if self.imagination is None else AdaptMode.MODEL

    def advantages(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(obs, act, advantages, mask)`` of the REAL episodes, each flattened ``[E * H, ...]``: the adapt
        graph's inputs in direct mode."""
        obs, act, rewards, mask = episodes_to_arrays(self.episodes)
        return self._step_inputs(obs, act, rewards, mask)

    def _step_inputs(self, obs: np.ndarray, act: np.ndarray, rewards: np.ndarray,
                     mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``[N, H, ...]`` rollouts -> flattened adapt-graph inputs with training's advantages."""
        adv, _ = compute_advantages(rewards, obs, mask, self.gamma, self.lam)
        flat = obs.shape[0] * obs.shape[1]
        return obs.reshape(flat, -1), act.reshape(flat, -1), adv.reshape(flat), mask.reshape(flat)

    def run(self) -> AdaptResult:
        """theta' = params + alpha * grad J(params) on the real batch (direct) or on imagined rollouts (model)."""
        started = time.perf_counter()
        result = AdaptResult(None, self.generation, mode=self.mode.value, step=self.step,
                             batch_return=float(np.mean([e.ret for e in self.episodes])))
        if self.imagination is None:
            inputs = self.advantages()
        else:
            rng = np.random.default_rng([self.seed, self.generation, self.step])
            imagined = self.imagination(self.policy, self.params, self.episodes, rng)
            result.note_imagined(imagined)
            inputs = self._step_inputs(imagined.obs, imagined.act, imagined.rewards, imagined.mask)
        t = time.perf_counter()
        result.params = self.policy.adapt(self.params, *inputs)
        result.update_s = time.perf_counter() - t
        result.job_s = time.perf_counter() - started
        return result


@dataclass
class AdaptResult:
    """Adapted parameters, or ``None`` if the job failed (then the adapter stays where it is), with what the job
    measured: ``mode``, ``step`` (1-based), the real ``batch_return`` it adapted from, seconds, and in model mode
    the member used, the identification errors ``[K]`` and the imagined rollouts' mean return."""

    params: Params | None
    generation: int
    mode: str = AdaptMode.DIRECT.value
    step: int = 0
    batch_return: float = math.nan
    job_s: float = math.nan
    identify_s: float = math.nan
    imagine_s: float = math.nan
    update_s: float = math.nan
    member: int = -1
    refitted: bool = False
    error_before: list[float] = field(default_factory=list)
    error_after: list[float] = field(default_factory=list)
    imagined_return: float = math.nan
    error: str = ""

    def note_imagined(self, imagined: Imagined) -> None:
        self.member, self.refitted = imagined.member, imagined.refitted
        self.error_before = [float(x) for x in imagined.error_before]
        self.error_after = [float(x) for x in imagined.error_after]
        self.identify_s, self.imagine_s = imagined.identify_s, imagined.imagine_s
        self.imagined_return = float(np.mean((imagined.rewards * imagined.mask).sum(-1)))

    @property
    def ident_errors(self) -> tuple[float, float]:
        """Held-out one-step error of the member used with its trained and its identified last layer (NaN if
        none)."""
        if self.member < 0 or self.member >= len(self.error_before):
            return math.nan, math.nan
        return self.error_before[self.member], self.error_after[self.member]

    def record(self) -> dict[str, Any]:
        """The ``adaptation.jsonl`` line of this step (NaN as null: JSON has no NaN)."""
        values = {"event": "step", "generation": self.generation, "step": self.step, "mode": self.mode,
                  "ok": self.params is not None, "error": self.error, "batch_return": self.batch_return,
                  "job_s": self.job_s, "identify_s": self.identify_s, "imagine_s": self.imagine_s,
                  "update_s": self.update_s, "member": self.member, "refitted": self.refitted,
                  "ident_error_before": self.error_before,
                  "ident_error_after": self.error_after, "imagined_return": self.imagined_return}
        return {k: _json_number(v) for k, v in values.items()}


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_number(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ the state machine
class OnlineAdapter:
    """Few-shot adaptation state machine (see module docstring).

    Per control step, in this order: :meth:`begin_step` (params to act with; switches at episode start),
    :meth:`record` (the raw action sampled on the obs, and what was executed), and on the next tick
    :meth:`close` (its reward, whether the episode ended, the observation it led to), which may return an
    :class:`AdaptJob`. :meth:`drop` marks the running episode unusable.
    """

    def __init__(self, episodes: int = 2, steps_max: int = 3, revert_margin: float = float("inf"),
                 seed: int = 0) -> None:
        if episodes < 1 or steps_max < 0 or revert_margin < 0:
            raise ValueError("need episodes >= 1, steps_max >= 0, revert_margin >= 0")
        self.episodes, self.steps_max, self.revert_margin, self.seed = episodes, steps_max, revert_margin, seed
        self._lock = threading.Lock()
        self._generation = 0
        self.last_result: AdaptResult | None = None
        self.reset(None)

    # -------------------------------------------------------------------------------------- state
    def reset(self, policy: AdaptablePolicy | None, enabled: bool = True,
              imagination: ImagineStep | None = None) -> None:
        """Start over with a new meta-policy (None: nothing to adapt); results of older jobs are ignored.
        ``imagination``: the model step for this policy (None: direct mode)."""
        with self._lock:
            self._generation += 1
            self._delivered: AdaptResult | None = None
        self.policy = policy
        self.imagination = imagination
        can = policy is not None and enabled and policy.can_adapt and self.steps_max > 0
        self.phase = Phase.COLLECTING if can else Phase.DISABLED
        self.params: Params | None = None  # None = theta
        self.steps = 0
        self.reverted = 0
        self.pre_return: float | None = None
        self.post_return: float | None = None
        self.last_result = None
        self._records: list[dict[str, Any]] = []
        self._version = 0  # bumped at every switch of parameters
        self._batch: list[Episode] = []
        self._ep: Episode | None = None
        self._open = False

    @property
    def mode(self) -> AdaptMode:
        return AdaptMode.DIRECT if self.imagination is None else AdaptMode.MODEL

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

    def record(self, obs: np.ndarray, raw_action: np.ndarray, executed: np.ndarray | None = None) -> None:
        """The policy (with :meth:`begin_step`'s params) sampled ``raw_action`` on ``obs``; the robot got
        ``executed`` (None: not known, the raw action clipped to the bounds is assumed)."""
        if self._ep is None:
            return
        self._ep.obs.append(np.asarray(obs, np.float64).reshape(-1).copy())
        self._ep.act.append(np.asarray(raw_action, np.float64).reshape(-1).copy())
        if executed is not None:
            self._ep.executed.append(np.asarray(executed, np.float64).reshape(-1).copy())
        self._open = True

    def drop(self) -> None:
        """The running episode is interrupted (hold, ramp, unrecorded action): do not use it."""
        if self._ep is not None:
            self._ep.tainted = True
        self._open = False

    def close(self, reward: float, ended: bool, next_obs: np.ndarray | None = None) -> AdaptJob | None:
        """The recorded step got ``reward`` and led to ``next_obs``; ``ended``: that was the episode's last step.
        Returns a job to run off the tick when a batch is complete."""
        if self._ep is not None and self._open:
            self._ep.rewards.append(float(reward))
        elif self._ep is not None:
            self._ep.tainted = True  # a reward without its action: the step was not recorded
        self._open = False
        if not ended or self._ep is None:
            return None
        ep, self._ep = self._ep, None
        if next_obs is not None:
            ep.last_obs = np.asarray(next_obs, np.float64).reshape(-1).copy()
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
                self._note_batch(mean, len(batch), reverted=True)
                return None
        self._note_batch(mean, len(batch), reverted=False)
        if self.steps >= self.steps_max:
            self.phase = Phase.DONE
            return None
        self.phase = Phase.COMPUTING
        assert self.policy is not None
        meta = self.policy.metadata
        return AdaptJob(self.policy, self.params, batch, float(meta.get("gamma", 0.99)),
                        float(meta.get("gae_lambda", 1.0)), self._generation, self.imagination,
                        step=self.steps + 1, seed=self.seed)

    def _note_batch(self, mean: float, episodes: int, reverted: bool) -> None:
        """A record of a finished batch: the return of the parameters after ``steps`` inner steps."""
        self._records.append({"event": "batch", "generation": self._generation, "steps": self.steps,
                              "mode": self.mode.value, "return": mean, "episodes": episodes, "reverted": reverted})

    def take_records(self) -> list[dict[str, Any]]:
        """The batch records since the last call (tick thread)."""
        records, self._records = self._records, []
        return records

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
        self.last_result = result
        if result.params is None:  # the job failed: keep the current parameters, stop adapting
            self.phase = Phase.DONE
            return
        self.params = result.params
        self.steps += 1
        self._version += 1
        self.phase = Phase.COLLECTING  # evaluate the new parameters (and collect data for the next step)

    def summary(self) -> dict[str, str]:
        """Diagnostics values (strings; '' for a value not measured yet)."""
        def fmt(x: float | None) -> str:
            return "" if x is None or not math.isfinite(x) else f"{x:.6g}"

        last = self.last_result
        before, after = last.ident_errors if last is not None else (math.nan, math.nan)
        return {
            "adapt.phase": self.phase.value, "adapt.mode": "" if self.policy is None else self.mode.value,
            "adapt.steps": str(self.steps),
            "adapt.reverted": str(self.reverted), "adapt.adapted": str(self.adapted),
            "adapt.pre_return": fmt(self.pre_return), "adapt.post_return": fmt(self.post_return),
            "adapt.ident_error_before": fmt(before), "adapt.ident_error_after": fmt(after),
            "adapt.job_s": fmt(last.job_s if last is not None else None),
        }
