"""The exported policy as one value: :class:`PolicyBundle`, its ONNX files by name, their metadata, its id.

The exporter (:mod:`mbmpo_core.export`) builds a bundle in memory, the codec (:mod:`mbmpo_ros.codec`) carries
it on ``/mbmpo/policy``, the runtime (:mod:`mbmpo_core.onnx_runtime`) validates and loads it from memory;
:meth:`PolicyBundle.from_dir` / :meth:`PolicyBundle.write` are the disk side. Also here: the contract both
the writer and the reader need (graph input/output names, metadata keys and their encoding, the policy id).
numpy, json and hashlib only; ``onnx`` (protobuf) is imported when a bundle reads metadata from its bytes.

File contract:

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
* ``policy.dynamics.onnx`` (metadata ``dynamics_file``; optional: "" or a missing key means none, and bundles
  written before it existed stay valid): the dynamics ensemble of K members, normalisers inside. Inputs
  ``obs [B, obs_dim]``, ``act [B, act_dim]`` (the executed, clipped action) and the last layer as overridable
  inputs with the trained values as defaults, ``last.weight [K, H, obs_dim]``, ``last.bias [K, 1, obs_dim]``.
  Outputs ``features [K, B, H]`` (the last hidden activations) and ``next_obs [K, B, obs_dim]`` =
  ``obs + (features @ last.weight + last.bias) * target_std + target_mean``; the target normaliser is the pair
  of constants ``target_mean`` / ``target_std`` (initializers). Its own metadata: ``format_version``,
  ``policy_id`` (of the policy it was exported with), ``obs_dim``, ``act_dim``, ``num_models``, ``hidden``.
* ``metadata_props`` (all files): see :data:`REQUIRED_METADATA`; lists and numbers are JSON, strings plain.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = "1"
SUPPORTED_FORMAT_VERSIONS = ("1",)
POLICY_FILE = "policy.onnx"
OBS_INPUT, ACT_INPUT, ADV_INPUT, MASK_INPUT = "obs", "act", "advantages", "mask"
MEAN_OUTPUT, LOG_STD_OUTPUT = "action_mean", "log_std"
OBS_MEAN_CONST, OBS_SCALE_CONST = "obs_mean", "obs_scale"
GRAD_PREFIX, ADAPTED_PREFIX = "grad.", "adapted."
LAST_WEIGHT_INPUT, LAST_BIAS_INPUT = "last.weight", "last.bias"
FEATURES_OUTPUT, NEXT_OBS_OUTPUT = "features", "next_obs"
TARGET_MEAN_CONST, TARGET_STD_CONST = "target_mean", "target_std"
OPSET = 17
IR_VERSION = 8  # onnxruntime >= 1.10 reads it; initializers double as overridable input defaults since IR 4

# Metadata keys whose values are JSON (the others are plain strings): the policy graph's, then the dynamics graph's.
_POLICY_JSON_METADATA = (
    "obs_names", "obs_dim", "act_names", "act_dim", "joint_names", "action_low", "action_high",
    "control_rate_hz", "horizon", "inner_lr", "gamma", "gae_lambda", "learner_iteration", "param_names",
)
JSON_METADATA = (*_POLICY_JSON_METADATA, "num_models", "hidden")
STRING_METADATA = ("format_version", "task", "policy_id", "adapt_file")
REQUIRED_METADATA = STRING_METADATA + _POLICY_JSON_METADATA
OPTIONAL_METADATA = ("dynamics_file",)  # string; absent in bundles written before the ensemble travelled
DYNAMICS_METADATA = ("format_version", "policy_id", "obs_dim", "act_dim", "num_models", "hidden")

_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.onnx$")  # a plain name: never a path


class PolicyValidationError(ValueError):
    """A policy that must not be run (or files that are no policy); the message is one line."""


def is_plain_file_name(name: str) -> bool:
    """True for a plain ``<name>.onnx`` (no folder, no leading dot): safe to write into any folder."""
    return bool(_FILE_NAME_RE.match(name))


# ---------------------------------------------------------------------------------------------- identity
def policy_id(params: Mapping[str, np.ndarray], names: Sequence[str]) -> str:
    """sha256 hex digest of the parameters' float32 little-endian bytes, concatenated in ``names`` order.

    Torch callers pass ``{k: v.detach().cpu().numpy()}``; the normalizer is not part of the hash.
    """
    digest = hashlib.sha256()
    for name in names:
        digest.update(np.ascontiguousarray(params[name], dtype="<f4").tobytes())
    return digest.hexdigest()


def inner_lr_arrays(inner_lr: Any, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Step sizes as float32 arrays shaped like ``params`` (a float broadcasts; a dict gives per-entry lrs)."""
    if isinstance(inner_lr, int | float):
        return {k: np.full(v.shape, inner_lr, dtype=np.float32) for k, v in params.items()}
    return {k: np.broadcast_to(np.asarray(inner_lr[k], dtype=np.float32), v.shape).copy() for k, v in params.items()}


# ---------------------------------------------------------------------------------------------- metadata
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


