"""Returns, GAE and the linear feature baseline, batched over tasks and rollouts, for numpy and torch.

Every formula is written once: it runs on numpy arrays (the on-robot controller, which has no torch) and on
torch tensors (training, any device), and gives the same kind back. The code uses what the two libraries
share: operators, methods (``.sum(-1)``, ``.clip``, ``.reshape``, ``.swapaxes``, ``.all(-1)``) and
same-named functions of the array's own module (:func:`_xp`: ``zeros_like``, ``where``, ``stack``,
``concatenate``, ``linalg.eigvalsh``, ...), plus the shims below where the spelling differs. torch is never
imported here unless a tensor comes in (as in :mod:`sim.rewards`).

Shape convention: ``[..., N, H]`` where ``...`` are leading batch dims (usually the task dim ``M``), ``N``
rollouts and ``H`` horizon steps. ``mask[..., n, t]`` is 1 while the rollout is alive (including its terminal
step) and 0 afterwards; rewards and advantages of masked steps are zero. Only the horizon is looped over (a
reverse scan); everything else is vectorised.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch
Array = TypeVar("Array", np.ndarray, "torch.Tensor")  # a forward reference: torch is not loaded at run time


# --- shims: where numpy and torch spell an operation differently -------------


def _xp(x: Any) -> ModuleType:
    """The module of ``x``'s kind: numpy for numpy arrays, torch for tensors (loaded only for tensors)."""
    if isinstance(x, np.ndarray):
        return np
    if type(x).__module__.split(".")[0] == "torch":
        return importlib.import_module("torch")  # already loaded: a tensor came in
    raise TypeError(f"expected a numpy array or a torch tensor, got {type(x).__name__}")


