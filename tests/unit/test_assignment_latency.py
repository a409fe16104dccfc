"""choose_span on slow links: a joining node whose memory holds more takes a longer span when the
links it takes off a token's route outweigh the compute and the capacity it costs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.assignment import Served, bottleneck_ms, choose_span, route_time

ONE_LAYER = [0, 1, 2, 3, 4, 5]  # five one-layer blocks
# layers [2, 3) are missing between two 1 ms-per-layer nodes
GAP = [Served(0, 2, 2.0), Served(3, 5, 2.0)]


def test_route_time_is_the_fastest_ring_split_into_compute_and_links() -> None:
    assert route_time(ONE_LAYER, [*GAP, Served(2, 3, 1.0)], 5.0) == (5.0, 15.0)  # 3 stages, 3 links
    assert route_time(ONE_LAYER, [Served(0, 5, 5.0)], 5.0) == (5.0, 0.0)  # a lone node: no link
    assert route_time(ONE_LAYER, GAP, 5.0) == (float("inf"), 0.0)
    # 2 stages of 4 + 4 ms and 2 links of 5 (18) beat 1 stage of 20 ms
    assert route_time(ONE_LAYER, [Served(0, 5, 20.0), Served(0, 3, 4.0), Served(3, 5, 4.0)], 5.0) == (8.0, 10.0)
    # ...but at 9 ms one way (8 + 18 = 26 > 20) the lone node wins
    assert route_time(ONE_LAYER, [Served(0, 5, 20.0), Served(0, 3, 4.0), Served(3, 5, 4.0)], 9.0) == (20.0, 0.0)


def test_fast_links_keep_the_scarcest_block() -> None:
    assert choose_span(ONE_LAYER, GAP, max_layers=5) == (2, 3)
    assert choose_span(ONE_LAYER, GAP, max_layers=5, layer_ms=1.0, link_ms=0.0) == (2, 3)
    # 1 ms round trips: the lone node would save 3 links x 0.5 ms, but its 5-layer step makes the
    # swarm's slowest stage 5 ms instead of 2: not worth it
    assert choose_span(ONE_LAYER, GAP, max_layers=5, layer_ms=1.0, link_ms=1.0) == (2, 3)
    assert choose_span(ONE_LAYER, GAP, max_layers=5, layer_ms=1.0, link_ms=2.0) == (2, 3)  # 3 - 3: nothing
    # 3 ms: 4.5 - 3 = 1.5 ms net, under a fifth of the token's 5 + 4.5 ms: not a clear gain
    assert choose_span(ONE_LAYER, GAP, max_layers=5, layer_ms=1.0, link_ms=3.0) == (2, 3)


def test_slow_links_take_the_whole_model_when_memory_holds_it() -> None:
    # 10 ms round trips: serving all 5 layers takes the route from 3 stages (15 ms of links) to one
    # (none), costs no compute (1 ms a layer like the others) and 3 ms at the slowest stage: 12 of 20
    assert bottleneck_ms(5, [*GAP, Served(2, 3, 1.0)]) == 2.0
    assert bottleneck_ms(5, [*GAP, Served(0, 5, 5.0)]) == 5.0
    assert choose_span(ONE_LAYER, GAP, max_layers=5, layer_ms=1.0, link_ms=10.0) == (0, 5)
    assert choose_span(ONE_LAYER, GAP, max_layers=5, layer_ms=1.0, link_ms=4.0) == (0, 5)  # 6 - 3 > 11 / 5


def test_slow_links_take_as_long_a_span_as_memory_allows() -> None:
    # 3 layers: [0, 3) or [2, 5) both save one link (6 ms) for 1 ms at the slowest stage (> 23 / 5);
    # the first wins
    assert choose_span(ONE_LAYER, GAP, max_layers=3, layer_ms=1.0, link_ms=12.0) == (0, 3)
    # 2 layers: [1, 3) and [2, 4) meet nobody's edges, so no route runs through them
    assert choose_span(ONE_LAYER, GAP, max_layers=2, layer_ms=1.0, link_ms=10.0) == (2, 3)


def test_a_slow_node_needs_slower_links_to_take_more() -> None:
    # 3 ms a layer: the whole model adds 8 ms of compute and 12 ms at the slowest stage (20 ms)
    assert choose_span(ONE_LAYER, GAP, max_layers=5, layer_ms=3.0, link_ms=10.0) == (2, 3)  # saves 15
    assert choose_span(ONE_LAYER, GAP, max_layers=5, layer_ms=3.0, link_ms=40.0) == (0, 5)  # saves 60


def test_a_replica_grows_over_the_stage_after_it_on_slow_links() -> None:
    # covered by stages of 2, 4 and 1 ms; the scarcest are [2, 4): a new 1 ms-a-layer node relieves it
    served = [Served(0, 2, 2.0), Served(2, 4, 4.0), Served(4, 5, 1.0)]
    assert choose_span(ONE_LAYER, served, max_layers=5) == (2, 4)
    # on 0.5 ms links (loopback's gRPC round trip) serving everything saves 0.75 ms of links and
    # costs 0.22 at the slowest stage (2 -> 2.22 ms): under a fifth of the token's 5.75 ms
    assert choose_span(ONE_LAYER, served, max_layers=5, layer_ms=1.0, link_ms=0.5) == (2, 4)
    # at 20 ms round trips the whole model on the newcomer: 3 stages (30 ms of links) become one
    assert choose_span(ONE_LAYER, served, max_layers=5, layer_ms=1.0, link_ms=20.0) == (0, 5)
    # memory for 3 layers: [2, 5) takes the last stage off the route (2 stages: 20 ms, saving 10 of 35)
    assert choose_span(ONE_LAYER, served, max_layers=3, layer_ms=1.0, link_ms=20.0) == (2, 5)


def test_uncovered_layers_elsewhere_keep_the_coverage_rule() -> None:
    # layers 1 and 3 are both missing: no span this node can take gives a route, so links cannot decide
    served = [Served(0, 1, 1.0), Served(2, 3, 1.0), Served(4, 5, 1.0)]
    assert choose_span(ONE_LAYER, served, max_layers=2, layer_ms=1.0, link_ms=50.0) == (1, 2)


@st.composite
def swarms(draw: st.DrawFn) -> tuple[list[int], list[Served]]:
    edges = sorted(set(draw(st.lists(st.integers(1, 7), max_size=5))) | {0, 8})
    served = []
    for _ in range(draw(st.integers(0, 5))):
        a, b = sorted(draw(st.lists(st.sampled_from(edges), min_size=2, max_size=2, unique=True)))
        served.append(Served(a, b, draw(st.sampled_from([0.0, 1.0, 3.0, 10.0]))))
    return edges, served


@settings(max_examples=200, deadline=None)
@given(swarms(), st.integers(1, 8), st.sampled_from([0.5, 2.0]), st.sampled_from([0.0, 1.0, 10.0, 60.0]))
def test_a_longer_span_holds_the_scarcest_and_fits_memory(
    case: tuple[list[int], list[Served]], max_layers: int, layer_ms: float, link_ms: float
) -> None:
    edges, served = case
    scarcest = choose_span(edges, served, max_layers)
    start, end = choose_span(edges, served, max_layers, layer_ms=layer_ms, link_ms=link_ms)
    assert start in edges and end in edges
    assert start <= scarcest[0] and scarcest[1] <= end  # still relieves the blocks it came for
    assert (start, end) == scarcest or end - start <= max_layers
    if link_ms == 0.0:
        assert (start, end) == scarcest
