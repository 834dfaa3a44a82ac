"""Batched ensemble of K feed-forward dynamics models (MB-MPO's learned simulator).

All K models live in one module: layer ``l`` has weights ``[K, in, out]`` and
biases ``[K, 1, out]`` and is applied with a single ``torch.baddbmm``, so a
forward pass costs one kernel per layer regardless of K.

Each model predicts the normalized state change ``(next_obs - obs)``, from
normalized ``(obs, act)``. Both normalizers are recomputed from all the data
at every :meth:`DynamicsEnsemble.fit`, which continues from the current
weights (warm start; nothing is ever re-initialized).

Training details (choices documented here because they matter for MB-MPO):

* **Rows and the split.** ``fit`` receives all data so far (or its FIFO tail):
  row ``j`` of its arrays is row ``first_row + j`` of the run's transition
  stream, in the order the rows were stored. Every model holds out its own
  ``valid_fraction`` of the rows for validation. Whether row ``i`` is a
  validation row of model ``k`` is a fixed pseudo-random function of
  ``(seed, k, i)`` (:meth:`DynamicsEnsemble.validation_mask`): a row never moves
  between a model's training and validation sets across fits, the split
  needs no state of its own (a resumed run has it), and the FIFO tail keeps the
  assignment of the rows it keeps, provided the caller passes ``first_row``.
  Per-model set sizes are therefore binomial around ``valid_fraction``.
* **Early stopping (patience).** After every epoch, a model whose validation
  MSE has not improved by a relative ``improvement_threshold`` (1 %) on the
  best of this fit for ``patience`` (5) epochs in a row stops training (MBPO's
  rule); the first epoch of a fit always counts as an improvement. Training
  ends when every model stopped or after ``max_epochs``.
* **Best weights.** Each model keeps the weights of its lowest validation MSE
  over the epochs of this fit, and these are restored at the end. The
  starting weights are never restored: they have not seen the newest rows.
  Models are independent (separate parameters; Adam is element-wise), so
  restoring a stopped model's snapshot is exactly equivalent to having frozen
  it; stopped models also get zero loss weight.
* **Optimizer.** A fresh Adam (``lr``) per ``fit``: stale moments from the
  previous dataset would otherwise kick the warm-started weights.
* **Member emphasis.** ``fit(..., groups=g)`` with ``member_emphasis`` w != 1:
  model k weighs the rows of group ``g`` with ``g % K == k`` by w and every
  other row (group -1 included) by 1, in its training loss and its validation
  MSE (weighted means), so member k leans towards the physics its group's data
  came from while still seeing all of it. w = 1 (or no groups) is the
  unweighted fit, computed exactly as without groups.

The FIFO capacity of the dataset (1e5 transitions in the paper) belongs to the
caller; :func:`mbmpo_core.store.fifo_tail` trims arrays to it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mbmpo_core.config import EnsembleConfig
from mbmpo_core.normalizer import Normalizer

ArrayLike = np.ndarray | torch.Tensor

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "swish": nn.functional.silu,
    "silu": nn.functional.silu,
    "elu": nn.functional.elu,
}

# Odd 64-bit constants of the split hash (golden ratio and splitmix64's finalizer).
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MODEL_KEY, _SEED_KEY = 0xD1B54A32D192ED03, 0x8CB92BA72F3D8DD7

# Rows per forward chunk when evaluating whole datasets; bounds the hidden
# activations to K * chunk * hidden floats (5 * 8192 * 512 * 4 B = 84 MB).
_EVAL_CHUNK = 8192


@dataclass
class EpochInfo:
    """What ``fit`` reports to its ``progress`` callback after every epoch.

    All arrays are ``[K]`` numpy; MSEs are in normalized target units.
    """

    epoch: int
    max_epochs: int
    train_mse: np.ndarray
    valid_mse: np.ndarray
    active: np.ndarray


@dataclass
class FitReport:
    """Result of :meth:`DynamicsEnsemble.fit` (arrays are ``[K]``, normalized MSE)."""

    epochs: np.ndarray  # epochs each model was trained
    train_mse: np.ndarray  # final (restored-weights) training MSE
    valid_mse: np.ndarray  # final (restored-weights) validation MSE
    initial_valid_mse: np.ndarray  # validation MSE before the first epoch (same rows: the split is stable)
    seconds: float
    history_valid_mse: list[np.ndarray] = field(default_factory=list)  # one [K] per epoch


class DynamicsEnsemble(nn.Module):
    """K MLP dynamics models ``(obs, act) -> next_obs`` trained and queried in one batch.

    Args:
        obs_dim, act_dim: observation / action sizes.
        num_models: K.
        hidden_sizes: hidden layer widths (paper: 512, 512).
        activation: one of ``relu, tanh, swish/silu, elu``.
        lr: Adam learning rate.
        batch_size: minibatch size per model.
        valid_fraction: fraction of the data each model holds out for early stopping.
        patience: a model stops after this many epochs without a relative validation improvement
            of ``improvement_threshold`` (see module doc).
        improvement_threshold: relative validation-MSE decrease that counts as an improvement.
        max_epochs: default epoch cap of :meth:`fit`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; all tensors live there.
        seed: seeds the initialization and all of ``fit``'s randomness.
        ignored_obs: observation indices the models do not see as inputs (their deltas are still predicted).
        member_emphasis: loss weight model k gives the rows of its own groups in :meth:`fit` (see module doc).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        num_models: int = 5,
        hidden_sizes: tuple[int, ...] | list[int] = (512, 512),
        activation: str = "relu",
        lr: float = 1e-3,
        batch_size: int = 500,
        valid_fraction: float = 0.2,
        patience: int = 5,
        improvement_threshold: float = 0.01,
        max_epochs: int = 50,
        device: str | torch.device = "cpu",
        seed: int = 0,
        ignored_obs: tuple[int, ...] | list[int] = (),
        member_emphasis: float = 1.0,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
        if num_models < 1 or batch_size < 1 or max_epochs < 1 or patience < 1:
            raise ValueError("num_models, batch_size, max_epochs and patience must be >= 1")
        if not 0.0 <= improvement_threshold < 1.0:
            raise ValueError(f"improvement_threshold must be in [0, 1), got {improvement_threshold}")
        if not 0.0 < member_emphasis < math.inf:
            raise ValueError(f"member_emphasis must be finite and > 0, got {member_emphasis}")
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.num_models = int(num_models)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.activation = activation
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.valid_fraction = float(valid_fraction)
        self.patience = int(patience)
        self.improvement_threshold = float(improvement_threshold)
        self.max_epochs = int(max_epochs)
        self.seed = int(seed)
        self.ignored_obs = tuple(int(i) for i in ignored_obs)
        self.member_emphasis = float(member_emphasis)
        self._act_fn = _ACTIVATIONS[activation]

        # Ignored observation coordinates (e.g. absolute x) are zeroed at the input: the dynamics do not depend
        # on them, and a walker that runs further than the data would otherwise leave the training range.
        self.input_normalizer = Normalizer(self.obs_dim + self.act_dim, ignore=self.ignored_obs)
        self.target_normalizer = Normalizer(self.obs_dim)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self._init_layers()
        self._fit_calls = 0
        self.to(torch.device(device))

    @classmethod
    def from_config(
        cls,
        obs_dim: int,
        act_dim: int,
        cfg: EnsembleConfig,
        device: str | torch.device = "cpu",
        seed: int = 0,
        ignored_obs: tuple[int, ...] | list[int] = (),
    ) -> DynamicsEnsemble:
        """The ensemble an :class:`~mbmpo_core.config.EnsembleConfig` describes (its ``capacity`` is the caller's)."""
        return cls(
            obs_dim, act_dim, num_models=cfg.num_models, hidden_sizes=cfg.hidden_sizes, activation=cfg.activation,
            lr=cfg.lr, batch_size=cfg.batch_size, valid_fraction=cfg.valid_fraction, patience=cfg.patience,
            improvement_threshold=cfg.improvement_threshold, max_epochs=cfg.max_epochs, device=device, seed=seed,
            ignored_obs=ignored_obs, member_emphasis=cfg.member_emphasis,
        )

    # ------------------------------------------------------------------ setup
    def _init_layers(self) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        sizes = [self.obs_dim + self.act_dim, *self.hidden_sizes, self.obs_dim]
        for fan_in, fan_out in itertools.pairwise(sizes):
            # Glorot uniform (the paper's TF default), independent draw per model.
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w = (torch.rand(self.num_models, fan_in, fan_out, generator=gen) * 2.0 - 1.0) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(self.num_models, 1, fan_out)))

    @property
    def device(self) -> torch.device:
        device: torch.device = self.weights[0].device
        return device

    def config(self) -> dict[str, Any]:
        """Constructor arguments (device excluded), as stored by :meth:`save`."""
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "num_models": self.num_models,
            "hidden_sizes": list(self.hidden_sizes),
            "activation": self.activation,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "valid_fraction": self.valid_fraction,
            "patience": self.patience,
            "improvement_threshold": self.improvement_threshold,
            "max_epochs": self.max_epochs,
            "seed": self.seed,
            "ignored_obs": list(self.ignored_obs),
            "member_emphasis": self.member_emphasis,
        }

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw network: normalized inputs ``x: [K, B, obs_dim + act_dim]`` ->
        normalized deltas ``[K, B, obs_dim]`` (model k sees row k). Differentiable."""
        last = len(self.weights) - 1
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = self._act_fn(h)
        return h

    @torch.no_grad()
    def predict(self, obs: ArrayLike, act: ArrayLike) -> torch.Tensor:
        """Next observations, model k on row k.

        Args:
            obs: ``[K, B, obs_dim]``; act: ``[K, B, act_dim]`` (torch on ``device``
                for the fast path; numpy is converted).
        Returns:
            ``next_obs: [K, B, obs_dim]`` float32 torch tensor on ``device``.
        """
        o = self._as_tensor(obs)
        a = self._as_tensor(act)
        if o.ndim != 3 or o.shape[0] != self.num_models or o.shape[-1] != self.obs_dim:
            raise ValueError(f"obs must be [{self.num_models}, B, {self.obs_dim}], got {tuple(o.shape)}")
        if a.shape[:2] != o.shape[:2] or a.shape[-1] != self.act_dim:
            raise ValueError(f"act must be [{self.num_models}, B, {self.act_dim}], got {tuple(a.shape)}")
        x = self.input_normalizer.normalize(torch.cat([o, a], dim=-1))
        return o + self.target_normalizer.denormalize(self(x))

    @torch.no_grad()
    def predict_all(self, obs: ArrayLike, act: ArrayLike) -> torch.Tensor:
        """Every model on the same batch: ``obs: [B, obs_dim]``, ``act: [B, act_dim]``
        -> ``[K, B, obs_dim]``."""
        o = self._as_tensor(obs)
        a = self._as_tensor(act)
        k = self.num_models
        return self.predict(o.unsqueeze(0).expand(k, -1, -1), a.unsqueeze(0).expand(k, -1, -1))

    @torch.no_grad()
    def validation_error(self, obs: ArrayLike, act: ArrayLike, next_obs: ArrayLike) -> torch.Tensor:
        """Mean squared one-step error per model in raw observation units.

        Args: ``obs, next_obs: [N, obs_dim]``, ``act: [N, act_dim]``.
        Returns: ``[K]`` (mean over N and obs_dim).
        """
        o, a, n = self._as_tensor(obs), self._as_tensor(act), self._as_tensor(next_obs)
        total = torch.zeros(self.num_models, device=self.device)
        for start in range(0, o.shape[0], _EVAL_CHUNK):
            sl = slice(start, start + _EVAL_CHUNK)
            err = self.predict_all(o[sl], a[sl]) - n[sl].unsqueeze(0)
            total += err.square().sum(dim=(1, 2))
        return total / (o.shape[0] * self.obs_dim)

    def _as_tensor(self, x: ArrayLike) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=self.device)

    # -------------------------------------------------------------------- fit
    def validation_mask(self, first_row: int, num_rows: int) -> torch.Tensor:
        """Which rows each model holds out: ``[K, num_rows]`` bool on ``device`` (True = validation).

        Rows are ``first_row .. first_row + num_rows - 1`` of the transition stream (see module doc).
        Row ``i`` is a validation row of model ``k`` iff ``u(seed, k, i) < valid_fraction``, with ``u`` a
        uniform hash: the same for every call, so the split is stable as data grows and after a resume.
        Every model gets at least one row of each kind (tiny datasets only).
        """
        if first_row < 0 or num_rows < 2:
            raise ValueError(f"need first_row >= 0 and num_rows >= 2, got {first_row}, {num_rows}")
        u = torch.as_tensor(_row_uniforms(self.seed, self.num_models, first_row, num_rows))
        valid = u < self.valid_fraction
        # A model without validation (or training) rows cannot fit; give it the row nearest the threshold.
        models = torch.arange(self.num_models)
        valid[models, u.argmin(dim=1)] |= ~valid.any(dim=1)
        valid[models, u.argmax(dim=1)] &= ~valid.all(dim=1)
        return valid.to(self.device)

    def fit(
        self,
        obs: ArrayLike,
        act: ArrayLike,
        next_obs: ArrayLike,
        epochs: int | None = None,
        progress: Callable[[EpochInfo], None] | None = None,
        early_stop: bool = True,
        first_row: int = 0,
        groups: ArrayLike | None = None,
    ) -> FitReport:
        """Train all models on ``obs, next_obs: [N, obs_dim]``, ``act: [N, act_dim]``.

        The rows are all data so far: row ``j`` is row ``first_row + j`` of the run's transition stream
        (a FIFO tail of ``N`` rows out of ``T`` stored passes ``first_row = T - N``), which fixes each
        row's train/validation assignment (:meth:`validation_mask`). Continues from the current weights.
        ``epochs`` caps this call (default ``max_epochs``); ``early_stop=False`` runs exactly ``epochs``
        epochs (the best epoch's weights are still restored). ``progress`` is called after every epoch
        with an :class:`EpochInfo`. ``groups: [N] int`` (-1 = none) gives each row's physics group, which
        ``member_emphasis`` weighs (module doc); MSEs reported are then the weighted ones.
        """
        t0 = time.perf_counter()
        max_epochs = self.max_epochs if epochs is None else int(epochs)
        x, y = self._prepare_data(obs, act, next_obs)
        rows = self.row_weights(groups, x.shape[0])  # [K, N] or None (unweighted)
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 7919 * self._fit_calls)
        self._fit_calls += 1
        valid = self.validation_mask(first_row, x.shape[0])  # [K, N]
        n_train = int((~valid).sum(dim=1).min())  # rows per model and epoch (the smallest training set)
        valid_idx, valid_w = _padded_rows(valid, rows)  # [K, V], [K, V]
        x_val, y_val = x[valid_idx], y[valid_idx]  # [K, V, *]

        initial = self._mse(x_val, y_val, valid_w).cpu().numpy()
        best_mse = torch.full((self.num_models,), math.inf, device=self.device)
        best_state = [p.detach().clone() for p in self.parameters()]
        reference = torch.full_like(best_mse, math.inf)  # loss at the last significant improvement
        stale = torch.zeros(self.num_models, dtype=torch.long, device=self.device)  # epochs since then
        active = torch.ones(self.num_models, dtype=torch.bool, device=self.device)
        epochs_run = np.zeros(self.num_models, dtype=np.int64)
        history: list[np.ndarray] = []
        optim = torch.optim.Adam(self.parameters(), lr=self.lr)

        for epoch in range(max_epochs):
            train_mse = self._train_epoch(x, y, valid, n_train, active, optim, gen, rows)
            valid_mse = self._mse(x_val, y_val, valid_w)
            epochs_run += active.cpu().numpy()
            improved = active & (valid_mse < best_mse)
            self._copy_where(best_state, list(self.parameters()), improved)
            best_mse = torch.where(improved, valid_mse, best_mse)
            significant = valid_mse < reference * (1.0 - self.improvement_threshold)
            reference = torch.where(active & significant, valid_mse, reference)
            stale = torch.where(significant, torch.zeros_like(stale), stale + 1)
            if early_stop:
                active = active & (stale < self.patience)
            history.append(valid_mse.cpu().numpy())
            if progress is not None:
                progress(EpochInfo(epoch + 1, max_epochs, train_mse.cpu().numpy(), history[-1], active.cpu().numpy()))
            if not bool(active.any()):
                break

        # Only weights of this fit's epochs come back (a model that never got a finite loss keeps its own).
        self._copy_where(list(self.parameters()), best_state, torch.isfinite(best_mse))
        train_idx, train_w = _padded_rows(~valid, rows)
        return FitReport(
            epochs=epochs_run,
            train_mse=self._mse(x[train_idx], y[train_idx], train_w).cpu().numpy(),
            valid_mse=self._mse(x_val, y_val, valid_w).cpu().numpy(),
            initial_valid_mse=initial,
            seconds=time.perf_counter() - t0,
            history_valid_mse=history,
        )

    def row_weights(self, groups: ArrayLike | None, num_rows: int) -> torch.Tensor | None:
        """Loss weight of every row for every model, ``[K, num_rows]`` on ``device``: ``member_emphasis`` where
        ``groups[i] % K == k`` (``groups[i] >= 0``), else 1; None (unweighted) without groups or with emphasis 1."""
        if groups is None or self.member_emphasis == 1.0:
            return None
        g = torch.as_tensor(np.asarray(groups) if not isinstance(groups, torch.Tensor) else groups)
        if g.shape != (num_rows,) or g.dtype.is_floating_point or g.dtype == torch.bool:
            raise ValueError(f"groups must be [{num_rows}] int, got {tuple(g.shape)} {g.dtype}")
        g = g.to(device=self.device, dtype=torch.long)
        models = torch.arange(self.num_models, device=self.device).unsqueeze(1)  # [K, 1]
        own = (g >= 0) & (g.remainder(self.num_models) == models)  # [K, N]
        return torch.where(own, self.member_emphasis, 1.0).to(torch.float32)

    def _prepare_data(
        self, obs: ArrayLike, act: ArrayLike, next_obs: ArrayLike
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refit normalizers; return normalized inputs ``[N, in]`` and targets ``[N, obs_dim]``."""
        o, a, n = self._as_tensor(obs), self._as_tensor(act), self._as_tensor(next_obs)
        if o.ndim != 2 or o.shape[1] != self.obs_dim or n.shape != o.shape:
            raise ValueError(f"obs/next_obs must be [N, {self.obs_dim}], got {tuple(o.shape)}, {tuple(n.shape)}")
        if a.ndim != 2 or a.shape != (o.shape[0], self.act_dim):
            raise ValueError(f"act must be [N, {self.act_dim}], got {tuple(a.shape)}")
        if o.shape[0] < 2:
            raise ValueError("need at least 2 transitions to split train/valid")
        inputs = torch.cat([o, a], dim=-1)
        deltas = n - o
        self.input_normalizer.fit(inputs)
        self.target_normalizer.fit(deltas)
        return self.input_normalizer.normalize(inputs), self.target_normalizer.normalize(deltas)

    def _train_epoch(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor,
        n_train: int,
        active: torch.Tensor,
        optim: torch.optim.Optimizer,
        gen: torch.Generator,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One pass over ``n_train`` shuffled training rows of every model; returns mean train MSE ``[K]``.

        ``valid: [K, N]`` marks each model's validation rows; a model with more than ``n_train`` training
        rows sees a different random ``n_train`` of them every epoch. ``rows: [K, N]`` weighs each model's rows
        (a weighted mean per minibatch; None = plain mean).
        """
        keys = torch.rand(valid.shape, generator=gen, device=self.device).masked_fill(valid, 2.0)
        order = torch.argsort(keys, dim=1)[:, :n_train]  # validation rows sort last
        weight = active.to(x.dtype)
        total = torch.zeros(self.num_models, device=self.device)
        for start in range(0, n_train, self.batch_size):
            idx = order[:, start : start + self.batch_size]  # [K, b]
            per_model = self._batch_mse(x, y, idx, rows)  # [K]
            optim.zero_grad(set_to_none=True)
            # Sum, not mean, over models: each model's gradient is independent of K.
            (per_model * weight).sum().backward()
            optim.step()
            total += per_model.detach() * idx.shape[1]
        return total / n_train

    def _batch_mse(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                   rows: torch.Tensor | None) -> torch.Tensor:
        """Minibatch MSE ``[K]`` of model k on rows ``idx[k]`` (``idx: [K, b]``), weighted by ``rows: [K, N]``."""
        err = (self(x[idx]) - y[idx]).square()  # [K, b, obs_dim]
        if rows is None:
            return err.mean(dim=(1, 2))
        w = rows.gather(1, idx)  # [K, b]
        return (err.mean(dim=2) * w).sum(dim=1) / w.sum(dim=1)

    @torch.no_grad()
    def _mse(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Per-model normalized MSE of ``x: [K, M, in]`` against ``y: [K, M, obs_dim]`` over the rows with
        ``weight: [K, M]`` 1 (0 = padding) -> ``[K]``."""
        total = torch.zeros(self.num_models, device=self.device)
        for start in range(0, x.shape[1], _EVAL_CHUNK):
            sl = slice(start, start + _EVAL_CHUNK)
            total += ((self(x[:, sl]) - y[:, sl]).square().sum(dim=2) * weight[:, sl]).sum(dim=1)
        return total / (weight.sum(dim=1).clamp_min(1.0) * y.shape[2])

    @staticmethod
    @torch.no_grad()
    def _copy_where(dst: list[torch.Tensor], src: list[torch.Tensor], mask: torch.Tensor) -> None:
        """``dst[k] = src[k]`` for the models ``k`` where ``mask: [K]`` is True (every tensor ``[K, ...]``)."""
        for d, s in zip(dst, src, strict=True):
            d.copy_(torch.where(mask.view(-1, 1, 1), s, d))

    # ---------------------------------------------------------------- persist
    def get_extra_state(self) -> torch.Tensor:  # in state_dict(): the fit count seeds the next fit's split
        return torch.tensor(self._fit_calls)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self._fit_calls = int(state)

    def save(self, path: str | Path) -> None:
        """Write hyperparameters + weights + normalizers to ``path`` (torch format)."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        torch.save({"format": "mbmpo-dynamics-ensemble-v1", "config": self.config(), "state_dict": state}, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> DynamicsEnsemble:
        """Rebuild an ensemble saved with :meth:`save` on ``device``."""
        blob = torch.load(path, map_location="cpu", weights_only=True)
        config = dict(blob["config"])
        config.pop("early_stop_decay", None)  # files written before the patience rule
        model = cls(**config, device="cpu")
        model.load_state_dict(blob["state_dict"])
        return model.to(torch.device(device))


def _row_uniforms(seed: int, num_models: int, first_row: int, num_rows: int) -> np.ndarray:
    """Uniform ``[0, 1)`` values ``[num_models, num_rows]``, a fixed function of ``(seed, model, row)``
    (splitmix64's finalizer on a per-(seed, model, row) key; uint64 arithmetic wraps by design)."""
    rows = np.arange(first_row, first_row + num_rows, dtype=np.uint64)[None, :]
    models = np.arange(num_models, dtype=np.uint64)[:, None]
    seed_key = np.array([seed % 2**64], dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = rows * np.uint64(_GOLDEN) + models * np.uint64(_MODEL_KEY) + seed_key * np.uint64(_SEED_KEY)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def _padded_rows(mask: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of each model's True entries of ``mask: [K, N]``, in row order, padded to the largest
    count: ``(idx [K, C], weight [K, C])`` with weight 1 (or the row's weight in ``rows: [K, N]``) for real rows
    and 0 for padding."""
    counts = mask.sum(dim=1)
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # True rows first
    width = int(counts.max())
    idx = order[:, :width]
    weight = (torch.arange(width, device=mask.device) < counts.unsqueeze(1)).to(torch.float32)
    return idx, weight if rows is None else weight * rows.gather(1, idx)
