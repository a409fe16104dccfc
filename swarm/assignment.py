"""Which layers each node serves. Pure functions over plain data: no sockets, no clocks.

Rules, in order: cover layers nobody serves; then relieve the bottleneck (the layers with the
least decode capacity, where capacity sums 1/step-time over the nodes serving a layer); then add
replicas where memory allows. A node only moves when the gain is clear and has persisted
(hysteresis), so measurement noise cannot make spans flap.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from swarm.latency import link_wait_ms

UNKNOWN_LAYER_MS = 1.0  # per-layer step time assumed for a node that has not measured itself
# a longer span for slow links must save at least this share of a token's time (measured links are noisy)
LINK_MIN_GAIN = 0.2


@dataclass(frozen=True)
class NodeProfile:
    """What assignment knows of a node."""

    node_id: str
    layer_ms: float  # measured decode-step time per layer
    max_layers: int  # layers its memory budget holds (weights + KV for its expected sessions)
    link_ms: float = 0.0  # round trip to the rest of the swarm


@dataclass(frozen=True)
class Served:
    """A span some node serves, with that node's measured step time through it."""

    start: int
    end: int
    step_ms: float = 0.0  # 0 = unknown


def coverage(num_layers: int, served: Sequence[tuple[int, int]]) -> list[int]:
    """How many nodes serve each layer."""
    counts = [0] * num_layers
    for start, end in served:
        for layer in range(max(start, 0), min(end, num_layers)):
            counts[layer] += 1
    return counts


def capacity(num_layers: int, served: Sequence[Served]) -> list[float]:
    """Decode steps per ms each layer can take, summed over the nodes that serve it."""
    per_layer = [0.0] * num_layers
    for s in served:
        step_ms = s.step_ms if s.step_ms > 0 else UNKNOWN_LAYER_MS * (s.end - s.start)
        for layer in range(max(s.start, 0), min(s.end, num_layers)):
            per_layer[layer] += 1.0 / step_ms
    return per_layer


def choose_span(
    block_edges: Sequence[int], served: Sequence[tuple[int, int] | Served], max_layers: int | None = None,
    layer_ms: float = 0.0, link_ms: float = 0.0,
) -> tuple[int, int]:  # fmt: skip
    """A span `[start, end)` on block edges for a node joining a swarm that serves `served`:
    the block with the least capacity (uncovered blocks have none), grown over neighbouring
    blocks that are as poor, as far as `max_layers` allows (always at least one block).

    With the node's `layer_ms` and the swarm's link round trip `link_ms` known, the span grows
    further (still over the scarcest blocks, within `max_layers`) when that takes links off the
    fastest route: the one-way link time a token saves, net of the compute and the capacity it
    costs, must be a clear share of the token's time (`_longer_span`). With fast links that
    saves little, and the span is the one above."""
    edges = list(block_edges)
    spans = [s if isinstance(s, Served) else Served(*s) for s in served]
    scarcest = _scarcest_span(edges, capacity(edges[-1], spans), max_layers)
    if layer_ms <= 0 or link_ms <= 0:
        return scarcest
    return _longer_span(edges, spans, scarcest, max_layers, layer_ms, link_ms / 2)


def route_time(block_edges: Sequence[int], served: Sequence[Served], one_way_ms: float) -> tuple[float, float]:
    """(compute, links) in ms per token along the fastest chain of `served` (`swarm/latency.py`: a
    ring of alike links, `one_way_ms` each); infinite compute when no chain covers every layer."""
    num_layers = block_edges[-1]
    best: dict[int, tuple[float, float, int]] = {0: (0.0, 0.0, 0)}  # layer -> (time, compute, stages) to it
    for edge in sorted({0, *(s.start for s in served)}):
        if edge not in best:
            continue
        time, compute, stages = best[edge]
        for s in served:
            if s.start != edge or not edge < s.end <= num_layers:
                continue
            step_ms = s.step_ms if s.step_ms > 0 else UNKNOWN_LAYER_MS * (s.end - s.start)
            link = 0.0 if edge == 0 and s.end == num_layers else one_way_ms  # the ring enters each stage once
            if s.end not in best or time + step_ms + link < best[s.end][0]:
                best[s.end] = (time + step_ms + link, compute + step_ms, stages + 1)
    if num_layers not in best:
        return float("inf"), 0.0
    _, compute, stages = best[num_layers]
    return compute, link_wait_ms([one_way_ms] * stages)


