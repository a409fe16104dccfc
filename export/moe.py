"""A mixture-of-experts MLP: a router scores every expert per token, the top k compute, their
outputs are summed weighted by the router's softmax (renormalised over the k where the family
does: Mixtral, Qwen3-MoE's norm_topk_prob), plus Qwen2-MoE's shared expert behind a sigmoid gate.

Two formulations of the same sum, chosen per export (`ExportOptions.moe`):

* `ort`: onnxruntime's MoE contrib op, which has a CPU kernel for SwiGLU experts (gate and up rows
  interleaved in one fc1 weight per expert; it has none for a separate fc3). It routes inside the
  kernel and runs each expert once over the tokens sent to it.
* `topk`: plain ONNX. Softmax, TopK, then each token gathers its k experts' weights and multiplies
  by them. Per decode token that reads only k experts, but a prompt of T tokens gathers T * k
  copies of expert weights.

Either way every expert's weights are in the block file, so a block's byte count, the figure
assignment splits a model by, counts all of its experts.
"""

from __future__ import annotations

import numpy as np

from export.checkpoint import WeightSource
from export.graph import Graph
from export.linear import WeightFormat, as_float, stored
from export.mlp import activate, gated_mlp
from export.spec import ModelSpec, MoeSpec

MOE_FORMULATIONS = ("ort", "topk")


def _names(moe: MoeSpec, layer: int) -> tuple[str, str, tuple[str, str, str]]:
    """(router weight, expert prefix, (gate, up, down) names inside an expert)."""
    if moe.naming == "mixtral":
        base = f"model.layers.{layer}.block_sparse_moe"
        return f"{base}.gate.weight", f"{base}.experts", ("w1", "w3", "w2")
    base = f"model.layers.{layer}.mlp"
    return f"{base}.gate.weight", f"{base}.experts", ("gate_proj", "up_proj", "down_proj")


def _expert_weights(ckpt: WeightSource, spec: ModelSpec, moe: MoeSpec, layer: int) -> tuple[np.ndarray, ...]:
    """Per expert, float32: gate (E, I, H), up (E, I, H), down (E, H, I)."""
    _, prefix, (gate, up, down) = _names(moe, layer)
    H, inter = spec.hidden_size, moe.expert_size

    def stack(part: str, shape: tuple[int, int]) -> np.ndarray:
        names = [f"{prefix}.{e}.{part}.weight" for e in range(moe.num_experts)]
        return np.stack([as_float(ckpt.take_linear(name, shape)) for name in names])

    return stack(gate, (inter, H)), stack(up, (inter, H)), stack(down, (H, inter))


def _flat(g: Graph, h: str, hidden: int, path: str) -> str:
    return g.op1("Reshape", [h, g.constant(np.array([-1, hidden], np.int64))], f"{path}/Flatten")


def _ort_moe(g: Graph, x: str, logits: str, weights: tuple[np.ndarray, ...], moe: MoeSpec, path: str,
             fmt: WeightFormat) -> str:  # fmt: skip
    gate, up, down = weights
    E, inter, H = gate.shape
    fc1 = np.stack([gate, up], axis=2).reshape(E, 2 * inter, H)  # rows gate_0, up_0, gate_1, up_1 ...
    inputs = [x, logits, stored(g, f"{path}.fc1", fc1, fmt), "", stored(g, f"{path}.fc2", down, fmt)]
    return g.op1(
        "MoE", inputs, f"{path}/MoE", domain="com.microsoft", k=moe.top_k, activation_type="swiglu",
        swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0, normalize_routing_weights=int(moe.normalize),
    )  # fmt: skip


