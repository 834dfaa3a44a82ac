"""Returns, GAE, advantage normalisation and the linear feature baseline, on torch tensors and numpy arrays
(one implementation: the numpy path must give training's numbers and must not load torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mbmpo_core.advantages import (
    LinearFeatureBaseline,
    compute_advantages,
    discounted_returns,
    gae,
    normalize_advantages,
)


def _prefix_mask(shape: tuple[int, ...], horizon: int, gen: torch.Generator) -> torch.Tensor:
    """Random alive masks: each rollout lives for 1..H steps."""
    lengths = torch.randint(1, horizon + 1, shape, generator=gen)
    return (torch.arange(horizon) < lengths.unsqueeze(-1)).double()


def _naive_gae(r: np.ndarray, v: np.ndarray, length: int, gamma: float, lam: float) -> np.ndarray:
    out = np.zeros_like(r)
    for t in range(length):
        acc, coef = 0.0, 1.0
        for k in range(t, length):
            next_v = v[k + 1] if k + 1 < length else 0.0
            acc += coef * (r[k] + gamma * next_v - v[k])
            coef *= gamma * lam
        out[t] = acc
    return out


def test_discounted_returns_hand_computed() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    ret = discounted_returns(rewards, mask, gamma=0.5)
    expected = torch.tensor([[1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4, 2 + 0.5 * 3 + 0.25 * 4, 3 + 0.5 * 4, 4.0],
                             [1 + 0.5 * 1, 1.0, 0.0, 0.0]])  # fmt: skip
    assert torch.allclose(ret, expected)


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_gae_matches_naive_loop(lam: float) -> None:
    gen = torch.Generator().manual_seed(0)
    m, n, h, gamma = 3, 4, 9, 0.9
    rewards = torch.randn(m, n, h, generator=gen, dtype=torch.float64)
    values = torch.randn(m, n, h, generator=gen, dtype=torch.float64)
    mask = _prefix_mask((m, n), h, gen)
    adv = gae(rewards, values, mask, gamma, lam)
    for i in range(m):
        for j in range(n):
            length = int(mask[i, j].sum())
            ref = _naive_gae(rewards[i, j].numpy(), values[i, j].numpy(), length, gamma, lam)
            np.testing.assert_allclose(adv[i, j].numpy(), ref, atol=1e-10)


def test_gae_lambda_one_is_returns_minus_baseline() -> None:
    gen = torch.Generator().manual_seed(1)
    rewards = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    values = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    mask = _prefix_mask((2, 5), 7, gen)
    expected = (discounted_returns(rewards, mask, 0.99) - values) * mask
    assert torch.allclose(gae(rewards, values, mask, 0.99, 1.0), expected, atol=1e-12)


def test_normalize_advantages_per_task_over_valid_steps() -> None:
    gen = torch.Generator().manual_seed(2)
    adv = 5 + 3 * torch.randn(3, 6, 8, generator=gen, dtype=torch.float64)
    mask = _prefix_mask((3, 6), 8, gen)
    out = normalize_advantages(adv, mask)
    for i in range(3):
        valid = out[i][mask[i] > 0]
        assert abs(float(valid.mean())) < 1e-10
        assert abs(float(valid.std(unbiased=False)) - 1.0) < 1e-6
    assert torch.all(out[mask == 0] == 0)
    glob = normalize_advantages(adv, mask, per_task=False)[mask > 0]
    assert abs(float(glob.mean())) < 1e-10


def test_baseline_features_layout() -> None:
    obs = torch.tensor([[[1.0, -20.0], [2.0, 3.0], [0.0, 0.0]]])  # [N=1, H=3, 2]
    feats = LinearFeatureBaseline().features(obs)
    assert feats.shape == (1, 3, 2 * 2 + 4)
    assert torch.allclose(feats[0, 0], torch.tensor([1.0, -10.0, 1.0, 100.0, 0.0, 0.0, 0.0, 1.0]))
    t = 0.02
    assert torch.allclose(feats[0, 2, 4:], torch.tensor([t, t**2, t**3, 1.0]))


def test_baseline_matches_numpy_lstsq() -> None:
    gen = torch.Generator().manual_seed(3)
    n, h, d = 6, 60, 2
    obs = torch.randn(n, h, d, generator=gen, dtype=torch.float64)
    returns = torch.randn(n, h, generator=gen, dtype=torch.float64)
    mask = _prefix_mask((n,), h, gen)
    baseline = LinearFeatureBaseline(reg_coeff=1e-10)
    baseline.fit(obs, returns, mask)
    assert baseline.last_reg is not None and float(baseline.last_reg) == pytest.approx(1e-10)
    feats = baseline.features(obs)[mask > 0].numpy()
    coeffs, *_ = np.linalg.lstsq(feats, returns[mask > 0].numpy(), rcond=None)
    pred = baseline.predict(obs, mask)
    np.testing.assert_allclose(pred[mask > 0].numpy(), feats @ coeffs, rtol=1e-6, atol=1e-8)
    assert torch.all(pred[mask == 0] == 0)


def test_baseline_batched_fit_is_one_fit_per_task() -> None:
    gen = torch.Generator().manual_seed(4)
    m, n, h, d = 3, 5, 8, 2
    obs = torch.randn(m, n, h, d, generator=gen, dtype=torch.float64)
    returns = torch.randn(m, n, h, generator=gen, dtype=torch.float64) + torch.arange(m).view(m, 1, 1) * 10
    mask = _prefix_mask((m, n), h, gen)
    batched = LinearFeatureBaseline()
    batched.fit(obs, returns, mask)
    assert batched.coeffs is not None and batched.coeffs.shape == (m, 2 * d + 4)
    for i in range(m):
        single = LinearFeatureBaseline()
        single.fit(obs[i], returns[i], mask[i])
        assert single.coeffs is not None
        assert torch.allclose(batched.coeffs[i], single.coeffs, atol=1e-8)
    # A constant-per-task return is fitted exactly (the bias feature).
    const = torch.arange(m).double().view(m, 1, 1).expand(m, n, h) * mask
    batched.fit(obs, const, mask)
    assert torch.allclose(batched.predict(obs, mask), const, atol=1e-4)


def test_baseline_increases_regularisation_when_ill_conditioned() -> None:
    gen = torch.Generator().manual_seed(5)
    h = 50
    obs = torch.zeros(2, 4, h, 3, dtype=torch.float64)  # obs features are all zero: singular normal matrix
    obs[1] = torch.randn(4, h, 3, generator=gen, dtype=torch.float64)
    returns = torch.randn(2, 4, h, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 4, h, dtype=torch.float64)
    # cond(G + 1e-8 I) is ~2e10 for task 0 and ~2e6 for task 1.
    baseline = LinearFeatureBaseline(reg_coeff=1e-8, max_cond=1e8)
    baseline.fit(obs, returns, mask)
    assert baseline.last_reg is not None and baseline.coeffs is not None
    assert float(baseline.last_reg[0]) > 1e-8  # escalated for the degenerate task only
    assert float(baseline.last_reg[1]) == pytest.approx(1e-8)
    assert torch.isfinite(baseline.coeffs).all()
    assert float(baseline.last_reg[0]) == pytest.approx(1e-5)  # first level with cond <= 1e8
    # The regularised fit of the degenerate task still fits what it can (the time features).
    residual = returns[0] - baseline.predict(obs[0:1])[0]
    assert float(residual.pow(2).mean()) <= float((returns[0] - returns[0].mean()).pow(2).mean())


def test_compute_advantages_pipeline() -> None:
    gen = torch.Generator().manual_seed(6)
    m, n, h, d = 2, 4, 12, 2
    obs = torch.randn(m, n, h, d, generator=gen, dtype=torch.float64)
    rewards = torch.randn(m, n, h, generator=gen, dtype=torch.float64)
    mask = _prefix_mask((m, n), h, gen)
    baseline = LinearFeatureBaseline()
    adv, ret = compute_advantages(rewards, obs, mask, 0.99, 1.0, baseline, normalize=False)
    assert torch.allclose(ret, discounted_returns(rewards, mask, 0.99))
    assert torch.allclose(adv, ret - baseline.predict(obs, mask), atol=1e-10)
    values = LinearFeatureBaseline().fit_predict(obs, rewards, mask, 0.99)
    assert torch.allclose(values, baseline.predict(obs, mask), atol=1e-10)
    adv_n, _ = compute_advantages(rewards, obs, mask, normalize=True)
    assert abs(float(adv_n[0][mask[0] > 0].mean())) < 1e-8


# ---------------------------------------------------------------------------------------------- numpy = torch
def _episodes(lead: tuple[int, ...], n: int, horizon: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    obs = (3.0 * rng.standard_normal((*lead, n, horizon, 5))).astype(np.float32)
    rewards = rng.standard_normal((*lead, n, horizon)).astype(np.float32)
    lengths = rng.integers(1, horizon + 1, (*lead, n))
    mask = (np.arange(horizon) < lengths[..., None]).astype(np.float32)
    return obs, rewards * mask, mask


@pytest.mark.parametrize(("lead", "horizon"), [((), 40), ((3,), 25), ((2,), 4)])
def test_numpy_advantages_match_torch(lead: tuple[int, ...], horizon: int) -> None:
    obs, rewards, mask = _episodes(lead, 6, horizon, seed=len(lead) + horizon)
    np_base, torch_base = LinearFeatureBaseline(), LinearFeatureBaseline()
    adv, ret = compute_advantages(rewards, obs, mask, 0.99, 0.95, baseline=np_base)
    t_adv, t_ret = compute_advantages(
        torch.from_numpy(rewards), torch.from_numpy(obs), torch.from_numpy(mask), 0.99, 0.95, baseline=torch_base)
    assert isinstance(adv, np.ndarray) and adv.dtype == np.float32 and isinstance(t_adv, torch.Tensor)
    np.testing.assert_allclose(ret, t_ret.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv, t_adv.numpy(), rtol=1e-5, atol=1e-5)
    assert np_base.last_reg is not None and torch_base.last_reg is not None
    np.testing.assert_array_equal(np_base.last_reg, torch_base.last_reg.numpy())
    assert np.all(adv[mask == 0] == 0)


def test_numpy_gae_and_normalization_match_torch() -> None:
    _, rewards, mask = _episodes((2,), 4, 30, seed=11)
    values = np.random.default_rng(12).standard_normal(rewards.shape).astype(np.float32) * mask
    t = torch.from_numpy
    np.testing.assert_allclose(gae(rewards, values, mask, 0.9, 0.8),
                               gae(t(rewards), t(values), t(mask), 0.9, 0.8).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normalize_advantages(rewards, mask),
                               normalize_advantages(t(rewards), t(mask)).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normalize_advantages(rewards, mask, per_task=False),
                               normalize_advantages(t(rewards), t(mask), per_task=False).numpy(), rtol=1e-5,
                               atol=1e-5)


def test_numpy_ridge_fallback_matches_torch() -> None:
    """The escalation and the float64 fit of the ill-conditioned case above, on numpy arrays."""
    rng = np.random.default_rng(5)
    h = 50
    obs = np.zeros((2, 4, h, 3))
    obs[1] = rng.standard_normal((4, h, 3))
    returns, mask = rng.standard_normal((2, 4, h)), np.ones((2, 4, h))
    np_base, torch_base = LinearFeatureBaseline(1e-8, max_cond=1e8), LinearFeatureBaseline(1e-8, max_cond=1e8)
    np_base.fit(obs, returns, mask)
    torch_base.fit(torch.from_numpy(obs), torch.from_numpy(returns), torch.from_numpy(mask))
    np.testing.assert_array_equal(np_base.last_reg, [1e-5, 1e-8])
    np.testing.assert_array_equal(np_base.last_reg, torch_base.last_reg.numpy())
    np.testing.assert_allclose(np_base.coeffs, torch_base.coeffs.numpy(), rtol=1e-8, atol=1e-10)
    # float32 data is fitted in float64 and the coefficients come back in float32.
    np_base.fit(obs.astype(np.float32), returns.astype(np.float32), mask.astype(np.float32))
    assert np_base.coeffs.dtype == np.float32
    np.testing.assert_allclose(np_base.coeffs, torch_base.coeffs.numpy(), rtol=1e-5, atol=1e-5)
    # Every ridge level rejected (max_cond below any condition number): the pseudo-inverse, largest ridge.
    last = LinearFeatureBaseline(1e-8, max_reg_tries=3, max_cond=1.0)
    last.fit(obs, returns, mask)
    np.testing.assert_array_equal(last.last_reg, [1e-6, 1e-6])
    assert np.isfinite(last.coeffs).all()


def test_numpy_path_does_not_import_torch() -> None:
    code = ("import sys, numpy as np\n"
            "from mbmpo_core.advantages import compute_advantages\n"
            "adv, ret = compute_advantages(np.ones((2, 5)), np.ones((2, 5, 3)), np.ones((2, 5)))\n"
            "assert adv.shape == (2, 5) and ret[0, 0] > 4.9, ret\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
