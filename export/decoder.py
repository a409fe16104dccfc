"""Build the three kinds of stage graph for every supported decoder family.

embedding:  input_ids (B, S) -> hidden_states (B, S, H)
block:      hidden_states, position_ids, seqlens_k, total_sequence_length, past KV per layer
            -> hidden_states_out, present KV per layer   (layers [start, end))
head:       hidden_states (B, S, H) -> logits (B, S, V)   (final norm + lm head)

Attention is onnxruntime's GroupQueryAttention with the KV cache as explicit inputs and
outputs (B, n_kv, T, D_cache); the runtime may bind past and present to one buffer so decode
never copies the cache. Rotary embedding runs before it (RotaryEmbedding), so one graph
serves every rope variant: the variant only changes the cos/sin tables.

A decoder layer is the same few pieces in every family (`_decoder_layer`): norm, attention,
residual, norm, MLP, residual. The family's switches (`spec.family`) pick the variants of each
piece: biases, q/k norms, Gemma's (1 + w) norms and the norms after attention and MLP, fused
Phi-3 weights, the gate's activation, a mixture of experts (`export.moe`) in place of the MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from export.checkpoint import WeightSource
from export.graph import FLOAT, INT32, INT64, MS_DOMAIN, Graph
from export.linear import LinearWeight, WeightFormat, add_all, embedding_gather, linear, linear_terms
from export.mlp import gated_mlp_terms
from export.moe import sparse_mlp
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


def rms_norm(g: Graph, x: str, weight: np.ndarray, eps: float, path: str, offset: bool = False) -> str:
    """x / rms(x) * w, or * (1 + w) for Gemma's norms (computed in float32 as transformers does)."""
    w = weight.astype(np.float32)
    if offset:
        w = (np.float32(1.0) + w).astype(np.float32)
    name = g.weight(f"{path}.weight", w)
    return g.op1("SimplifiedLayerNormalization", [x, name], f"{path}/LayerNorm", axis=-1, epsilon=eps, stash_type=1)


def _norm(g: Graph, ckpt: WeightSource, spec: ModelSpec, x: str, hf: str, path: str, size: int | None = None) -> str:
    weight = ckpt.take(f"{hf}.weight", (size or spec.hidden_size,))
    return rms_norm(g, x, weight, spec.rms_norm_eps, path, spec.family.norm_offset)


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


def _head_norm(g: Graph, ckpt: WeightSource, spec: ModelSpec, x: str, heads: int, hf: str, path: str) -> str:
    """RMSNorm over each head of (B, S, heads*D) (Qwen3's and Gemma 3's q_norm and k_norm)."""
    D = spec.head_dim
    x = g.op1("Reshape", [x, g.constant(np.array([0, 0, heads, D], np.int64))], f"{path}/Reshape")
    x = _norm(g, ckpt, spec, x, hf, path, D)
    return g.op1("Reshape", [x, g.constant(np.array([0, 0, heads * D], np.int64))], f"{path}/Flatten")


@dataclass(frozen=True)
class _BlockInputs:
    position_ids: str
    seqlens_k: str
    total_sequence_length: str
    tables: dict[bool, tuple[str, str]]  # cos and sin initializers: of full-attention layers, of local ones
    # the same two lengths in the caches of sliding layers, which hold only their window (swarm.kvcache)
    seqlens_k_local: str | None = None
    total_sequence_length_local: str | None = None


def _qkv(g: Graph, ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat, hf: str, h: str, path: str) -> str:
    """The fused q/k/v projection: (B, S, (N + 2K) * D)."""
    H, sizes = spec.hidden_size, (spec.q_size, spec.kv_size, spec.kv_size)
    weights: list[LinearWeight]
    if spec.family.fused_qkv:
        weights = [ckpt.take_linear(f"{hf}.qkv_proj.weight", (sum(sizes), H))]
    else:
        weights = [ckpt.take_linear(f"{hf}.{p}_proj.weight", (n, H)) for p, n in zip("qkv", sizes, strict=True)]
    bias = None
    if spec.family.qkv_bias:
        bias = np.concatenate([ckpt.take(f"{hf}.{p}_proj.bias", (n,)) for p, n in zip("qkv", sizes, strict=True)])
    return linear(g, h, weights, bias, f"{path}/qkv_proj", fmt)


