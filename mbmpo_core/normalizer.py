"""Per-feature mean/std normalizer stored as torch buffers.

Used for the dynamics ensemble's inputs and targets and for the policy's
observations. Buffers (not parameters) so that ``state_dict`` carries the
statistics while optimizers never touch them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

ArrayLike = np.ndarray | torch.Tensor


class Normalizer(nn.Module):
    """Affine normalizer ``(x - mean) / std`` with a floor on ``std``.

    Args:
        dim: feature dimension.
        eps: lower bound on ``std``; constant features (e.g. a joint that never
            moves in the data) would otherwise blow up to inf/NaN.
        ignore: features that :meth:`normalize` maps to 0 (inputs a model must not depend on, such as
            the absolute position of a walker). :meth:`denormalize` is meaningless for them.
    """

    mean: torch.Tensor
    std: torch.Tensor
    keep: torch.Tensor

    def __init__(self, dim: int, eps: float = 1e-6, ignore: Sequence[int] = ()) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.eps = float(eps)
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("std", torch.ones(self.dim))
        keep = torch.ones(self.dim)
        keep[list(ignore)] = 0.0
        self.register_buffer("keep", keep)

    @torch.no_grad()
    def fit(self, data: ArrayLike) -> None:
        """Recompute the statistics from ``data: [N, dim]`` (replaces, not updates)."""
        x = torch.as_tensor(data, dtype=torch.float64, device=self.mean.device)
        if x.ndim != 2 or x.shape[1] != self.dim or x.shape[0] == 0:
            raise ValueError(f"expected data of shape [N>0, {self.dim}], got {tuple(x.shape)}")
        # float64 accumulation: large datasets of float32 lose precision in the variance.
        mean = x.mean(dim=0)
        std = x.std(dim=0, unbiased=False).clamp_min(self.eps)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [..., dim]`` -> ``[..., dim]`` with zero mean / unit std over the fit data."""
        return (x - self.mean) / self.std * self.keep

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`; ``x: [..., dim]`` -> ``[..., dim]``."""
        return x * self.std + self.mean

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"
