"""What a GGUF architecture means in Hugging Face terms: tensor names and config.json.

llama.cpp's converter renames every tensor (`blk.3.attn_q.weight` for
`model.layers.3.self_attn.q_proj.weight`), stacks a layer's experts into one 3-D tensor per
projection (`ffn_gate_exps`: experts x rows x cols), keeps Phi-3's fused projections fused, and
moves config facts into metadata (`llama.block_count`) or into tensors of their own (Phi-3's
longrope factors). This module maps all of it back, so the graph builders see a checkpoint as
transformers would load it. `export.gguf_file` reads the file with these maps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from export.errors import ExportError


@dataclass(frozen=True)
class GgufArch:
    hf_architecture: str
    model_type: str
    permuted_qk: bool  # the converter permuted q/k rows for llama.cpp's rope (llama family)
    layer_names: dict[str, str]  # GGUF tensor name in a block -> Hugging Face name in a layer
    norm_shift: float = 0.0  # stored norm weights are w + shift (Gemma's 1 + w)
    moe: MoeNames | None = None  # where the experts sit, for mixture-of-experts files


@dataclass(frozen=True)
class MoeNames:
    """Hugging Face names of a layer's mixture of experts (`{e}`: the expert's index)."""

    router: str
    experts: dict[str, str]  # GGUF stacked tensor -> per-expert Hugging Face name
    shared: dict[str, str]  # GGUF shared-expert tensor -> Hugging Face name (Qwen2-MoE)
    normalize_top_k: bool  # llama.cpp's default when the file does not say (expert_weights_norm)


# GGUF tensor name -> Hugging Face name, per layer
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# where an architecture's tensor names mean something else: Gemma's ffn_norm is the norm before the
# MLP, with a norm after attention and one after the MLP beside it; q/k norms (Qwen3, Gemma 3)
_QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_GEMMA_NAMES = {
    **_LAYER_NAMES,
    **_QK_NORMS,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# Phi-3 keeps q|k|v and gate|up fused, as its Hugging Face checkpoint does; ffn_up is the pair
_PHI3_NAMES = {**_LAYER_NAMES, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}
_MIXTRAL = MoeNames(
    router="block_sparse_moe.gate",
    experts={"ffn_gate_exps": "block_sparse_moe.experts.{e}.w1", "ffn_down_exps": "block_sparse_moe.experts.{e}.w2",
             "ffn_up_exps": "block_sparse_moe.experts.{e}.w3"},
    shared={},
    normalize_top_k=True,
)
_QWEN_EXPERTS = {"ffn_gate_exps": "mlp.experts.{e}.gate_proj", "ffn_up_exps": "mlp.experts.{e}.up_proj",
                 "ffn_down_exps": "mlp.experts.{e}.down_proj"}  # fmt: skip
_QWEN2_MOE = MoeNames(
    router="mlp.gate",
    experts=_QWEN_EXPERTS,
    shared={"ffn_gate_shexp": "mlp.shared_expert.gate_proj", "ffn_up_shexp": "mlp.shared_expert.up_proj",
            "ffn_down_shexp": "mlp.shared_expert.down_proj", "ffn_gate_inp_shexp": "mlp.shared_expert_gate"},
    normalize_top_k=False,
)  # fmt: skip
_QWEN3_MOE = MoeNames(router="mlp.gate", experts=_QWEN_EXPERTS, shared={}, normalize_top_k=True)

ARCHITECTURES = {
    "llama": GgufArch("LlamaForCausalLM", "llama", True, _LAYER_NAMES, moe=_MIXTRAL),
    "mistral": GgufArch("MistralForCausalLM", "mistral", True, _LAYER_NAMES),
    "qwen2": GgufArch("Qwen2ForCausalLM", "qwen2", False, _LAYER_NAMES),
    "qwen3": GgufArch("Qwen3ForCausalLM", "qwen3", False, {**_LAYER_NAMES, **_QK_NORMS}),
    "gemma2": GgufArch("Gemma2ForCausalLM", "gemma2", False, _GEMMA_NAMES, norm_shift=1.0),
    "gemma3": GgufArch("Gemma3ForCausalLM", "gemma3_text", False, _GEMMA_NAMES, norm_shift=1.0),
    "phi3": GgufArch("Phi3ForCausalLM", "phi3", False, _PHI3_NAMES),
    "qwen2moe": GgufArch("Qwen2MoeForCausalLM", "qwen2_moe", False, _LAYER_NAMES, moe=_QWEN2_MOE),
    "qwen3moe": GgufArch("Qwen3MoeForCausalLM", "qwen3_moe", False, {**_LAYER_NAMES, **_QK_NORMS}, moe=_QWEN3_MOE),
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# tensors that hold config, not weights: Phi-3's longrope factors (read into rope_scaling)
ROPE_FACTOR_TENSORS = ("rope_factors_long.weight", "rope_factors_short.weight")
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL = re.compile(r"(\w+)\.(weight|bias)")


@dataclass(frozen=True)
class HfName:
    name: str  # the Hugging Face tensor name
    expert: int | None = None  # the slice of a stacked experts tensor this name is


def architecture(arch: Any, file_name: str) -> GgufArch:
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        supported = ", ".join(ARCHITECTURES)
        raise ExportError(f"{file_name}: GGUF architecture {arch!r} is not supported (supported: {supported})")
    return ARCHITECTURES[arch]


def hf_names(gguf_name: str, arch: GgufArch, num_experts: int) -> list[HfName]:
    """The Hugging Face tensors a GGUF tensor holds: one, one per expert, or none we know."""
    if m := _LAYER.fullmatch(gguf_name):
        layer, part, kind = m.groups()
        prefix = f"model.layers.{layer}."
        if part in arch.layer_names:
            return [HfName(f"{prefix}{arch.layer_names[part]}.{kind}")]
        moe = arch.moe
        if moe is None or not num_experts:
            return []
        if part == "ffn_gate_inp":
            return [HfName(f"{prefix}{moe.router}.{kind}")]
        if part in moe.shared:
            return [HfName(f"{prefix}{moe.shared[part]}.{kind}")]
        if part in moe.experts:
            return [HfName(f"{prefix}{moe.experts[part].format(e=e)}.{kind}", e) for e in range(num_experts)]
        return []
    if (m := _GLOBAL.fullmatch(gguf_name)) and m.group(1) in GLOBAL_NAMES:
        return [HfName(f"{GLOBAL_NAMES[m.group(1)]}.{m.group(2)}")]
    return []


def gguf_name(hf_name: str, arch: GgufArch) -> str:
    """The GGUF name a Hugging Face tensor would have (for error messages)."""
    for gguf_part, hf_part in GLOBAL_NAMES.items():
        if hf_name.startswith(hf_part + "."):
            return gguf_part + hf_name[len(hf_part) :]
    if m := re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name):
        parts = {v: k for k, v in arch.layer_names.items()}
        return f"blk.{m.group(1)}.{parts.get(m.group(2), m.group(2))}.{m.group(3)}"
    return hf_name


Get = Callable[..., Any]  # a metadata key under the architecture's prefix, with a default


def hf_config(arch_name: str, fields: dict[str, Any], shapes: dict[str, tuple[int, ...]],
              rope_factors: dict[str, list[float]]) -> dict[str, Any]:  # fmt: skip
    """A Hugging Face config.json for the GGUF's architecture metadata. `shapes`: the Hugging Face
    tensors found (name -> shape); `rope_factors`: Phi-3's longrope factor tensors, by name."""
    arch = ARCHITECTURES[arch_name]

    def get(key: str, default: Any = None) -> Any:
        return fields.get(f"{arch_name}.{key}", default)

    heads = get("attention.head_count")
    hidden = get("embedding_length")
    embed = shapes.get("model.embed_tokens.weight")
    config: dict[str, Any] = {
        "architectures": [arch.hf_architecture],
        "model_type": arch.model_type,
        "hidden_size": hidden,
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "intermediate_size": get("feed_forward_length"),
        "vocab_size": get("vocab_size") or (embed[0] if embed else None),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": get("rope.freq_base", 10000.0),
        "max_position_embeddings": get("context_length", 2048),
        "tie_word_embeddings": "lm_head.weight" not in shapes,
        "hidden_act": "silu",
    }
    head_dim = get("attention.key_length") or (hidden // heads if hidden and heads else None)
    if head_dim:
        config["head_dim"] = head_dim
        rotary = get("rope.dimension_count", head_dim)
        if rotary != head_dim:
            config["partial_rotary_factor"] = rotary / head_dim
    if window := get("attention.sliding_window"):  # Phi-3 writes 0 for none
        config["sliding_window"] = window
        config["use_sliding_window"] = True
    config.update(_rope_scaling(get, rope_factors))
    if arch_name in ("gemma2", "gemma3"):  # Gemma's window is its sliding layers'; no switch, no silu
        del config["hidden_act"]
        config.pop("use_sliding_window", None)
        config.update(_gemma_config(arch_name, get))
    if arch.moe is not None and get("expert_count"):
        config.update(_moe_config(arch_name, arch.moe, get, shapes, config["num_hidden_layers"]))
    elif arch.moe is not None and arch_name != "llama":
        raise ExportError(f"GGUF metadata lacks {arch_name}.expert_count for a mixture-of-experts architecture")
    missing = [k for k, v in config.items() if v is None]
    if missing:
        raise ExportError(f"GGUF metadata lacks {', '.join(missing)} for architecture {arch_name!r}")
    return config


def _gemma_config(arch: str, get: Get) -> dict[str, Any]:
    """What llama.cpp knows about Gemma without metadata (llama-model.cpp), as transformers' config
    keys: GeGLU, the attention scale, which layers slide and the local layers' rope base."""
    heads, hidden, layers = get("attention.head_count"), get("embedding_length"), get("block_count")
    head_dim = get("attention.key_length") or hidden // heads
    config: dict[str, Any] = {
        "hidden_activation": "gelu_pytorch_tanh",
        # llama.cpp: 1/sqrt(hidden/heads) for the 27B models (62 layers), 1/sqrt(head_dim) otherwise
        "query_pre_attn_scalar": hidden // heads if layers == 62 else head_dim,
        "attn_logit_softcapping": get("attn_logit_softcapping"),
        "final_logit_softcapping": get("final_logit_softcapping"),
    }
    if arch == "gemma3":  # every sixth layer global; local layers at base 10000 (not in the metadata)
        config.update({"sliding_window_pattern": 6, "rope_local_base_freq": 10000.0})
    return {k: v for k, v in config.items() if v is not None}


def _moe_config(arch_name: str, moe: MoeNames, get: Get, shapes: dict[str, tuple[int, ...]],
                layers: int) -> dict[str, Any]:  # fmt: skip
    """Experts, top-k and sizes in each family's config keys. A layer without a router is a dense
    MLP (Qwen2-MoE's `mlp_only_layers`)."""
    count, top_k = get("expert_count"), get("expert_used_count")
    normalize = bool(get("expert_weights_norm", moe.normalize_top_k))
    if arch_name == "llama":  # Mixtral: the experts' size is the feed-forward length; always renormalised
        if not normalize:
            raise ExportError("a llama-architecture GGUF with experts that are not renormalised is not Mixtral")
        return {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "num_local_experts": count,
                "num_experts_per_tok": top_k}  # fmt: skip
    dense = [i for i in range(layers or 0) if f"model.layers.{i}.{moe.router}.weight" not in shapes]
    config = {"num_experts": count, "num_experts_per_tok": top_k, "norm_topk_prob": normalize,
              "moe_intermediate_size": get("expert_feed_forward_length"), "decoder_sparse_step": 1,
              "mlp_only_layers": dense}  # fmt: skip
    if moe.shared:
        config["shared_expert_intermediate_size"] = get("expert_shared_feed_forward_length")
    return config


def _rope_scaling(get: Get, rope_factors: dict[str, list[float]]) -> dict[str, Any]:
    if rope_factors:  # Phi-3's longrope: the factors are tensors, the original context is metadata
        original = get("rope.scaling.original_context_length")
        if original is None or set(rope_factors) != set(ROPE_FACTOR_TENSORS):
            raise ExportError("a GGUF with longrope factors needs both factor tensors and "
                              "rope.scaling.original_context_length")  # fmt: skip
        scaling = {"rope_type": "longrope", "long_factor": rope_factors["rope_factors_long.weight"],
                   "short_factor": rope_factors["rope_factors_short.weight"],
                   "original_max_position_embeddings": original}  # fmt: skip
        if (attention := get("rope.scaling.attn_factor")) is not None:
            scaling["attention_factor"] = _exact_attention_factor(attention, get("context_length"), original)
        return {"rope_scaling": scaling, "original_max_position_embeddings": original}
    kind = get("rope.scaling.type", "none")
    if kind in ("none", None):
        return {}
    factor = get("rope.scaling.factor")
    if kind == "linear":
        return {"rope_scaling": {"rope_type": "linear", "factor": factor}}
    if kind == "yarn":
        original = get("rope.scaling.original_context_length")
        return {"rope_scaling": {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}}
    raise ExportError(f"GGUF rope scaling {kind!r} is not supported (supported: none, linear, yarn, longrope)")


def _exact_attention_factor(stored: float, context: int | None, original: int) -> float:
    """GGUF keeps the attention factor as float32; where it is transformers' own longrope factor
    (sqrt(1 + ln(scale) / ln(original)), or 1), take that value at full precision."""
    scale = (context or original) / original
    derived = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0
    return derived if abs(derived - stored) < 1e-6 else float(stored)
