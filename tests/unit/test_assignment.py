"""Assignment: which span of blocks a joining node takes (`coverage`, `choose_span`)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.assignment import (
    MoveAdvice,
    NodeProfile,
    Served,
    advise_move,
    capacity,
    chain_ms,
    choose_span,
    coverage,
    plan_assignment,
)
from tests.helpers import block_edges

ONE_LAYER = [0, 1, 2, 3, 4, 5]  # five one-layer blocks
TWO_LAYER = [0, 2, 4, 5]  # blocks [0,2) [2,4) [4,5)


# ---------------------------------------------------------------- coverage


def test_coverage_counts_each_layer() -> None:
    assert coverage(5, []) == [0, 0, 0, 0, 0]
    assert coverage(5, [(0, 2), (1, 5), (1, 2)]) == [1, 3, 1, 1, 1]


def test_coverage_clips_spans_outside_the_model() -> None:
    assert coverage(4, [(-3, 1), (3, 10), (7, 9), (3, 2)]) == [1, 0, 0, 1]


# ---------------------------------------------------------------- choose_span


def test_empty_swarm_gets_the_whole_model() -> None:
    assert choose_span(ONE_LAYER, []) == (0, 5)
    assert choose_span(TWO_LAYER, []) == (0, 5)


def test_empty_swarm_with_memory_limit_gets_the_first_blocks_that_fit() -> None:
    assert choose_span(ONE_LAYER, [], max_layers=2) == (0, 2)
    assert choose_span(ONE_LAYER, [], max_layers=5) == (0, 5)
    assert choose_span(ONE_LAYER, [], max_layers=100) == (0, 5)
    assert choose_span(TWO_LAYER, [], max_layers=3) == (0, 2)
    assert choose_span(TWO_LAYER, [], max_layers=4) == (0, 4)


def test_uncovered_tail_is_taken_first() -> None:
    assert choose_span(ONE_LAYER, [(0, 2)]) == (2, 5)


def test_uncovered_head_is_taken_first() -> None:
    assert choose_span(ONE_LAYER, [(3, 5), (3, 5)]) == (0, 3)


def test_gap_in_the_middle() -> None:
    assert choose_span(ONE_LAYER, [(0, 2), (3, 5)]) == (2, 3)
    assert choose_span(ONE_LAYER, [(0, 1), (4, 5)]) == (1, 4)


def test_first_of_several_gaps() -> None:
    assert choose_span(ONE_LAYER, [(1, 2), (3, 4)]) == (0, 1)
    assert choose_span(ONE_LAYER, [(0, 1), (2, 3), (4, 5)]) == (1, 2)


def test_fully_covered_swarm_adds_a_replica_where_fewest_serve() -> None:
    assert choose_span(ONE_LAYER, [(0, 5), (0, 2)]) == (2, 5)
    assert choose_span(ONE_LAYER, [(0, 5), (0, 5), (1, 5), (0, 1), (0, 1), (3, 5)]) == (1, 3)
    assert choose_span(ONE_LAYER, [(0, 5), (0, 5)]) == (0, 5)


def test_memory_limit_shortens_the_span() -> None:
    assert choose_span(ONE_LAYER, [(0, 1)], max_layers=2) == (1, 3)
    assert choose_span(ONE_LAYER, [(0, 5), (0, 2)], max_layers=1) == (2, 3)


@pytest.mark.parametrize("max_layers", [0, 1, -5])
def test_memory_limit_never_gives_less_than_one_block(max_layers: int) -> None:
    assert choose_span(ONE_LAYER, [], max_layers=max_layers) == (0, 1)
    assert choose_span(TWO_LAYER, [], max_layers=max_layers) == (0, 2)
    assert choose_span(TWO_LAYER, [(0, 2)], max_layers=max_layers) == (2, 4)


def test_two_layer_blocks_are_never_cut() -> None:
    assert choose_span(TWO_LAYER, [(0, 2)]) == (2, 5)
    assert choose_span(TWO_LAYER, [(0, 4)]) == (4, 5)
    assert choose_span(TWO_LAYER, [(2, 5)]) == (0, 2)
    assert choose_span(TWO_LAYER, [(0, 2), (4, 5)], max_layers=1) == (2, 4)


def test_partly_covered_block_counts_as_uncovered() -> None:
    # someone serves layer 0 only (e.g. a package with other edges): block [0,2) is still missing a layer
    assert choose_span(TWO_LAYER, [(0, 1)]) == (0, 5)
    assert choose_span(TWO_LAYER, [(0, 3)]) == (2, 5)


def test_served_spans_outside_the_model_are_ignored() -> None:
    assert choose_span(ONE_LAYER, [(5, 9), (-2, 0)]) == (0, 5)


# ---------------------------------------------------------------- properties


@st.composite
def swarms(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int]], int | None]:
    edges = draw(block_edges())
    pairs = st.tuples(st.sampled_from(edges), st.sampled_from(edges)).filter(lambda s: s[0] < s[1])
    served = draw(st.lists(pairs, max_size=8))
    max_layers = draw(st.none() | st.integers(0, edges[-1] + 2))
    return edges, served, max_layers


def block_need(edges: list[int], served: list[tuple[int, int]]) -> list[float]:
    """Per block, the least decode capacity of its layers (nodes of unknown speed: 1 ms per layer)."""
    layer_capacity = capacity(edges[-1], [Served(a, b) for a, b in served])
    return [min(layer_capacity[s:e]) for s, e in pairwise(edges)]


@settings(max_examples=500, deadline=None)
@given(swarm=swarms())
def test_span_is_on_block_edges_non_empty_and_least_covered(
    swarm: tuple[list[int], list[tuple[int, int]], int | None],
) -> None:
    edges, served, max_layers = swarm
    start, end = choose_span(edges, served, max_layers)
    assert start in edges and end in edges
    assert 0 <= start < end <= edges[-1]
    need = block_need(edges, served)
    first, last = edges.index(start), edges.index(end) - 1  # block indices inside the span
    assert first == need.index(min(need))  # the first least covered block
    assert all(n == min(need) for n in need[first : last + 1])
    if max_layers is not None and last > first:
        assert end - start <= max_layers
    # maximal: the next block is better covered, or past the end, or would not fit
    if last + 1 < len(need):
        grown = edges[last + 2] - start
        assert need[last + 1] != min(need) or (max_layers is not None and grown > max_layers)


@settings(max_examples=200, deadline=None)
@given(edges=block_edges(), max_layers=st.none() | st.integers(1, 10), joins=st.integers(1, 30))
def test_successive_joins_raise_the_bottleneck(edges: list[int], max_layers: int | None, joins: int) -> None:
    """Nodes joining one after another fill the model front to back, then each relieves the
    scarcest capacity: the swarm's bottleneck never gets worse."""
    served: list[tuple[int, int]] = []
    bottleneck = 0.0
    for _ in range(joins):
        served.append(choose_span(edges, served, max_layers))
        assert min(block_need(edges, served)) >= bottleneck
        bottleneck = min(block_need(edges, served))
    # everything is covered once there are at least as many nodes as blocks
    if joins >= len(edges) - 1:
        assert min(block_need(edges, served)) > 0


