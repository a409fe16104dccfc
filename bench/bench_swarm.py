"""Issue 3 benchmark: 1, 2 and 3 node loopback swarms against the local runner, in one run.

    python bench/bench_swarm.py [--models stories260K,tinyllama-1.1b] [--generations N]

Every swarm is real `swarm-node` processes on 127.0.0.1 (onnxruntime's default threads: one per
core, one for a stage under 1 MiB; the same for the local runner) driven
by the SDK; the local runner runs in a process of its own through the same SDK surface.
Reports decode tokens/s, time to first token and time per output token (p50/p95), and the
bytes that crossed the loopback interface per generated token (all of TCP/IP, gRPC and
HTTP/2 included, read from /proc/net/dev). Writes bench/out/swarm.json and the "swarm"
section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.bench_local import checkpoint, export  # noqa: E402
from bench.report import replace_section  # noqa: E402
from swarm.apps.demo import NodeProcesses, split_spans  # noqa: E402
from swarm.environment import SWARM_KEY_ENV, load_swarm_key  # noqa: E402
from swarm.generation import GenerationRequest, GenerationStats  # noqa: E402
from swarm.keys import SwarmKey  # noqa: E402
from swarm.package import load_package  # noqa: E402
from swarm.textgen import SyncTextGenerator  # noqa: E402

PROMPT_LEN, NEW_TOKENS = 64, 32


def loopback_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[0])  # received = sent on loopback
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(model: SyncTextGenerator, vocab: int, generations: int) -> dict[str, Any]:
    prompt = tuple(3 + (i * 7919) % (vocab - 3) for i in range(PROMPT_LEN))
    request = GenerationRequest(prompt, NEW_TOKENS, stop_on_eos=False)
    list(model.generate_ids(GenerationRequest(prompt, 4, stop_on_eos=False)))  # warm-up
    runs: list[GenerationStats] = []
    wire_before = loopback_bytes()
    for _ in range(generations):
        stats = GenerationStats()
        list(model.generate_ids(request, stats))
        runs.append(stats)
    wire = loopback_bytes() - wire_before
    steps = [s for r in runs for s in r.step_s]
    ttft = [r.ttft_s for r in runs]
    return {
        "decode_tok_s": round(statistics.median(r.decode_tokens_per_s for r in runs), 2),
        "ttft_ms_p50": round(percentile(ttft, 0.5) * 1e3, 2),
        "ttft_ms_p95": round(percentile(ttft, 0.95) * 1e3, 2),
        "tpot_ms_p50": round(percentile(steps, 0.5) * 1e3, 3),
        "tpot_ms_p95": round(percentile(steps, 0.95) * 1e3, 3),
        "wire_bytes_per_token": round(wire / (generations * NEW_TOKENS)),
        "route": runs[-1].route,
    }


def measure_local(package: Path, generations: int) -> dict[str, Any]:
    from swarm.config import RuntimeOptions
    from swarm.local import LocalModel

    with LocalModel(package, RuntimeOptions(threads=0)) as model:
        return measure(model, model.manifest.architecture.vocab_size, generations)


def measure_swarm(package: Path, nodes: int, node_loop: bool, generations: int) -> dict[str, Any]:
    from swarm.client import Swarm

    manifest = load_package(package).manifest
    spans = split_spans([b.start for b in manifest.blocks] + [manifest.num_layers], nodes)
    with (
        NodeProcesses(package, spans, load_swarm_key(None), threads=0) as procs,
        Swarm(peers=procs.addresses, node_loop=node_loop) as swarm,
    ):
        return measure(swarm, manifest.architecture.vocab_size, generations)


def run_in_process(args: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "bench/bench_swarm.py", *args], check=True, cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# setup: (nodes, the first node feeds tokens back itself); "client loop" is how every token
# went before, through the client: one link more per token
SETUPS = {
    "local runner": (0, True),
    "1-node swarm": (1, True),
    "2-node swarm": (2, True),
    "2-node swarm, client loop": (2, False),
    "3-node swarm": (3, True),
}


def bench_model(name: str, cache: Path, generations: int, rounds: int) -> dict[str, Any]:
    """Rounds of every setup in turn, so slow drift of the machine hits all setups alike."""
    package = export(checkpoint(name, cache), "float32", cache)
    print(f"== {name}", file=sys.stderr)
    runs: dict[str, list[dict[str, Any]]] = {setup: [] for setup in SETUPS}
    for round_ in range(rounds):
        for setup, (nodes, node_loop) in SETUPS.items():
            print(f"  round {round_ + 1}: {setup}", file=sys.stderr)
            args = ["--one", str(package), str(nodes), str(int(node_loop)), str(generations)]
            runs[setup].append(run_in_process(args))
    rows = [{"setup": setup, **combine(results)} for setup, results in runs.items()]
    return {"model": name, "rounds": rounds, "generations_per_round": generations, "rows": rows}


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of each figure; the rounds' decode speeds kept for the record."""
    numeric = [k for k, v in results[0].items() if isinstance(v, int | float)]
    merged: dict[str, Any] = {k: statistics.median(r[k] for r in results) for k in numeric}
    merged["decode_tok_s_rounds"] = [r["decode_tok_s"] for r in results]
    merged["route"] = results[-1]["route"]
    return merged


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}; prompt {PROMPT_LEN} tokens, {NEW_TOKENS} new, "
             "greedy; nodes are separate processes on 127.0.0.1; onnxruntime threads as by default, one per core "
             "(2) and one for a stage under 1 MiB (every stories260K stage), in nodes and local runner alike; "
             "'client loop' is the client feeding every token back, as before the first node closed the loop; "
             "every setup once per round, "
             "figures are medians over rounds).", ""]  # fmt: skip
    for r in results:
        local = r["rows"][0]["decode_tok_s"]
        lines += [f"### {r['model']}", "",
                  "| setup | decode tok/s | vs local | TTFT p50 / p95 ms | TPOT p50 / p95 ms | loopback bytes/token |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for row in r["rows"]:
            lines.append(
                f"| {row['setup']} | {row['decode_tok_s']:.1f} | {row['decode_tok_s'] / local:.2f}x | "
                f"{row['ttft_ms_p50']:.1f} / {row['ttft_ms_p95']:.1f} | {row['tpot_ms_p50']:.2f} / "
                f"{row['tpot_ms_p95']:.2f} | {row['wire_bytes_per_token']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="stories260K,tinyllama-1.1b")
    p.add_argument("--generations", type=int, default=3, help="generations per setup per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all setups")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # internal: PACKAGE NODES NODE_LOOP GENERATIONS
    args = p.parse_args()
    # a swarm key for this run, in the environment every node process and client reads
    os.environ.setdefault(SWARM_KEY_ENV, SwarmKey.generate().join_code)
    if args.one:
        package, (nodes, node_loop, generations) = Path(args.one[0]), map(int, args.one[1:])
        if nodes == 0:
            result = measure_local(package, generations)
        else:
            result = measure_swarm(package, nodes, bool(node_loop), generations)
        print(json.dumps(result))
        return
    results = [bench_model(m, args.cache, args.generations, args.rounds) for m in args.models.split(",")]
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "swarm.json").write_text(json.dumps(results, indent=2))
    command = ("python bench/bench_swarm.py " + " ".join(sys.argv[1:])).strip()
    replace_section(REPO / "docs" / "BENCHMARKS.md", "swarm", markdown(results, command))


if __name__ == "__main__":
    main()
