"""The per-token time model: what one decoded token waits for along a route.

Pure functions over plain numbers: no sockets, no clocks. In steady-state decode a token waits
for the compute of every stage of its route and for every link it crosses one way; which links
those are is the return path of the sampled token:

- ``"ring"`` (the direct return, DESIGN.md): the last node sends the token straight to the first
  node, which feeds it back in. An N-node route crosses N one-way links (node k to node k+1 for
  the N-1 hops, then the last node to the first); one node alone crosses none.
- ``"stages"`` (the node loop before the direct return): the token comes back up through every
  stage to the first node: 2(N-1) one-way links, none for one node.
- ``"client"`` (the node loop off): the client feeds every token back in: 2N one-way links.

The client is off the critical path in the first two (it only reads the tokens the first node
streams). Links are given per stage as the one-way latency of the link *into* that stage (from
the stage before it; into the first stage, from the last stage on a ring or from the client),
which a client estimates as half the round trip it measured to that node: on one Wi-Fi network
each device's radio is most of a link's delay. With alike links the ring costs N x RTT/2, the
stages path (N-1) x RTT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

ReturnPath = Literal["ring", "stages", "client"]
RETURN_PATHS: tuple[ReturnPath, ...] = ("ring", "stages", "client")


def links_crossed(stages: int, path: ReturnPath = "ring") -> int:
    """How many one-way links one token crosses on a route of `stages` nodes."""
    return round(link_wait_ms([1.0] * max(stages, 0), path))


def link_wait_ms(one_way_ms: Sequence[float], path: ReturnPath = "ring") -> float:
    """The link latency one token waits for: `one_way_ms[k]` is the link into stage k."""
    links = [max(ms, 0.0) for ms in one_way_ms]
    if path == "ring":
        return sum(links) if len(links) > 1 else 0.0
    if path == "stages":
        return 2 * sum(links[1:])
    if path == "client":
        return 2 * sum(links)
    raise ValueError(f"unknown return path {path!r}; expected one of {', '.join(RETURN_PATHS)}")


def token_time_ms(stage_ms: Sequence[float], one_way_ms: Sequence[float], path: ReturnPath = "ring") -> float:
    """Per-token decode time of a route: every stage's compute plus the links the token crosses."""
    if len(stage_ms) != len(one_way_ms):
        raise ValueError(f"{len(stage_ms)} stage times for {len(one_way_ms)} links")
    return sum(max(ms, 0.0) for ms in stage_ms) + link_wait_ms(one_way_ms, path)
