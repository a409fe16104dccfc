"""split_spans: the demo's even cut of [0, L) on block edges, one span per node."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.apps.demo import split_spans
from tests.helpers import block_edges


def check_spans(spans: list[tuple[int, int]], edges: Sequence[int], nodes: int) -> None:
    assert spans, "at least one span"
    assert spans[0][0] == 0
    assert spans[-1][1] == edges[-1]
    for (_, end), (start, _) in pairwise(spans):
        assert end == start, f"spans {spans} are not contiguous"
    for start, end in spans:
        assert start < end
        assert start in edges and end in edges, f"{spans} cuts off a block edge {list(edges)}"
    assert len(spans) <= len(edges) - 1, "more spans than blocks"
    assert len(spans) <= max(nodes, 1), "more spans than nodes"


ONE_LAYER_BLOCKS = [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        (1, [(0, 5)]),
        (2, [(0, 2), (2, 5)]),
        (3, [(0, 2), (2, 3), (3, 5)]),
        (4, [(0, 1), (1, 2), (2, 4), (4, 5)]),
        (5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),
        (9, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),
    ],
)
def test_one_layer_blocks(nodes: int, expected: list[tuple[int, int]]) -> None:
    spans = split_spans(ONE_LAYER_BLOCKS, nodes)
    assert spans == expected
    check_spans(spans, ONE_LAYER_BLOCKS, nodes)


@pytest.mark.parametrize("nodes", [1, 2, 3, 4, 9])
def test_one_layer_blocks_give_min_of_nodes_and_blocks(nodes: int) -> None:
    assert len(split_spans(ONE_LAYER_BLOCKS, nodes)) == min(nodes, 5)


@pytest.mark.parametrize("nodes", [0, -3])
def test_no_nodes_still_gives_one_span(nodes: int) -> None:
    assert split_spans(ONE_LAYER_BLOCKS, nodes) == [(0, 5)]


TWO_LAYER_BLOCKS = [0, 2, 4, 5]  # blocks [0, 2), [2, 4), [4, 5)


@pytest.mark.parametrize("nodes", [1, 2, 3, 4, 9])
def test_two_layer_blocks_cut_only_on_edges(nodes: int) -> None:
    check_spans(split_spans(TWO_LAYER_BLOCKS, nodes), TWO_LAYER_BLOCKS, nodes)


def test_two_layer_blocks_examples() -> None:
    assert split_spans(TWO_LAYER_BLOCKS, 1) == [(0, 5)]
    assert split_spans(TWO_LAYER_BLOCKS, 2) == [(0, 2), (2, 5)]


@pytest.mark.parametrize("nodes", [3, 4, 9])
def test_as_many_spans_as_nodes_when_blocks_allow(nodes: int) -> None:
    assert split_spans(TWO_LAYER_BLOCKS, nodes) == [(0, 2), (2, 4), (4, 5)]


def test_single_block() -> None:
    assert split_spans([0, 8], 4) == [(0, 8)]


@settings(max_examples=300, deadline=None)
@given(block_edges(), st.integers(-1, 15))
def test_spans_are_contiguous_on_edges_and_bounded(edges: list[int], nodes: int) -> None:
    check_spans(split_spans(edges, nodes), edges, nodes)
