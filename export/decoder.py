"""Build the three kinds of stage graph for the Llama-shaped decoder family.

embedding:  input_ids (B, S) -> hidden_states (B, S, H)
block:      hidden_states, position_ids, seqlens_k, total_sequence_length, past KV per layer
            -> hidden_states_out, present KV per layer   (layers [start, end))
head:       hidden_states (B, S, H) -> logits (B, S, V)   (final norm + lm head)

Attention is onnxruntime's GroupQueryAttention with the KV cache as explicit inputs and
outputs (B, n_kv, T, D_cache); the runtime may bind past and present to one buffer so decode
never copies the cache. Rotary embedding runs before it (RotaryEmbedding), so one graph
serves every rope variant: the variant only changes the cos/sin tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from export.checkpoint import WeightSource
from export.graph import FLOAT, INT32, INT64, MS_DOMAIN, Graph
from export.linear import WeightFormat, embedding_gather, linear
from export.rope import cos_sin_tables
from export.spec import ModelSpec
from swarm.package import (
    HIDDEN_STATES,
    HIDDEN_STATES_OUT,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    SEQLENS_K,
    TOTAL_SEQUENCE_LENGTH,
    past_key_name,
    past_value_name,
    present_key_name,
    present_value_name,
)


def rms_norm(g: Graph, x: str, weight: np.ndarray, eps: float, path: str) -> str:
    w = g.weight(f"{path}.weight", weight.astype(np.float32))
    return g.op1("SimplifiedLayerNormalization", [x, w], f"{path}/LayerNorm", axis=-1, epsilon=eps, stash_type=1)


def _pad_heads(g: Graph, x: str, heads: int, dim: int, padded: int, path: str) -> str:
    """(B, S, heads*dim) -> (B, S, heads*padded) with zeros appended to every head."""
    x = g.op1("Reshape", [x, g.constant(np.array([0, 0, heads, dim], np.int64))], f"{path}/Reshape")
    pads = g.constant(np.array([0, 0, 0, 0, 0, 0, 0, padded - dim], np.int64))
    x = g.op1("Pad", [x, pads], f"{path}/Pad")
    return g.op1("Reshape", [x, g.constant(np.array([0, 0, heads * padded], np.int64))], f"{path}/Flatten")


def _unpad_heads(g: Graph, x: str, heads: int, dim: int, padded: int, path: str) -> str:
    x = g.op1("Reshape", [x, g.constant(np.array([0, 0, heads, padded], np.int64))], f"{path}/Reshape")
    starts, ends, axes = (g.constant(np.array([v], np.int64)) for v in (0, dim, 3))
    x = g.op1("Slice", [x, starts, ends, axes], f"{path}/Slice")
    return g.op1("Reshape", [x, g.constant(np.array([0, 0, heads * dim], np.int64))], f"{path}/Flatten")


@dataclass(frozen=True)
class _BlockInputs:
    position_ids: str
    seqlens_k: str
    total_sequence_length: str
    cos: str
    sin: str


def _attention(
    g: Graph, ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat, layer: int, h: str, io: _BlockInputs
) -> str:
    hf = f"model.layers.{layer}.self_attn"
    path = f"/model/layers.{layer}/attn"
    H, D, Dc = spec.hidden_size, spec.head_dim, spec.cache_head_dim
    weights = [
        ckpt.take_linear(f"{hf}.q_proj.weight", (spec.q_size, H)),
        ckpt.take_linear(f"{hf}.k_proj.weight", (spec.kv_size, H)),
        ckpt.take_linear(f"{hf}.v_proj.weight", (spec.kv_size, H)),
    ]
    bias = None
    if spec.family.qkv_bias:
        sizes = (spec.q_size, spec.kv_size, spec.kv_size)
        bias = np.concatenate([ckpt.take(f"{hf}.{p}_proj.bias", (n,)) for p, n in zip("qkv", sizes, strict=False)])
    qkv = linear(g, h, weights, bias, f"{path}/qkv_proj", fmt)  # (B, S, (N + 2K) * D)
    split = g.constant(np.array([spec.q_size, spec.kv_size, spec.kv_size], np.int64))
    q, k, v = g.op("Split", [qkv, split], f"{path}/Split", outputs=3, axis=-1)
    rotary_inputs = [io.position_ids, io.cos, io.sin]
    q = g.op1("RotaryEmbedding", [q, *rotary_inputs], f"{path}/q_rotary", domain=MS_DOMAIN,
              num_heads=spec.num_heads, interleaved=0)  # fmt: skip
    k = g.op1("RotaryEmbedding", [k, *rotary_inputs], f"{path}/k_rotary", domain=MS_DOMAIN,
              num_heads=spec.num_kv_heads, interleaved=0)  # fmt: skip
    if Dc != D:
        q = _pad_heads(g, q, spec.num_heads, D, Dc, f"{path}/q_pad")
        k = _pad_heads(g, k, spec.num_kv_heads, D, Dc, f"{path}/k_pad")
        v = _pad_heads(g, v, spec.num_kv_heads, D, Dc, f"{path}/v_pad")
    # both count the tokens before the query: a query sees itself and `sliding_window` earlier
    # tokens (checked against transformers in tests/golden/mistral_sliding)
    window = spec.sliding_window if spec.sliding_window else -1
    gqa_inputs = [
        q,
        k,
        v,
        past_key_name(layer),
        past_value_name(layer),
        io.seqlens_k,
        io.total_sequence_length,
    ]
    attn, _, _ = g.op(
        "GroupQueryAttention", gqa_inputs, f"{path}/GroupQueryAttention",
        outputs=[f"{path}/GroupQueryAttention/output_0", present_key_name(layer), present_value_name(layer)],
        domain=MS_DOMAIN, num_heads=spec.num_heads, kv_num_heads=spec.num_kv_heads,
        scale=1.0 / math.sqrt(D), local_window_size=window,
    )  # fmt: skip
    if Dc != D:
        attn = _unpad_heads(g, attn, spec.num_heads, D, Dc, f"{path}/unpad")
    o_bias = ckpt.take(f"{hf}.o_proj.bias", (H,)) if spec.family.o_bias else None
    o_weight = ckpt.take_linear(f"{hf}.o_proj.weight", (H, spec.q_size))
    return linear(g, attn, o_weight, o_bias, f"{path}/o_proj", fmt)


def _mlp(g: Graph, ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat, layer: int, h: str) -> str:
    hf = f"model.layers.{layer}.mlp"
    path = f"/model/layers.{layer}/mlp"
    H, inter = spec.hidden_size, spec.intermediate_size
    gate = ckpt.take_linear(f"{hf}.gate_proj.weight", (inter, H))
    up = ckpt.take_linear(f"{hf}.up_proj.weight", (inter, H))
    gate_up = linear(g, h, [gate, up], None, f"{path}/gate_up_proj", fmt)  # (B, S, 2I)
    split = g.constant(np.array([inter, inter], np.int64))
    gate_out, up_out = g.op("Split", [gate_up, split], f"{path}/Split", outputs=2, axis=-1)
    sigmoid = g.op1("Sigmoid", [gate_out], f"{path}/act/Sigmoid")
    silu = g.op1("Mul", [gate_out, sigmoid], f"{path}/act/Mul")
    hidden = g.op1("Mul", [silu, up_out], f"{path}/Mul")
    down = ckpt.take_linear(f"{hf}.down_proj.weight", (H, inter))
    return linear(g, hidden, down, None, f"{path}/down_proj", fmt)


def _decoder_layer(
    g: Graph, ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat, layer: int, x: str, io: _BlockInputs
) -> str:
    hf, path, eps = f"model.layers.{layer}", f"/model/layers.{layer}", spec.rms_norm_eps
    H = spec.hidden_size
    h = rms_norm(g, x, ckpt.take(f"{hf}.input_layernorm.weight", (H,)), eps, f"{path}/input_layernorm")
    x = g.op1("Add", [x, _attention(g, ckpt, spec, fmt, layer, h, io)], f"{path}/attn_residual/Add")
    h = rms_norm(
        g,
        x,
        ckpt.take(f"{hf}.post_attention_layernorm.weight", (H,)),
        eps,
        f"{path}/post_attention_layernorm",
    )
    return g.op1("Add", [x, _mlp(g, ckpt, spec, fmt, layer, h)], f"{path}/mlp_residual/Add")


def build_block(
    ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat, start: int, end: int, max_context: int
) -> Graph:
    g = Graph(f"block_{start}_{end}")
    H, K, Dc = spec.hidden_size, spec.num_kv_heads, spec.cache_head_dim
    x = g.input(HIDDEN_STATES, FLOAT, ["batch", "seq", H])
    cos, sin = cos_sin_tables(spec.rope, spec.head_dim, max_context)
    io = _BlockInputs(
        position_ids=g.input(POSITION_IDS, INT64, ["batch", "seq"]),
        seqlens_k=g.input(SEQLENS_K, INT32, ["batch"]),  # per row: tokens in cache after this step - 1
        total_sequence_length=g.input(TOTAL_SEQUENCE_LENGTH, INT32, []),
        cos=g.weight("/model/rotary/cos_cache", cos),  # (max_context, D/2)
        sin=g.weight("/model/rotary/sin_cache", sin),
    )
    for layer in range(start, end):
        for name in (past_key_name(layer), past_value_name(layer)):
            g.input(name, FLOAT, ["batch", K, "past", Dc])
        x = _decoder_layer(g, ckpt, spec, fmt, layer, x, io)
        for name in (present_key_name(layer), present_value_name(layer)):
            g.output(name, FLOAT, ["batch", K, "total", Dc])
    g.op("Identity", [x], "/model/output/Identity", outputs=[HIDDEN_STATES_OUT])
    g.output(HIDDEN_STATES_OUT, FLOAT, ["batch", "seq", H])
    return g


def build_embedding(ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat) -> Graph:
    g = Graph("embedding")
    ids = g.input(INPUT_IDS, INT64, ["batch", "seq"])
    table = ckpt.take_linear("model.embed_tokens.weight", (spec.vocab_size, spec.hidden_size))
    x = embedding_gather(g, ids, table, "model.embed_tokens", "/model/embed_tokens", fmt)
    g.op("Identity", [x], "/model/embed_tokens/Identity", outputs=[HIDDEN_STATES])
    g.output(HIDDEN_STATES, FLOAT, ["batch", "seq", spec.hidden_size])
    return g


def build_head(ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat) -> Graph:
    g = Graph("head")
    V, H = spec.vocab_size, spec.hidden_size
    x = g.input(HIDDEN_STATES, FLOAT, ["batch", "seq", H])
    h = rms_norm(g, x, ckpt.take("model.norm.weight", (H,)), spec.rms_norm_eps, "/model/norm")
    if spec.tie_word_embeddings:
        weight = ckpt.take_linear("model.embed_tokens.weight", (V, H))
        if ckpt.has("lm_head.weight"):
            ckpt.ignore("lm_head.weight")  # some checkpoints store the tied copy too
    else:
        weight = ckpt.take_linear("lm_head.weight", (V, H))
    logits = linear(g, h, weight, None, "/lm_head", fmt)
    g.op("Identity", [logits], "/lm_head/Identity", outputs=[LOGITS])
    g.output(LOGITS, FLOAT, ["batch", "seq", V])
    return g