def _longer_span(edges: list[int], served: list[Served], scarcest: tuple[int, int], max_layers: int | None,
                 layer_ms: float, one_way_ms: float) -> tuple[int, int]:  # fmt: skip
    """The span around `scarcest` that saves a token the most link time on the fastest route, net
    of what it adds to the token's compute and to the swarm's slowest stage (a longer span is a
    longer step: less capacity for the blocks this node came to relieve). Savings in compute or
    at the slowest stage do not count: they are the capacity rule's business. `scarcest` itself
    when none saves at least `LINK_MIN_GAIN` of the token's time (compute + links) net."""
    def joined(span: tuple[int, int]) -> tuple[float, float, float]:
        spans = [*served, Served(*span, layer_ms * (span[1] - span[0]))]
        return *route_time(edges, spans, one_way_ms), bottleneck_ms(edges[-1], spans)

    base_compute, base_links, base_slowest = joined(scarcest)
    if base_compute == float("inf"):
        return scarcest  # layers stay uncovered whatever this node takes: covering comes first
    best, best_gain = scarcest, LINK_MIN_GAIN * (base_compute + base_links)
    wider = [(a, b) for a in edges if a <= scarcest[0] for b in edges if b >= scarcest[1]
             if (a, b) != scarcest and (max_layers is None or b - a <= max_layers)]  # fmt: skip
    for span in sorted(wider, key=lambda s: (s[1] - s[0], s)):
        compute, links, slowest = joined(span)
        if compute == float("inf"):
            continue  # its ends meet no one else's: no route through it
        gain = (base_links - links) - max(compute - base_compute, 0.0) - max(slowest - base_slowest, 0.0)
        if gain > best_gain:
            best, best_gain = span, gain
    return best


def _scarcest_span(edges: list[int], layer_capacity: list[float], max_layers: int | None) -> tuple[int, int]:
    blocks = list(itertools.pairwise(edges))
    need = [min(layer_capacity[s:e]) for s, e in blocks]
    first = need.index(min(need))
    last = first
    while (
        last + 1 < len(blocks)
        and need[last + 1] == need[first]
        and (max_layers is None or blocks[last + 1][1] - blocks[first][0] <= max_layers)
    ):
        last += 1
    return blocks[first][0], blocks[last][1]


def _cut(edges: Sequence[int], start: int, most: int) -> int:
    """The furthest block edge after `start` within `most` layers, or the next edge if none fits."""
    fitting = [e for e in edges if start < e <= start + most]
    return fitting[-1] if fitting else min(e for e in edges if e > start)


def plan_assignment(block_edges: Sequence[int], nodes: Sequence[NodeProfile]) -> dict[str, tuple[int, int]]:
    """Spans for a whole swarm.

    The chain that serves one session is filled from the fastest nodes down, each taking as many
    layers as its memory holds: a decode step crosses every layer once, so a layer on a fast node
    is time saved, and fewer hops save link time. The remaining nodes become replicas of the
    stage with the least capacity that they can hold, so concurrent sessions find spare capacity
    where it is scarcest. Nodes that can hold no block get nothing.
    """
    edges = list(block_edges)
    num_layers, smallest = edges[-1], min(b - a for a, b in itertools.pairwise(edges))
    fastest_first = sorted(nodes, key=lambda n: (n.layer_ms + n.link_ms / max(n.max_layers, 1), n.node_id))
    plan: dict[str, tuple[int, int]] = {}
    start = 0
    spare = []
    for node in fastest_first:
        if start >= num_layers or node.max_layers < smallest:
            spare.append(node)
            continue
        end = _cut(edges, start, node.max_layers)
        plan[node.node_id] = (start, end)
        start = end
    if start < num_layers:
        return plan  # not enough memory in the swarm: the rest stays uncovered
    profiles = {n.node_id: n for n in nodes}
    layer_capacity = capacity(num_layers, [Served(a, b, profiles[i].layer_ms * (b - a)) for i, (a, b) in plan.items()])
    for node in spare:
        if node.max_layers < smallest:
            continue
        a, b = plan[node.node_id] = _scarcest_span(edges, layer_capacity, node.max_layers)
        for layer in range(a, b):
            layer_capacity[layer] += 1.0 / (node.layer_ms * (b - a))
    return plan


