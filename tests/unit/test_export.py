"""ONNX export: policy and inner-step graphs against torch, numpy advantages, metadata, validation.

Tolerances: the graphs run in float32 on both sides, so values are compared element-wise with
``|onnx - torch| <= 1e-5 * |torch| + 1e-5 * max(1, max|torch|)`` - 1e-5 relative, with an absolute floor
at 1e-5 of the tensor's own scale (gradients near zero differ by float32 rounding of the larger terms).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from mbmpo_core import advantages as torch_adv
from mbmpo_core import onnx_runtime as rt
from mbmpo_core.config import Config, PolicyConfig, save_config
from mbmpo_core.export import adapt_file_name, export_from_checkpoint, export_policy, torch_policy_id
from mbmpo_core.meta import RolloutBatch, inner_step, pg_surrogate, task_batched
from mbmpo_core.policy import GaussianMLPPolicy

torch.set_num_threads(1)
OBS_DIM, ACT_DIM, HIDDEN = 7, 3, (16, 12)
RTOL = 1e-5


def _task(name: str = "Toy-v0") -> SimpleNamespace:
    return SimpleNamespace(
        name=name, obs_names=[f"q{i}" for i in range(OBS_DIM)], act_names=[f"m{i}" for i in range(ACT_DIM)],
        joint_names=[f"j{i}" for i in range(ACT_DIM)], action_low=-np.ones(ACT_DIM), action_high=np.ones(ACT_DIM),
        dt=0.05, horizon=100,
    )


def _policy(trained: bool, seed: int = 0) -> GaussianMLPPolicy:
    """Fresh init, or "trained-like": large random weights, spread log_std, non-trivial normalizer."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(OBS_DIM, ACT_DIM, HIDDEN)
    if trained:
        with torch.no_grad():
            for p in policy.params().values():
                p.add_(0.7 * torch.randn_like(p))
        policy.set_obs_normalizer(3.0 * torch.randn(OBS_DIM), torch.exp(torch.randn(OBS_DIM)))
    return policy


def _export(policy: GaussianMLPPolicy, path: Path, inner_lr: Any = 1e-3, task: Any = None) -> str:
    task = _task() if task is None else task
    return export_policy(
        policy, path, task_name=task.name, obs_names=task.obs_names, act_names=task.act_names,
        joint_names=task.joint_names, action_low=task.action_low, action_high=task.action_high,
        control_rate_hz=1.0 / task.dt, horizon=task.horizon, inner_lr=inner_lr, gamma=0.99, gae_lambda=0.95,
        iteration=7,
    )


def _obs(policy: GaussianMLPPolicy, n: int, seed: int = 1) -> np.ndarray:
    """Observations at the policy's training scale."""
    gen = torch.Generator().manual_seed(seed)
    std = 1.0 / policy.obs_scale
    return (policy.obs_mean + std * torch.randn(n, OBS_DIM, generator=gen)).numpy().astype(np.float32)


def _assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> float:
    """Element-wise check (see module docstring); returns the max error relative to the tensor's scale."""
    expected = np.asarray(expected, np.float64)
    err = np.abs(np.asarray(actual, np.float64) - expected)
    scale = max(1.0, float(np.abs(expected).max()))
    bound = RTOL * np.abs(expected) + RTOL * scale
    assert np.all(err <= bound), f"{what}: max err {err.max():.3g} (scale {scale:.3g})"
    return float(err.max() / scale)


