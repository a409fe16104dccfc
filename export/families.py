"""Each family's config.json, read as transformers 5 reads it, into a `ModelSpec` (`read_spec`).

One reader per family says what its graph honours: biases, q/k norms, Gemma's norms and scales,
which layers slide (`layer_types`, or the family's own default rule), rotary tables and the
router of a mixture of experts. A config field no reader honours, set to anything but its
neutral value, fails the export by name (`_refuse_unhonoured`), rather than exporting a graph
that silently computes something else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from export.errors import ExportError
from export.rope import RopeConfig, parse_rope
from export.spec import Family, ModelSpec, MoeSpec, config_int

Fields = dict[str, Any]
FULL, SLIDING = "full_attention", "sliding_attention"


def _layer_types(config: dict[str, Any], num_layers: int, default: Callable[[int], bool]) -> list[str]:
    """`layer_types` from config.json (transformers 5 writes it), else the family's rule (`default(i)`:
    layer i slides)."""
    types = config.get("layer_types")
    if types is None:
        return [SLIDING if default(i) else FULL for i in range(num_layers)]
    unknown = sorted({t for t in types if t not in (FULL, SLIDING)})
    if unknown:
        raise ExportError(f"config.json: layer_types {', '.join(map(repr, unknown))} are not supported "
                          f"(supported: {FULL!r}, {SLIDING!r})")  # fmt: skip
    if len(types) != num_layers:
        raise ExportError(f"config.json: layer_types names {len(types)} layers, the model has {num_layers}")
    return list(types)


def _windows(types: list[str], window: int | None) -> list[int | None]:
    return [window if t == SLIDING and window else None for t in types]


def _window(config: dict[str, Any], switch: str | None = None) -> int | None:
    """config.sliding_window where it applies (Qwen's `use_sliding_window` must be on)."""
    if switch is not None and not config.get(switch):
        return None
    window = config.get("sliding_window")
    return int(window) if window else None


def _all_layers(config: dict[str, Any], num_layers: int, window: int | None) -> Fields:
    if config.get("layer_types") is not None and any(t != FULL for t in config["layer_types"]):
        raise ExportError("config.json: layer_types are not honoured by this family (transformers ignores them too)")
    return {"layer_windows": [window] * num_layers}


def _llama(config: dict[str, Any], num_layers: int, head_dim: int) -> Fields:
    bias = bool(config.get("attention_bias"))
    family = Family("llama", qkv_bias=bias, o_bias=bias, mlp_bias=bool(config.get("mlp_bias")))
    return {"family": family, **_all_layers(config, num_layers, None)}


def _mistral(config: dict[str, Any], num_layers: int, head_dim: int) -> Fields:
    return {"family": Family("mistral"), "layer_windows": [_window(config)] * num_layers}


def _qwen_windows(config: dict[str, Any], num_layers: int) -> list[int | None]:
    window = _window(config, "use_sliding_window")
    first = int(config.get("max_window_layers", 28))
    types = _layer_types(config, num_layers, lambda i: window is not None and i >= first)
    return _windows(types, window)


def _qwen2(config: dict[str, Any], num_layers: int, head_dim: int) -> Fields:
    return {"family": Family("qwen2", qkv_bias=True), "layer_windows": _qwen_windows(config, num_layers)}


def _qwen3(config: dict[str, Any], num_layers: int, head_dim: int) -> Fields:
    bias = bool(config.get("attention_bias"))
    family = Family("qwen3", qkv_bias=bias, o_bias=bias, qk_norm=True)
    return {"family": family, "layer_windows": _qwen_windows(config, num_layers)}


def _gemma_common(config: dict[str, Any], name: str, qk_norm: bool) -> Fields:
    bias = bool(config.get("attention_bias"))
    family = Family(name, qkv_bias=bias, o_bias=bias, qk_norm=qk_norm, norm_offset=True, sandwich_norms=True,
                    embed_scale=True, activation=_activation(config, "hidden_activation"))  # fmt: skip
    scalar = config.get("query_pre_attn_scalar", 256)
    return {"family": family, "attention_scale": float(scalar) ** -0.5}


def _gemma2(config: dict[str, Any], num_layers: int, head_dim: int) -> Fields:
    types = _layer_types(config, num_layers, lambda i: bool((i + 1) % 2))
    return {
        **_gemma_common(config, "gemma2", qk_norm=False),
        "layer_windows": _windows(types, _window(config)),
        "attn_softcap": config.get("attn_logit_softcapping"),
        "final_softcap": config.get("final_logit_softcapping"),
    }


def _gemma3(config: dict[str, Any], num_layers: int, head_dim: int) -> Fields:
    pattern = int(config.get("sliding_window_pattern", 6))
    types = _layer_types(config, num_layers, lambda i: bool((i + 1) % pattern))
    params = config.get("rope_parameters") or {}
    if FULL in params or SLIDING in params:  # transformers 5: one rope per layer type
        full = parse_rope({**config, "rope_parameters": {"rope_theta": 1e6, **(params.get(FULL) or {})}})
        local = parse_rope({**config, "rope_parameters": {"rope_theta": 1e4, **(params.get(SLIDING) or {})}})
    else:  # transformers 4: rope_theta and rope_scaling for global layers, rope_local_base_freq for local ones
        full = parse_rope({"rope_theta": 1e6, **config})
        local = RopeConfig(float(config.get("rope_local_base_freq", 1e4)), "default", {}, full.max_position_embeddings)
    return {
        **_gemma_common(config, "gemma3", qk_norm=True),
        "layer_windows": _windows(types, _window(config)),
        "rope": full,
        "local_rope": local,
        "final_softcap": config.get("final_logit_softcapping"),
        "attn_softcap": config.get("attn_logit_softcapping"),
    }


def _phi3(config: dict[str, Any], num_layers: int, head_dim: int) -> Fields:
    return {"family": Family("phi3", fused_qkv=True), **_all_layers(config, num_layers, _window(config))}


def _experts(config: dict[str, Any], count_key: str, size_key: str, normalize: bool, **extra: Any) -> MoeSpec:
    if config.get(count_key) is None:  # transformers 5 writes Qwen's num_experts as num_local_experts
        count_key = "num_local_experts" if count_key == "num_experts" else "num_experts"
    return MoeSpec(
        num_experts=config_int(config, count_key),
        top_k=config_int(config, "num_experts_per_tok"),
        expert_size=config_int(config, size_key),
        normalize=normalize,
        **extra,
    )


def _dense_layers(config: dict[str, Any], num_layers: int) -> tuple[int, ...]:
    step = int(config.get("decoder_sparse_step", 1))
    only = set(config.get("mlp_only_layers") or [])
    return tuple(i for i in range(num_layers) if i in only or (i + 1) % step)


def _mixtral(config: dict[str, Any], num_layers: int, head_dim: int) -> Fields:
    moe = _experts(config, "num_local_experts", "intermediate_size", True, naming="mixtral")
    return {"family": Family("mixtral"), "moe": moe, **_all_layers(config, num_layers, _window(config))}


def _qwen2_moe(config: dict[str, Any], num_layers: int, head_dim: int) -> Fields:
    window = _window(config, "use_sliding_window")
    first = int(config.get("max_window_layers", 28))
    types = _layer_types(config, num_layers, lambda i: window is not None and bool((i + 1) % 2) and i < first)
    moe = _experts(config, "num_experts", "moe_intermediate_size", bool(config.get("norm_topk_prob", False)),
                   shared_size=int(config.get("shared_expert_intermediate_size") or 0),
                   dense_layers=_dense_layers(config, num_layers))  # fmt: skip
    return {"family": Family("qwen2_moe", qkv_bias=True), "moe": moe, "layer_windows": _windows(types, window)}


def _qwen3_moe(config: dict[str, Any], num_layers: int, head_dim: int) -> Fields:
    bias = bool(config.get("attention_bias"))
    moe = _experts(config, "num_experts", "moe_intermediate_size", bool(config.get("norm_topk_prob", False)),
                   dense_layers=_dense_layers(config, num_layers))  # fmt: skip
    family = Family("qwen3_moe", qkv_bias=bias, o_bias=bias, qk_norm=True)
    return {"family": family, "moe": moe, **_all_layers(config, num_layers, _window(config, "use_sliding_window"))}


# model_type -> reader; the architectures' class names map onto these too
_READERS: dict[str, Callable[[dict[str, Any], int, int], Fields]] = {
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gemma2": _gemma2,
    "gemma3_text": _gemma3,
    "phi3": _phi3,
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
}
_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "Phi3ForCausalLM": "phi3",
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}
SUPPORTED_ARCHITECTURES = tuple(_ARCHITECTURES)


