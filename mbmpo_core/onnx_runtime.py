"""Torch-free runtime for exported MB-MPO policies: what the on-robot controller needs.

Imports numpy, onnx (protobuf only, to read metadata and initializers) and onnxruntime, never torch,
so the controller runs on a robot without PyTorch.

File contract (written by :func:`mbmpo_core.export.export_policy`):

* ``policy.onnx``: inputs ``obs [B, obs_dim]`` and one input per policy parameter, named exactly as
  :meth:`GaussianMLPPolicy.param_names` (``l0.weight``, ..., ``log_std``; the dots are kept). Every
  parameter input has an initializer of the same name holding the trained value, which onnxruntime uses
  when the input is not fed, so the same file evaluates ``theta`` and any adapted ``theta'``. Outputs
  ``action_mean [B, act_dim]`` and ``log_std [act_dim]``. The observation normalizer is baked in as the
  constants ``obs_mean`` / ``obs_scale`` (``(obs - obs_mean) * obs_scale``; scale 0 drops a coordinate).
* ``policy.adapt.onnx`` (metadata ``adapt_file``): the inner step. Inputs: every parameter (same defaults),
  ``obs [N, obs_dim]``, ``act [N, act_dim]``, ``advantages [N]``, ``mask [N]``. Outputs ``grad.<name>``
  (gradient of ``J = sum(mask * A * log pi(act|obs)) / max(sum(mask), 1)``) and ``adapted.<name>`` =
  ``<name> + alpha_<name> * grad.<name>`` with the step sizes baked in. Masked rows must still be finite.
* ``metadata_props``: see :data:`REQUIRED_METADATA`; lists and numbers are JSON, strings are plain.

Also here: numpy versions of :mod:`mbmpo_core.advantages` (returns, linear feature baseline, GAE,
normalization) so the controller computes the advantages of its own episodes the way training does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

FORMAT_VERSION = "1"
SUPPORTED_FORMAT_VERSIONS = ("1",)
OBS_INPUT, ACT_INPUT, ADV_INPUT, MASK_INPUT = "obs", "act", "advantages", "mask"
MEAN_OUTPUT, LOG_STD_OUTPUT = "action_mean", "log_std"
OBS_MEAN_CONST, OBS_SCALE_CONST = "obs_mean", "obs_scale"
GRAD_PREFIX, ADAPTED_PREFIX = "grad.", "adapted."

# Metadata keys whose values are JSON (the others are plain strings).
JSON_METADATA = (
    "obs_names", "obs_dim", "act_names", "act_dim", "joint_names", "action_low", "action_high",
    "control_rate_hz", "horizon", "inner_lr", "gamma", "gae_lambda", "learner_iteration", "param_names",
)
STRING_METADATA = ("format_version", "task", "policy_id", "adapt_file")
REQUIRED_METADATA = STRING_METADATA + JSON_METADATA


class PolicyValidationError(ValueError):
    """A policy file that must not be run; the message is one line."""


# ---------------------------------------------------------------------------------------------- identity
def policy_id(params: Mapping[str, np.ndarray], names: Sequence[str]) -> str:
    """sha256 hex digest of the parameters' float32 little-endian bytes, concatenated in ``names`` order.

    Torch callers pass ``{k: v.detach().cpu().numpy()}``; the normalizer is not part of the hash.
    """
    digest = hashlib.sha256()
    for name in names:
        digest.update(np.ascontiguousarray(params[name], dtype="<f4").tobytes())
    return digest.hexdigest()


def encode_metadata(values: Mapping[str, Any]) -> dict[str, str]:
    """Metadata values -> strings (JSON for :data:`JSON_METADATA` keys, ``str`` otherwise)."""
    return {k: json.dumps(_plain(v)) if k in JSON_METADATA else str(v) for k, v in values.items()}


def decode_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of :func:`encode_metadata`; unknown keys stay strings. Raises ``ValueError`` on bad JSON."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in JSON_METADATA:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"metadata {key!r} is not JSON: {exc.msg}") from None
        else:
            out[key] = value
    return out


def _plain(value: Any) -> Any:
    """numpy scalars/arrays (also inside dicts/lists) -> JSON-serialisable Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def inner_lr_arrays(inner_lr: Any, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Step sizes as float32 arrays shaped like ``params`` (a float broadcasts; a dict gives per-entry lrs)."""
    if isinstance(inner_lr, int | float):
        return {k: np.full(v.shape, inner_lr, dtype=np.float32) for k, v in params.items()}
    return {k: np.broadcast_to(np.asarray(inner_lr[k], dtype=np.float32), v.shape).copy() for k, v in params.items()}


# ---------------------------------------------------------------------------------------------- sessions
def make_session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    """CPU session on one intra-op thread (the controller owns the other cores); warnings silenced."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    # Overridable initializers trigger a "cannot constant-fold" warning on every load: expected here.
    opts.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def adapt_path(policy_path: str | Path, adapt_file: str) -> Path | None:
    """Where the adapt graph named in the metadata lives (beside the policy file); None if none."""
    return Path(policy_path).with_name(adapt_file) if adapt_file else None


def read_initializers(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Initializer values for ``names`` (KeyError if one is missing)."""
    found = {init.name: init for init in model.graph.initializer}
    return {name: np.array(numpy_helper.to_array(found[name])) for name in names}  # writable copies


class OnnxPolicy:
    """An exported policy (and its inner step, if the adapt file is present) on onnxruntime.

    Attributes:
        metadata: decoded ``metadata_props`` (lists and numbers parsed from JSON).
        param_names: parameter names in the fixed export order.
        params: trained parameters (float32 numpy arrays) read from the initializers.
        obs_mean, obs_scale: the normalizer baked into the graph, ``[obs_dim]``.
        can_adapt: True if the adapt graph was found.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        model = onnx.load(str(self.path))
        self.metadata: dict[str, Any] = decode_metadata({p.key: p.value for p in model.metadata_props})
        self.param_names: list[str] = list(self.metadata["param_names"])
        self.params: dict[str, np.ndarray] = read_initializers(model, self.param_names)
        norm = read_initializers(model, [OBS_MEAN_CONST, OBS_SCALE_CONST])
        self.obs_mean, self.obs_scale = norm[OBS_MEAN_CONST], norm[OBS_SCALE_CONST]
        self.obs_dim, self.act_dim = int(self.metadata["obs_dim"]), int(self.metadata["act_dim"])
        self._session = make_session(model)
        self._adapt_session: ort.InferenceSession | None = None
        extra = adapt_path(self.path, str(self.metadata.get("adapt_file", "")))
        if extra is not None and extra.is_file():
            self._adapt_session = make_session(extra)

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
            raise RuntimeError(f"{self.path}: no adapt graph (metadata adapt_file={self.metadata.get('adapt_file')!r})")
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
def validate_policy_file(
    path: str | Path,
    expected_task: str | None = None,
    expected_obs_names: Sequence[str] | None = None,
    expected_joint_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check that ``path`` is a complete, consistent, runnable policy file; return its decoded metadata.

    Checks: ONNX loads and passes the checker; format version supported; metadata complete and consistent
    with the graph (names, dims, bounds, parameter shapes, policy id); parameters finite; inference on zeros
    and on a batch at normalized scale is finite with the right shapes; the adapt graph (if named) loads,
    belongs to the same parameters and gives finite gradients; names match the expectations.

    Raises:
        PolicyValidationError: with a one-line reason.
    """
    path = Path(path)
    model = _load_model(path)
    try:
        meta = _check_metadata(path, model)
        _check_graph(path, model, meta)
        _check_expectations(path, meta, expected_task, expected_obs_names, expected_joint_names)
        _check_inference(path, meta)
    except PolicyValidationError:
        raise
    except Exception as exc:  # e.g. metadata of the wrong JSON type: still a bad file, never a crash
        raise _fail(path, f"malformed policy file ({type(exc).__name__}: {str(exc)[:200]})") from None
    return meta


def read_policy_bundle(path: str | Path, expected_task: str | None = None) -> tuple[dict[str, bytes], str]:
    """Validate ``path`` and read the files a policy is shipped as: ``({file name: bytes}, policy id)``, the
    policy graph first, then its inner-step graph if it names one (the message of ``/mbmpo/policy``).

    Raises:
        PolicyValidationError: with a one-line reason.
    """
    path = Path(path)
    meta = validate_policy_file(path, expected_task=expected_task)
    files = {path.name: path.read_bytes()}
    if meta["adapt_file"]:
        files[str(meta["adapt_file"])] = (path.parent / str(meta["adapt_file"])).read_bytes()
    return files, str(meta["policy_id"])


def _fail(path: Path, reason: str) -> PolicyValidationError:
    return PolicyValidationError(f"{path.name}: {reason}".replace("\n", " "))


def _load_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise _fail(path, "no such file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf/checker raise many types; all mean "not a usable model"
        raise _fail(path, f"not a valid ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None
    return model


def _check_metadata(path: Path, model: onnx.ModelProto) -> dict[str, Any]:
    raw = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in REQUIRED_METADATA if k not in raw]
    if missing:
        raise _fail(path, f"metadata is missing {missing}")
    if raw["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
        raise _fail(path, f"format_version {raw['format_version']!r} not supported ({SUPPORTED_FORMAT_VERSIONS})")
    try:
        meta = decode_metadata(raw)
    except ValueError as exc:
        raise _fail(path, str(exc)) from None
    obs_dim, act_dim = meta["obs_dim"], meta["act_dim"]
    checks = [
        (isinstance(obs_dim, int) and obs_dim >= 1 and len(meta["obs_names"]) == obs_dim, "obs_dim != len(obs_names)"),
        (isinstance(act_dim, int) and act_dim >= 1 and len(meta["act_names"]) == act_dim, "act_dim != len(act_names)"),
        (len(meta["action_low"]) == act_dim and len(meta["action_high"]) == act_dim, "action bounds need act_dim"),
        (bool(np.all(np.asarray(meta["action_low"], float) <= np.asarray(meta["action_high"], float))),
         "action_low > action_high"),
        (isinstance(meta["control_rate_hz"], int | float) and meta["control_rate_hz"] > 0, "control_rate_hz <= 0"),
        (isinstance(meta["param_names"], list) and len(meta["param_names"]) >= 3, "param_names malformed"),
    ]
    for ok, reason in checks:
        if not ok:
            raise _fail(path, f"inconsistent metadata: {reason}")
    return meta


def _check_graph(path: Path, model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    names: list[str] = meta["param_names"]
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [OBS_INPUT, *names]:
        raise _fail(path, f"graph inputs {inputs} != ['obs', *param_names]")
    if outputs != [MEAN_OUTPUT, LOG_STD_OUTPUT]:
        raise _fail(path, f"graph outputs {outputs} != ['action_mean', 'log_std']")
    obs_shape = model.graph.input[0].type.tensor_type.shape.dim
    if len(obs_shape) != 2 or obs_shape[1].dim_value != meta["obs_dim"]:
        raise _fail(path, f"obs input is not [B, {meta['obs_dim']}]")
    try:
        params = read_initializers(model, names)
        norm = read_initializers(model, [OBS_MEAN_CONST, OBS_SCALE_CONST])
    except KeyError as exc:
        raise _fail(path, f"missing initializer {exc}") from None
    if params["log_std"].shape != (meta["act_dim"],):
        raise _fail(path, f"log_std has shape {params['log_std'].shape}, act_dim is {meta['act_dim']}")
    first, last = params[names[0]], params[names[-3]]
    if first.ndim != 2 or first.shape[1] != meta["obs_dim"] or last.ndim != 2 or last.shape[0] != meta["act_dim"]:
        raise _fail(path, "layer shapes do not match obs_dim/act_dim")
    for name, value in {**params, **norm}.items():
        if value.dtype != np.float32 or not np.all(np.isfinite(value)):
            raise _fail(path, f"parameter {name!r} is not finite float32")
    if not np.all(norm[OBS_SCALE_CONST] >= 0) or not np.any(norm[OBS_SCALE_CONST] > 0):
        raise _fail(path, "obs_scale must be >= 0 with at least one observed coordinate")
    if policy_id(params, names) != meta["policy_id"]:
        raise _fail(path, "policy_id does not match the parameters")


def _check_expectations(
    path: Path,
    meta: dict[str, Any],
    task: str | None,
    obs_names: Sequence[str] | None,
    joint_names: Sequence[str] | None,
) -> None:
    if task is not None and meta["task"] != task:
        raise _fail(path, f"task {meta['task']!r}, expected {task!r}")
    if obs_names is not None and list(meta["obs_names"]) != list(obs_names):
        raise _fail(path, f"obs_names {meta['obs_names']} != expected {list(obs_names)}")
    if joint_names is not None and list(meta["joint_names"]) != list(joint_names):
        raise _fail(path, f"joint_names {meta['joint_names']} != expected {list(joint_names)}")


def _check_inference(path: Path, meta: dict[str, Any]) -> None:
    try:
        policy = OnnxPolicy(path)
    except Exception as exc:
        raise _fail(path, f"onnxruntime cannot load it ({type(exc).__name__}: {str(exc)[:200]})") from None
    rng = np.random.default_rng(0)
    zeros = np.zeros((1, policy.obs_dim), np.float32)
    # Observations at the training scale: the normalizer maps them to ~N(0, 1).
    std = np.divide(1.0, policy.obs_scale, out=np.ones_like(policy.obs_scale), where=policy.obs_scale > 0)
    typical = (policy.obs_mean + std * rng.standard_normal((8, policy.obs_dim))).astype(np.float32)
    for obs in (zeros, typical):
        try:
            mean, log_std = policy.distribution(obs)
        except Exception as exc:
            raise _fail(path, f"inference failed ({type(exc).__name__}: {str(exc)[:200]})") from None
        if mean.shape != (obs.shape[0], policy.act_dim) or log_std.shape != (policy.act_dim,):
            raise _fail(path, f"output shapes {mean.shape}, {log_std.shape} do not match act_dim")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(log_std))):
            raise _fail(path, "inference gives non-finite actions")
    if meta["adapt_file"]:
        _check_adapt(path, policy, typical, rng)


def _check_adapt(path: Path, policy: OnnxPolicy, obs: np.ndarray, rng: np.random.Generator) -> None:
    extra = adapt_path(path, policy.metadata["adapt_file"])
    assert extra is not None
    if not policy.can_adapt:
        raise _fail(path, f"adapt file {extra.name} not found")
    adapt_meta = {p.key: p.value for p in onnx.load(str(extra)).metadata_props}
    if adapt_meta.get("policy_id") != policy.policy_id:
        raise _fail(path, f"adapt file {extra.name} belongs to another policy")
    act = policy.act(obs, deterministic=False, rng=rng)
    try:
        grads = policy.gradient(None, obs, act, rng.standard_normal(len(obs)))
    except Exception as exc:
        raise _fail(path, f"adapt graph failed ({type(exc).__name__}: {str(exc)[:200]})") from None
    for name, g in grads.items():
        if g.shape != policy.params[name].shape or not np.all(np.isfinite(g)):
            raise _fail(path, f"adapt graph gives a bad gradient for {name!r}")


# ---------------------------------------------------------------------------------------------- advantages
def discounted_returns(rewards: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """``R_t = m_t * (r_t + gamma * R_{t+1})``, no bootstrap after the last step: ``[..., N, H]``."""
    out = np.zeros_like(rewards)
    running = np.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = mask[..., t] * (rewards[..., t] + gamma * running)
        out[..., t] = running
    return out


def gae(rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """GAE with ``delta_t = r_t + gamma * m_{t+1} V_{t+1} - V_t``, truncated at ``H``: ``[..., N, H]``."""
    out = np.zeros_like(rewards)
    next_value = np.zeros_like(rewards[..., 0])
    next_mask = np.zeros_like(rewards[..., 0])
    next_adv = np.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        m = mask[..., t]
        delta = rewards[..., t] + gamma * next_mask * next_value - values[..., t]
        next_adv = m * (delta + gamma * lam * next_adv)
        out[..., t] = next_adv
        next_value, next_mask = values[..., t], m
    return out


def normalize_advantages(adv: np.ndarray, mask: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Zero mean, unit (biased) std over the valid steps of each ``[N, H]`` batch of episodes: ``[..., N, H]``."""
    count = np.maximum(mask.sum(axis=(-2, -1), keepdims=True), 1.0)
    mean = (adv * mask).sum(axis=(-2, -1), keepdims=True) / count
    std = np.sqrt(((adv - mean) ** 2 * mask).sum(axis=(-2, -1), keepdims=True) / count)
    return (adv - mean) / (std + eps) * mask


class LinearFeatureBaseline:
    """numpy twin of :class:`mbmpo_core.advantages.LinearFeatureBaseline` (same features, same ridge fallback).

    Features ``[o, o**2, t, t**2, t**3, 1]`` with ``o = clip(obs, +-obs_clip)``, ``t = step / time_scale``;
    ridge regression in float64, the coefficient x10 per retry while Cholesky fails, the solution is
    non-finite or ``cond > max_cond``; pseudo-inverse as the last resort. One fit per leading index.
    """

    def __init__(
        self,
        reg_coeff: float = 1e-5,
        obs_clip: float = 10.0,
        time_scale: float = 100.0,
        max_reg_tries: int = 5,
        max_cond: float = 1e14,
    ) -> None:
        self.reg_coeff, self.obs_clip, self.time_scale = reg_coeff, obs_clip, time_scale
        self.max_reg_tries, self.max_cond = max_reg_tries, max_cond
        self.coeffs: np.ndarray | None = None  # [..., F]
        self.last_reg: np.ndarray | None = None  # [...]

    def features(self, obs: np.ndarray) -> np.ndarray:
        """``obs [..., N, H, obs_dim] -> [..., N, H, 2 * obs_dim + 4]`` (in ``obs.dtype``)."""
        o = np.clip(obs, -self.obs_clip, self.obs_clip)
        horizon = obs.shape[-2]
        t = np.arange(horizon, dtype=obs.dtype) / obs.dtype.type(self.time_scale)
        t = np.broadcast_to(t.reshape(horizon, 1), (*obs.shape[:-1], 1))
        return np.concatenate([o, o * o, t, t * t, t * t * t, np.ones_like(t)], axis=-1)

    def fit(self, obs: np.ndarray, returns: np.ndarray, mask: np.ndarray) -> None:
        """Ridge-regress ``returns [..., N, H]`` on the features of the valid steps."""
        x = self.features(obs).astype(np.float64) * mask.astype(np.float64)[..., None]
        x = x.reshape(*x.shape[:-3], -1, x.shape[-1])  # [..., N*H, F]
        y = (returns * mask).astype(np.float64).reshape(*returns.shape[:-2], -1, 1)
        gram = np.swapaxes(x, -1, -2) @ x
        rhs = np.swapaxes(x, -1, -2) @ y
        lead = gram.shape[:-2]
        flat_g, flat_b = gram.reshape(-1, *gram.shape[-2:]), rhs.reshape(-1, *rhs.shape[-2:])
        solved = [self._ridge_solve(g, b) for g, b in zip(flat_g, flat_b, strict=True)]
        self.coeffs = np.stack([w[:, 0] for w, _ in solved]).reshape(*lead, -1).astype(obs.dtype)
        self.last_reg = np.array([r for _, r in solved]).reshape(lead)

    def _ridge_solve(self, gram: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, float]:
        eye = np.eye(gram.shape[-1])
        for k in range(self.max_reg_tries):
            reg = self.reg_coeff * 10.0**k
            a = gram + reg * eye
            try:
                chol = np.linalg.cholesky(a)
            except np.linalg.LinAlgError:
                continue
            w = np.linalg.solve(chol.T, np.linalg.solve(chol, rhs))
            eig = np.linalg.eigvalsh(a)
            cond = eig[-1] / max(eig[0], 1e-300)
            if np.all(np.isfinite(w)) and cond <= self.max_cond:
                return w, reg
        reg = self.reg_coeff * 10.0 ** (self.max_reg_tries - 1)
        return np.linalg.pinv(gram + reg * eye) @ rhs, reg

    def predict(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Values ``[..., N, H]`` for ``obs [..., N, H, obs_dim]`` (0 where masked; 0 before any fit)."""
        if self.coeffs is None:
            values = np.zeros(obs.shape[:-1], dtype=obs.dtype)
        else:
            coeffs = self.coeffs.reshape(*self.coeffs.shape[:-1], 1, 1, -1)
            values = (self.features(obs) * coeffs).sum(-1)
        return values if mask is None else values * mask


def compute_advantages(
    rewards: np.ndarray,
    obs: np.ndarray,
    mask: np.ndarray,
    gamma: float = 0.99,
    lam: float = 1.0,
    baseline: LinearFeatureBaseline | None = None,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns -> baseline fit -> GAE -> normalization, as in training.

    Args:
        rewards, mask: ``[..., N, H]`` (episodes zero-padded to ``H`` with mask 0); obs: ``[..., N, H, obs_dim]``.

    Returns:
        ``(advantages, returns)``, both ``[..., N, H]``.
    """
    baseline = LinearFeatureBaseline() if baseline is None else baseline
    returns = discounted_returns(rewards, mask, gamma)
    baseline.fit(obs, returns, mask)
    adv = gae(rewards, baseline.predict(obs, mask), mask, gamma, lam)
    return (normalize_advantages(adv, mask) if normalize else adv), returns
