"""A thin helper for building ONNX graphs by hand, one named node at a time.

Node and weight names are namespaced by their path in the model
(`/model/layers.3/attn/qkv_proj/MatMul`), so a graph can be read against the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MS_DOMAIN = "com.microsoft"
# onnxruntime releases since 1.17 read IR version 9; newer onnx would otherwise stamp a newer one
IR_VERSION = 9

DType = int  # an onnx TensorProto data type
FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
INT64 = TensorProto.INT64
INT32 = TensorProto.INT32
Shape = list[int | str | None]


@dataclass
class Graph:
    name: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    _constants: dict[tuple[str, bytes], str] = field(default_factory=dict)

    def input(self, name: str, dtype: DType, shape: Shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def output(self, name: str, dtype: DType, shape: Shape) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def constant(self, array: np.ndarray) -> str:
        """A small constant (shape, axes ...) stored once per distinct value."""
        key = (str(array.dtype), array.tobytes() + str(array.shape).encode())
        if key not in self._constants:
            self._constants[key] = self.weight(f"/const/{len(self._constants)}", array)
        return self._constants[key]

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int | list[str] = 1, **attrs: Any) -> list[str]:
        """Add a node. Its outputs are the names given, or `{name}/output_{i}`; returns them."""
        domain = attrs.pop("domain", "")
        outs = outputs if isinstance(outputs, list) else [f"{name}/output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain, **attrs))
        return outs

    def op1(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        return self.op(op_type, inputs, name, 1, **attrs)[0]

    def to_model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="swarm-export")
        model.ir_version = IR_VERSION
        return model