def same_metadata(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal decoded metadata (compared as canonical JSON, so that NaN equals NaN)."""
    return json.dumps(_plain(a), sort_keys=True) == json.dumps(_plain(b), sort_keys=True)


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


def read_metadata(name: str, data: bytes) -> dict[str, Any]:
    """Decoded ``metadata_props`` of the serialized ONNX model ``data`` (named ``name`` in errors).

    Raises:
        PolicyValidationError: bytes that are no ONNX model, or metadata that is not JSON where it must be.
    """
    import onnx  # protobuf only (no onnxruntime); here so that the constants above load without it

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError and friends: not a model
        raise _fail(name, f"not a valid ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None
    try:
        return decode_metadata({p.key: p.value for p in model.metadata_props})
    except ValueError as exc:
        raise _fail(name, str(exc)) from None


def _fail(name: str, reason: str) -> PolicyValidationError:
    return PolicyValidationError(f"{name}: {reason}".replace("\n", " "))


# ---------------------------------------------------------------------------------------------- bundle
@dataclass(frozen=True)
class PolicyBundle:
    """One policy as it travels: its files, the policy graph's decoded metadata, and its id.

    Attributes:
        files: ``{file name: serialized ONNX}``, the policy graph first, then the inner-step graph it names in
            ``metadata["adapt_file"]`` and the dynamics graph of ``metadata["dynamics_file"]`` (each absent if it
            names none, or if it was not found on disk).
        metadata: the policy graph's ``metadata_props``, decoded (:func:`decode_metadata`).
        policy_id: sha256 of the parameters (:func:`policy_id`), as the metadata states it.

    A bundle is data, not a verdict: :func:`mbmpo_core.onnx_runtime.validate_bundle` says whether it may run.
    """

    files: Mapping[str, bytes]
    metadata: Mapping[str, Any]
    policy_id: str

    def __post_init__(self) -> None:
        if not self.files:
            raise PolicyValidationError("a policy bundle needs at least the policy file")
        for name, data in self.files.items():
            if not is_plain_file_name(name):
                raise PolicyValidationError(f"policy file name {name[:80]!r} is not a plain '<name>.onnx'")
            if not data:
                raise _fail(name, "empty file")

    @property
    def name(self) -> str:
        """The policy graph's file name (e.g. ``policy.onnx``)."""
        return next(iter(self.files))

    @property
    def policy_bytes(self) -> bytes:
        """The serialized policy graph."""
        return self.files[self.name]

    @property
    def adapt_file(self) -> str:
        """The inner-step graph's file name as the metadata states it ("" if none)."""
        return str(self.metadata.get("adapt_file", ""))

    @property
    def adapt_bytes(self) -> bytes | None:
        """The serialized inner-step graph, or None if the metadata names none or the bundle lacks it."""
        return self.files.get(self.adapt_file) if self.adapt_file and self.adapt_file != self.name else None

    @property
    def dynamics_file(self) -> str:
        """The dynamics graph's file name as the metadata states it ("" if none, also for older bundles)."""
        return str(self.metadata.get("dynamics_file", ""))

    @property
    def dynamics_bytes(self) -> bytes | None:
        """The serialized dynamics graph, or None if the metadata names none or the bundle lacks it."""
        name = self.dynamics_file
        return self.files.get(name) if name and name != self.name else None

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> PolicyBundle:
        """The bundle of ``files`` (policy graph first); metadata and id are read from the policy graph.

        Raises:
            PolicyValidationError: no files, a name that is not plain, or a policy graph that is no ONNX model.
        """
        files = {name: bytes(data) for name, data in files.items()}
        if not files:
            raise PolicyValidationError("a policy bundle needs at least the policy file")
        name = next(iter(files))
        metadata = read_metadata(name, files[name])
        return cls(files, metadata, str(metadata.get("policy_id", "")))

    @classmethod
    def from_dir(cls, directory: str | Path, policy_file: str = POLICY_FILE) -> PolicyBundle:
        """Read ``directory/policy_file`` and the inner-step and dynamics graphs it names beside it (if present).

        Raises:
            PolicyValidationError: the policy file is missing or is no ONNX model (one line).
        """
        path = Path(directory) / policy_file
        if not path.is_file():
            raise _fail(policy_file, "no such file")
        files = {policy_file: path.read_bytes()}
        metadata = read_metadata(policy_file, files[policy_file])
        for key in ("adapt_file", "dynamics_file"):
            other = str(metadata.get(key, ""))
            # Only a plain name beside the policy file is read: metadata never points the reader elsewhere.
            if other and other not in files and is_plain_file_name(other) and (path.parent / other).is_file():
                files[other] = (path.parent / other).read_bytes()
        return cls(files, metadata, str(metadata.get("policy_id", "")))

    @classmethod
    def from_file(cls, path: str | Path) -> PolicyBundle:
        """:meth:`from_dir` of the policy file ``path`` (e.g. ``runs/x/policy.onnx``)."""
        path = Path(path)
        return cls.from_dir(path.parent, path.name)

    def write(self, directory: str | Path) -> Path:
        """Write every file into ``directory`` (created if needed); returns the policy file's path.

        Each file is written beside its target and renamed, so a reader never sees half a file; the policy file
        goes last, since it names the others.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in reversed(list(self.files)):
            tmp = directory / (name + ".tmp")
            tmp.write_bytes(self.files[name])
            os.replace(tmp, directory / name)
        return directory / self.name
