"""Imagined rollouts see what the real env sees: the model gets the action the physics gets, the model-space
reward the action the real env's reward gets, for policy samples far outside the action bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbmpo_core.imagination import imagine, task_models
from mbmpo_core.policy import GaussianMLPPolicy
from mbmpo_core.sampler import RealSampler

sim = pytest.importorskip("sim")

# Policy mean far outside HalfCheetah's [-1, 1] bounds: the control cost of the raw action is 5.3, clipped 0.6.
RAW_MEAN = [3.0, -3.0, 2.5, -4.0, 3.0, -2.0]
STEPS = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ReplayModel:
    """A one-model 'ensemble' that replays recorded next observations and records the actions it is given."""

    num_models = 1

    def __init__(self, next_obs: np.ndarray) -> None:
        self.next_obs = torch.as_tensor(next_obs, dtype=torch.float32)  # [T, obs_dim]
        self.actions: list[torch.Tensor] = []

    def predict(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """obs: [1, 1, obs_dim], act: [1, 1, act_dim] -> [1, 1, obs_dim]."""
        self.actions.append(act.reshape(-1).clone())
        return self.next_obs[len(self.actions) - 1].view(1, 1, -1)


def _out_of_bounds_policy(obs_dim: int, act_dim: int) -> GaussianMLPPolicy:
    """Mean RAW_MEAN whatever the observation; std e^-20, so a sample is its mean to float precision."""
    policy = GaussianMLPPolicy(obs_dim, act_dim, (8,))
    with torch.no_grad():
        policy.params()["out.weight"].zero_()
        policy.params()["out.bias"].copy_(torch.tensor(RAW_MEAN))
        policy.params()["log_std"].fill_(-20.0)
    return policy


def test_imagined_reward_and_model_input_match_the_real_env_for_unclipped_actions() -> None:
    task = sim.make_task("HalfCheetah-v5", horizon=200)
    policy = _out_of_bounds_policy(task.obs_dim, task.act_dim)
    theta = {k: v.detach().unsqueeze(0) for k, v in policy.params().items()}  # one task: [1, ...]
    gen = torch.Generator().manual_seed(0)

    def act_fn(obs: np.ndarray) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(1)  # [1, 1, obs_dim]
        return policy.sample(o, theta, generator=gen).squeeze(1).numpy()

    env = task.make_env(seed=0)
    real = RealSampler([env], 200, task.action_low, task.action_high, seed=0).sample(act_fn, STEPS)
    assert np.all(np.abs(real.act_raw) >= 2.0) and np.all(np.abs(real.act) <= 1.0)  # really out of bounds

    model = ReplayModel(real.next_obs)
    start = torch.as_tensor(real.obs[:1], dtype=torch.float32).view(1, 1, -1)
    traj = imagine(model, policy, theta, task, start, STEPS, 1e4, 1e4, generator=gen)  # type: ignore[arg-type]

    # Same sampled actions; the model saw the executed (clipped) action, as the physics did ...
    torch.testing.assert_close(traj.act[0, 0].double(), torch.as_tensor(real.act_raw), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack(model.actions).double(), torch.as_tensor(real.act), rtol=0, atol=1e-6)
    # ... and the imagined rewards are the real env's rewards (float32 model space).
    torch.testing.assert_close(traj.rewards[0, 0].double(), torch.as_tensor(real.reward), rtol=0, atol=1e-4)

    # The check has teeth: from the same states, the env stepped with the raw action (MuJoCo clamps ctrl, so
    # the physics is the same) charges the raw action's control cost, which imagination must not charge.
    unwrapped = env.unwrapped
    nq = unwrapped.model.nq
    for t in range(STEPS):
        unwrapped.set_state(real.obs[t, :nq], real.obs[t, nq:])
        next_raw, reward_raw, *_ = env.step(real.act_raw[t])
        np.testing.assert_allclose(next_raw, real.next_obs[t], rtol=0, atol=1e-9)
        assert reward_raw < real.reward[t] - 4.0  # 0.1 * (|raw|^2 - |clipped|^2) = 4.7
    env.close()


def test_task_models_use_every_member_equally() -> None:
    assert task_models(20, 5).tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    with pytest.raises(ValueError, match="multiple"):
        task_models(7, 5)
