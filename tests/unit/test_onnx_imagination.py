"""ONNX imagination on the robot equals training's torch imagination for one member: same executed (clipped)
actions, raw samples recorded, reward on the executed action, observation and reward clips, done masks."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from dynamics_helpers import ACT_DIM, OBS_DIM, K, fitted_ensemble, toy_data, toy_spec

from mbmpo_core.ensemble import DynamicsEnsemble
from mbmpo_core.export import export_bundle
from mbmpo_core.imagination import imagine as torch_imagine
from mbmpo_core.onnx_dynamics import OnnxEnsemble
from mbmpo_core.onnx_imagination import imagine
from mbmpo_core.onnx_runtime import OnnxPolicy
from mbmpo_core.policy import GaussianMLPPolicy

LOW, HIGH = np.full(ACT_DIM, -0.3), np.full(ACT_DIM, 0.3)  # narrow: the policy's actions are clipped often
DONE_ABOVE = 3.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reward(obs: Any, act: Any, next_obs: Any) -> Any:
    """numpy or torch: a cost on the executed action and a term on the next observation."""
    return next_obs[:, 1] - (act**2).sum(-1) + 0.01 * obs[:, 2]


def done(next_obs: Any) -> Any:
    return next_obs[:, 3] > DONE_ABOVE


def never(next_obs: Any) -> Any:
    return next_obs[:, 0] != next_obs[:, 0]  # all False (finite observations)


def _task(done_fn: Any) -> SimpleNamespace:
    return SimpleNamespace(action_low=LOW, action_high=HIGH, reward=reward, done=done_fn)


def _policy(log_std: float) -> GaussianMLPPolicy:
    torch.manual_seed(3)
    policy = GaussianMLPPolicy(OBS_DIM, ACT_DIM, (16,))
    with torch.no_grad():
        policy.params()["out.weight"].mul_(50.0)
        policy.params()["out.bias"].fill_(0.25)  # means on both sides of the bound 0.3
        policy.params()["log_std"].fill_(log_std)
    policy.set_obs_normalizer(torch.full((OBS_DIM,), 2.0), torch.full((OBS_DIM,), 1.0 / 3.0))
    return policy


def _onnx(policy: GaussianMLPPolicy, ensemble: DynamicsEnsemble) -> tuple[OnnxPolicy, OnnxEnsemble]:
    bundle = export_bundle(policy, **{**toy_spec(), "action_low": LOW, "action_high": HIGH}, ensemble=ensemble)
    onnx_ens = OnnxEnsemble.from_bundle(bundle)
    assert onnx_ens is not None
    return OnnxPolicy.from_bundle(bundle), onnx_ens


def _torch_member(policy: GaussianMLPPolicy, ensemble: DynamicsEnsemble, member: int, starts: np.ndarray,
                  horizon: int, obs_clip: float, reward_clip: float, done_fn: Any = done) -> Any:
    """Training's imagination with one task per member (task m in model m); member ``member``'s task."""
    theta = {k: v.detach().unsqueeze(0).expand(K, *v.shape) for k, v in policy.params().items()}
    start = torch.as_tensor(starts, dtype=torch.float32).unsqueeze(0).expand(K, -1, -1).contiguous()
    out = torch_imagine(ensemble, policy, theta, _task(done_fn), start, horizon, obs_clip, reward_clip,  # type: ignore[arg-type]
                        torch.Generator().manual_seed(0))
    return SimpleNamespace(**{k: getattr(out, k)[member].numpy() for k in ("obs", "act", "rewards", "mask")})


@pytest.mark.parametrize("member", [0, 2])
def test_deterministic_rollouts_equal_torch_imagination(member: int) -> None:
    """std e^-20: a sample is its mean, so both sides must give the same trajectories step for step."""
    policy, ensemble = _policy(-20.0), fitted_ensemble()
    onnx_policy, onnx_ens = _onnx(policy, ensemble)
    starts, _, _ = toy_data(12, seed=21)
    horizon, obs_clip, reward_clip = 12, 8.0, 2.5
    expected = _torch_member(policy, ensemble, member, starts, horizon, obs_clip, reward_clip)
    got = imagine(onnx_ens, member, None, onnx_policy, None, starts, horizon, reward, done,
                  np.random.default_rng(0), LOW, HIGH, obs_clip=obs_clip, reward_clip=reward_clip)
    assert got.obs.shape == (12, horizon, OBS_DIM) and got.act.shape == (12, horizon, ACT_DIM)
    np.testing.assert_allclose(got.obs, expected.obs, atol=2e-4)
    np.testing.assert_allclose(got.act, expected.act, atol=2e-4)
    np.testing.assert_allclose(got.rewards, expected.rewards, atol=2e-4)
    np.testing.assert_array_equal(got.mask, expected.mask)
    # The checks have teeth: raw samples outside the bounds, clips that bind, episodes that end early.
    assert np.any(np.abs(got.act) > 0.3) and np.any(np.abs(got.rewards) == reward_clip)
    assert np.any(np.abs(got.obs) == obs_clip) and 0 < got.mask.sum() < got.mask.size
    ended = got.mask[:, :-1] > got.mask[:, 1:]
    assert np.all(got.rewards[got.mask == 0] == 0) and ended.any()


def test_stochastic_rollouts_match_torch_statistics() -> None:
    """Real noise (std 0.5): the mean imagined return per step agrees with training's within sampling error."""
    policy, ensemble = _policy(np.log(0.5)), fitted_ensemble()
    onnx_policy, onnx_ens = _onnx(policy, ensemble)
    starts, _, _ = toy_data(400, seed=22)
    expected = _torch_member(policy, ensemble, 1, starts, 5, 1e4, 1e4, done_fn=never)
    got = imagine(onnx_ens, 1, None, onnx_policy, None, starts, 5, reward, None, np.random.default_rng(1), LOW, HIGH)
    for name in ("rewards", "obs"):
        a, b = getattr(got, name).reshape(400, -1), getattr(expected, name).reshape(400, -1)
        stderr = np.sqrt(a.var(0) / 400 + b.var(0) / 400) + 1e-6
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 5 * stderr), name
    assert np.all(got.mask == 1)  # done_fn None: only the horizon ends an episode
    raw_std = (got.act - onnx_policy.distribution(got.obs.reshape(-1, OBS_DIM))[0].reshape(got.act.shape)).std()
    assert 0.45 < raw_std < 0.55  # the recorded action is the raw sample, noise and all


