"""What the web page's map is told about live sessions: routes as hops, sessions while they run."""

from __future__ import annotations

from swarm.apps.swarm_view import Hop, LiveSessions, route_hops
from swarm.generation import GenerationStats


def test_routes_read_as_hops() -> None:
    route = ["127.0.0.1:7001:0-2", "[::1]:7002:2-5", "local:0-5"]
    assert route_hops(route) == [Hop("127.0.0.1:7001", 0, 2), Hop("[::1]:7002", 2, 5), Hop("local", 0, 5)]
    assert route_hops(["no layers here", ":1-2", "host:a-b", "host:3-"]) == []  # never an error


def test_a_session_is_listed_while_it_runs_with_its_route_as_it_changes() -> None:
    live, stats = LiveSessions(), GenerationStats()
    with live.track("chatcmpl-1", stats):
        [session] = live.describe()
        assert (session["id"], session["route"], session["tokens"]) == ("chatcmpl-1", [], 0)  # not open yet
        stats.route, stats.generated_tokens = ["10.0.0.2:7001:0-5"], 7  # opened, then recovered elsewhere
        [session] = live.describe()
        assert session["route"] == [{"address": "10.0.0.2:7001", "start": 0, "end": 5}] and session["tokens"] == 7
    assert live.describe() == []
