"""MAML inner step and the outer meta-update (MAML-TRPO, or ProMP) over ``M`` tasks.

Notation: ``theta`` are the policy's own (unbatched) parameters; ``theta'_m`` the task-batched
adapted parameters (every tensor ``[M, ...]``). Data of each task carries a leading dim ``M``.

Choices (see the docstrings for details):

* Inner surrogate (``inner_surrogate="ratio"``, default): ``J_m(theta) = mean_valid(
  pi_theta(a|s) / pi_old(a|s) * A)`` with ``pi_old`` the sampling policy (stop-gradient), the
  per-step form of ProMP's low-variance-curvature (LVC) objective. At ``theta = theta_old`` its
  gradient equals the vanilla ``mean(log pi * A)`` gradient (``"log_prob"`` option), but it
  stays a valid importance-weighted estimate when re-evaluated at ``theta != theta_old``
  (line search, ProMP's Adam steps) and its Hessian has the correct score-function term.
* Outer KL Hessian (``kl_hessian="exact"``, default): the HVP is taken by double backward
  through the inner step. At ``theta_old`` the KL gradient w.r.t. ``theta'`` is zero, so the
  exact Hessian equals the Gauss-Newton form ``J^T F J`` (``J = d theta'/d theta``, ``F`` the
  Fisher of the adapted policies) - always PSD, so CG is well posed. ``"first_order"`` uses
  ``J = I`` (cheaper: no third-order graph); good when ``alpha`` is small (paper: 1e-3), not at the
  step sizes an inner KL target gives early in training (HalfCheetah, fresh policy, target 0.01 / 0.02:
  alpha 0.73 / 1.02, CG direction cos with exact 0.72 / 0.67; exact on a 0.2 subsample 0.97 / 0.94).
* Hessian-vector products on a subsample (``hvp_subsample``, default 1 = all): the KL Hessian
  that CG inverts is estimated on an evenly spaced share of every rollout's time steps
  (pre-update ones for ``J``, post-update ones for ``F``), as TRPO implementations do; the
  gradient and the line search use every sample. The subsampled ``theta'`` keeps the full-batch
  value (only its Jacobian comes from the subsample), so the KL's gradient is still zero at
  ``theta_old``.
* One inner step per outer step: ``theta'(theta)`` is built once and serves the surrogate's
  gradient, the KL Hessian (where the graphs coincide) and the post-update sampling distribution.
* Inner step size from a KL target (``inner_kl_target > 0``; 0 keeps ``inner_lr`` fixed): after every
  outer step the scalar ``alpha`` is multiplied by ``sqrt(target / inner_kl)``, limited to a factor
  ``ALPHA_MAX_CHANGE`` either way and to ``ALPHA_RANGE``, where ``inner_kl`` is the true inner KL of that
  step (mean over tasks of ``KL(pi_theta || pi_theta'_m)`` on the pre-update samples). For small steps the
  KL grows as ``alpha^2``, so one update lands on the target when ``theta`` stands still; meta-training
  makes ``theta`` more sensitive as it goes (the KL per ``alpha^2`` grew 100x in 15 steps of a toy bandit),
  which a fixed x1.5 step per outer step did not follow. ``alpha`` is a constant within an outer step (no
  gradient through it) and part of :meth:`MetaOptimizer.state_dict`.

One outer step, CPU seconds on 1 thread, M=20 x N=10 x H=200, HalfCheetah (obs 18, act 6), alpha 1e-3
(``benchmarks/outer_step.py``, shared 2-core machine): exact 2.2 (3.0-3.3 before the redundant inner
step and evaluations went), first_order 0.74 (CG direction cos 0.9998 with exact), exact with
``hvp_subsample=0.2`` 0.69-0.76 (cos 0.998), both 0.42-0.46; surrogate gain and KL within 0.5 %.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from mbmpo_core.config import MetaConfig
from mbmpo_core.policy import GaussianMLPPolicy, Params, gaussian_kl
from mbmpo_core.trpo import conjugate_gradient, flat_grad, get_flat, hessian_vector_product, trpo_step

Alpha = float | dict[str, Tensor]
ALPHA_RANGE = (1e-6, 10.0)  # where the KL target may move the inner step size
ALPHA_MAX_CHANGE = 2.0  # the most the KL target changes alpha by (either way) per outer step
SurrogateForm = Literal["ratio", "log_prob"]
KLHessian = Literal["exact", "first_order"]


@dataclass
class RolloutBatch:
    """Rollouts of ``M`` tasks (``N`` rollouts of ``H`` steps each).

    Attributes:
        obs: ``[M, N, H, obs_dim]``; act: ``[M, N, H, act_dim]``.
        rewards, mask, advantages: ``[M, N, H]`` (mask 1 while alive, 0 after termination).
        old_log_prob: ``[M, N, H]`` log-prob of ``act`` under the sampling policy.
        old_mean: ``[M, N, H, act_dim]`` sampling-policy mean, optional.
        old_log_std: broadcastable to ``[M, N, H, act_dim]``, optional. If the two are
            missing, :class:`MetaOptimizer` reconstructs them (see :meth:`MetaOptimizer.outer_step`).
    """

    obs: Tensor
    act: Tensor
    rewards: Tensor
    mask: Tensor
    advantages: Tensor
    old_log_prob: Tensor
    old_mean: Tensor | None = None
    old_log_std: Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return int(self.obs.shape[0])

    def with_old_dist(self, policy: GaussianMLPPolicy, params: Params) -> RolloutBatch:
        """Copy with ``old_log_prob / old_mean / old_log_std`` recomputed under ``params`` (``[M, ...]``)."""
        with torch.no_grad():
            mean, log_std = _frozen_dist(policy, self.obs, params)
            old_log_prob = policy.log_prob(self.obs, self.act, params)
        return replace(self, old_log_prob=old_log_prob, old_mean=mean, old_log_std=log_std)

    def detach(self) -> RolloutBatch:
        """Copy with every tensor detached and cloned (no aliasing of policy parameters)."""
        changes = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.detach().clone() for k, v in changes.items() if v is not None})


def _frozen_dist(policy: GaussianMLPPolicy, obs: Tensor, params: Params) -> tuple[Tensor, Tensor]:
    """``(mean, log_std)`` as fresh tensors: ``log_std`` is otherwise a view of the parameter
    storage and would silently follow later in-place updates of the policy."""
    with torch.no_grad():
        mean, log_std = policy.mean_and_log_std(obs, params)
    return mean.detach().clone(), log_std.detach().clone()


def masked_task_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid steps per task: ``x, mask [M, N, H] -> [M]``."""
    return (x * mask).sum(dim=(-2, -1)) / mask.sum(dim=(-2, -1)).clamp_min(1.0)


