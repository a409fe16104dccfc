"""The table of live peers, changed only by pure `apply(state, event)` functions.

Events come from discovery (an announcement seen or withdrawn), from gossip and from
heartbeats; time is an explicit field of each event, so the table can be simulated at any
scale without sockets or clocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from swarm._proto.swarm_pb2 import PROTOCOL_VERSION_CURRENT
from swarm.routing import PeerView

DEFAULT_TTL_S = 30.0  # a peer not heard of for this long is dropped


@dataclass(frozen=True)
class PeerRecord:
    """What a peer says about itself (mDNS TXT record, Info reply, gossip)."""

    node_id: str
    address: str  # host:port
    package_id: str
    start: int
    end: int
    swarm_id: str = ""
    protocol_version: int = PROTOCOL_VERSION_CURRENT
    sessions: int = 0
    max_sessions: int = 1
    free_memory: int = 0  # bytes
    speed: float = 0.0  # measured decode steps per second through its span
    prefill_speed: float = 0.0  # measured prompt tokens per second through its span
    draining: bool = False

    def view(self) -> PeerView:
        return PeerView(self.node_id, self.address, self.start, self.end, self.sessions, self.max_sessions)


@dataclass(frozen=True)
class PeerSeen:
    record: PeerRecord
    at: float  # seconds, any monotonic clock


@dataclass(frozen=True)
class PeerGone:
    node_id: str
    at: float


@dataclass(frozen=True)
class Tick:
    at: float


Event = PeerSeen | PeerGone | Tick


@dataclass(frozen=True)
class Membership:
    peers: dict[str, PeerRecord] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)
    ttl_s: float = DEFAULT_TTL_S

    def live(self, package_id: str | None = None) -> list[PeerRecord]:
        """Peers that take sessions (not draining), optionally of one model, by node id."""
        return sorted(
            (p for p in self.peers.values() if not p.draining and package_id in (None, p.package_id)),
            key=lambda p: p.node_id,
        )


def apply(state: Membership, event: Event) -> Membership:
    if isinstance(event, PeerSeen):
        record = event.record
        if event.at < state.last_seen.get(record.node_id, float("-inf")):
            return state  # an older announcement arriving late changes nothing
        peers = {**state.peers, record.node_id: record}
        return replace(state, peers=peers, last_seen={**state.last_seen, record.node_id: event.at})
    if isinstance(event, PeerGone):
        peers = {k: v for k, v in state.peers.items() if k != event.node_id}
        seen = {k: v for k, v in state.last_seen.items() if k != event.node_id}
        return replace(state, peers=peers, last_seen=seen)
    expired = {k for k, t in state.last_seen.items() if event.at - t > state.ttl_s}
    if not expired:
        return state
    return replace(
        state,
        peers={k: v for k, v in state.peers.items() if k not in expired},
        last_seen={k: v for k, v in state.last_seen.items() if k not in expired},
    )
