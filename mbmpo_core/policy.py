"""Diagonal-Gaussian MLP policy with flat, named, functional parameters.

The parameters live in a flat ordered dict ``{"l0.weight", "l0.bias", ..., "out.weight",
"out.bias", "log_std"}`` so that the same layout can be exported to ONNX as named graph
inputs and adapted on the robot. Every evaluation method accepts an optional ``params``
dict: the module's own parameters by default, or any dict of tensors (e.g. adapted
``theta' = theta + alpha * g`` that is still differentiable w.r.t. ``theta``).

Task-batched evaluation: if every parameter carries a leading task dim ``M`` (e.g.
``log_std`` is ``[M, act_dim]``) then observations must be ``[M, *B, obs_dim]`` and the
outputs are ``[M, *B, ...]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]
BatchedImpl = Literal["matmul", "vmap"]

_LOG_2PI = math.log(2.0 * math.pi)


def params_to_vector(params: Params, names: Sequence[str] | None = None) -> Tensor:
    """Flatten ``params`` (in the order of ``names``, default dict order) into ``[P]``."""
    keys = list(params) if names is None else list(names)
    return torch.cat([params[k].reshape(-1) for k in keys])


def vector_to_params(vec: Tensor, like: Params) -> Params:
    """Inverse of :func:`params_to_vector`: split ``vec [P]`` into tensors shaped as ``like``.

    The result is a view-based split, so it stays differentiable w.r.t. ``vec``.
    """
    total = sum(ref.numel() for ref in like.values())
    if vec.numel() != total:
        raise ValueError(f"vector has {vec.numel()} elements, params need {total}")
    out: Params = {}
    offset = 0
    for name, ref in like.items():
        out[name] = vec[offset : offset + ref.numel()].view_as(ref)
        offset += ref.numel()
    return out


def gaussian_log_prob(act: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Diagonal Gaussian log-density summed over the action dim: ``[..., A] -> [...]``."""
    z = (act - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)


def gaussian_kl(mean_old: Tensor, log_std_old: Tensor, mean_new: Tensor, log_std_new: Tensor) -> Tensor:
    """Analytic ``KL(old || new)`` of diagonal Gaussians, summed over the action dim.

    All inputs broadcast to ``[..., A]``; the output is ``[...]``.
    """
    var_ratio = torch.exp(2.0 * (log_std_old - log_std_new))
    mahal = (mean_old - mean_new).pow(2) * torch.exp(-2.0 * log_std_new)
    return (log_std_new - log_std_old + 0.5 * (var_ratio + mahal) - 0.5).sum(-1)


