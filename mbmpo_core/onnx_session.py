"""onnxruntime sessions and initializer reads shared by the torch-free runtimes (policy and dynamics).

numpy, onnx (protobuf) and onnxruntime only: this runs on the robot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def make_session(model: bytes | onnx.ModelProto | str | Path) -> ort.InferenceSession:
    """CPU session on one intra-op thread (the controller owns the other cores); warnings silenced.

    ``model``: serialized ONNX (loaded from memory), a parsed model, or a file path.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    # Overridable initializers trigger a "cannot constant-fold" warning on every load: expected here.
    opts.log_severity_level = 3
    if isinstance(model, onnx.ModelProto):
        source: bytes | str = model.SerializeToString()
    else:
        source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def read_initializers(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Initializer values for ``names`` (KeyError if one is missing)."""
    found = {init.name: init for init in model.graph.initializer}
    return {name: np.array(numpy_helper.to_array(found[name])) for name in names}  # writable copies
