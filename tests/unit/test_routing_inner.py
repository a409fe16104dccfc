"""plan_inner_route: a private session's route over [k, L - k), on the nodes' own boundaries."""

from __future__ import annotations

import pytest

from swarm.errors import NoRouteError
from swarm.routing import PeerView, plan_inner_route, plan_route


def peer(name: str, start: int, end: int, step_ms: float = 1.0) -> PeerView:
    return PeerView(name, f"{name}:1", start, end, step_ms=step_ms)


def test_without_private_layers_it_is_plan_route() -> None:
    peers = [peer("a", 0, 2), peer("b", 2, 5), peer("c", 0, 5, step_ms=10.0)]
    assert plan_inner_route(peers, 5, 0) == plan_route(peers, 5, path="client")


def test_the_route_covers_the_inner_layers_with_spans_inside_them() -> None:
    peers = [peer("whole", 0, 5), peer("a", 1, 2), peer("b", 2, 4), peer("edge", 3, 5)]
    route = plan_inner_route(peers, 5, 1)
    assert [(p.node_id, p.start, p.end) for p in route] == [("a", 1, 2), ("b", 2, 4)]


def test_no_boundary_at_k_says_what_it_needs() -> None:
    with pytest.raises(NoRouteError, match=r"layers \[1, 4\).*start at layer 1 and end at layer 4"):
        plan_inner_route([peer("a", 0, 2), peer("b", 2, 5)], 5, 1)