def task_batched(policy: GaussianMLPPolicy, params: Params, num_tasks: int) -> Params:
    """View unbatched ``params`` as ``[M, ...]`` (an ``expand``: gradients flow back to ``params``).

    Already task-batched params (one more dim than the policy's own) are returned unchanged.
    """
    own = policy.params()
    out: Params = {}
    for name, value in params.items():
        if value.dim() == own[name].dim() + 1:
            out[name] = value
        else:
            out[name] = value.unsqueeze(0).expand(num_tasks, *value.shape)
    return out


def pg_surrogate(
    policy: GaussianMLPPolicy, params: Params, batch: RolloutBatch, form: SurrogateForm = "ratio"
) -> Tensor:
    """Per-task policy-gradient surrogate ``J_m``: ``[M]`` (params task-batched ``[M, ...]``)."""
    log_prob = policy.log_prob(batch.obs, batch.act, params)
    weight = torch.exp(log_prob - batch.old_log_prob) if form == "ratio" else log_prob
    return masked_task_mean(weight * batch.advantages, batch.mask)


def subsample_steps(batch: RolloutBatch, fraction: float) -> RolloutBatch:
    """``ceil(fraction * H)`` evenly spaced time steps of every rollout (``batch`` itself for ``fraction >= 1``).

    Steps rather than whole rollouts: the same share of the samples covers every rollout's states, so the
    estimate is closer to the full batch's (CG-direction cosine 0.998 vs 0.995 at 1/5, HalfCheetah).
    """
    h = int(batch.obs.shape[2])
    keep = max(1, math.ceil(fraction * h))
    if keep >= h:
        return batch
    idx = torch.linspace(0, h - 1, keep, device=batch.obs.device).round().long()
    changes = {f.name: getattr(batch, f.name) for f in fields(batch)}
    # Fields broadcast over steps (e.g. a [M, 1, 1, A] log-std) stay as they are.
    return replace(batch, **{k: v.index_select(2, idx) for k, v in changes.items()
                             if v is not None and v.dim() >= 3 and v.shape[2] == h})


