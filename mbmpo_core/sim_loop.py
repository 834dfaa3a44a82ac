"""MB-MPO on a simulated robot (Clavera et al., 2018, Algorithm 1), top to bottom as :meth:`SimTrainingLoop.iteration`.

    collect real transitions with the K adapted policies (random actions before the first iteration); store them
    MetaLearner.improve(every stored transition):
        fit the dynamics ensemble (FIFO capacity)
        repeat meta_steps times: imagine pre-update rollouts -> inner step -> imagine post-update rollouts -> outer step
    evaluate theta and its real-data adaptation theta' on the real env (not counted as data)
    progress row, checkpoint, policy.onnx

The loop owns what a simulator makes possible: the envs and their samplers, the transition store, evaluation on
the real env, the run directory (``progress.csv``, ``checkpoints/``, ``policy.onnx``). The learning itself is the
:class:`MetaLearner`'s, which the ROS learner node drives the same way with data that arrives over DDS.

Everything a later iteration depends on (weights, RNG states, counters) is in the checkpoint, so a resumed run
continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mbmpo_core.checkpoint import read_checkpoint, write_checkpoint
from mbmpo_core.config import Config, save_config
from mbmpo_core.episodes import pad_episodes
from mbmpo_core.export import export_policy
from mbmpo_core.imagination import Imagined
from mbmpo_core.meta import Alpha, inner_step
from mbmpo_core.meta_learner import MetaLearner, rollout_batch
from mbmpo_core.policy import GaussianMLPPolicy, Params
from mbmpo_core.report import ProgressLog
from mbmpo_core.sampler import RealBatch, RealSampler, uniform_random_actions
from mbmpo_core.store import TransitionStore
from mbmpo_core.task import TaskSpec

POLICY_NAME = "policy.onnx"


class SimTrainingLoop:
    """One MB-MPO run on simulated robots: envs, samplers, store, evaluation, run directory; learning by a
    :class:`MetaLearner` (``self.learner``)."""

    def __init__(self, config: Config, task: TaskSpec, run_dir: str | Path,
                 log: Callable[[str], None] = print) -> None:
        self.config = config
        self.task = task
        self.run_dir = Path(run_dir)
        self.log = log
        self.learner = MetaLearner(config, task)
        self.device = self.learner.device
        # Streams of their own (seed + 1), apart from the meta-learner's: warm-up actions, and the action noise
        # of the collecting and evaluated policies.
        self.rng = np.random.default_rng(config.seed + 1)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = TransitionStore(self.run_dir / "transitions", task.obs_dim, task.act_dim)
        self.progress = ProgressLog(self.run_dir)
        self.real_steps = 0
        self.collect_params: Params | None = None  # [K, ...] adapted policies of the last iteration
        # One env per ensemble member: the K adapted policies collect side by side.
        num_models = config.ensemble.num_models
        envs = [task.make_env(seed=config.seed * 100 + i) for i in range(num_models)]
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
        """One MB-MPO iteration; returns its progress row."""
        t = time.perf_counter()
        train_returns = self._collect()
        sample_seconds = time.perf_counter() - t
        report = self.learner.improve(self.store.load_all())
        self.collect_params = report.collect_params
        t = time.perf_counter()
        return_pre, return_post = self._evaluate()
        row = report.progress_row(self.real_steps, train_returns, return_pre, return_post,
                                  seconds={"sample": sample_seconds, "eval": time.perf_counter() - t})
        self.progress.append(row)
        self.progress.plot(f"MB-MPO on {self.task.name}")
        self.save_checkpoint()
        self.export_policy(self.run_dir / POLICY_NAME)
        return row

    def export_policy(self, path: str | Path) -> str:
        """Write the meta-policy as ONNX (and its inner-step graph beside it); returns the policy id."""
        return export_policy(self.learner.policy, path, **self.learner.export_args())

    # ------------------------------------------------------------- collection
    def _collect(self) -> list[float]:
        """Real data: random actions first, then the adapted policies (one per env); persisted before use."""
        if self.collect_params is None:
            act_fn = uniform_random_actions(self.task.action_low, self.task.action_high, self.rng)
            batch = self.sampler.sample(act_fn, self.config.loop.random_steps)
        else:
            batch = self.sampler.sample(self._sampled_act_fn(self.collect_params), self.config.loop.steps_per_iter)
        self.store.append(batch.transitions())
        self.real_steps += len(batch)
        return batch.episode_returns

    def _sampled_act_fn(self, params: Params) -> Callable[[np.ndarray], np.ndarray]:
        """Env i acts with a sample of the policy ``params[i]`` (every tensor ``[E, ...]``)."""
        def act(obs: np.ndarray) -> np.ndarray:
            o = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(1)  # [E, 1, obs_dim]
            with torch.no_grad():
                a = self.learner.policy.sample(o, params, generator=self.generator)
            return a.squeeze(1).cpu().numpy()

        return act

    def _mean_act_fn(self, params: Params) -> Callable[[np.ndarray], np.ndarray]:
        """Env i acts with the mean action of ``params[i]``."""
        def act(obs: np.ndarray) -> np.ndarray:
            o = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(1)
            with torch.no_grad():
                return self.learner.policy(o, params).squeeze(1).cpu().numpy()

        return act

    # -------------------------------------------------------------- evaluation
    def _evaluate(self) -> tuple[float, float]:
        """Real return of theta (mean action) and of theta' adapted on real episodes of theta."""
        episodes, horizon, m = self.config.loop.eval_episodes, self.config.loop.horizon, self.config.meta
        policy = self.learner.policy
        theta = {k: v.detach().unsqueeze(0) for k, v in policy.params().items()}
        pre = self.eval_sampler.sample(self._mean_act_fn(theta), episodes * horizon, whole_episodes=True)
        explore = self.eval_sampler.sample(self._sampled_act_fn(theta), episodes * horizon, whole_episodes=True)
        adapted = adapt_on_real(policy, explore, self.learner.meta.alpha, m.gamma, m.gae_lambda, horizon)
        post = self.eval_sampler.sample(self._mean_act_fn(adapted), episodes * horizon, whole_episodes=True)
        return float(np.mean(pre.episode_returns)), float(np.mean(post.episode_returns))

    # -------------------------------------------------------------- checkpoint
    def save_checkpoint(self) -> Path:
        """The meta-learner's state and this loop's counters, RNGs and episode counters; written atomically."""
        own = {"real_steps": self.real_steps, "transitions": len(self.store), "collect_params": self.collect_params,
               "rng": self.rng.bit_generator.state, "generator": self.generator.get_state(),
               "sampler_episodes": torch.tensor(self.sampler._episode),
               "eval_episodes": torch.tensor(self.eval_sampler._episode)}
        return write_checkpoint(self.run_dir, {**self.learner.state_dict(), "sim_loop": own})

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (``path``: file or run directory)."""
        state = read_checkpoint(path, self.device)
        if "sim_loop" not in state:
            raise ValueError(f"{path}: not a checkpoint of the simulated training loop (written by the learner node?)")
        self.learner.load_state_dict(state)
        own = state["sim_loop"]
        self.real_steps = int(own["real_steps"])
        self.collect_params = own["collect_params"]
        self.rng.bit_generator.state = own["rng"]
        self.generator.set_state(own["generator"].cpu())
        self.sampler._episode[:] = own["sampler_episodes"].cpu().numpy()
        self.eval_sampler._episode[:] = own["eval_episodes"].cpu().numpy()
        orphans = len(self.store) - int(own["transitions"])
        if orphans > 0:
            # Written by an iteration that crashed before its checkpoint: real data, kept and used.
            self.log(f"resume: {orphans} transitions stored after the checkpoint are kept; "
                     "the run continues from them, so it is not bit-identical to an uninterrupted one")
            self.real_steps += orphans
        self.progress.truncate(self.learner.iteration)

    def close(self) -> None:
        self.progress.close()


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
