"""Issue 5 benchmarks: balancing a swarm with a slow member, and batching concurrent sessions.

    python bench/bench_balance.py [--model tinyllama-1.1b] [--max-layers 12]

1. Three node processes on this machine; one runs in a cgroup (v1) limited to 25 % of one core,
   a stand-in for a phone. Each node's memory holds at most `--max-layers` layers. The equal
   split of layers runs first; the nodes' measured speeds (their Info) then feed
   `plan_assignment`, and the swarm restarts with the computed spans. Reports single-session
   decode tokens/s of both, in one run.
2. Batching: a two-node swarm, each node given one core's worth of threads (as two devices
   would have their own cores), aggregate tokens/s of 8 concurrent sessions against 1 for a
   short and a longer prompt, and whether every session got exactly the local runner's tokens.
Writes the "balancing" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.bench_local import checkpoint, export  # noqa: E402
from bench.report import replace_section  # noqa: E402
from swarm.apps.demo import split_spans  # noqa: E402
from swarm.assignment import NodeProfile, plan_assignment  # noqa: E402
from swarm.client import AsyncSwarm  # noqa: E402
from swarm.environment import SWARM_KEY_ENV  # noqa: E402
from swarm.generation import GenerationRequest  # noqa: E402
from swarm.keys import SwarmKey  # noqa: E402
from swarm.package import load_package  # noqa: E402

CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
PHONE_SHARE = 0.25  # of one core
PROMPT = tuple(range(10, 74))
NEW_TOKENS = 32


@contextmanager
def throttled_cgroup() -> Iterator[Path]:
    group = CGROUP_ROOT / f"swarm-phone-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text(str(int(100000 * PHONE_SHARE)))
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            (CGROUP_ROOT / "cgroup.procs").write_text(pid)  # move stragglers back before removing
        group.rmdir()


@contextmanager
def nodes(
    package: Path, spans: list[tuple[int, int]], phone: int, group: Path | None, threads: int = 2
) -> Iterator[list[str]]:
    procs, addresses = [], []
    try:
        for index, (start, end) in enumerate(spans):
            cmd = [sys.executable, "-m", "node.cli", "join", "--model", str(package), "--blocks", f"{start}:{end}",
                   "--host", "127.0.0.1", "--port", "0", "--threads", str(threads), "--no-mdns"]  # fmt: skip
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(proc)
            if index == phone and group is not None:
                (group / "cgroup.procs").write_text(str(proc.pid))
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("serving "):
                raise RuntimeError(f"node for [{start}, {end}) did not start")
            addresses.append(line.split(" at ")[1].split()[0])
        yield addresses
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


async def run_sessions(
    addresses: list[str], count: int, prompt: tuple[int, ...] = PROMPT, new_tokens: int = NEW_TOKENS
) -> tuple[float, list[list[int]], list[str]]:
    """Aggregate tokens/s of `count` concurrent sessions (prefill included), their tokens, the route."""
    swarm = await AsyncSwarm.connect(addresses)
    try:
        request = GenerationRequest(prompt, new_tokens, stop_on_eos=False)
        warm = GenerationRequest(PROMPT, 2, stop_on_eos=False)
        [t async for t in swarm.text.generate_ids(warm)]

        async def one() -> list[int]:
            return [t async for t in swarm.text.generate_ids(request)]

        started = time.perf_counter()
        outputs = await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.perf_counter() - started
        route = [f"{p.address}:{p.start}-{p.end}" for p in swarm.route()]
        return count * new_tokens / elapsed, outputs, route
    finally:
        await swarm.close()


async def profiles(addresses: list[str], max_layers: int) -> list[NodeProfile]:
    swarm = await AsyncSwarm.connect(addresses)
    try:
        return [NodeProfile(p.address, p.step_ms / (p.end - p.start), max_layers, p.latency_ms) for p in swarm.peers]
    finally:
        await swarm.close()


def local_tokens(package: Path, prompt: tuple[int, ...], new_tokens: int) -> list[int]:
    from swarm.local import LocalModel

    with LocalModel(package) as model:
        return list(model.generate_ids(GenerationRequest(prompt, new_tokens, stop_on_eos=False)))


BATCH_CASES = [(PROMPT[:8], 64), (PROMPT, NEW_TOKENS)]  # (prompt, new tokens): short and longer prompt


def batching(package: Path, edges: list[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with nodes(package, split_spans(edges, 2), phone=-1, group=None, threads=1) as addresses:
        for prompt, new_tokens in BATCH_CASES:
            one, _, _ = asyncio.run(run_sessions(addresses, 1, prompt, new_tokens))
            eight, outputs, _ = asyncio.run(run_sessions(addresses, 8, prompt, new_tokens))
            rows.append({"prompt": len(prompt), "new": new_tokens, "one": one, "eight": eight, "outputs": outputs})
    for row, (prompt, new_tokens) in zip(rows, BATCH_CASES, strict=True):
        expected = local_tokens(package, prompt, new_tokens)
        row["exact"] = all(o == expected for o in row.pop("outputs"))
    return rows


def bench(model: str, cache: Path, max_layers: int) -> dict[str, Any]:
    package = export(checkpoint(model, cache), "float32", cache)
    manifest = load_package(package).manifest
    edges = [b.start for b in manifest.blocks] + [manifest.num_layers]
    equal = split_spans(edges, 3)
    result: dict[str, Any] = {"model": model, "max_layers": max_layers, "equal_spans": equal}
    with throttled_cgroup() as group:
        with nodes(package, equal, phone=2, group=group) as addresses:
            result["equal_tok_s"], _, result["equal_route"] = asyncio.run(run_sessions(addresses, 1))
            measured = asyncio.run(profiles(addresses, max_layers))
        by_address = dict(zip(addresses, range(3), strict=True))
        plan = plan_assignment(edges, measured)
        computed = [plan[a] for a in addresses if a in plan]
        phone = sorted(by_address[a] for a in plan).index(2) if addresses[2] in plan else -1
        result["profiles_ms_per_layer"] = {f"node{by_address[p.node_id]}": round(p.layer_ms, 2) for p in measured}
        result["computed_spans"] = computed
        with nodes(package, computed, phone=phone, group=group) as addresses:
            result["computed_tok_s"], _, result["computed_route"] = asyncio.run(run_sessions(addresses, 1))
    result["batching"] = batching(package, edges)
    return result


def markdown(r: dict[str, Any], command: str) -> str:
    return "\n".join([
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}). Model {r['model']}, three node processes with 2 threads "
        f"each on this 2-core machine; node 2 in a cgroup limited to {int(PHONE_SHARE * 100)} % of one core; every "
        f"node's memory holds at most {r['max_layers']} layers. Prompt {len(PROMPT)} tokens, {NEW_TOKENS} new.",
        "",
        f"Measured ms per layer per decode step: {r['profiles_ms_per_layer']}.",
        "",
        "| assignment | spans (node 0, 1, 2) | route taken | decode tok/s (1 session) |",
        "| --- | --- | --- | ---: |",
        f"| equal split | {r['equal_spans']} | {' -> '.join(r['equal_route'])} | {r['equal_tok_s']:.2f} |",
        f"| computed (`plan_assignment`) | {r['computed_spans']} | {' -> '.join(r['computed_route'])} | "
        f"{r['computed_tok_s']:.2f} |",
        "",
        f"Computed over equal split: **{r['computed_tok_s'] / r['equal_tok_s']:.2f}x**.",
        "",
        "Batching: two nodes, [0, 11) and [11, 22), one onnxruntime thread each (one core each, as two devices "
        "would have); aggregate generated tokens/s, prompt processing included:",
        "",
        "| prompt / new tokens | 1 session | 8 concurrent sessions | ratio | every session = local runner |",
        "| --- | ---: | ---: | ---: | --- |",
        *[f"| {b['prompt']} / {b['new']} | {b['one']:.2f} | {b['eight']:.2f} | **{b['eight'] / b['one']:.2f}x** | "
          f"{b['exact']} |" for b in r["batching"]],
        "",
    ])  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tinyllama-1.1b")
    p.add_argument("--max-layers", type=int, default=12)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args()
    # a swarm key for this run, in the environment every node process and client reads
    os.environ.setdefault(SWARM_KEY_ENV, SwarmKey.generate().join_code)
    result = bench(args.model, args.cache, args.max_layers)
    print(result)
    command = ("python bench/bench_balance.py " + " ".join(sys.argv[1:])).strip()
    replace_section(REPO / "docs" / "BENCHMARKS.md", "balancing", markdown(result, command))


if __name__ == "__main__":
    main()
