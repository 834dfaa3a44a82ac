"""Conjugate gradient, Hessian-vector products, backtracking line search, TRPO step."""

from __future__ import annotations

import math

import pytest
import torch

from mbmpo_core.trpo import (
    backtracking_line_search,
    conjugate_gradient,
    flat_grad,
    hessian_vector_product,
    trpo_step,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spd(n: int, cond: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    eig = torch.logspace(0, math.log10(cond), n, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T


def test_cg_matches_dense_solve() -> None:
    a = _spd(10, 20.0, seed=0)
    b = torch.randn(10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=10)
    ref = torch.linalg.solve(a, b)
    assert float((x - ref).norm() / ref.norm()) < 1e-6
    # Too few iterations on a 10-dim problem must not be exact (the test can fail).
    x3 = conjugate_gradient(lambda v: a @ v, b, iters=3)
    assert float((x3 - ref).norm() / ref.norm()) > 1e-3


def test_cg_stops_on_small_residual() -> None:
    calls = []

    def avp(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return 2.0 * v

    b = torch.ones(5, dtype=torch.float64)
    x = conjugate_gradient(avp, b, iters=10)
    assert torch.allclose(x, b / 2) and len(calls) == 1


def _tiny_problem() -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    return [w, b], x


def _f(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w, b = params
    return (torch.tanh(x @ w + b) ** 2).sum() + (w**3).sum() * b.sum()


def test_hvp_matches_dense_hessian_and_finite_differences() -> None:
    params, x = _tiny_problem()
    damping = 1e-3
    hvp = hessian_vector_product(lambda: _f(params, x), params, damping)
    v = torch.randn(8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    flat0 = torch.cat([p.detach().reshape(-1) for p in params])

    def f_flat(z: torch.Tensor) -> torch.Tensor:
        return _f([z[:6].view(3, 2), z[6:]], x)

    hess = torch.autograd.functional.hessian(f_flat, flat0)
    assert torch.allclose(hvp(v), hess @ v + damping * v, atol=1e-10)
    assert torch.allclose(hvp(2 * v), 2 * hvp(v), atol=1e-10)  # reusable closure

    def grad_at(z: torch.Tensor) -> torch.Tensor:
        zz = z.clone().requires_grad_()
        return torch.autograd.grad(f_flat(zz), zz)[0]

    eps = 1e-5
    fd = (grad_at(flat0 + eps * v) - grad_at(flat0 - eps * v)) / (2 * eps)
    assert torch.allclose(hvp(v) - damping * v, fd, atol=1e-7)


def _quadratic_search(
    loss_at: list[float], kl_at: list[float], max_kl: float = 0.01
) -> tuple[torch.Tensor, bool, float]:
    """Line search on scripted loss/KL values indexed by backtrack number (x0 = 0, step = 1)."""
    fracs = [0.8**k for k in range(len(loss_at))]

    def index(x: torch.Tensor) -> int:
        return min(range(len(fracs)), key=lambda k: abs(fracs[k] - float(x[0])))

    def f_loss(x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(1.0 if float(x[0]) == 0.0 else loss_at[index(x)])

    def f_kl(x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(kl_at[index(x)])

    x, ok, info = backtracking_line_search(f_loss, f_kl, torch.zeros(1), torch.ones(1), 1.0, max_kl, 0.8, len(loss_at))
    return x, ok, info.step_frac


def test_line_search_accepts_first_good_step() -> None:
    # k=0 violates KL, k=1 does not improve, k=2 is good, k=3 is good too (but later).
    x, ok, frac = _quadratic_search([0.5, 1.2, 0.9, 0.8], [0.05, 0.001, 0.009, 0.001])
    assert ok and frac == 0.8**2 and torch.allclose(x, torch.tensor([0.64]))


def test_line_search_rejects_when_nothing_is_good() -> None:
    x, ok, frac = _quadratic_search([0.5, 1.2, 1.0, float("nan")], [0.05, 0.001, 0.0, 0.0])
    assert not ok and frac == 0.0 and float(x[0]) == 0.0


def test_line_search_accept_ratio() -> None:
    f_loss = lambda x: 1.0 - 0.01 * x.sum()  # noqa: E731 - actual improvement is 1% of expected
    f_kl = lambda x: torch.zeros(())  # noqa: E731
    args = (f_loss, f_kl, torch.zeros(2), torch.ones(2), 2.0, 0.01)
    assert backtracking_line_search(*args, accept_ratio=0.0)[1]
    assert not backtracking_line_search(*args, accept_ratio=0.1)[1]


def test_trpo_step_on_gaussian_mean_respects_kl_and_improves() -> None:
    """Unit Gaussian with learnable mean: the TRPO step is analytic (KL = 0.5 |mu - mu0|^2)."""
    mu = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    mu0 = torch.zeros(3, dtype=torch.float64)
    target = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    max_kl = 0.01
    stats = trpo_step([mu], lambda: (target * mu).sum().neg(), lambda: 0.5 * (mu - mu0).pow(2).sum(), max_kl)
    assert stats.accepted and stats.step_frac == 1.0
    # Full natural step: direction target, length sqrt(2 max_kl).
    expected = target / target.norm() * math.sqrt(2 * max_kl)
    assert torch.allclose(mu.detach(), expected, atol=1e-6)
    assert abs(stats.kl - max_kl) < 1e-6
    assert stats.loss_after < stats.loss_before


def test_trpo_step_backtracks_on_nonquadratic_kl() -> None:
    """The true KL grows faster than its quadratic model, so the full step must be shrunk."""
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    max_kl = 0.05
    f_kl = lambda: 0.5 * p.pow(2).sum() + 50.0 * p.pow(4).sum()  # noqa: E731
    stats = trpo_step([p], lambda: -p.sum(), f_kl, max_kl)
    assert stats.accepted and stats.step_frac < 1.0 and stats.n_backtracks >= 1
    assert stats.kl <= max_kl
    assert float(f_kl().detach()) == stats.kl  # params hold the accepted point


def test_flat_grad_fills_unused_with_zeros() -> None:
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    g = flat_grad((a * 3).sum(), [a, b])
    assert torch.equal(g, torch.tensor([3.0, 3.0, 0.0, 0.0, 0.0]))
