"""Returns, GAE and the linear feature baseline, batched over tasks and rollouts.

Shape convention: ``[..., N, H]`` where ``...`` are leading batch dims (usually the task
dim ``M``), ``N`` rollouts and ``H`` horizon steps. ``mask[..., n, t]`` is 1 while the
rollout is alive (including its terminal step) and 0 afterwards; rewards and advantages
of masked steps are zero. Only the horizon is looped over (a reverse scan); everything
else is vectorised.
"""

from __future__ import annotations

import torch
from torch import Tensor


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Reward-to-go ``R_t = m_t * (r_t + gamma * R_{t+1})``, no bootstrap after step ``H-1``.

    Args:
        rewards: ``[..., N, H]``.
        mask: ``[..., N, H]`` alive mask (0/1).
        gamma: discount.

    Returns:
        ``[..., N, H]`` discounted returns (0 on masked steps).
    """
    running = torch.zeros_like(rewards[..., 0])
    out: list[Tensor] = []
    for t in reversed(range(rewards.shape[-1])):
        running = mask[..., t] * (rewards[..., t] + gamma * running)
        out.append(running)
    return torch.stack(out[::-1], dim=-1)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimation with a reverse scan over the horizon.

    ``delta_t = r_t + gamma * m_{t+1} * V_{t+1} - V_t`` and
    ``A_t = m_t * (delta_t + gamma * lam * A_{t+1})`` with ``m_H = 0`` (rollouts
    are truncated at ``H`` without bootstrap, as in rllab/ProMP). With ``lam = 1`` this is
    exactly ``discounted_returns - values`` on valid steps.

    Args:
        rewards, values, mask: ``[..., N, H]``.

    Returns:
        advantages ``[..., N, H]`` (0 on masked steps).
    """
    horizon = rewards.shape[-1]
    next_value = torch.zeros_like(rewards[..., 0])
    next_mask = torch.zeros_like(rewards[..., 0])
    next_adv = torch.zeros_like(rewards[..., 0])
    out: list[Tensor] = []
    for t in reversed(range(horizon)):
        m = mask[..., t]
        delta = rewards[..., t] + gamma * next_mask * next_value - values[..., t]
        # ``next_adv`` is already 0 after termination, so it needs no extra mask.
        next_adv = m * (delta + gamma * lam * next_adv)
        out.append(next_adv)
        next_value, next_mask = values[..., t], m
    return torch.stack(out[::-1], dim=-1)


