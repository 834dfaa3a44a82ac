"""Unit tests for mbmpo_core.ensemble.DynamicsEnsemble (CPU, small networks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from mbmpo_core.ensemble import DynamicsEnsemble, EpochInfo
from mbmpo_core.normalizer import Normalizer


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Small nets gain nothing from intra-op threads, and OpenMP spin-waiting makes
    them crawl when other processes share the cores (seen: 8 s -> 13 min)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _linear_system(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x' = A x + B u (fixed A, B; ``seed`` draws the samples).

    Returns obs [n, 4], act [n, 2], next_obs [n, 4].
    """
    sys_rng = np.random.default_rng(1234)
    a_mat = np.eye(4) + 0.1 * sys_rng.standard_normal((4, 4))
    b_mat = sys_rng.standard_normal((4, 2))
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, 4)) * 2.0
    act = rng.uniform(-1.0, 1.0, (n, 2))
    return obs, act, obs @ a_mat.T + act @ b_mat.T


@pytest.fixture(scope="module")
def cheetah_data() -> dict[str, np.ndarray]:
    """~8k random-action HalfCheetah-v5 transitions for training, 2k from another seed for testing."""
    gym = pytest.importorskip("gymnasium")

    def collect(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        env = gym.make("HalfCheetah-v5", exclude_current_positions_from_observation=False)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for _ in range(n):
            act = env.action_space.sample()
            nxt, _, term, trunc, _ = env.step(act)
            rows.append((obs, act, nxt))
            obs = env.reset()[0] if (term or trunc) else nxt
        env.close()
        o, a, nx = (np.asarray(c) for c in zip(*rows, strict=True))
        return o, a, nx

    o, a, n = collect(8000, seed=0)
    to, ta, tn = collect(2000, seed=1)
    return {"obs": o, "act": a, "next_obs": n, "test_obs": to, "test_act": ta, "test_next_obs": tn}


def test_fits_linear_system_to_near_zero_error() -> None:
    obs, act, nxt = _linear_system(4000)
    model = DynamicsEnsemble(4, 2, num_models=3, hidden_sizes=(64, 64), batch_size=50, max_epochs=60, seed=1)
    model.fit(obs, act, nxt, early_stop=False)
    t_obs, t_act, t_nxt = _linear_system(1000, seed=5)
    err = model.validation_error(t_obs, t_act, t_nxt)
    # Relative to the variance of the state change: the hard part of the target.
    rel = err / float(np.var(t_nxt - t_obs, axis=0).mean())
    assert err.shape == (3,)
    # Measured 1.5e-4 .. 2.1e-4 over seeds.
    assert torch.all(rel < 1e-3), rel


def test_halfcheetah_beats_no_change_baseline(cheetah_data: dict[str, np.ndarray]) -> None:
    d = cheetah_data
    model = DynamicsEnsemble(18, 6, num_models=3, hidden_sizes=(128, 128), batch_size=100, max_epochs=25, seed=0)
    model.fit(d["obs"], d["act"], d["next_obs"])
    err = model.validation_error(d["test_obs"], d["test_act"], d["test_next_obs"])
    baseline = float(np.mean((d["test_next_obs"] - d["test_obs"]) ** 2))
    # Measured ~0.03-0.04 (3 x 128x128, 25 epochs); 0.2 leaves a wide margin.
    assert torch.all(err / baseline < 0.2), err / baseline


def test_each_model_has_its_own_80_20_split() -> None:
    obs, act, nxt = _linear_system(1000)
    model = DynamicsEnsemble(4, 2, num_models=4, hidden_sizes=(16,), max_epochs=1, seed=3)
    model.fit(obs, act, nxt)
    assert model.split_indices is not None
    train_idx, valid_idx = model.split_indices
    assert train_idx.shape == (4, 800) and valid_idx.shape == (4, 200)
    for k in range(4):
        union = torch.sort(torch.cat([train_idx[k], valid_idx[k]])).values
        assert torch.equal(union, torch.arange(1000))
    valid_sets = [set(valid_idx[k].tolist()) for k in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            # Independent random 20% subsets overlap by ~20%, never completely.
            assert len(valid_sets[i] & valid_sets[j]) < 100


def test_early_stopping_stops_on_unlearnable_data() -> None:
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((200, 4))
    act = rng.standard_normal((200, 2))
    nxt = rng.standard_normal((200, 4))  # independent noise: nothing to learn, everything to overfit
    model = DynamicsEnsemble(4, 2, num_models=3, hidden_sizes=(128, 128), batch_size=32, max_epochs=400, seed=0)
    seen: list[EpochInfo] = []
    report = model.fit(obs, act, nxt, progress=seen.append)
    assert np.all(report.epochs < 400), report.epochs  # measured 124..223
    assert len(seen) == int(report.epochs.max())
    assert not seen[-1].active.any()
    # Best weights are restored: the final validation loss is the best one seen.
    history = np.stack(report.history_valid_mse)
    best = np.minimum(history.min(axis=0), report.initial_valid_mse)
    np.testing.assert_allclose(report.valid_mse, best, rtol=1e-4)


def test_warm_start_continues_from_previous_weights() -> None:
    obs, act, nxt = _linear_system(2000)
    model = DynamicsEnsemble(4, 2, num_models=2, hidden_sizes=(32, 32), batch_size=100, max_epochs=15, seed=0)
    first = model.fit(obs, act, nxt, early_stop=False)
    before = [p.detach().clone() for p in model.parameters()]
    second = model.fit(obs, act, nxt, epochs=0)  # zero epochs: only measures the starting loss
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    end_of_first = np.maximum(first.train_mse, first.valid_mse)
    assert np.all(second.initial_valid_mse < 1.5 * end_of_first), (second.initial_valid_mse, end_of_first)
    assert np.all(second.initial_valid_mse < 0.05 * first.initial_valid_mse)
    third = model.fit(obs, act, nxt, epochs=5)
    assert np.all(third.valid_mse <= third.initial_valid_mse + 1e-7)


def test_save_load_round_trip(tmp_path: Path) -> None:
    obs, act, nxt = _linear_system(500)
    model = DynamicsEnsemble(4, 2, num_models=3, hidden_sizes=(16, 8), activation="tanh", max_epochs=2, seed=2)
    model.fit(obs, act, nxt)
    path = tmp_path / "ens.pt"
    model.save(path)
    loaded = DynamicsEnsemble.load(path, device="cpu")
    assert loaded.config() == model.config()
    o = torch.as_tensor(obs[:64], dtype=torch.float32).expand(3, -1, -1)
    a = torch.as_tensor(act[:64], dtype=torch.float32).expand(3, -1, -1)
    assert torch.equal(model.predict(o, a), loaded.predict(o, a))
    # Plain state_dict round trip too.
    fresh = DynamicsEnsemble(**model.config())
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.predict(o, a), model.predict(o, a))


def test_batched_predict_matches_per_model_loop() -> None:
    obs, act, nxt = _linear_system(500)
    model = DynamicsEnsemble(4, 2, num_models=4, hidden_sizes=(32, 16), max_epochs=2, seed=4)
    model.fit(obs, act, nxt)
    gen = torch.Generator().manual_seed(0)
    o = torch.randn(4, 10, 4, generator=gen)
    a = torch.randn(4, 10, 2, generator=gen)
    batched = model.predict(o, a)
    inorm, tnorm = model.input_normalizer, model.target_normalizer
    for k in range(4):
        h = (torch.cat([o[k], a[k]], dim=-1) - inorm.mean) / inorm.std
        for i, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
            h = h @ w[k].detach() + b[k, 0].detach()
            if i < len(model.weights) - 1:
                h = torch.relu(h)
        expected = o[k] + h * tnorm.std + tnorm.mean
        torch.testing.assert_close(batched[k], expected, rtol=1e-5, atol=1e-5)
    # predict_all is predict with the same rows for every model.
    same_rows = model.predict(o[0:1].expand(4, -1, -1), a[0:1].expand(4, -1, -1))
    torch.testing.assert_close(model.predict_all(o[0], a[0]), same_rows)


def test_normalizer_round_trip_and_eps_floor() -> None:
    data = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    norm = Normalizer(2, eps=1e-3)
    norm.fit(data)
    assert torch.allclose(norm.mean, torch.tensor([3.0, 5.0]))
    assert float(norm.std[1]) == pytest.approx(1e-3)  # constant feature hits the floor
    z = norm.normalize(data)
    assert torch.isfinite(z).all() and float(z[:, 0].std(unbiased=False)) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(norm.denormalize(z), data)
    other = Normalizer(2)
    other.load_state_dict(norm.state_dict())
    assert torch.equal(other.std, norm.std)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_device_follows() -> None:
    obs, act, nxt = _linear_system(500)
    model = DynamicsEnsemble(4, 2, num_models=2, hidden_sizes=(16,), max_epochs=2, device="cuda")
    model.fit(obs, act, nxt)
    out = model.predict_all(torch.zeros(3, 4, device="cuda"), torch.zeros(3, 2, device="cuda"))
    assert out.device.type == "cuda" and out.shape == (2, 3, 4)
    assert model.validation_error(obs, act, nxt).device.type == "cuda"


def test_ignored_obs_is_not_an_input_but_its_delta_is_predicted() -> None:
    ens = DynamicsEnsemble(3, 1, num_models=2, hidden_sizes=(16,), ignored_obs=(0,), seed=0)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(200, 3))
    act = rng.normal(size=(200, 1))
    nxt = obs + 0.1 * np.c_[obs[:, 1], obs[:, 2], act[:, 0]]
    ens.fit(obs, act, nxt, epochs=2)
    o = torch.as_tensor(obs[:4], dtype=torch.float32).expand(2, -1, -1).clone()
    a = torch.as_tensor(act[:4], dtype=torch.float32).expand(2, -1, -1)
    shifted = o.clone()
    shifted[..., 0] += 100.0
    # Translation invariance: the predicted change is the same, the prediction moves with the input.
    torch.testing.assert_close(ens.predict(shifted, a) - shifted, ens.predict(o, a) - o, rtol=0, atol=1e-4)
    assert DynamicsEnsemble(**{**ens.config(), "device": "cpu"}).ignored_obs == (0,)
