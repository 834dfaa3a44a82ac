"""Model-free arms of the comparison study: SAC and PPO (stable-baselines3) and TRPO (sb3-contrib).

Hyperparameters are rl-baselines3-zoo's published MuJoCo entries (see :data:`ZOO_HYPERPARAMS`). The policies see
the standard gymnasium v5 observation: the task's absolute-position coordinates (``task.position_obs``, which
``sim`` keeps in the observation for the model-space reward) are dropped, as they are for MB-MPO's policy.

A run trains in segments that end at the evaluation marks of :mod:`eval_protocol`; a callback evaluates the policy
exactly when the real-step count crosses a mark (for PPO/TRPO this is inside a rollout: the policy in use at that
step), and after each segment the run checkpoints: the SB3 model, SAC's replay buffer, VecNormalize statistics and
the clock. A resumed run reloads them, truncates its CSV to the checkpoint and continues with
``reset_num_timesteps=False`` (the episode in progress at the checkpoint is abandoned: SB3 resets the env).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from eval_protocol import (
    EVAL_SEEDS,
    CurveLog,
    Heartbeat,
    Policy,
    ProgressLine,
    RunClock,
    RunSpec,
    evaluate,
    resume_curve,
    resume_state,
    save_state,
)
from sb3_contrib import TRPO
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize
from torch import nn

from mbmpo_core.registry import make_task
from mbmpo_core.task import TaskSpec


@dataclass(frozen=True)
class ZooEntry:
    """One rl-zoo hyperparameter entry: the algorithm's keyword arguments plus the zoo's env settings."""

    kwargs: dict[str, Any]
    n_envs: int = 1
    normalize: bool = False  # VecNormalize on observations and rewards, with the algorithm's gamma
    policy_kwargs: dict[str, Any] = field(default_factory=dict)


# rl-baselines3-zoo's entries for HalfCheetah-v4 and Hopper-v4 (the v5 tasks have the same dynamics):
# github.com/DLR-RM/rl-baselines3-zoo @ 22e3ff2, hyperparams/sac.yml, hyperparams/ppo.yml, hyperparams/trpo.yml.
# The zoo trains on 1000-step episodes; here episodes are 200 steps (the MB-MPO paper track), values unchanged.
_PPO_NET = {"log_std_init": -2, "ortho_init": False, "activation_fn": nn.ReLU,
            "net_arch": {"pi": [256, 256], "vf": [256, 256]}}
# trpo.yml: the MuJoCo entries inherit the pybullet defaults (HalfCheetahBulletEnv-v0 block).
_TRPO_MUJOCO = {"batch_size": 128, "n_steps": 1024, "gamma": 0.99, "gae_lambda": 0.95, "sub_sampling_factor": 1,
                "cg_max_steps": 25, "cg_damping": 0.1, "n_critic_updates": 20, "learning_rate": 1e-3}
ZOO_HYPERPARAMS: dict[str, dict[str, ZooEntry]] = {
    # sac.yml: `HalfCheetah-v4: &mujoco-defaults` sets only learning_starts 10000; the rest is SB3's SAC defaults.
    "sac": {
        "HalfCheetah-v5": ZooEntry({"learning_starts": 10_000}),
        "Hopper-v5": ZooEntry({"learning_starts": 10_000}),
    },
    "ppo": {
        "HalfCheetah-v5": ZooEntry(
            {"batch_size": 64, "n_steps": 512, "gamma": 0.98, "learning_rate": 2.0633e-05, "ent_coef": 0.000401762,
             "clip_range": 0.1, "n_epochs": 20, "gae_lambda": 0.92, "max_grad_norm": 0.8, "vf_coef": 0.58096},
            normalize=True, policy_kwargs=_PPO_NET),
        "Hopper-v5": ZooEntry(
            {"batch_size": 32, "n_steps": 512, "gamma": 0.999, "learning_rate": 9.80828e-05, "ent_coef": 0.00229519,
             "clip_range": 0.2, "n_epochs": 5, "gae_lambda": 0.99, "max_grad_norm": 0.7, "vf_coef": 0.835671},
            normalize=True, policy_kwargs=_PPO_NET),
    },
    "trpo": {
        "HalfCheetah-v5": ZooEntry({**_TRPO_MUJOCO, "target_kl": 0.04}, n_envs=2, normalize=True),
        "Hopper-v5": ZooEntry(dict(_TRPO_MUJOCO), n_envs=2, normalize=True),
    },
}
ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"sac": SAC, "ppo": PPO, "trpo": TRPO}


class DropCoordinates(gym.ObservationWrapper):
    """Removes observation coordinates (the task's absolute positions): obs [obs_dim] -> [obs_dim - len(drop)]."""

    def __init__(self, env: gym.Env, drop: tuple[int, ...]) -> None:
        super().__init__(env)
        space = env.observation_space
        assert isinstance(space, gym.spaces.Box)
        self.keep = kept_coordinates(space.shape[0], drop)
        self.observation_space = gym.spaces.Box(space.low[self.keep], space.high[self.keep], dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.keep]


def kept_coordinates(obs_dim: int, drop: tuple[int, ...]) -> np.ndarray:
    """Indices [obs_dim - len(drop)] of the observation coordinates a model-free policy sees."""
    return np.setdiff1d(np.arange(obs_dim), np.asarray(drop, dtype=int))


def zoo_entry(arm: str, task: str) -> ZooEntry:
    """The published entry for ``arm`` on ``task``; a missing one is one clear error."""
    entry = ZOO_HYPERPARAMS.get(arm, {}).get(task)
    if entry is None:
        known = ", ".join(f"{a}/{t}" for a, tasks in ZOO_HYPERPARAMS.items() for t in tasks)
        raise ValueError(f"no rl-zoo hyperparameters for {arm} on {task} (known: {known})")
    return entry


def _training_env(task: TaskSpec, spec: RunSpec, entry: ZooEntry, *, fresh: bool) -> VecEnv:
    def make(i: int) -> Callable[[], gym.Env]:
        return lambda: Monitor(DropCoordinates(task.make_env(seed=spec.seed + 1000 * i), task.position_obs))

    venv: VecEnv = DummyVecEnv([make(i) for i in range(entry.n_envs)])
    if not entry.normalize:
        return venv
    stats = spec.checkpoint_dir / "vecnormalize.pkl"
    if not fresh:
        return VecNormalize.load(str(stats), venv)
    return VecNormalize(venv, gamma=entry.kwargs.get("gamma", 0.99))


def _build_model(spec: RunSpec, entry: ZooEntry, venv: VecEnv, *, fresh: bool) -> BaseAlgorithm:
    algo = ALGORITHMS[spec.arm]
    if not fresh:
        model = algo.load(str(spec.checkpoint_dir / "model.zip"), env=venv, device="cpu")
        if isinstance(model, SAC):
            model.load_replay_buffer(str(spec.checkpoint_dir / "replay_buffer.pkl"))
        return model
    kwargs = dict(entry.kwargs)
    if algo is SAC:
        # SB3's default buffer (1e6) never wraps within a 300k budget; a buffer of the budget behaves identically
        # and keeps the checkpoint small.
        kwargs["buffer_size"] = min(1_000_000, spec.budget)
    return algo("MlpPolicy", venv, seed=spec.seed, device="cpu", verbose=0,
                policy_kwargs=dict(entry.policy_kwargs) or None, **kwargs)


def policy_of(model: BaseAlgorithm, keep: np.ndarray, venv: VecEnv) -> Policy:
    """The eval protocol's policy: raw task obs [obs_dim] -> action [act_dim] (positions dropped, normalized)."""
    normalizer = venv if isinstance(venv, VecNormalize) else None

    def act(obs: np.ndarray, deterministic: bool) -> np.ndarray:
        x = obs[keep].astype(np.float32)
        if normalizer is not None:
            x = np.asarray(normalizer.normalize_obs(x), dtype=np.float32)
        action, _ = model.predict(x, deterministic=deterministic)
        return np.asarray(action)

    return act


class _Checkpoint:
    """A run's checkpoint directory (model, replay buffer, normalizer, run state), replaced atomically."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.dir = spec.checkpoint_dir

    def state(self) -> dict[str, Any] | None:
        old = self.dir.with_name(self.dir.name + ".old")
        if not self.dir.is_dir() and old.is_dir():  # interrupted between the two renames of save()
            old.rename(self.dir)
        return resume_state(self.dir / "state.json", self.spec)

    def save(self, model: BaseAlgorithm, venv: VecEnv, curve: CurveLog, clock: RunClock) -> None:
        tmp, old = (self.dir.with_name(self.dir.name + suffix) for suffix in (".tmp", ".old"))
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save(str(tmp / "model.zip"))
        if isinstance(model, SAC):
            model.save_replay_buffer(str(tmp / "replay_buffer.pkl"))
        if isinstance(venv, VecNormalize):
            venv.save(str(tmp / "vecnormalize.pkl"))
        save_state(tmp / "state.json", self.spec, curve, clock, real_steps=model.num_timesteps)
        shutil.rmtree(old, ignore_errors=True)
        if self.dir.is_dir():
            self.dir.rename(old)
        tmp.rename(self.dir)
        shutil.rmtree(old, ignore_errors=True)


class _MarkCallback(BaseCallback):
    """Evaluates when the real-step count crosses the next pending mark; a heartbeat line between marks."""

    def __init__(self, pending: list[int], on_mark: Callable[[int], None], name: str) -> None:
        super().__init__()
        self.pending, self.on_mark, self.name = pending, on_mark, name
        self.heartbeat = Heartbeat()

    def _on_step(self) -> bool:
        while self.pending and self.num_timesteps >= self.pending[0]:
            self.pending.pop(0)
            self.on_mark(self.num_timesteps)
            self.heartbeat.reset()
        self.heartbeat.beat(lambda: f"{self.name}: {self.num_timesteps:>8d} steps "
                                    f"(next mark {self.pending[0] if self.pending else '-'})")
        return True


def run_model_free(spec: RunSpec) -> None:
    """Train (or resume) one model-free run to its budget, evaluating at every mark and checkpointing after it."""
    torch.set_num_threads(1)
    entry = zoo_entry(spec.arm, spec.task)
    task = make_task(spec.task, horizon=spec.horizon)
    checkpoint = _Checkpoint(spec)
    state = checkpoint.state()
    fresh = state is None
    curve, clock = resume_curve(spec, state)
    venv = _training_env(task, spec, entry, fresh=fresh)
    model = _build_model(spec, entry, venv, fresh=fresh)
    eval_env = task.make_env(seed=EVAL_SEEDS[0])
    policy = policy_of(model, kept_coordinates(task.obs_dim, task.position_obs), venv)
    progress = ProgressLine(spec.name, model.num_timesteps, spec.budget)
    print(f"{spec.name}: {'starting' if fresh else f'resuming at {model.num_timesteps} steps'}, "
          f"budget {spec.budget}, {len(spec.marks)} marks", flush=True)

    def on_mark(real_steps: int) -> None:
        t0 = time.perf_counter()
        result = evaluate(policy, eval_env)
        clock.eval_wall_s += time.perf_counter() - t0
        print(progress(curve.append(real_steps, result, clock)), flush=True)

    pending = [mark for mark in spec.marks if mark > curve.last_steps]
    callback = _MarkCallback(pending, on_mark, spec.name)
    while pending:
        if pending[0] <= model.num_timesteps:
            on_mark(model.num_timesteps)
            pending.pop(0)
            continue
        model.learn(total_timesteps=pending[0] - model.num_timesteps, callback=callback, reset_num_timesteps=False)
        checkpoint.save(model, venv, curve, clock)
    eval_env.close()
    venv.close()
    print(f"{spec.name}: done, {model.num_timesteps} steps, {clock.wall_s / 3600:.2f} h wall, "
          f"{clock.cpu_s / 3600:.2f} CPU-h", flush=True)
