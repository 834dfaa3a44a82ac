"""Closed-form identification of the last layer: it finds a changed last layer from real transitions, stays at the
trained one when nothing changed, scales its ridge with the features, and refuses bad input in one line."""

from __future__ import annotations

import numpy as np
import pytest
from dynamics_helpers import ACT_DIM, OBS_DIM, K, bundle_with_dynamics, toy_data

from mbmpo_core.identification import DEFAULT_RIDGE, identify
from mbmpo_core.onnx_dynamics import OnnxEnsemble

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ensemble() -> OnnxEnsemble:
    onnx_ens = OnnxEnsemble.from_bundle(bundle_with_dynamics())
    assert onnx_ens is not None
    return onnx_ens


def _changed_layer(ens: OnnxEnsemble, scale: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """The trained last layer plus a random change: the 'real robot' is a member with other last weights."""
    weight, bias = ens.last_layer
    rng = np.random.default_rng(7)
    return ((weight + scale * rng.standard_normal(weight.shape)).astype(np.float32),
            (bias + scale * rng.standard_normal(bias.shape)).astype(np.float32))


def test_identification_recovers_a_changed_last_layer(ensemble: OnnxEnsemble) -> None:
    obs, act, _ = toy_data(800, seed=11)
    true = _changed_layer(ensemble)
    real_member = 1
    next_obs = ensemble.predict(obs, act, true)[real_member]
    result = identify(ensemble, obs, act, next_obs, ridge=1e-4, holdout=0.25)
    assert result.best_member == real_member
    assert result.error_after[real_member] < 1e-3 * result.error_before[real_member]
    assert np.all(result.error_after < result.error_before)  # the other members improve too, less
    weight, bias = result.last_layer
    assert weight.shape == (K, ensemble.hidden, OBS_DIM) and bias.shape == (K, 1, OBS_DIM)
    moved = ensemble.predict(obs, act, result.last_layer)[real_member]
    assert np.sqrt(np.mean((moved - next_obs) ** 2)) < 0.02 * np.sqrt(np.mean((next_obs - obs) ** 2))


def test_errors_are_held_out_one_step_mse_in_raw_units(ensemble: OnnxEnsemble) -> None:
    """error_before is the trained ensemble's MSE on the last quarter of the rows, as validation_error defines it."""
    obs, act, next_obs = toy_data(200, seed=12)
    result = identify(ensemble, obs, act, next_obs, holdout=0.25)
    held = slice(150, 200)
    expected = np.mean((ensemble.predict(obs[held], act[held]) - next_obs[held]) ** 2, axis=(1, 2))
    np.testing.assert_allclose(result.error_before, expected, rtol=1e-4)
    assert result.error_after.shape == (K,) and result.seconds > 0


def test_nothing_to_learn_keeps_the_trained_layer(ensemble: OnnxEnsemble) -> None:
    obs, act, _ = toy_data(300, seed=13)
    next_obs = ensemble.predict(obs, act)[0]  # member 0 is exactly right
    result = identify(ensemble, obs, act, next_obs, ridge=DEFAULT_RIDGE)
    weight, bias = ensemble.last_layer
    np.testing.assert_allclose(result.last_layer[0][0], weight[0], atol=1e-4)
    np.testing.assert_allclose(result.last_layer[1][0], bias[0], atol=1e-4)
    assert result.error_before[0] < 1e-8 and result.best_member == 0


def test_ridge_is_relative_to_the_gram_trace_and_pulls_towards_the_trained_layer(ensemble: OnnxEnsemble) -> None:
    obs, act, _ = toy_data(400, seed=14)
    next_obs = ensemble.predict(obs, act, _changed_layer(ensemble))[2]
    features = ensemble.features(obs, act).astype(np.float64)
    gram_trace = np.sum(features**2, axis=(1, 2)) + len(obs)  # the ones column adds N
    for ridge in (1e-2, 1.0):
        result = identify(ensemble, obs, act, next_obs, ridge=ridge)
        np.testing.assert_allclose(result.ridge_scale, ridge * gram_trace / (ensemble.hidden + 1), rtol=1e-6)
    # Huge ridge: the trained layer; a larger ridge moves less.
    trained = ensemble.last_layer[0]
    distance = [np.abs(identify(ensemble, obs, act, next_obs, ridge=r).last_layer[0] - trained).max()
                for r in (1e-3, 1e-1, 1e6)]
    assert distance[0] > distance[1] > distance[2] and distance[2] < 1e-4


def test_bad_input_is_one_line(ensemble: OnnxEnsemble) -> None:
    obs, act, next_obs = toy_data(20)
    nan_obs = obs.copy()
    nan_obs[3, 1] = np.nan
    cases = [
        ((obs[:, :3], act, next_obs[:, :3]), {}, "obs / next_obs must be"),
        ((obs, act[:, :1], next_obs), {}, "act must be"),
        ((obs[:1], act[:1], next_obs[:1]), {}, "at least 2"),
        ((nan_obs, act, next_obs), {}, "finite"),
        ((obs, act, next_obs), {"ridge": 0.0}, "ridge must be > 0"),
        ((obs, act, next_obs), {"ridge": float("nan")}, "ridge must be > 0"),
        ((obs, act, next_obs), {"holdout": 1.0}, "holdout"),
        ((obs, act, next_obs), {"holdout": 0.0}, "holdout"),
    ]
    for args, kwargs, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            identify(ensemble, *args, **kwargs)
        assert "\n" not in str(info.value)
    # Two rows: one fitted, one held out.
    result = identify(ensemble, obs[:2], act[:2], next_obs[:2], holdout=0.9)
    assert np.all(np.isfinite(result.error_after)) and ACT_DIM == act.shape[1]
