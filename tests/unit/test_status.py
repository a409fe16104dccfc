"""The status view's pure parts: coverage with gaps, the text table, the JSON form."""

from __future__ import annotations

import json
from dataclasses import replace

from swarm.apps.status import UNREACHABLE, UP, CoverageRun, PeerStatus, RouteHop, StatusSnapshot, coverage, render

NOW = 1_700_000_000.0


def peer(node_id: str, start: int, end: int, state: str = UP) -> PeerStatus:
    return PeerStatus(f"10.0.0.{start}:7000", state, node_id=node_id, model="tiny", package_id="ab" * 32,
                      start=start, end=end, steps_per_s=100.0, prefill_tokens_per_s=2000.0, free_memory=2**30,
                      sessions=1, max_sessions=8, rtt_ms=1.5, last_seen=NOW)  # fmt: skip


def test_coverage_marks_replicas_and_gaps() -> None:
    peers = [peer("a", 0, 2), peer("b", 2, 4), peer("c", 2, 3), peer("d", 4, 6, UNREACHABLE)]
    assert coverage(peers, 6) == (
        CoverageRun(0, 2, ("a",)),
        CoverageRun(2, 3, ("b", "c")),
        CoverageRun(3, 4, ("b",)),
        CoverageRun(4, 6, ()),  # only an unreachable peer serves these
    )
    assert coverage([], 3) == (CoverageRun(0, 3, ()),)


def test_render_shows_the_gap_and_why_there_is_no_route() -> None:
    peers = (peer("a", 0, 2), PeerStatus("10.0.0.9:7000", UNREACHABLE, last_seen=NOW - 12))
    snapshot = StatusSnapshot(NOW, "tiny", "ab" * 32, 4, peers, coverage(peers, 4), (), "no peer serves layers [2, 4)")
    text = render(snapshot)
    assert "model tiny (abababababab), 4 layers; 1 of 2 peers up" in text
    assert "layers [2, 4): MISSING" in text and "route: none: no peer serves layers [2, 4)" in text
    row = next(line for line in text.splitlines() if "10.0.0.9" in line)
    assert "12s ago" in row and row.endswith("unreachable")
    data = json.loads(json.dumps(snapshot.to_dict()))
    assert data["complete"] is False and data["gaps"] == [[2, 4]] and data["peers"][1]["state"] == "unreachable"


def test_render_a_complete_swarm() -> None:
    peers = (peer("a", 0, 2), peer("b", 2, 4))
    route = (RouteHop("a", "10.0.0.0:7000", 0, 2), RouteHop("b", "10.0.0.2:7000", 2, 4))
    snapshot = StatusSnapshot(NOW, "tiny", "ab" * 32, 4, peers, coverage(peers, 4), route)
    text = render(snapshot)
    assert "MISSING" not in text
    assert "route: 10.0.0.0:7000 layers [0, 2) -> 10.0.0.2:7000 layers [2, 4)" in text
    assert "1.0 GiB" in text and "1/8" in text and "now" in text
    assert snapshot.to_dict()["complete"] is True


def test_a_node_at_two_addresses_is_one_row_and_an_address_that_never_answered_has_no_last_seen() -> None:
    both = replace(peer("a", 0, 2), addresses=("10.0.0.0:7000", "192.0.2.2:7000"))
    never = PeerStatus("10.0.0.9:7000", UNREACHABLE, error="connection refused")
    peers = (both, peer("b", 2, 4), never)
    text = render(StatusSnapshot(NOW, "tiny", "ab" * 32, 4, peers, coverage(peers, 4), ()))
    assert "2 of 3 peers up" in text and "layers [0, 2): a\n" in text + "\n"  # not its own replica
    row = next(line for line in text.splitlines() if line.startswith("a "))
    assert "10.0.0.0:7000 (+1)" in row
    row = next(line for line in text.splitlines() if "10.0.0.9" in line)
    assert row.split() == ["?", "10.0.0.9:7000", *["-"] * 7, "unreachable"]  # LAST SEEN too: not "never"
