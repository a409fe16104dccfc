"""The per-token time model (`swarm/latency.py`): the links one token crosses on each return path."""

from __future__ import annotations

import pytest

from swarm.latency import link_wait_ms, links_crossed, token_time_ms


@pytest.mark.parametrize(
    ("path", "crossed"),
    [("ring", [0, 0, 2, 3, 4]), ("stages", [0, 0, 2, 4, 6]), ("client", [0, 2, 4, 6, 8])],
)
def test_links_one_token_crosses(path: str, crossed: list[int]) -> None:
    # ring: N links (none for a lone node); back through the stages: 2(N-1); via the client: 2N
    assert [links_crossed(n, path) for n in range(5)] == crossed  # type: ignore[arg-type]


def test_each_path_waits_for_its_own_links() -> None:
    into = [1.0, 2.0, 4.0]  # one-way latency into stages 0, 1, 2
    assert link_wait_ms(into, "ring") == 7.0  # 0 -> 1 (2), 1 -> 2 (4), 2 -> 0 (1)
    assert link_wait_ms(into, "stages") == 12.0  # 0 -> 1 -> 2 and back: 2 x (2 + 4)
    assert link_wait_ms(into, "client") == 14.0  # from the client and back to it: 2 x (1 + 2 + 4)
    assert link_wait_ms([5.0], "ring") == 0.0  # a lone node feeds its own token back
    assert link_wait_ms([5.0], "stages") == 0.0
    assert link_wait_ms([5.0], "client") == 10.0
    assert link_wait_ms([], "ring") == 0.0


def test_alike_links_cost_n_half_round_trips_on_a_ring() -> None:
    rtt = 10.0
    for n in range(2, 6):
        assert link_wait_ms([rtt / 2] * n, "ring") == n * rtt / 2
        assert link_wait_ms([rtt / 2] * n, "stages") == (n - 1) * rtt


def test_token_time_is_compute_plus_links() -> None:
    assert token_time_ms([3.0, 4.0, 5.0], [1.0, 2.0, 4.0]) == 12.0 + 7.0
    assert token_time_ms([3.0, 4.0, 5.0], [1.0, 2.0, 4.0], "stages") == 12.0 + 12.0
    assert token_time_ms([9.0], [50.0]) == 9.0
    assert token_time_ms([-1.0, 2.0], [-3.0, 1.0]) == 2.0 + 1.0  # unknown (negative) counts as nothing


def test_mismatched_lengths_and_unknown_paths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 stage times for 1 links"):
        token_time_ms([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="unknown return path 'carrier pigeon'"):
        link_wait_ms([1.0, 2.0], "carrier pigeon")  # type: ignore[arg-type]