def masked_mean_std(x: Tensor, mask: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and (biased) std of ``x`` over ``dims`` counting only ``mask == 1`` entries."""
    count = mask.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (x * mask).sum(dim=dims, keepdim=True) / count
    var = ((x - mean).pow(2) * mask).sum(dim=dims, keepdim=True) / count
    return mean, var.sqrt()


def normalize_advantages(adv: Tensor, mask: Tensor, per_task: bool = True, eps: float = 1e-8) -> Tensor:
    """Zero-mean / unit-std advantages over valid steps.

    Args:
        adv, mask: ``[..., N, H]``.
        per_task: statistics per leading index (over ``N, H``); else over everything.

    Returns:
        ``[..., N, H]`` normalised advantages (0 on masked steps).
    """
    dims = (-2, -1) if per_task else tuple(range(adv.dim()))
    mean, std = masked_mean_std(adv, mask, dims)
    return (adv - mean) / (std + eps) * mask


class LinearFeatureBaseline:
    """rllab/garage-style linear value baseline, one independent fit per leading index.

    Features per step: ``[o, o**2, t, t**2, t**3, 1]`` with ``o = clip(obs, -obs_clip,
    obs_clip)`` and ``t = step / time_scale`` -> ``F = 2 * obs_dim + 4``. Fitted by ridge
    regression in float64; per task the ridge coefficient starts at ``reg_coeff`` and is
    multiplied by 10 (up to ``max_reg_tries`` levels) while the regularised normal matrix
    is not numerically positive definite (Cholesky fails), gives a non-finite solution, or is
    ill-conditioned (``cond > max_cond``; the default 1e14 only catches float64 trouble, since
    the polynomial time features are naturally collinear for short horizons).

    Attributes:
        coeffs: ``[..., F]`` fitted coefficients (None before the first fit).
        last_reg: ``[...]`` ridge coefficient used for each fit.
    """

    def __init__(
        self,
        reg_coeff: float = 1e-5,
        obs_clip: float = 10.0,
        time_scale: float = 100.0,
        max_reg_tries: int = 5,
        max_cond: float = 1e14,
    ) -> None:
        self.reg_coeff = reg_coeff
        self.obs_clip = obs_clip
        self.time_scale = time_scale
        self.max_reg_tries = max_reg_tries
        self.max_cond = max_cond
        self.coeffs: Tensor | None = None
        self.last_reg: Tensor | None = None

    def features(self, obs: Tensor) -> Tensor:
        """``obs [..., N, H, obs_dim] -> features [..., N, H, 2 * obs_dim + 4]``."""
        o = obs.clamp(-self.obs_clip, self.obs_clip)
        horizon = obs.shape[-2]
        t = torch.arange(horizon, dtype=obs.dtype, device=obs.device) / self.time_scale
        t = t.reshape(horizon, 1).expand(*obs.shape[:-1], 1)
        return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)

    def fit(self, obs: Tensor, returns: Tensor, mask: Tensor) -> None:
        """Ridge-regress ``returns [..., N, H]`` on features of ``obs [..., N, H, obs_dim]``.

        Only steps with ``mask [..., N, H] == 1`` enter the fit.
        """
        x = self.features(obs).to(torch.float64) * mask.to(torch.float64).unsqueeze(-1)
        x = x.flatten(-3, -2)  # [..., N*H, F]
        y = (returns * mask).to(torch.float64).flatten(-2).unsqueeze(-1)  # [..., N*H, 1]
        gram = x.transpose(-1, -2) @ x  # [..., F, F]
        rhs = x.transpose(-1, -2) @ y  # [..., F, 1]
        coeffs, reg = self._ridge_solve(gram, rhs)
        self.coeffs = coeffs.squeeze(-1).to(obs.dtype)
        self.last_reg = reg

    def _ridge_solve(self, gram: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
        """Solve ``(G + reg I) w = b`` per batch entry, escalating ``reg`` where needed."""
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        batch = gram.shape[:-2]
        sol = torch.full_like(rhs, float("nan"))
        used = torch.full(batch, float("nan"), dtype=gram.dtype, device=gram.device)
        done = torch.zeros(batch, dtype=torch.bool, device=gram.device)
        for k in range(self.max_reg_tries):
            reg = self.reg_coeff * 10.0**k
            a = gram + reg * eye
            chol, info = torch.linalg.cholesky_ex(a)
            w = torch.cholesky_solve(rhs, chol)
            eig = torch.linalg.eigvalsh(a)
            cond = eig[..., -1] / eig[..., 0].clamp_min(1e-300)
            ok = (info == 0) & torch.isfinite(w).all(-1).all(-1) & (cond <= self.max_cond)
            new = ok & ~done
            sol = torch.where(new[..., None, None], w, sol)
            used = torch.where(new, torch.full_like(used, reg), used)
            done = done | ok
        if not bool(done.all()):
            # Last resort: pseudo-inverse with the largest ridge tried.
            reg = self.reg_coeff * 10.0 ** (self.max_reg_tries - 1)
            w = torch.linalg.pinv(gram + reg * eye) @ rhs
            sol = torch.where(done[..., None, None], sol, w)
            used = torch.where(done, used, torch.full_like(used, reg))
        return sol, used

    def predict(self, obs: Tensor, mask: Tensor | None = None) -> Tensor:
        """Baseline values ``[..., N, H]`` for ``obs [..., N, H, obs_dim]`` (0 where masked)."""
        if self.coeffs is None:
            values = torch.zeros(obs.shape[:-1], dtype=obs.dtype, device=obs.device)
        else:
            feats = self.features(obs)
            coeffs = self.coeffs.reshape(*self.coeffs.shape[:-1], 1, 1, -1)
            values = (feats * coeffs).sum(-1)
        return values if mask is None else values * mask

    def fit_predict(self, obs: Tensor, rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
        """Fit on the discounted returns of ``rewards [..., N, H]`` and predict ``[..., N, H]``."""
        self.fit(obs, discounted_returns(rewards, mask, gamma), mask)
        return self.predict(obs, mask)


def compute_advantages(
    rewards: Tensor,
    obs: Tensor,
    mask: Tensor,
    gamma: float = 0.99,
    lam: float = 1.0,
    baseline: LinearFeatureBaseline | None = None,
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """Full pipeline: returns -> fit baseline (per task) -> GAE -> optional normalisation.

    Args:
        rewards, mask: ``[..., N, H]``; obs: ``[..., N, H, obs_dim]``.
        baseline: fitted in place on this data (then used to predict); a fresh
            :class:`LinearFeatureBaseline` if None.

    Returns:
        ``(advantages, returns)``, both ``[..., N, H]``.
    """
    baseline = LinearFeatureBaseline() if baseline is None else baseline
    returns = discounted_returns(rewards, mask, gamma)
    baseline.fit(obs, returns, mask)
    values = baseline.predict(obs, mask)
    adv = gae(rewards, values, mask, gamma, lam)
    if normalize:
        adv = normalize_advantages(adv, mask, per_task=True)
    return adv, returns