def _perturbed(policy: GaussianMLPPolicy, scale: float = 0.3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return {k: v.detach() + scale * torch.randn(v.shape, generator=gen) for k, v in policy.params().items()}


# ---------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("trained", [False, True])
def test_actions_and_log_std_match_torch(tmp_path: Path, trained: bool) -> None:
    policy = _policy(trained)
    _export(policy, tmp_path / "policy.onnx")
    onnx_policy = rt.OnnxPolicy(tmp_path / "policy.onnx")
    obs = _obs(policy, 64)
    mean, log_std = onnx_policy.distribution(obs)
    with torch.no_grad():
        expected = policy(torch.from_numpy(obs)).numpy()
    _assert_close(mean, expected, "action_mean")
    _assert_close(log_std, policy.log_std.detach().numpy(), "log_std")
    assert onnx_policy.act(obs[0]).shape == (ACT_DIM,)
    _assert_close(onnx_policy.act(obs[0]), expected[0], "single obs")


def test_fed_params_override_defaults(tmp_path: Path) -> None:
    policy = _policy(trained=True)
    _export(policy, tmp_path / "policy.onnx")
    onnx_policy = rt.OnnxPolicy(tmp_path / "policy.onnx")
    params = _perturbed(policy)
    obs = _obs(policy, 16)
    mean, log_std = onnx_policy.distribution(obs, {k: v.numpy() for k, v in params.items()})
    with torch.no_grad():
        expected = policy(torch.from_numpy(obs), params).numpy()
    assert np.abs(expected - policy(torch.from_numpy(obs)).detach().numpy()).max() > 1e-2  # the override matters
    _assert_close(mean, expected, "overridden action_mean")
    _assert_close(log_std, params["log_std"].numpy(), "overridden log_std")
    # Defaults come back when nothing is fed (no state kept between runs).
    _assert_close(onnx_policy.act(obs), policy(torch.from_numpy(obs)).detach().numpy(), "defaults")


def test_stochastic_act_uses_rng(tmp_path: Path) -> None:
    policy = _policy(trained=True)
    _export(policy, tmp_path / "policy.onnx")
    onnx_policy = rt.OnnxPolicy(tmp_path / "policy.onnx")
    obs = _obs(policy, 4000)
    a1 = onnx_policy.act(obs, deterministic=False, rng=np.random.default_rng(3))
    a2 = onnx_policy.act(obs, deterministic=False, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a1, a2)
    z = (a1 - onnx_policy.act(obs)) / np.exp(policy.log_std.detach().numpy())
    assert abs(float(z.std()) - 1.0) < 0.05


# ---------------------------------------------------------------------------------------------- inner step
def _one_task_batch(policy: GaussianMLPPolicy, obs: np.ndarray, act: np.ndarray, adv: np.ndarray,
                    mask: np.ndarray) -> RolloutBatch:
    """A ``[1, 1, N, ...]`` batch sampled by the policy's own parameters."""
    def t(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32).reshape(1, 1, *x.shape)

    theta = task_batched(policy, {k: v.detach() for k, v in policy.params().items()}, 1)
    with torch.no_grad():
        old = policy.log_prob(t(obs), t(act), theta)
    return RolloutBatch(obs=t(obs), act=t(act), rewards=torch.zeros_like(t(adv)), mask=t(mask),
                        advantages=t(adv), old_log_prob=old)


def _torch_grads(policy: GaussianMLPPolicy, params: dict[str, torch.Tensor], batch: RolloutBatch,
                 form: str) -> dict[str, np.ndarray]:
    leaves = {k: v.detach().clone().unsqueeze(0).requires_grad_() for k, v in params.items()}
    objective = pg_surrogate(policy, leaves, batch, form).sum()  # type: ignore[arg-type]
    grads = torch.autograd.grad(objective, list(leaves.values()))
    return {k: g[0].numpy() for k, g in zip(leaves, grads, strict=True)}


def _inner_data(policy: GaussianMLPPolicy, n: int = 60) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(2)
    obs = _obs(policy, n, seed=2)
    with torch.no_grad():
        act = policy.sample(torch.from_numpy(obs), generator=torch.Generator().manual_seed(3)).numpy()
    adv = rng.standard_normal(n).astype(np.float32)
    mask = (rng.random(n) > 0.3).astype(np.float32)
    act[mask == 0] = 50.0  # rows after termination: finite junk that must not matter
    return obs, act, adv, mask


@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("per_param_lr", [False, True])
def test_gradient_and_adapted_params_match_torch(tmp_path: Path, trained: bool, per_param_lr: bool) -> None:
    policy = _policy(trained)
    alpha: Any = 0.05
    if per_param_lr:
        gen = torch.Generator().manual_seed(9)
        alpha = {k: 0.01 + 0.1 * torch.rand(v.shape, generator=gen) for k, v in policy.params().items()}
    _export(policy, tmp_path / "policy.onnx", inner_lr=alpha)
    onnx_policy = rt.OnnxPolicy(tmp_path / "policy.onnx")
    obs, act, adv, mask = _inner_data(policy)
    batch = _one_task_batch(policy, obs, act, adv, mask)
    expected = _torch_grads(policy, dict(policy.params()), batch, "ratio")
    grads = onnx_policy.gradient(None, obs, act, adv, mask)
    for name in policy.param_names():
        assert np.abs(expected[name]).max() > 0, name
        _assert_close(grads[name], expected[name], f"grad {name}")
    adapted_torch = inner_step(policy, policy.params(), batch, alpha)
    adapted = onnx_policy.adapt(None, obs, act, adv, mask)
    for name in policy.param_names():
        _assert_close(adapted[name], adapted_torch[name][0].detach().numpy(), f"adapted {name}")


def test_gradient_at_fed_params_is_log_prob_gradient(tmp_path: Path) -> None:
    """At params other than the defaults the graph differentiates ``mean(mask * A * log pi)`` there."""
    policy = _policy(trained=True)
    _export(policy, tmp_path / "policy.onnx")
    onnx_policy = rt.OnnxPolicy(tmp_path / "policy.onnx")
    obs, act, adv, mask = _inner_data(policy)
    params = _perturbed(policy, 0.1)
    expected = _torch_grads(policy, params, _one_task_batch(policy, obs, act, adv, mask), "log_prob")
    grads = onnx_policy.gradient({k: v.numpy() for k, v in params.items()}, obs, act, adv, mask)
    for name in policy.param_names():
        _assert_close(grads[name], expected[name], f"grad {name}")


def test_all_masked_batch_gives_zero_step(tmp_path: Path) -> None:
    policy = _policy(trained=False)
    _export(policy, tmp_path / "policy.onnx")
    onnx_policy = rt.OnnxPolicy(tmp_path / "policy.onnx")
    obs, act, adv, _ = _inner_data(policy, 5)
    adapted = onnx_policy.adapt(None, obs, act, adv, np.zeros(5, np.float32))
    for name, value in onnx_policy.params.items():
        np.testing.assert_array_equal(adapted[name], value)


# ---------------------------------------------------------------------------------------------- advantages
def _episodes(lead: tuple[int, ...], n: int, horizon: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    obs = (3.0 * rng.standard_normal((*lead, n, horizon, 5))).astype(np.float32)
    rewards = rng.standard_normal((*lead, n, horizon)).astype(np.float32)
    lengths = rng.integers(1, horizon + 1, (*lead, n))
    mask = (np.arange(horizon) < lengths[..., None]).astype(np.float32)
    return obs, rewards * mask, mask


@pytest.mark.parametrize(("lead", "horizon"), [((), 40), ((3,), 25), ((2,), 4)])
def test_numpy_advantages_match_torch(lead: tuple[int, ...], horizon: int) -> None:
    obs, rewards, mask = _episodes(lead, 6, horizon, seed=len(lead) + horizon)
    np_base, torch_base = rt.LinearFeatureBaseline(), torch_adv.LinearFeatureBaseline()
    adv, ret = rt.compute_advantages(rewards, obs, mask, 0.99, 0.95, baseline=np_base)
    t_adv, t_ret = torch_adv.compute_advantages(
        torch.from_numpy(rewards), torch.from_numpy(obs), torch.from_numpy(mask), 0.99, 0.95, baseline=torch_base)
    np.testing.assert_allclose(ret, t_ret.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv, t_adv.numpy(), rtol=1e-5, atol=1e-5)
    assert np_base.last_reg is not None and torch_base.last_reg is not None
    np.testing.assert_array_equal(np_base.last_reg, torch_base.last_reg.numpy())
    assert np.all(adv[mask == 0] == 0)


def test_numpy_gae_and_normalization_match_torch() -> None:
    _, rewards, mask = _episodes((2,), 4, 30, seed=11)
    values = np.random.default_rng(12).standard_normal(rewards.shape).astype(np.float32) * mask
    t = torch.from_numpy
    np.testing.assert_allclose(rt.gae(rewards, values, mask, 0.9, 0.8),
                               torch_adv.gae(t(rewards), t(values), t(mask), 0.9, 0.8).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rt.normalize_advantages(rewards, mask),
                               torch_adv.normalize_advantages(t(rewards), t(mask)).numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- identity, metadata
def test_policy_id_stable_and_sensitive(tmp_path: Path) -> None:
    policy = _policy(trained=True)
    pid = _export(policy, tmp_path / "a.onnx")
    assert pid == _export(policy, tmp_path / "b.onnx") == torch_policy_id(policy)
    loaded = rt.OnnxPolicy(tmp_path / "a.onnx")
    assert rt.policy_id(loaded.params, loaded.param_names) == pid == loaded.policy_id
    with torch.no_grad():
        policy.params()["l1.bias"][3] += 1e-6
    assert torch_policy_id(policy) != pid
    changed = dict(loaded.params, log_std=loaded.params["log_std"] + np.float32(1e-3))
    assert rt.policy_id(changed, loaded.param_names) != pid


@pytest.mark.parametrize("per_param_lr", [False, True])
def test_metadata_complete(tmp_path: Path, per_param_lr: bool) -> None:
    policy = _policy(trained=False)
    lr: Any = {k: torch.full_like(v, 2e-3) for k, v in policy.params().items()} if per_param_lr else 2e-3
    pid = _export(policy, tmp_path / "policy.onnx", inner_lr=lr)
    task = _task()
    for path in (tmp_path / "policy.onnx", tmp_path / adapt_file_name("policy.onnx")):
        raw = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert set(rt.REQUIRED_METADATA) <= set(raw)
    meta = rt.validate_policy_file(tmp_path / "policy.onnx", "Toy-v0", task.obs_names, task.joint_names)
    assert meta["format_version"] == "1" and meta["task"] == "Toy-v0" and meta["policy_id"] == pid
    assert (meta["obs_dim"], meta["act_dim"]) == (OBS_DIM, ACT_DIM)
    assert meta["obs_names"] == task.obs_names and meta["act_names"] == task.act_names
    assert meta["action_low"] == [-1.0] * ACT_DIM and meta["control_rate_hz"] == pytest.approx(20.0)
    assert (meta["horizon"], meta["gamma"], meta["gae_lambda"], meta["learner_iteration"]) == (100, 0.99, 0.95, 7)
    assert meta["param_names"] == policy.param_names() and meta["adapt_file"] == "policy.adapt.onnx"
    if per_param_lr:
        assert np.allclose(meta["inner_lr"]["l0.weight"], 2e-3) and len(meta["inner_lr"]) == len(meta["param_names"])
    else:
        assert meta["inner_lr"] == 2e-3


# ---------------------------------------------------------------------------------------------- validation
def _rewrite(src: Path, dst: Path, edit: Any) -> Path:
    model = onnx.load(str(src))
    edit(model)
    dst.write_bytes(model.SerializeToString())
    return dst


def _set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value


def _nan_param(model: onnx.ModelProto) -> None:
    """NaN in a bias, with a matching policy id so that only the NaN check can catch it."""
    meta = {p.key: p.value for p in model.metadata_props}
    names = json.loads(meta["param_names"])
    params = rt.read_initializers(model, names)
    params["l0.bias"][0] = np.nan
    for init in model.graph.initializer:
        if init.name == "l0.bias":
            init.CopyFrom(numpy_helper.from_array(params["l0.bias"], "l0.bias"))
    _set_meta(model, "policy_id", rt.policy_id(params, names))
    _set_meta(model, "adapt_file", "")


def test_validate_rejects_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "policy.onnx"
    _export(_policy(trained=True), good)
    task = _task()
    data = good.read_bytes()
    bad_files = {
        "truncated": data[: len(data) // 2],
        "random": np.random.default_rng(0).bytes(len(data)),
        "empty": b"",
    }
    for name, blob in bad_files.items():
        (tmp_path / f"{name}.onnx").write_bytes(blob)
        with pytest.raises(rt.PolicyValidationError):
            rt.validate_policy_file(tmp_path / f"{name}.onnx")
    cases: dict[str, tuple[Path, dict[str, Any]]] = {
        "no such file": (tmp_path / "missing.onnx", {}),
        "task": (good, {"expected_task": "Other-v0"}),
        "joint_names": (good, {"expected_joint_names": ["x", "y", "z"]}),
        "obs_names": (good, {"expected_obs_names": task.obs_names[::-1]}),
        "not finite": (_rewrite(good, tmp_path / "nan.onnx", _nan_param), {}),
        "policy_id": (_rewrite(good, tmp_path / "id.onnx", lambda m: _set_meta(m, "policy_id", "0" * 64)), {}),
        "format_version": (_rewrite(good, tmp_path / "v.onnx", lambda m: _set_meta(m, "format_version", "9")), {}),
        "obs_dim": (_rewrite(good, tmp_path / "d.onnx", lambda m: _set_meta(m, "obs_dim", "8")), {}),
        "malformed": (_rewrite(good, tmp_path / "m.onnx", lambda m: _set_meta(m, "obs_names", "7")), {}),
        "missing": (_rewrite(good, tmp_path / "k.onnx", lambda m: m.metadata_props.pop()), {}),
        "not JSON": (_rewrite(good, tmp_path / "j.onnx", lambda m: _set_meta(m, "action_low", "[1,")), {}),
    }
    for reason, (path, kwargs) in cases.items():
        with pytest.raises(rt.PolicyValidationError, match=reason) as info:
            rt.validate_policy_file(path, **kwargs)
        assert "\n" not in str(info.value)
    rt.validate_policy_file(good, "Toy-v0", task.obs_names, task.joint_names)


def test_validate_checks_adapt_file(tmp_path: Path) -> None:
    _export(_policy(trained=True), tmp_path / "policy.onnx")
    _export(_policy(trained=True, seed=1), tmp_path / "other.onnx")
    adapt = tmp_path / "policy.adapt.onnx"
    adapt.write_bytes((tmp_path / "other.adapt.onnx").read_bytes())
    with pytest.raises(rt.PolicyValidationError, match="another policy"):
        rt.validate_policy_file(tmp_path / "policy.onnx")
    adapt.unlink()
    with pytest.raises(rt.PolicyValidationError, match="not found"):
        rt.validate_policy_file(tmp_path / "policy.onnx")
    assert not rt.OnnxPolicy(tmp_path / "policy.onnx").can_adapt


def test_policy_bundle_ships_both_graphs(tmp_path: Path) -> None:
    pid = _export(_policy(trained=True), tmp_path / "policy.onnx")
    files, bundle_id = rt.read_policy_bundle(tmp_path / "policy.onnx", expected_task="Toy-v0")
    assert bundle_id == pid and list(files) == ["policy.onnx", "policy.adapt.onnx"]
    assert files["policy.adapt.onnx"] == (tmp_path / "policy.adapt.onnx").read_bytes()
    with pytest.raises(rt.PolicyValidationError, match="task"):
        rt.read_policy_bundle(tmp_path / "policy.onnx", expected_task="Other-v0")


def test_export_refuses_bad_input(tmp_path: Path) -> None:
    policy = _policy(trained=False)
    with pytest.raises(ValueError, match="obs names"):
        _export(policy, tmp_path / "p.onnx", task=SimpleNamespace(**{**_task().__dict__, "obs_names": ["a"]}))
    with torch.no_grad():
        policy.log_std[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        _export(policy, tmp_path / "p.onnx")
    assert not (tmp_path / "p.onnx").exists()


# ---------------------------------------------------------------------------------------------- checkpoints, imports
def test_export_from_checkpoint(tmp_path: Path) -> None:
    policy = _policy(trained=True)
    save_config(Config(task="Toy-v0", policy=PolicyConfig(hidden_sizes=HIDDEN)), tmp_path / "config.yaml")
    (tmp_path / "checkpoints").mkdir()
    torch.save({"policy": policy.state_dict(), "meta": {"alpha": 0.02}, "iteration": 5},
               tmp_path / "checkpoints" / "checkpoint.pt")
    tasks = {"Toy-v0": _task()}
    pid = export_from_checkpoint(tmp_path, tmp_path / "out" / "policy.onnx", tasks.__getitem__)
    assert pid == torch_policy_id(policy)
    meta = rt.validate_policy_file(tmp_path / "out" / "policy.onnx", expected_task="Toy-v0")
    assert (meta["learner_iteration"], meta["inner_lr"], meta["control_rate_hz"]) == (5, 0.02, pytest.approx(20.0))
    loaded = rt.OnnxPolicy(tmp_path / "out" / "policy.onnx")
    obs = _obs(policy, 8)
    _assert_close(loaded.act(obs), policy(torch.from_numpy(obs)).detach().numpy(), "checkpoint actions")
    # A checkpoint file and a task object work too.
    assert export_from_checkpoint(tmp_path / "checkpoints" / "checkpoint.pt", tmp_path / "p2.onnx", _task()) == pid

