"""The MB-MPO training loop (Clavera et al., 2018, Algorithm 1), read top to bottom in :meth:`Trainer.iteration`.

    collect real transitions with the K adapted policies (random actions before the first iteration)
    fit the dynamics ensemble on all data so far (FIFO capacity)
    repeat meta_steps times: imagine pre-update rollouts -> inner step -> imagine post-update rollouts -> outer step
    evaluate theta and its real-data adaptation theta' on the real env (not counted as data), checkpoint

Everything a later iteration depends on (weights, RNG states, counters) is in the checkpoint, so a resumed run
continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbmpo_core.advantages import compute_advantages
from mbmpo_core.config import Config, save_config
from mbmpo_core.ensemble import DynamicsEnsemble
from mbmpo_core.episodes import pad_episodes
from mbmpo_core.export import export_policy
from mbmpo_core.imagination import Imagined, imagine
from mbmpo_core.meta import Alpha, MetaOptimizer, RolloutBatch, inner_step
from mbmpo_core.policy import GaussianMLPPolicy, Params
from mbmpo_core.report import ProgressLog
from mbmpo_core.sampler import RealBatch, RealSampler, uniform_random_actions
from mbmpo_core.store import TransitionStore
from mbmpo_core.task import TaskSpec

CHECKPOINT_NAME = "checkpoint.pt"
POLICY_NAME = "policy.onnx"


@dataclass
class Timer:
    """Wall-clock seconds per phase of one iteration."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - since
        return now


