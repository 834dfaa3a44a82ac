"""Shared by the tests of the bundle's dynamics graph, identification and ONNX imagination: a small ensemble
fitted on a toy system, a policy and the exporter's arguments."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mbmpo_core import bundle as pb
from mbmpo_core.ensemble import DynamicsEnsemble
from mbmpo_core.export import export_bundle
from mbmpo_core.policy import GaussianMLPPolicy

OBS_DIM, ACT_DIM, K = 6, 2, 3
IGNORED = (0,)  # an absolute position: no input of the models, its delta still predicted


def toy_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transitions of a smooth toy system at a scale far from N(0, 1) (the normalisers matter)."""
    rng = np.random.default_rng(seed)
    obs = (3.0 * rng.standard_normal((n, OBS_DIM)) + 2.0).astype(np.float32)
    act = rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32)
    mix = np.random.default_rng(99).standard_normal((OBS_DIM + ACT_DIM, OBS_DIM))
    next_obs = obs + 0.5 * np.tanh(np.concatenate([obs, act], 1) @ mix) + 0.3
    return obs, act, next_obs.astype(np.float32)


def fitted_ensemble(activation: str = "relu", hidden: tuple[int, ...] = (32, 24)) -> DynamicsEnsemble:
    torch.manual_seed(0)
    ensemble = DynamicsEnsemble(OBS_DIM, ACT_DIM, num_models=K, hidden_sizes=hidden, activation=activation,
                                ignored_obs=IGNORED, max_epochs=3, batch_size=64)
    ensemble.fit(*toy_data(400))
    return ensemble


def toy_policy() -> GaussianMLPPolicy:
    torch.manual_seed(1)
    return GaussianMLPPolicy(OBS_DIM, ACT_DIM, (8,))


def toy_spec() -> dict[str, Any]:
    return dict(task_name="Toy-v0", obs_names=[f"q{i}" for i in range(OBS_DIM)],
                act_names=[f"m{i}" for i in range(ACT_DIM)], joint_names=[f"j{i}" for i in range(ACT_DIM)],
                action_low=-np.ones(ACT_DIM), action_high=np.ones(ACT_DIM), control_rate_hz=20.0, horizon=50,
                inner_lr=1e-2, gamma=0.99, gae_lambda=0.95, iteration=3)


def bundle_with_dynamics(ensemble: DynamicsEnsemble | None = None) -> pb.PolicyBundle:
    return export_bundle(toy_policy(), **toy_spec(), ensemble=fitted_ensemble() if ensemble is None else ensemble)
