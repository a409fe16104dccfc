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


# --- the model against a measured table ---------------------------------------------------------
#
# Measured here (a loaded 2-core machine) by tests/integration/test_latency_model.py
# (`pytest -s` prints it): 3 stories260K nodes, spans [0, 2) [2, 3) [3, 5), each behind a
# bench/links.py relay; round trip as set, as a ping through the relay sees it, and the median ms
# between 40 decoded tokens. The swarm then returned each token back through the stages.
# Replace with docs/BENCHMARKS.md's rows once the table is run.
STEP_MS = [0.060, 0.042, 0.078]  # each node's own measured step through its span
TABLE = [(0.0, 0.06, 1.96), (10.0, 11.10, 27.83), (30.0, 31.27, 68.91)]
HOP_MS = 1.0  # swarm.routing.HOP_MS: a stage's messages in and out


def test_the_model_predicts_the_measured_table() -> None:
    for _, ping_ms, measured in TABLE:
        predicted = token_time_ms([s + HOP_MS for s in STEP_MS], [ping_ms / 2] * 3, "stages")
        assert abs(measured - predicted) <= 2.0 + 0.2 * predicted, (ping_ms, measured, predicted)
    # what 20 ms more round trip added: 4 one-way links of 10 ms, not the ring's 3 nor the client's 6
    (_, fast_ping, fast), (_, slow_ping, slow) = TABLE[1], TABLE[2]
    per_link = (slow_ping - fast_ping) / 2
    added = {path: links_crossed(3, path) * per_link for path in ("ring", "stages", "client")}
    assert min(added, key=lambda path: abs(slow - fast - added[path])) == "stages"
    assert abs(slow - fast - added["stages"]) <= 5.0, (slow - fast, added)
