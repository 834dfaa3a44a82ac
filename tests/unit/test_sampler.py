"""Real sampling: rows are the env's own transitions, in order, with consistent episode bookkeeping."""

import numpy as np

from mbmpo_core.sampler import RealSampler, uniform_random_actions
from sim import make_task


def test_rows_chain_and_match_env_rewards() -> None:
    task = make_task("Hopper-v5", horizon=50)
    sampler = RealSampler([task.make_env(seed=i) for i in range(2)], 50, task.action_low, task.action_high, seed=3)
    batch = sampler.sample(uniform_random_actions(task.action_low, task.action_high, np.random.default_rng(0)), 400)
    assert len(batch) == 400
    for env in (0, 1):
        rows = np.flatnonzero(batch.env == env)
        same_episode = batch.episode[rows[1:]] == batch.episode[rows[:-1]]
        # Inside an episode each row starts where the previous one ended (no aliasing of buffers).
        np.testing.assert_array_equal(batch.obs[rows[1:]][same_episode], batch.next_obs[rows[:-1]][same_episode])
        assert np.all(np.diff(batch.step[rows])[same_episode] == 1)
    np.testing.assert_allclose(task.reward(batch.obs, batch.act, batch.next_obs), batch.reward, atol=1e-5)
    np.testing.assert_array_equal(task.done(batch.next_obs), batch.done)
    assert np.all(batch.act <= task.action_high) and np.all(batch.act >= task.action_low)
    assert batch.step.max() < 50


def test_whole_episodes_end_at_termination_or_horizon() -> None:
    task = make_task("InvertedPendulum-v5", horizon=30)
    sampler = RealSampler([task.make_env(seed=0)], 30, task.action_low, task.action_high)
    batch = sampler.sample(lambda obs: np.zeros((obs.shape[0], 1)), 60, whole_episodes=True)
    assert len(batch) >= 60
    last = batch.step[-1]
    assert batch.done[-1] or last == 29
    assert len(batch.episode_returns) == len(np.unique(batch.episode))
    np.testing.assert_allclose(sum(batch.episode_returns), batch.reward.sum())


def test_every_env_collects_the_same_share() -> None:
    task = make_task("InvertedPendulum-v5", horizon=20)
    sampler = RealSampler([task.make_env(seed=i) for i in range(4)], 20, task.action_low, task.action_high)
    batch = sampler.sample(lambda obs: np.zeros((obs.shape[0], 1)), 82)
    assert np.bincount(batch.env).tolist() == [21, 21, 20, 20]


def test_sample_episodes_runs_exactly_that_many_whole_episodes_per_env() -> None:
    task = make_task("InvertedPendulum-v5", horizon=30)
    sampler = RealSampler([task.make_env(seed=i) for i in range(3)], 30, task.action_low, task.action_high, seed=1)

    def act(obs: np.ndarray) -> np.ndarray:  # env 0 falls at once, env 1 slower, env 2 balances to the horizon
        return np.array([[3.0], [0.3], [0.0]])[: obs.shape[0]] * np.sign(obs[:, 1:2] + 1e-9)

    batch = sampler.sample_episodes(act, 2)
    assert sorted(batch.episode_envs) == [0, 0, 1, 1, 2, 2] and len(batch.episode_returns) == 6
    for env in range(3):
        rows = batch.env == env
        assert np.unique(batch.episode[rows]).tolist() == [0, 1]
        ends = batch.done[rows] | (batch.step[rows] == 29)
        assert ends.sum() == 2 and ends[-1]  # two episodes, each run to its end
    assert sampler.episode_counters.tolist() == [2, 2, 2]
    per_env = [np.mean([r for r, e in zip(batch.episode_returns, batch.episode_envs, strict=True) if e == env])
               for env in range(3)]
    assert batch.mean_return_over_envs() == np.mean(per_env)
    # Rewound counters replay the same start states.
    sampler.episode_counters[:] = 0
    again = sampler.sample_episodes(act, 2)
    np.testing.assert_array_equal(again.obs, batch.obs)
