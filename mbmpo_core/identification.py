"""Identify the robot's dynamics torch-free: a closed-form ridge refit of each member's last layer.

Each member k of the bundle's ensemble (:class:`~mbmpo_core.onnx_dynamics.OnnxEnsemble`) predicts the normalised
state change as ``phi_k(obs, act) @ W_k + b_k``: the hidden layers give the features ``phi_k [N, H]``, and the last
layer is linear in ``theta_k = [W_k; b_k]  [H + 1, obs_dim]``. On real transitions the refit solves, per member,

    min_theta ||Phi_k theta - Y||^2 + lambda_k ||theta - theta0_k||^2
    theta_k = theta0_k + (Phi_k^T Phi_k + lambda_k I)^-1 Phi_k^T (Y - Phi_k theta0_k)

with ``Phi_k = [phi_k, 1]`` and ``Y`` the real state changes in the ensemble's normalised target units: the fit is
pulled towards the trained layer ``theta0_k``, not towards zero, so a few hundred rows move the model only where
they say something.

Ridge scale: ``lambda_k = ridge * trace(Phi_k^T Phi_k) / (H + 1)``, i.e. ``ridge`` times the Gram matrix's mean
eigenvalue. This makes ``ridge`` dimensionless (independent of the feature scale, which differs per member and
per activation) and makes the shrinkage a fixed share of the data's weight whatever the number of rows: along a
feature direction of average energy, the fit moves ``1 / (1 + ridge)`` of the way from the trained layer to the
least-squares layer. Directions the data hardly excites (smaller eigenvalues) stay near the trained layer.
:data:`DEFAULT_RIDGE` (0.03) was chosen on HalfCheetah (a 5 x 256 x 256 ReLU ensemble after 8 iterations of the cpu
config, 4 stochastic episodes = 800 rows, errors on 2 independent episodes): over nominal, mass x0.5, damping x2
and actuator 0 x0.3 the held-out error was lowest for ridge 0.01-0.03 (mass x0.5: 0.58 -> 0.21; damping x2:
1.63 -> 0.11; actuator: 1.12 -> 0.22; nominal: 0.27 -> 0.24); 0.001 overfits (nominal 0.27 -> 0.27) and 1 shrinks
too much (damping 1.63 -> 0.23).

Errors are one-step MSEs in raw observation units (mean over rows and coordinates, as
:meth:`~mbmpo_core.ensemble.DynamicsEnsemble.validation_error`) on held-out rows: the last ``holdout`` share of
the rows, so callers that pass rows in episode order hold out whole (late) episodes rather than neighbours of
training rows. The returned last layer is refitted on all rows.

numpy only (plus the ONNX ensemble): this runs on the robot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mbmpo_core.onnx_dynamics import LastLayer, OnnxEnsemble

DEFAULT_RIDGE = 0.03
DEFAULT_HOLDOUT = 0.25


@dataclass(frozen=True)
class Identified:
    """The result of :func:`identify`.

    Attributes:
        last_layer: ``(weight [K, H, obs_dim], bias [K, 1, obs_dim])`` float32, fitted on all rows; feed it to
            :meth:`OnnxEnsemble.predict` or :func:`mbmpo_core.onnx_imagination.imagine`.
        error_before: ``[K]`` held-out one-step MSE with the trained last layer (raw obs units).
        error_after: ``[K]`` held-out one-step MSE with the last layer fitted on the other rows.
        best_member: the member with the lowest ``error_after``.
        ridge_scale: ``[K]`` the ``lambda_k`` of the final fit.
        seconds: wall time of the whole identification.
    """

    last_layer: LastLayer
    error_before: np.ndarray
    error_after: np.ndarray
    best_member: int
    ridge_scale: np.ndarray
    seconds: float


def identify(
    ensemble: OnnxEnsemble,
    obs: np.ndarray,
    act: np.ndarray,
    next_obs: np.ndarray,
    ridge: float = DEFAULT_RIDGE,
    holdout: float = DEFAULT_HOLDOUT,
) -> Identified:
    """Refit every member's last layer on real transitions (see the module docstring for the math).

    Args:
        ensemble: the bundle's ensemble.
        obs, next_obs: ``[N, obs_dim]``; act: ``[N, act_dim]`` the executed (clipped) actions; rows in episode
            order (the last ``holdout`` share is held out for the errors).
        ridge: > 0, in units of the feature Gram matrix's mean eigenvalue.
        holdout: share of rows in ``(0, 1)`` held out for ``error_before`` / ``error_after``; at least one row
            is held out and at least one is fitted.

    Raises:
        ValueError: one line, for shapes that do not match the ensemble, non-finite rows, fewer than 2 rows,
            or ``ridge`` / ``holdout`` out of range.
    """
    start = time.perf_counter()
    obs, act, next_obs = _check_rows(ensemble, obs, act, next_obs)
    if not (np.isfinite(ridge) and ridge > 0):
        raise ValueError(f"ridge must be > 0, got {ridge}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    n = obs.shape[0]
    n_fit = min(max(n - round(holdout * n), 1), n - 1)
    phi = _with_ones(ensemble.features(obs, act))  # [K, N, H + 1]
    target = ((next_obs - obs) - ensemble.target_mean) / ensemble.target_std  # [N, o] normalised deltas
    prior = np.concatenate(ensemble.last_layer, axis=1).astype(np.float64)  # [K, H + 1, o]
    std = ensemble.target_std.astype(np.float64)
    fit, held = slice(0, n_fit), slice(n_fit, n)
    theta_fit, _ = _ridge_fit(phi[:, fit], target[fit], prior, ridge)
    error_before = _raw_mse(phi[:, held], target[held], prior, std)
    error_after = _raw_mse(phi[:, held], target[held], theta_fit, std)
    theta, lam = _ridge_fit(phi, target, prior, ridge)
    weight = theta[:, :-1].astype(np.float32)
    bias = theta[:, -1:].astype(np.float32)
    return Identified((weight, bias), error_before, error_after, int(np.argmin(error_after)), lam,
                      time.perf_counter() - start)


def _check_rows(ensemble: OnnxEnsemble, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 copies of the rows; ValueError (one line) for bad shapes or values."""
    o, a, n = (np.asarray(x, dtype=np.float64) for x in (obs, act, next_obs))
    if o.ndim != 2 or o.shape[1] != ensemble.obs_dim or n.shape != o.shape:
        raise ValueError(f"obs / next_obs must be [N, {ensemble.obs_dim}], got {list(o.shape)}, {list(n.shape)}")
    if a.shape != (o.shape[0], ensemble.act_dim):
        raise ValueError(f"act must be [{o.shape[0]}, {ensemble.act_dim}], got {list(a.shape)}")
    if o.shape[0] < 2:
        raise ValueError(f"need at least 2 transitions to fit and hold out, got {o.shape[0]}")
    if not (np.all(np.isfinite(o)) and np.all(np.isfinite(a)) and np.all(np.isfinite(n))):
        raise ValueError("transitions must be finite")
    return o, a, n


