"""plan_route: the fewest-hop chain over layers [0, num_layers), then the least loaded peers."""

from __future__ import annotations

from collections import deque
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.errors import NoRouteError
from swarm.routing import PeerView, layer_machines, plan_route


def peer(name: str, start: int, end: int, sessions: int = 0, max_sessions: int = 1) -> PeerView:
    return PeerView(node_id=name, address=f"{name}:1", start=start, end=end, sessions=sessions,
                    max_sessions=max_sessions)  # fmt: skip


def names(route: list[PeerView]) -> list[str]:
    return [p.node_id for p in route]


def test_single_peer_serving_everything() -> None:
    assert names(plan_route([peer("a", 0, 4)], 4)) == ["a"]


def test_chain_of_peers_in_layer_order() -> None:
    peers = [peer("c", 4, 6), peer("a", 0, 2), peer("b", 2, 4)]
    assert names(plan_route(peers, 6)) == ["a", "b", "c"]


def test_without_measurements_a_hop_costs_more_than_a_neighbour_session() -> None:
    # nothing measured: a hop costs 1 ms, each session already on a node 0.5 ms
    peers = [peer("a", 0, 2), peer("b", 2, 4), peer("whole", 0, 4, sessions=1, max_sessions=10)]
    assert names(plan_route(peers, 4)) == ["whole"]  # 1.5 ms < 2 ms
    peers = [peer("a", 0, 2), peer("b", 2, 4), peer("whole", 0, 4, sessions=3, max_sessions=10)]
    assert names(plan_route(peers, 4)) == ["a", "b"]  # 2.5 ms > 2 ms


def test_three_hops_lose_to_two() -> None:
    peers = [peer("a", 0, 1), peer("b", 1, 2), peer("c", 2, 4), peer("d", 0, 2, sessions=1), peer("e", 2, 4)]
    route = plan_route(peers, 4)
    assert len(route) == 2
    assert names(route)[0] == "d"


def test_equal_hops_prefer_less_loaded_peers() -> None:
    peers = [
        peer("busy_front", 0, 2, sessions=3, max_sessions=4),
        peer("busy_back", 2, 4, sessions=3, max_sessions=4),
        peer("idle_front", 0, 3, sessions=0, max_sessions=4),
        peer("idle_back", 3, 4, sessions=1, max_sessions=4),
    ]
    assert names(plan_route(peers, 4)) == ["idle_front", "idle_back"]


def test_sessions_count_whatever_the_capacity() -> None:
    # a node's cores are shared by the sessions it has, however many more it would admit
    peers = [peer("small", 0, 2, sessions=1, max_sessions=2), peer("big", 0, 2, sessions=4, max_sessions=16)]
    assert names(plan_route(peers, 2)) == ["small"]


def test_zero_max_sessions_does_not_divide_by_zero() -> None:
    peers = [peer("odd", 0, 2, sessions=1, max_sessions=0), peer("ok", 0, 2, sessions=0, max_sessions=0)]
    assert names(plan_route(peers, 2)) == ["ok"]


def test_replicas_pick_less_loaded_one_per_span() -> None:
    peers = [
        peer("a1", 0, 2, sessions=2, max_sessions=4),
        peer("a2", 0, 2, sessions=1, max_sessions=4),
        peer("b1", 2, 4, sessions=0, max_sessions=4),
        peer("b2", 2, 4, sessions=4, max_sessions=4),
    ]
    assert names(plan_route(peers, 4)) == ["a2", "b1"]


def test_replicas_with_equal_load_still_give_one_chain() -> None:
    peers = [peer("a1", 0, 2), peer("a2", 0, 2), peer("b1", 2, 4), peer("b2", 2, 4)]
    route = plan_route(peers, 4)
    assert [(p.start, p.end) for p in route] == [(0, 2), (2, 4)]


def test_missing_layers_are_named() -> None:
    with pytest.raises(NoRouteError) as info:
        plan_route([peer("a", 0, 2), peer("b", 4, 6)], 6)
    message = str(info.value)
    assert "no peer serves layers [2, 4) of 6" in message
    assert "swarm-node join --blocks A:B" in message


def test_several_missing_ranges_are_all_named() -> None:
    with pytest.raises(NoRouteError, match=r"layers \[0, 1\), \[2, 4\), \[5, 6\) of 6"):
        plan_route([peer("a", 1, 2), peer("b", 4, 5)], 6)


def test_single_missing_last_layer() -> None:
    with pytest.raises(NoRouteError, match=r"layers \[3, 4\) of 4"):
        plan_route([peer("a", 0, 3)], 4)


def test_no_peers_at_all() -> None:
    with pytest.raises(NoRouteError, match=r"no peer serves layers \[0, 5\) of 5"):
        plan_route([], 5)


def test_spans_that_cover_but_do_not_chain() -> None:
    with pytest.raises(NoRouteError) as info:
        plan_route([peer("a", 0, 3), peer("b", 2, 5)], 5)
    message = str(info.value)
    assert "do not chain" in message
    assert "no peer serves" not in message


def test_peer_beyond_the_last_layer_is_ignored() -> None:
    with pytest.raises(NoRouteError):
        plan_route([peer("too_long", 0, 6)], 5)
    with pytest.raises(NoRouteError):
        plan_route([peer("a", 0, 3), peer("b", 3, 6)], 5)


def test_peer_beyond_the_last_layer_does_not_block_a_valid_route() -> None:
    peers = [peer("a", 0, 3), peer("too_long", 3, 7), peer("b", 3, 5, sessions=1)]
    assert names(plan_route(peers, 5)) == ["a", "b"]


# --- property: plan_route agrees with a breadth-first search over spans ---------------------------------