def _float64(x: Array) -> Array:
    """``x`` as float64 (same device for tensors)."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    return x.to(_xp(x).float64)


def _cast_like(x: Array, like: Array) -> Array:
    """``x`` in the dtype of ``like``."""
    if isinstance(x, np.ndarray):
        return x.astype(like.dtype)
    return x.to(like.dtype)


def _arange_like(n: int, like: Array) -> Array:
    """``[0, 1, ..., n-1]`` in the dtype (and on the device) of ``like``."""
    if isinstance(like, np.ndarray):
        return np.arange(n, dtype=like.dtype)
    return _xp(like).arange(n, dtype=like.dtype, device=like.device)


def _eye_like(n: int, like: Array) -> Array:
    """``[n, n]`` identity in the dtype (and on the device) of ``like``."""
    if isinstance(like, np.ndarray):
        return np.eye(n, dtype=like.dtype)
    return _xp(like).eye(n, dtype=like.dtype, device=like.device)


def _sum_keep(x: Array, dims: tuple[int, ...]) -> Array:
    """Sum over ``dims``, keeping them as size 1 (numpy says ``axis``/``keepdims``, torch ``dim``/``keepdim``)."""
    if isinstance(x, np.ndarray):
        return x.sum(axis=dims, keepdims=True)
    return x.sum(dim=dims, keepdim=True)


def _cholesky_solve(a: Array, rhs: Array) -> tuple[Array, Array]:
    """Solve ``a w = rhs`` by Cholesky for each ``a [..., F, F]``; ``(w [..., F, 1], factored [...] bool)``,
    ``w`` undefined where ``a`` is not numerically positive definite (``factored`` False)."""
    if not isinstance(a, np.ndarray):
        torch_ = _xp(a)
        chol, info = torch_.linalg.cholesky_ex(a)
        return torch_.cholesky_solve(rhs, chol), info == 0
    # numpy's cholesky raises for the whole batch if one matrix fails: factor them one by one.
    flat_a, flat_b = a.reshape(-1, *a.shape[-2:]), rhs.reshape(-1, *rhs.shape[-2:])
    w, factored = np.full_like(flat_b, np.nan), np.zeros(len(flat_a), dtype=bool)
    for i, (ai, bi) in enumerate(zip(flat_a, flat_b, strict=True)):
        try:
            chol = np.linalg.cholesky(ai)
        except np.linalg.LinAlgError:
            continue
        w[i], factored[i] = np.linalg.solve(chol.T, np.linalg.solve(chol, bi)), True
    return w.reshape(rhs.shape), factored.reshape(a.shape[:-2])


# --- returns and advantages ----------------------------------------------------


def discounted_returns(rewards: Array, mask: Array, gamma: float) -> Array:
    """Reward-to-go ``R_t = m_t * (r_t + gamma * R_{t+1})``, no bootstrap after step ``H-1``.

    Args:
        rewards: ``[..., N, H]``.
        mask: ``[..., N, H]`` alive mask (0/1).
        gamma: discount.

    Returns:
        ``[..., N, H]`` discounted returns (0 on masked steps).
    """
    xp = _xp(rewards)
    running = xp.zeros_like(rewards[..., 0])
    out = []
    for t in reversed(range(rewards.shape[-1])):
        running = mask[..., t] * (rewards[..., t] + gamma * running)
        out.append(running)
    return xp.stack(out[::-1], axis=-1)


def gae(rewards: Array, values: Array, mask: Array, gamma: float, lam: float) -> Array:
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
    xp = _xp(rewards)
    next_value = xp.zeros_like(rewards[..., 0])
    next_mask = xp.zeros_like(rewards[..., 0])
    next_adv = xp.zeros_like(rewards[..., 0])
    out = []
    for t in reversed(range(rewards.shape[-1])):
        m = mask[..., t]
        delta = rewards[..., t] + gamma * next_mask * next_value - values[..., t]
        # ``next_adv`` is already 0 after termination, so it needs no extra mask.
        next_adv = m * (delta + gamma * lam * next_adv)
        out.append(next_adv)
        next_value, next_mask = values[..., t], m
    return xp.stack(out[::-1], axis=-1)


def masked_mean_std(x: Array, mask: Array, dims: tuple[int, ...]) -> tuple[Array, Array]:
    """Mean and (biased) std of ``x`` over ``dims`` counting only ``mask == 1`` entries (kept dims)."""
    count = _sum_keep(mask, dims).clip(min=1.0)
    mean = _sum_keep(x * mask, dims) / count
    var = _sum_keep((x - mean) ** 2 * mask, dims) / count
    return mean, _xp(x).sqrt(var)


def normalize_advantages(adv: Array, mask: Array, per_task: bool = True, eps: float = 1e-8) -> Array:
    """Zero-mean / unit-std advantages over valid steps.

    Args:
        adv, mask: ``[..., N, H]``.
        per_task: statistics per leading index (over ``N, H``); else over everything.

    Returns:
        ``[..., N, H]`` normalised advantages (0 on masked steps).
    """
    dims = (-2, -1) if per_task else tuple(range(adv.ndim))
    mean, std = masked_mean_std(adv, mask, dims)
    return (adv - mean) / (std + eps) * mask


# --- baseline ----------------------------------------------------------------------


class LinearFeatureBaseline:
    """rllab/garage-style linear value baseline, one independent fit per leading index.

    Features per step: ``[o, o**2, t, t**2, t**3, 1]`` with ``o = clip(obs, -obs_clip,
    obs_clip)`` and ``t = step / time_scale`` -> ``F = 2 * obs_dim + 4``. Fitted by ridge
    regression in float64; per task the ridge coefficient starts at ``reg_coeff`` and is
    multiplied by 10 (up to ``max_reg_tries`` levels) while the regularised normal matrix
    is not numerically positive definite (Cholesky fails), gives a non-finite solution, or is
    ill-conditioned (``cond > max_cond``; the default 1e14 only catches float64 trouble, since
    the polynomial time features are naturally collinear for short horizons); the pseudo-inverse
    with the largest coefficient is the last resort. Fit and predict with the same kind of array
    (numpy or torch).

    Attributes:
        coeffs: ``[..., F]`` fitted coefficients, in the dtype of the fitted obs (None before the first fit).
        last_reg: ``[...]`` float64 ridge coefficient used for each fit.
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
        self.coeffs: Any = None  # numpy array or tensor, like the data of the last fit
        self.last_reg: Any = None

    def features(self, obs: Array) -> Array:
        """``obs [..., N, H, obs_dim] -> features [..., N, H, 2 * obs_dim + 4]`` (in ``obs``'s dtype)."""
        xp = _xp(obs)
        o = obs.clip(-self.obs_clip, self.obs_clip)
        horizon = obs.shape[-2]
        t = _arange_like(horizon, obs) / self.time_scale
        t = xp.broadcast_to(t.reshape(horizon, 1), (*obs.shape[:-1], 1))
        return xp.concatenate([o, o * o, t, t * t, t * t * t, xp.ones_like(t)], axis=-1)

    def fit(self, obs: Array, returns: Array, mask: Array) -> None:
        """Ridge-regress ``returns [..., N, H]`` on features of ``obs [..., N, H, obs_dim]``.

        Only steps with ``mask [..., N, H] == 1`` enter the fit.
        """
        x = _float64(self.features(obs)) * _float64(mask)[..., None]
        x = x.reshape(*x.shape[:-3], -1, x.shape[-1])  # [..., N*H, F]
        y = _float64(returns * mask).reshape(*returns.shape[:-2], -1, 1)  # [..., N*H, 1]
        gram = x.swapaxes(-1, -2) @ x  # [..., F, F]
        rhs = x.swapaxes(-1, -2) @ y  # [..., F, 1]
        coeffs, reg = self._ridge_solve(gram, rhs)
        self.coeffs = _cast_like(coeffs[..., 0], obs)
        self.last_reg = reg

    def _ridge_solve(self, gram: Array, rhs: Array) -> tuple[Array, Array]:
        """Solve ``(G + reg I) w = b`` per batch entry, escalating ``reg`` where needed: ``(w, reg [...])``."""
        xp = _xp(gram)
        eye = _eye_like(gram.shape[-1], gram)
        sol = xp.full_like(rhs, float("nan"))
        used = xp.full_like(gram[..., 0, 0], float("nan"))  # NaN: no ridge level has worked yet
        for k in range(self.max_reg_tries):
            reg = self.reg_coeff * 10.0**k
            a = gram + reg * eye
            w, factored = _cholesky_solve(a, rhs)
            eig = xp.linalg.eigvalsh(a)
            cond = eig[..., -1] / eig[..., 0].clip(min=1e-300)
            new = factored & xp.isfinite(w).all(-1).all(-1) & (cond <= self.max_cond) & xp.isnan(used)
            sol = xp.where(new[..., None, None], w, sol)
            used = xp.where(new, reg, used)
        unsolved = xp.isnan(used)
        if bool(unsolved.any()):
            # Last resort: pseudo-inverse with the largest ridge tried.
            reg = self.reg_coeff * 10.0 ** (self.max_reg_tries - 1)
            w = xp.linalg.pinv(gram + reg * eye) @ rhs
            sol = xp.where(unsolved[..., None, None], w, sol)
            used = xp.where(unsolved, reg, used)
        return sol, used

    def predict(self, obs: Array, mask: Array | None = None) -> Array:
        """Baseline values ``[..., N, H]`` for ``obs [..., N, H, obs_dim]`` (0 where masked; 0 before any fit)."""
        if self.coeffs is None:
            values = _xp(obs).zeros_like(obs[..., 0])
        else:
            coeffs = self.coeffs.reshape(*self.coeffs.shape[:-1], 1, 1, -1)
            values = (self.features(obs) * coeffs).sum(-1)
        return values if mask is None else values * mask

    def fit_predict(self, obs: Array, rewards: Array, mask: Array, gamma: float) -> Array:
        """Fit on the discounted returns of ``rewards [..., N, H]`` and predict ``[..., N, H]``."""
        self.fit(obs, discounted_returns(rewards, mask, gamma), mask)
        return self.predict(obs, mask)


def compute_advantages(
    rewards: Array,
    obs: Array,
    mask: Array,
    gamma: float = 0.99,
    lam: float = 1.0,
    baseline: LinearFeatureBaseline | None = None,
    normalize: bool = True,
) -> tuple[Array, Array]:
    """Full pipeline: returns -> fit baseline (per task) -> GAE -> optional normalisation.

    Args:
        rewards, mask: ``[..., N, H]``; obs: ``[..., N, H, obs_dim]`` (all numpy or all torch).
        baseline: fitted in place on this data (then used to predict); a fresh
            :class:`LinearFeatureBaseline` if None.

    Returns:
        ``(advantages, returns)``, both ``[..., N, H]``, of the inputs' kind.
    """
    baseline = LinearFeatureBaseline() if baseline is None else baseline
    returns = discounted_returns(rewards, mask, gamma)
    baseline.fit(obs, returns, mask)
    values = baseline.predict(obs, mask)
    adv = gae(rewards, values, mask, gamma, lam)
    if normalize:
        adv = normalize_advantages(adv, mask, per_task=True)
    return adv, returns
