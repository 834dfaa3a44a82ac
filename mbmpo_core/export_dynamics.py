"""Export a :class:`~mbmpo_core.ensemble.DynamicsEnsemble` to ONNX: the dynamics graph of a policy bundle.

The graph (contract in :mod:`mbmpo_core.bundle`) computes exactly :meth:`DynamicsEnsemble.predict_all`: inputs
normalised with the ensemble's input normaliser (ignored observations zeroed by its ``keep`` mask), K batched
MLPs (one ``MatMul`` per layer broadcasts ``[B, in] x [K, in, out] -> [K, B, out]``), the normalised delta
denormalised and added to ``obs``. The last layer is split off as the overridable inputs ``last.weight`` /
``last.bias`` and the last hidden activations are an output (``features``), so that the robot can refit the last
layer in closed form (:mod:`mbmpo_core.identification`) and feed the result back in.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from mbmpo_core.bundle import (
    ACT_INPUT,
    FEATURES_OUTPUT,
    FORMAT_VERSION,
    LAST_BIAS_INPUT,
    LAST_WEIGHT_INPUT,
    NEXT_OBS_OUTPUT,
    OBS_INPUT,
    TARGET_MEAN_CONST,
    TARGET_STD_CONST,
    encode_metadata,
)
from mbmpo_core.ensemble import DynamicsEnsemble
from mbmpo_core.onnx_graph import GraphBuilder, finish_model


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _activation(g: GraphBuilder, kind: str, x: str, output: str | None = None) -> str:
    """The ensemble's hidden activation (``swish``/``silu`` = x * sigmoid(x); ``elu`` with alpha 1)."""
    if kind == "relu":
        return g.op("Relu", [x], output)
    if kind == "tanh":
        return g.op("Tanh", [x], output)
    if kind in ("swish", "silu"):
        return g.op("Mul", [x, g.op("Sigmoid", [x])], output)
    if kind == "elu":
        return g.op("Elu", [x], output, alpha=1.0)
    raise ValueError(f"activation {kind!r} has no ONNX export")


def build_dynamics_model(ensemble: DynamicsEnsemble, metadata: Mapping[str, object]) -> onnx.ModelProto:
    """The dynamics graph of ``ensemble`` (see the module docstring) with ``metadata`` (decoded values; the
    graph's own keys ``obs_dim``, ``act_dim``, ``num_models``, ``hidden`` and ``format_version`` are added).

    Raises:
        ValueError: non-finite weights or normalisers (a diverged fit must not reach a robot).
    """
    k, o, a = ensemble.num_models, ensemble.obs_dim, ensemble.act_dim
    weights = [_numpy(w) for w in ensemble.weights]  # [K, in, out] each
    biases = [_numpy(b) for b in ensemble.biases]  # [K, 1, out]
    inorm, tnorm = ensemble.input_normalizer, ensemble.target_normalizer
    consts = {
        "input_mean": _numpy(inorm.mean), "input_factor": _numpy(inorm.keep / inorm.std),  # (x - mean) / std * keep
        TARGET_MEAN_CONST: _numpy(tnorm.mean), TARGET_STD_CONST: _numpy(tnorm.std),
    }
    bad = [n for n, v in [*consts.items(), *enumerate(weights), *enumerate(biases)] if not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"non-finite ensemble weights or normalisers {bad}: refusing to export")
    g = GraphBuilder()
    for name, value in consts.items():
        g.const(name, value)
    x = g.op("Concat", [OBS_INPUT, ACT_INPUT], axis=1)
    h = g.op("Mul", [g.op("Sub", [x, "input_mean"]), "input_factor"])  # [B, in]
    for i, (w, b) in enumerate(zip(weights[:-1], biases[:-1], strict=True)):
        z = g.op("Add", [g.op("MatMul", [h, g.const(f"l{i}.weight", w)]), g.const(f"l{i}.bias", b)])
        h = _activation(g, ensemble.activation, z, FEATURES_OUTPUT if i == len(weights) - 2 else None)
    if len(weights) == 1:  # no hidden layer: the features are the normalised inputs, one copy per member
        h = g.op("Expand", [h, g.const("features_shape", np.array([k, 1, 1]), np.int64)], FEATURES_OUTPUT)
    delta = g.op("Add", [g.op("MatMul", [h, LAST_WEIGHT_INPUT]), LAST_BIAS_INPUT])  # normalised [K, B, o]
    raw = g.op("Add", [g.op("Mul", [delta, TARGET_STD_CONST]), TARGET_MEAN_CONST])
    g.op("Add", [OBS_INPUT, raw], NEXT_OBS_OUTPUT)

    hidden = int(weights[-1].shape[1])
    last = {LAST_WEIGHT_INPUT: weights[-1], LAST_BIAS_INPUT: biases[-1]}
    inputs = [helper.make_tensor_value_info(OBS_INPUT, TensorProto.FLOAT, ["batch", o]),
              helper.make_tensor_value_info(ACT_INPUT, TensorProto.FLOAT, ["batch", a]),
              *(helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)) for n, v in last.items())]
    outputs = [helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT, [k, "batch", hidden]),
               helper.make_tensor_value_info(NEXT_OBS_OUTPUT, TensorProto.FLOAT, [k, "batch", o])]
    defaults = [numpy_helper.from_array(v, n) for n, v in last.items()]  # trained values = the inputs' defaults
    graph = helper.make_graph(g.nodes, "mbmpo_dynamics", inputs, outputs, initializer=defaults + g.initializers)
    own = {"format_version": FORMAT_VERSION, "obs_dim": o, "act_dim": a, "num_models": k, "hidden": hidden}
    return finish_model(graph, encode_metadata({**metadata, **own}))
