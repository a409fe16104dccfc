"""Assignment on simulated swarms of 10, 100 and 1,000 mixed devices (pure functions, no network).

    python bench/simulate.py [--layers 32] [--seed 0]

Each device is a phone, laptop or desktop with a per-layer decode time, a memory budget in
layers and a link latency (jittered +-30 %). For the plan `swarm.assignment.plan_assignment`
computes and for an equal split of layers over the devices it reports:
- one session's decode step time along the fastest chain (ms), against the bound of every
  layer on the fastest device with no links;
- the swarm's capacity for concurrent sessions (steps per second at its scarcest layer),
  against the bound of all compute pooled perfectly.
Writes the "simulation" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import replace_section  # noqa: E402
from swarm.assignment import NodeProfile, Served, capacity, chain_ms, plan_assignment  # noqa: E402

# (share of the swarm, per-layer ms, layers its memory holds, link ms)
KINDS = {"phone": (0.6, 12.0, 4, 8.0), "laptop": (0.3, 4.0, 12, 3.0), "desktop": (0.1, 1.5, 40, 1.0)}


def make_swarm(size: int, rng: random.Random) -> list[NodeProfile]:
    kinds = rng.choices(list(KINDS), weights=[k[0] for k in KINDS.values()], k=size)
    return [
        NodeProfile(
            f"{kind}-{i}",
            KINDS[kind][1] * rng.uniform(0.7, 1.3),
            KINDS[kind][2],
            KINDS[kind][3] * rng.uniform(0.7, 1.3),
        )
        for i, kind in enumerate(kinds)
    ]


def equal_split(edges: list[int], nodes: list[NodeProfile]) -> dict[str, tuple[int, int]]:
    """Layers dealt out evenly in the order devices joined, ignoring speed (memory permitting:
    a device that cannot hold its share takes what it can)."""
    num_layers = edges[-1]
    share = max(1, -(-num_layers // len(nodes)))
    plan, start = {}, 0
    for node in nodes:
        end = min(num_layers, start + min(share, node.max_layers))
        plan[node.node_id] = (start, end)
        start = 0 if end >= num_layers else end  # full cover reached: the rest replicate from the start
    return plan


def swarm_capacity(num_layers: int, nodes: list[NodeProfile], plan: dict[str, tuple[int, int]]) -> float:
    """Steps per second the scarcest layer can take with every node busy."""
    by_id = {n.node_id: n for n in nodes}
    served = [Served(a, b, by_id[i].layer_ms * (b - a) + by_id[i].link_ms) for i, (a, b) in plan.items()]
    return min(capacity(num_layers, served)) * 1000


def evaluate(size: int, num_layers: int, rng: random.Random) -> dict[str, float]:
    nodes = make_swarm(size, rng)
    edges = list(range(num_layers + 1))
    started = time.perf_counter()
    computed = plan_assignment(edges, nodes)
    planning_s = time.perf_counter() - started
    equal = equal_split(edges, nodes)
    return {
        "nodes": size,
        "plan_s": planning_s,
        "step_ms_computed": chain_ms(edges, nodes, computed),
        "step_ms_equal": chain_ms(edges, nodes, equal),
        "step_ms_bound": num_layers * min(n.layer_ms for n in nodes),
        "capacity_computed": swarm_capacity(num_layers, nodes, computed),
        "capacity_equal": swarm_capacity(num_layers, nodes, equal),
        "capacity_bound": sum(1000 / n.layer_ms for n in nodes) / num_layers,
    }


def markdown(rows: list[dict[str, float]], command: str, num_layers: int) -> str:
    kinds = ", ".join(f"{k} {int(v[0] * 100)} % ({v[1]} ms/layer, {v[2]} layers, {v[3]} ms link)"
                      for k, v in KINDS.items())  # fmt: skip
    lines = [f"Command: `{command}`. A {num_layers}-layer model on swarms of {kinds}.", "",
             "| nodes | plan time | one session: step ms computed / equal split / bound | "
             "concurrent: steps/s computed / equal split / bound |", "| ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['nodes']} | {r['plan_s'] * 1000:.0f} ms | {r['step_ms_computed']:.0f} / {r['step_ms_equal']:.0f} / "
            f"{r['step_ms_bound']:.0f} ({r['step_ms_equal'] / r['step_ms_computed']:.1f}x faster than equal) | "
            f"{r['capacity_computed']:.1f} / {r['capacity_equal']:.1f} / {r['capacity_bound']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    rows = [evaluate(size, args.layers, rng) for size in (10, 100, 1000)]
    for r in rows:
        print({k: round(v, 2) for k, v in r.items()})
    command = ("python bench/simulate.py " + " ".join(sys.argv[1:])).strip()
    replace_section(REPO / "docs" / "BENCHMARKS.md", "simulation", markdown(rows, command, args.layers))


if __name__ == "__main__":
    main()