def _split_rotate(
    g: Graph, ckpt: WeightSource, spec: ModelSpec, qkv: str, layer: int, io: _BlockInputs, hf: str, path: str
) -> tuple[str, str, str]:
    """q, k and v apart, q and k normed (Qwen3, Gemma 3) and rotated, heads padded to the cache's
    head size: (B, S, N * Dc), (B, S, K * Dc), (B, S, K * Dc)."""
    D, Dc = spec.head_dim, spec.cache_head_dim
    split = g.constant(np.array([spec.q_size, spec.kv_size, spec.kv_size], np.int64))
    q, k, v = g.op("Split", [qkv, split], f"{path}/Split", outputs=3, axis=-1)
    if spec.family.qk_norm:
        q = _head_norm(g, ckpt, spec, q, spec.num_heads, f"{hf}.q_norm", f"{path}/q_norm")
        k = _head_norm(g, ckpt, spec, k, spec.num_kv_heads, f"{hf}.k_norm", f"{path}/k_norm")
    cos, sin = io.tables[spec.local_rope_at(layer)]
    rotary_inputs = [io.position_ids, cos, sin]
    q = g.op1("RotaryEmbedding", [q, *rotary_inputs], f"{path}/q_rotary", domain=MS_DOMAIN,
              num_heads=spec.num_heads, interleaved=0)  # fmt: skip
    k = g.op1("RotaryEmbedding", [k, *rotary_inputs], f"{path}/k_rotary", domain=MS_DOMAIN,
              num_heads=spec.num_kv_heads, interleaved=0)  # fmt: skip
    if Dc != D:
        q = _pad_heads(g, q, spec.num_heads, D, Dc, f"{path}/q_pad")
        k = _pad_heads(g, k, spec.num_kv_heads, D, Dc, f"{path}/k_pad")
        v = _pad_heads(g, v, spec.num_kv_heads, D, Dc, f"{path}/v_pad")
    return q, k, v


def _attention(
    g: Graph, ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat, layer: int, h: str, io: _BlockInputs
) -> list[str]:
    """The attention's output (B, S, H), as addends still to be summed (`linear_terms`)."""
    hf = f"model.layers.{layer}.self_attn"
    path = f"/model/layers.{layer}/attn"
    H, D, Dc = spec.hidden_size, spec.head_dim, spec.cache_head_dim
    qkv = _qkv(g, ckpt, spec, fmt, hf, h, path)  # (B, S, (N + 2K) * D)
    cos, sin = io.tables[spec.local_rope_at(layer)]
    # a sliding layer's query sees `window` keys, itself included, as transformers' sliding mask
    # (checked against it in tests/golden/mistral_sliding and the per-layer windows of qwen2_sliding)
    window = spec.window(layer) or -1
    lengths = [io.seqlens_k, io.total_sequence_length]
    if window > 0 and io.seqlens_k_local and io.total_sequence_length_local:
        lengths = [io.seqlens_k_local, io.total_sequence_length_local]
    attrs: dict[str, int | float] = {"local_window_size": window}
    if spec.attn_softcap:
        attrs["softcap"] = float(spec.attn_softcap)
    if not spec.family.qk_norm and Dc == D and lengths[0] == io.seqlens_k:
        # GroupQueryAttention splits the fused q/k/v and rotates q and k itself, at the positions
        # its cache lengths give: position_ids, as the runtime makes them (three ops fewer a layer)
        qkv_inputs = [qkv, "", ""]
        attrs |= {"do_rotary": 1, "rotary_interleaved": 0}
        rotary = [cos, sin]
    else:
        qkv_inputs = list(_split_rotate(g, ckpt, spec, qkv, layer, io, hf, path))
        rotary = []
    attn, _, _ = g.op(
        "GroupQueryAttention", [*qkv_inputs, past_key_name(layer), past_value_name(layer), *lengths, *rotary],
        f"{path}/GroupQueryAttention",
        outputs=[f"{path}/GroupQueryAttention/output_0", present_key_name(layer), present_value_name(layer)],
        domain=MS_DOMAIN, num_heads=spec.num_heads, kv_num_heads=spec.num_kv_heads,
        scale=spec.attention_scale or 1.0 / math.sqrt(D), **attrs,
    )  # fmt: skip
    if Dc != D:
        attn = _unpad_heads(g, attn, spec.num_heads, D, Dc, f"{path}/unpad")
    o_bias = ckpt.take(f"{hf}.o_proj.bias", (H,)) if spec.family.o_bias else None
    o_weight = ckpt.take_linear(f"{hf}.o_proj.weight", (H, spec.q_size))
    return linear_terms(g, attn, o_weight, o_bias, f"{path}/o_proj", fmt)


def _mlp(g: Graph, ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat, layer: int, h: str, moe: str) -> list[str]:
    """The MLP's output (B, S, H), as addends still to be summed (`linear_terms`)."""
    path = f"/model/layers.{layer}/mlp"
    if spec.is_moe_layer(layer):
        return [sparse_mlp(g, ckpt, spec, fmt, layer, h, path, moe)]
    return gated_mlp_terms(g, ckpt, spec, fmt, f"model.layers.{layer}.mlp", h, path, spec.intermediate_size)


