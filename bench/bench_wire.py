"""Hidden states on the wire as float16, bfloat16 and int8 against float32: bytes per token, prefill on a slow
link, agreement.

    python bench/bench_wire.py [--mbit 50] [--prompt-tokens 1024]

SmolLM2-135M-Instruct (the default int4 export of its Q4_1 GGUF) on three node processes
(layers [0, 10), [10, 20), [20, 30)), each behind an emulated link (bench/links.py). For each wire
dtype: the bytes that reached the second and third nodes per token of a greedy generation, the
greedy tokens after three chat questions (agreement with the float32 wire, which equals the local
runner), and the time to first token of a long prompt when every link is limited to `--mbit`.
Writes the "wire" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.bench_local import export_with  # noqa: E402
from bench.links import LinkProfile, emulated_links  # noqa: E402
from bench.report import replace_section  # noqa: E402
from bench.soak import Node  # noqa: E402
from swarm import LocalModel, Swarm  # noqa: E402
from swarm.environment import SWARM_KEY_ENV  # noqa: E402
from swarm.generation import GenerationRequest, GenerationStats  # noqa: E402
from swarm.keys import SwarmKey  # noqa: E402
from swarm.known_models import locate  # noqa: E402

SPANS = [(0, 10), (10, 20), (20, 30)]
QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow.", "How many legs has a spider?"]
NEW_TOKENS = 64
DTYPES = ("float32", "float16", "bfloat16", "int8")


def greedy(swarm: Swarm, prompt: tuple[int, ...], tokens: int, stats: GenerationStats | None = None) -> list[int]:
    return list(swarm.generate_ids(GenerationRequest(prompt, tokens, stop_on_eos=False), stats))


def decode_bytes(addresses: list[str], links: Any, dtype: str, prompts: list[tuple[int, ...]]) -> dict[str, Any]:
    """Greedy tokens for each prompt, and the bytes per position that reached nodes 2 and 3."""
    before = sum(s.forward.bytes for s in links.stats()[1:])
    with Swarm(peers=addresses, wire_dtype=dtype) as swarm:
        tokens = [greedy(swarm, p, NEW_TOKENS) for p in prompts]
    time.sleep(0.2)  # the last replies' counts land as they are delivered
    carried = sum(s.forward.bytes for s in links.stats()[1:]) - before
    positions = sum(len(p) + NEW_TOKENS - 1 for p in prompts)
    return {"tokens": tokens, "bytes_per_token": carried / positions}


def prefill_ttft(addresses: list[str], dtype: str, prompt: tuple[int, ...], rounds: int) -> float:
    times = []
    with Swarm(peers=addresses, wire_dtype=dtype) as swarm:
        for _ in range(rounds):
            stats = GenerationStats()
            greedy(swarm, prompt, 1, stats)
            times.append(stats.ttft_s)
    return statistics.median(times)


def run(mbit: float, prompt_tokens: int, cache: Path) -> dict[str, Any]:
    package = export_with(locate("smollm2"), [], cache)
    with LocalModel(package) as local:
        prompts = [tuple(local.codec.encode_chat([{"role": "user", "content": q}])) for q in QUESTIONS]
        reference = [list(local.generate_ids(GenerationRequest(p, NEW_TOKENS, stop_on_eos=False))) for p in prompts]
        text = " ".join(local.codec.decode(r) for r in reference) * 40
        long_prompt = tuple(local.codec.encode(text)[:prompt_tokens])
    nodes = [Node(package, span, churn=False) for span in SPANS]
    result: dict[str, Any] = {"mbit": mbit, "prompt_tokens": len(long_prompt), "dtypes": {}}
    try:
        for node in nodes:
            node.start()
        targets = [n.address for n in nodes]
        with emulated_links(targets, LinkProfile()) as (addresses, links):
            for dtype in DTYPES:
                result["dtypes"][dtype] = decode_bytes(addresses, links, dtype, prompts)
        with emulated_links(targets, LinkProfile(bandwidth_bps=mbit * 1e6)) as (addresses, _):
            for dtype in DTYPES:
                result["dtypes"][dtype]["ttft_s"] = prefill_ttft(addresses, dtype, long_prompt, rounds=3)
    finally:
        for node in nodes:
            node.kill()
    for row in result["dtypes"].values():
        row["equal_to_local"] = sum(a == b for t, r in zip(row.pop("tokens"), reference, strict=True)
                                    for a, b in zip(t, r, strict=True))  # fmt: skip
    result["of"] = NEW_TOKENS * len(prompts)
    return result


def markdown(r: dict[str, Any], command: str) -> str:
    base = r["dtypes"]["float32"]
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}). SmolLM2-135M-Instruct (default int4 export of the "
             "Q4_1 GGUF), three node processes ([0, 10), [10, 20), [20, 30)) each behind an emulated link "
             "(bench/links.py). Bytes: what reached nodes 2 and 3 per position of three greedy chat answers (64 tokens "
             f"each). Prefill: time to first token of a {r['prompt_tokens']}-token prompt with every link at "
             f"{r['mbit']:g} Mbit/s, median of 3. Shared 2-core machine.", "",
             "| wire | bytes per token (2 hops) | vs float32 | tokens equal to the local runner | "
             f"TTFT at {r['mbit']:g} Mbit/s | vs float32 |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for dtype, row in r["dtypes"].items():
        share = row["bytes_per_token"] / base["bytes_per_token"]
        lines.append(f"| {dtype} | {row['bytes_per_token']:.0f} | {share:.2f}x"
                     f" | {row['equal_to_local']} of {r['of']} | {row['ttft_s']:.2f} s | "
                     f"{row['ttft_s'] / base['ttft_s']:.2f}x |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mbit", type=float, default=50.0, help="link bandwidth for the prefill measurement")
    p.add_argument("--prompt-tokens", type=int, default=1024)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args()
    os.environ.setdefault(SWARM_KEY_ENV, SwarmKey.generate().join_code)
    result = run(args.mbit, args.prompt_tokens, args.cache)
    print(result)
    command = ("python bench/bench_wire.py " + " ".join(sys.argv[1:])).strip()
    replace_section(REPO / "docs" / "BENCHMARKS.md", "wire", markdown(result, command))


if __name__ == "__main__":
    main()
