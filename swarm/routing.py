"""Choosing a route: an ordered chain of peers whose spans cover every layer.

Pure functions over plain data: no sockets, no clocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from swarm.errors import NoRouteError
from swarm.latency import ReturnPath, token_time_ms


@dataclass(frozen=True)
class PeerView:
    """What routing knows of one peer."""

    node_id: str
    address: str
    start: int  # serves layers [start, end)
    end: int
    sessions: int = 0  # live sessions now
    max_sessions: int = 1
    step_ms: float = 0.0  # measured compute for one decode step through its span; 0 = unknown
    latency_ms: float = 0.0  # measured round trip from the client; 0 = unknown
    machine: str = ""  # the CPU whose kernels compute its layers (x86_64, aarch64); "" = unknown


HOP_MS = 1.0  # fixed cost of a stage on top of its measured compute (the messages in and out, their framing)
# Each session already on a node stretches a step there by a share of the step (batched decode
# reads the weights once for all sessions, so a neighbour costs far less than a whole step) plus
# the handling of its messages, which batching does not share.
SESSION_SLOWDOWN = 0.25
SESSION_MS = 0.5


def _load(peer: PeerView) -> float:
    return max(peer.sessions, 0) / max(peer.max_sessions, 1)


def stage_ms(peer: PeerView) -> float:
    """Expected time a token spends at `peer`: its compute and hop overhead, stretched by the
    sessions it already serves."""
    step_ms = max(peer.step_ms, 0.0)
    neighbours = max(peer.sessions, 0) * (SESSION_SLOWDOWN * step_ms + SESSION_MS)
    return step_ms + HOP_MS + neighbours


def one_way_ms(peer: PeerView) -> float:
    """The link into `peer`, one way: half the round trip the client measured to it."""
    return max(peer.latency_ms, 0.0) / 2


def token_ms(route: Sequence[PeerView], path: ReturnPath = "ring") -> float:
    """Expected decode time per token along `route` (`swarm/latency.py`): every stage, and the
    links a token crosses on the return `path`, each half the client's round trip to its node."""
    return token_time_ms([stage_ms(p) for p in route], [one_way_ms(p) for p in route], path)


def route_ms(route: Sequence[PeerView], path: ReturnPath = "ring") -> float:
    """What `plan_route` minimises: `token_ms`, plus the client's own round trip to the first
    node, which a generation waits for once (its prompt out, its first token back) unless the
    client is on every token's path anyway."""
    client = max(route[0].latency_ms, 0.0) if route and path != "client" else 0.0
    return token_ms(route, path) + client


def _added_ms(peer: PeerView, first: bool, last: bool, path: ReturnPath) -> float:
    """What `peer` adds to `route_ms` as a stage of a route (its first, its last): the same sum,
    term by term, so the search below can extend chains one peer at a time."""
    into = one_way_ms(peer)
    link = {"ring": 0.0 if first and last else into, "stages": 0.0 if first else 2 * into, "client": 2 * into}[path]
    client = max(peer.latency_ms, 0.0) if first and path != "client" else 0.0
    return stage_ms(peer) + link + client


def layer_machines(route: Sequence[PeerView]) -> list[str]:
    """The machine that computes each layer along `route`, by layer index."""
    machines: list[str] = []
    for peer in route:
        machines += [peer.machine] * (peer.end - peer.start)
    return machines


def _foreign_layers(peer: PeerView, machines: Sequence[str]) -> int:
    return sum(1 for layer in range(peer.start, min(peer.end, len(machines)))
               if machines[layer] and peer.machine != machines[layer])  # fmt: skip


def plan_route(
    peers: Sequence[PeerView], num_layers: int, machines: Sequence[str] = (), path: ReturnPath = "ring"
) -> list[PeerView]:
    """The chain from layer 0 to `num_layers` with the lowest expected per-token time (`route_ms`:
    stage compute plus the links a token crosses on the return `path`, measured from the
    client's round trips), so slow links favour fewer, longer spans even on slower stages.

    Ties go to fewer hops, then to the less loaded peers, so concurrent sessions spread over
    equal replicas. With `machines` (a replay: the machine that computed each layer before),
    the fewest layers on another machine come first: another ISA's kernels round differently.
    """
    # best[layer] = (foreign layers, route ms so far, hops, load, chain) of the best chain covering [0, layer)
    best: dict[int, tuple[int, float, int, float, list[PeerView]]] = {0: (0, 0.0, 0, 0.0, [])}
    for boundary in sorted({0} | {p.start for p in peers}):
        if boundary not in best:
            continue
        foreign, cost, hops, load, chain = best[boundary]
        for peer in peers:
            if peer.start != boundary or peer.end > num_layers:
                continue
            added = _added_ms(peer, not chain, peer.end == num_layers, path)
            candidate = (foreign + _foreign_layers(peer, machines), cost + added, hops + 1, load + _load(peer),
                         [*chain, peer])  # fmt: skip
            if peer.end not in best or candidate[:4] < best[peer.end][:4]:
                best[peer.end] = candidate
    if num_layers in best:
        return best[num_layers][4]
    raise NoRouteError(_missing_message(peers, num_layers))


def plan_inner_route(
    peers: Sequence[PeerView], num_layers: int, outer: int, machines: Sequence[str] = (), path: ReturnPath = "client"
) -> list[PeerView]:
    """`plan_route` over layers [outer, num_layers - outer) only (a private session's client runs
    the `outer` layers at each end): among the peers whose span lies inside, on their boundaries."""
    end = num_layers - outer
    inside = [replace(p, start=p.start - outer, end=p.end - outer) for p in peers if outer <= p.start and p.end <= end]
    try:
        chain = plan_route(inside, end - outer, machines[outer:end], path)
    except NoRouteError:
        if not outer:
            raise
        raise NoRouteError(f"no chain of nodes covers layers [{outer}, {end}), the swarm's part of a private "
                           f"session whose client runs {outer} layers at each end: it needs nodes whose spans "
                           f"start at layer {outer} and end at layer {end}; use fewer private layers") from None
    return [replace(p, start=p.start + outer, end=p.end + outer) for p in chain]


def _missing_message(peers: Sequence[PeerView], num_layers: int) -> str:
    covered = [False] * num_layers
    for peer in peers:
        for layer in range(max(peer.start, 0), min(peer.end, num_layers)):
            covered[layer] = True
    missing = [layer for layer, ok in enumerate(covered) if not ok]
    if missing:
        return (
            f"no peer serves layers {_ranges(missing)} of {num_layers}; "
            "start a node for them (swarm-node join --blocks A:B) or wait for one to join"
        )
    return "the peers' spans cover every layer but do not chain end to end; start a node whose span fits"


def _ranges(layers: list[int]) -> str:
    spans, start = [], layers[0]
    for prev, cur in zip(layers, [*layers[1:], None], strict=True):
        if cur != prev + 1:
            spans.append(f"[{start}, {prev + 1})")
            start = cur if cur is not None else start
    return ", ".join(spans)