class GaussianMLPPolicy(nn.Module):
    """``a ~ N(mu(s), diag(exp(log_std))^2)`` with ``mu = tanh-MLP((s - mean) / std)``.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        hidden_sizes: hidden widths; ``()`` gives a linear-Gaussian policy.
        init_std: initial state-independent std (paper: 1.0, i.e. ``log_std = 0``).
        batched_impl: how task-batched params are evaluated: batched matmuls or
            ``torch.func.vmap`` over the single-task forward (both give the same numbers).
    """

    obs_mean: Tensor
    obs_scale: Tensor

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int] = (32, 32),
        init_std: float = 1.0,
        batched_impl: BatchedImpl = "matmul",
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.hidden_sizes = tuple(hidden_sizes)
        self.batched_impl: BatchedImpl = batched_impl
        self._layer_names: list[str] = []
        in_dim = obs_dim
        for i, width in enumerate(self.hidden_sizes):
            self._add_linear(f"l{i}", in_dim, width)
            in_dim = width
        self._add_linear("out", in_dim, act_dim)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        # Normalizer: fixed per iteration, not trained, so buffers rather than parameters.
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_scale", torch.ones(obs_dim))
        self._names = [f"{layer}.{p}" for layer in self._layer_names for p in ("weight", "bias")]
        self._names.append("log_std")

    def _add_linear(self, name: str, in_dim: int, out_dim: int) -> None:
        layer = nn.Linear(in_dim, out_dim)
        if name == "out":
            # Small output layer so the initial mean is near 0 and exploration is set by std.
            with torch.no_grad():
                layer.weight.mul_(0.01)
                layer.bias.zero_()
        self.add_module(name, layer)
        self._layer_names.append(name)

    # ------------------------------------------------------------------ parameters
    def param_names(self) -> list[str]:
        """Fixed flat order of parameter names (the ONNX input order)."""
        return list(self._names)

    def params(self) -> Params:
        """The module's own parameters as a flat ordered dict (the ``nn.Parameter`` objects)."""
        named = dict(self.named_parameters())
        return {k: named[k] for k in self._names}

    def params_to_vector(self, params: Params | None = None) -> Tensor:
        """Flatten ``params`` (default: own) in :meth:`param_names` order -> ``[P]``."""
        return params_to_vector(self.params() if params is None else params, self._names)

    def vector_to_params(self, vec: Tensor) -> Params:
        """Split ``vec [P]`` into a params dict shaped like the module's parameters."""
        return vector_to_params(vec, self.params())

    @torch.no_grad()
    def load_vector(self, vec: Tensor) -> None:
        """Copy ``vec [P]`` into the module's parameters in place."""
        for p, v in zip(self.params().values(), self.vector_to_params(vec).values(), strict=True):
            p.copy_(v)

    def set_obs_normalizer(self, mean: Tensor, std: Tensor, min_std: float = 1e-6,
                           ignore: Sequence[int] = ()) -> None:
        """Set the fixed observation normalizer ``(obs - mean) * scale`` with ``scale = 1 / std``.

        ``mean, std: [obs_dim]``. Coordinates in ``ignore`` get scale 0: the policy does not see them (e.g. the
        absolute x of a walker, which grows without bound while the task does not depend on it).
        """
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=self.obs_mean.dtype))
        scale = 1.0 / torch.as_tensor(std, dtype=self.obs_scale.dtype).clamp_min(min_std)
        scale[list(ignore)] = 0.0
        self.obs_scale.copy_(scale)

    def is_batched(self, params: Params) -> bool:
        """True if ``params`` carry a leading task dim (``log_std`` is ``[M, act_dim]``)."""
        return params["log_std"].dim() == 2

    # ------------------------------------------------------------------ forward
    def _mean(self, params: Params, obs: Tensor) -> Tensor:
        """Mean for unbatched params ``obs [..., obs_dim] -> [..., act_dim]``,
        or batched params with ``obs [M, B, obs_dim] -> [M, B, act_dim]``."""
        h = (obs - self.obs_mean) * self.obs_scale
        for i, name in enumerate(self._layer_names):
            w, b = params[f"{name}.weight"], params[f"{name}.bias"]
            # [.., B, in] @ [.., in, out] + [.., 1, out]: same code for unbatched and [M, ...].
            h = torch.matmul(h, w.transpose(-1, -2)) + b.unsqueeze(-2)
            if i < len(self._layer_names) - 1:
                h = torch.tanh(h)
        return h

    def mean_and_log_std(self, obs: Tensor, params: Params | None = None) -> tuple[Tensor, Tensor]:
        """Distribution parameters.

        Args:
            obs: ``[*B, obs_dim]``, or ``[M, *B, obs_dim]`` for task-batched params.
            params: flat dict (default own); batched if each tensor has a leading dim ``M``.

        Returns:
            ``(mean, log_std)``, both ``[*B, act_dim]`` (resp. ``[M, *B, act_dim]``).
        """
        p = self.params() if params is None else params
        if not self.is_batched(p):
            mean = self._mean(p, obs)
            return mean, p["log_std"].expand_as(mean)
        m = p["log_std"].shape[0]
        flat = obs.reshape(m, -1, self.obs_dim)
        if self.batched_impl == "vmap":
            mean = torch.func.vmap(self._mean, in_dims=(0, 0))(p, flat)
        else:
            mean = self._mean(p, flat)
        mean = mean.reshape(*obs.shape[:-1], self.act_dim)
        log_std = p["log_std"].reshape(m, *([1] * (obs.dim() - 2)), self.act_dim)
        return mean, log_std.expand_as(mean)

    def forward(self, obs: Tensor, params: Params | None = None) -> Tensor:
        """Deterministic action (the mean): ``[..., obs_dim] -> [..., act_dim]``."""
        return self.mean_and_log_std(obs, params)[0]

    def log_prob(self, obs: Tensor, act: Tensor, params: Params | None = None) -> Tensor:
        """``log pi(act | obs)``: ``obs [..., obs_dim], act [..., act_dim] -> [...]``."""
        mean, log_std = self.mean_and_log_std(obs, params)
        return gaussian_log_prob(act, mean, log_std)

    def sample(
        self,
        obs: Tensor,
        params: Params | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample ``act [..., act_dim]`` for ``obs [..., obs_dim]`` (reparameterised)."""
        mean, log_std = self.mean_and_log_std(obs, params)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(log_std) * noise

    def kl(self, obs: Tensor, params_old: Params, params_new: Params) -> Tensor:
        """Per-sample analytic ``KL(pi_old(.|obs) || pi_new(.|obs))``: ``[..., obs_dim] -> [...]``."""
        mean_old, log_std_old = self.mean_and_log_std(obs, params_old)
        mean_new, log_std_new = self.mean_and_log_std(obs, params_new)
        return gaussian_kl(mean_old, log_std_old, mean_new, log_std_new)

    def entropy(self, params: Params | None = None) -> Tensor:
        """Differential entropy (state independent): ``[]``, or ``[M]`` for batched params."""
        log_std = (self.params() if params is None else params)["log_std"]
        return (log_std + 0.5 * (_LOG_2PI + 1.0)).sum(-1)
