"""Building ONNX graphs by hand: the one node/initializer builder and model finisher of every exported graph
(the policy and inner-step graphs of :mod:`mbmpo_core.export`, the dynamics graph of
:mod:`mbmpo_core.export_dynamics`). onnx only: no onnxruntime, no torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mbmpo_core.bundle import IR_VERSION, OPSET


class GraphBuilder:
    """Accumulates nodes and constant initializers; intermediate names are generated."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs: Any) -> str:
        """Add a node; returns its output name (``output``, or a generated one)."""
        if output is None:
            self._count += 1
            output = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attrs))
        return output

    def const(self, name: str, value: np.ndarray, dtype: type | None = None) -> str:
        """Add ``value`` (cast to ``dtype`` if given) as the initializer ``name``; returns the name."""
        array = value if dtype is None else np.ascontiguousarray(value, dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name


def finish_model(graph: onnx.GraphProto, metadata: Mapping[str, str]) -> onnx.ModelProto:
    """The model of ``graph`` at the bundle's opset and IR version, with ``metadata`` as its ``metadata_props``,
    checked in full (a graph that does not check is a bug of the exporter, raised here rather than on the robot)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mbmpo")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, dict(metadata))
    onnx.checker.check_model(model, full_check=True)
    return model
