"""The swarm on emulated Wi-Fi links: per-token time against its bound, and llama.cpp's RPC backend.

    python bench/bench_network.py [--models smollm2,tinyllama-1.1b] [--nodes 1,2,3,4]
        [--rtts 0,2,5,10,20,40] [--llamacpp GGUF] [--prefill]

For each model and node count, that many node processes on 127.0.0.1 split the layers evenly,
each behind a bench/links.py relay that holds every chunk for RTT/2 each way (the client's link
too). At each round trip: greedy generations (`--prompt-tokens`, `--new-tokens`) on the token
ring (the default) and on the chain it replaced (`token_ring=False`: the token comes back up
through every stage), timed by the SDK's GenerationStats. The bound is the per-token time model
(swarm/latency.py): the stages' compute (the median over decode steps of Σ the hops' own
compute times, which every result carries) plus the ring's N one-way links. With `--llamacpp
GGUF`, llama.cpp's RPC backend runs the same points in the same run (bench/llamacpp_rpc.py: N
rpc-servers behind the same relays). With `--prefill`, the time to first token of a long prompt
on 3 nodes, chunked and pipelined against one chunk, at 5 ms / 100 Mbit/s and at 50 Mbit/s.
Writes a "network-MODEL" section of docs/BENCHMARKS.md per model.
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

from collections.abc import Iterator, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.bench_local import checkpoint, export, export_with  # noqa: E402
from bench.links import LinkProfile, emulated_links, measured_one_way_s  # noqa: E402
from bench.report import replace_section  # noqa: E402
from bench.soak import Node  # noqa: E402
from swarm import Swarm  # noqa: E402
from swarm.apps.demo import split_spans  # noqa: E402
from swarm.environment import SWARM_KEY_ENV  # noqa: E402
from swarm.generation import GenerationRequest, GenerationStats  # noqa: E402
from swarm.keys import SwarmKey  # noqa: E402
from swarm.known_models import locate  # noqa: E402
from swarm.latency import links_crossed  # noqa: E402
from swarm.package import load_package  # noqa: E402

MODES = {"ring": {"token_ring": True}, "chain": {"token_ring": False}}


@contextmanager
def node_processes(package: Path, spans: Sequence[tuple[int, int]]) -> Iterator[list[str]]:
    """One node process per span (one thread each, no mDNS: the client must reach them through the
    relays only, never by an address gossip or discovery would tell it), killed on exit."""
    nodes = [Node(package, span, churn=False) for span in spans]
    try:
        for node in nodes:
            node.start()
        yield [node.address for node in nodes]
    finally:
        for node in nodes:
            node.kill()


def package_for(name: str, cache: Path) -> Path:
    if name == "smollm2":  # the default export of the Q4_1 GGUF: int4, its own blocks
        return export_with(locate("smollm2"), [], cache)
    return export(checkpoint(name, cache), "int4", cache)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def prompt_of(vocab: int, length: int) -> tuple[int, ...]:
    return tuple(1 + (i * 7919) % (vocab - 1) for i in range(length))  # the same prompt for every engine


def generations(addresses: list[str], prompt: tuple[int, ...], new: int, count: int,
                **options: Any) -> dict[str, Any]:  # fmt: skip
    """`count` greedy generations; TPOT over every decode step of all but the first (a warm-up)."""
    runs = []
    with Swarm(peers=addresses, **options) as swarm:
        for _ in range(count + 1):
            stats = GenerationStats()
            tokens = list(swarm.generate_ids(GenerationRequest(prompt, new, stop_on_eos=False), stats))
            runs.append((tokens, stats))
    timed = runs[1:]
    steps = [s * 1000 for _, stats in timed for s in stats.step_s]
    compute = [sum(hops) for _, stats in timed for hops in stats.hop_ms[1:]]  # decode steps, as the nodes timed them
    return {
        "tokens": timed[0][0],
        "compute_ms": statistics.median(compute),
        "ttft_ms": statistics.median(stats.ttft_s * 1000 for _, stats in timed),
        "tpot_ms_p50": statistics.median(steps),
        "tpot_ms_p95": percentile(steps, 0.95),
        "decode_tok_s": statistics.median((len(t) - 1) / stats.decode_s for t, stats in timed if stats.decode_s),
    }


def sweep_swarm(package: Path, nodes: int, rtts: list[float], args: argparse.Namespace) -> list[dict[str, Any]]:
    manifest = load_package(package).manifest
    prompt = prompt_of(manifest.architecture.vocab_size, args.prompt_tokens)
    spans = split_spans([0, *(b.end for b in manifest.blocks)], nodes)
    rows = []
    with node_processes(package, spans) as targets:
        for rtt in rtts:
            profile = LinkProfile(delay_s=rtt / 2000)
            one_way_ms = measured_one_way_s(profile) * 1000  # the emulated link as a ping through it sees it
            with emulated_links(targets, profile) as (addresses, _):
                for mode, options in MODES.items():
                    if nodes == 1 and mode == "chain":
                        continue  # one node: no link to return the token over
                    row = generations(addresses, prompt, args.new_tokens, args.generations, **options)
                    bound = row["compute_ms"] + links_crossed(nodes, "ring") * one_way_ms
                    rows.append({"engine": f"swarm {mode}", "nodes": nodes, "rtt_ms": rtt, "bound_ms": bound,
                                 "one_way_ms": one_way_ms, **row})  # fmt: skip
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "tokens"}), file=sys.stderr)
    return rows


def sweep_llamacpp(gguf: Path, nodes: int, rtts: list[float], args: argparse.Namespace) -> list[dict[str, Any]]:
    """llama.cpp's RPC backend at the same points: N rpc-servers (the client only embeds and
    samples, as ours does), and with `--host-share` also mesh-llm's setup (the client computes the
    first 1/N of the layers itself, N-1 servers)."""
    from bench.llamacpp_rpc import measure_llamacpp_rpc

    setups = {"llama.cpp RPC": False, **({"llama.cpp RPC, host + N-1": True} if args.host_share and nodes > 1 else {})}
    rows = []
    for rtt in rtts:
        for engine, host_share in setups.items():
            row = measure_llamacpp_rpc(gguf, nodes, rtt, prompt_tokens=args.prompt_tokens,
                                       new_tokens=args.new_tokens, threads=args.threads,
                                       generations=args.generations, host_share=host_share)  # fmt: skip
            rows.append({**row, "engine": engine, "ttft_ms": row.get("ttft_ms_p50", 0.0)})
            print(json.dumps({k: rows[-1][k] for k in ("engine", "nodes", "rtt_ms", "tpot_ms_p50")}), file=sys.stderr)
    return rows


def prefill(package: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """TTFT of a long prompt on 3 nodes: chunked and pipelined on the ring, against one chunk."""
    manifest = load_package(package).manifest
    prompt = prompt_of(manifest.architecture.vocab_size, args.long_prompt)
    spans = split_spans([0, *(b.end for b in manifest.blocks)], 3)
    setups = {"chain, one chunk (before)": {"token_ring": False}, "ring, one chunk": {"prefill_chunk": 0},
              **{f"ring, chunks of {c}": {"prefill_chunk": c} for c in args.chunks}}  # fmt: skip
    links = {"5 ms, 100 Mbit/s": LinkProfile(delay_s=0.0025, bandwidth_bps=100e6),
             "0 ms, 50 Mbit/s": LinkProfile(bandwidth_bps=50e6)}  # fmt: skip
    rows = []
    with node_processes(package, spans) as targets:
        for link, profile in links.items():
            with emulated_links(targets, profile) as (addresses, _):
                for setup, options in setups.items():
                    row = generations(addresses, prompt, 2, args.generations, **options)
                    rows.append({"link": link, "setup": setup, "prompt_tokens": len(prompt), **row})
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "tokens"}), file=sys.stderr)
    return rows


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}). Node processes on one shared 2-core machine, "
             f"{result['threads']} thread each, every link (the client's too) behind a bench/links.py relay holding "
             f"each chunk RTT/2 each way. Greedy, {result['prompt_tokens']}-token prompt, {result['new_tokens']} new "
             f"tokens, {result['generations']} timed generations per point after one warm-up. "
             "Bound: Σ the hops' compute (median over decode steps, as the nodes timed it) + N one-way links "
             "(the ring), each as a ping through the relay measures it (the nominal RTT/2 + 0.1–0.5 ms of relay). "
             "`ring`: the token goes "
             "last node → first node; `chain`: back up through every stage (the path before the ring).", ""]
    for model in result["models"]:
        lines += [f"**{model['model']}**", "",
                  "| nodes | RTT ms | engine | tok/s | TPOT p50 ms | TPOT p95 ms | TTFT ms | bound ms | p50 / bound |",
                  "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        # llama.cpp's rows are held against the ring's bound at the same point
        bounds = {(r["nodes"], r["rtt_ms"]): r["bound_ms"] for r in model["rows"] if r["engine"] == "swarm ring"}
        for r in sorted(model["rows"], key=lambda r: (r["nodes"], r["rtt_ms"], r["engine"])):
            bound = r.get("bound_ms") or bounds.get((r["nodes"], r["rtt_ms"]))
            ratio = f"{r['tpot_ms_p50'] / bound:.2f}" if bound else ""
            lines.append(f"| {r['nodes']} | {r['rtt_ms']:g} | {r['engine']} | {r['decode_tok_s']:.1f} | "
                         f"{r['tpot_ms_p50']:.1f} | {r['tpot_ms_p95']:.1f} | {r['ttft_ms']:.0f} | "
                         f"{bound or 0:.1f} | {ratio} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def prefill_markdown(model: str, rows: list[dict[str, Any]], generations: int, command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}). {model}, 3 node processes, every link behind a "
             f"relay; time to first token of a {rows[0]['prompt_tokens']}-token prompt, median of {generations} "
             "after a warm-up. `before`: the chain and one chunk, as the swarm ran before the ring.", "",
             "| link | setup | TTFT ms | vs before |", "| --- | --- | ---: | ---: |"]  # fmt: skip
    before = {r["link"]: r["ttft_ms"] for r in rows if r["setup"].endswith("(before)")}
    for r in rows:
        lines.append(f"| {r['link']} | {r['setup']} | {r['ttft_ms']:.0f} | {r['ttft_ms'] / before[r['link']]:.2f}x |")
    return "\n".join(lines)


def parse_list(text: str, kind: type) -> list[Any]:
    return [kind(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2")
    p.add_argument("--nodes", default="1,2,3,4")
    p.add_argument("--rtts", default="0,2,5,10,20,40", help="per-hop round trips, ms")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="per rpc-server (a node process runs one)")
    p.add_argument("--llamacpp", action="append", default=[], metavar="MODEL=GGUF",
                   help="llama.cpp's RPC backend on this GGUF of MODEL, the same weights and bit width")
    p.add_argument("--host-share", action="store_true", help="also llama.cpp with the client computing a share")
    p.add_argument("--prefill", action="store_true", help="also the long-prompt TTFT rows (first model)")
    p.add_argument("--long-prompt", type=int, default=1024)
    p.add_argument("--chunks", default="128,256")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--json", type=Path, help="also write the raw results here")
    args = p.parse_args()
    args.chunks = parse_list(args.chunks, int)
    os.environ.setdefault(SWARM_KEY_ENV, SwarmKey.generate().join_code)
    nodes, rtts = parse_list(args.nodes, int), parse_list(args.rtts, float)
    result: dict[str, Any] = {"threads": args.threads, "prompt_tokens": args.prompt_tokens,
                              "new_tokens": args.new_tokens, "generations": args.generations, "models": []}  # fmt: skip
    ggufs = dict(pair.split("=", 1) for pair in args.llamacpp)
    command = ("python bench/bench_network.py " + " ".join(sys.argv[1:])).strip()
    for index, name in enumerate(parse_list(args.models, str)):
        package = package_for(name, args.cache)
        rows: list[dict[str, Any]] = []
        for n in nodes:
            rows += sweep_swarm(package, n, rtts, args)
            if name in ggufs:
                rows += sweep_llamacpp(Path(ggufs[name]), n, rtts, args)
        one = {**result, "models": [{"model": name, "rows": rows}]}
        if args.prefill and index == 0:
            one["prefill"] = prefill(package, args)
            section = prefill_markdown(name, one["prefill"], args.generations, command)
            replace_section(REPO / "docs" / "BENCHMARKS.md", "network-prefill", section)
        if args.json:
            args.json.with_suffix(f".{name}.json").write_text(json.dumps(one, indent=1))
        if rows:
            replace_section(REPO / "docs" / "BENCHMARKS.md", f"network-{name}", markdown(one, command))


if __name__ == "__main__":
    main()
