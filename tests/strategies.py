"""Hypothesis strategies shared by the unit tests."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def block_edges(draw: st.DrawFn) -> list[int]:
    """Block boundaries of a model: 0, then 1-12 blocks of 1-4 layers each."""
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=12))
    edges = [0]
    for size in sizes:
        edges.append(edges[-1] + size)
    return edges
