"""Which quantization block size decodes fastest: every size in one process, rounds interleaved.

    python bench/bench_quant_blocks.py [--model tinyllama-1.1b] [--sizes 32,64,128,256] [--rounds 8]

For int8 and int4, exports the model at each block size (cached), loads them all into one
process and decodes 24 greedy tokens with each in turn, round after round, the order reversed
every other round. Separate processes measured minutes apart could not tell these apart on a
shared machine, whose memory bandwidth drifts by tens of percent; the per-round ratio against
block 32, taken seconds apart, can. Writes the "quantization blocks" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.bench_local import checkpoint, export_with  # noqa: E402
from bench.report import replace_section  # noqa: E402
from bench.turns import NEW_TOKENS, local_decode, round_ratios, take_turns  # noqa: E402
from swarm.config import RuntimeOptions  # noqa: E402
from swarm.local import LocalModel  # noqa: E402


def measure(ckpt: Path, quantize: str, sizes: list[int], rounds: int, cache: Path) -> list[dict]:
    packages = {s: export_with(ckpt, ["--quantize", quantize, "--block-size", str(s)], cache) for s in sizes}
    models = {s: LocalModel(p, RuntimeOptions(threads=2)) for s, p in packages.items()}
    speeds = take_turns({s: partial(local_decode, m) for s, m in models.items()}, rounds)
    base = speeds[sizes[0]]
    return [{"quantize": quantize, "block_size": s, "decode_tok_s": round(statistics.median(v), 2),
             "ratio_to_first": round(statistics.median(round_ratios(v, base)), 3),
             "bytes_per_token": sum(b.bytes for b in models[s].manifest.blocks) + models[s].manifest.head.bytes}
            for s, v in speeds.items()]  # fmt: skip


def markdown(rows: list[dict], sizes: list[int], rounds: int, command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, 2 threads, default pools; every size "
             f"loaded in one process, {rounds} interleaved rounds of {NEW_TOKENS} greedy tokens).", "",
             f"| format | block size | MB read per token | decode tok/s | per-round ratio to block {sizes[0]} |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['quantize']} | {r['block_size']} | {r['bytes_per_token'] / 1e6:.0f} | "
                     f"{r['decode_tok_s']:.2f} | {r['ratio_to_first']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tinyllama-1.1b")
    p.add_argument("--sizes", default="32,64,128,256", help="block sizes, the first is the baseline")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    ckpt = checkpoint(args.model, args.cache)
    rows = []
    for quantize in ("int8", "int4"):
        print(f"== {quantize}", file=sys.stderr)
        rows += measure(ckpt, quantize, sizes, args.rounds, args.cache)
        print(rows[-len(sizes) :], file=sys.stderr)
    command = "python bench/bench_quant_blocks.py " + " ".join(sys.argv[1:])
    replace_section(REPO / "docs" / "BENCHMARKS.md", "quantization blocks",
                    markdown(rows, sizes, args.rounds, command.strip()))  # fmt: skip


if __name__ == "__main__":
    main()