def test_fed_last_layer_and_fed_params_are_used() -> None:
    policy, ensemble = _policy(-20.0), fitted_ensemble()
    onnx_policy, onnx_ens = _onnx(policy, ensemble)
    starts, _, _ = toy_data(4, seed=23)
    weight, bias = onnx_ens.last_layer
    base = imagine(onnx_ens, 0, None, onnx_policy, None, starts, 3, reward, None, np.random.default_rng(0), LOW, HIGH)
    shifted = imagine(onnx_ens, 0, (weight, bias + 1.0), onnx_policy, None, starts, 3, reward, None,
                      np.random.default_rng(0), LOW, HIGH)
    first_step = shifted.obs[:, 1] - base.obs[:, 1]
    np.testing.assert_allclose(first_step, np.broadcast_to(onnx_ens.target_std, first_step.shape), rtol=1e-4)
    params = dict(onnx_policy.params, **{"out.bias": onnx_policy.params["out.bias"] + 0.05,
                                         "out.weight": onnx_policy.params["out.weight"] * 0.0})
    moved = imagine(onnx_ens, 0, None, onnx_policy, params, starts, 3, reward, None, np.random.default_rng(0),
                    LOW, HIGH)
    np.testing.assert_allclose(moved.act, np.broadcast_to(params["out.bias"], moved.act.shape), atol=1e-6)


def test_bad_arguments_are_one_line() -> None:
    onnx_policy, onnx_ens = _onnx(_policy(-1.0), fitted_ensemble())
    starts, _, _ = toy_data(4)
    for kwargs, match in [({"member": K}, "member"), ({"horizon": 0}, "horizon"),
                          ({"starts": starts[:, :2]}, "starts must be")]:
        args = {"member": 0, "horizon": 3, "starts": starts, **kwargs}
        with pytest.raises(ValueError, match=match):
            imagine(onnx_ens, args["member"], None, onnx_policy, None, args["starts"], args["horizon"], reward,
                    None, np.random.default_rng(0), LOW, HIGH)
