"""The bundle's dynamics graph: ONNX equals the torch ensemble, the last layer can be fed, validation checks it,
and bundles without it (also older ones) still load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from dynamics_helpers import ACT_DIM, OBS_DIM, K, bundle_with_dynamics, fitted_ensemble, toy_data, toy_policy, toy_spec
from onnx import numpy_helper

from mbmpo_core import bundle as pb
from mbmpo_core import onnx_runtime as rt
from mbmpo_core.ensemble import DynamicsEnsemble
from mbmpo_core.export import dynamics_file_name, export_bundle, export_policy
from mbmpo_core.onnx_dynamics import OnnxEnsemble

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    scale = max(1.0, float(np.abs(b).max()))
    assert a.shape == b.shape, what
    assert float(np.abs(a - b).max()) <= 1e-5 * scale, f"{what}: max diff {np.abs(a - b).max()}"


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("activation", ["relu", "swish", "tanh", "elu"])
def test_onnx_ensemble_equals_torch_predict_all(activation: str) -> None:
    ensemble = fitted_ensemble(activation)
    onnx_ens = OnnxEnsemble.from_bundle(bundle_with_dynamics(ensemble))
    assert onnx_ens is not None and (onnx_ens.num_models, onnx_ens.hidden) == (K, 24)
    obs, act, _ = toy_data(64, seed=5)
    torch_next = ensemble.predict_all(obs, act).numpy()
    _close(onnx_ens.predict(obs, act), torch_next, f"{activation} next_obs")
    # The ignored coordinate is no input: moving it far moves only its own next value (obs + delta), one to one.
    shifted = obs.copy()
    shifted[:, 0] += 1000.0
    moved = onnx_ens.predict(shifted, act) - onnx_ens.predict(obs, act)
    _close(moved[..., 1:], np.zeros_like(moved[..., 1:]), "other coordinates")
    _close(moved[..., 0], np.full_like(moved[..., 0], 1000.0), "ignored coordinate")


def test_no_hidden_layer_exports_too() -> None:
    ensemble = fitted_ensemble(hidden=())
    onnx_ens = OnnxEnsemble.from_bundle(bundle_with_dynamics(ensemble))
    assert onnx_ens is not None and onnx_ens.hidden == OBS_DIM + ACT_DIM
    obs, act, _ = toy_data(16, seed=5)
    _close(onnx_ens.predict(obs, act), ensemble.predict_all(obs, act).numpy(), "linear ensemble")


def test_features_and_fed_last_layer_match_torch() -> None:
    """next_obs = obs + (features @ W + b) * target_std + target_mean, for the trained and for a fed last layer."""
    ensemble = fitted_ensemble()
    onnx_ens = OnnxEnsemble.from_bundle(bundle_with_dynamics(ensemble))
    assert onnx_ens is not None
    obs, act, _ = toy_data(32, seed=6)
    weight, bias = onnx_ens.last_layer
    _close(weight, ensemble.weights[-1].detach().numpy(), "trained last weight")
    changed = (weight + 0.3 * np.random.default_rng(0).standard_normal(weight.shape).astype(np.float32), bias - 0.2)
    features = onnx_ens.features(obs, act)
    by_hand = obs + (features @ changed[0] + changed[1]) * onnx_ens.target_std + onnx_ens.target_mean
    _close(onnx_ens.predict(obs, act, changed), by_hand, "fed last layer")
    with torch.no_grad():
        ensemble.weights[-1].copy_(torch.from_numpy(changed[0]))
        ensemble.biases[-1].copy_(torch.from_numpy(changed[1]))
    _close(onnx_ens.predict(obs, act, changed), ensemble.predict_all(obs, act).numpy(), "torch with that layer")
    # The defaults are untouched by a fed layer.
    _close(onnx_ens.last_layer[0], weight, "defaults after a fed call")


def test_bad_shapes_are_one_line_errors() -> None:
    onnx_ens = OnnxEnsemble.from_bundle(bundle_with_dynamics())
    assert onnx_ens is not None
    obs, act, _ = toy_data(4)
    weight, bias = onnx_ens.last_layer
    for args, match in [((obs[:, :3], act), "obs must be"), ((obs, act[:3]), "rows"),
                        ((obs, act, (weight[:, :5], bias)), "last layer must be")]:
        with pytest.raises(ValueError, match=match):
            onnx_ens.predict(*args)


# ---------------------------------------------------------------------------------------------- bundle contract
def test_bundle_carries_dynamics_through_disk_and_validation(tmp_path: Path) -> None:
    bundle = bundle_with_dynamics()
    assert bundle.dynamics_file == "policy.dynamics.onnx" == dynamics_file_name("policy.onnx")
    assert list(bundle.files) == ["policy.onnx", "policy.adapt.onnx", "policy.dynamics.onnx"]
    read = pb.PolicyBundle.from_dir(bundle.write(tmp_path).parent)
    assert dict(read.files) == dict(bundle.files)
    policy = rt.validate_bundle(read, expected_task="Toy-v0")
    assert isinstance(policy.dynamics, OnnxEnsemble) and policy.dynamics.num_models == K
    assert rt.validate_bundle(read, adapt=False).dynamics is None  # a user who will not adapt loads neither
    assert OnnxEnsemble.from_bundle(rt.OnnxPolicy(tmp_path / "policy.onnx").bundle) is not None


def test_bundles_without_dynamics_still_validate(tmp_path: Path) -> None:
    """A bundle exported without an ensemble, and one written before the key existed (no dynamics_file at all)."""
    plain = export_bundle(toy_policy(), **toy_spec())
    assert plain.dynamics_file == "" and plain.metadata["dynamics_file"] == ""
    assert OnnxEnsemble.from_bundle(plain) is None and rt.validate_bundle(plain).dynamics is None
    model = onnx.load_from_string(plain.policy_bytes)
    keep = [p for p in model.metadata_props if p.key != "dynamics_file"]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    old = pb.PolicyBundle.from_files({"policy.onnx": model.SerializeToString(), "policy.adapt.onnx":
                                      plain.files["policy.adapt.onnx"]})
    assert "dynamics_file" not in old.metadata and old.dynamics_file == ""
    assert rt.validate_bundle(old).dynamics is None
    export_policy(toy_policy(), tmp_path / "policy.onnx", **toy_spec())
    assert not (tmp_path / "policy.dynamics.onnx").exists()


def _edit_dynamics(bundle: pb.PolicyBundle, edit: Any) -> pb.PolicyBundle:
    model = onnx.load_from_string(bundle.files[bundle.dynamics_file])
    edit(model)
    return pb.PolicyBundle({**bundle.files, bundle.dynamics_file: model.SerializeToString()}, bundle.metadata,
                           bundle.policy_id)


def _set_prop(key: str, value: str) -> Any:
    def edit(model: onnx.ModelProto) -> None:
        for prop in model.metadata_props:
            if prop.key == key:
                prop.value = value
    return edit


def _set_init(name: str, change: Any) -> Any:
    def edit(model: onnx.ModelProto) -> None:
        for init in model.graph.initializer:
            if init.name == name:
                init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init).copy()), name))
    return edit


def _nan_first(value: np.ndarray) -> np.ndarray:
    value.flat[0] = np.nan
    return value


def test_validation_rejects_bad_dynamics() -> None:
    good = bundle_with_dynamics()
    other = export_bundle(toy_policy(), **{**toy_spec(), "iteration": 4}, ensemble=fitted_ensemble("tanh"))
    without = pb.PolicyBundle({k: v for k, v in good.files.items() if k != good.dynamics_file}, good.metadata,
                              good.policy_id)
    cases = {
        "policy.onnx: dynamics file policy.dynamics.onnx not found": without,
        "not a valid ONNX model": pb.PolicyBundle({**good.files, good.dynamics_file: b"junk"}, good.metadata,
                                                  good.policy_id),
        "belongs to another policy": _edit_dynamics(good, _set_prop("policy_id", "0" * 64)),
        "format_version": _edit_dynamics(good, _set_prop("format_version", "9")),
        "dims": _edit_dynamics(good, _set_prop("obs_dim", "7")),
        "num_models": _edit_dynamics(good, _set_prop("num_models", "0")),
        "last.weight has shape": _edit_dynamics(good, _set_init("last.weight", lambda v: v[:, :-1])),
        "not finite": _edit_dynamics(good, _set_init("l0.weight", _nan_first)),
        "target_std must be > 0": _edit_dynamics(good, _set_init("target_std", lambda v: v * 0.0)),
        "malformed dynamics file": _edit_dynamics(good, _set_prop("hidden", "[1,")),
    }
    for match, bad in cases.items():
        with pytest.raises(rt.PolicyValidationError, match=match) as info:
            rt.validate_bundle(bad)
        assert "\n" not in str(info.value)
    # A dynamics graph of the same policy id but another ensemble is accepted (ids bind policies, not models).
    swapped = pb.PolicyBundle({**good.files, good.dynamics_file: other.files[other.dynamics_file]}, good.metadata,
                              good.policy_id)
    assert rt.validate_bundle(swapped).dynamics is not None
    # The policy's metadata may not point the dynamics file elsewhere.
    model = onnx.load_from_string(good.policy_bytes)
    _set_prop("dynamics_file", "../x.onnx")(model)
    moved = pb.PolicyBundle.from_files({**good.files, good.name: model.SerializeToString()})
    with pytest.raises(rt.PolicyValidationError, match="dynamics_file is not a plain"):
        rt.validate_bundle(moved)


def test_export_refuses_mismatched_or_diverged_ensembles() -> None:
    with pytest.raises(ValueError, match="ensemble dims"):
        export_bundle(toy_policy(), **toy_spec(), ensemble=DynamicsEnsemble(OBS_DIM + 1, ACT_DIM, num_models=2,
                                                                       hidden_sizes=(4,)))
    ensemble = fitted_ensemble()
    with torch.no_grad():
        ensemble.weights[1][0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite ensemble"):
        export_bundle(toy_policy(), **toy_spec(), ensemble=ensemble)
