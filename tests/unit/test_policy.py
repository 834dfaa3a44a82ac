"""GaussianMLPPolicy: layout, functional/batched evaluation, distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from mbmpo_core.policy import BatchedImpl, GaussianMLPPolicy, params_to_vector, vector_to_params


def _policy(obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(obs_dim, act_dim).double()
    # Non-trivial values everywhere (the default output init is tiny).
    with torch.no_grad():
        for p in policy.params().values():
            p.copy_(0.5 * torch.randn_like(p))
    return policy


def _batched(policy: GaussianMLPPolicy, m: int, scale: float = 0.3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        k: v.detach() + scale * torch.randn(m, *v.shape, generator=gen, dtype=v.dtype)
        for k, v in policy.params().items()
    }


def test_flat_named_layout_and_defaults() -> None:
    policy = GaussianMLPPolicy(5, 2)
    shapes = {k: tuple(v.shape) for k, v in policy.params().items()}
    assert list(shapes) == ["l0.weight", "l0.bias", "l1.weight", "l1.bias", "out.weight", "out.bias", "log_std"]
    assert policy.param_names() == list(shapes)
    assert shapes["l0.weight"] == (32, 5) and shapes["l1.weight"] == (32, 32)
    assert shapes["out.weight"] == (2, 32) and shapes["log_std"] == (2,)
    assert torch.equal(policy.log_std.detach(), torch.zeros(2))  # log(1.0)
    assert torch.allclose(GaussianMLPPolicy(5, 2, init_std=0.5).log_std.detach(), torch.full((2,), math.log(0.5)))


def test_vector_roundtrip_keeps_order_and_gradients() -> None:
    policy = _policy()
    params = policy.params()
    vec = params_to_vector(params)
    assert vec.shape == (sum(v.numel() for v in params.values()),)
    back = vector_to_params(vec, params)
    for k in params:
        assert torch.equal(back[k], params[k])
    assert torch.equal(policy.params_to_vector(), vec)
    # A vector -> params -> output chain stays differentiable in the vector.
    x = vec.detach().clone().requires_grad_()
    obs = torch.randn(4, 3, dtype=torch.float64)
    policy.forward(obs, policy.vector_to_params(x)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    policy.load_vector(vec.detach() * 2)
    assert torch.allclose(policy.params_to_vector(), 2 * vec.detach())
    with pytest.raises(ValueError):
        vector_to_params(vec[:-1], params)


def test_mean_matches_explicit_mlp_with_normalizer() -> None:
    policy = _policy()
    mean_o, std_o = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 1.0])
    policy.set_obs_normalizer(mean_o, std_o)
    p = {k: v.detach() for k, v in policy.params().items()}
    obs = torch.randn(7, 3, dtype=torch.float64)
    z = (obs - mean_o.double()) / std_o.double()
    h = torch.tanh(z @ p["l0.weight"].T + p["l0.bias"])
    h = torch.tanh(h @ p["l1.weight"].T + p["l1.bias"])
    expected = h @ p["out.weight"].T + p["out.bias"]
    mean, log_std = policy.mean_and_log_std(obs)
    assert torch.allclose(mean, expected, atol=1e-12)
    assert log_std.shape == (7, 2) and torch.allclose(log_std, p["log_std"].expand(7, 2))
    assert not any(n.startswith("obs") for n, _ in policy.named_parameters())  # not trained


def test_log_prob_kl_entropy_match_torch_distributions() -> None:
    policy = _policy()
    obs = torch.randn(5, 4, 3, dtype=torch.float64)
    act = torch.randn(5, 4, 2, dtype=torch.float64)
    other = {k: v.detach() + 0.2 for k, v in policy.params().items()}
    mean, log_std = policy.mean_and_log_std(obs)
    dist = Normal(mean, log_std.exp())
    assert torch.allclose(policy.log_prob(obs, act), dist.log_prob(act).sum(-1), atol=1e-12)
    mean2, log_std2 = policy.mean_and_log_std(obs, other)
    ref_kl = kl_divergence(dist, Normal(mean2, log_std2.exp())).sum(-1)
    kl = policy.kl(obs, policy.params(), other)
    assert kl.shape == (5, 4) and torch.allclose(kl, ref_kl, atol=1e-12)
    assert policy.kl(obs, other, other).abs().max() < 1e-12
    assert torch.allclose(policy.entropy(), dist.entropy()[0, 0].sum(), atol=1e-12)


def test_sample_is_reproducible_and_has_right_moments() -> None:
    policy = _policy()
    obs = torch.randn(3, dtype=torch.float64).expand(20000, 3)
    a1 = policy.sample(obs, generator=torch.Generator().manual_seed(3))
    a2 = policy.sample(obs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2)
    mean, log_std = policy.mean_and_log_std(obs[:1])
    assert torch.allclose(a1.mean(0), mean[0], atol=0.05)
    assert torch.allclose(a1.std(0), log_std[0].exp(), rtol=0.03)


@pytest.mark.parametrize("impl", ["matmul", "vmap"])
def test_task_batched_params_match_per_task_loop(impl: BatchedImpl) -> None:
    policy = _policy()
    policy.batched_impl = impl
    m = 4
    params = _batched(policy, m)
    obs = torch.randn(m, 5, 6, 3, dtype=torch.float64)
    act = torch.randn(m, 5, 6, 2, dtype=torch.float64)
    mean, log_std = policy.mean_and_log_std(obs, params)
    logp = policy.log_prob(obs, act, params)
    assert mean.shape == (m, 5, 6, 2) and log_std.shape == (m, 5, 6, 2) and logp.shape == (m, 5, 6)
    for i in range(m):
        p_i = {k: v[i] for k, v in params.items()}
        mean_i, log_std_i = policy.mean_and_log_std(obs[i], p_i)
        assert torch.allclose(mean[i], mean_i, atol=1e-12)
        assert torch.allclose(log_std[i], log_std_i, atol=1e-12)
        assert torch.allclose(logp[i], policy.log_prob(obs[i], act[i], p_i), atol=1e-12)
    assert policy.entropy(params).shape == (m,)


def test_matmul_and_vmap_paths_agree_including_gradients() -> None:
    policy = _policy()
    theta = {k: v.detach().clone().requires_grad_() for k, v in policy.params().items()}
    m = 3
    obs = torch.randn(m, 8, 3, dtype=torch.float64)
    act = torch.randn(m, 8, 2, dtype=torch.float64)
    grads = []
    impls: tuple[BatchedImpl, ...] = ("matmul", "vmap")
    for impl in impls:
        policy.batched_impl = impl
        batched = {k: v.unsqueeze(0).expand(m, *v.shape) * (1 + 0.1 * torch.arange(m).double().view(-1, *[1] * v.dim()))
                   for k, v in theta.items()}  # fmt: skip
        out = policy.log_prob(obs, act, batched).sum()
        grads.append(torch.autograd.grad(out, list(theta.values())))
    for g_a, g_b in zip(*grads, strict=True):
        assert torch.allclose(g_a, g_b, atol=1e-10)


def test_adapted_params_stay_differentiable_in_theta() -> None:
    policy = _policy()
    obs = torch.randn(10, 3, dtype=torch.float64)
    act = torch.randn(10, 2, dtype=torch.float64)
    theta = policy.params()
    grads = torch.autograd.grad(policy.log_prob(obs, act).mean(), list(theta.values()), create_graph=True)
    adapted = {k: v + 0.1 * g for (k, v), g in zip(theta.items(), grads, strict=True)}
    policy.log_prob(obs, act, adapted).mean().backward()
    # d theta'/d theta = I + 0.1 * Hessian: the second-order part makes log_std's grad differ from the plain one.
    plain = torch.autograd.grad(policy.log_prob(obs, act, adapted).mean(), [adapted["log_std"]])[0]
    assert theta["log_std"].grad is not None
    assert not torch.allclose(theta["log_std"].grad, plain, atol=1e-6)


def test_ignored_observation_does_not_change_the_action() -> None:
    policy = GaussianMLPPolicy(4, 2)
    policy.set_obs_normalizer(torch.zeros(4), torch.ones(4), ignore=[0])
    obs = torch.randn(5, 4)
    moved = obs.clone()
    moved[:, 0] += 1e3  # a walker far outside the data
    torch.testing.assert_close(policy(moved), policy(obs), rtol=0, atol=0)
    moved[:, 1] += 1.0
    assert not torch.allclose(policy(moved), policy(obs))
