"""Our local runner against llama.cpp in one process, taking turns: the issue-2 decode goals.

    python bench/bench_head_to_head.py [--rounds 8] [--cache DIR]

For each pair (float32 / F32, int8 / Q8_0, int4 / Q4_K_M on the 1.1B shape) and for both of
our thread-pool modes, one process loads both engines and decodes 24 greedy tokens with each
in turn, round after round, the order reversed every other round, with a pause between turns
so that neither engine's spinning threads run into the other's turn. The goal ratio is the
median of the per-round ratios: turns seconds apart see the same memory bandwidth, which on
this shared machine drifts by tens of percent between separate processes minutes apart.
Needs llama-cpp-python (bench/LLAMA_CPP.md). Writes the "head to head" section of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE, build_gguf, llama_next_token, load_llama  # noqa: E402
from bench.bench_local import checkpoint, export  # noqa: E402
from bench.report import replace_section  # noqa: E402
from bench.turns import NEW_TOKENS, PROMPT, local_decode, round_ratios, take_turns  # noqa: E402

PAIRS = {"float32": "F32", "int8": "Q8_0", "int4": "Q4_K_M"}  # our variant -> llama.cpp type
PAUSE_S = 0.1  # longer than either engine's threads keep spinning after a step


def ours_decode(package: Path, spin: bool) -> Callable[[], float]:
    from swarm.config import RuntimeOptions
    from swarm.local import LocalModel

    return partial(local_decode, LocalModel(package, RuntimeOptions(threads=2, spin=spin)))


def llama_decode(gguf: Path) -> Callable[[], float]:
    llm = load_llama(gguf, threads=2, n_ctx=512)

    def decode() -> float:
        llm.reset()
        llm.eval(PROMPT)
        start = time.perf_counter()
        for _ in range(NEW_TOKENS):
            llm.eval([llama_next_token(llm)])
        return NEW_TOKENS / (time.perf_counter() - start)

    return decode


def one_pair(package: Path, gguf: Path, spin: bool, rounds: int) -> dict[str, Any]:
    speeds = take_turns({"ours": ours_decode(package, spin), "llama": llama_decode(gguf)}, rounds, PAUSE_S)
    ratios = round_ratios(speeds["ours"], speeds["llama"])
    return {"ours_tok_s": round(statistics.median(speeds["ours"]), 2),
            "llama_tok_s": round(statistics.median(speeds["llama"]), 2),
            "ratio": round(statistics.median(ratios), 3), "ratio_quartiles": [round(q, 3) for q in
            statistics.quantiles(ratios, n=4)], "ratios": [round(r, 3) for r in ratios]}  # fmt: skip


def markdown(rows: list[dict[str, Any]], rounds: int, command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, 1.1B shape, 2 threads; both engines in one "
             f"process, {rounds} rounds of {NEW_TOKENS} greedy tokens each, taking turns; ratio = median of "
             "the per-round ratios).", "",
             "| ours | thread pool | llama.cpp | ours tok/s | llama.cpp tok/s | ratio | quartiles |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        pool = "spinning (swarm-client's default)" if r["spin"] else "`--no-spin`"
        q1, _, q3 = r["ratio_quartiles"]
        lines.append(f"| {r['variant']} | {pool} | {r['type']} | {r['ours_tok_s']:.2f} | {r['llama_tok_s']:.2f} | "
                     f"**{r['ratio']:.2f}x** | {q1:.2f} – {q3:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--pair", nargs=3, metavar=("PKG", "GGUF", "SPIN"), help=argparse.SUPPRESS)  # one process each
    args = p.parse_args()
    if args.rounds < 2:
        p.error("--rounds must be at least 2 (the ratio's quartiles need two rounds)")
    if args.pair:
        package, gguf, spin = args.pair
        print(json.dumps(one_pair(Path(package), Path(gguf), spin == "1", args.rounds)))
        return
    ckpt = checkpoint("tinyllama-1.1b", args.cache)
    ggufs = build_gguf(ckpt, args.cache / "gguf" / ckpt.resolve().name, list(PAIRS.values()), 2, args.cache)
    rows = []
    for variant, gguf_type in PAIRS.items():
        for spin in (True, False):  # onnxruntime's spinning pool is process-wide: a process per mode
            cmd = [sys.executable, __file__, "--pair", str(export(ckpt, variant, args.cache)),
                   str(ggufs[gguf_type]), "1" if spin else "0", "--rounds", str(args.rounds)]  # fmt: skip
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            rows.append({"variant": variant, "type": gguf_type, "spin": spin, **result})
            print(rows[-1], file=sys.stderr)
    (REPO / "bench" / "out" / "head_to_head.json").write_text(json.dumps(rows, indent=2))
    command = "python bench/bench_head_to_head.py " + " ".join(sys.argv[1:])
    replace_section(REPO / "docs" / "BENCHMARKS.md", "head to head", markdown(rows, args.rounds, command.strip()))


if __name__ == "__main__":
    main()
