"""Which layers a joining node should serve. Pure functions over plain data.

The rule here is simple: cover layers nobody serves first, otherwise add a replica where the
fewest nodes serve; take as many whole blocks of that region as the node's memory allows.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def coverage(num_layers: int, served: Sequence[tuple[int, int]]) -> list[int]:
    """How many nodes serve each layer."""
    counts = [0] * num_layers
    for start, end in served:
        for layer in range(max(start, 0), min(end, num_layers)):
            counts[layer] += 1
    return counts


def choose_span(
    block_edges: Sequence[int], served: Sequence[tuple[int, int]], max_layers: int | None = None
) -> tuple[int, int]:
    """A span `[start, end)` on block edges for a node joining a swarm that serves `served`.

    `block_edges` are the package's block boundaries, from 0 to the number of layers.
    """
    edges = list(block_edges)
    counts = coverage(edges[-1], served)
    blocks = list(itertools.pairwise(edges))
    need = [min(counts[s:e]) for s, e in blocks]  # how well each block is covered
    first = need.index(min(need))
    last = first
    # grow over neighbouring blocks that are as poorly covered, while the memory allows
    while (
        last + 1 < len(blocks)
        and need[last + 1] == need[first]
        and (max_layers is None or blocks[last + 1][1] - blocks[first][0] <= max_layers)
    ):
        last += 1
    return blocks[first][0], blocks[last][1]
