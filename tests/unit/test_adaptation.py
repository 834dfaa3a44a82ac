"""OnlineAdapter (mbmpo_ros.adaptation): pure state machine on a tiny exported policy, no ROS."""

from __future__ import annotations

import numpy as np
import pytest

from mbmpo_core.advantages import compute_advantages
from mbmpo_core.onnx_runtime import OnnxPolicy
from mbmpo_ros.adaptation import AdaptJob, OnlineAdapter, Phase

OBS_DIM, ACT_DIM = 3, 2


@pytest.fixture(scope="module")
def policy() -> OnnxPolicy:
    import torch

    from mbmpo_core.export import export_bundle
    from mbmpo_core.policy import GaussianMLPPolicy

    torch.manual_seed(0)
    bundle = export_bundle(
        GaussianMLPPolicy(OBS_DIM, ACT_DIM, hidden_sizes=(8,)), task_name="toy",
        obs_names=[f"o{i}" for i in range(OBS_DIM)], act_names=["a0", "a1"], joint_names=["a0", "a1"],
        action_low=[-1.0, -1.0], action_high=[1.0, 1.0], control_rate_hz=20.0, horizon=10, inner_lr=0.05,
        gamma=0.97, gae_lambda=0.9, iteration=0,
    )
    loaded = OnnxPolicy.from_bundle(bundle)
    assert loaded.can_adapt
    return loaded


def _episode(adapter: OnlineAdapter, policy: OnnxPolicy, rng: np.random.Generator, length: int,
             reward: float | None = None, first_step: int = 0) -> AdaptJob | None:
    """Drive one episode through the adapter as the controller's tick does; returns the job, if any."""
    job = None
    for t in range(length):
        obs = rng.standard_normal(OBS_DIM)
        params = adapter.begin_step(first_step + t)
        raw = policy.act(obs, params=params, deterministic=False, rng=rng)
        adapter.record(obs, raw)
        r = float(rng.standard_normal()) if reward is None else reward
        job = adapter.close(r, ended=t == length - 1)
    return job


def _batch(adapter: OnlineAdapter, policy: OnnxPolicy, rng: np.random.Generator, reward: float | None = None,
           lengths: tuple[int, ...] = (7, 10)) -> AdaptJob | None:
    jobs = [_episode(adapter, policy, rng, n, reward) for n in lengths]
    assert all(j is None for j in jobs[:-1])
    return jobs[-1]


def test_adapted_params_equal_onnx_adapt(policy: OnnxPolicy) -> None:
    rng = np.random.default_rng(1)
    adapter = OnlineAdapter(episodes=2, steps_max=1, revert_margin=float("inf"))
    adapter.reset(policy)
    job = _batch(adapter, policy, rng)
    assert job is not None and adapter.phase is Phase.COMPUTING and job.params is None
    assert (job.gamma, job.lam) == (0.97, 0.9)
    # The same data, assembled independently: [E, H] padded with mask 0, numpy advantages.
    obs = np.zeros((2, 10, OBS_DIM))
    act = np.zeros((2, 10, ACT_DIM))
    rew, mask = np.zeros((2, 10)), np.zeros((2, 10))
    for i, ep in enumerate(job.episodes):
        n = len(ep.rewards)
        obs[i, :n], act[i, :n], rew[i, :n], mask[i, :n] = ep.obs, ep.act, ep.rewards, 1.0
    adv, _ = compute_advantages(rew, obs, mask, 0.97, 0.9)
    expected = policy.adapt(None, obs.reshape(20, -1), act.reshape(20, -1), adv.reshape(20), mask.reshape(20))
    result = job.run()
    for name in policy.param_names:
        np.testing.assert_allclose(result.params[name], expected[name], rtol=1e-6, atol=1e-7)  # type: ignore[index]
        assert not np.allclose(expected[name], policy.params[name])  # the step moved every parameter
    adapter.deliver(result)
    assert not adapter.adapted  # switched only at the next episode start
    params = adapter.begin_step(0)
    assert adapter.adapted and adapter.steps == 1 and params is result.params
    assert adapter.pre_return == pytest.approx(np.mean([e.ret for e in job.episodes]))


