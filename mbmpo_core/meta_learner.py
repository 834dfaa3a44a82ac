"""The learning half of MB-MPO (Clavera et al., 2018, Algorithm 1, lines 4-8): data in, a better meta-policy out.

    improve(data):   # data: every real transition stored so far (columns of TransitionStore.load_all)
        set the policy's observation normalizer (first call only: it is part of the exported policy)
        fit the dynamics ensemble on the newest ``ensemble.capacity`` transitions (the paper's FIFO)
        repeat meta_steps times:
            imagine pre-update rollouts of theta  (task m in model m // (M / K))
            inner step      theta'_m = theta + alpha * grad J_m(theta)
            imagine post-update rollouts of theta'_m
            outer step      TRPO (or ProMP) on sum_m J_m(theta'_m)
        -> IterationReport (fit report, meta stats, seconds per phase, the K adapted policies)

:class:`MetaLearner` owns the ensemble, the policy, the meta-optimizer and the random streams imagination uses.
It builds no env, reads no store and writes no file: the simulated loop (:mod:`mbmpo_core.sim_loop`) and the ROS
learner node (:mod:`mbmpo_ros.learner`) hand it their data and save its :meth:`MetaLearner.state_dict`.

Imagined rollouts start from recorded real states, never from a simulator's reset: a real robot has no reset
distribution to sample, only the episode starts it recorded. ``1 - meta.real_start_fraction`` of them start from
stored episode starts (rows with ``step == 0``; every stored state if there are none), the rest from any stored
state.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from mbmpo_core.advantages import compute_advantages
from mbmpo_core.config import Config
from mbmpo_core.ensemble import DynamicsEnsemble, FitReport
from mbmpo_core.imagination import Imagined, imagine
from mbmpo_core.meta import MetaOptimizer, RolloutBatch, inner_step
from mbmpo_core.policy import GaussianMLPPolicy, Params
from mbmpo_core.task import TaskSpec

PHASES = ("fit", "imagine", "inner", "outer")  # keys of IterationReport.seconds


@dataclass(frozen=True)
class MetaStats:
    """Numbers of the last meta-step of an iteration (NaN when ``meta_steps`` is 0)."""

    outer_kl: float = float("nan")
    outer_accepted: float = float("nan")
    inner_kl: float = float("nan")
    imagined_return_pre: float = float("nan")
    imagined_return_post: float = float("nan")


@dataclass(frozen=True)
class IterationReport:
    """What one :meth:`MetaLearner.improve` did.

    ``collect_params``: the K adapted policies (every tensor ``[K, ...]``) that should collect the next real data:
    the first task of each model in the last meta-step (theta for every model when ``meta_steps`` is 0).
    """

    iteration: int  # 0 for the first improve of a run
    transitions: int  # rows the ensemble was fitted on (after the FIFO cut)
    fit: FitReport
    meta: MetaStats
    seconds: dict[str, float]  # wall-clock seconds per phase of PHASES
    collect_params: Params

    def progress_row(self, real_steps: int, train_returns: list[float] | None = None,
                     return_pre: float = float("nan"), return_post: float = float("nan"),
                     seconds: Mapping[str, float] | None = None) -> dict[str, float]:
        """One ``progress.csv`` row; ``seconds`` adds the caller's phases (``sample``, ``eval``) to this report's."""
        row: dict[str, float] = {
            "iteration": float(self.iteration), "real_steps": float(real_steps),
            "return_pre": return_pre, "return_post": return_post,
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

    # ---------------------------------------------------------------- iteration
    def improve(self, data: Mapping[str, np.ndarray]) -> IterationReport:
        """Fit the ensemble and meta-train the policy on ``data``; see the module docstring.

        ``data``: every stored real transition, oldest first, as :meth:`TransitionStore.load_all` returns it
        (``obs, next_obs: [N, obs_dim]``, ``act: [N, act_dim]``, ``step: [N]``; other columns are ignored). Pass
        all of it, not a FIFO tail: the model fit keeps the newest ``ensemble.capacity`` rows itself (and needs
        their row numbers in the run's stream for a stable train/validation split), while imagination may start
        from any stored episode start. Raises ``ValueError`` (one line) on bad columns.
        """
        obs, act, next_obs, step = self._columns(data)
        timer = _PhaseTimer()
        t = time.perf_counter()
        if self.iteration == 0:
            # Fixed for the whole run (it is part of the exported policy): set from the first data.
            self.policy.set_obs_normalizer(torch.as_tensor(obs.mean(0)), torch.as_tensor(obs.std(0)),
                                           ignore=self.task.position_obs)
        first = max(0, len(obs) - self.config.ensemble.capacity)  # the FIFO tail; row ids fix each row's split
        fit = self.ensemble.fit(obs[first:], act[first:], next_obs[first:], first_row=first)
        timer.add("fit", t)
        episode_starts = obs[step == 0] if np.any(step == 0) else obs
        stats, collect_params = self._meta_train(timer, episode_starts, obs)
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

    # ---------------------------------------------------------------- meta-train
    def _meta_train(self, timer: _PhaseTimer, episode_starts: np.ndarray,
                    stored_obs: np.ndarray) -> tuple[MetaStats, Params]:
        """``meta_steps`` MAML steps; imagination starts from ``episode_starts: [S, obs_dim]`` and, for the
        ``real_start_fraction`` share, from ``stored_obs: [N, obs_dim]``. Returns the last step's stats and the
        K adapted policies for the next collection."""
        m = self.config.meta
        per_model = m.meta_batch_size // self.config.ensemble.num_models
        stats = MetaStats()
        theta = {k: v.detach() for k, v in self.policy.params().items()}
        # Without a meta-step every model's "adapted" policy is theta itself.
        collect = {k: v.unsqueeze(0).expand(self.config.ensemble.num_models, *v.shape).clone()
                   for k, v in theta.items()}
        for _ in range(m.meta_steps):
            t = time.perf_counter()
            theta = {k: v.detach() for k, v in self.policy.params().items()}
            batched = {k: v.unsqueeze(0).expand(m.meta_batch_size, *v.shape) for k, v in theta.items()}
            pre = self._imagine_batch(batched, episode_starts, stored_obs)
            t = timer.add("imagine", t)
            adapted = inner_step(self.policy, self.policy.params(), pre, self.meta.alpha, create_graph=False)
            # clone: with alpha = 0 the adapted params are views of theta, which the outer step changes.
            adapted = {k: v.detach().clone() for k, v in adapted.items()}
            t = timer.add("inner", t)
            post = self._imagine_batch(adapted, episode_starts, stored_obs)
            t = timer.add("imagine", t)
            step = self.meta.outer_step(pre, post)
            timer.add("outer", t)
            stats = MetaStats(outer_kl=float(step["kl"]), outer_accepted=float(step.get("accepted", 1.0)),
                              inner_kl=float(step.get("inner_kl", np.nan)),
                              imagined_return_pre=_mean_return(pre), imagined_return_post=_mean_return(post))
            # The first task of each model: the K adapted policies that collect the next real data.
            collect = {k: v[::per_model].clone() for k, v in adapted.items()}
        return stats, collect

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
        return torch.as_tensor(np.concatenate(rows), dtype=torch.float32, device=self.device)

    # ---------------------------------------------------------------- export
    def export_args(self) -> dict[str, Any]:
        """Keyword arguments of :func:`mbmpo_core.export.export_policy` for the current meta-policy
        (``export_policy(learner.policy, path, **learner.export_args())``)."""
        t, m = self.task, self.config.meta
        return {"task_name": t.name, "obs_names": t.obs_names, "act_names": t.act_names,
                "joint_names": t.joint_names, "action_low": t.action_low, "action_high": t.action_high,
                "control_rate_hz": 1.0 / t.dt, "horizon": self.config.loop.horizon, "inner_lr": self.meta.alpha,
                "gamma": m.gamma, "gae_lambda": m.gae_lambda, "iteration": self.iteration}

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