def _alpha_for(alpha: Alpha, name: str) -> Tensor | float:
    return alpha if isinstance(alpha, float | int) else alpha[name]


def _is_zero(alpha: Alpha) -> bool:
    return isinstance(alpha, float | int) and alpha == 0


def inner_gradient(
    policy: GaussianMLPPolicy,
    base: Params,
    pre_batch: RolloutBatch,
    create_graph: bool = False,
    surrogate: SurrogateForm = "ratio",
) -> Params:
    """Per-task ``grad J_m`` at task-batched ``base`` (every tensor ``[M, ...]``), from one backward pass:
    ``sum_m J_m`` is differentiated w.r.t. the ``[M, ...]`` copy (task ``m``'s slice only sees ``J_m``)."""
    track = torch.is_grad_enabled()
    with torch.enable_grad():
        # Under no_grad (e.g. the line search) ``base`` has no graph (even if a view of a
        # Parameter reports requires_grad): differentiate detached leaf copies instead.
        leaves = {k: v if track and v.requires_grad else v.detach().requires_grad_() for k, v in base.items()}
        objective = pg_surrogate(policy, leaves, pre_batch, surrogate).sum()
        grads = torch.autograd.grad(objective, list(leaves.values()), create_graph=create_graph)
    return dict(zip(base, grads, strict=True))


def _step(base: Params, alpha: Alpha, grads: Params) -> Params:
    return {k: base[k] + _alpha_for(alpha, k) * grads[k] for k in base}


def inner_step(
    policy: GaussianMLPPolicy,
    params: Params,
    pre_batch: RolloutBatch,
    alpha: Alpha,
    create_graph: bool = False,
    surrogate: SurrogateForm = "ratio",
) -> Params:
    """One vanilla policy-gradient ascent step per task: ``theta'_m = theta + alpha * grad J_m(theta)``.

    The per-task gradients come from one backward pass: ``sum_m J_m`` is differentiated w.r.t.
    the ``[M, ...]`` expanded copy of ``theta`` (task ``m``'s slice only sees ``J_m``).

    Args:
        policy: the policy (architecture + normalizer).
        params: ``theta`` (unbatched, or already task-batched ``[M, ...]``).
        pre_batch: pre-update rollouts, leading dim ``M``.
        alpha: step size, a float (``0`` gives ``theta' = theta``, i.e. ME-TRPO) or a dict of
            per-parameter step sizes shaped like the unbatched params (learnable inner lr).
        create_graph: keep ``grad J_m`` differentiable in ``theta`` (second-order MAML). With
            False, ``theta'`` still depends on ``theta`` through the identity term (first-order
            MAML) if ``params`` require grad.
        surrogate: ``"ratio"`` (importance weighted, default) or ``"log_prob"``; same gradient
            at ``theta = theta_old``.

    Returns:
        adapted params, every tensor ``[M, ...]``.
    """
    base = task_batched(policy, params, pre_batch.num_tasks)
    if _is_zero(alpha):
        return base
    return _step(base, alpha, inner_gradient(policy, base, pre_batch, create_graph, surrogate))


def _detach_params(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}


