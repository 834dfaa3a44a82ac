"""ONNX export: policy and inner-step graphs against torch, metadata, the policy bundle, validation.

Tolerances: the graphs run in float32 on both sides, so values are compared element-wise with
``|onnx - torch| <= 1e-5 * |torch| + 1e-5 * max(1, max|torch|)`` - 1e-5 relative, with an absolute floor
at 1e-5 of the tensor's own scale (gradients near zero differ by float32 rounding of the larger terms).
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from mbmpo_core import bundle as pb
from mbmpo_core import onnx_runtime as rt
from mbmpo_core.config import Config, EnsembleConfig, PolicyConfig, save_config
from mbmpo_core.ensemble import DynamicsEnsemble
from mbmpo_core.export import (
    adapt_file_name,
    export_bundle,
    export_from_checkpoint,
    export_policy,
    torch_policy_id,
)
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


def _spec(inner_lr: Any = 1e-3, task: Any = None) -> dict[str, Any]:
    """Everything the exporter needs besides the policy."""
    task = _task() if task is None else task
    return dict(
        task_name=task.name, obs_names=task.obs_names, act_names=task.act_names, joint_names=task.joint_names,
        action_low=task.action_low, action_high=task.action_high, control_rate_hz=1.0 / task.dt,
        horizon=task.horizon, inner_lr=inner_lr, gamma=0.99, gae_lambda=0.95, iteration=7,
    )


def _export(policy: GaussianMLPPolicy, path: Path, inner_lr: Any = 1e-3, task: Any = None) -> str:
    return export_policy(policy, path, **_spec(inner_lr, task))


def _bundle(policy: GaussianMLPPolicy, inner_lr: Any = 1e-3, task: Any = None, **kwargs: Any) -> pb.PolicyBundle:
    return export_bundle(policy, **_spec(inner_lr, task), **kwargs)


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
def test_actions_and_log_std_match_torch(trained: bool) -> None:
    policy = _policy(trained)
    onnx_policy = rt.OnnxPolicy.from_bundle(_bundle(policy))
    obs = _obs(policy, 64)
    mean, log_std = onnx_policy.distribution(obs)
    with torch.no_grad():
        expected = policy(torch.from_numpy(obs)).numpy()
    _assert_close(mean, expected, "action_mean")
    _assert_close(log_std, policy.log_std.detach().numpy(), "log_std")
    assert onnx_policy.act(obs[0]).shape == (ACT_DIM,)
    _assert_close(onnx_policy.act(obs[0]), expected[0], "single obs")


def test_fed_params_override_defaults() -> None:
    policy = _policy(trained=True)
    onnx_policy = rt.OnnxPolicy.from_bundle(_bundle(policy))
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


def test_stochastic_act_uses_rng() -> None:
    policy = _policy(trained=True)
    onnx_policy = rt.OnnxPolicy.from_bundle(_bundle(policy))
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
def test_gradient_and_adapted_params_match_torch(trained: bool, per_param_lr: bool) -> None:
    policy = _policy(trained)
    alpha: Any = 0.05
    if per_param_lr:
        gen = torch.Generator().manual_seed(9)
        alpha = {k: 0.01 + 0.1 * torch.rand(v.shape, generator=gen) for k, v in policy.params().items()}
    onnx_policy = rt.OnnxPolicy.from_bundle(_bundle(policy, inner_lr=alpha))
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


def test_gradient_at_fed_params_is_log_prob_gradient() -> None:
    """At params other than the defaults the graph differentiates ``mean(mask * A * log pi)`` there."""
    policy = _policy(trained=True)
    onnx_policy = rt.OnnxPolicy.from_bundle(_bundle(policy))
    obs, act, adv, mask = _inner_data(policy)
    params = _perturbed(policy, 0.1)
    expected = _torch_grads(policy, params, _one_task_batch(policy, obs, act, adv, mask), "log_prob")
    grads = onnx_policy.gradient({k: v.numpy() for k, v in params.items()}, obs, act, adv, mask)
    for name in policy.param_names():
        _assert_close(grads[name], expected[name], f"grad {name}")


def test_all_masked_batch_gives_zero_step() -> None:
    policy = _policy(trained=False)
    onnx_policy = rt.OnnxPolicy.from_bundle(_bundle(policy))
    obs, act, adv, _ = _inner_data(policy, 5)
    adapted = onnx_policy.adapt(None, obs, act, adv, np.zeros(5, np.float32))
    for name, value in onnx_policy.params.items():
        np.testing.assert_array_equal(adapted[name], value)


# ---------------------------------------------------------------------------------------------- identity, metadata
def test_policy_id_stable_and_sensitive(tmp_path: Path) -> None:
    policy = _policy(trained=True)
    pid = _export(policy, tmp_path / "a.onnx")
    assert pid == _export(policy, tmp_path / "b.onnx") == torch_policy_id(policy)
    loaded = rt.OnnxPolicy(tmp_path / "a.onnx")
    assert pb.policy_id(loaded.params, loaded.param_names) == pid == loaded.policy_id
    with torch.no_grad():
        policy.params()["l1.bias"][3] += 1e-6
    assert torch_policy_id(policy) != pid
    changed = dict(loaded.params, log_std=loaded.params["log_std"] + np.float32(1e-3))
    assert pb.policy_id(changed, loaded.param_names) != pid


@pytest.mark.parametrize("per_param_lr", [False, True])
def test_metadata_complete(tmp_path: Path, per_param_lr: bool) -> None:
    policy = _policy(trained=False)
    lr: Any = {k: torch.full_like(v, 2e-3) for k, v in policy.params().items()} if per_param_lr else 2e-3
    pid = _export(policy, tmp_path / "policy.onnx", inner_lr=lr)
    task = _task()
    for path in (tmp_path / "policy.onnx", tmp_path / adapt_file_name("policy.onnx")):
        raw = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert set(pb.REQUIRED_METADATA) <= set(raw)
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
def _edited(bundle: pb.PolicyBundle, edit: Any) -> dict[str, bytes]:
    """The bundle's files with its policy graph edited by ``edit(model)``."""
    model = onnx.load_from_string(bundle.policy_bytes)
    edit(model)
    return {**bundle.files, bundle.name: model.SerializeToString()}


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
    _set_meta(model, "policy_id", pb.policy_id(params, names))
    _set_meta(model, "adapt_file", "")


