"""What the web page's swarm map draws: `swarm-client status --json`'s snapshot, plus the route of
every live session of this server.

`SwarmView.view()` is the body of `GET /v1/swarm`. The snapshot comes from the same `StatusProbe`
the status command uses (on the serving `AsyncSwarm`, so its refresh also tells the serving client
who left), taken at most once per `MIN_INTERVAL_S` however many pages poll: callers in between
share the last one. The live sessions are the server's own requests in flight (`LiveSessions`),
each with the route its generation runs on now (after any recovery), as `GenerationStats` keeps it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from swarm.apps.status import StatusProbe
from swarm.generation import GenerationStats
from swarm.package import Manifest

MIN_INTERVAL_S = 1.0  # a new snapshot at most this often, however many pages poll
REDISCOVER_S = 10.0  # with mDNS (no --peer): look for new nodes on the network this often


@dataclass(frozen=True)
class Hop:
    address: str  # "local" when the model runs in this process
    start: int
    end: int


def route_hops(route: list[str]) -> list[Hop]:
    """`GenerationStats.route` ("ADDRESS:START-END" per hop) as hops; a hop in another form is
    left out (the map and a reply's stats are a view: they never fail a request)."""
    hops = []
    for hop in route:
        address, _, layers = hop.rpartition(":")
        start, _, end = layers.partition("-")
        if address and start.isdigit() and end.isdigit():
            hops.append(Hop(address, int(start), int(end)))
    return hops


@dataclass(frozen=True)
class _Live:
    id: str  # the request's response id (chatcmpl-... / cmpl-...)
    started: float  # monotonic
    stats: GenerationStats  # filled in by the generation as it runs


class LiveSessions:
    """The generations this server runs now, each with its statistics as they fill in."""

    def __init__(self) -> None:
        self._live: dict[int, _Live] = {}
        self._ids = itertools.count()

    @contextmanager
    def track(self, request_id: str, stats: GenerationStats) -> Iterator[None]:
        key = next(self._ids)
        self._live[key] = _Live(request_id, time.monotonic(), stats)
        try:
            yield
        finally:
            del self._live[key]

    def describe(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [{"id": s.id, "seconds": round(now - s.started, 2), "tokens": s.stats.generated_tokens,
                 "route": [vars(hop) for hop in route_hops(s.stats.route)]}
                for s in self._live.values()]  # fmt: skip


class SwarmView:
    """The swarm map's data: a status snapshot (none when the model runs in this process) and the live sessions."""

    def __init__(self, manifest: Manifest, sessions: LiveSessions, probe: StatusProbe | None) -> None:
        self.manifest, self.sessions, self.probe = manifest, sessions, probe
        self._lock = asyncio.Lock()
        self._last: dict[str, Any] | None = None
        self._taken = self._discovered = -float("inf")  # monotonic

    async def view(self) -> dict[str, Any]:
        return {**await self._status(), "sessions": self.sessions.describe()}

    async def _status(self) -> dict[str, Any]:
        if self.probe is None:
            return self._local()
        async with self._lock:  # one probe at a time; who waited for it takes its result
            now = time.monotonic()
            if self._last is None or now - self._taken >= MIN_INTERVAL_S:
                rediscover = now - self._discovered >= REDISCOVER_S
                snapshot = await self.probe.snapshot(rediscover=rediscover)
                self._last, self._taken = {**snapshot.to_dict(), "local": False}, time.monotonic()
                if rediscover:
                    self._discovered = self._taken
            return self._last

    def _local(self) -> dict[str, Any]:
        """The model runs in this process: no peers, every layer here."""
        layers = self.manifest.num_layers
        return {"taken_at": time.time(), "model": self.manifest.name, "package_id": "", "num_layers": layers,
                "peers": [], "coverage": [], "route": [], "problem": "", "complete": True, "gaps": [],
                "local": True}  # fmt: skip