def _activation(config: dict[str, Any], key: str = "hidden_act") -> str:
    act = config.get(key) or config.get("hidden_act") or "silu"
    known = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
    if act not in known:
        raise ExportError(f"config.json: {key} {act!r} is not supported (supported: {', '.join(known)})")
    return known[act]


def _reader_name(config: dict[str, Any]) -> str:
    for arch in config.get("architectures") or []:
        if arch in _ARCHITECTURES:
            return _ARCHITECTURES[arch]
    model_type = config.get("model_type", "")
    if model_type in _READERS:
        return model_type
    if model_type == "gemma3":  # a multimodal Gemma 3's config: its text model is under text_config
        raise ExportError("config.json: a multimodal Gemma 3 (model_type 'gemma3'); export its text model, "
                          "Gemma3ForCausalLM (model_type 'gemma3_text')")  # fmt: skip
    shown = ", ".join(config.get("architectures") or []) or model_type or "unknown"
    raise ExportError(f"unsupported architecture {shown}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")


# Fields that change what a model computes, with the value that means "off". A family that honours
# one lists it in _HONOURED; for any other family a config setting it is refused by name.
_NEUTRAL: dict[str, Any] = {
    "attention_bias": False,
    "mlp_bias": False,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "use_bidirectional_attention": False,
    "use_qk_norm": False,
    "attention_chunk_size": None,
    "no_rope_layers": None,
    "quantization_config": None,
    "embedding_multiplier": None,
    "residual_multiplier": None,
    "logits_scaling": None,
    "attention_multiplier": None,
}
_HONOURED = {
    "llama": {"attention_bias", "mlp_bias"},
    "qwen3": {"attention_bias"},
    "qwen3_moe": {"attention_bias"},
    "gemma2": {"attention_bias", "attn_logit_softcapping", "final_logit_softcapping"},
    "gemma3_text": {"attention_bias", "attn_logit_softcapping", "final_logit_softcapping"},
}


