"""MAML inner step and outer meta-updates (MAML-TRPO, ProMP) on tiny float64 problems."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import torch

from mbmpo_core.meta import MetaOptimizer, RolloutBatch, inner_step, masked_task_mean, task_batched
from mbmpo_core.policy import BatchedImpl, GaussianMLPPolicy, Params
from mbmpo_core.trpo import trpo_step


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add sync cost (and stall badly on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


M, N, H, OBS, ACT = 3, 4, 5, 2, 2


def _policy(hidden: tuple[int, ...] = (6, 6), seed: int = 0) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(OBS, ACT, hidden).double()
    with torch.no_grad():
        for p in policy.params().values():
            p.copy_(0.5 * torch.randn_like(p))
    return policy


def _detached(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}


def _mask(gen: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(2, H + 1, (M, N), generator=gen)
    return (torch.arange(H) < lengths.unsqueeze(-1)).double()


def _sample_batch(
    policy: GaussianMLPPolicy, params: Params, gen: torch.Generator, targets: torch.Tensor | None = None
) -> RolloutBatch:
    """Rollouts of task-batched ``params`` on random observations. Advantages are random, or
    (bandit) ``-|a - target_m|^2`` normalised per task when ``targets [M, ACT]`` is given."""
    obs = torch.randn(M, N, H, OBS, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        act = policy.sample(obs, params, generator=gen)
    if targets is None:
        adv = torch.randn(M, N, H, generator=gen, dtype=torch.float64)
    else:
        reward = -(act - targets.view(M, 1, 1, ACT)).pow(2).sum(-1)
        adv = (reward - reward.mean(dim=(1, 2), keepdim=True)) / reward.std(dim=(1, 2), keepdim=True)
    mask = _mask(gen)
    batch = RolloutBatch(obs, act, torch.zeros_like(adv), mask, adv * mask, torch.zeros_like(adv))
    return batch.with_old_dist(policy, params)


def _pre_post(
    policy: GaussianMLPPolicy, alpha: float, seed: int = 1, targets: torch.Tensor | None = None
) -> tuple[RolloutBatch, RolloutBatch]:
    gen = torch.Generator().manual_seed(seed)
    theta = task_batched(policy, _detached(policy.params()), M)
    pre = _sample_batch(policy, theta, gen, targets)
    adapted = _detached(inner_step(policy, policy.params(), pre, alpha))
    return pre, _sample_batch(policy, adapted, gen, targets)


# --------------------------------------------------------------------------- inner step
@pytest.mark.parametrize("form", ["ratio", "log_prob"])
def test_inner_step_matches_closed_form_linear_gaussian(form: str) -> None:
    """1-D linear-Gaussian policy: d log pi / d(w, b, log_std) is known in closed form."""
    policy = GaussianMLPPolicy(1, 1, hidden_sizes=()).double()
    w, b, log_std = 0.7, -0.2, math.log(0.8)
    with torch.no_grad():
        own = policy.params()
        own["out.weight"].fill_(w)
        own["out.bias"].fill_(b)
        own["log_std"].fill_(log_std)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 3, 4, 1, generator=gen, dtype=torch.float64)
    act = torch.randn(2, 3, 4, 1, generator=gen, dtype=torch.float64)
    adv = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 3, 4, dtype=torch.float64)
    mask[0, 1, 2:] = 0
    batch = RolloutBatch(obs, act, torch.zeros_like(adv), mask, adv, torch.zeros_like(adv))
    batch = batch.with_old_dist(policy, task_batched(policy, _detached(policy.params()), 2))

    s, a = obs[..., 0], act[..., 0]
    var = math.exp(2 * log_std)
    z = (a - (w * s + b)) / var
    grad = {
        "out.weight": masked_task_mean(adv * z * s, mask),
        "out.bias": masked_task_mean(adv * z, mask),
        "log_std": masked_task_mean(adv * ((a - (w * s + b)) ** 2 / var - 1.0), mask),
    }
    theta = {"out.weight": w, "out.bias": b, "log_std": log_std}
    alphas: list[float | dict[str, torch.Tensor]] = [
        0.3,
        {k: torch.full_like(v, lr) for (k, v), lr in zip(policy.params().items(), (0.1, 0.2, 0.05), strict=True)},
    ]
    for alpha in alphas:
        adapted = inner_step(policy, policy.params(), batch, alpha, surrogate=form)  # type: ignore[arg-type]
        for k in theta:
            lr = alpha if isinstance(alpha, float) else float(alpha[k].reshape(-1)[0])
            expected = theta[k] + lr * grad[k]
            assert adapted[k].shape[0] == 2
            assert torch.allclose(adapted[k].reshape(2), expected, atol=1e-12), (k, alpha)


def test_inner_step_alpha_zero_is_identity_and_tasks_are_independent() -> None:
    policy = _policy()
    pre, _ = _pre_post(policy, 0.0)
    theta = _detached(policy.params())
    same = inner_step(policy, theta, pre, 0.0)
    for k, v in theta.items():
        assert torch.equal(same[k], v.expand(M, *v.shape))
    adapted = inner_step(policy, theta, pre, 0.1)
    changed = replace(pre, advantages=torch.where(torch.arange(M).view(M, 1, 1) == 1, 0.0, pre.advantages))
    adapted2 = inner_step(policy, theta, changed, 0.1)
    for k in theta:
        assert torch.equal(adapted[k][0], adapted2[k][0]) and torch.equal(adapted[k][2], adapted2[k][2])
        assert torch.allclose(adapted2[k][1], theta[k])  # zero advantages: no update for task 1
    with torch.no_grad():  # works without grad mode too (used by the line search)
        adapted3 = inner_step(policy, policy.params(), pre, 0.1)
    for k in theta:
        assert torch.allclose(adapted3[k], adapted[k]) and not adapted3[k].requires_grad


# --------------------------------------------------------------------------- meta-gradient
def _outer_objective(meta: MetaOptimizer, pre: RolloutBatch, post: RolloutBatch, second: bool) -> torch.Tensor:
    return meta.surrogate(meta.adapt(pre, create_graph=second), post).mean()


def _fd_grad(meta: MetaOptimizer, f: Callable[[], torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    policy = meta.policy
    x0 = policy.params_to_vector().detach().clone()
    out = torch.zeros_like(x0)
    for i in range(x0.numel()):
        e = torch.zeros_like(x0)
        e[i] = eps
        policy.load_vector(x0 + e)
        plus = float(f().detach())
        policy.load_vector(x0 - e)
        minus = float(f().detach())
        out[i] = (plus - minus) / (2 * eps)
    policy.load_vector(x0)
    return out


@pytest.mark.parametrize("impl", ["matmul", "vmap"])
def test_meta_gradient_matches_finite_differences_and_needs_second_order(impl: BatchedImpl) -> None:
    policy = _policy(hidden=(5,))
    policy.batched_impl = impl
    alpha = 0.5  # large, so the second-order term is clearly visible
    pre, post = _pre_post(policy, alpha)
    meta = MetaOptimizer(policy, inner_lr=alpha)
    params = list(policy.params().values())
    grad2 = torch.cat([g.reshape(-1) for g in torch.autograd.grad(_outer_objective(meta, pre, post, True), params)])
    grad1 = torch.cat([g.reshape(-1) for g in torch.autograd.grad(_outer_objective(meta, pre, post, False), params)])
    fd = _fd_grad(meta, lambda: _outer_objective(meta, pre, post, False))
    assert float((grad2 - fd).norm() / fd.norm()) < 1e-4
    assert float((grad1 - fd).norm() / fd.norm()) > 1e-2  # first-order MAML misses d theta'/d theta


def test_outer_kl_hvp_matches_finite_differences() -> None:
    from mbmpo_core.trpo import hessian_vector_product

    policy = _policy(hidden=(5,))
    alpha = 0.5
    pre, post = _pre_post(policy, alpha)
    meta = MetaOptimizer(policy, inner_lr=alpha)
    params = list(policy.params().values())

    def kl(create_graph: bool) -> torch.Tensor:
        return meta.kl(meta.adapt(pre, create_graph=create_graph), post).mean()

    assert float(kl(False).detach()) < 1e-12  # post batch was sampled by theta'(theta_old)
    v = torch.randn(policy.params_to_vector().numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    hv_exact = hessian_vector_product(lambda: kl(True), params, damping=0.0)(v)
    hv_first = hessian_vector_product(lambda: kl(False), params, damping=0.0)(v)

    def kl_grad_at(x: torch.Tensor) -> torch.Tensor:
        policy.load_vector(x)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl(True), params)])

    x0 = policy.params_to_vector().detach().clone()
    eps = 1e-5
    fd = (kl_grad_at(x0 + eps * v) - kl_grad_at(x0 - eps * v)) / (2 * eps)
    policy.load_vector(x0)
    assert float((hv_exact - fd).norm() / fd.norm()) < 1e-4
    assert float((hv_first - fd).norm() / fd.norm()) > 1e-2
    assert float(torch.dot(v, hv_exact)) > 0  # Gauss-Newton form at theta_old: PSD


def test_kl_hessian_option_changes_the_outer_step_for_large_alpha() -> None:
    policy_exact = _policy(hidden=(5,))
    policy_first = copy.deepcopy(policy_exact)
    pre, post = _pre_post(policy_exact, 0.5)
    MetaOptimizer(policy_exact, inner_lr=0.5, kl_hessian="exact").outer_step(pre, post)
    MetaOptimizer(policy_first, inner_lr=0.5, kl_hessian="first_order").outer_step(pre, post)
    start = _policy(hidden=(5,)).params_to_vector().detach()
    step_exact = policy_exact.params_to_vector().detach() - start
    step_first = policy_first.params_to_vector().detach() - start
    assert float(step_exact.norm()) > 0 and float(step_first.norm()) > 0
    assert float((step_exact - step_first).norm() / step_exact.norm()) > 1e-2


# --------------------------------------------------------------------------- outer steps
def test_alpha_zero_outer_step_equals_plain_trpo() -> None:
    policy_a = _policy()
    policy_b = copy.deepcopy(policy_a)
    pre, post = _pre_post(policy_a, 0.0)
    stats = MetaOptimizer(policy_a, inner_lr=0.0).outer_step(pre, post)

    def f_loss() -> torch.Tensor:
        ratio = torch.exp(policy_b.log_prob(post.obs, post.act) - post.old_log_prob)
        return -masked_task_mean(ratio * post.advantages, post.mask).mean()

    def f_kl() -> torch.Tensor:
        assert post.old_mean is not None and post.old_log_std is not None
        mean, log_std = policy_b.mean_and_log_std(post.obs)
        kl = (
            log_std - post.old_log_std
            + 0.5 * (torch.exp(2 * (post.old_log_std - log_std)) + (post.old_mean - mean) ** 2 / torch.exp(2 * log_std))
            - 0.5
        ).sum(-1)  # fmt: skip
        return masked_task_mean(kl, post.mask).mean()

    ref = trpo_step(list(policy_b.params().values()), f_loss, f_kl, max_kl=0.01)
    assert stats["accepted"] == 1.0 and ref.accepted
    assert torch.allclose(policy_a.params_to_vector(), policy_b.params_to_vector(), atol=1e-9)
    assert stats["kl"] == pytest.approx(ref.kl, rel=1e-6)
    assert not torch.allclose(policy_a.params_to_vector(), _policy().params_to_vector())  # it moved


@pytest.mark.parametrize("kl_hessian", ["exact", "first_order"])
def test_outer_trpo_step_improves_bandit_within_trust_region(kl_hessian: str) -> None:
    policy = _policy()
    alpha = 0.05
    targets = torch.tensor([[1.0, -1.0], [0.5, 0.5], [-1.0, 0.0]], dtype=torch.float64)
    pre, post = _pre_post(policy, alpha, seed=3, targets=targets)
    meta = MetaOptimizer(policy, inner_lr=alpha, kl_hessian=kl_hessian)  # type: ignore[arg-type]
    with torch.no_grad():
        before = float(_outer_objective(meta, pre, post, False))
    stats = meta.outer_step(pre, post)
    with torch.no_grad():
        after = float(_outer_objective(meta, pre, post, False))
        kl = float(meta.kl(meta.adapt(pre, create_graph=False), post).mean())
    assert stats["accepted"] == 1.0
    assert after > before + 1e-3
    assert stats["surrogate_before"] == pytest.approx(before) and stats["surrogate_after"] == pytest.approx(after)
    assert 0.0 < kl <= 0.01 * 1.5 and kl == pytest.approx(stats["kl"])
    assert stats["inner_kl"] > 0


def test_outer_step_reconstructs_missing_old_distributions() -> None:
    policy_a = _policy()
    policy_b = copy.deepcopy(policy_a)
    pre, post = _pre_post(policy_a, 0.1)
    bare_pre = replace(pre, old_mean=None, old_log_std=None)
    bare_post = replace(post, old_mean=None, old_log_std=None)
    MetaOptimizer(policy_a, inner_lr=0.1).outer_step(pre, post)
    MetaOptimizer(policy_b, inner_lr=0.1).outer_step(bare_pre, bare_post)
    assert torch.allclose(policy_a.params_to_vector(), policy_b.params_to_vector(), atol=1e-10)


def test_learned_inner_lr_is_updated_and_checkpointed() -> None:
    policy = _policy()
    pre, post = _pre_post(policy, 0.05, seed=4)
    meta = MetaOptimizer(policy, inner_lr=0.05, learn_inner_lr=True)
    assert isinstance(meta.alpha, dict) and list(meta.alpha) == policy.param_names()
    stats = meta.outer_step(pre, post)
    assert stats["accepted"] == 1.0
    moved = [float((v.detach() - 0.05).abs().max()) for v in meta.alpha.values()]
    assert max(moved) > 0
    other = MetaOptimizer(policy, inner_lr=0.05, learn_inner_lr=True)
    other.load_state_dict(meta.state_dict())
    assert isinstance(other.alpha, dict)
    for k, v in meta.alpha.items():
        assert torch.equal(other.alpha[k], v)


def test_promp_step_improves_clipped_objective_and_adapts_penalty() -> None:
    policy = _policy()
    alpha = 0.05
    targets = torch.tensor([[1.0, -1.0], [0.5, 0.5], [-1.0, 0.0]], dtype=torch.float64)
    pre, post = _pre_post(policy, alpha, seed=3, targets=targets)
    meta = MetaOptimizer(policy, algo="promp", inner_lr=alpha, promp_lr=1e-2, promp_steps=5, target_inner_kl=1.0)
    stats = meta.outer_step(pre, post)
    assert stats["surrogate_after"] > stats["surrogate_before"] + 1e-3
    # Inner KL is far below target / 1.5, so every task's penalty is halved from 5e-4.
    assert meta.inner_kl_coef is not None
    assert torch.allclose(meta.inner_kl_coef, torch.full((M,), 2.5e-4, dtype=torch.float64))
    state = meta.state_dict()
    other = MetaOptimizer(_policy(), algo="promp", inner_lr=alpha)
    other.load_state_dict(state)
    assert other._adam is not None and other.inner_kl_coef is not None
    assert torch.equal(other.inner_kl_coef, meta.inner_kl_coef)


def test_unknown_algo_is_rejected() -> None:
    with pytest.raises(ValueError):
        MetaOptimizer(_policy(), algo="ppo")
