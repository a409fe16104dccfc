"""Gemma 3 270M, ours against llama.cpp on the same GGUF (gemma-3-270m-q4_k_m.gguf).

    python bench/bench_gemma3.py [--rounds 8] [--cache DIR] [--gguf PATH]

Pairs, each engine starting from the same Q4_K_M weights (Q4_K, Q5_0, Q6_K, Q8_0 tensors):
  native   our default export (the file's own blocks; int8 activations, --accuracy-level 4)
           against llama.cpp on the Q4_K_M file itself
  native0  the same blocks at --accuracy-level 0 (float32 activations: within 7e-5 of
           transformers) against the same file
  float32  `swarm-export --dtype float32` against llama.cpp F32 (dequantized from the file)
For each pair one process loads both engines and takes turns (bench/turns.py): greedy decode
tok/s over 24 tokens and prefill tok/s of a 128-token prompt, round after round, the ratio being
the median of the per-round ratios; then both perplexities on the same token ids of one fixed
English text (bench/bench_gguf.py's). The goal (issue 20): ours >= llama.cpp at no worse
perplexity. Needs llama-cpp-python (bench/LLAMA_CPP.md) and the gemma packages
(tests/gguf_models.py). Writes bench/out/gemma3.json and the "gemma3" section of docs/BENCHMARKS.md.
Run it on a quiet machine: timings on a shared one are noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.bench_gguf import PREFILL_LEN, machine, one_pair, requantized  # noqa: E402
from bench.bench_local import export_with  # noqa: E402
from bench.report import replace_section  # noqa: E402
from bench.turns import NEW_TOKENS, PROMPT  # noqa: E402
from tests.gguf_models import gemma3_gguf  # noqa: E402

PAIRS = {  # our variant: (export arguments, llama.cpp type, llama_ftype to make it from the file)
    "native": ([], "Q4_K_M", None),
    "native0": (["--accuracy-level", "0"], "Q4_K_M", None),
    "float32": (["--dtype", "float32"], "F32", 0),
}


def gguf_file(source: Path, variant: str, cache: Path) -> Path:
    """The Q4_K_M file itself, or llama.cpp's re-quantization of it (cached)."""
    _, gguf_type, ftype = PAIRS[variant]
    return requantized(source, gguf_type, ftype, cache)


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}; {result.get('machine', '')}; a machine shared "
             "with other jobs; Gemma 3 270M from `gemma-3-270m-q4_k_m.gguf`; "
             f"2 threads; both engines in one process per pair, {result['rounds']} rounds taking turns: decode "
             f"{NEW_TOKENS} greedy tokens after a {len(PROMPT)}-token prompt, prefill {PREFILL_LEN} tokens; "
             "ratio = median of per-round ratios; perplexity on the same "
             f"{result['pairs'][0]['text_tokens']} token ids of a fixed English text).", "",
             "| ours | llama.cpp | decode tok/s ours / llama.cpp | decode ratio (quartiles) | "
             "prefill tok/s ours / llama.cpp | perplexity ours / llama.cpp |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in result["pairs"]:
        q1, _, q3 = r["decode_ratio_quartiles"]
        lines.append(f"| {r['variant']} | {r['type']} | {r['ours_decode_tok_s']} / {r['llama_decode_tok_s']} | "
                     f"**{r['decode_ratio']:.2f}x** ({q1:.2f} – {q3:.2f}) | {r['ours_prefill_tok_s']} / "
                     f"{r['llama_prefill_tok_s']} | "
                     f"{r['ours_perplexity']:.3f} / {r['llama_perplexity']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--gguf", type=Path, help="the Q4_K_M file (default: from the gemma packages)")
    p.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    p.add_argument("--pair", nargs=3, metavar=("VARIANT", "PKG", "GGUF"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.pair:  # one pair in its own process: the spinning pool is process-wide
        variant, package, gguf = args.pair
        print(json.dumps({"variant": variant, "type": PAIRS[variant][1],
                          **one_pair(Path(package), Path(gguf), True, args.rounds)}))  # fmt: skip
        return
    source = args.gguf or gemma3_gguf()
    pairs = []
    for variant in args.pairs:
        package = export_with(source, PAIRS[variant][0], args.cache)
        cmd = [sys.executable, __file__, "--pair", variant, str(package), str(gguf_file(source, variant, args.cache)),
               "--rounds", str(args.rounds)]  # fmt: skip
        pairs.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        print(pairs[-1], file=sys.stderr)
    result = {"rounds": args.rounds, "machine": machine(), "pairs": pairs}
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gemma3.json").write_text(json.dumps(result, indent=2))
    command = ("python bench/bench_gemma3.py " + " ".join(sys.argv[1:])).strip()
    replace_section(REPO / "docs" / "BENCHMARKS.md", "gemma3", markdown(result, command))


if __name__ == "__main__":
    main()
