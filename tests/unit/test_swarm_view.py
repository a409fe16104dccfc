"""What the web page's map is told about live sessions: routes as hops, sessions while they run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from swarm.apps import swarm_view
from swarm.apps.status import StatusSnapshot
from swarm.apps.swarm_view import Hop, LiveSessions, SwarmView, route_hops
from swarm.generation import GenerationStats
from swarm.package import ModelPackage


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


class CountingProbe:
    """A status probe that counts its snapshots (and whether each looked for new nodes by mDNS)."""

    def __init__(self) -> None:
        self.rediscovered: list[bool] = []

    async def snapshot(self, rediscover: bool = True) -> StatusSnapshot:
        self.rediscovered.append(rediscover)
        await asyncio.sleep(0.01)  # the peers answer: meanwhile other pages ask too
        return StatusSnapshot(time.time(), "m", "p", 5, (), (), ())


def test_pages_polling_together_share_one_snapshot(stories_package: ModelPackage,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    probe = CountingProbe()
    view = SwarmView(stories_package.manifest, LiveSessions(), probe)  # type: ignore[arg-type]

    async def polls(count: int) -> list[dict[str, Any]]:
        return await asyncio.gather(*(view.view() for _ in range(count)))

    views = asyncio.run(polls(5))
    assert probe.rediscovered == [True] and all(v == views[0] for v in views)  # one probe for five pages
    assert views[0]["num_layers"] == 5 and views[0]["sessions"] == [] and not views[0]["local"]
    monkeypatch.setattr(swarm_view, "MIN_INTERVAL_S", 0.0)
    asyncio.run(polls(1))
    assert probe.rediscovered == [True, False]  # a new snapshot, without waiting for mDNS again


def test_a_local_model_is_one_process_with_every_layer(stories_package: ModelPackage) -> None:
    view = asyncio.run(SwarmView(stories_package.manifest, LiveSessions(), None).view())
    assert view["local"] and view["complete"] and view["num_layers"] == 5 and view["peers"] == []