def test_advantages_match_torch_training(policy: OnnxPolicy) -> None:
    import torch

    adapter = OnlineAdapter(episodes=3, steps_max=1)
    adapter.reset(policy)
    job = _batch(adapter, policy, np.random.default_rng(2), lengths=(4, 10, 6))
    assert job is not None
    obs, act, adv, mask = job.advantages()
    from mbmpo_ros.adaptation import episodes_to_arrays

    o, _, r, m = episodes_to_arrays(job.episodes)

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x[None], dtype=torch.float32)  # one task, as trainer.episodes_as_task

    ref, _ = compute_advantages(t(r), t(o), t(m), 0.97, 0.9)
    np.testing.assert_allclose(adv, ref[0].numpy().reshape(-1), atol=1e-4)
    assert mask.sum() == 20 and obs.shape == (30, OBS_DIM) and act.shape == (30, ACT_DIM)


def test_steps_max_limits_inner_steps(policy: OnnxPolicy) -> None:
    rng = np.random.default_rng(3)
    adapter = OnlineAdapter(episodes=1, steps_max=2, revert_margin=float("inf"))
    adapter.reset(policy)
    params_seen = []
    for _ in range(6):
        job = _episode(adapter, policy, rng, 5)
        if job is not None:
            params_seen.append(job.params)
            adapter.deliver(job.run())
    assert adapter.steps == 2 and adapter.phase is Phase.DONE and adapter.adapted
    assert params_seen[0] is None and params_seen[1] is not None  # the second step starts from theta'
    assert adapter.post_return is not None


def test_revert_when_adapted_return_drops(policy: OnnxPolicy) -> None:
    rng = np.random.default_rng(4)
    adapter = OnlineAdapter(episodes=2, steps_max=3, revert_margin=0.5)
    adapter.reset(policy)
    job = _batch(adapter, policy, rng, reward=1.0, lengths=(5, 5))  # pre return 5
    assert job is not None
    adapter.deliver(job.run())
    assert _batch(adapter, policy, rng, reward=0.95, lengths=(5, 5)) is not None  # 4.75 >= 5 - 0.5: keep going
    assert adapter.adapted and adapter.reverted == 0
    adapter.deliver(job.run())
    assert _batch(adapter, policy, rng, reward=0.8, lengths=(5, 5)) is None  # 4.0 < 4.5: revert
    assert adapter.reverted == 1 and not adapter.adapted and adapter.phase is Phase.DONE
    assert adapter.pre_return == pytest.approx(5.0) and adapter.post_return == pytest.approx(4.0)
    assert adapter.begin_step(0) is None


def test_reset_on_new_policy_ignores_old_results(policy: OnnxPolicy) -> None:
    rng = np.random.default_rng(5)
    adapter = OnlineAdapter(episodes=1, steps_max=3)
    adapter.reset(policy)
    job = _episode(adapter, policy, rng, 4)
    assert job is not None
    adapter.deliver(job.run())
    adapter.begin_step(0)
    assert adapter.adapted
    late = _episode(adapter, policy, rng, 3)  # the job of theta' is out when a new meta-policy arrives
    assert late is not None
    adapter.reset(policy)
    adapter.deliver(late.run())  # stale generation: dropped
    assert not adapter.adapted and adapter.steps == 0 and adapter.pre_return is None
    assert adapter.begin_step(0) is None and adapter.phase is Phase.COLLECTING
    adapter.reset(None)
    assert adapter.phase is Phase.DISABLED


def test_interrupted_episodes_are_not_used(policy: OnnxPolicy) -> None:
    rng = np.random.default_rng(6)
    adapter = OnlineAdapter(episodes=1, steps_max=1)
    adapter.reset(policy)
    assert _episode(adapter, policy, rng, 4, first_step=3) is None  # joined mid-episode
    adapter.begin_step(0)
    adapter.record(np.zeros(OBS_DIM), np.zeros(ACT_DIM))
    adapter.drop()  # a hold
    assert adapter.close(1.0, ended=True) is None
    assert _episode(adapter, policy, rng, 4) is not None
