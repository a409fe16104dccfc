"""What the exporter needs to know about a checkpoint, read from its config.json.

Every supported family is a pre-norm decoder of rotary GQA attention and a gated MLP; they differ
in switches (`Family`) and per-layer facts (sliding window, which rotary table). `export.families`
(`read_spec`) reads each family's config.json into these; the graph builders (`export.decoder`) follow them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from export.errors import ExportError
from export.rope import RopeConfig


@dataclass(frozen=True)
class Family:
    name: str
    qkv_bias: bool = False  # biases on q, k and v projections
    o_bias: bool = False  # bias on the output projection
    mlp_bias: bool = False  # biases on gate, up and down projections (Llama's mlp_bias)
    qk_norm: bool = False  # RMSNorm over each head of q and k before rotary (Qwen3, Gemma 3)
    norm_offset: bool = False  # RMSNorm scales by (1 + weight) (Gemma)
    sandwich_norms: bool = False  # norms after attention and after the MLP too (Gemma 2 and 3)
    embed_scale: bool = False  # embeddings multiplied by sqrt(hidden_size) (Gemma)
    fused_qkv: bool = False  # one qkv_proj and one gate_up_proj weight (Phi-3)
    activation: str = "silu"  # silu | gelu_tanh: the gate's activation


@dataclass(frozen=True)
class MoeSpec:
    """A sparse MLP: a router picks `top_k` of `num_experts` per token (Mixtral, Qwen2-MoE, Qwen3-MoE)."""

    num_experts: int
    top_k: int
    expert_size: int  # intermediate size of one expert
    normalize: bool  # the top-k routing weights are renormalised to sum to 1
    shared_size: int = 0  # a shared expert (Qwen2-MoE) of this intermediate size, gated by a sigmoid
    dense_layers: tuple[int, ...] = ()  # layers with a plain MLP of intermediate_size instead
    naming: str = "qwen"  # weight names: qwen (mlp.experts.N.gate_proj) | mixtral (block_sparse_moe.experts.N.w1)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# onnxruntime's GroupQueryAttention kernel takes head sizes in multiples of 16 only
ATTENTION_HEAD_MULTIPLE = 16


@dataclass(frozen=True)
class ModelSpec:
    family: Family
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope: RopeConfig  # the rotary embedding of full-attention layers
    tie_word_embeddings: bool
    sliding_window: int | None  # the window of sliding layers (None: no layer slides)
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    layer_windows: tuple[int | None, ...] = ()  # per layer: its window, None = full attention
    local_rope: RopeConfig | None = None  # sliding layers' own rotary embedding (Gemma 3)
    attention_scale: float | None = None  # softmax scale; None = 1/sqrt(head_dim)
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap) (Gemma 2)
    final_softcap: float | None = None  # logits -> cap * tanh(logits / cap) (Gemma 2)
    moe: MoeSpec | None = None

    @property
    def cache_head_dim(self) -> int:
        return _round_up(self.head_dim, ATTENTION_HEAD_MULTIPLE)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def window(self, layer: int) -> int | None:
        return self.layer_windows[layer] if self.layer_windows else self.sliding_window

    def local_rope_at(self, layer: int) -> bool:
        """Whether layer `layer` uses `local_rope`: sliding layers of Gemma 3 have their own base."""
        return self.local_rope is not None and self.window(layer) is not None

    def rope_of(self, layer: int) -> RopeConfig:
        return self.local_rope if self.local_rope is not None and self.local_rope_at(layer) else self.rope

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer not in self.moe.dense_layers


def config_int(config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or value <= 0:
        raise ExportError(f"config.json: {key} must be a positive integer, got {value!r}")
    return value
