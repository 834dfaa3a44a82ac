"""TRPO building blocks: conjugate gradient, Hessian-vector products, line search.

Small, reusable pieces (as in Tianshou's TRPO) that operate on flat vectors. The
objective convention is a *loss to minimise*; the trust region is ``KL <= max_kl``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


def flat_grad(
    out: Tensor, params: Sequence[Tensor], create_graph: bool = False, retain_graph: bool | None = None
) -> Tensor:
    """Gradient of scalar ``out`` w.r.t. ``params`` flattened into ``[P]`` (0 for unused).

    ``retain_graph`` defaults to ``create_graph`` (as in ``torch.autograd.grad``).
    """
    grads = torch.autograd.grad(
        out, list(params), create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
    )
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )


def get_flat(params: Sequence[Tensor]) -> Tensor:
    """Concatenate (detached) parameter values into ``[P]``."""
    return torch.cat([p.detach().reshape(-1) for p in params])


@torch.no_grad()
def set_flat(params: Sequence[Tensor], vec: Tensor) -> None:
    """Copy ``vec [P]`` into ``params`` in place (in order)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(vec[offset : offset + n].view_as(p))
        offset += n


def conjugate_gradient(
    avp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, residual_tol: float = 1e-10
) -> Tensor:
    """Approximately solve ``A x = b`` for SPD ``A`` given only ``v -> A v``.

    Args:
        avp: matrix-vector product ``[P] -> [P]``.
        b: right-hand side ``[P]``.
        iters: maximum CG iterations.
        residual_tol: stop once ``||r||^2 < residual_tol``.

    Returns:
        ``x [P]``.
    """
    return _conjugate_gradient(avp, b, iters, residual_tol)[0]