def _with_ones(features: np.ndarray) -> np.ndarray:
    """``[K, N, H] -> [K, N, H + 1]`` float64 with a ones column (the bias)."""
    ones = np.ones((*features.shape[:2], 1))
    return np.concatenate([features.astype(np.float64), ones], axis=2)


def _ridge_fit(phi: np.ndarray, target: np.ndarray, prior: np.ndarray, ridge: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(theta [K, H + 1, o], lambda [K])``: ridge towards ``prior [K, H + 1, o]`` of ``phi [K, M, H + 1]``
    on ``target [M, o]``."""
    phi_t = phi.transpose(0, 2, 1)
    gram = phi_t @ phi  # [K, H + 1, H + 1] (batched BLAS; einsum would not use it)
    size = gram.shape[1]
    lam = ridge * np.trace(gram, axis1=1, axis2=2) / size
    lam = np.maximum(lam, np.finfo(np.float64).tiny)  # all-zero features: keep the system solvable
    residual = target[None] - phi @ prior  # [K, M, o]
    rhs = phi_t @ residual
    system = gram + lam[:, None, None] * np.eye(size)
    return prior + np.linalg.solve(system, rhs), lam


def _raw_mse(phi: np.ndarray, target: np.ndarray, theta: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``[K]`` one-step MSE in raw obs units: normalised errors of ``phi @ theta`` times the target std."""
    error = (phi @ theta - target[None]) * std
    return np.mean(np.square(error), axis=(1, 2))