class Trainer:
    """Owns the ensemble, the policy, the real data and the run directory of one MB-MPO run."""

    def __init__(self, config: Config, task: TaskSpec, run_dir: str | Path,
                 log: Callable[[str], None] = print) -> None:
        self.config = config
        self.task = task
        self.run_dir = Path(run_dir)
        self.log = log
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        e, p, m = config.ensemble, config.policy, config.meta
        self.ensemble = DynamicsEnsemble(
            task.obs_dim, task.act_dim, num_models=e.num_models, hidden_sizes=e.hidden_sizes,
            activation=e.activation, lr=e.lr, batch_size=e.batch_size, valid_fraction=e.valid_fraction,
            early_stop_decay=e.early_stop_decay, max_epochs=e.max_epochs, device=self.device, seed=config.seed,
            ignored_obs=task.position_obs)
        self.policy = GaussianMLPPolicy(task.obs_dim, task.act_dim, p.hidden_sizes, p.init_std).to(self.device)
        self.meta = MetaOptimizer(self.policy, algo=m.algo, inner_lr=m.inner_lr, learn_inner_lr=m.learn_inner_lr,
                                  max_kl=m.max_kl, cg_iters=m.cg_iters, cg_damping=m.cg_damping,
                                  backtrack_ratio=m.backtrack_ratio, max_backtracks=m.max_backtracks)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = TransitionStore(self.run_dir / "transitions", task.obs_dim, task.act_dim)
        self.progress = ProgressLog(self.run_dir)
        self.iteration_index = 0
        self.real_steps = 0
        self.collect_params: Params | None = None  # [K, ...] adapted policies of the last iteration
        # One env per ensemble member: the K adapted policies collect side by side.
        envs = [task.make_env(seed=config.seed * 100 + i) for i in range(e.num_models)]
        self.sampler = RealSampler(envs, config.loop.horizon, task.action_low, task.action_high, seed=config.seed)
        eval_env = task.make_env(seed=config.seed * 100 + 99)
        self.eval_sampler = RealSampler([eval_env], config.loop.horizon, task.action_low, task.action_high,
                                        seed=config.seed + 12345)
        save_config(config, self.run_dir / "config.yaml")

    # ------------------------------------------------------------------ loop
    def train(self, total_steps: int, on_iteration: Callable[[dict[str, float]], None] | None = None) -> None:
        """Run iterations until ``total_steps`` real steps are collected."""
        while self.real_steps < total_steps:
            row = self.iteration()
            if on_iteration is not None:
                on_iteration(row)

    def iteration(self) -> dict[str, float]:
        """One MB-MPO iteration on the simulated robot: collect real data, then :meth:`improve`."""
        t = time.perf_counter()
        train_returns = self._collect()
        return self.improve(train_returns, sample_seconds=time.perf_counter() - t)

    def improve(self, train_returns: list[float] | None = None, sample_seconds: float = 0.0,
                evaluate: bool = True) -> dict[str, float]:
        """Fit the ensemble on every stored transition, meta-train, evaluate, checkpoint; returns the progress row.

        The learner node calls this directly (its data arrives over ROS and is already in the store); it has no
        env to evaluate on, so it passes ``evaluate=False`` and reports the robots' returns instead.
        """
        timer = Timer({"sample": sample_seconds})
        t = time.perf_counter()
        data = self.store.load_all()  # once per iteration: normalizer, model fit and real start states use it
        if self.iteration_index == 0:
            # Fixed for the whole run (it is part of the exported policy): set from the warm-up data.
            obs = data["obs"]
            self.policy.set_obs_normalizer(torch.as_tensor(obs.mean(0)), torch.as_tensor(obs.std(0)),
                                           ignore=self.task.position_obs)
        fit = self._fit_ensemble(data)
        t = timer.add("fit", t)
        meta_stats = self._meta_train(timer, data["obs"])
        t = time.perf_counter()
        return_pre, return_post = self._evaluate() if evaluate else (float("nan"), float("nan"))
        timer.add("eval", t)
        row = self._progress_row(train_returns or [], fit, meta_stats, return_pre, return_post, timer)
        self.iteration_index += 1
        self.progress.append(row)
        self.progress.plot(f"MB-MPO on {self.task.name}")
        self.save_checkpoint()
        self.export_policy(self.run_dir / POLICY_NAME)
        return row

    def export_policy(self, path: str | Path) -> str:
        """Write the meta-policy as ONNX (and its inner-step graph beside it); returns the policy id."""
        m = self.config.meta
        return export_policy(
            self.policy, path, task_name=self.task.name, obs_names=self.task.obs_names,
            act_names=self.task.act_names, joint_names=self.task.joint_names, action_low=self.task.action_low,
            action_high=self.task.action_high, control_rate_hz=1.0 / self.task.dt, horizon=self.config.loop.horizon,
            inner_lr=self.meta.alpha, gamma=m.gamma, gae_lambda=m.gae_lambda, iteration=self.iteration_index)

    # ------------------------------------------------------------- collection
    def _collect(self) -> list[float]:
        """Real data: random actions first, then the adapted policies (one per env); persisted before use."""
        if self.collect_params is None:
            act_fn = uniform_random_actions(self.task.action_low, self.task.action_high, self.rng)
            batch = self.sampler.sample(act_fn, self.config.loop.random_steps)
        else:
            batch = self.sampler.sample(self._adapted_act_fn(self.collect_params),
                                        self.config.loop.steps_per_iter)
        self._store(batch)
        return batch.episode_returns

    def _store(self, batch: RealBatch) -> None:
        self.store.append(batch.transitions())
        self.real_steps += len(batch)

    def _adapted_act_fn(self, params: Params) -> Callable[[np.ndarray], np.ndarray]:
        def act(obs: np.ndarray) -> np.ndarray:
            o = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(1)  # [K, 1, obs_dim]
            with torch.no_grad():
                a = self.policy.sample(o, params, generator=self.generator)
            return a.squeeze(1).cpu().numpy()

        return act

    # ------------------------------------------------------------------- model
    def _fit_ensemble(self, data: dict[str, np.ndarray]) -> Any:
        cap = self.config.ensemble.capacity
        obs, act, next_obs = (data[k][-cap:] for k in ("obs", "act", "next_obs"))
        return self.ensemble.fit(obs, act, next_obs)

    # -------------------------------------------------------------- meta-train
    def _meta_train(self, timer: Timer, real_obs: np.ndarray) -> dict[str, float]:
        """``meta_steps`` MAML steps; ``real_obs: [N, obs_dim]`` are the stored states imagination may start from."""
        m = self.config.meta
        stats: dict[str, float] = {}
        adapted: Params = {}
        for _ in range(m.meta_steps):
            t = time.perf_counter()
            theta = {k: v.detach() for k, v in self.policy.params().items()}
            batched = {k: v.unsqueeze(0).expand(m.meta_batch_size, *v.shape) for k, v in theta.items()}
            pre = self._imagine_batch(batched, real_obs)
            t = timer.add("imagine", t)
            adapted = inner_step(self.policy, self.policy.params(), pre, self.meta.alpha, create_graph=False)
            # clone: with alpha = 0 the adapted params are views of theta, which the outer step changes.
            adapted = {k: v.detach().clone() for k, v in adapted.items()}
            t = timer.add("inner", t)
            post = self._imagine_batch(adapted, real_obs)
            t = timer.add("imagine", t)
            step = self.meta.outer_step(pre, post)
            timer.add("outer", t)
            stats = {"outer_kl": float(step["kl"]), "outer_accepted": float(step.get("accepted", 1.0)),
                     "inner_kl": float(step.get("inner_kl", np.nan)),
                     "imagined_return_pre": _mean_return(pre), "imagined_return_post": _mean_return(post)}
        if adapted:
            # The first task of each model: the K adapted policies that collect the next real data.
            per_model = m.meta_batch_size // self.config.ensemble.num_models
            self.collect_params = {k: v[::per_model].clone() for k, v in adapted.items()}
        return stats

    def _imagine_batch(self, params: Params, real_obs: np.ndarray) -> RolloutBatch:
        m = self.config.meta
        start = self._start_states(m.meta_batch_size * m.rollouts_per_task, real_obs)
        start = start.reshape(m.meta_batch_size, m.rollouts_per_task, -1)
        traj = imagine(self.ensemble, self.policy, params, self.task, start, self.config.loop.horizon,
                       m.obs_clip, m.reward_clip, generator=self.generator)
        return rollout_batch(self.policy, params, traj, m.gamma, m.gae_lambda)

    def _start_states(self, n: int, real_obs: np.ndarray) -> torch.Tensor:
        """[n, obs_dim]: reset-distribution states, a ``real_start_fraction`` share from ``real_obs``."""
        n_real = round(n * self.config.meta.real_start_fraction)
        parts = [self.task.sample_initial_obs(n - n_real, self.rng)]
        if n_real:
            parts.append(real_obs[self.rng.integers(0, len(real_obs), size=n_real)])
        return torch.as_tensor(np.concatenate(parts), dtype=torch.float32, device=self.device)

    # -------------------------------------------------------------- evaluation
    def _evaluate(self) -> tuple[float, float]:
        """Real return of theta (mean action) and of theta' adapted on real episodes of theta."""
        episodes = self.config.loop.eval_episodes
        horizon = self.config.loop.horizon
        theta = {k: v.detach().unsqueeze(0) for k, v in self.policy.params().items()}
        pre = self.eval_sampler.sample(self._mean_act_fn(theta), episodes * horizon, whole_episodes=True)
        explore = self.eval_sampler.sample(self._adapted_act_fn(theta), episodes * horizon, whole_episodes=True)
        m = self.config.meta
        adapted = adapt_on_real(self.policy, explore, self.meta.alpha, m.gamma, m.gae_lambda, horizon)
        post = self.eval_sampler.sample(self._mean_act_fn(adapted), episodes * horizon, whole_episodes=True)
        return float(np.mean(pre.episode_returns)), float(np.mean(post.episode_returns))

    def _mean_act_fn(self, params: Params) -> Callable[[np.ndarray], np.ndarray]:
        def act(obs: np.ndarray) -> np.ndarray:
            o = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(1)
            with torch.no_grad():
                return self.policy(o, params).squeeze(1).cpu().numpy()

        return act

    # --------------------------------------------------------------- reporting
    def _progress_row(self, train_returns: list[float], fit: Any, meta_stats: dict[str, float], return_pre: float,
                      return_post: float, timer: Timer) -> dict[str, float]:
        row: dict[str, float] = {
            "iteration": float(self.iteration_index), "real_steps": float(self.real_steps),
            "return_pre": return_pre, "return_post": return_post,
            "return_train": float(np.mean(train_returns)) if train_returns else float("nan"),
            "model_train_loss": float(np.mean(fit.train_mse)), "model_valid_loss": float(np.mean(fit.valid_mse)),
            "model_epochs": float(np.mean(fit.epochs)),
        }
        row.update(meta_stats)
        for phase in ("sample", "fit", "imagine", "inner", "outer", "eval"):
            row[f"time_{phase}"] = timer.seconds.get(phase, 0.0)
        row["time_total"] = sum(timer.seconds.values())
        return row

    # -------------------------------------------------------------- checkpoint
    def save_checkpoint(self) -> Path:
        """Everything needed to continue exactly; written atomically."""
        state = {
            "iteration": self.iteration_index, "real_steps": self.real_steps,
            "ensemble": self.ensemble.state_dict(), "ensemble_fit_calls": self.ensemble._fit_calls,
            "policy": self.policy.state_dict(), "meta": self.meta.state_dict(),
            "collect_params": self.collect_params,
            "rng": self.rng.bit_generator.state, "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "sampler_episodes": self.sampler._episode.copy(), "eval_episodes": self.eval_sampler._episode.copy(),
            "transitions": len(self.store),
        }
        ckpt_dir = self.run_dir / "checkpoints"
        ckpt_dir.mkdir(exist_ok=True)
        path = ckpt_dir / CHECKPOINT_NAME
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (``path``: file or run directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "checkpoints" / CHECKPOINT_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.iteration_index, self.real_steps = state["iteration"], state["real_steps"]
        self.ensemble.load_state_dict(state["ensemble"])
        self.ensemble._fit_calls = state["ensemble_fit_calls"]
        self.policy.load_state_dict(state["policy"])
        self.meta.load_state_dict(state["meta"])
        self.collect_params = state["collect_params"]
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.sampler._episode[:] = state["sampler_episodes"]
        self.eval_sampler._episode[:] = state["eval_episodes"]
        orphans = len(self.store) - state["transitions"]
        if orphans > 0:
            # Written by an iteration that crashed before its checkpoint: real data, kept and used.
            self.log(f"resume: {orphans} transitions stored after the checkpoint are kept; "
                     "the run continues from them, so it is not bit-identical to an uninterrupted one")
            self.real_steps += orphans
        self.progress.truncate(self.iteration_index)

    def close(self) -> None:
        self.progress.close()


def rollout_batch(policy: GaussianMLPPolicy, params: Params, traj: Imagined, gamma: float, lam: float) -> RolloutBatch:
    """Advantages (per-task linear feature baseline, GAE, normalized per task) and sampling log-probs."""
    advantages, _ = compute_advantages(traj.rewards, traj.obs, traj.mask, gamma, lam)
    with torch.no_grad():
        old_log_prob = policy.log_prob(traj.obs, traj.act, params)
    return RolloutBatch(obs=traj.obs, act=traj.act, rewards=traj.rewards, mask=traj.mask,
                        advantages=advantages, old_log_prob=old_log_prob)


def _mean_return(batch: RolloutBatch) -> float:
    return float(batch.rewards.sum(-1).mean())


def episodes_as_task(batch: RealBatch, horizon: int, device: torch.device) -> Imagined:
    """Real episodes of one env as a one-task batch: obs [1, E, H, obs_dim], act (raw) [1, E, H, act_dim],
    rewards/mask [1, E, H]; episodes shorter than the horizon are zero-padded with mask 0."""
    starts = np.flatnonzero(batch.step == 0)
    ends = np.append(starts[1:], len(batch))
    padded = pad_episodes([(batch.obs[lo:hi], batch.act_raw[lo:hi], batch.reward[lo:hi])
                           for lo, hi in zip(starts, ends, strict=True)], horizon)

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x[None], dtype=torch.float32, device=device)

    obs, act, rewards, mask = (t(x) for x in padded)
    return Imagined(obs=obs, act=act, rewards=rewards, mask=mask)


def adapt_on_real(policy: GaussianMLPPolicy, batch: RealBatch, alpha: Alpha, gamma: float, lam: float,
                  horizon: int) -> Params:
    """theta' [1, ...] from real episodes of theta, by the same inner step as in meta-training."""
    theta = {k: v.detach().unsqueeze(0) for k, v in policy.params().items()}
    traj = episodes_as_task(batch, horizon, theta["log_std"].device)
    real = rollout_batch(policy, theta, traj, gamma, lam)
    adapted = inner_step(policy, policy.params(), real, alpha, create_graph=False)
    return {k: v.detach() for k, v in adapted.items()}