def _conjugate_gradient(
    avp: Callable[[Tensor], Tensor], b: Tensor, iters: int, residual_tol: float
) -> tuple[Tensor, Tensor]:
    """:func:`conjugate_gradient` that also returns ``A x = b - r`` (the residual CG tracks anyway; equal to an
    explicit ``avp(x)`` to float rounding, measured 1e-7 relative), which saves one product."""
    x = torch.zeros_like(b)
    r = b.clone()  # residual b - A x for x = 0
    p = b.clone()
    rr = torch.dot(r, r)
    for _ in range(iters):
        if rr < residual_tol:
            break
        ap = avp(p)
        step = rr / torch.dot(p, ap)
        x = x + step * p
        r = r - step * ap
        rr_new = torch.dot(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, b - r


def hessian_vector_product(
    f_kl: Callable[[], Tensor], params: Sequence[Tensor], damping: float = 1e-5
) -> Callable[[Tensor], Tensor]:
    """Pearlmutter HVP of a scalar function of ``params``: ``v -> (H + damping I) v``.

    ``f_kl()`` is evaluated once; its gradient is built with ``create_graph=True`` so each
    call differentiates ``grad . v`` a second time (double backward). ``f_kl`` may itself
    contain gradients (e.g. a MAML inner step built with ``create_graph=True``).

    Args:
        f_kl: closure returning a scalar (typically the mean KL) at the current params.
        params: tensors requiring grad, defining the flat order ``[P]``.
        damping: Tikhonov damping added to the product (keeps CG well posed).

    Returns:
        ``hvp(v [P]) -> [P]``.
    """
    params = list(params)
    grad = flat_grad(f_kl(), params, create_graph=True)

    def hvp(v: Tensor) -> Tensor:
        hv = flat_grad(torch.dot(grad, v.detach()), params, retain_graph=True)
        return hv + damping * v

    return hvp


@dataclass
class LineSearchInfo:
    """Diagnostics of :func:`backtracking_line_search`."""

    loss_before: float
    loss_after: float
    kl: float
    step_frac: float
    n_backtracks: int
    expected_improve: float
    actual_improve: float
    trials: list[tuple[float, float, float]] = field(default_factory=list)  # (frac, loss, kl)


def backtracking_line_search(
    f_loss: Callable[[Tensor], Tensor],
    f_kl: Callable[[Tensor], Tensor],
    x0: Tensor,
    full_step: Tensor,
    expected_improve: float,
    max_kl: float,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
    accept_ratio: float = 0.0,
    loss_before: float | None = None,
) -> tuple[Tensor, bool, LineSearchInfo]:
    """Try ``x0 + ratio**k * full_step`` for ``k = 0..max_backtracks-1``.

    A candidate is accepted if the loss strictly decreases, the decrease is at least
    ``accept_ratio * frac * expected_improve`` (0 = rllab rule, 0.1 = Schulman's), and
    ``kl <= max_kl``. Evaluated without grad.

    Args:
        f_loss: ``x [P] -> scalar`` loss (to minimise).
        f_kl: ``x [P] -> scalar`` KL between the old policy and the one at ``x``.
        x0: current point ``[P]``; full_step: ``[P]``.
        expected_improve: first-order predicted loss decrease of the full step (>= 0).
        loss_before: ``f_loss(x0)`` if the caller has it (saves one evaluation).

    Returns:
        ``(new_x, accepted, info)``; ``new_x = x0`` if nothing was accepted.
    """
    with torch.no_grad():
        if loss_before is None:
            loss_before = float(f_loss(x0))
        info = LineSearchInfo(loss_before, loss_before, 0.0, 0.0, 0, expected_improve, 0.0)
        for k in range(max_backtracks):
            frac = backtrack_ratio**k
            x = x0 + frac * full_step
            loss = float(f_loss(x))
            improve = loss_before - loss
            # Skip the KL evaluation when the loss already rules the step out.
            good = math.isfinite(loss) and improve > 0 and improve >= accept_ratio * frac * expected_improve
            kl = float(f_kl(x)) if good else float("nan")
            info.trials.append((frac, loss, kl))
            if good and math.isfinite(kl) and kl <= max_kl:
                info.loss_after, info.kl, info.step_frac = loss, kl, frac
                info.n_backtracks, info.actual_improve = k, improve
                return x, True, info
        info.n_backtracks = max_backtracks
        return x0.clone(), False, info


@dataclass
class TRPOStats:
    """Result of one :func:`trpo_step`."""

    loss_before: float
    loss_after: float
    kl: float
    step_frac: float
    accepted: bool
    n_backtracks: int
    grad_norm: float
    expected_improve: float


def natural_step(
    grad: Tensor, hvp: Callable[[Tensor], Tensor], max_kl: float, cg_iters: int = 10
) -> tuple[Tensor, float]:
    """Full trust-region step ``sqrt(2 max_kl / s^T H s) * s`` with ``s = -H^{-1} grad`` (by CG; ``H s``
    comes from CG's residual, so the step costs ``cg_iters`` products, not one more).

    Returns:
        ``(full_step [P], expected_improve)`` where ``expected_improve = -grad . full_step``.
    """
    stepdir, h_stepdir = _conjugate_gradient(hvp, -grad, cg_iters, 1e-10)
    shs = float(torch.dot(stepdir, h_stepdir))
    if not math.isfinite(shs) or shs <= 0.0:
        return torch.zeros_like(grad), 0.0
    full_step = stepdir * math.sqrt(2.0 * max_kl / shs)
    return full_step, float(-torch.dot(grad, full_step))


def trpo_step(
    params: Sequence[Tensor],
    f_loss: Callable[[], Tensor],
    f_kl: Callable[[], Tensor],
    max_kl: float = 0.01,
    cg_iters: int = 10,
    damping: float = 1e-5,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
    accept_ratio: float = 0.0,
    hessian_kl: Callable[[], Tensor] | None = None,
) -> TRPOStats:
    """One TRPO update of ``params`` in place.

    ``f_loss()`` / ``f_kl()`` evaluate the surrogate loss and the mean KL (old policy vs
    current) at the *current* values of ``params``; the line search writes candidates into
    ``params`` and calls them again (under ``no_grad``). ``f_loss`` is called with grad once, at
    the starting point, and its graph is kept until the Hessian-vector products are done (so
    ``hessian_kl`` may share parts of it). ``hessian_kl()`` (default ``f_kl``) is the KL whose
    Hessian CG uses, e.g. on a subsample of the data; the line search always checks ``f_kl``.

    Returns:
        :class:`TRPOStats` (``loss_before`` / ``loss_after`` / ``kl`` / ``step_frac`` / ...).
    """
    params = list(params)
    x0 = get_flat(params)
    loss = f_loss()
    grad = flat_grad(loss, params, retain_graph=True)
    hvp = hessian_vector_product(f_kl if hessian_kl is None else hessian_kl, params, damping)
    full_step, expected = natural_step(grad, hvp, max_kl, cg_iters)
    loss_before = float(loss.detach())
    del loss, hvp  # frees the graphs before the line search

    def at(fn: Callable[[], Tensor]) -> Callable[[Tensor], Tensor]:
        def wrapped(x: Tensor) -> Tensor:
            set_flat(params, x)
            return fn()

        return wrapped

    new_x, accepted, info = backtracking_line_search(
        at(f_loss), at(f_kl), x0, full_step, expected, max_kl,
        backtrack_ratio, max_backtracks, accept_ratio, loss_before=loss_before,
    )  # fmt: skip
    set_flat(params, new_x)
    return TRPOStats(
        loss_before=info.loss_before,
        loss_after=info.loss_after,
        kl=info.kl,
        step_frac=info.step_frac if accepted else 0.0,
        accepted=accepted,
        n_backtracks=info.n_backtracks,
        grad_norm=float(grad.norm()),
        expected_improve=expected,
    )