def _decoder_layer(
    g: Graph, ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat, layer: int, x: str, io: _BlockInputs, moe: str
) -> str:
    hf, path = f"model.layers.{layer}", f"/model/layers.{layer}"
    sandwich = spec.family.sandwich_norms
    h = _norm(g, ckpt, spec, x, f"{hf}.input_layernorm", f"{path}/input_layernorm")
    a = _attention(g, ckpt, spec, fmt, layer, h, io)
    if sandwich:  # Gemma: the attention output is normed before the residual, and so is the MLP's
        a = [_norm(g, ckpt, spec, add_all(g, a, f"{path}/attn/o_proj/mins"), f"{hf}.post_attention_layernorm",
                   f"{path}/post_attention_layernorm")]  # fmt: skip
    x = add_all(g, [*a, x], f"{path}/attn_residual")  # one Sum where the output had two addends
    mlp_norm = "pre_feedforward_layernorm" if sandwich else "post_attention_layernorm"
    h = _norm(g, ckpt, spec, x, f"{hf}.{mlp_norm}", f"{path}/{mlp_norm}")
    m = _mlp(g, ckpt, spec, fmt, layer, h, moe)
    if sandwich:
        m = [_norm(g, ckpt, spec, add_all(g, m, f"{path}/mlp/down_proj/mins"), f"{hf}.post_feedforward_layernorm",
                   f"{path}/post_feedforward_layernorm")]  # fmt: skip
    return add_all(g, [*m, x], f"{path}/mlp_residual")


def _rotary_tables(g: Graph, spec: ModelSpec, layers: range, max_context: int) -> dict[bool, tuple[str, str]]:
    """The cos/sin tables the layers use, once each: /model/rotary/ for full-attention layers,
    /model/rotary/local/ for sliding layers with their own base (Gemma 3)."""
    tables: dict[bool, tuple[str, str]] = {}
    for layer in layers:
        local = spec.local_rope_at(layer)
        if local not in tables:
            where = "/model/rotary/local" if local else "/model/rotary"
            cos, sin = cos_sin_tables(spec.rope_of(layer), spec.head_dim, max_context)
            tables[local] = (g.weight(f"{where}/cos_cache", cos), g.weight(f"{where}/sin_cache", sin))
    return tables


def build_block(
    ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat, start: int, end: int, max_context: int, moe: str = "ort"
) -> Graph:
    g = Graph(f"block_{start}_{end}")
    H, K, Dc = spec.hidden_size, spec.num_kv_heads, spec.cache_head_dim
    x = g.input(HIDDEN_STATES, FLOAT, ["batch", "seq", H])
    sliding = any(spec.window(layer) for layer in range(start, end))
    io = _BlockInputs(
        position_ids=g.input(POSITION_IDS, INT64, ["batch", "seq"]),
        seqlens_k=g.input(SEQLENS_K, INT32, ["batch"]),  # per row: tokens in cache after this step - 1
        total_sequence_length=g.input(TOTAL_SEQUENCE_LENGTH, INT32, []),
        tables=_rotary_tables(g, spec, range(start, end), max_context),  # (max_context, D/2) each
        seqlens_k_local=g.input("seqlens_k_local", INT32, ["batch"]) if sliding else None,
        total_sequence_length_local=g.input("total_sequence_length_local", INT32, []) if sliding else None,
    )
    for layer in range(start, end):
        for name in (past_key_name(layer), past_value_name(layer)):
            g.input(name, FLOAT, ["batch", K, "past", Dc])
        x = _decoder_layer(g, ckpt, spec, fmt, layer, x, io, moe)
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
    if spec.family.embed_scale:  # Gemma: times sqrt(hidden), rounded to float32 first as transformers does
        scale = g.constant(np.array(spec.hidden_size**0.5, np.float32))
        x = g.op1("Mul", [x, scale], "/model/embed_tokens/scale/Mul")
    g.op("Identity", [x], "/model/embed_tokens/Identity", outputs=[HIDDEN_STATES])
    g.output(HIDDEN_STATES, FLOAT, ["batch", "seq", spec.hidden_size])
    return g


def _softcap(g: Graph, x: str, cap: float, path: str) -> str:
    """cap * tanh(x / cap)."""
    c = g.constant(np.array(cap, np.float32))
    t = g.op1("Tanh", [g.op1("Div", [x, c], f"{path}/Div")], f"{path}/Tanh")
    return g.op1("Mul", [t, c], f"{path}/Mul")


def build_head(ckpt: WeightSource, spec: ModelSpec, fmt: WeightFormat) -> Graph:
    g = Graph("head")
    V, H = spec.vocab_size, spec.hidden_size
    x = g.input(HIDDEN_STATES, FLOAT, ["batch", "seq", H])
    h = _norm(g, ckpt, spec, x, "model.norm", "/model/norm")
    if spec.tie_word_embeddings:
        weight = ckpt.take_linear("model.embed_tokens.weight", (V, H))
        if ckpt.has("lm_head.weight"):
            ckpt.ignore("lm_head.weight")  # some checkpoints store the tied copy too
    else:
        weight = ckpt.take_linear("lm_head.weight", (V, H))
    logits = linear(g, h, weight, None, "/lm_head", fmt)
    if spec.final_softcap:
        logits = _softcap(g, logits, float(spec.final_softcap), "/lm_head/softcap")
    g.op("Identity", [logits], "/lm_head/Identity", outputs=[LOGITS])
    g.output(LOGITS, FLOAT, ["batch", "seq", V])
    return g
