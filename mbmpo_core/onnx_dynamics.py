"""Torch-free dynamics ensemble: the bundle's ``policy.dynamics.onnx`` on onnxruntime (contract in
:mod:`mbmpo_core.bundle`, export in :mod:`mbmpo_core.export_dynamics`).

numpy, onnx (protobuf) and onnxruntime only: this runs on the robot. :class:`OnnxEnsemble` predicts with the
trained or any fed last layer and exposes the last hidden features that :mod:`mbmpo_core.identification` refits
the last layer on; :func:`validate_dynamics` is the check :func:`mbmpo_core.onnx_runtime.validate_bundle` runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from mbmpo_core.bundle import (
    ACT_INPUT,
    DYNAMICS_METADATA,
    FEATURES_OUTPUT,
    LAST_BIAS_INPUT,
    LAST_WEIGHT_INPUT,
    NEXT_OBS_OUTPUT,
    OBS_INPUT,
    SUPPORTED_FORMAT_VERSIONS,
    TARGET_MEAN_CONST,
    TARGET_STD_CONST,
    PolicyBundle,
    PolicyValidationError,
    decode_metadata,
)
from mbmpo_core.onnx_session import make_session, read_initializers

LastLayer = tuple[np.ndarray, np.ndarray]  # (weight [K, H, obs_dim], bias [K, 1, obs_dim])


class OnnxEnsemble:
    """K dynamics models ``(obs, executed act) -> next_obs``, all on the same batch (as ``predict_all``).

    Attributes:
        metadata: the dynamics graph's decoded ``metadata_props``.
        num_models, obs_dim, act_dim, hidden: K, the dims, and H (the width of :meth:`features`).
        target_mean, target_std: ``[obs_dim]``, the target normaliser: a normalised delta ``d`` is the raw
            state change ``d * target_std + target_mean``.
    """

    def __init__(self, data: bytes, model: onnx.ModelProto | None = None) -> None:
        """``data``: the serialized dynamics graph; ``model``: it parsed, if the caller has (validation has)."""
        model = onnx.load_from_string(data) if model is None else model
        self.metadata: dict[str, Any] = decode_metadata({p.key: p.value for p in model.metadata_props})
        self.num_models, self.hidden = int(self.metadata["num_models"]), int(self.metadata["hidden"])
        self.obs_dim, self.act_dim = int(self.metadata["obs_dim"]), int(self.metadata["act_dim"])
        init = read_initializers(model, [LAST_WEIGHT_INPUT, LAST_BIAS_INPUT, TARGET_MEAN_CONST, TARGET_STD_CONST])
        self._last: LastLayer = (init[LAST_WEIGHT_INPUT], init[LAST_BIAS_INPUT])
        self.target_mean, self.target_std = init[TARGET_MEAN_CONST], init[TARGET_STD_CONST]
        self._session = make_session(data)

    @classmethod
    def from_bundle(cls, bundle: PolicyBundle) -> OnnxEnsemble | None:
        """The bundle's ensemble, or None if it carries none; no checks (see :func:`validate_dynamics`)."""
        data = bundle.dynamics_bytes
        return None if data is None else cls(data)

    @property
    def last_layer(self) -> LastLayer:
        """The trained last layer: copies of ``(weight [K, H, obs_dim], bias [K, 1, obs_dim])``, float32."""
        return self._last[0].copy(), self._last[1].copy()

    def run(self, obs: np.ndarray, act: np.ndarray, last_layer: LastLayer | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """``(features [K, B, H], next_obs [K, B, obs_dim])`` for ``obs [B, obs_dim]``, ``act [B, act_dim]``
        (the executed action) with ``last_layer`` (None: the trained one).

        Raises:
            ValueError: inputs of the wrong shape.
        """
        feed = {OBS_INPUT: self._rows(obs, self.obs_dim, "obs")}
        feed[ACT_INPUT] = self._rows(act, self.act_dim, "act")
        if feed[ACT_INPUT].shape[0] != feed[OBS_INPUT].shape[0]:
            raise ValueError(f"obs has {feed[OBS_INPUT].shape[0]} rows, act {feed[ACT_INPUT].shape[0]}")
        if last_layer is not None:
            feed.update(self._last_layer_feed(last_layer))
        features, next_obs = self._session.run([FEATURES_OUTPUT, NEXT_OBS_OUTPUT], feed)
        return features, next_obs

    def features(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Last hidden activations ``[K, B, H]`` (what the last layer maps to the normalised delta)."""
        return self.run(obs, act)[0]

    def predict(self, obs: np.ndarray, act: np.ndarray, last_layer: LastLayer | None = None) -> np.ndarray:
        """Next observations ``[K, B, obs_dim]``: every member on the same ``obs [B, obs_dim]``,
        ``act [B, act_dim]``, with ``last_layer`` (None: the trained one)."""
        return self.run(obs, act, last_layer)[1]

    def _rows(self, x: np.ndarray, dim: int, name: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"{name} must be [B, {dim}], got {list(x.shape)}")
        return x

    def _last_layer_feed(self, last_layer: LastLayer) -> dict[str, np.ndarray]:
        weight, bias = (np.ascontiguousarray(v, dtype=np.float32) for v in last_layer)
        if weight.shape != self._last[0].shape or bias.shape != self._last[1].shape:
            raise ValueError(f"last layer must be {list(self._last[0].shape)}, {list(self._last[1].shape)}; got "
                             f"{list(weight.shape)}, {list(bias.shape)}")
        return {LAST_WEIGHT_INPUT: weight, LAST_BIAS_INPUT: bias}


# ---------------------------------------------------------------------------------------------- validation
def validate_dynamics(bundle: PolicyBundle, policy_meta: Mapping[str, Any], obs: np.ndarray) -> OnnxEnsemble:
    """Check the dynamics graph the (already checked) policy metadata ``policy_meta`` names and return it loaded.

    Checks: the file is in the bundle and passes the ONNX checker; its metadata is complete, of a supported
    format, of the same policy and dims; inputs, outputs and the last layer's shapes are as the contract says;
    constants finite float32 with ``target_std > 0``; inference on ``obs [B, obs_dim]`` (typical observations)
    with actions inside the bounds is finite and of the right shapes.

    Raises:
        PolicyValidationError: one line, starting with the dynamics file's name.
    """
    name = bundle.dynamics_file
    data = bundle.dynamics_bytes
    if data is None:
        raise _fail(bundle.name, f"dynamics file {name} not found")
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf/checker raise many types; all mean "not a usable model"
        raise _fail(name, f"not a valid ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None
    try:
        _check_dynamics_graph(name, model, policy_meta)
        ensemble = OnnxEnsemble(data, model)
        _check_dynamics_inference(name, ensemble, policy_meta, obs)
    except PolicyValidationError:
        raise
    except Exception as exc:  # wrong JSON types, a graph onnxruntime refuses: still a bad file, never a crash
        raise _fail(name, f"malformed dynamics file ({type(exc).__name__}: {str(exc)[:200]})") from None
    return ensemble


def _check_dynamics_graph(name: str, model: onnx.ModelProto, policy_meta: Mapping[str, Any]) -> None:
    raw = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in DYNAMICS_METADATA if k not in raw]
    if missing:
        raise _fail(name, f"metadata is missing {missing}")
    meta = decode_metadata(raw)
    if meta["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
        raise _fail(name, f"format_version {meta['format_version']!r} not supported ({SUPPORTED_FORMAT_VERSIONS})")
    if meta["policy_id"] != policy_meta["policy_id"]:
        raise _fail(name, "belongs to another policy than the bundle's")
    obs_dim, act_dim, k, hidden = (meta[key] for key in ("obs_dim", "act_dim", "num_models", "hidden"))
    policy_dims = (policy_meta["obs_dim"], policy_meta["act_dim"])
    if (obs_dim, act_dim) != policy_dims:
        raise _fail(name, f"dims {(obs_dim, act_dim)} != the policy's {policy_dims}")
    if not (isinstance(k, int) and k >= 1 and isinstance(hidden, int) and hidden >= 1):
        raise _fail(name, f"num_models {k!r} and hidden {hidden!r} must be integers >= 1")
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [OBS_INPUT, ACT_INPUT, LAST_WEIGHT_INPUT, LAST_BIAS_INPUT]:
        raise _fail(name, f"graph inputs {inputs} != ['obs', 'act', 'last.weight', 'last.bias']")
    if outputs != [FEATURES_OUTPUT, NEXT_OBS_OUTPUT]:
        raise _fail(name, f"graph outputs {outputs} != ['features', 'next_obs']")
    try:
        consts = read_initializers(model, [LAST_WEIGHT_INPUT, LAST_BIAS_INPUT, TARGET_MEAN_CONST, TARGET_STD_CONST])
    except KeyError as exc:
        raise _fail(name, f"missing initializer {exc}") from None
    expected = {LAST_WEIGHT_INPUT: (k, hidden, obs_dim), LAST_BIAS_INPUT: (k, 1, obs_dim),
                TARGET_MEAN_CONST: (obs_dim,), TARGET_STD_CONST: (obs_dim,)}
    for key, shape in expected.items():
        if consts[key].shape != shape:
            raise _fail(name, f"{key} has shape {list(consts[key].shape)}, expected {list(shape)}")
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype == np.float32 and not np.all(np.isfinite(value)):
            raise _fail(name, f"constant {init.name!r} is not finite")
    if not np.all(consts[TARGET_STD_CONST] > 0):
        raise _fail(name, "target_std must be > 0")


def _check_dynamics_inference(name: str, ensemble: OnnxEnsemble, policy_meta: Mapping[str, Any],
                              obs: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    low, high = (np.asarray(policy_meta[key], np.float64) for key in ("action_low", "action_high"))
    act = np.clip(rng.standard_normal((len(obs), ensemble.act_dim)), low, high)
    try:
        features, next_obs = ensemble.run(obs, act)
    except Exception as exc:
        raise _fail(name, f"inference failed ({type(exc).__name__}: {str(exc)[:200]})") from None
    k, b = ensemble.num_models, len(obs)
    if features.shape != (k, b, ensemble.hidden) or next_obs.shape != (k, b, ensemble.obs_dim):
        raise _fail(name, f"output shapes {list(features.shape)}, {list(next_obs.shape)} do not match the metadata")
    if not (np.all(np.isfinite(features)) and np.all(np.isfinite(next_obs))):
        raise _fail(name, "inference gives non-finite predictions")


def _fail(name: str, reason: str) -> PolicyValidationError:
    return PolicyValidationError(f"{name}: {reason}".replace("\n", " "))
