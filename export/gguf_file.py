"""Read a GGUF file (llama.cpp, Ollama, LM Studio) as a checkpoint, with ggml's own `gguf` reader.

The file is memory-mapped; tensors are handed out under their Hugging Face names, in the Hugging
Face layout, so the graph builders need not know where a weight came from. Two ways to take one:
`take` dequantizes to float32 (the `gguf` package knows every type), `take_linear` keeps the
file's own blocks where `export.gguf_blocks` maps them exactly.

llama.cpp's converter permutes the rows of llama-family q and k projections (its rope pairs
neighbouring features, Hugging Face's pairs the two halves of a head); `take*` undo it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, ReaderTensor
from gguf.quants import dequantize

from export.errors import ExportError
from export.gguf_blocks import block_weight, maps_exactly, native_bits
from export.quantize import BlockWeight, quantize_blocks

GGUF_MAGIC = b"GGUF"
# GGUF architecture -> (Hugging Face architecture, model_type, q/k rows permuted by the converter)
_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama", True),
    "mistral": ("MistralForCausalLM", "mistral", True),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", False),
    "qwen3": ("Qwen3ForCausalLM", "qwen3", False),
    "gemma2": ("Gemma2ForCausalLM", "gemma2", False),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text", False),
}
# llama.cpp's converter stores Gemma's norm weights as 1 + w (its RMSNorm multiplies by the weight);
# they are read back as w, as transformers' GGUF loader does, and the graph adds the 1 again
_NORM_SHIFT = {"gemma2": 1.0, "gemma3": 1.0}
_FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
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
    **_QK_NORMS,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_ARCH_LAYER_NAMES = {"qwen3": _QK_NORMS, "gemma2": _GEMMA_NAMES, "gemma3": _GEMMA_NAMES}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL = re.compile(r"(\w+)\.(weight|bias)")


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(4) == GGUF_MAGIC


def _layer_names(arch: str) -> dict[str, str]:
    return {**_LAYER_NAMES, **_ARCH_LAYER_NAMES.get(arch, {})}


def _hf_name(name: str, arch: str) -> str | None:
    names = _layer_names(arch)
    if m := _LAYER.fullmatch(name):
        layer, part, kind = m.groups()
        return f"model.layers.{layer}.{names[part]}.{kind}" if part in names else None
    if (m := _GLOBAL.fullmatch(name)) and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def _open_reader(path: Path) -> GGUFReader:
    try:
        size = path.stat().st_size
        reader = GGUFReader(path)
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, IndexError, TypeError, OverflowError) as exc:
        known = re.search(r"(\d+)\)? is not a valid GGMLQuantizationType", str(exc))
        if known:
            raise ExportError(
                f"{path} holds a tensor of type {known.group(1)}, unknown to this exporter's gguf reader; "
                "re-quantize the file with llama.cpp to a common type (e.g. Q8_0, Q4_K_M) or update gguf"
            ) from exc
        if not is_gguf(path):
            raise ExportError(f"{path} is not a GGUF file") from exc
        raise ExportError(f"{path} is truncated or damaged ({size} bytes; the GGUF reader says: {exc})") from exc
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise ExportError(f"{path} is truncated: tensor {tensor.name} ends past the end of the file")
    return reader


def read_fields(reader: GGUFReader) -> dict[str, Any]:
    """Every metadata key with its value as plain Python (str, int, float, bool, lists)."""
    fields: dict[str, Any] = {}
    for name, value in reader.fields.items():
        try:
            fields[name] = value.contents()
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise ExportError(f"GGUF metadata {name!r} cannot be read: {exc}") from exc
    return fields


@dataclass(frozen=True)
class _Slot:
    tensor: ReaderTensor
    shape: tuple[int, ...]  # Hugging Face order: (out, in) for a matrix
    permute_heads: int  # > 0: q/k rows to un-permute, in this many heads


def _config(arch: str, fields: dict[str, Any], slots: dict[str, _Slot]) -> dict[str, Any]:
    """A Hugging Face config.json for the GGUF's architecture metadata."""
    hf_arch, model_type, _ = _ARCHITECTURES[arch]

    def get(key: str, default: Any = None) -> Any:
        return fields.get(f"{arch}.{key}", default)

    heads = get("attention.head_count")
    hidden = get("embedding_length")
    embed = slots.get("model.embed_tokens.weight")
    config: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "hidden_size": hidden,
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "intermediate_size": get("feed_forward_length"),
        "vocab_size": get("vocab_size") or (embed.shape[0] if embed else None),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": get("rope.freq_base", 10000.0),
        "max_position_embeddings": get("context_length", 2048),
        "tie_word_embeddings": "lm_head.weight" not in slots,
        "hidden_act": "silu",
    }

    head_dim = get("attention.key_length") or (hidden // heads if hidden and heads else None)
    if head_dim:
        config["head_dim"] = head_dim
        rotary = get("rope.dimension_count", head_dim)
        if rotary != head_dim:
            config["partial_rotary_factor"] = rotary / head_dim
    if window := get("attention.sliding_window"):
        config["sliding_window"] = window
        config["use_sliding_window"] = True
    config.update(_rope_scaling(get))
    if arch in ("gemma2", "gemma3"):  # Gemma's window is its sliding layers'; no switch, no silu
        del config["hidden_act"]
        config.pop("use_sliding_window", None)
        config.update(_gemma_config(arch, get))
    missing = [k for k, v in config.items() if v is None]
    if missing:
        raise ExportError(f"GGUF metadata lacks {', '.join(missing)} for architecture {arch!r}")
    return config


def _gemma_config(arch: str, get: Any) -> dict[str, Any]:
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


def _rope_scaling(get: Any) -> dict[str, Any]:
    kind = get("rope.scaling.type", "none")
    if kind in ("none", None):
        return {}
    factor = get("rope.scaling.factor")
    if kind == "linear":
        return {"rope_scaling": {"rope_type": "linear", "factor": factor}}
    if kind == "yarn":
        original = get("rope.scaling.original_context_length")
        return {"rope_scaling": {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}}
    raise ExportError(f"GGUF rope scaling {kind!r} is not supported (supported: none, linear, yarn)")


@dataclass
class GgufCheckpoint:
    """A GGUF file, read like a Hugging Face checkpoint folder (see `export.checkpoint.Checkpoint`)."""

    path: Path
    fields: dict[str, Any]
    config: dict[str, Any]
    _slots: dict[str, _Slot]
    _taken: set[str] = field(default_factory=set)
    _ignored_gguf: tuple[str, ...] = ()
    norm_shift: float = 0.0  # stored norm weights are w + norm_shift (Gemma's 1 + w)

    @property
    def tensor_names(self) -> list[str]:
        return sorted(self._slots)

    def has(self, name: str) -> bool:
        return name in self._slots

    def tensor_type(self, name: str) -> GGMLQuantizationType:
        return self._slot(name, None).tensor.tensor_type

    def _slot(self, name: str, shape: tuple[int, ...] | None) -> _Slot:
        slot = self._slots.get(name)
        if slot is None:
            gguf_name = _gguf_name(name, self.fields.get("general.architecture", ""))
            raise ExportError(f"{self.path.name} is missing tensor {name!r} (its GGUF name: {gguf_name})")
        if shape is not None and slot.shape != shape:
            raise ExportError(
                f"tensor {slot.tensor.name} has shape {list(slot.shape)} but the metadata implies {list(shape)}"
            )
        self._taken.add(name)
        return slot

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The weight `name` as float32 in the Hugging Face layout."""
        slot = self._slot(name, shape)
        tensor = slot.tensor
        if tensor.tensor_type == GGMLQuantizationType.F32:
            value = np.asarray(tensor.data, np.float32)
        elif tensor.tensor_type == GGMLQuantizationType.F16:
            value = np.asarray(tensor.data).astype(np.float32)
        else:
            value = dequantize(np.asarray(tensor.data), tensor.tensor_type).astype(np.float32)
        value = value.reshape(shape)
        if self.norm_shift and name.endswith("norm.weight"):
            value = value - np.float32(self.norm_shift)
        return value[_head_order(shape[0], slot.permute_heads)] if slot.permute_heads else value

    def take_linear(self, name: str, shape: tuple[int, ...]) -> np.ndarray | BlockWeight:
        """A linear layer's (out, in) weight in the form closest to the file's: its own blocks where
        they map exactly, blocks re-quantized at the nearest width otherwise, float for float types."""
        slot = self._slot(name, shape)
        qtype = slot.tensor.tensor_type
        if qtype in _FLOAT_TYPES:
            return self.take(name, shape)
        if not maps_exactly(qtype):  # take() has put the rows in Hugging Face order already
            return replace(quantize_blocks(self.take(name, shape), native_bits(qtype) or 8, 32), exact=False)
        weight = block_weight(np.asarray(slot.tensor.data).reshape(shape[0], -1), qtype, shape[1])
        return weight.rows(_head_order(shape[0], slot.permute_heads)) if slot.permute_heads else weight

    def ignore(self, name: str) -> None:
        self._taken.add(name)

    def unused(self) -> list[str]:
        return sorted(set(self._slots) - self._taken) + list(self._ignored_gguf)

    def float_storage(self) -> str:
        """float16 when the file keeps its (unquantized) linear weights as F16, else float32."""
        types = {s.tensor.tensor_type for n, s in self._slots.items() if n.endswith("proj.weight")}
        return "float16" if GGMLQuantizationType.F16 in types else "float32"

    def native_quantization(self) -> str | None:
        """int4 or int8 as most linear weights are kept (by count), None when they are float."""
        widths = [native_bits(s.tensor.tensor_type) for n, s in self._slots.items() if n.endswith("proj.weight")]
        fours, eights = widths.count(4), widths.count(8)
        if not fours + eights:
            return None
        return "int4" if fours >= eights else "int8"

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for slot in self._slots.values():
            counts[slot.tensor.tensor_type.name] = counts.get(slot.tensor.tensor_type.name, 0) + 1
        return counts


def _gguf_name(hf_name: str, arch: str) -> str:
    for gguf_part, hf_part in _GLOBAL_NAMES.items():
        if hf_name.startswith(hf_part + "."):
            return gguf_part + hf_name[len(hf_part) :]
    if m := re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name):
        parts = {v: k for k, v in _layer_names(arch).items()}
        return f"blk.{m.group(1)}.{parts.get(m.group(2), m.group(2))}.{m.group(3)}"
    return hf_name


def _head_order(rows: int, heads: int) -> np.ndarray:
    """Rows in Hugging Face order, taken from llama.cpp's: its head h holds feature pairs
    (i, i + D/2) next to each other, as rows 2i and 2i + 1."""
    dim = rows // heads
    return np.arange(rows).reshape(heads, dim // 2, 2).transpose(0, 2, 1).reshape(-1)


def open_gguf(path: str | Path) -> GgufCheckpoint:
    path = Path(path)
    reader = _open_reader(path)
    fields = read_fields(reader)
    arch = fields.get("general.architecture")
    if arch not in _ARCHITECTURES:
        supported = ", ".join(_ARCHITECTURES)
        raise ExportError(f"{path.name}: GGUF architecture {arch!r} is not supported (supported: {supported})")
    permuted = _ARCHITECTURES[arch][2]
    heads = fields.get(f"{arch}.attention.head_count") or 0
    kv_heads = fields.get(f"{arch}.attention.head_count_kv", heads) or 0
    slots: dict[str, _Slot] = {}
    ignored = []
    for tensor in reader.tensors:
        hf = _hf_name(tensor.name, arch)
        if hf is None:
            ignored.append(tensor.name)
            continue
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        permute = 0
        if permuted and hf.endswith(("q_proj.weight", "q_proj.bias")):
            permute = heads
        elif permuted and hf.endswith(("k_proj.weight", "k_proj.bias")):
            permute = kv_heads
        slots[hf] = _Slot(tensor, shape, permute)
    config = _config(arch, fields, slots)
    shift = _NORM_SHIFT.get(arch, 0.0)
    return GgufCheckpoint(path, fields, config, slots, _ignored_gguf=tuple(ignored), norm_shift=shift)
