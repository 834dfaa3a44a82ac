"""The learning half of MB-MPO (Clavera et al., 2018, Algorithm 1, lines 4-8): data in, a better meta-policy out.

    improve(data):   # data: every real transition stored so far (columns of TransitionStore.load_all)
        set the policy's observation normalizer (first call only: it is part of the exported policy)
        fit the dynamics ensemble on the newest ``ensemble.capacity`` transitions (the paper's FIFO)
        repeat meta_steps times:
            imagine pre-update rollouts of theta  (task m in model m // (M / K))
            inner step      theta'_m = theta + alpha * grad J_m(theta)
            imagine post-update rollouts of theta'_m
            outer step      TRPO (or ProMP) on sum_m J_m(theta'_m)
        adapt the final theta to every task once more: theta'_1..M, the policies that collect the next real data
        -> IterationReport (fit report, meta stats, seconds per phase, the M adapted policies)

``improve(data, progress)`` calls ``progress`` with an :class:`ImproveProgress` (phase, model epoch, meta-step,
elapsed, ETA) at the start of each phase, after every model epoch and after every meta-step, so a caller can show
where a long iteration is.

:class:`MetaLearner` owns the ensemble, the policy, the meta-optimizer and the random streams imagination uses.
It builds no env, reads no store and writes no file: the simulated loop (:mod:`mbmpo_core.sim_loop`) and the ROS
learner node (:mod:`mbmpo_ros.learner`) hand it their data and save its :meth:`MetaLearner.state_dict`.

Imagined rollouts start from recorded real states, never from a simulator's reset: a real robot has no reset
distribution to sample, only the episode starts it recorded. ``1 - meta.real_start_fraction`` of them start from
stored episode starts (rows with ``step == 0``; every stored state if there are none), the rest from any stored
state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from mbmpo_core.advantages import compute_advantages
from mbmpo_core.config import Config
from mbmpo_core.ensemble import DynamicsEnsemble, EpochInfo, FitReport
from mbmpo_core.imagination import Imagined, imagine
from mbmpo_core.meta import MetaOptimizer, RolloutBatch, inner_step
from mbmpo_core.policy import GaussianMLPPolicy, Params
from mbmpo_core.task import TaskSpec

PHASES = ("fit", "imagine", "inner", "outer")  # keys of IterationReport.seconds
# Real-env returns of a progress row (SimTrainingLoop.evaluate says what each is).
REAL_RETURNS = ("return_pre", "return_post", "return_pre_det", "return_post_det", "return_adapted_real")


@dataclass(frozen=True)
class MetaStats:
    """Numbers of the last meta-step of an iteration (NaN when ``meta_steps`` is 0).

    ``inner_kl``: the true inner KL, mean over tasks of ``KL(pi_theta || pi_theta'_m)`` on the pre-update rollouts;
    ``inner_lr``: the step size that gave it (the mean of the per-parameter ones with ``learn_inner_lr``; with
    ``meta.inner_kl_target`` the next meta-step's may be up to 2x away). ``outer_kl``: the outer step's KL on the
    post-update rollouts.
    """

    outer_kl: float = float("nan")
    outer_accepted: float = float("nan")
    inner_kl: float = float("nan")
    inner_lr: float = float("nan")
    imagined_return_pre: float = float("nan")
    imagined_return_post: float = float("nan")


@dataclass(frozen=True)
class ImproveProgress:
    """Where a :meth:`MetaLearner.improve` call is; what its ``progress`` callback receives.

    ``phase``: ``"fit"`` (model epochs ``epoch`` of at most ``max_epochs`` done) or ``"meta"`` (``meta_step`` of
    ``meta_steps`` meta-steps done). ``elapsed_s``: since ``improve`` started. ``eta_s``: estimated seconds until
    it returns (NaN while unknown): the fit's remaining epochs at its measured pace, up to the previous fit's
    epoch count (``max_epochs`` on the first), plus the meta-steps left at the pace of this call's (while fitting:
    of the previous call's) meta-steps.
    """

    iteration: int
    phase: str
    epoch: int
    max_epochs: int
    meta_step: int
    meta_steps: int
    elapsed_s: float
    eta_s: float

    def describe(self) -> str:
        """One short line, e.g. ``iteration 3: meta-step 4/20, 35 s, ETA 1 min 20 s``."""
        where = (f"model fit, epoch {self.epoch}/{self.max_epochs}" if self.phase == "fit"
                 else f"meta-step {self.meta_step}/{self.meta_steps}")
        eta = f", ETA {format_seconds(self.eta_s)}" if math.isfinite(self.eta_s) else ""
        return f"iteration {self.iteration}: {where}, {format_seconds(self.elapsed_s)}{eta}"


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


ProgressFn = Callable[[ImproveProgress], None]


@dataclass(frozen=True)
class IterationReport:
    """What one :meth:`MetaLearner.improve` did.

    ``collect_params``: the M adapted policies (every tensor ``[M, ...]``, M = ``meta.meta_batch_size``) that
    should collect the next real data: the final theta adapted by one inner step on fresh imagined rollouts of
    each task m (in model m // (M / K)); theta for every task when ``meta_steps`` is 0.
    """

    iteration: int  # 0 for the first improve of a run
    transitions: int  # rows the ensemble was fitted on (after the FIFO cut)
    fit: FitReport
    meta: MetaStats
    seconds: dict[str, float]  # wall-clock seconds per phase of PHASES
    collect_params: Params

    def progress_row(self, real_steps: int, train_returns: list[float] | None = None,
                     return_pre: float = float("nan"), return_post: float = float("nan"),
                     seconds: Mapping[str, float] | None = None,
                     real_returns: Mapping[str, float] | None = None) -> dict[str, float]:
        """One ``progress.csv`` row. ``real_returns``: any of the ``REAL_RETURNS`` columns (the simulated loop's
        evaluation); ``return_pre`` / ``return_post`` where it has none of them (the learner node: the robots'
        own returns); the other columns NaN. ``seconds`` adds the caller's phases (``sample``, ``eval``)."""
        row: dict[str, float] = {
            "iteration": float(self.iteration), "real_steps": float(real_steps),
            **dict.fromkeys(REAL_RETURNS, float("nan")), "return_pre": return_pre, "return_post": return_post,
            **(real_returns or {}),
            "return_train": float(np.mean(train_returns)) if train_returns else float("nan"),
            "model_train_loss": float(np.mean(self.fit.train_mse)),
            "model_valid_loss": float(np.mean(self.fit.valid_mse)),
            "model_epochs": float(np.mean(self.fit.epochs)),
        }
        row.update(asdict(self.meta))
        every = {**self.seconds, **(seconds or {})}
        for phase in ("sample", *PHASES, "eval"):
            row[f"time_{phase}"] = every.get(phase, 0.0)
        row["time_total"] = sum(every.values())
        return row


@dataclass
class _PhaseTimer:
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def add(self, phase: str, since: float) -> float:
        """Add the time since ``since`` to ``phase``; returns now."""
        now = time.perf_counter()
        self.seconds[phase] += now - since
        return now


class MetaLearner:
    """Ensemble + meta-policy + meta-optimizer of one MB-MPO run; :meth:`improve` is one iteration's learning."""

    def __init__(self, config: Config, task: TaskSpec) -> None:
        self.config = config
        self.task = task
        self.device = torch.device(config.device)
        self.iteration = 0  # improve calls so far
        self.rng = np.random.default_rng(config.seed)  # start states of imagined rollouts
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)  # imagined action noise
        p = config.policy
        self.ensemble = DynamicsEnsemble.from_config(task.obs_dim, task.act_dim, config.ensemble, device=self.device,
                                                     seed=config.seed, ignored_obs=task.position_obs)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the process's torch RNG
            torch.manual_seed(config.seed)
            policy = GaussianMLPPolicy(task.obs_dim, task.act_dim, p.hidden_sizes, p.init_std)
        self.policy = policy.to(self.device)
        self.meta = MetaOptimizer.from_config(self.policy, config.meta)
        # Paces of the last improve call, for the ETA of the next one (not state: a resumed run re-measures).
        self._last_fit_epochs = config.ensemble.max_epochs
        self._last_meta_step_s = math.nan

    # ---------------------------------------------------------------- iteration
    def improve(self, data: Mapping[str, np.ndarray], progress: ProgressFn | None = None) -> IterationReport:
        """Fit the ensemble and meta-train the policy on ``data``; see the module docstring.

        ``data``: every stored real transition, oldest first, as :meth:`TransitionStore.load_all` returns it
        (``obs, next_obs: [N, obs_dim]``, ``act: [N, act_dim]``, ``step: [N]``, optional ``physics: [N]`` int: each
        row's physics group, which ``ensemble.member_emphasis`` weighs; other columns are ignored). Pass
        all of it, not a FIFO tail: the model fit keeps the newest ``ensemble.capacity`` rows itself (and needs
        their row numbers in the run's stream for a stable train/validation split), while imagination may start
        from any stored episode start. ``progress`` is called as the module docstring says. Raises
        ``ValueError`` (one line) on bad columns.
        """
        obs, act, next_obs, step = self._columns(data)
        timer = _PhaseTimer()
        tell = _Reporter(self, timer, progress)
        t = time.perf_counter()
        if self.iteration == 0:
            # Fixed for the whole run (it is part of the exported policy): set from the first data.
            self.policy.set_obs_normalizer(torch.as_tensor(obs.mean(0)), torch.as_tensor(obs.std(0)),
                                           ignore=self.task.position_obs)
        first = max(0, len(obs) - self.config.ensemble.capacity)  # the FIFO tail; row ids fix each row's split
        tell.fit_epoch(0)
        groups = self._groups(data, len(obs))
        fit = self.ensemble.fit(obs[first:], act[first:], next_obs[first:], first_row=first,
                                progress=lambda info: tell.fit_epoch(info.epoch, info),
                                groups=None if groups is None else groups[first:])
        self._last_fit_epochs = int(np.max(fit.epochs)) if len(fit.epochs) else self._last_fit_epochs
        timer.add("fit", t)
        episode_starts = obs[step == 0] if np.any(step == 0) else obs
        stats, collect_params = self._meta_train(timer, episode_starts, obs, tell)
        report = IterationReport(iteration=self.iteration, transitions=len(obs) - first, fit=fit, meta=stats,
                                 seconds=timer.seconds, collect_params=collect_params)
        self.iteration += 1
        return report

    def _columns(self, data: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """``obs, act, next_obs, step`` of ``data``, checked against the task's dims."""
        missing = [k for k in ("obs", "act", "next_obs", "step") if k not in data]
        if missing:
            raise ValueError(f"improve: data lacks column(s) {missing}")
        obs, act, next_obs, step = (np.asarray(data[k]) for k in ("obs", "act", "next_obs", "step"))
        n, d, a = len(obs), self.task.obs_dim, self.task.act_dim
        if n < 2:
            raise ValueError(f"improve: needs at least 2 transitions, got {n}")
        if obs.shape != (n, d) or next_obs.shape != (n, d) or act.shape != (n, a) or step.shape != (n,):
            raise ValueError(f"improve: expected obs/next_obs [{n}, {d}], act [{n}, {a}], step [{n}]; got "
                             f"{obs.shape}, {next_obs.shape}, {act.shape}, {step.shape}")
        if not (np.isfinite(obs).all() and np.isfinite(act).all() and np.isfinite(next_obs).all()):
            raise ValueError("improve: data contains NaN or inf")
        return obs, act, next_obs, step

    @staticmethod
    def _groups(data: Mapping[str, np.ndarray], n: int) -> np.ndarray | None:
        """The ``physics`` column ``[n]`` int64 of ``data`` (None if absent), checked."""
        if data.get("physics") is None:
            return None
        groups = np.asarray(data["physics"])
        if groups.shape != (n,) or groups.dtype.kind not in "iu":
            raise ValueError(f"improve: 'physics' must be [{n}] int, got {groups.shape} {groups.dtype}")
        return groups.astype(np.int64)

    # ---------------------------------------------------------------- meta-train
    def _meta_train(self, timer: _PhaseTimer, episode_starts: np.ndarray, stored_obs: np.ndarray,
                    tell: _Reporter) -> tuple[MetaStats, Params]:
        """``meta_steps`` MAML steps; imagination starts from ``episode_starts: [S, obs_dim]`` and, for the
        ``real_start_fraction`` share, from ``stored_obs: [N, obs_dim]``. Returns the last step's stats and the
        M adapted policies of the final theta, which collect the next real data."""
        m = self.config.meta
        stats = MetaStats()
        tell.meta_step(0)
        started = time.perf_counter()
        for k in range(m.meta_steps):
            t = time.perf_counter()
            pre = self._imagine_batch(self._theta_per_task(), episode_starts, stored_obs)
            t = timer.add("imagine", t)
            adapted = self._adapt(pre)
            t = timer.add("inner", t)
            post = self._imagine_batch(adapted, episode_starts, stored_obs)
            t = timer.add("imagine", t)
            step = self.meta.outer_step(pre, post)
            timer.add("outer", t)
            stats = MetaStats(outer_kl=float(step["kl"]), outer_accepted=float(step.get("accepted", 1.0)),
                              inner_kl=float(step["inner_kl"]), inner_lr=float(step["inner_lr"]),
                              imagined_return_pre=_mean_return(pre), imagined_return_post=_mean_return(post))
            self._last_meta_step_s = (time.perf_counter() - started) / (k + 1)
            tell.meta_step(k + 1)
        if m.meta_steps == 0:  # no meta-step: every task's "adapted" policy is theta itself
            return stats, {k: v.clone() for k, v in self._theta_per_task().items()}
        # The adapted policies of the final theta (the last step's were adapted from the theta before its update).
        t = time.perf_counter()
        pre = self._imagine_batch(self._theta_per_task(), episode_starts, stored_obs)
        t = timer.add("imagine", t)
        collect = self._adapt(pre)
        timer.add("inner", t)
        return stats, collect

    def _theta_per_task(self) -> Params:
        """The current theta, detached, viewed as ``[M, ...]``."""
        m = self.config.meta.meta_batch_size
        return {k: v.detach().unsqueeze(0).expand(m, *v.shape) for k, v in self.policy.params().items()}

    def _adapt(self, pre: RolloutBatch) -> Params:
        """theta'_m = theta + alpha grad J_m(theta) on ``pre`` (imagined rollouts of theta), detached ``[M, ...]``."""
        adapted = inner_step(self.policy, self.policy.params(), pre, self.meta.alpha, create_graph=False)
        # clone: with alpha = 0 the adapted params are views of theta, which the outer step changes.
        return {k: v.detach().clone() for k, v in adapted.items()}

    def _imagine_batch(self, params: Params, episode_starts: np.ndarray, stored_obs: np.ndarray) -> RolloutBatch:
        m = self.config.meta
        start = self.start_states(m.meta_batch_size * m.rollouts_per_task, episode_starts, stored_obs)
        start = start.reshape(m.meta_batch_size, m.rollouts_per_task, -1)
        traj = imagine(self.ensemble, self.policy, params, self.task, start, self.config.loop.horizon,
                       m.obs_clip, m.reward_clip, generator=self.generator)
        return rollout_batch(self.policy, params, traj, m.gamma, m.gae_lambda)

    def start_states(self, n: int, episode_starts: np.ndarray, stored_obs: np.ndarray) -> torch.Tensor:
        """``[n, obs_dim]`` start states drawn with replacement: a ``real_start_fraction`` share from
        ``stored_obs: [N, obs_dim]``, the rest from ``episode_starts: [S, obs_dim]``."""
        n_any = round(n * self.config.meta.real_start_fraction)
        rows = [episode_starts[self.rng.integers(0, len(episode_starts), size=n - n_any)],
                stored_obs[self.rng.integers(0, len(stored_obs), size=n_any)]]
        starts = np.concatenate(rows)
        if n_any:  # mixed, so that every task (every model) gets its share of both kinds, not the last tasks all
            starts = starts[self.rng.permutation(n)]
        return torch.as_tensor(starts, dtype=torch.float32, device=self.device)

    # ---------------------------------------------------------------- export
    def export_args(self) -> dict[str, Any]:
        """Keyword arguments of :func:`mbmpo_core.export.export_policy` for the current meta-policy
        (``export_policy(learner.policy, path, **learner.export_args())``); the bundle carries the ensemble."""
        t, m = self.task, self.config.meta
        return {"task_name": t.name, "obs_names": t.obs_names, "act_names": t.act_names,
                "joint_names": t.joint_names, "action_low": t.action_low, "action_high": t.action_high,
                "control_rate_hz": 1.0 / t.dt, "horizon": self.config.loop.horizon, "inner_lr": self.meta.alpha,
                "gamma": m.gamma, "gae_lambda": m.gae_lambda, "iteration": self.iteration,
                "ensemble": self.ensemble}

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything a later :meth:`improve` depends on; each component saves its own state."""
        return {"iteration": self.iteration, "ensemble": self.ensemble.state_dict(),
                "policy": self.policy.state_dict(), "meta": self.meta.state_dict(),
                "rng": self.rng.bit_generator.state, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; ``ValueError`` (one line) if ``state`` is of another config or task."""
        try:
            self.ensemble.load_state_dict(state["ensemble"])
            self.policy.load_state_dict(state["policy"])
            self.meta.load_state_dict(state["meta"])
            self.rng.bit_generator.state = state["rng"]
            self.generator.set_state(state["generator"].cpu())  # a generator's state is a CPU tensor on any device
            self.iteration = int(state["iteration"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            reason = next(iter(str(exc).splitlines()), "")
            raise ValueError(f"saved state does not fit this meta-learner (other config or task?): "
                             f"{type(exc).__name__}: {reason}") from None


def rollout_batch(policy: GaussianMLPPolicy, params: Params, traj: Imagined, gamma: float, lam: float) -> RolloutBatch:
    """Advantages (per-task linear feature baseline, GAE, normalized per task) and sampling log-probs."""
    advantages, _ = compute_advantages(traj.rewards, traj.obs, traj.mask, gamma, lam)
    with torch.no_grad():
        old_log_prob = policy.log_prob(traj.obs, traj.act, params)
    return RolloutBatch(obs=traj.obs, act=traj.act, rewards=traj.rewards, mask=traj.mask,
                        advantages=advantages, old_log_prob=old_log_prob)


def _mean_return(batch: RolloutBatch) -> float:
    return float(batch.rewards.sum(-1).mean())


class _Reporter:
    """Builds the :class:`ImproveProgress` events of one improve call (nothing when there is no callback)."""

    def __init__(self, learner: MetaLearner, timer: _PhaseTimer, progress: ProgressFn | None) -> None:
        self.learner, self.timer, self.progress = learner, timer, progress
        self.max_epochs = learner.config.ensemble.max_epochs
        self.meta_steps = learner.config.meta.meta_steps
        self.epoch = 0
        self.meta_started = math.nan

    def fit_epoch(self, epoch: int, info: EpochInfo | None = None) -> None:
        if self.progress is None:
            return
        self.epoch = epoch
        if info is not None:
            self.max_epochs = info.max_epochs
        elapsed = self.timer.elapsed()
        expected = max(epoch + 1, min(self.learner._last_fit_epochs, self.max_epochs))
        fit_left = (expected - epoch) * elapsed / epoch if epoch else math.nan
        if info is not None and not bool(np.any(info.active)):
            fit_left = 0.0
        eta = fit_left + self.meta_steps * self.learner._last_meta_step_s if self.meta_steps else fit_left
        self._send("fit", 0, elapsed, eta)

    def meta_step(self, k: int) -> None:
        if self.progress is None:
            return
        if k == 0:
            self.meta_started = time.perf_counter()
        pace = (time.perf_counter() - self.meta_started) / k if k else self.learner._last_meta_step_s
        # The final adaptation (one imagination and inner step) is left out: a fraction of one meta-step.
        self._send("meta", k, self.timer.elapsed(), (self.meta_steps - k) * pace)

    def _send(self, phase: str, meta_step: int, elapsed: float, eta: float) -> None:
        assert self.progress is not None
        self.progress(ImproveProgress(iteration=self.learner.iteration, phase=phase, epoch=self.epoch,
                                      max_epochs=self.max_epochs, meta_step=meta_step, meta_steps=self.meta_steps,
                                      elapsed_s=elapsed, eta_s=eta))
