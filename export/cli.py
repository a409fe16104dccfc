"""`swarm-export SRC OUT`: a Hugging Face checkpoint folder in, a model package out."""

from __future__ import annotations

import argparse
import sys

from export.errors import ExportError
from export.exporter import DEFAULT_MAX_CONTEXT, ExportOptions, export_checkpoint
from swarm.console import add_version_flag
from swarm.errors import SwarmError
from swarm.progress import ProgressLine


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swarm-export",
        description="Export a Hugging Face causal-LM checkpoint (config.json, *.safetensors, tokenizer.json) "
        "into a swarm model package: one ONNX file per block of layers plus embedding and head.",
    )
    add_version_flag(p)
    p.add_argument("src", help="checkpoint folder")
    p.add_argument("out", help="package folder to create")
    p.add_argument("--layers-per-block", type=int, default=1, help="decoder layers per ONNX block (default 1)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="weight storage dtype")
    p.add_argument("--quantize", choices=["int8", "int4"], help="weight-only quantization of linear layers")
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
        package = export_checkpoint(args.src, args.out, options, ProgressLine(quiet=args.quiet))
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