# ---------------------------------------------------------------- whole-swarm plans, hand-made swarms

ONE_LAYER_BLOCKS = list(range(23))  # a 22-layer model, one layer per block


def test_a_slow_phone_is_kept_out_of_the_chain() -> None:
    laptops = [NodeProfile("laptop1", 5.0, 22), NodeProfile("laptop2", 5.0, 22)]
    phone = NodeProfile("phone", 40.0, 22)
    plan = plan_assignment(ONE_LAYER_BLOCKS, [phone, *laptops])
    assert plan["laptop1"] == (0, 22)  # the fastest node holds everything it can
    assert chain_ms(ONE_LAYER_BLOCKS, [phone, *laptops], plan) == 22 * 5.0


def test_memory_limits_spread_the_chain_fastest_first() -> None:
    nodes = [NodeProfile("slow", 20.0, 22), NodeProfile("fast", 2.0, 8), NodeProfile("mid", 6.0, 10)]
    plan = plan_assignment(ONE_LAYER_BLOCKS, nodes)
    assert plan == {"fast": (0, 8), "mid": (8, 18), "slow": (18, 22)}
    assert chain_ms(ONE_LAYER_BLOCKS, nodes, plan) == 8 * 2.0 + 10 * 6.0 + 4 * 20.0


def test_computed_plan_beats_the_equal_split_with_a_throttled_node() -> None:
    nodes = [NodeProfile("a", 5.0, 22), NodeProfile("b", 5.0, 22), NodeProfile("phone", 40.0, 22)]
    equal = {"a": (0, 8), "b": (8, 15), "phone": (15, 22)}
    computed = plan_assignment(ONE_LAYER_BLOCKS, nodes)
    assert chain_ms(ONE_LAYER_BLOCKS, nodes, equal) / chain_ms(ONE_LAYER_BLOCKS, nodes, computed) > 3


def test_spare_nodes_replicate_the_scarcest_stage() -> None:
    nodes = [NodeProfile("a", 5.0, 11), NodeProfile("b", 10.0, 11), NodeProfile("c", 10.0, 11)]
    plan = plan_assignment(ONE_LAYER_BLOCKS, nodes)
    assert plan["a"] == (0, 11) and plan["b"] == (11, 22)
    assert plan["c"] == (11, 22)  # the slower stage gets the replica


def test_not_enough_memory_leaves_layers_uncovered() -> None:
    nodes = [NodeProfile("a", 5.0, 5), NodeProfile("b", 5.0, 5)]
    plan = plan_assignment(ONE_LAYER_BLOCKS, nodes)
    assert chain_ms(ONE_LAYER_BLOCKS, nodes, plan) == float("inf")


def test_moves_need_a_clear_and_persistent_gain() -> None:
    advice = MoveAdvice()
    advice, move = advise_move(advice, 100.0, (0, 4), 90.0)  # 10 %: not clear
    assert not move and advice == MoveAdvice()
    for expected in (False, False, True):
        advice, move = advise_move(advice, 100.0, (0, 4), 70.0)
        assert move is expected
    advice, move = advise_move(MoveAdvice((0, 4), 2), 100.0, (4, 8), 70.0)  # another candidate: start over
    assert not move and advice.streak == 1
    advice, move = advise_move(MoveAdvice((0, 4), 2), 100.0, (0, 4), 95.0)  # the gain faded: start over
    assert not move and advice == MoveAdvice()