def bfs_hops(spans: list[tuple[int, int]], num_layers: int) -> int | None:
    """Fewest hops from layer 0 to num_layers using spans with end <= num_layers, or None."""
    hops = {0: 0}
    queue = deque([0])
    while queue:
        layer = queue.popleft()
        for start, end in spans:
            if start == layer and end <= num_layers and end not in hops:
                hops[end] = hops[layer] + 1
                queue.append(end)
    return hops.get(num_layers)


def min_load_among_shortest(peers: list[PeerView], num_layers: int, hops: int) -> float:
    """The smallest summed load of any chain of exactly `hops` peers from 0 to num_layers (brute force)."""
    best = float("inf")

    def walk(layer: int, used: int, load: float) -> None:
        nonlocal best
        if layer == num_layers and used == hops:
            best = min(best, load)
            return
        if used == hops:
            return
        for p in peers:
            if p.start == layer and p.end <= num_layers:
                walk(p.end, used + 1, load + p.sessions / p.max_sessions)

    walk(0, 0, 0.0)
    return best


@st.composite
def swarms(draw: st.DrawFn) -> tuple[list[PeerView], int]:
    num_layers = draw(st.integers(1, 10))
    raw = draw(
        st.lists(
            st.tuples(st.integers(0, num_layers + 1), st.integers(1, num_layers + 2), st.integers(0, 4)),
            max_size=8,
        )
    )
    peers = [peer(f"p{i}", s, e, sessions=load, max_sessions=4) for i, (s, e, load) in enumerate(raw) if s < e]
    return peers, num_layers


@settings(max_examples=400, deadline=None)
@given(swarms())
def test_route_chains_iff_a_chain_exists(case: tuple[list[PeerView], int]) -> None:
    peers, num_layers = case
    expected_hops = bfs_hops([(p.start, p.end) for p in peers], num_layers)
    if expected_hops is None:
        with pytest.raises(NoRouteError):
            plan_route(peers, num_layers)
        return
    route = plan_route(peers, num_layers)
    if all(p.sessions == 0 for p in peers):
        assert len(route) == expected_hops  # equal nodes: every hop costs the same, so the fewest win
    else:  # a busy node may cost more than a hop around it (1.5 ms for 3 sessions against 1 ms a hop)
        assert len(route) >= expected_hops
    assert route[0].start == 0
    assert route[-1].end == num_layers
    for before, after in pairwise(route):
        assert before.end == after.start
    assert all(p in peers for p in route)
    if len(route) == expected_hops:  # (a longer route around busy nodes has less load than any shortest)
        load = sum(p.sessions / p.max_sessions for p in route)
        assert load == pytest.approx(min_load_among_shortest(peers, num_layers, expected_hops))


# ---------------------------------------------------------------- expected time (measured speeds)


def test_faster_replica_wins_over_a_slow_one() -> None:
    slow = PeerView("slow", "s:1", 0, 5, step_ms=40.0)
    fast = PeerView("fast", "f:1", 0, 5, step_ms=10.0)
    assert plan_route([slow, fast], 5) == [fast]


def test_two_fast_hops_beat_one_slow_hop() -> None:
    phone = PeerView("phone", "p:1", 0, 4, step_ms=200.0)
    laptop_a = PeerView("a", "a:1", 0, 2, step_ms=20.0)
    laptop_b = PeerView("b", "b:1", 2, 4, step_ms=20.0)
    assert plan_route([phone, laptop_a, laptop_b], 4) == [laptop_a, laptop_b]


def test_a_far_link_counts() -> None:
    near = PeerView("near", "n:1", 0, 3, step_ms=30.0, latency_ms=1.0)
    far = PeerView("far", "f:1", 0, 3, step_ms=20.0, latency_ms=50.0)
    assert plan_route([near, far], 3) == [near]


def test_busy_replica_is_avoided_when_speeds_are_equal() -> None:
    busy = PeerView("busy", "b:1", 0, 3, sessions=6, max_sessions=8, step_ms=10.0)
    idle = PeerView("idle", "i:1", 0, 3, sessions=1, max_sessions=8, step_ms=10.0)
    assert plan_route([busy, idle], 3) == [idle]


def test_a_replay_stays_on_the_machines_that_computed_each_layer() -> None:
    x86 = PeerView("x86", "x:1", 0, 2, step_ms=10.0, machine="x86_64")
    arm_fast = PeerView("arm", "a:1", 2, 4, step_ms=10.0, machine="aarch64")
    x86_slow = PeerView("x86-b", "b:1", 2, 4, step_ms=80.0, machine="x86_64")
    arm_whole = PeerView("arm-whole", "w:1", 0, 4, step_ms=5.0, machine="aarch64")
    peers = [x86, arm_fast, x86_slow, arm_whole]
    assert plan_route(peers, 4) == [arm_whole]  # no replay: the fastest
    before = layer_machines([x86, PeerView("gone", "g:1", 2, 4, machine="x86_64")])
    assert before == ["x86_64"] * 4
    assert plan_route(peers, 4, before) == [x86, x86_slow]  # the slower x86 replica: same rounding
    mixed = layer_machines([x86, PeerView("gone", "g:1", 2, 4, machine="aarch64")])
    assert plan_route(peers, 4, mixed) == [x86, arm_fast]
    # no replica of the same machine: the fewest layers elsewhere, then speed as always
    assert plan_route([x86, x86_slow, arm_whole], 4, ["aarch64"] * 4) == [arm_whole]
    assert plan_route([x86, x86_slow], 4, ["aarch64"] * 4) == [x86, x86_slow]
    # a machine nobody reported (an older node) constrains nothing
    assert plan_route(peers, 4, ["", "", "", ""]) == [arm_whole]
