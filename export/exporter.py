"""Turn a Hugging Face checkpoint folder or a GGUF file into a model package, atomically.

Everything is written into a staging folder beside OUT and renamed into place at the end,
so a failed or interrupted export never leaves a half package behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from export.checkpoint import WeightSource
from export.decoder import build_block, build_embedding, build_head
from export.errors import ExportError
from export.graph import Graph
from export.linear import WeightFormat
from export.moe import MOE_FORMULATIONS
from export.sources import Source, open_source
from export.spec import ModelSpec
from swarm.package import (
    MANIFEST_NAME,
    Architecture,
    BlockEntry,
    Manifest,
    ModelPackage,
    file_entry,
    load_package,
)

# protobuf cannot serialise a message of 2 GiB or more
_MAX_GRAPH_BYTES = (2 << 30) - (64 << 20)
DEFAULT_MAX_CONTEXT = 4096
# Quantization block, measured in docs/BENCHMARKS.md: on CPU, groups of 128 input features
# decode faster than llama.cpp's groups of 32 (1.1B shape: int4 1.3x, int8 1.17x; fewer scales
# to read, fewer block boundaries in the kernel) at no measurable accuracy cost for int8
# (stories260K perplexity 2.3597 either way). 128 is also the usual GPTQ/AWQ group.
DEFAULT_BLOCK_SIZE = 128

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class ExportOptions:
    layers_per_block: int = 1
    # float32 | float16 storage of unquantized weights; None = as the source has them: float32 for
    # a checkpoint folder, and for a GGUF file every tensor in its own format (see export.gguf_blocks)
    dtype: str | None = None
    quantize: str | None = None  # None | int8 | int4: re-quantize every linear layer
    block_size: int | None = None  # quantization block, input features; None = DEFAULT_BLOCK_SIZE
    accuracy_level: int = 4  # MatMulNBits accuracy level (4 = int8 activations)
    max_context: int | None = None  # default: min(max_position_embeddings, DEFAULT_MAX_CONTEXT)
    moe: str = "ort"  # a mixture of experts as onnxruntime's MoE op (ort) or plain ONNX top-k (topk)
    force: bool = False  # replace an existing OUT

    @property
    def quant_block_size(self) -> int:
        return self.block_size or DEFAULT_BLOCK_SIZE

    def weight_format(self, source: Source) -> WeightFormat:
        bits = {None: None, "int8": 8, "int4": 4}[self.quantize]
        native = source.holds_blocks and self.dtype is None and bits is None
        storage = self.dtype or (source.float_storage if native else "float32")
        return WeightFormat(storage, bits, self.quant_block_size, self.accuracy_level, native)


def _check_options(options: ExportOptions, spec: ModelSpec) -> None:
    if options.dtype not in (None, "float32", "float16"):
        raise ExportError(f"--dtype must be float32 or float16, got {options.dtype!r}")
    if options.quantize not in (None, "int8", "int4"):
        raise ExportError(f"--quantize must be int8 or int4, got {options.quantize!r}")
    size = options.quant_block_size
    if size < 16 or size & (size - 1):
        raise ExportError(f"--block-size must be a power of two >= 16, got {size}")
    if not options.layers_per_block >= 1:
        raise ExportError(f"--layers-per-block must be at least 1, got {options.layers_per_block}")
    if options.moe not in MOE_FORMULATIONS:
        raise ExportError(f"moe must be one of {', '.join(MOE_FORMULATIONS)}, got {options.moe!r}")
    if options.max_context is not None and options.max_context < 1:
        raise ExportError(f"--max-context must be positive, got {options.max_context}")


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} already exists and is not empty; pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {parent}: {exc.strerror}") from exc
    if not os.access(parent, os.W_OK):
        raise ExportError(f"cannot write into {parent}: permission denied")


def _save(graph: Graph, folder: Path, name: str) -> None:
    model = graph.to_model()
    if model.ByteSize() > _MAX_GRAPH_BYTES:
        raise ExportError(
            f"{name} would be {model.ByteSize() / 2**30:.1f} GiB, over ONNX's 2 GiB file limit; "
            "use --dtype float16, --quantize, or fewer --layers-per-block"
        )
    onnx.save_model(model, str(folder / name))


def _block_ranges(num_layers: int, per_block: int) -> list[tuple[int, int]]:
    return [(s, min(s + per_block, num_layers)) for s in range(0, num_layers, per_block)]


def _architecture(spec: ModelSpec) -> Architecture:
    return Architecture(
        family=spec.family.name,
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        cache_head_dim=spec.cache_head_dim,
        intermediate_size=spec.intermediate_size,
        vocab_size=spec.vocab_size,
        rms_norm_eps=spec.rms_norm_eps,
        rope_theta=spec.rope.theta,
        rope_type=spec.rope.rope_type,
        tie_word_embeddings=spec.tie_word_embeddings,
        sliding_window=spec.sliding_window,
        layer_windows=spec.layer_windows,
    )


def _write_stages(
    ckpt: WeightSource,
    spec: ModelSpec,
    options: ExportOptions,
    fmt: WeightFormat,
    max_context: int,
    stage: Path,
    progress: Progress,
) -> list[BlockEntry]:
    ranges = _block_ranges(spec.num_layers, options.layers_per_block)
    total = len(ranges) + 2
    progress("embedding", 0, total)
    _save(build_embedding(ckpt, spec, fmt), stage, "embedding.onnx")
    blocks = []
    for index, (start, end) in enumerate(ranges):
        progress(f"layers {start}-{end - 1}", index + 1, total)
        name = f"block_{index:03d}.onnx"
        _save(build_block(ckpt, spec, fmt, start, end, max_context, options.moe), stage, name)
        entry = file_entry(stage, name)
        blocks.append(BlockEntry(index, start, end, name, entry.bytes, entry.sha256))
    progress("head", total - 1, total)
    _save(build_head(ckpt, spec, fmt), stage, "head.onnx")
    progress("done", total, total)
    return blocks


def _unused_weights(ckpt: WeightSource) -> list[str]:
    # rotary frequency buffers are recomputed from the config, never read
    return [n for n in ckpt.unused() if not n.endswith("rotary_emb.inv_freq")]


def export_checkpoint(
    src: str | Path, out: str | Path, options: ExportOptions, progress: Progress | None = None
) -> ModelPackage:
    """Export a checkpoint folder or a GGUF file `src` into the package folder `out`."""
    source = open_source(src)
    spec = source.spec
    _check_options(options, spec)
    fmt = options.weight_format(source)
    max_context = min(spec.rope.max_position_embeddings, options.max_context or DEFAULT_MAX_CONTEXT)
    out = Path(out)
    _prepare_out(out, options.force)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        blocks = _write_stages(source.weights, spec, options, fmt, max_context, stage, progress or (lambda *_: None))
        unused = _unused_weights(source.weights)
        if unused:
            shown = ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else "")
            family = spec.family.name
            raise ExportError(f"checkpoint has {len(unused)} tensors unused by the {family} graph: {shown}")
        tokenizer = source.write_tokenizer(stage)
        manifest = Manifest(
            name=source.name,
            architecture=_architecture(spec),
            dtype=fmt.storage,
            activation_dtype="float32",
            quantization=source.native_quantization if fmt.native else options.quantize,
            max_context=max_context,
            tokenizer=tokenizer,
            embedding=file_entry(stage, "embedding.onnx"),
            blocks=tuple(blocks),
            head=file_entry(stage, "head.onnx"),
            source={**source.provenance, "exporter": "swarm-export 1"},
        )
        (stage / MANIFEST_NAME).write_text(manifest.to_json())
        _move_into_place(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return load_package(out)


def _move_into_place(stage: Path, out: Path) -> None:
    stage.chmod(0o755)  # mkdtemp makes it private
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        stage.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        stage.rename(out)
