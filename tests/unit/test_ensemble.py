"""Unit tests for mbmpo_core.ensemble.DynamicsEnsemble (CPU, small networks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mbmpo_core.ensemble import DynamicsEnsemble, EpochInfo
from mbmpo_core.normalizer import Normalizer

# Small nets gain nothing from intra-op threads, and OpenMP spin-waiting makes them crawl when other processes share
# the cores (seen: 8 s -> 13 min).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _linear_system(
    n: int, seed: int = 0, change: float = 0.0, noise: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x' = A x + B u + noise (fixed A, B; ``seed`` draws the samples; ``change`` > 0 perturbs A:
    changed physics).

    Returns obs [n, 4], act [n, 2], next_obs [n, 4].
    """
    sys_rng = np.random.default_rng(1234)
    a_mat = np.eye(4) + 0.1 * sys_rng.standard_normal((4, 4))
    b_mat = sys_rng.standard_normal((4, 2))
    a_mat = a_mat + change * sys_rng.standard_normal((4, 4))
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, 4)) * 2.0
    act = rng.uniform(-1.0, 1.0, (n, 2))
    return obs, act, obs @ a_mat.T + act @ b_mat.T + noise * rng.standard_normal((n, 4))


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
    model = DynamicsEnsemble(4, 2, num_models=4, hidden_sizes=(16,), max_epochs=1, seed=3)
    valid = model.validation_mask(0, 1000)
    assert valid.shape == (4, 1000) and valid.dtype == torch.bool
    share = valid.double().mean(dim=1)
    assert torch.all((share > 0.15) & (share < 0.25)), share  # binomial around 0.2 (sd 0.013)
    valid_sets = [set(torch.nonzero(valid[k]).flatten().tolist()) for k in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            # Independent random 20% subsets overlap by ~20%, never completely.
            assert len(valid_sets[i] & valid_sets[j]) < 100


def test_split_is_stable_as_data_grows_through_a_fifo_and_across_instances() -> None:
    model = DynamicsEnsemble(4, 2, num_models=3, hidden_sizes=(16,), seed=7)
    first = model.validation_mask(0, 1000)
    grown = model.validation_mask(0, 1500)
    tail = model.validation_mask(700, 800)  # a FIFO that dropped the oldest 700 rows
    assert torch.equal(grown[:, :1000], first)
    assert torch.equal(tail, grown[:, 700:])
    # A resumed run (a new instance, same seed) has the same split; another seed another one.
    assert torch.equal(DynamicsEnsemble(4, 2, num_models=3, hidden_sizes=(16,), seed=7).validation_mask(0, 1000), first)
    other = DynamicsEnsemble(4, 2, num_models=3, hidden_sizes=(16,), seed=8).validation_mask(0, 1000)
    assert float((other != first).double().mean()) > 0.2
    # Tiny data: every model still gets one row of each kind.
    two = model.validation_mask(0, 2)
    assert torch.all(two.sum(dim=1) == 1)


def test_validation_rows_stay_held_out_across_fits() -> None:
    """The next fit's starting validation loss equals the last fit's final one: the same rows, none trained on."""
    obs, act, nxt = _linear_system(1500, noise=0.3)
    model = DynamicsEnsemble(4, 2, num_models=3, hidden_sizes=(32, 32), batch_size=100, max_epochs=10, seed=0)
    first = model.fit(obs[:1000], act[:1000], nxt[:1000], early_stop=False)
    model.fit(obs, act, nxt, epochs=5, early_stop=False)
    # Again on the first 1000 rows (as a FIFO tail would be, with first_row): same rows held out as the first fit.
    again = model.fit(obs[:1000], act[:1000], nxt[:1000], epochs=0)
    np.testing.assert_allclose(again.initial_valid_mse, again.valid_mse, rtol=1e-6)
    # Rows the model never trained on: measured 0.10-0.12 (noise floor 0.10), not far below (as trained rows are).
    assert np.all(first.valid_mse > 0.9 * first.train_mse), (first.valid_mse, first.train_mse)
    tail = model.fit(obs[500:], act[500:], nxt[500:], epochs=0, first_row=500)
    assert np.all(tail.valid_mse > 0.9 * tail.train_mse), (tail.valid_mse, tail.train_mse)


def test_new_physics_lowers_every_members_error() -> None:
    """Overfitted members, then new rows from changed physics: every member must learn them.

    The earlier split (redrawn at every fit, best weights including the starting ones) restored 2-3 of 5
    members to their pre-fit weights here (error ratio 1.00), as in a replayed HalfCheetah fit (3 of 5).
    """
    old = _linear_system(300, seed=0, noise=1.0)
    new = _linear_system(60, seed=1, change=0.3, noise=1.0)
    test_obs, test_act, test_next = _linear_system(2000, seed=2, change=0.3)
    model = DynamicsEnsemble(4, 2, num_models=5, hidden_sizes=(128, 128), batch_size=64, max_epochs=50, seed=0)
    model.fit(*old, epochs=300, early_stop=False)  # memorises the noise of 300 rows
    before = model.validation_error(test_obs, test_act, test_next)
    report = model.fit(*(np.concatenate([o, n]) for o, n in zip(old, new, strict=True)))
    after = model.validation_error(test_obs, test_act, test_next)
    # Measured ratios 0.70-0.87 per member.
    assert torch.all(after < 0.95 * before), after / before
    assert np.all(report.epochs < 50), report.epochs  # the patience rule stopped every member


def test_patience_stops_a_learnable_fit_near_its_floor() -> None:
    obs, act, nxt = _linear_system(2000, noise=0.3)
    model = DynamicsEnsemble(4, 2, num_models=3, hidden_sizes=(64, 64), batch_size=100, max_epochs=200, seed=0)
    report = model.fit(obs, act, nxt)
    # The old rolling-average rule ran all 200 epochs here; patience 5 at 1 % stops at 14-21.
    assert np.all(report.epochs < 60), report.epochs
    # Normalized noise floor: noise variance over the variance of each target coordinate.
    floor = float(np.mean(0.3**2 / np.var(nxt - obs, axis=0)))
    assert np.all(report.valid_mse < 1.15 * floor), (report.valid_mse, floor)  # measured 1.02-1.05 x floor


def test_early_stopping_stops_on_unlearnable_data() -> None:
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((200, 4))
    act = rng.standard_normal((200, 2))
    nxt = rng.standard_normal((200, 4))  # independent noise: nothing to learn, everything to overfit
    model = DynamicsEnsemble(4, 2, num_models=3, hidden_sizes=(128, 128), batch_size=32, max_epochs=400, seed=0)
    seen: list[EpochInfo] = []
    report = model.fit(obs, act, nxt, progress=seen.append)
    assert np.all(report.epochs < 30), report.epochs  # measured 6..8
    assert len(seen) == int(report.epochs.max())
    assert not seen[-1].active.any()
    # Best weights of this fit's epochs are restored (never the starting ones): the final validation
    # loss is the lowest of each model's own epochs.
    history = np.stack(report.history_valid_mse)
    best = np.array([history[: report.epochs[k], k].min() for k in range(3)])
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


def test_from_config_builds_what_the_config_says() -> None:
    from mbmpo_core.config import EnsembleConfig

    cfg = EnsembleConfig(num_models=3, hidden_sizes=(24, 12), activation="tanh", lr=3e-4, batch_size=77,
                         valid_fraction=0.3, patience=7, improvement_threshold=0.02, max_epochs=11,
                         member_emphasis=2.5)
    ens = DynamicsEnsemble.from_config(5, 2, cfg, device="cpu", seed=4, ignored_obs=(0,))
    assert ens.config() == {
        "obs_dim": 5, "act_dim": 2, "num_models": 3, "hidden_sizes": [24, 12], "activation": "tanh", "lr": 3e-4,
        "batch_size": 77, "valid_fraction": 0.3, "patience": 7, "improvement_threshold": 0.02, "max_epochs": 11,
        "seed": 4, "ignored_obs": [0], "member_emphasis": 2.5,
    }
    with pytest.raises(ValueError, match="patience"):
        DynamicsEnsemble(4, 2, patience=0)
    with pytest.raises(ValueError, match="improvement_threshold"):
        DynamicsEnsemble(4, 2, improvement_threshold=1.0)
