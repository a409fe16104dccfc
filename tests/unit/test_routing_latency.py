"""plan_route on measured links: the per-token time model decides between few slow stages and
many fast ones (compute + the links a token crosses, `swarm/latency.py`)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.latency import ReturnPath
from swarm.routing import HOP_MS, PeerView, plan_route, route_ms

# 8 layers served two ways: two stages of 12 ms, or four of 4 ms
TWO = [("a", 0, 4), ("b", 4, 8)]
FOUR = [("c0", 0, 2), ("c1", 2, 4), ("c2", 4, 6), ("c3", 6, 8)]


def swarm(rtt_ms: float) -> tuple[list[PeerView], list[PeerView]]:
    two = [PeerView(n, f"{n}:1", s, e, step_ms=12.0, latency_ms=rtt_ms) for n, s, e in TWO]
    four = [PeerView(n, f"{n}:1", s, e, step_ms=4.0, latency_ms=rtt_ms) for n, s, e in FOUR]
    return two, four


def test_a_slow_link_makes_two_slower_stages_beat_four_fast_ones() -> None:
    two, four = swarm(rtt_ms=10.0)
    # ring: 2 x (12 + 1 hop) + 2 links x 5 ms one way, + the client's 10 ms round trip once
    assert route_ms(two) == 2 * (12.0 + HOP_MS) + 2 * 5.0 + 10.0 == 46.0
    assert route_ms(four) == 4 * (4.0 + HOP_MS) + 4 * 5.0 + 10.0 == 50.0
    assert plan_route([*four, *two], 8) == two
    assert plan_route([*two, *four], 8) == two  # whatever order the peers came in


def test_a_fast_link_makes_four_fast_stages_beat_two_slow_ones() -> None:
    two, four = swarm(rtt_ms=1.0)
    assert route_ms(two) == 26.0 + 2 * 0.5 + 1.0 == 28.0
    assert route_ms(four) == 20.0 + 4 * 0.5 + 1.0 == 23.0
    assert plan_route([*two, *four], 8) == four
    assert plan_route([*four, *two], 8) == four


def test_mixed_routes_are_weighed_too() -> None:
    two, four = swarm(rtt_ms=10.0)
    # a's 4 layers then c2, c3: 13 + 5 + 5 + 3 links x 5 + 10 = 48, between the two pure routes
    assert route_ms([two[0], four[2], four[3]]) == 48.0
    assert plan_route([two[0], *four], 8) == [two[0], four[2], four[3]]  # b is gone: 48 < 50


def test_the_return_path_moves_the_break_even_link() -> None:
    # back through the stages a token crosses 2(N-1) links: (N-1) round trips, not N halves
    two, four = swarm(rtt_ms=5.0)
    assert route_ms(two, "ring") == 26.0 + 5.0 + 5.0 == 36.0
    assert route_ms(four, "ring") == 20.0 + 10.0 + 5.0 == 35.0
    assert route_ms(two, "stages") == 26.0 + 5.0 + 5.0 == 36.0
    assert route_ms(four, "stages") == 20.0 + 15.0 + 5.0 == 40.0
    assert route_ms(two, "client") == 26.0 + 10.0 == 36.0
    assert route_ms(four, "client") == 20.0 + 20.0 == 40.0
    assert plan_route([*two, *four], 8, path="ring") == four
    assert plan_route([*two, *four], 8, path="stages") == two
    assert plan_route([*two, *four], 8, path="client") == two


def test_a_lone_node_crosses_no_link_per_token_but_the_client_waits_once() -> None:
    whole = PeerView("whole", "w:1", 0, 8, step_ms=30.0, latency_ms=20.0)
    assert route_ms([whole]) == 31.0 + 20.0  # its ring is itself; the prompt and first token cross once
    assert route_ms([whole], "client") == 31.0 + 2 * 10.0
    two, _ = swarm(rtt_ms=20.0)
    assert route_ms(two) == 26.0 + 20.0 + 20.0 == 66.0
    assert plan_route([*two, whole], 8) == [whole]  # 51 < 66: one slower node beats a 2-node ring


def test_equal_times_still_go_to_fewer_hops() -> None:
    # the lone node computes 2 ms longer (28 against 2 x 13), and its ring saves exactly the 2 x 1 ms of links
    whole = PeerView("whole", "w:1", 0, 8, step_ms=27.0, latency_ms=2.0)
    two = [PeerView(n, f"{n}:1", s, e, step_ms=12.0, latency_ms=2.0) for n, s, e in TWO]
    assert route_ms([whole]) == route_ms(two) == 30.0
    assert plan_route([*two, whole], 8) == [whole]


# --- property: the search finds the route the model ranks first ---------------------------------------


def chains(peers: list[PeerView], num_layers: int) -> list[list[PeerView]]:
    found: list[list[PeerView]] = []

    def walk(layer: int, chain: list[PeerView]) -> None:
        if layer == num_layers:
            found.append(chain)
            return
        for p in peers:
            if p.start == layer and layer < p.end <= num_layers:
                walk(p.end, [*chain, p])

    walk(0, [])
    return found


@st.composite
def measured_swarms(draw: st.DrawFn) -> tuple[list[PeerView], int]:
    num_layers = draw(st.integers(1, 6))
    peers = []
    for i in range(draw(st.integers(1, 7))):
        start = draw(st.integers(0, num_layers - 1))
        end = draw(st.integers(start + 1, num_layers))
        peers.append(PeerView(f"p{i}", f"p{i}:1", start, end, sessions=draw(st.integers(0, 3)), max_sessions=4,
                              step_ms=draw(st.sampled_from([0.0, 1.0, 4.0, 12.5, 40.0])),
                              latency_ms=draw(st.sampled_from([0.0, 0.5, 2.0, 10.0, 40.0]))))  # fmt: skip
    return peers, num_layers


@settings(max_examples=300, deadline=None)
@given(measured_swarms(), st.sampled_from(["ring", "stages", "client"]))
def test_the_planned_route_is_the_fastest_by_the_model(case: tuple[list[PeerView], int], path: ReturnPath) -> None:
    peers, num_layers = case
    every = chains(peers, num_layers)
    if not every:
        return  # no chain: test_routing covers the error
    route = plan_route(peers, num_layers, path=path)
    assert route in every
    fastest = min(route_ms(c, path) for c in every)
    assert route_ms(route, path) == pytest.approx(fastest, abs=1e-9)
    # among the fastest, no route with fewer hops was passed over
    tied = [c for c in every if route_ms(c, path) == pytest.approx(fastest, abs=1e-9)]
    assert len(route) == min(len(c) for c in tied)


def test_chains_helper_sees_every_route() -> None:
    two, four = swarm(rtt_ms=1.0)
    assert len(chains([*two, *four], 8)) == len(list(itertools.product([0, 1], repeat=2)))  # a|c0c1 x b|c2c3