def _assert_rejected(files: dict[str, bytes], folder: Path, match: str, **expected: Any) -> None:
    """Rejected with a one-line reason matching ``match``, from memory and from files written to ``folder``."""
    with pytest.raises(rt.PolicyValidationError, match=match) as info:
        rt.validate_bundle(pb.PolicyBundle.from_files(files), **expected)
    assert "\n" not in str(info.value)
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with pytest.raises(rt.PolicyValidationError, match=match) as info:
        rt.validate_policy_file(folder / next(iter(files)), **expected)
    assert "\n" not in str(info.value)


def test_validate_rejects_bad_policies(tmp_path: Path) -> None:
    good = _bundle(_policy(trained=True))
    task = _task()
    data = good.policy_bytes
    for name, blob in {"truncated": data[: len(data) // 2], "random": np.random.default_rng(0).bytes(len(data)),
                       "empty": b""}.items():
        _assert_rejected({"policy.onnx": blob}, tmp_path / name, "policy.onnx: ")
    with pytest.raises(rt.PolicyValidationError, match="no such file"):
        rt.validate_policy_file(tmp_path / "missing.onnx")
    cases: dict[str, tuple[dict[str, bytes], dict[str, Any]]] = {
        "task": (dict(good.files), {"expected_task": "Other-v0"}),
        "joint_names": (dict(good.files), {"expected_joint_names": ["x", "y", "z"]}),
        "obs_names": (dict(good.files), {"expected_obs_names": task.obs_names[::-1]}),
        "not finite": (_edited(good, _nan_param), {}),
        "policy_id": (_edited(good, lambda m: _set_meta(m, "policy_id", "0" * 64)), {}),
        "format_version": (_edited(good, lambda m: _set_meta(m, "format_version", "9")), {}),
        "obs_dim": (_edited(good, lambda m: _set_meta(m, "obs_dim", "8")), {}),
        "malformed": (_edited(good, lambda m: _set_meta(m, "obs_names", "7")), {}),
        "missing": (_edited(good, lambda m: m.metadata_props.pop()), {}),
        "not JSON": (_edited(good, lambda m: _set_meta(m, "action_low", "[1,")), {}),
        "adapt_file": (_edited(good, lambda m: _set_meta(m, "adapt_file", "../policy.adapt.onnx")), {}),
    }
    for k, (reason, (files, expected)) in enumerate(cases.items()):
        _assert_rejected(files, tmp_path / f"case{k}", reason, **expected)
    policy = rt.validate_bundle(good, "Toy-v0", task.obs_names, task.joint_names)
    assert isinstance(policy, rt.OnnxPolicy) and policy.bundle is good and policy.can_adapt
    assert rt.validate_policy_file(good.write(tmp_path / "good"), "Toy-v0")["policy_id"] == good.policy_id


def test_validate_rejects_a_bundle_that_misstates_its_graph() -> None:
    good = _bundle(_policy(trained=True))
    for lie in (pb.PolicyBundle(good.files, {**good.metadata, "task": "Other-v0"}, good.policy_id),
                pb.PolicyBundle(good.files, good.metadata, "0" * 64)):
        with pytest.raises(rt.PolicyValidationError, match="differs from its policy graph"):
            rt.validate_bundle(lie)


def test_validate_checks_adapt_graph(tmp_path: Path) -> None:
    good, other = _bundle(_policy(trained=True)), _bundle(_policy(trained=True, seed=1))
    foreign = {good.name: good.policy_bytes, good.adapt_file: other.files[other.adapt_file]}
    _assert_rejected(foreign, tmp_path / "foreign", "another policy")
    _assert_rejected({good.name: good.policy_bytes}, tmp_path / "alone", "not found")
    assert not rt.OnnxPolicy.from_bundle(pb.PolicyBundle.from_files({good.name: good.policy_bytes})).can_adapt
    assert not rt.OnnxPolicy(tmp_path / "alone" / "policy.onnx").can_adapt


def test_read_policy_bundle_ships_both_graphs(tmp_path: Path) -> None:
    pid = _export(_policy(trained=True), tmp_path / "policy.onnx")
    bundle = rt.read_policy_bundle(tmp_path / "policy.onnx", expected_task="Toy-v0")
    assert bundle.policy_id == pid and list(bundle.files) == ["policy.onnx", "policy.adapt.onnx"]
    assert bundle.files["policy.adapt.onnx"] == (tmp_path / "policy.adapt.onnx").read_bytes()
    with pytest.raises(rt.PolicyValidationError, match="task"):
        rt.read_policy_bundle(tmp_path / "policy.onnx", expected_task="Other-v0")


# ---------------------------------------------------------------------------------------------- bundle
def test_bundle_in_memory_equals_the_files_written(tmp_path: Path) -> None:
    policy = _policy(trained=True)
    bundle = _bundle(policy, file_name="cheetah.onnx")
    assert list(bundle.files) == ["cheetah.onnx", "cheetah.adapt.onnx"] and bundle.adapt_file == "cheetah.adapt.onnx"
    assert bundle.policy_id == torch_policy_id(policy) == bundle.metadata["policy_id"]
    assert bundle.metadata["learner_iteration"] == 7 and bundle.metadata["obs_names"] == _task().obs_names
    assert bundle.write(tmp_path / "w") == tmp_path / "w" / "cheetah.onnx"
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["cheetah.adapt.onnx", "cheetah.onnx"]  # no .tmp
    assert pb.PolicyBundle.from_dir(tmp_path / "w", "cheetah.onnx") == bundle
    assert pb.PolicyBundle.from_files(bundle.files) == bundle
    _export(policy, tmp_path / "e" / "cheetah.onnx")
    assert pb.PolicyBundle.from_file(tmp_path / "e" / "cheetah.onnx") == bundle
    alone = _bundle(policy, with_adapt=False)
    assert list(alone.files) == ["policy.onnx"] and alone.adapt_file == "" and alone.adapt_bytes is None


def test_bundle_refuses_file_names_that_are_paths() -> None:
    for name in ("../policy.onnx", "/tmp/policy.onnx", ".policy.onnx", "policy.txt"):
        with pytest.raises(pb.PolicyValidationError, match="plain"):
            pb.PolicyBundle({name: b"x"}, {}, "id")
    with pytest.raises(pb.PolicyValidationError, match="at least"):
        pb.PolicyBundle.from_files({})


def test_export_does_not_import_onnxruntime(tmp_path: Path) -> None:
    """Training writes policies without onnxruntime (the exporter imports the bundle, never the runtime)."""
    code = (
        "import sys\n"
        "from mbmpo_core.export import export_policy\n"
        "from mbmpo_core.policy import GaussianMLPPolicy\n"
        "pid = export_policy(GaussianMLPPolicy(3, 2, (8,)), sys.argv[1], task_name='t', obs_names=['a', 'b', 'c'],\n"
        "    act_names=['x', 'y'], joint_names=['x', 'y'], action_low=[-1, -1], action_high=[1, 1],\n"
        "    control_rate_hz=20.0, horizon=10, inner_lr=0.1, gamma=0.99, gae_lambda=1.0, iteration=0)\n"
        "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported'\n"
        "print(pid)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "policy.onnx")], capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert rt.validate_policy_file(tmp_path / "policy.onnx")["policy_id"] == result.stdout.strip()


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


def test_export_from_checkpoint_ships_the_ensemble(tmp_path: Path) -> None:
    """The checkpoint's ensemble (sizes from its weights, ignored obs from its normaliser) becomes the dynamics
    graph, predicting as the torch ensemble does; ``with_dynamics=False`` leaves it out."""
    torch.manual_seed(0)
    ensemble = DynamicsEnsemble(OBS_DIM, ACT_DIM, num_models=2, hidden_sizes=(10, 6), activation="swish",
                                ignored_obs=(1,))
    rng = np.random.default_rng(0)
    obs, act = rng.normal(2.0, 3.0, (64, OBS_DIM)), rng.uniform(-1, 1, (64, ACT_DIM))
    ensemble.fit(obs, act, obs + 0.1 * rng.normal(size=obs.shape), epochs=1)
    save_config(Config(task="Toy-v0", policy=PolicyConfig(hidden_sizes=HIDDEN),
                       ensemble=EnsembleConfig(activation="swish")), tmp_path / "config.yaml")
    (tmp_path / "checkpoints").mkdir()
    torch.save({"policy": _policy(trained=True).state_dict(), "ensemble": ensemble.state_dict(), "iteration": 2},
               tmp_path / "checkpoints" / "checkpoint.pt")
    export_from_checkpoint(tmp_path, tmp_path / "out" / "policy.onnx", _task())
    loaded = rt.validate_bundle(pb.PolicyBundle.from_file(tmp_path / "out" / "policy.onnx"))
    assert loaded.dynamics is not None and loaded.metadata["dynamics_file"] == "policy.dynamics.onnx"
    _assert_close(loaded.dynamics.predict(obs[:8], act[:8]), ensemble.predict_all(obs[:8], act[:8]).numpy(),
                  "checkpoint ensemble")
    export_from_checkpoint(tmp_path, tmp_path / "bare" / "policy.onnx", _task(), with_dynamics=False)
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["policy.adapt.onnx", "policy.onnx"]



# ---------------------------------------------------------------------------------------------- exporter -> controller
def _no_disk(monkeypatch: pytest.MonkeyPatch, watched: Path) -> None:
    """Every Python-level way to write a file raises; temporary files would land in ``watched``."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"touched the disk: {args[:2]}")

    real_open = builtins.open

    def read_only_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+"):
            refuse(file, mode)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(tempfile, "tempdir", str(watched))
    for name in ("mkstemp", "mkdtemp", "TemporaryDirectory", "NamedTemporaryFile", "TemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    for name in ("write_bytes", "write_text", "mkdir", "touch"):
        monkeypatch.setattr(Path, name, refuse)
    monkeypatch.setattr(os, "replace", refuse)
    monkeypatch.setattr(builtins, "open", read_only_open)


def test_policy_travels_from_exporter_to_controller_without_disk(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """export_bundle -> encode_policy -> decode_policy -> the controller's validation and load, all in memory."""
    pytest.importorskip("std_msgs.msg", reason="ROS 2 message wheels (std_msgs) not installed")
    pytest.importorskip("rclpy", reason="rclpy not installed")
    from mbmpo_ros.codec import decode_policy, encode_policy
    from mbmpo_ros.controller import Controller

    policy, task = _policy(trained=True), _task()
    watched = tmp_path / "tmp"
    watched.mkdir()
    _no_disk(monkeypatch, watched)
    warnings: list[str] = []
    logger = SimpleNamespace(warning=warnings.append, info=lambda _: None)
    node = SimpleNamespace(task=task, rejected_policies=0, _next_policy=None, get_logger=lambda: logger)

    bundle = _bundle(policy)
    msg = encode_policy(bundle)
    assert decode_policy(msg) == bundle
    Controller._validate_policy(node, msg)  # type: ignore[arg-type]  # the node's worker-thread method
    assert warnings == [] and node.rejected_policies == 0
    loaded = node._next_policy
    assert isinstance(loaded, rt.OnnxPolicy) and loaded.policy_id == bundle.policy_id and loaded.can_adapt
    obs = _obs(policy, 16)
    _assert_close(loaded.act(obs), policy(torch.from_numpy(obs)).detach().numpy(), "received policy actions")
    obs_a, act, adv, mask = _inner_data(policy)
    adapted = inner_step(policy, policy.params(), _one_task_batch(policy, obs_a, act, adv, mask), 1e-3)
    for name, value in loaded.adapt(None, obs_a, act, adv, mask).items():
        _assert_close(value, adapted[name][0].detach().numpy(), f"received adapt graph {name}")

    # A policy of another task is rejected with one line and the loaded one stays.
    Controller._validate_policy(node, encode_policy(_bundle(policy, task=_task("Other-v0"))))  # type: ignore[arg-type]
    assert node.rejected_policies == 1 and node._next_policy is loaded
    assert len(warnings) == 1 and "task 'Other-v0'" in warnings[0] and "\n" not in warnings[0]
    assert list(watched.iterdir()) == []
