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
from export.gguf_arch import ARCHITECTURES, ROPE_FACTOR_TENSORS, GgufArch, HfName, architecture, hf_config, hf_names
from export.gguf_arch import gguf_name as _gguf_name
from export.gguf_blocks import block_weight, maps_exactly, native_bits
from export.quantize import BlockWeight, quantize_blocks

GGUF_MAGIC = b"GGUF"
_FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(4) == GGUF_MAGIC


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
    expert: int | None = None  # the expert's slice of a stacked experts tensor

    def raw(self) -> np.ndarray:
        """The file's data for this tensor (one expert's slice of a stacked one)."""
        data = np.asarray(self.tensor.data)
        return data[self.expert] if self.expert is not None else data


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
            arch = ARCHITECTURES.get(self.fields.get("general.architecture", ""))
            gguf_name = _gguf_name(name, arch) if arch else name
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
        qtype = slot.tensor.tensor_type
        if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            value = slot.raw().astype(np.float32)
        else:
            value = dequantize(slot.raw(), qtype).astype(np.float32)
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
        weight = block_weight(slot.raw().reshape(shape[0], -1), qtype, shape[1])
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


def _head_order(rows: int, heads: int) -> np.ndarray:
    """Rows in Hugging Face order, taken from llama.cpp's: its head h holds feature pairs
    (i, i + D/2) next to each other, as rows 2i and 2i + 1."""
    dim = rows // heads
    return np.arange(rows).reshape(heads, dim // 2, 2).transpose(0, 2, 1).reshape(-1)


def open_gguf(path: str | Path) -> GgufCheckpoint:
    path = Path(path)
    reader = _open_reader(path)
    fields = read_fields(reader)
    arch_name = str(fields.get("general.architecture"))
    arch = architecture(fields.get("general.architecture"), path.name)
    heads = fields.get(f"{arch_name}.attention.head_count") or 0
    kv_heads = fields.get(f"{arch_name}.attention.head_count_kv", heads) or 0
    num_experts = int(fields.get(f"{arch_name}.expert_count") or 0)
    slots: dict[str, _Slot] = {}
    rope_factors: dict[str, list[float]] = {}
    ignored = []
    for tensor in reader.tensors:
        if tensor.name in ROPE_FACTOR_TENSORS:  # config, not weights
            rope_factors[tensor.name] = [float(f) for f in np.asarray(tensor.data, np.float32).reshape(-1)]
            continue
        names = hf_names(tensor.name, arch, num_experts)
        if not names:
            ignored.append(tensor.name)
            continue
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        for hf in names:
            slots[hf.name] = _Slot(tensor, _hf_shape(hf, shape), _permuted_heads(hf.name, arch, heads, kv_heads),
                                   hf.expert)  # fmt: skip
    config = hf_config(arch_name, fields, {name: slot.shape for name, slot in slots.items()}, rope_factors)
    return GgufCheckpoint(path, fields, config, slots, _ignored_gguf=tuple(ignored), norm_shift=arch.norm_shift)


def _hf_shape(name: HfName, shape: tuple[int, ...]) -> tuple[int, ...]:
    if name.expert is not None:  # (experts, out, in) -> one expert's (out, in)
        return shape[1:]
    if name.name.endswith("shared_expert_gate.weight") and len(shape) == 1:  # llama.cpp keeps it 1-D
        return (1, shape[0])
    return shape


def _permuted_heads(name: str, arch: GgufArch, heads: int, kv_heads: int) -> int:
    """Heads to un-permute the rows of (llama.cpp's converter permuted llama-family q and k)."""
    if arch.permuted_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
        return heads
    if arch.permuted_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
        return kv_heads
    return 0