def _refuse_unhonoured(config: dict[str, Any], reader: str) -> None:
    honoured = _HONOURED.get(reader, set())
    for key, neutral in _NEUTRAL.items():
        value = config.get(key, neutral)
        if key not in honoured and value not in (neutral, None, False, [], {}):
            what = "quantized checkpoints (export the float one)" if key == "quantization_config" else "it"
            raise ExportError(
                f"config.json: {key}={value!r} is not supported for {reader} models "
                f"(this exporter cannot honour {what}); the graph would compute something else"
            )


def family_fields(config: dict[str, Any], num_layers: int, head_dim: int) -> Fields:
    """The family-specific `ModelSpec` fields (family, layer_windows, rope ...) of this config."""
    reader = _reader_name(config)
    _refuse_unhonoured(config, reader)
    fields = _READERS[reader](config, num_layers, head_dim)
    fields.setdefault("rope", parse_rope(config))
    if fields["family"].activation == "silu" and _activation(config) != "silu":
        raise ExportError(f"config.json: hidden_act {config.get('hidden_act')!r} is not supported for {reader} "
                          "models (only silu)")  # fmt: skip
    if fields.get("attn_softcap") is not None and not math.isfinite(float(fields["attn_softcap"])):
        raise ExportError("config.json: attn_logit_softcapping must be a finite number")
    return fields


def _eos_ids(config: dict[str, Any], generation: dict[str, Any]) -> tuple[int, ...]:
    raw = generation.get("eos_token_id", config.get("eos_token_id"))
    if raw is None:
        return ()
    return tuple(raw) if isinstance(raw, list) else (int(raw),)


def read_spec(config: dict[str, Any], generation: dict[str, Any] | None = None) -> ModelSpec:
    hidden = config_int(config, "hidden_size")
    heads = config_int(config, "num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    if heads % kv_heads:
        raise ExportError(f"config.json: {heads} attention heads do not split into {kv_heads} kv heads")
    num_layers = config_int(config, "num_hidden_layers")
    fields = family_fields(config, num_layers, int(head_dim))
    windows = fields.pop("layer_windows")
    sliding = sorted({w for w in windows if w})
    return ModelSpec(
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        intermediate_size=config_int(config, "intermediate_size"),
        vocab_size=config_int(config, "vocab_size"),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        sliding_window=sliding[-1] if sliding else None,
        layer_windows=tuple(windows) if sliding else (),
        bos_token_id=config.get("bos_token_id"),
        eos_token_ids=_eos_ids(config, generation or {}),
        **fields,
    )
