"""Per-peer bounds: a token bucket of messages per second and a count of open sessions.

Peers are keyed by their authenticated node id (or, in an open swarm, their address). Both
tables are bounded: the least recently seen peers are forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from swarm.errors import CapacityExceeded

MAX_TRACKED_PEERS = 4096


class PeerRates:
    """At most `rate` messages per second per peer, with bursts up to `burst`."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # peer -> (tokens, at)

    def take(self, peer: str) -> None:
        """Spend one message of `peer`'s allowance, or raise CapacityExceeded."""
        if self.rate <= 0:
            return
        now = self._clock()
        tokens, at = self._buckets.pop(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[peer] = (tokens, now)
            raise CapacityExceeded(f"too many messages from {peer[:24]} (limit {self.rate:g}/s); slow down")
        self._buckets[peer] = (tokens - 1, now)
        while len(self._buckets) > MAX_TRACKED_PEERS:
            self._buckets.popitem(last=False)


class PeerSessions:
    """Open sessions per peer, at most `limit` each (0 = no per-peer limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, peer: str) -> None:
        held = self._open.get(peer, 0)
        if self.limit and held >= self.limit:
            raise CapacityExceeded(f"{peer[:24]} already holds {held} sessions here (limit {self.limit} per peer)")
        self._open[peer] = held + 1

    def release(self, peer: str) -> None:
        held = self._open.get(peer, 0) - 1
        if held > 0:
            self._open[peer] = held
        else:
            self._open.pop(peer, None)

    def held(self, peer: str) -> int:
        return self._open.get(peer, 0)
