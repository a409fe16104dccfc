"""What the exporter needs to know about a checkpoint, read from its config.json.

Llama, Mistral and Qwen2 share one decoder-layer shape (RMSNorm, rotary GQA attention,
SwiGLU MLP); they differ only in a few switches, which `Family` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from export.errors import ExportError
from export.rope import RopeConfig, parse_rope


@dataclass(frozen=True)
class Family:
    name: str
    qkv_bias: bool  # biases on q, k and v projections
    o_bias: bool  # bias on the output projection
    sliding_window: bool  # honours config.sliding_window


def _family(config: dict[str, Any]) -> Family:
    archs = config.get("architectures") or []
    model_type = config.get("model_type", "")
    names = {a.removesuffix("ForCausalLM").lower() for a in archs} | {model_type}
    if "llama" in names:
        bias = bool(config.get("attention_bias", False))
        return Family("llama", qkv_bias=bias, o_bias=bias, sliding_window=False)
    if "mistral" in names:
        return Family("mistral", qkv_bias=False, o_bias=False, sliding_window=True)
    if "qwen2" in names:
        return Family("qwen2", qkv_bias=True, o_bias=False, sliding_window=bool(config.get("use_sliding_window")))
    shown = ", ".join(archs) or model_type or "unknown"
    raise ExportError(
        f"unsupported architecture {shown}; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"
    )


def _int(config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or value <= 0:
        raise ExportError(f"config.json: {key} must be a positive integer, got {value!r}")
    return value


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
    rope: RopeConfig
    tie_word_embeddings: bool
    sliding_window: int | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    @property
    def cache_head_dim(self) -> int:
        return _round_up(self.head_dim, ATTENTION_HEAD_MULTIPLE)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


def _eos_ids(config: dict[str, Any], generation: dict[str, Any]) -> tuple[int, ...]:
    raw = generation.get("eos_token_id", config.get("eos_token_id"))
    if raw is None:
        return ()
    return tuple(raw) if isinstance(raw, list) else (int(raw),)


def read_spec(config: dict[str, Any], generation: dict[str, Any] | None = None) -> ModelSpec:
    family = _family(config)
    hidden = _int(config, "hidden_size")
    heads = _int(config, "num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    if heads % kv_heads:
        raise ExportError(f"config.json: {heads} attention heads do not split into {kv_heads} kv heads")
    if config.get("hidden_act", "silu") != "silu":
        raise ExportError(f"config.json: activation {config.get('hidden_act')!r} is not supported (only silu)")
    window = config.get("sliding_window") if family.sliding_window else None
    return ModelSpec(
        family=family,
        hidden_size=hidden,
        num_layers=_int(config, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        intermediate_size=_int(config, "intermediate_size"),
        vocab_size=_int(config, "vocab_size"),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope=parse_rope(config),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        sliding_window=int(window) if window else None,
        bos_token_id=config.get("bos_token_id"),
        eos_token_ids=_eos_ids(config, generation or {}),
    )
