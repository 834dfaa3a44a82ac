"""Export a :class:`GaussianMLPPolicy` to ONNX: the policy graph and the inner-step (adapt) graph.

The graphs are written by hand with ``onnx.helper`` (opset 17, IR version 8) rather than by
``torch.onnx.export``: the forward pass is a few Gemm/Tanh nodes, the inner step needs the *analytic*
backward pass as plain ops (onnxruntime has no autograd in inference builds), and hand-written graphs keep
the parameter names (``l0.weight`` ... ``log_std``, dots kept) as the graph input names. The file layout and
the metadata contract are documented in :mod:`mbmpo_core.bundle`; the dynamics graph (the ensemble the robot
identifies and imagines with) is built by :mod:`mbmpo_core.export_dynamics`. The exporter builds a
:class:`~mbmpo_core.bundle.PolicyBundle` in memory (:func:`export_bundle`); :func:`export_policy` also writes it.
Nothing here imports onnxruntime: training writes policies without it.

Inner-step math (one task, ``N`` rows, ``c_n = mask_n * A_n / max(sum(mask), 1)``), i.e. the gradient of
``J = sum_n c_n log pi(a_n | s_n)``, which equals ``grad`` of :func:`mbmpo_core.meta.pg_surrogate` at the
sampling parameters (the ratio form has ``ratio = 1`` there)::

    dJ/dmean_n   = c_n (a_n - mean_n) / std^2                       [N, A]
    dJ/dlog_std  = sum_n c_n ((a_n - mean_n)^2 / std^2 - 1)         [A]
    layer k (z = h W^T + b):  dW = delta^T h,  db = sum_n delta,  delta_prev = (delta W) * (1 - h^2)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from mbmpo_core.bundle import (
    ACT_INPUT,
    ADAPTED_PREFIX,
    ADV_INPUT,
    FORMAT_VERSION,
    GRAD_PREFIX,
    IR_VERSION,
    LOG_STD_OUTPUT,
    MASK_INPUT,
    MEAN_OUTPUT,
    OBS_INPUT,
    OBS_MEAN_CONST,
    OBS_SCALE_CONST,
    OPSET,
    POLICY_FILE,
    PolicyBundle,
    decode_metadata,
    encode_metadata,
    inner_lr_arrays,
    policy_id,
)
from mbmpo_core.config import load_config
from mbmpo_core.ensemble import DynamicsEnsemble
from mbmpo_core.export_dynamics import build_dynamics_model
from mbmpo_core.onnx_graph import GraphBuilder, finish_model
from mbmpo_core.policy import GaussianMLPPolicy

__all__ = ["IR_VERSION", "OPSET", "adapt_file_name", "dynamics_file_name", "export_bundle", "export_from_checkpoint",
           "export_policy"]
InnerLr = float | Mapping[str, Any]  # a float, or per-parameter step sizes (tensors/arrays shaped like the params)


class TaskMeta(Protocol):
    """The task attributes the export needs (``sim.Task`` has them; a robot's task spec can too)."""

    name: str
    obs_names: Sequence[str]
    act_names: Sequence[str]
    joint_names: Sequence[str]
    action_low: Any
    action_high: Any
    dt: float
    horizon: int


def adapt_file_name(path: str | Path) -> str:
    """``policy.onnx -> policy.adapt.onnx`` (other names get ``.adapt.onnx`` appended)."""
    name = Path(path).name
    return name[: -len(".onnx")] + ".adapt.onnx" if name.endswith(".onnx") else name + ".adapt.onnx"


def dynamics_file_name(path: str | Path) -> str:
    """``policy.onnx -> policy.dynamics.onnx`` (other names get ``.dynamics.onnx`` appended)."""
    name = Path(path).name
    return name[: -len(".onnx")] + ".dynamics.onnx" if name.endswith(".onnx") else name + ".dynamics.onnx"


def policy_numpy_params(policy: GaussianMLPPolicy) -> dict[str, np.ndarray]:
    """The policy's parameters as float32 numpy arrays, in :meth:`param_names` order."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in policy.params().items()}


def torch_policy_id(policy: GaussianMLPPolicy) -> str:
    """:func:`mbmpo_core.bundle.policy_id` of the policy's current parameters."""
    return policy_id(policy_numpy_params(policy), policy.param_names())


# ---------------------------------------------------------------------------------------------- graph
def _layer_names(param_names: Sequence[str]) -> list[str]:
    return [n[: -len(".weight")] for n in param_names if n.endswith(".weight")]


def _forward(g: GraphBuilder, layers: Sequence[str], mean_output: str) -> list[str]:
    """Nodes of ``mean = tanh-MLP((obs - obs_mean) * obs_scale)``; returns each layer's input ``h_k``."""
    h = g.op("Mul", [g.op("Sub", [OBS_INPUT, OBS_MEAN_CONST]), OBS_SCALE_CONST])
    inputs: list[str] = []
    for k, layer in enumerate(layers):
        inputs.append(h)
        last = k == len(layers) - 1
        z = g.op("Gemm", [h, f"{layer}.weight", f"{layer}.bias"], mean_output if last else None, transB=1)
        h = z if last else g.op("Tanh", [z])
    return inputs


def _backward(g: GraphBuilder, layers: Sequence[str], hs: Sequence[str], mean: str) -> None:
    """Nodes of ``grad.<name>`` for every parameter (see the module docstring for the math)."""
    one, neg_two = g.const("const_one", np.array(1.0, np.float32)), g.const("const_neg_two", np.array(-2.0, np.float32))
    axis0, axis1 = g.const("const_axis0", np.array([0], np.int64)), g.const("const_axis1", np.array([1], np.int64))
    count = g.op("Max", [g.op("ReduceSum", [MASK_INPUT], keepdims=0), one])  # torch: clamp_min(1)
    weight = g.op("Unsqueeze", [g.op("Div", [g.op("Mul", [MASK_INPUT, ADV_INPUT]), count]), axis1])  # c_n [N, 1]
    inv_var = g.op("Exp", [g.op("Mul", ["log_std", neg_two])])
    diff = g.op("Sub", [ACT_INPUT, mean])
    delta = g.op("Mul", [g.op("Mul", [diff, inv_var]), weight])  # dJ/dmean [N, A]
    z2_minus_1 = g.op("Sub", [g.op("Mul", [g.op("Mul", [diff, diff]), inv_var]), one])
    g.op("ReduceSum", [g.op("Mul", [z2_minus_1, weight]), axis0], GRAD_PREFIX + "log_std", keepdims=0)
    for k in reversed(range(len(layers))):
        layer, h = layers[k], hs[k]
        g.op("Gemm", [delta, h], f"{GRAD_PREFIX}{layer}.weight", transA=1)  # delta^T h: [out, in]
        g.op("ReduceSum", [delta, axis0], f"{GRAD_PREFIX}{layer}.bias", keepdims=0)
        if k > 0:  # h = tanh(z_prev), so dh/dz_prev = 1 - h^2
            back = g.op("MatMul", [delta, f"{layer}.weight"])
            delta = g.op("Mul", [back, g.op("Sub", [one, g.op("Mul", [h, h])])])


def _tensor_info(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _param_inputs(params: Mapping[str, np.ndarray]) -> tuple[list[onnx.ValueInfoProto], list[onnx.TensorProto]]:
    """Parameter inputs plus same-named initializers: the trained values are the defaults."""
    infos = [_tensor_info(k, v.shape) for k, v in params.items()]
    inits = [numpy_helper.from_array(v, k) for k, v in params.items()]
    return infos, inits


def _normalizer_consts(g: GraphBuilder, obs_mean: np.ndarray, obs_scale: np.ndarray) -> None:
    g.const(OBS_MEAN_CONST, obs_mean.astype(np.float32))
    g.const(OBS_SCALE_CONST, obs_scale.astype(np.float32))


def build_policy_model(
    params: Mapping[str, np.ndarray], obs_mean: np.ndarray, obs_scale: np.ndarray, metadata: Mapping[str, str]
) -> onnx.ModelProto:
    """Policy graph: ``obs [B, obs_dim]`` (+ optional param overrides) -> ``action_mean [B, A]``, ``log_std [A]``."""
    g = GraphBuilder()
    _normalizer_consts(g, obs_mean, obs_scale)
    _forward(g, _layer_names(list(params)), MEAN_OUTPUT)
    obs_dim, act_dim = obs_mean.shape[0], params["log_std"].shape[0]
    infos, inits = _param_inputs(params)
    # ``log_std`` is both an input and an output: the output echoes the default or the fed value.
    outputs = [_tensor_info(MEAN_OUTPUT, ["batch", act_dim]), _tensor_info(LOG_STD_OUTPUT, [act_dim])]
    graph = helper.make_graph(
        g.nodes, "mbmpo_policy", [_tensor_info(OBS_INPUT, ["batch", obs_dim]), *infos], outputs,
        initializer=inits + g.initializers,
    )
    return finish_model(graph, metadata)


def build_adapt_model(
    params: Mapping[str, np.ndarray],
    obs_mean: np.ndarray,
    obs_scale: np.ndarray,
    alphas: Mapping[str, np.ndarray],
    metadata: Mapping[str, str],
) -> onnx.ModelProto:
    """Inner-step graph: params, ``obs [N, obs_dim]``, ``act [N, A]``, ``advantages [N]``, ``mask [N]`` ->
    ``grad.<name>`` and ``adapted.<name> = <name> + alpha_<name> * grad.<name>`` (alphas are constants)."""
    g = GraphBuilder()
    _normalizer_consts(g, obs_mean, obs_scale)
    layers = _layer_names(list(params))
    hs = _forward(g, layers, "mean")
    _backward(g, layers, hs, "mean")
    outputs = [_tensor_info(GRAD_PREFIX + k, v.shape) for k, v in params.items()]
    for name, value in params.items():
        alpha = g.const(f"alpha.{name}", alphas[name])
        g.op("Add", [name, g.op("Mul", [alpha, GRAD_PREFIX + name])], ADAPTED_PREFIX + name)
        outputs.append(_tensor_info(ADAPTED_PREFIX + name, value.shape))
    obs_dim, act_dim = obs_mean.shape[0], params["log_std"].shape[0]
    data = [
        _tensor_info(OBS_INPUT, ["n", obs_dim]), _tensor_info(ACT_INPUT, ["n", act_dim]),
        _tensor_info(ADV_INPUT, ["n"]), _tensor_info(MASK_INPUT, ["n"]),
    ]
    infos, inits = _param_inputs(params)
    graph = helper.make_graph(g.nodes, "mbmpo_adapt", [*data, *infos], outputs, initializer=inits + g.initializers)
    return finish_model(graph, metadata)


# ---------------------------------------------------------------------------------------------- export
def _inner_lr_metadata(inner_lr: InnerLr) -> Any:
    if isinstance(inner_lr, int | float):
        return float(inner_lr)
    return {k: np.asarray(_to_numpy(v), np.float64).tolist() for k, v in inner_lr.items()}


def _to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def export_bundle(
    policy: GaussianMLPPolicy,
    *,
    task_name: str,
    obs_names: Sequence[str],
    act_names: Sequence[str],
    joint_names: Sequence[str],
    action_low: Sequence[float] | np.ndarray,
    action_high: Sequence[float] | np.ndarray,
    control_rate_hz: float,
    horizon: int,
    inner_lr: InnerLr,
    gamma: float,
    gae_lambda: float,
    iteration: int,
    file_name: str = POLICY_FILE,
    with_adapt: bool = True,
    ensemble: DynamicsEnsemble | None = None,
) -> PolicyBundle:
    """The policy graph and its inner-step graph as a :class:`PolicyBundle`, in memory (nothing is written).

    Args:
        policy: the meta-policy (its normalizer buffers are baked into the graphs).
        inner_lr: a float, or per-parameter step sizes shaped like the parameters (learned inner lr).
        iteration: the learner iteration, stored as ``learner_iteration``.
        file_name: the policy graph's file name; the inner-step graph is :func:`adapt_file_name` of it.
        with_adapt: False leaves the inner-step graph out (metadata ``adapt_file`` = "").
        ensemble: the dynamics ensemble to ship as :func:`dynamics_file_name` (None: none, ``dynamics_file`` = "").

    Raises:
        ValueError: names or bounds that do not match the policy's dims (or the ensemble's), or non-finite
            parameters.
    """
    params = policy_numpy_params(policy)
    names = policy.param_names()
    low, high = np.asarray(action_low, np.float64).reshape(-1), np.asarray(action_high, np.float64).reshape(-1)
    _check_export_args(policy, params, obs_names, act_names, low, high, control_rate_hz)
    pid = policy_id(params, names)
    adapt_name = adapt_file_name(file_name) if with_adapt else ""
    dynamics_name = dynamics_file_name(file_name) if ensemble is not None else ""
    if ensemble is not None and (ensemble.obs_dim, ensemble.act_dim) != (policy.obs_dim, policy.act_dim):
        raise ValueError(f"ensemble dims {(ensemble.obs_dim, ensemble.act_dim)} != policy dims "
                         f"{(policy.obs_dim, policy.act_dim)}")
    metadata = encode_metadata({
        "format_version": FORMAT_VERSION, "task": task_name, "obs_names": list(obs_names),
        "obs_dim": policy.obs_dim, "act_names": list(act_names), "act_dim": policy.act_dim,
        "joint_names": list(joint_names), "action_low": low, "action_high": high,
        "control_rate_hz": float(control_rate_hz), "horizon": int(horizon), "inner_lr": _inner_lr_metadata(inner_lr),
        "gamma": float(gamma), "gae_lambda": float(gae_lambda), "policy_id": pid,
        "dynamics_file": dynamics_name, "learner_iteration": int(iteration), "param_names": names,
        "adapt_file": adapt_name,
    })
    obs_mean, obs_scale = _to_numpy(policy.obs_mean), _to_numpy(policy.obs_scale)
    files = {file_name: build_policy_model(params, obs_mean, obs_scale, metadata).SerializeToString()}
    if with_adapt:
        lr = inner_lr if isinstance(inner_lr, int | float) else {k: _to_numpy(v) for k, v in inner_lr.items()}
        adapt = build_adapt_model(params, obs_mean, obs_scale, inner_lr_arrays(lr, params), metadata)
        files[adapt_name] = adapt.SerializeToString()
    if ensemble is not None:
        dynamics = build_dynamics_model(ensemble, {"task": task_name, "policy_id": pid})
        files[dynamics_name] = dynamics.SerializeToString()
    return PolicyBundle(files, decode_metadata(metadata), pid)


def export_policy(policy: GaussianMLPPolicy, path: str | Path, *, write_adapt: bool = True, **kwargs: Any) -> str:
    """Write :func:`export_bundle` as ``path`` (policy graph) and, beside it, :func:`adapt_file_name` (inner-step
    graph) and, given ``ensemble=``, :func:`dynamics_file_name`; ``write_adapt=False`` leaves the inner-step graph
    out. ``kwargs``: those of :func:`export_bundle`.

    Returns:
        the policy id (sha256 of the float32 parameters, see :func:`mbmpo_core.bundle.policy_id`).
    """
    path = Path(path)
    bundle = export_bundle(policy, file_name=path.name, with_adapt=write_adapt, **kwargs)
    bundle.write(path.parent)
    return bundle.policy_id


def _check_export_args(
    policy: GaussianMLPPolicy,
    params: Mapping[str, np.ndarray],
    obs_names: Sequence[str],
    act_names: Sequence[str],
    low: np.ndarray,
    high: np.ndarray,
    control_rate_hz: float,
) -> None:
    if len(obs_names) != policy.obs_dim:
        raise ValueError(f"{len(obs_names)} obs names for obs_dim {policy.obs_dim}")
    if len(act_names) != policy.act_dim or len(low) != policy.act_dim or len(high) != policy.act_dim:
        raise ValueError(f"act names / action bounds must have act_dim={policy.act_dim} entries")
    if not np.all(low <= high):
        raise ValueError("action_low > action_high")
    if not control_rate_hz > 0 or not math.isfinite(control_rate_hz):
        raise ValueError(f"control_rate_hz must be > 0, got {control_rate_hz}")
    bad = [k for k, v in params.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"non-finite policy parameters {bad}: refusing to export")


# ---------------------------------------------------------------------------------------------- checkpoints
def _resolve_checkpoint(source: str | Path) -> tuple[Path, Path]:
    """``(checkpoint file, config.yaml)`` from a run directory or a checkpoint file inside one."""
    source = Path(source)
    ckpt = source / "checkpoints" / "checkpoint.pt" if source.is_dir() else source
    config = ckpt.parent.parent / "config.yaml"
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}")
    if not config.is_file():
        raise FileNotFoundError(f"no config.yaml for {ckpt} (looked at {config})")
    return ckpt, config


def _task_meta(lookup: TaskMeta | Callable[[str], TaskMeta], name: str) -> TaskMeta:
    """The task object itself, or what the lookup callable returns for ``name``."""
    if hasattr(lookup, "obs_names"):
        return lookup  # type: ignore[return-value]
    assert callable(lookup)
    return lookup(name)


def _hidden_sizes(policy_state: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """Hidden widths from the weights themselves (``l0.weight``, ``l1.weight``, ...: ``[width, in]``)."""
    widths: list[int] = []
    while f"l{len(widths)}.weight" in policy_state:
        widths.append(int(policy_state[f"l{len(widths)}.weight"].shape[0]))
    return tuple(widths)


def _ensemble_from_state(state: Mapping[str, torch.Tensor], obs_dim: int, act_dim: int,
                         activation: str) -> DynamicsEnsemble:
    """The ensemble of a checkpoint's ``state["ensemble"]``; sizes from the saved weights (``[K, in, out]``),
    ignored observations from the saved input normaliser's mask."""
    shapes = [tuple(state[f"weights.{i}"].shape) for i in range(sum(k.startswith("weights.") for k in state))]
    ensemble = DynamicsEnsemble(obs_dim, act_dim, num_models=shapes[0][0], hidden_sizes=[s[2] for s in shapes[:-1]],
                                activation=activation)
    ensemble.load_state_dict(state)
    return ensemble


def export_from_checkpoint(
    run_dir_or_checkpoint: str | Path,
    out_path: str | Path,
    task_spec_lookup: TaskMeta | Callable[[str], TaskMeta],
    with_dynamics: bool = True,
) -> str:
    """Rebuild the meta-policy of a run (``config.yaml`` + ``checkpoints/checkpoint.pt``) and export it.

    Args:
        run_dir_or_checkpoint: a run directory, or its ``checkpoints/checkpoint.pt``.
        out_path: the policy file to write (the adapt graph goes beside it, and the dynamics graph).
        with_dynamics: also export the checkpoint's ensemble (if it holds one).
        task_spec_lookup: the task (an object with :class:`TaskMeta`'s attributes, e.g. ``sim.Task``) or a
            callable mapping the config's task name to one (mbmpo_core must not import ``sim`` itself).

    Returns:
        the policy id. The architecture comes from the saved weights, the inner lr from the checkpoint (learned,
        if it was learned), gamma / GAE lambda / horizon from the config; control rate ``1/dt``.
    """
    ckpt, config_path = _resolve_checkpoint(run_dir_or_checkpoint)
    config = load_config(config_path)
    task = _task_meta(task_spec_lookup, config.task)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    policy = GaussianMLPPolicy(len(task.obs_names), len(task.act_names), _hidden_sizes(state["policy"]))
    policy.load_state_dict(state["policy"])
    alpha = state.get("meta", {}).get("alpha", config.meta.inner_lr)
    ensemble = None
    if with_dynamics and "ensemble" in state:
        ensemble = _ensemble_from_state(state["ensemble"], policy.obs_dim, policy.act_dim, config.ensemble.activation)
    return export_policy(
        policy, out_path, task_name=task.name, obs_names=task.obs_names, act_names=task.act_names,
        joint_names=task.joint_names, action_low=task.action_low, action_high=task.action_high,
        control_rate_hz=1.0 / float(task.dt), horizon=config.loop.horizon, inner_lr=alpha,
        gamma=config.meta.gamma, gae_lambda=config.meta.gae_lambda, iteration=int(state.get("iteration", 0)),
        ensemble=ensemble,
    )