class MetaOptimizer:
    """Outer (meta) update of a :class:`GaussianMLPPolicy` over ``M`` tasks.

    ``algo="trpo"`` (MAML-TRPO, the MB-MPO paper): maximise ``L(theta) = mean_m surr_m(theta'_m(theta))``
    with ``surr_m = mean_valid(pi_{theta'_m}(a|s) / pi_old_m(a|s) * A_post)`` on post-update samples,
    subject to ``mean_m mean_valid KL(pi_old_m || pi_{theta'_m}) <= max_kl``: gradient through the
    inner step (second order unless ``first_order``), natural direction by CG on the KL HVP
    (through the inner step for ``kl_hessian="exact"``; on ``hvp_subsample`` of the time steps),
    backtracking line search.

    ``algo="promp"`` (Rothfuss et al. 2019): ``promp_steps`` Adam steps on the clipped surrogate
    (``clip_eps``) minus ``eta_m * KL(pi_theta_old || pi_theta)`` on pre-update samples; the
    per-task ``eta_m`` is halved / doubled when the inner KL is below / above
    ``target_inner_kl`` by a factor 1.5.

    If ``learn_inner_lr``, ``alpha`` is a dict of per-parameter step sizes (initialised to
    ``inner_lr``) that is optimised together with ``theta`` by the outer step. Otherwise, if
    ``inner_kl_target > 0``, the scalar ``alpha`` follows the true inner KL towards the target
    (module docstring); the two exclude each other (both would set the step size).
    """

    def __init__(
        self,
        policy: GaussianMLPPolicy,
        algo: str = "trpo",
        inner_lr: float = 1e-3,
        learn_inner_lr: bool = False,
        max_kl: float = 0.01,
        cg_iters: int = 10,
        cg_damping: float = 1e-5,
        backtrack_ratio: float = 0.8,
        max_backtracks: int = 15,
        first_order: bool = False,
        kl_hessian: KLHessian = "exact",
        inner_surrogate: SurrogateForm = "ratio",
        clip_eps: float = 0.3,
        target_inner_kl: float = 0.01,
        init_inner_kl_coef: float = 5e-4,
        adapt_inner_kl_coef: bool = True,
        promp_lr: float = 1e-3,
        promp_steps: int = 5,
        hvp_subsample: float = 1.0,
        inner_kl_target: float = 0.0,
    ) -> None:
        if algo not in ("trpo", "promp"):
            raise ValueError(f"algo must be 'trpo' or 'promp', got {algo!r}")
        if kl_hessian not in ("exact", "first_order"):
            raise ValueError(f"kl_hessian must be 'exact' or 'first_order', got {kl_hessian!r}")
        if inner_surrogate not in ("ratio", "log_prob"):
            raise ValueError(f"inner_surrogate must be 'ratio' or 'log_prob', got {inner_surrogate!r}")
        if not 0.0 < hvp_subsample <= 1.0:
            raise ValueError(f"hvp_subsample must be in (0, 1], got {hvp_subsample}")
        if inner_kl_target < 0:
            raise ValueError(f"inner_kl_target must be >= 0, got {inner_kl_target}")
        if inner_kl_target > 0 and (learn_inner_lr or inner_lr <= 0):
            raise ValueError("inner_kl_target needs a fixed inner_lr > 0 to start from (not learn_inner_lr, not 0)")
        self.policy = policy
        self.algo = algo
        self.alpha: Alpha = float(inner_lr)
        if learn_inner_lr:
            self.alpha = {k: nn.Parameter(torch.full_like(v.detach(), inner_lr)) for k, v in policy.params().items()}
        self.max_kl, self.cg_iters, self.cg_damping = max_kl, cg_iters, cg_damping
        self.backtrack_ratio, self.max_backtracks = backtrack_ratio, max_backtracks
        self.first_order, self.kl_hessian, self.inner_surrogate = first_order, kl_hessian, inner_surrogate
        self.hvp_subsample = float(hvp_subsample)
        self.inner_kl_target = float(inner_kl_target)
        self.clip_eps, self.target_inner_kl = clip_eps, target_inner_kl
        self.init_inner_kl_coef, self.adapt_inner_kl_coef = init_inner_kl_coef, adapt_inner_kl_coef
        self.promp_lr, self.promp_steps = promp_lr, promp_steps
        self.inner_kl_coef: Tensor | None = None  # [M], ProMP only
        self._adam: torch.optim.Adam | None = None

    @classmethod
    def from_config(cls, policy: GaussianMLPPolicy, cfg: MetaConfig) -> MetaOptimizer:
        """The outer optimizer a :class:`~mbmpo_core.config.MetaConfig` describes."""
        return cls(
            policy, algo=cfg.algo, inner_lr=cfg.inner_lr, learn_inner_lr=cfg.learn_inner_lr, max_kl=cfg.max_kl,
            cg_iters=cfg.cg_iters, cg_damping=cfg.cg_damping, backtrack_ratio=cfg.backtrack_ratio,
            max_backtracks=cfg.max_backtracks, first_order=cfg.first_order,
            kl_hessian=cast(KLHessian, cfg.kl_hessian), inner_surrogate=cast(SurrogateForm, cfg.inner_surrogate),
            clip_eps=cfg.clip_eps, target_inner_kl=cfg.target_inner_kl, init_inner_kl_coef=cfg.init_inner_kl_coef,
            adapt_inner_kl_coef=cfg.adapt_inner_kl_coef, promp_lr=cfg.promp_lr, promp_steps=cfg.promp_steps,
            hvp_subsample=cfg.hvp_subsample, inner_kl_target=cfg.inner_kl_target,
        )

    # ------------------------------------------------------------------ pieces
    @property
    def inner_lr(self) -> float:
        """The scalar inner step size; the mean over every parameter entry for learned per-parameter ones."""
        if not isinstance(self.alpha, dict):
            return float(self.alpha)
        with torch.no_grad():
            return float(torch.cat([v.reshape(-1) for v in self.alpha.values()]).mean())

    def parameters(self) -> list[Tensor]:
        """Everything the outer step optimises: policy params (fixed order), then learnable alphas."""
        params = list(self.policy.params().values())
        if isinstance(self.alpha, dict):
            params += list(self.alpha.values())
        return params

    def adapt(self, pre_batch: RolloutBatch, create_graph: bool) -> Params:
        """``theta'_m(theta)`` for every task of ``pre_batch`` (each ``[M, ...]``)."""
        return inner_step(self.policy, self.policy.params(), pre_batch, self.alpha, create_graph, self.inner_surrogate)

    def surrogate(self, adapted: Params, post_batch: RolloutBatch) -> Tensor:
        """Outer surrogate per task ``[M]``: ``mean_valid(pi_{theta'_m} / pi_old_m * A_post)``."""
        return pg_surrogate(self.policy, adapted, post_batch, "ratio")

    def kl(self, params: Params, batch: RolloutBatch) -> Tensor:
        """Per-task ``mean_valid KL(pi_old || pi_params)`` on ``batch`` (needs ``old_mean/old_log_std``): ``[M]``."""
        if batch.old_mean is None or batch.old_log_std is None:
            raise ValueError("batch has no old distribution; use RolloutBatch.with_old_dist")
        mean, log_std = self.policy.mean_and_log_std(batch.obs, params)
        return masked_task_mean(gaussian_kl(batch.old_mean, batch.old_log_std, mean, log_std), batch.mask)

    def inner_kl(self, adapted: Params, pre: RolloutBatch) -> Tensor:
        """True inner KL per task ``[M]``: ``mean_valid KL(pi_theta || pi_{theta'_m})`` on ``pre``, whose sampling
        distribution is ``pi_theta`` (``adapted``: ``theta'_m`` of that ``theta``, ``[M, ...]``)."""
        with torch.no_grad():
            return self.kl(_detach_params(adapted), self._with_pre_dist(pre))

    def _with_pre_dist(self, pre: RolloutBatch) -> RolloutBatch:
        """Fill ``pre``'s missing sampling distribution: it was sampled by the current ``theta``."""
        if pre.old_mean is not None and pre.old_log_std is not None:
            return pre
        theta = task_batched(self.policy, _detach_params(self.policy.params()), pre.num_tasks)
        mean, log_std = _frozen_dist(self.policy, pre.obs, theta)
        return replace(pre, old_mean=mean, old_log_std=log_std)

    def _with_post_dist(self, post: RolloutBatch, adapted: Params) -> RolloutBatch:
        """Fill ``post``'s missing sampling distribution: it was sampled by ``adapted`` = ``theta'`` of the
        current ``theta`` (what the MB-MPO loop does)."""
        if post.old_mean is not None and post.old_log_std is not None:
            return post
        mean, log_std = _frozen_dist(self.policy, post.obs, _detach_params(adapted))
        return replace(post, old_mean=mean, old_log_std=log_std)

    def _adapted_for_step(self, pre: RolloutBatch) -> tuple[Params, Params]:
        """``theta'(theta)`` twice, both with the full-batch value: with the graph the outer gradient needs
        (second order unless ``first_order``) and with the Jacobian ``d theta' / d theta`` the KL Hessian uses
        (``kl_hessian``; from the ``hvp_subsample`` of ``pre``). Shares one graph where they coincide."""
        theta = task_batched(self.policy, self.policy.params(), pre.num_tasks)
        if _is_zero(self.alpha):
            return theta, theta
        grads = inner_gradient(self.policy, theta, pre, not self.first_order, self.inner_surrogate)
        adapted = _step(theta, self.alpha, grads)
        if self.kl_hessian == "first_order":
            return adapted, _step(theta, self.alpha, _detach_params(grads))  # J = I
        hvp_pre = subsample_steps(pre, self.hvp_subsample)
        if hvp_pre is pre and not self.first_order:
            return adapted, adapted
        sub = inner_gradient(self.policy, theta, hvp_pre, True, self.inner_surrogate)
        # Value of the full-batch gradient, derivative of the subsample's.
        return adapted, _step(theta, self.alpha, {k: g + (grads[k] - g).detach() for k, g in sub.items()})

    def _trpo_closures(
        self, pre: RolloutBatch, post: RolloutBatch
    ) -> tuple[list[Tensor], Params, RolloutBatch, Callable[[], Tensor], Callable[[], Tensor], Callable[[], Tensor]]:
        """``(params, theta' at the start (detached), post with its sampling distribution, f_loss, f_kl,
        f_kl_hessian)`` for :func:`trpo_step`.

        ``f_loss`` with grad and ``f_kl_hessian`` use graphs built at the current parameters (only valid
        there); without grad (the line search) ``f_loss`` and ``f_kl`` share one inner step per candidate.
        """
        params = self.parameters()
        x0 = get_flat(params)
        adapted, adapted_hvp = self._adapted_for_step(pre)
        post = self._with_post_dist(post, adapted)
        post_hvp = subsample_steps(post, self.hvp_subsample)
        start = _detach_params(adapted)
        cache: dict[str, Any] = {"x": x0, "adapted": start}

        def at_start(value: Params) -> Params:
            if not torch.equal(get_flat(params), x0):
                raise RuntimeError("the graph of theta'(theta) belongs to the starting point of the outer step")
            return value

        def current() -> Params:
            x = get_flat(params)
            if not torch.equal(cache["x"], x):
                cache["x"], cache["adapted"] = x, _detach_params(self.adapt(pre, create_graph=False))
            result: Params = cache["adapted"]
            return result

        def f_loss() -> Tensor:
            return -self.surrogate(at_start(adapted) if torch.is_grad_enabled() else current(), post).mean()

        def f_kl() -> Tensor:
            return self.kl(current(), post).mean()

        def f_kl_hessian() -> Tensor:
            return self.kl(at_start(adapted_hvp), post_hvp).mean()

        return params, start, post, f_loss, f_kl, f_kl_hessian

    # ------------------------------------------------------------------ outer step
    def outer_step(self, pre_batch: RolloutBatch, post_batch: RolloutBatch) -> dict[str, float]:
        """One meta-update of ``theta`` (and learnable ``alpha``) in place.

        ``pre_batch`` must have been sampled by the current ``theta`` and ``post_batch`` by its adapted
        ``theta'``; missing ``old_mean / old_log_std`` are filled from them.

        Returns:
            stats: ``surrogate_before/after``, ``kl`` (outer, post-update samples), ``accepted``
            (0/1), ``step_frac``, ``n_backtracks``, ``grad_norm``, ``inner_kl`` (the true inner KL of
            this step's ``theta``: mean over tasks of ``KL(pi_theta || pi_theta'_m)`` on pre samples),
            ``inner_lr`` (the scalar step size it used, see :attr:`inner_lr`), ``outer_kl_pre`` (the outer
            step's change of the pre-update policy on pre samples), ``entropy``.
        """
        pre = self._with_pre_dist(pre_batch.detach())
        post = post_batch.detach()
        stats = {"inner_lr": self.inner_lr}
        stats.update(self._promp_step(pre, post) if self.algo == "promp" else self._trpo_step(pre, post))
        theta = task_batched(self.policy, _detach_params(self.policy.params()), pre.num_tasks)
        with torch.no_grad():
            stats["outer_kl_pre"] = float(self.kl(theta, pre).mean())
            stats["entropy"] = float(self.policy.entropy())
        self._follow_inner_kl_target(stats["inner_kl"])
        return stats

    def _follow_inner_kl_target(self, inner_kl: float) -> None:
        """Scale the scalar ``alpha`` so that ``inner_kl`` (~ alpha^2) would have met the KL target, within
        ``ALPHA_MAX_CHANGE`` and ``ALPHA_RANGE`` (nothing without a target, or for a NaN KL)."""
        if self.inner_kl_target <= 0 or isinstance(self.alpha, dict) or math.isnan(inner_kl):
            return
        ratio = math.sqrt(self.inner_kl_target / inner_kl) if inner_kl > 0 else math.inf
        factor = min(max(ratio, 1.0 / ALPHA_MAX_CHANGE), ALPHA_MAX_CHANGE)
        self.alpha = min(max(self.alpha * factor, ALPHA_RANGE[0]), ALPHA_RANGE[1])

    def natural_direction(self, pre_batch: RolloutBatch, post_batch: RolloutBatch) -> Tensor:
        """The TRPO step's unscaled CG direction ``-(H + damping I)^-1 g`` ``[P]`` (over :meth:`parameters`),
        without changing anything; for tests and benchmarks of the Hessian options."""
        pre = self._with_pre_dist(pre_batch.detach())
        params, _, _, f_loss, _, f_kl_hessian = self._trpo_closures(pre, post_batch.detach())
        grad = flat_grad(f_loss(), params, retain_graph=True)
        hvp = hessian_vector_product(f_kl_hessian, params, self.cg_damping)
        return conjugate_gradient(hvp, -grad, iters=self.cg_iters).detach()

    def _trpo_step(self, pre: RolloutBatch, post: RolloutBatch) -> dict[str, float]:
        params, start, _, f_loss, f_kl, f_kl_hessian = self._trpo_closures(pre, post)
        inner_kl = float(self.inner_kl(start, pre).mean())
        res = trpo_step(
            params, f_loss, f_kl, self.max_kl, self.cg_iters, self.cg_damping, self.backtrack_ratio,
            self.max_backtracks, hessian_kl=f_kl_hessian,
        )
        kl_after = res.kl if res.accepted else 0.0
        return {
            "surrogate_before": -res.loss_before,
            "surrogate_after": -res.loss_after,
            "kl": kl_after,
            "accepted": float(res.accepted),
            "step_frac": res.step_frac,
            "n_backtracks": float(res.n_backtracks),
            "grad_norm": res.grad_norm,
            "inner_kl": inner_kl,
        }

    def _promp_objective(self, pre: RolloutBatch, post: RolloutBatch) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, clipped surrogate [M], inner KL [M])`` at the current parameters."""
        adapted_params = self.adapt(pre, create_graph=not self.first_order)
        ratio = torch.exp(self.policy.log_prob(post.obs, post.act, adapted_params) - post.old_log_prob)
        adv = post.advantages
        clipped = torch.min(ratio * adv, ratio.clamp(1.0 - self.clip_eps, 1.0 + self.clip_eps) * adv)
        surr = masked_task_mean(clipped, post.mask)
        theta = task_batched(self.policy, self.policy.params(), pre.num_tasks)
        inner_kl = self.kl(theta, pre)
        assert self.inner_kl_coef is not None
        loss = -(surr - self.inner_kl_coef * inner_kl).mean()
        return loss, surr, inner_kl

    def _promp_step(self, pre: RolloutBatch, post: RolloutBatch) -> dict[str, float]:
        m = pre.num_tasks
        if self.inner_kl_coef is None or self.inner_kl_coef.shape[0] != m:
            self.inner_kl_coef = torch.full((m,), self.init_inner_kl_coef, dtype=pre.obs.dtype, device=pre.obs.device)
        if self._adam is None:
            self._adam = torch.optim.Adam(self.parameters(), lr=self.promp_lr)
        with torch.no_grad():
            start = self.adapt(pre, create_graph=False)
            post = self._with_post_dist(post, start)
            surr_before = float(self.surrogate(start, post).mean())
            true_inner_kl = float(self.inner_kl(start, pre).mean())
        for _ in range(self.promp_steps):
            loss, _, _ = self._promp_objective(pre, post)
            self._adam.zero_grad()
            loss.backward()
            self._adam.step()
        with torch.no_grad():
            adapted = self.adapt(pre, create_graph=False)
            surr_after = float(self.surrogate(adapted, post).mean())
            kl = float(self.kl(adapted, post).mean())
            theta = task_batched(self.policy, _detach_params(self.policy.params()), m)
            inner_kl = self.kl(theta, pre)  # ProMP's "inner KL": the pre-update policy's change (outer_kl_pre)
            if self.adapt_inner_kl_coef:
                # ProMP's adaptive penalty: keep each task's inner KL near the target.
                low, high = inner_kl < self.target_inner_kl / 1.5, inner_kl > self.target_inner_kl * 1.5
                self.inner_kl_coef = torch.where(low, self.inner_kl_coef / 2, self.inner_kl_coef)
                self.inner_kl_coef = torch.where(high, self.inner_kl_coef * 2, self.inner_kl_coef)
        return {
            "surrogate_before": surr_before,
            "surrogate_after": surr_after,
            "kl": kl,
            "accepted": 1.0,
            "step_frac": 1.0,
            "n_backtracks": 0.0,
            "inner_kl_coef": float(self.inner_kl_coef.mean()),
            "inner_kl": true_inner_kl,
        }

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Step sizes (learned, or the one the KL target set), ProMP penalty coefficients and Adam state (the
        policy is saved separately)."""
        alpha = self.alpha if isinstance(self.alpha, float) else {k: v.detach().clone() for k, v in self.alpha.items()}
        return {
            "alpha": alpha,
            "inner_kl_coef": None if self.inner_kl_coef is None else self.inner_kl_coef.clone(),
            "adam": None if self._adam is None else self._adam.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (learnable alphas are copied in place)."""
        alpha = state["alpha"]
        if isinstance(self.alpha, dict):
            with torch.no_grad():
                for k, v in self.alpha.items():
                    v.copy_(alpha[k])
        else:
            self.alpha = float(alpha)
        self.inner_kl_coef = state["inner_kl_coef"]
        if state["adam"] is not None:
            self._adam = torch.optim.Adam(self.parameters(), lr=self.promp_lr)
            self._adam.load_state_dict(state["adam"])
