"""Speculative decoding against plain decoding: locally and on a 3-node swarm at 0 and 10 ms.

    python bench/bench_speculative.py [--new-tokens 96] [--rounds 2]

SmolLM2-135M-Instruct (the default int4 export of its Q4_1 GGUF), greedy, chat-templated prompts
of two kinds: repetitive (rewrite, extract, edit code: the answer quotes the prompt, where prompt
lookup proposes well) and open-ended (a story, questions). For each setup (the local runner; three
node processes behind bench/links.py relays at 0 and 10 ms round trip) every prompt runs plain and
with `speculative="lookup"` in turn, `--rounds` times; the figure is the decode rate over the
whole set (tokens after the first / their time), speculative over plain, in the same run. Writes
the "speculative" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.bench_network import node_processes, package_for  # noqa: E402
from bench.links import LinkProfile, emulated_links  # noqa: E402
from bench.report import replace_section  # noqa: E402
from swarm import LocalModel, Swarm  # noqa: E402
from swarm.environment import SWARM_KEY_ENV  # noqa: E402
from swarm.generation import GenerationRequest, GenerationStats  # noqa: E402
from swarm.keys import SwarmKey  # noqa: E402
from swarm.textgen import SyncTextGenerator  # noqa: E402

PARAGRAPH = ("The swarm lets phones and laptops on one network serve a language model together. Each device "
             "holds a few layers, and the hidden states travel from one device to the next over the local "
             "network, so no single device needs the memory for the whole model.")  # fmt: skip
CODE = ("def total_price(items, tax_rate):\n    subtotal = 0\n    for item in items:\n        subtotal += "
        "item.price * item.quantity\n    tax = subtotal * tax_rate\n    return subtotal + tax\n")  # fmt: skip
REPETITIVE = [
    f"Repeat this text exactly, word for word:\n\n{PARAGRAPH}",
    f"Rewrite this text with every sentence on its own line:\n\n{PARAGRAPH}",
    f"Rename the variable `subtotal` to `net` in this code and show the whole function:\n\n{CODE}",
    f"Copy this code and add a docstring to the function:\n\n{CODE}",
]
OPEN_ENDED = [
    "Tell me a short story about a dragon who learns to cook.",
    "What is the capital of France, and what is it famous for?",
    "Give me three tips for learning to play the guitar.",
    "Why is the sky blue? Explain simply.",
]
SPANS = [(0, 10), (10, 20), (20, 30)]


def decode_rate(model: SyncTextGenerator, prompts: list[tuple[int, ...]], new: int, speculative: str | None,
                ) -> dict[str, Any]:  # fmt: skip
    tokens, seconds, accepted, proposed, passes, outputs = 0, 0.0, 0, 0, 0, []
    for prompt in prompts:
        stats = GenerationStats()
        # stop at the end of the turn, as chat and serve do: past it a chat model babbles on
        # unprompted text, which no user waits for
        request = GenerationRequest(prompt, new, stop_on_eos=True, speculative=speculative)
        outputs.append(list(model.generate_ids(request, stats)))
        tokens, seconds = tokens + stats.generated_tokens - 1, seconds + stats.decode_s
        accepted, proposed = accepted + stats.draft_accepted, proposed + stats.draft_proposed
        passes += stats.passes
    return {"tok_s": tokens / seconds, "accepted": accepted, "proposed": proposed,
            "tokens_per_pass": tokens / passes if passes else 1.0, "outputs": outputs}  # fmt: skip


def measure(model: SyncTextGenerator, sets: dict[str, list[tuple[int, ...]]], new: int, rounds: int,
            ) -> dict[str, Any]:  # fmt: skip
    rows: dict[str, Any] = {}
    for name, prompts in sets.items():
        runs: dict[str, list[dict[str, Any]]] = {"plain": [], "lookup": []}
        for _ in range(rounds):  # alternate, so the machine's drift hits both alike
            runs["plain"].append(decode_rate(model, prompts, new, None))
            runs["lookup"].append(decode_rate(model, prompts, new, "lookup"))
        plain = sum(r["tok_s"] for r in runs["plain"]) / rounds
        spec = sum(r["tok_s"] for r in runs["lookup"]) / rounds
        last = runs["lookup"][-1]
        same = sum(a == b for x, y in zip(last["outputs"], runs["plain"][-1]["outputs"], strict=True)
                   for a, b in zip(x, y, strict=False))  # fmt: skip
        rows[name] = {"plain_tok_s": plain, "speculative_tok_s": spec, "ratio": spec / plain,
                      "acceptance": last["accepted"] / max(last["proposed"], 1),
                      "tokens_per_pass": last["tokens_per_pass"], "equal_tokens": same,
                      "of": sum(len(o) for o in last["outputs"])}  # fmt: skip
        print(json.dumps({"set": name, **{k: v for k, v in rows[name].items()}}), file=sys.stderr)
    return rows


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}). SmolLM2-135M-Instruct (default int4 export), "
             f"greedy, up to {result['new_tokens']} new tokens per prompt (stopping at the end of the turn), "
             f"{len(REPETITIVE)} repetitive prompts (repeat, "
             f"rewrite, rename in code, add a docstring) and {len(OPEN_ENDED)} open-ended ones (a story, questions); "
             f"decode rate over each set, mean of {result['rounds']} alternating rounds. Swarm: three node "
             "processes ([0, 10), [10, 20), [20, 30)) behind bench/links.py relays; the client proposes "
             "(prompt lookup) and sends each pass as one verify step. Shared 2-core machine.", "",
             "| setup | prompts | plain tok/s | speculative tok/s | ratio | drafts accepted | tokens per pass | "
             "tokens equal to plain |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for setup, rows in result["setups"].items():
        for name, r in rows.items():
            lines.append(f"| {setup} | {name} | {r['plain_tok_s']:.1f} | {r['speculative_tok_s']:.1f} | "
                         f"{r['ratio']:.2f}x | {r['acceptance']:.0%} | {r['tokens_per_pass']:.2f} | "
                         f"{r['equal_tokens']} of {r['of']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args()
    os.environ.setdefault(SWARM_KEY_ENV, SwarmKey.generate().join_code)
    package = package_for("smollm2", args.cache)
    result: dict[str, Any] = {"new_tokens": args.new_tokens, "rounds": args.rounds, "setups": {}}
    with LocalModel(package) as local:
        sets = {name: [tuple(local.codec.encode_chat([{"role": "user", "content": q}])) for q in prompts]
                for name, prompts in (("repetitive", REPETITIVE), ("open-ended", OPEN_ENDED))}  # fmt: skip
        result["setups"]["local"] = measure(local, sets, args.new_tokens, args.rounds)
    with node_processes(package, SPANS) as targets:
        for rtt in (0.0, 10.0):
            profile = LinkProfile(delay_s=rtt / 2000)
            with emulated_links(targets, profile) as (addresses, _), Swarm(peers=addresses) as swarm:
                result["setups"][f"3 nodes, {rtt:g} ms"] = measure(swarm, sets, args.new_tokens, args.rounds)
    command = ("python bench/bench_speculative.py " + " ".join(sys.argv[1:])).strip()
    replace_section(REPO / "docs" / "BENCHMARKS.md", "speculative", markdown(result, command))


if __name__ == "__main__":
    main()