def _topk_moe(g: Graph, x: str, logits: str, weights: tuple[np.ndarray, ...], moe: MoeSpec, path: str,
              fmt: WeightFormat) -> str:  # fmt: skip
    gate, up, down = weights
    inter = gate.shape[1]
    probs = g.op1("Softmax", [logits], f"{path}/router/Softmax", axis=-1)  # (T, E)
    top, index = g.op("TopK", [probs, g.constant(np.array([moe.top_k], np.int64))], f"{path}/router/TopK",
                      outputs=2, axis=-1, largest=1, sorted=1)  # fmt: skip
    if moe.normalize:
        total = g.op1("ReduceSum", [top, g.constant(np.array([-1], np.int64))], f"{path}/router/ReduceSum", keepdims=1)
        top = g.op1("Div", [top, total], f"{path}/router/Div")
    gate_up = np.concatenate([gate, up], axis=1).transpose(0, 2, 1)  # (E, H, 2I): x @ w
    w1 = g.op1("Gather", [stored(g, f"{path}.gate_up", gate_up, fmt), index], f"{path}/gate_up/Gather", axis=0)
    rows = g.op1("Unsqueeze", [x, g.constant(np.array([1, 2], np.int64))], f"{path}/Unsqueeze")  # (T, 1, 1, H)
    fused = g.op1("MatMul", [rows, w1], f"{path}/gate_up/MatMul")  # (T, k, 1, 2I)
    g_out, u_out = g.op("Split", [fused, g.constant(np.array([inter, inter], np.int64))], f"{path}/Split",
                        outputs=2, axis=-1)  # fmt: skip
    hidden = g.op1("Mul", [activate(g, g_out, "silu", f"{path}/act"), u_out], f"{path}/Mul")
    w2 = g.op1("Gather", [stored(g, f"{path}.down", down.transpose(0, 2, 1), fmt), index], f"{path}/down/Gather",
               axis=0)  # fmt: skip
    out = g.op1("MatMul", [hidden, w2], f"{path}/down/MatMul")  # (T, k, 1, H)
    out = g.op1("Squeeze", [out, g.constant(np.array([2], np.int64))], f"{path}/Squeeze")
    scale = g.op1("Unsqueeze", [top, g.constant(np.array([-1], np.int64))], f"{path}/router/Unsqueeze")
    weighted = g.op1("Mul", [out, scale], f"{path}/Weighted")
    return g.op1("ReduceSum", [weighted, g.constant(np.array([1], np.int64))], f"{path}/ReduceSum", keepdims=0)


def sparse_mlp(
    g: Graph, ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat, layer: int, h: str, path: str, formulation: str
) -> str:
    moe = spec.moe
    assert moe is not None
    H = spec.hidden_size
    router_name, _, _ = _names(moe, layer)
    router = as_float(ckpt.take_linear(router_name, (moe.num_experts, H)))
    x = _flat(g, h, H, path)  # (T, H), T = B * S
    logits = g.op1("MatMul", [x, g.weight(f"{path}.router.weight", router.T.copy())], f"{path}/router/MatMul")
    weights = _expert_weights(ckpt, spec, moe, layer)
    build = _ort_moe if formulation == "ort" else _topk_moe
    y = build(g, x, logits, weights, moe, path, fmt)
    y = g.op1("Reshape", [y, g.op1("Shape", [h], f"{path}/Shape")], f"{path}/Unflatten")
    if moe.shared_size:
        base = f"model.layers.{layer}.mlp"
        shared = gated_mlp(g, ckpt, spec, fmt, f"{base}.shared_expert", h, f"{path}/shared_expert", moe.shared_size)
        gate = ckpt.take_linear(f"{base}.shared_expert_gate.weight", (1, H))
        score = g.op1("MatMul", [h, g.weight(f"{path}.shared_expert_gate.weight", as_float(gate).T.copy())],
                      f"{path}/shared_expert_gate/MatMul")  # fmt: skip
        shared = g.op1("Mul", [shared, g.op1("Sigmoid", [score], f"{path}/shared_expert_gate/Sigmoid")],
                       f"{path}/shared_expert/Gated")  # fmt: skip
        y = g.op1("Add", [y, shared], f"{path}/shared_expert/Add")
    return y
