"""The model package: a folder with manifest.json, ONNX stages and tokenizer.json.

The exporter writes packages, everything else reads them. The package id is the sha256
of the canonical manifest, so two devices agree on a model by id alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swarm.errors import InvalidPackage

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "swarm-model-package"
FORMAT_VERSION = 1

# The stage graphs' inputs and outputs, defined here once: the exporter writes them
# (export/decoder.py), the runtime binds them (swarm/runtime.py), block merging joins on them
# (swarm/block_merge.py). B rows, S new positions, H hidden size, V vocabulary.
INPUT_IDS = "input_ids"  # embedding in: (B, S) int64
HIDDEN_STATES = "hidden_states"  # embedding out; block and head in: (B, S, H) float32
HIDDEN_STATES_OUT = "hidden_states_out"  # block out: (B, S, H) float32
POSITION_IDS = "position_ids"  # block in: (B, S) int64
SEQLENS_K = "seqlens_k"  # block in: (B,) int32, per row: tokens in the cache after this step - 1
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"  # block in: () int32
LOGITS = "logits"  # head out: (B, S, V) float32
BLOCK_SHARED_INPUTS = (POSITION_IDS, SEQLENS_K, TOTAL_SEQUENCE_LENGTH)  # one value for every layer of a step


def past_key_name(layer: int) -> str:
    """Block in: layer `layer`'s cached keys (B, n_kv, past, D_cache); likewise the other three."""
    return f"past_key_values.{layer}.key"


def past_value_name(layer: int) -> str:
    return f"past_key_values.{layer}.value"


def present_key_name(layer: int) -> str:
    return f"present.{layer}.key"


def present_value_name(layer: int) -> str:
    return f"present.{layer}.value"


def is_cache_name(name: str) -> bool:
    """Whether `name` is one of the per-layer cache inputs or outputs."""
    return name.startswith(("past_key_values.", "present."))


@dataclass(frozen=True)
class FileEntry:
    """One file of the package, pinned by size and content hash."""

    file: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class BlockEntry:
    """A contiguous run of decoder layers `[start, end)` exported as one ONNX graph."""

    index: int
    start: int
    end: int
    file: str
    bytes: int
    sha256: str

    @property
    def num_layers(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Architecture:
    """The facts about the network that a runtime needs without opening any ONNX file."""

    family: str  # llama | mistral | qwen2 | qwen3 | gemma2 | gemma3 | phi3 | mixtral | qwen2_moe | qwen3_moe
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    cache_head_dim: int  # head_dim rounded up to what the attention kernel accepts (multiple of 16)
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_type: str  # default | linear | dynamic | llama3 | yarn
    tie_word_embeddings: bool
    sliding_window: int | None  # tokens a query may look back, None = unlimited
    # per layer: its window (None = full attention); () = every layer has `sliding_window`
    layer_windows: tuple[int | None, ...] = ()

    def window(self, layer: int) -> int | None:
        return self.layer_windows[layer] if self.layer_windows else self.sliding_window


@dataclass(frozen=True)
class TokenizerInfo:
    """tokenizer.json does the encoding (its post-processor adds BOS where the model wants it);
    the rest is what generation and chat templates need."""

    file: str
    sha256: str  # of the tokenizer file, so a client fetching it from a peer can check it
    bos_token: str | None
    eos_token: str | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]  # generation stops at any of these
    chat_template: str | None  # jinja, as in tokenizer_config.json


