"""Torch-free runtime for exported MB-MPO policies: what the on-robot controller needs.

Imports numpy, onnx (protobuf only, to read metadata and initializers) and onnxruntime, never torch,
so the controller runs on a robot without PyTorch. Everything works on a :class:`~mbmpo_core.bundle.PolicyBundle`
in memory (the file contract is in :mod:`mbmpo_core.bundle`): :func:`validate_bundle` checks one and returns it
loaded as an :class:`OnnxPolicy` (with the bundle's dynamics ensemble, :mod:`mbmpo_core.onnx_dynamics`, if it
carries one); :func:`validate_policy_file` and :func:`read_policy_bundle` are the disk side.
The advantages of the controller's own episodes come from :mod:`mbmpo_core.advantages`, as in training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mbmpo_core.bundle import (
    ACT_INPUT,
    ADAPTED_PREFIX,
    ADV_INPUT,
    GRAD_PREFIX,
    LOG_STD_OUTPUT,
    MASK_INPUT,
    MEAN_OUTPUT,
    OBS_INPUT,
    OBS_MEAN_CONST,
    OBS_SCALE_CONST,
    REQUIRED_METADATA,
    SUPPORTED_FORMAT_VERSIONS,
    PolicyBundle,
    PolicyValidationError,
    decode_metadata,
    is_plain_file_name,
    policy_id,
    same_metadata,
)
from mbmpo_core.onnx_dynamics import OnnxEnsemble, validate_dynamics
from mbmpo_core.onnx_session import make_session, read_initializers

__all__ = [
    "OnnxPolicy", "PolicyValidationError", "make_session", "read_initializers", "read_policy_bundle",
    "validate_bundle", "validate_policy_file",
]


class OnnxPolicy:
    """An exported policy (and its inner step, if the bundle holds the adapt graph) on onnxruntime.

    Built from a :class:`PolicyBundle` in memory (:meth:`from_bundle`; :func:`validate_bundle` checks one and
    returns it loaded) or from a policy file (``OnnxPolicy(path)``, read with :meth:`PolicyBundle.from_file`).

    Attributes:
        bundle: the files this policy was loaded from (e.g. to publish it again).
        metadata: decoded ``metadata_props`` (lists and numbers parsed from JSON).
        param_names: parameter names in the fixed export order.
        params: trained parameters (float32 numpy arrays) read from the initializers.
        obs_mean, obs_scale: the normalizer baked into the graph, ``[obs_dim]``.
        can_adapt: True if the adapt graph is in the bundle.
        dynamics: the bundle's dynamics ensemble as :func:`validate_bundle` checked and loaded it; None if the
            bundle carries none or the policy was not loaded through :func:`validate_bundle` (then
            :meth:`OnnxEnsemble.from_bundle` of :attr:`bundle` loads it).
    """

    def __init__(self, source: PolicyBundle | str | Path, model: onnx.ModelProto | None = None) -> None:
        """``model``: the bundle's policy graph if the caller has parsed it already (validation has)."""
        self.bundle = source if isinstance(source, PolicyBundle) else PolicyBundle.from_file(source)
        model = onnx.load_from_string(self.bundle.policy_bytes) if model is None else model
        self.metadata: dict[str, Any] = dict(self.bundle.metadata)
        self.param_names: list[str] = list(self.metadata["param_names"])
        self.params: dict[str, np.ndarray] = read_initializers(model, self.param_names)
        norm = read_initializers(model, [OBS_MEAN_CONST, OBS_SCALE_CONST])
        self.obs_mean, self.obs_scale = norm[OBS_MEAN_CONST], norm[OBS_SCALE_CONST]
        self.obs_dim, self.act_dim = int(self.metadata["obs_dim"]), int(self.metadata["act_dim"])
        self._session = make_session(self.bundle.policy_bytes)
        self.dynamics: OnnxEnsemble | None = None
        adapt = self.bundle.adapt_bytes
        try:
            self._adapt_session = None if adapt is None else make_session(adapt)
        except Exception as exc:  # name the file that is bad: the policy graph loaded fine
            raise _fail(self.bundle.adapt_file, f"onnxruntime cannot load it ({type(exc).__name__}: "
                                                f"{str(exc)[:200]})") from None

    @classmethod
    def from_bundle(cls, bundle: PolicyBundle) -> OnnxPolicy:
        """Both onnxruntime sessions from the bundle's bytes (nothing touches the disk); no checks: see
        :func:`validate_bundle` for a bundle from elsewhere."""
        return cls(bundle)

    @property
    def policy_id(self) -> str:
        return str(self.metadata["policy_id"])

    @property
    def can_adapt(self) -> bool:
        return self._adapt_session is not None

    def _param_feed(self, params: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """Overrides for the parameter inputs (a partial dict is fine: the rest use the defaults)."""
        if params is None:
            return {}
        unknown = set(params) - set(self.param_names)
        if unknown:
            raise KeyError(f"unknown parameter names {sorted(unknown)}")
        return {k: np.ascontiguousarray(v, dtype=np.float32).reshape(self.params[k].shape) for k, v in params.items()}

    def distribution(
        self, obs: np.ndarray, params: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(mean [B, act_dim], log_std [act_dim])`` for ``obs [B, obs_dim]``."""
        feed = self._param_feed(params)
        feed[OBS_INPUT] = np.ascontiguousarray(obs, dtype=np.float32).reshape(-1, self.obs_dim)
        mean, log_std = self._session.run([MEAN_OUTPUT, LOG_STD_OUTPUT], feed)
        return mean, log_std

    def act(
        self,
        obs: np.ndarray,
        params: Mapping[str, np.ndarray] | None = None,
        deterministic: bool = True,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Raw (unclipped) action ``[B, act_dim]`` for ``obs [B, obs_dim]`` (``[act_dim]`` for ``[obs_dim]``).

        ``deterministic`` gives the mean; otherwise ``mean + exp(log_std) * N(0, 1)`` drawn from ``rng``.
        Clipping to the action bounds is the controller's job (it must record the raw action for adaptation).
        """
        single = np.ndim(obs) == 1
        mean, log_std = self.distribution(obs, params)
        if not deterministic:
            rng = np.random.default_rng() if rng is None else rng
            mean = mean + np.exp(log_std) * rng.standard_normal(mean.shape).astype(np.float32)
        return mean[0] if single else mean

    def _run_adapt(
        self,
        params: Mapping[str, np.ndarray] | None,
        obs: np.ndarray,
        act: np.ndarray,
        advantages: np.ndarray,
        mask: np.ndarray | None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if self._adapt_session is None:
            raise RuntimeError(f"{self.bundle.name}: no adapt graph (adapt_file={self.bundle.adapt_file!r})")
        obs2 = np.ascontiguousarray(obs, dtype=np.float32).reshape(-1, self.obs_dim)
        n = obs2.shape[0]
        feed = self._param_feed(params)
        feed[OBS_INPUT] = obs2
        feed[ACT_INPUT] = np.ascontiguousarray(act, dtype=np.float32).reshape(n, self.act_dim)
        feed[ADV_INPUT] = np.ascontiguousarray(advantages, dtype=np.float32).reshape(n)
        feed[MASK_INPUT] = np.ones(n, np.float32) if mask is None else np.asarray(mask, np.float32).reshape(n)
        names = [GRAD_PREFIX + k for k in self.param_names] + [ADAPTED_PREFIX + k for k in self.param_names]
        out = self._adapt_session.run(names, feed)
        p = len(self.param_names)
        return dict(zip(self.param_names, out[:p], strict=True)), dict(zip(self.param_names, out[p:], strict=True))

    def gradient(
        self,
        params: Mapping[str, np.ndarray] | None,
        obs: np.ndarray,
        act: np.ndarray,
        advantages: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """``grad J`` per parameter at ``params`` (None: the trained ones).

        Args:
            obs: ``[N, obs_dim]``; act: ``[N, act_dim]`` raw sampled actions; advantages, mask: ``[N]``
            (flatten episodes ``[E, H] -> [E * H]``; mask None means every row is valid).
        """
        return self._run_adapt(params, obs, act, advantages, mask)[0]

    def adapt(
        self,
        params: Mapping[str, np.ndarray] | None,
        obs: np.ndarray,
        act: np.ndarray,
        advantages: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """One inner step ``params + alpha * grad J`` (same arguments as :meth:`gradient`)."""
        return self._run_adapt(params, obs, act, advantages, mask)[1]


# ---------------------------------------------------------------------------------------------- validation
def validate_bundle(
    bundle: PolicyBundle,
    expected_task: str | None = None,
    expected_obs_names: Sequence[str] | None = None,
    expected_joint_names: Sequence[str] | None = None,
    adapt: bool = True,
) -> OnnxPolicy:
    """Check that ``bundle`` is a complete, consistent, runnable policy; return it loaded (parsed once).
    ``adapt`` False: the inner-step and dynamics graphs are neither checked nor loaded (a user who will not adapt).

    Checks: the policy graph parses and passes the ONNX checker; format version supported; metadata complete,
    as the bundle states it, and consistent with the graph (names, dims, bounds, parameter shapes, policy id);
    parameters finite; inference on zeros and on a batch at normalized scale is finite with the right shapes;
    the adapt graph (if named) is in the bundle, belongs to the same parameters and gives finite gradients;
    the dynamics graph (if named) passes :func:`mbmpo_core.onnx_dynamics.validate_dynamics` and is attached as
    ``policy.dynamics``; names match the expectations. All in memory.

    Raises:
        PolicyValidationError: with a one-line reason, starting with the policy file's name.
    """
    name = bundle.name
    model = _load_model(name, bundle.policy_bytes)
    try:
        meta = _check_metadata(name, model, bundle)
        _check_graph(name, model, meta)
        _check_expectations(name, meta, expected_task, expected_obs_names, expected_joint_names)
        if not adapt:
            bundle = PolicyBundle({name: bundle.policy_bytes}, bundle.metadata, bundle.policy_id)
        return _check_inference(bundle, model, adapt)
    except PolicyValidationError:
        raise
    except Exception as exc:  # e.g. metadata of the wrong JSON type: still a bad policy, never a crash
        raise _fail(name, f"malformed policy file ({type(exc).__name__}: {str(exc)[:200]})") from None


def validate_policy_file(
    path: str | Path,
    expected_task: str | None = None,
    expected_obs_names: Sequence[str] | None = None,
    expected_joint_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """:func:`validate_bundle` of the policy file ``path`` and the adapt graph beside it; returns the metadata.

    Raises:
        PolicyValidationError: with a one-line reason.
    """
    bundle = PolicyBundle.from_file(path)
    return validate_bundle(bundle, expected_task, expected_obs_names, expected_joint_names).metadata


def read_policy_bundle(path: str | Path, expected_task: str | None = None) -> PolicyBundle:
    """The validated bundle of the policy file ``path`` (the policy graph first, then the inner-step graph it
    names): what ``/mbmpo/policy`` carries.

    Raises:
        PolicyValidationError: with a one-line reason.
    """
    bundle = PolicyBundle.from_file(path)
    validate_bundle(bundle, expected_task=expected_task)
    return bundle


def _fail(name: str, reason: str) -> PolicyValidationError:
    return PolicyValidationError(f"{name}: {reason}".replace("\n", " "))


def _load_model(name: str, data: bytes) -> onnx.ModelProto:
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf/checker raise many types; all mean "not a usable model"
        raise _fail(name, f"not a valid ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None
    return model


def _check_metadata(name: str, model: onnx.ModelProto, bundle: PolicyBundle) -> dict[str, Any]:
    raw = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in REQUIRED_METADATA if k not in raw]
    if missing:
        raise _fail(name, f"metadata is missing {missing}")
    if raw["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
        raise _fail(name, f"format_version {raw['format_version']!r} not supported ({SUPPORTED_FORMAT_VERSIONS})")
    try:
        meta = decode_metadata(raw)
    except ValueError as exc:
        raise _fail(name, str(exc)) from None
    if not same_metadata(meta, bundle.metadata) or bundle.policy_id != meta["policy_id"]:
        raise _fail(name, "the bundle's metadata or policy_id differs from its policy graph's")
    obs_dim, act_dim = meta["obs_dim"], meta["act_dim"]
    checks = [
        (isinstance(obs_dim, int) and obs_dim >= 1 and len(meta["obs_names"]) == obs_dim, "obs_dim != len(obs_names)"),
        (isinstance(act_dim, int) and act_dim >= 1 and len(meta["act_names"]) == act_dim, "act_dim != len(act_names)"),
        (len(meta["action_low"]) == act_dim and len(meta["action_high"]) == act_dim, "action bounds need act_dim"),
        (bool(np.all(np.asarray(meta["action_low"], float) <= np.asarray(meta["action_high"], float))),
         "action_low > action_high"),
        (isinstance(meta["control_rate_hz"], int | float) and meta["control_rate_hz"] > 0, "control_rate_hz <= 0"),
        (isinstance(meta["param_names"], list) and len(meta["param_names"]) >= 3, "param_names malformed"),
        (meta["adapt_file"] == "" or (is_plain_file_name(meta["adapt_file"]) and meta["adapt_file"] != name),
         "adapt_file is not a plain '<name>.onnx' beside the policy"),
        (bundle.dynamics_file == "" or (is_plain_file_name(bundle.dynamics_file)
                                        and bundle.dynamics_file not in (name, meta["adapt_file"])),
         "dynamics_file is not a plain '<name>.onnx' of its own beside the policy"),
    ]
    for ok, reason in checks:
        if not ok:
            raise _fail(name, f"inconsistent metadata: {reason}")
    return meta


def _check_graph(name: str, model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    names: list[str] = meta["param_names"]
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [OBS_INPUT, *names]:
        raise _fail(name, f"graph inputs {inputs} != ['obs', *param_names]")
    if outputs != [MEAN_OUTPUT, LOG_STD_OUTPUT]:
        raise _fail(name, f"graph outputs {outputs} != ['action_mean', 'log_std']")
    obs_shape = model.graph.input[0].type.tensor_type.shape.dim
    if len(obs_shape) != 2 or obs_shape[1].dim_value != meta["obs_dim"]:
        raise _fail(name, f"obs input is not [B, {meta['obs_dim']}]")
    try:
        params = read_initializers(model, names)
        norm = read_initializers(model, [OBS_MEAN_CONST, OBS_SCALE_CONST])
    except KeyError as exc:
        raise _fail(name, f"missing initializer {exc}") from None
    if params["log_std"].shape != (meta["act_dim"],):
        raise _fail(name, f"log_std has shape {params['log_std'].shape}, act_dim is {meta['act_dim']}")
    first, last = params[names[0]], params[names[-3]]
    if first.ndim != 2 or first.shape[1] != meta["obs_dim"] or last.ndim != 2 or last.shape[0] != meta["act_dim"]:
        raise _fail(name, "layer shapes do not match obs_dim/act_dim")
    for key, value in {**params, **norm}.items():
        if value.dtype != np.float32 or not np.all(np.isfinite(value)):
            raise _fail(name, f"parameter {key!r} is not finite float32")
    if not np.all(norm[OBS_SCALE_CONST] >= 0) or not np.any(norm[OBS_SCALE_CONST] > 0):
        raise _fail(name, "obs_scale must be >= 0 with at least one observed coordinate")
    if policy_id(params, names) != meta["policy_id"]:
        raise _fail(name, "policy_id does not match the parameters")


def _check_expectations(
    name: str,
    meta: dict[str, Any],
    task: str | None,
    obs_names: Sequence[str] | None,
    joint_names: Sequence[str] | None,
) -> None:
    if task is not None and meta["task"] != task:
        raise _fail(name, f"task {meta['task']!r}, expected {task!r}")
    if obs_names is not None and list(meta["obs_names"]) != list(obs_names):
        raise _fail(name, f"obs_names {meta['obs_names']} != expected {list(obs_names)}")
    if joint_names is not None and list(meta["joint_names"]) != list(joint_names):
        raise _fail(name, f"joint_names {meta['joint_names']} != expected {list(joint_names)}")


def _check_inference(bundle: PolicyBundle, model: onnx.ModelProto, adapt: bool = True) -> OnnxPolicy:
    """Load the policy (the one object the caller keeps) and run it on zeros and on typical observations."""
    name = bundle.name
    try:
        policy = OnnxPolicy(bundle, model)
    except PolicyValidationError:
        raise
    except Exception as exc:
        raise _fail(name, f"onnxruntime cannot load it ({type(exc).__name__}: {str(exc)[:200]})") from None
    rng = np.random.default_rng(0)
    zeros = np.zeros((1, policy.obs_dim), np.float32)
    # Observations at the training scale: the normalizer maps them to ~N(0, 1).
    std = np.divide(1.0, policy.obs_scale, out=np.ones_like(policy.obs_scale), where=policy.obs_scale > 0)
    typical = (policy.obs_mean + std * rng.standard_normal((8, policy.obs_dim))).astype(np.float32)
    for obs in (zeros, typical):
        try:
            mean, log_std = policy.distribution(obs)
        except Exception as exc:
            raise _fail(name, f"inference failed ({type(exc).__name__}: {str(exc)[:200]})") from None
        if mean.shape != (obs.shape[0], policy.act_dim) or log_std.shape != (policy.act_dim,):
            raise _fail(name, f"output shapes {mean.shape}, {log_std.shape} do not match act_dim")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(log_std))):
            raise _fail(name, "inference gives non-finite actions")
    if bundle.adapt_file and adapt:
        _check_adapt(bundle, policy, typical, rng)
    if bundle.dynamics_file and adapt:
        policy.dynamics = validate_dynamics(bundle, policy.metadata, typical)
    return policy


def _check_adapt(bundle: PolicyBundle, policy: OnnxPolicy, obs: np.ndarray, rng: np.random.Generator) -> None:
    name, adapt = bundle.adapt_file, bundle.adapt_bytes  # errors name the adapt file: it is the bad one
    if adapt is None or not policy.can_adapt:
        raise _fail(bundle.name, f"adapt file {bundle.adapt_file} not found")
    try:
        adapt_meta = {p.key: p.value for p in onnx.load_from_string(adapt).metadata_props}
    except Exception as exc:  # onnxruntime loaded it, so this is unlikely; still one line
        raise _fail(name, f"not ONNX ({type(exc).__name__})") from None
    if adapt_meta.get("policy_id") != policy.policy_id:
        raise _fail(name, f"belongs to another policy than {bundle.name}")
    act = policy.act(obs, deterministic=False, rng=rng)
    try:
        grads = policy.gradient(None, obs, act, rng.standard_normal(len(obs)))
    except Exception as exc:
        raise _fail(name, f"adapt graph failed ({type(exc).__name__}: {str(exc)[:200]})") from None
    for key, g in grads.items():
        if g.shape != policy.params[key].shape or not np.all(np.isfinite(g)):
            raise _fail(name, f"adapt graph gives a bad gradient for {key!r}")
