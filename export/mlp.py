"""The gated MLP every family uses: down(act(gate(h)) * up(h)), and the activations."""

from __future__ import annotations

import numpy as np

from export.checkpoint import WeightSource
from export.graph import MS_DOMAIN, Graph
from export.linear import WeightFormat, add_all, linear, linear_terms
from export.spec import ModelSpec


def activate(g: Graph, x: str, kind: str, path: str) -> str:
    if kind == "gelu_tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), transformers' gelu_pytorch_tanh
        return g.op1("FastGelu", [x], f"{path}/FastGelu", domain=MS_DOMAIN)
    sigmoid = g.op1("Sigmoid", [x], f"{path}/Sigmoid")
    return g.op1("Mul", [x, sigmoid], f"{path}/Mul")


def gated_mlp(
    g: Graph, ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat, hf: str, h: str, path: str, inter: int,
    names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
) -> str:  # fmt: skip
    """down(act(gate(h)) * up(h)), gate and up as one fused MatMul."""
    terms = gated_mlp_terms(g, ckpt, spec, fmt, hf, h, path, inter, names)
    return add_all(g, terms, f"{path}/down_proj/mins")


def gated_mlp_terms(
    g: Graph, ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat, hf: str, h: str, path: str, inter: int,
    names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
) -> list[str]:  # fmt: skip
    """`gated_mlp` as addends still to be summed (`export.linear.linear_terms`)."""
    H = spec.hidden_size
    gate_name, up_name, down_name = names
    if spec.family.fused_qkv:  # Phi-3 stores them fused already, gate rows first
        gate_up = [ckpt.take_linear(f"{hf}.gate_up_proj.weight", (2 * inter, H))]
    else:
        gate_up = [ckpt.take_linear(f"{hf}.{gate_name}.weight", (inter, H)),
                   ckpt.take_linear(f"{hf}.{up_name}.weight", (inter, H))]  # fmt: skip
    bias = None
    if spec.family.mlp_bias:
        bias = np.concatenate([ckpt.take(f"{hf}.{name}.bias", (inter,)) for name in (gate_name, up_name)])
    fused = linear(g, h, gate_up, bias, f"{path}/gate_up_proj", fmt)  # (B, S, 2I)
    split = g.constant(np.array([inter, inter], np.int64))
    gate_out, up_out = g.op("Split", [fused, split], f"{path}/Split", outputs=2, axis=-1)
    hidden = g.op1("Mul", [activate(g, gate_out, spec.family.activation, f"{path}/act"), up_out], f"{path}/Mul")
    down = ckpt.take_linear(f"{hf}.{down_name}.weight", (H, inter))
    down_bias = ckpt.take(f"{hf}.{down_name}.bias", (H,)) if spec.family.mlp_bias else None
    return linear_terms(g, hidden, down, down_bias, f"{path}/down_proj", fmt)
