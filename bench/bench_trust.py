"""What trust costs per token: private sessions and verification beside the normal mode, in one run.

    python bench/bench_trust.py [--model smollm2|stories260K] [--new-tokens 96] [--rounds 2] [--rtts 0,5]

Six node processes on 127.0.0.1, two replicas of each of three spans, each behind a bench/links.py
relay holding every chunk RTT/2 each way (the client's link too); a route is three of them, the
other three are what verification checks against. Setups, alternating round by round so the
machine's drift hits all alike: the normal mode (the first node feeds each token back itself),
the same with the loop at the client (`node_loop=False`: each token a round trip, as a private
session must), a private session (`private=True`: the client embeds, runs the head and samples),
and private sessions verifying 1, 5 and 20 % of their steps. Each figure is the time per output
token over every decode step of the round's generations (mean, which counts verification's
catch-up bursts, and median), greedy, the same prompt. Writes the "trust" section of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.bench_network import node_processes, package_for, prompt_of  # noqa: E402
from bench.links import LinkProfile, emulated_links  # noqa: E402
from bench.report import replace_section  # noqa: E402
from swarm import Swarm  # noqa: E402
from swarm.apps.demo import split_spans  # noqa: E402
from swarm.environment import SWARM_KEY_ENV  # noqa: E402
from swarm.generation import GenerationRequest, GenerationStats  # noqa: E402
from swarm.keys import SwarmKey  # noqa: E402
from swarm.package import load_package  # noqa: E402


def setups(package: Path) -> dict[str, dict[str, Any]]:
    private = {"private": True, "private_package": str(package), "verify_seed": 7}
    return {
        "normal (node loop)": {},
        "normal, client loop": {"node_loop": False},
        "private": private,
        **{f"private, verify {f:.0%}": {**private, "verify_fraction": f} for f in (0.01, 0.05, 0.2)},
    }


def run_setup(addresses: list[str], prompt: tuple[int, ...], new: int, generations: int,
              options: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """`generations` greedy generations after a warm-up one, on a client of their own."""
    steps, verified, mismatches, outputs = [], 0, 0, []
    with Swarm(peers=addresses, **options) as swarm:
        for number in range(generations + 1):
            stats = GenerationStats()
            outputs.append(list(swarm.generate_ids(GenerationRequest(prompt, new, stop_on_eos=False), stats)))
            if number:
                steps += [s * 1000 for s in stats.step_s]
                verified, mismatches = verified + stats.verified, mismatches + stats.mismatches
    return {"steps_ms": steps, "verified": verified, "mismatches": mismatches, "tokens": outputs[-1]}


def measure(addresses: list[str], prompt: tuple[int, ...], args: argparse.Namespace,
            package: Path) -> dict[str, Any]:  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in setups(package)}
    for _ in range(args.rounds):
        for name, options in setups(package).items():
            runs[name].append(run_setup(addresses, prompt, args.new_tokens, args.generations, options))
    reference = runs["normal (node loop)"][0]["tokens"]
    rows = {}
    for name, done in runs.items():
        steps = [s for run in done for s in run["steps_ms"]]
        rows[name] = {"tpot_mean_ms": statistics.fmean(steps), "tpot_p50_ms": statistics.median(steps),
                      "verified": sum(r["verified"] for r in done), "mismatches": sum(r["mismatches"] for r in done),
                      "decode_steps": len(steps), "equal": all(r["tokens"] == reference for r in done)}  # fmt: skip
        print(json.dumps({"setup": name, **rows[name]}), file=sys.stderr)
    return rows


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}). {result['model']}, greedy, "
             f"{result['prompt_tokens']} prompt tokens and {result['new_tokens']} new, {result['generations']} "
             f"generations per setup and round after a warm-up, {result['rounds']} alternating rounds. Six node "
             f"processes (two replicas of each of {result['spans']}) behind bench/links.py relays; a route uses "
             "three, verification checks against the others. Time per output token over every decode step: the "
             "mean counts verification's catch-up bursts, the median a typical step. A shared 2-core machine "
             "with other work on it: differences under ~10 % are noise.", "",
             "| round trip | setup | TPOT mean ms | TPOT p50 ms | vs normal (mean) | steps compared | "
             "mismatches | tokens equal to normal |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for rtt, rows in result["rtts"].items():
        base = rows["normal (node loop)"]["tpot_mean_ms"]
        for name, r in rows.items():
            lines.append(f"| {rtt} ms | {name} | {r['tpot_mean_ms']:.2f} | {r['tpot_p50_ms']:.2f} | "
                         f"{r['tpot_mean_ms'] / base:.2f}x | {r['verified']} | {r['mismatches']} | "
                         f"{'yes' if r['equal'] else 'NO'} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="smollm2, or a package folder (e.g. a stories260K export)")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rtts", default="0,5", help="emulated round trips, ms")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--no-write", action="store_true", help="print, leave docs/BENCHMARKS.md alone")
    args = p.parse_args()
    os.environ.setdefault(SWARM_KEY_ENV, SwarmKey.generate().join_code)
    package = package_for("smollm2", args.cache) if args.model == "smollm2" else Path(args.model)
    manifest = load_package(package).manifest
    spans = split_spans([0, *(b.end for b in manifest.blocks)], 3)
    prompt = prompt_of(manifest.architecture.vocab_size, args.prompt_tokens)
    result: dict[str, Any] = {"model": manifest.name, "spans": ", ".join(f"[{a}, {b})" for a, b in spans),
                              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                              "generations": args.generations, "rounds": args.rounds, "rtts": {}}  # fmt: skip
    with node_processes(package, [span for span in spans for _ in range(2)]) as targets:
        for rtt in (float(r) for r in args.rtts.split(",")):
            with emulated_links(targets, LinkProfile(delay_s=rtt / 2000)) as (addresses, _):
                result["rtts"][f"{rtt:g}"] = measure(addresses, prompt, args, package)
    command = ("python bench/bench_trust.py " + " ".join(sys.argv[1:])).strip()
    text = markdown(result, command)
    print(text)
    if not args.no_write:
        replace_section(REPO / "docs" / "BENCHMARKS.md", "trust", text)


if __name__ == "__main__":
    main()
