"""Read a Hugging Face checkpoint folder: config.json and *.safetensors, without torch.

The safetensors format is an 8-byte header length, a JSON header, then raw tensor bytes.
We read it with numpy memory maps rather than the safetensors package because numpy has
no bfloat16, the dtype most checkpoints ship in; bf16 is widened to float32 here.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from export.errors import ExportError
from export.quantize import BlockWeight

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # widened to float32 on read
    "I64": np.int64,
    "I32": np.int32,
    "I8": np.int8,
    "U8": np.uint8,
}
_MAX_HEADER_BYTES = 100 << 20


@dataclass(frozen=True)
class _TensorSlot:
    path: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int


def _read_header(path: Path) -> dict[str, _TensorSlot]:
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ExportError(f"{path} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER_BYTES:
            raise ExportError(f"{path} is not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(fh.read(length))
        except json.JSONDecodeError as exc:
            raise ExportError(f"{path} is not a safetensors file ({exc})") from exc
    base = 8 + length
    slots = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ExportError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        slots[name] = _TensorSlot(path, info["dtype"], tuple(info["shape"]), base + begin, base + end)
    return slots


class WeightSource(Protocol):
    """What the graph builders read weights from: a checkpoint folder or a GGUF file."""

    config: dict[str, Any]

    def has(self, name: str) -> bool: ...

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The weight `name` as float32, checked against the shape the config implies."""
        ...

    def take_linear(self, name: str, shape: tuple[int, ...]) -> np.ndarray | BlockWeight:
        """A linear layer's (out, in) weight in the form the source keeps it: float32 or blocks."""
        ...

    def ignore(self, name: str) -> None: ...

    def unused(self) -> list[str]: ...


@dataclass
class Checkpoint:
    """A checkpoint folder; `take(name)` hands out each weight once and remembers what was used."""

    root: Path
    config: dict[str, Any]
    _slots: dict[str, _TensorSlot]
    _taken: set[str] = field(default_factory=set)

    @property
    def tensor_names(self) -> list[str]:
        return sorted(self._slots)

    def has(self, name: str) -> bool:
        return name in self._slots

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The weight `name` as float32, checked against the shape the config implies."""
        slot = self._slots.get(name)
        if slot is None:
            raise ExportError(f"checkpoint is missing tensor {name!r} (expected shape {list(shape)})")
        if slot.shape != shape:
            raise ExportError(f"tensor {name!r} has shape {list(slot.shape)} but config.json implies {list(shape)}")
        self._taken.add(name)
        count = int(np.prod(shape)) if shape else 1
        raw = np.memmap(slot.path, dtype=_DTYPES[slot.dtype], mode="r", offset=slot.begin, shape=(count,))
        if slot.dtype == "BF16":
            widened = raw.astype(np.uint32) << 16
            return widened.view(np.float32).reshape(shape)
        return np.asarray(raw, dtype=np.float32).reshape(shape)

    def take_linear(self, name: str, shape: tuple[int, ...]) -> np.ndarray | BlockWeight:
        """Checkpoint folders hold float weights: the same as `take`."""
        return self.take(name, shape)

    def ignore(self, name: str) -> None:
        """Mark a tensor as deliberately unused (e.g. a tied lm_head stored anyway)."""
        self._taken.add(name)

    def unused(self) -> list[str]:
        return sorted(set(self._slots) - self._taken)


def open_checkpoint(root: str | Path) -> Checkpoint:
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"{root} is not a folder; give the path of a Hugging Face checkpoint folder")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{root} is not a Hugging Face checkpoint: it has no config.json")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_path} is not valid JSON: {exc}") from exc
    files = sorted(root.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in root.glob("*.bin")) + sorted(p.name for p in root.glob("*.pt"))
        hint = f" (found {', '.join(found)}: convert them to safetensors first)" if found else ""
        raise ExportError(f"{root} has no *.safetensors weights{hint}")
    slots: dict[str, _TensorSlot] = {}
    for path in files:
        slots.update(_read_header(path))
    return Checkpoint(root=root, config=config, _slots=slots)