def chain_ms(block_edges: Sequence[int], nodes: Sequence[NodeProfile], plan: dict[str, tuple[int, int]]) -> float:
    """Time of one decode step along the fastest chain of `plan` (compute + links), in ms;
    infinite when the plan leaves layers uncovered."""
    profiles = {n.node_id: n for n in nodes}
    best = {0: 0.0}
    for edge in sorted(set(block_edges)):
        if edge not in best:
            continue
        for node_id, (a, b) in plan.items():
            if a == edge:
                cost = best[edge] + profiles[node_id].layer_ms * (b - a) + profiles[node_id].link_ms
                best[b] = min(best.get(b, float("inf")), cost)
    return best.get(block_edges[-1], float("inf"))


@dataclass(frozen=True)
class MoveAdvice:
    """A node's running record of how much better another span would be."""

    candidate: tuple[int, int] | None = None
    streak: int = 0  # consecutive checks that favoured `candidate`


def advise_move(
    advice: MoveAdvice, current_ms: float, candidate: tuple[int, int], candidate_ms: float,
    min_gain: float = 0.2, patience: int = 3,
) -> tuple[MoveAdvice, bool]:  # fmt: skip
    """One check of the hysteresis rule: move only after `patience` consecutive checks in which
    the same candidate span was at least `min_gain` (a share) faster than the current one."""
    if candidate_ms > current_ms * (1 - min_gain):
        return MoveAdvice(), False
    streak = advice.streak + 1 if advice.candidate == candidate else 1
    return MoveAdvice(candidate, streak), streak >= patience


# --- a serving node re-checks its span -----------------------------------------------------
#
# The joining rule applied again while serving: the span a node would take if it joined now
# (`choose_span`: the layers with the least decode capacity, counting everyone else's announced
# speed) replaces its current span when every layer it would drop is still served by another
# node, the swarm's bottleneck (the step time of the layer with the least capacity) gets at
# least `min_gain` faster, and that held on `patience` consecutive checks for the same span
# (`advise_move`), so noisy speed measurements cannot make spans flap.


@dataclass(frozen=True)
class Move:
    span: tuple[int, int]
    reason: str


def bottleneck_ms(num_layers: int, served: Sequence[Served]) -> float:
    """ms per decode step at the layer with the least capacity; infinite when a layer is uncovered."""
    least = min(capacity(num_layers, served))
    return 1.0 / least if least > 0 else float("inf")


def _served(span: tuple[int, int], layer_ms: float) -> Served:
    return Served(span[0], span[1], layer_ms * (span[1] - span[0]))


def check_move(
    advice: MoveAdvice, block_edges: Sequence[int], others: Sequence[Served], current: tuple[int, int],
    layer_ms: float, max_layers: int | None = None, min_gain: float = 0.2, patience: int = 3,
) -> tuple[MoveAdvice, Move | None]:  # fmt: skip
    """One periodic check. `others`: what every other live node serves, with its announced step
    time; `layer_ms`: this node's announced step time per layer."""
    num_layers = block_edges[-1]
    candidate = choose_span(block_edges, others, max_layers)
    if candidate == current:
        return MoveAdvice(), None
    still_served = coverage(num_layers, [(s.start, s.end) for s in others])
    dropped = [layer for layer in range(*current) if not candidate[0] <= layer < candidate[1]]
    if any(still_served[layer] == 0 for layer in dropped):
        return MoveAdvice(), None  # moving would leave layers nobody serves
    now_ms = bottleneck_ms(num_layers, [*others, _served(current, layer_ms)])
    then_ms = bottleneck_ms(num_layers, [*others, _served(candidate, layer_ms)])
    advice, move = advise_move(advice, now_ms, candidate, then_ms, min_gain, patience)
    if not move:
        return advice, None
    reason = (f"layers [{candidate[0]}, {candidate[1]}) are the swarm's bottleneck: moving there takes the slowest "
              f"stage from {now_ms:.2f} to {then_ms:.2f} ms per step")  # fmt: skip
    return MoveAdvice(), Move(candidate, reason)
