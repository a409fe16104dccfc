"""Speculative decoding against plain decoding: locally, and on 2-, 3- and 4-node swarms.

    python bench/bench_speculative.py [--new-tokens 96] [--rounds 2] [--depths 1,2]

SmolLM2-135M-Instruct (the default int4 export of its Q4_1 GGUF), greedy, chat-templated prompts
of two kinds: repetitive (rewrite, extract, edit code: the answer quotes the prompt, where prompt
lookup proposes well) and open-ended (a story, questions). For each setup (the local runner; node
processes behind bench/links.py relays: 3 nodes at 0 and 10 ms round trip, 2 and 4 at 10 ms; each
swarm at every speculative depth of `--depths`) every prompt runs plain and with
`speculative="lookup"` in turn, `--rounds` times; the figure is the decode rate over the whole
set (tokens after the first / their time), speculative over plain, in the same run. Writes the
"speculative" section of docs/BENCHMARKS.md.
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
SHAPES = ("def area(width, height):\n    return width * height\n\n\n"
          "def perimeter(width, height):\n    return 2 * (width + height)\n")  # fmt: skip
MESSAGE = ("Hi team, the meeting moved to Thursday. Ask Anna (anna.berg@example.com) for the room, and send the "
           "slides to Tom at tom.fischer@example.org before noon. Questions go to help@example.net.")  # fmt: skip
TYPOS = ("The swarm lets phones and laptops on one netwrok serve a langauge model together. Each device holds a "
         "few layres, and the hidden states travle from one device to the next over the local network.")  # fmt: skip
REPETITIVE = [  # (kind, prompt): answers that quote the prompt, where prompt lookup can propose
    ("repeat", f"Repeat this text exactly, word for word:\n\n{PARAGRAPH}"),
    ("rewrite", f"Rewrite this text with every sentence on its own line:\n\n{PARAGRAPH}"),
    ("rename in code", f"Rename the variable `subtotal` to `net` in this code and show the whole function:\n\n{CODE}"),
    ("add a docstring", f"Copy this code and add a docstring to the function:\n\n{CODE}"),
    ("fix spelling", f"Fix the spelling mistakes in this text and write out the corrected text:\n\n{TYPOS}"),
    ("extract", f"List every email address in this message:\n\n{MESSAGE}"),
    ("docstrings", f"Here is my code:\n\n```python\n{SHAPES}```\n\nAdd a docstring to each function."),
]
OPEN_ENDED = [
    ("story", "Tell me a short story about a dragon who learns to cook."),
    ("question", "What is the capital of France, and what is it famous for?"),
    ("tips", "Give me three tips for learning to play the guitar."),
    ("explain", "Why is the sky blue? Explain simply."),
]
SPANS = {2: [(0, 15), (15, 30)], 3: [(0, 10), (10, 20), (20, 30)], 4: [(0, 8), (8, 15), (15, 23), (23, 30)]}
# (nodes, round trip ms) of each swarm setup: 3 nodes at 0 and 10 ms, and 2 and 4 stages at 10 ms
SWARMS = [(3, 0.0), (3, 10.0), (2, 10.0), (4, 10.0)]
PER_PROMPT_SETUP = "3 nodes, 10 ms"  # the setup (at every depth) whose per-prompt figures the second table shows


def decode_rate(model: SyncTextGenerator, prompts: list[tuple[int, ...]], new: int, speculative: str | None,
                ) -> dict[str, Any]:  # fmt: skip
    tokens, seconds, accepted, proposed, passes, outputs, per_prompt = 0, 0.0, 0, 0, 0, [], []
    chained = dropped = 0
    for prompt in prompts:
        stats = GenerationStats()
        # stop at the end of the turn, as chat and serve do: past it a chat model babbles on
        # unprompted text, which no user waits for
        request = GenerationRequest(prompt, new, stop_on_eos=True, speculative=speculative)
        outputs.append(list(model.generate_ids(request, stats)))
        tokens, seconds = tokens + stats.generated_tokens - 1, seconds + stats.decode_s
        accepted, proposed = accepted + stats.draft_accepted, proposed + stats.draft_proposed
        passes += stats.passes
        chained, dropped = chained + stats.passes_chained, dropped + stats.passes_dropped
        per_prompt.append(
            {
                "tokens": stats.generated_tokens,
                "passes": stats.passes,
                "tok_s": (stats.generated_tokens - 1) / stats.decode_s if stats.decode_s else 0.0,
            }
        )
    return {"tok_s": tokens / seconds, "accepted": accepted, "proposed": proposed, "per_prompt": per_prompt,
            "chained": chained, "dropped": dropped,
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
        rows[name] = {
            "plain_tok_s": plain,
            "speculative_tok_s": spec,
            "ratio": spec / plain,
            "acceptance": last["accepted"] / max(last["proposed"], 1),
            "tokens_per_pass": last["tokens_per_pass"],
            "chained": last["chained"],
            "dropped": last["dropped"],
            "equal_tokens": same,
            "of": sum(len(o) for o in last["outputs"]),
            "prompts": [
                {
                    "plain_tok_s": a["tok_s"],
                    "speculative_tok_s": b["tok_s"],
                    "tokens": b["tokens"],
                    "tokens_per_pass": (b["tokens"] - 1) / max(b["passes"], 1),
                }
                for a, b in zip(runs["plain"][-1]["per_prompt"], last["per_prompt"], strict=True)
            ],
        }
        print(json.dumps({"set": name, **{k: v for k, v in rows[name].items()}}), file=sys.stderr)
    return rows


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}). SmolLM2-135M-Instruct (default int4 export), "
             f"greedy, up to {result['new_tokens']} new tokens per prompt (stopping at the end of the turn), "
             f"{len(REPETITIVE)} repetitive prompts ({', '.join(kind for kind, _ in REPETITIVE)}) and "
             f"{len(OPEN_ENDED)} open-ended ones ({', '.join(kind for kind, _ in OPEN_ENDED)}); "
             f"decode rate over each set, mean of {result['rounds']} alternating rounds. Swarm: 2, 3 or 4 node "
             "processes splitting the 30 layers evenly, behind bench/links.py relays; the client proposes "
             "(prompt lookup) and sends each pass as one verify step; `depth 2`: up to two passes in flight, "
             "the second chained on the first (pipelined speculation), plain decoding measured again beside "
             "it. Shared 2-core machine.", "",
             "| setup | prompts | plain tok/s | speculative tok/s | ratio | drafts accepted | tokens per pass | "
             "passes chained / dropped | tokens equal to plain |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for setup, rows in result["setups"].items():
        for name, r in rows.items():
            lines.append(f"| {setup} | {name} | {r['plain_tok_s']:.1f} | {r['speculative_tok_s']:.1f} | "
                         f"{r['ratio']:.2f}x | {r['acceptance']:.0%} | {r['tokens_per_pass']:.2f} | "
                         f"{r['chained']} / {r['dropped']} | {r['equal_tokens']} of {r['of']} |")  # fmt: skip
    shown = [setup for setup in result["setups"] if setup.startswith(PER_PROMPT_SETUP)]
    lines += ["", f"Each prompt on its own ({' and '.join(shown)}; the last round): where the answer quotes the "
              "prompt, lookup pays; where it does not, the window falls back to plain runs.", "",
              "| set | prompt | tokens | " + " | ".join(f"{setup}: tokens per pass | ratio" for setup in shown) + " |",
              "| --- | --- | ---: |" + " ---: | ---: |" * len(shown)]  # fmt: skip
    for name, kinds in (("repetitive", REPETITIVE), ("open-ended", OPEN_ENDED)):
        for i, (kind, _) in enumerate(kinds):
            rows = [result["setups"][setup][name]["prompts"][i] for setup in shown]
            cells = " | ".join(f"{r['tokens_per_pass']:.2f} | {r['speculative_tok_s'] / r['plain_tok_s']:.2f}x"
                               for r in rows)  # fmt: skip
            lines.append(f"| {name} | {kind} | {rows[0]['tokens']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--depths", type=lambda v: [int(d) for d in v.split(",")], default=[1, 2],
                   help="speculative depths to run the swarm at (passes in flight; default 1,2)")  # fmt: skip
    args = p.parse_args()
    os.environ.setdefault(SWARM_KEY_ENV, SwarmKey.generate().join_code)
    package = package_for("smollm2", args.cache)
    result: dict[str, Any] = {"new_tokens": args.new_tokens, "rounds": args.rounds, "setups": {}}
    with LocalModel(package) as local:
        sets = {name: [tuple(local.codec.encode_chat([{"role": "user", "content": q}])) for q in prompts]
                for name, prompts in (("repetitive", [q for _, q in REPETITIVE]),
                                      ("open-ended", [q for _, q in OPEN_ENDED]))}  # fmt: skip
        result["setups"]["local"] = measure(local, sets, args.new_tokens, args.rounds)
    for nodes in sorted({n for n, _ in SWARMS}):
        with node_processes(package, SPANS[nodes]) as targets:
            for rtt in [r for n, r in SWARMS if n == nodes]:
                profile = LinkProfile(delay_s=rtt / 2000)
                for depth in args.depths:
                    with emulated_links(targets, profile) as (addresses, _), \
                            Swarm(peers=addresses, speculative_depth=depth) as swarm:  # fmt: skip
                        setup = f"{nodes} nodes, {rtt:g} ms" + (f", depth {depth}" if depth > 1 else "")
                        result["setups"][setup] = measure(swarm, sets, args.new_tokens, args.rounds)
    command = ("python bench/bench_speculative.py " + " ".join(sys.argv[1:])).strip()
    replace_section(REPO / "docs" / "BENCHMARKS.md", "speculative", markdown(result, command))


if __name__ == "__main__":
    main()