@dataclass(frozen=True)
class Manifest:
    name: str
    architecture: Architecture
    dtype: str  # storage dtype of unquantized weights: float32 | float16
    activation_dtype: str  # dtype of hidden states between stages: float32
    quantization: str | None  # None | int8 | int4 (weight-only, MatMulNBits)
    max_context: int  # tokens per session the rotary tables cover
    tokenizer: TokenizerInfo
    embedding: FileEntry
    blocks: tuple[BlockEntry, ...]
    head: FileEntry
    source: dict[str, str] = field(default_factory=dict)  # provenance: where it was exported from
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def num_layers(self) -> int:
        return self.architecture.num_layers

    def _as_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        if not self.architecture.layer_windows:  # as manifests without per-layer windows were: same package id
            del raw["architecture"]["layer_windows"]
        return raw

    def to_json(self) -> str:
        return json.dumps(self._as_dict(), indent=2, sort_keys=True) + "\n"

    def canonical_bytes(self) -> bytes:
        return json.dumps(self._as_dict(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def package_id(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def blocks_in(self, start: int, end: int) -> tuple[BlockEntry, ...]:
        """The blocks that exactly tile layers `[start, end)`; raises if a block straddles an edge."""
        chosen = tuple(b for b in self.blocks if start <= b.start and b.end <= end)
        covered = sum(b.num_layers for b in chosen)
        if not 0 <= start < end <= self.num_layers or covered != end - start:
            edges = sorted({b.start for b in self.blocks} | {self.num_layers})
            raise InvalidPackage(
                f"layers [{start}, {end}) do not fall on block edges of this package; "
                f"spans must start and end at one of {edges}"
            )
        return chosen

    @classmethod
    def from_dict(cls, raw: Any) -> Manifest:
        if not isinstance(raw, dict):
            raise InvalidPackage("malformed manifest: not a JSON object")
        try:
            if raw.get("format") != FORMAT_NAME or raw.get("format_version") != FORMAT_VERSION:
                raise InvalidPackage(
                    f"not a {FORMAT_NAME} v{FORMAT_VERSION} manifest "
                    f"(format={raw.get('format')!r}, version={raw.get('format_version')!r})"
                )
            tok = dict(raw["tokenizer"])
            tok["eos_token_ids"] = tuple(tok["eos_token_ids"])
            arch = dict(raw["architecture"])
            arch["layer_windows"] = tuple(arch.get("layer_windows", ()))
            manifest = cls(
                name=raw["name"],
                architecture=Architecture(**arch),
                dtype=raw["dtype"],
                activation_dtype=raw["activation_dtype"],
                quantization=raw["quantization"],
                max_context=int(raw["max_context"]),
                tokenizer=TokenizerInfo(**tok),
                embedding=FileEntry(**raw["embedding"]),
                blocks=tuple(BlockEntry(**b) for b in raw["blocks"]),
                head=FileEntry(**raw["head"]),
                source=dict(raw.get("source", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidPackage(f"malformed manifest: {exc!r}") from exc
        for name in manifest.file_names():
            _check_file_name(name)
        return manifest

    def file_names(self) -> list[str]:
        """Every file the package consists of, manifest included."""
        stages = [self.embedding.file, *(b.file for b in self.blocks), self.head.file]
        return [MANIFEST_NAME, self.tokenizer.file, *stages]


def _check_file_name(name: object) -> None:
    """Package files are plain names inside the package folder: manifests come from peers, and a
    name like '../x' would let a peer write or read outside it."""
    if not isinstance(name, str) or not 0 < len(name) <= 255 or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise InvalidPackage(f"manifest names an invalid file {name!r}: files must be plain names")


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(folder: Path, name: str) -> FileEntry:
    path = folder / name
    return FileEntry(file=name, bytes=path.stat().st_size, sha256=sha256_file(path))


@dataclass(frozen=True)
class ModelPackage:
    """A package folder on disk together with its parsed manifest."""

    root: Path
    manifest: Manifest

    @property
    def package_id(self) -> str:
        return self.manifest.package_id

    def path(self, name: str) -> Path:
        return self.root / name

    def verify_file(self, entry: FileEntry | BlockEntry) -> None:
        """Check one file against the manifest before anything loads it."""
        path = self.path(entry.file)
        if not path.is_file():
            raise InvalidPackage(f"{path} is missing from the package")
        if path.stat().st_size != entry.bytes:
            raise InvalidPackage(f"{path} has {path.stat().st_size} bytes, the manifest says {entry.bytes}")
        if sha256_file(path) != entry.sha256:
            raise InvalidPackage(f"{path} does not match the sha256 in the manifest; fetch it again")


def load_package(root: str | Path) -> ModelPackage:
    root = Path(root)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise InvalidPackage(f"{root} is not a model package: no {MANIFEST_NAME} (export one with swarm-export)")
    try:
        raw = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidPackage(f"cannot read {manifest_path}: {exc}") from exc
    return ModelPackage(root=root, manifest=Manifest.from_dict(raw))
