"""A node's place in the swarm: its mDNS announcement, its heartbeat, what it knows of others.

The announcement is refreshed every `interval_s` with the node's current load; that refresh
is the heartbeat other members expire entries by. Leaving withdraws the announcement first,
so nobody routes new sessions here while the node drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import ifaddr

from swarm.auth import Credentials
from swarm.discovery import Announcer, MdnsBrowser, open_zeroconf
from swarm.membership import Event, Membership, PeerRecord, PeerSeen, Tick, apply

log = logging.getLogger("swarm.node")


def local_ipv4_addresses() -> list[str]:
    """This host's IPv4 addresses, loopback only when there is nothing else."""
    found = [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)]
    outside = [a for a in found if not a.startswith("127.")]
    return outside or ["127.0.0.1"]


class Presence:
    def __init__(
        self,
        record: Callable[[], PeerRecord],
        port: int,
        static_peers: Sequence[str] = (),
        interfaces: Sequence[str] = (),
        announce_addresses: Sequence[str] = (),
        interval_s: float = 5.0,
        credentials: Credentials | None = None,
    ) -> None:
        self._record, self._port = record, port
        self._static = list(static_peers)
        self._interfaces = list(interfaces)
        self._addresses = list(announce_addresses) or self._interfaces or local_ipv4_addresses()
        self._interval = interval_s
        self.membership = Membership(ttl_s=3 * interval_s)
        self._zeroconf = open_zeroconf(self._interfaces)
        self._announcer = Announcer(self._zeroconf, self._addresses, port, credentials)
        self._browser = MdnsBrowser(self._zeroconf, self._on_event, credentials=credentials,
                                    on_foreign=self._heard_foreign)  # fmt: skip
        self._heartbeat: asyncio.Task[None] | None = None
        self._seen_ours = False  # whether any other node of this swarm was ever heard
        self._alone_check: asyncio.TimerHandle | None = None

    def _on_event(self, event: Event) -> None:
        self.membership = apply(self.membership, event)
        if isinstance(event, PeerSeen) and event.record.node_id != self._record().node_id:
            self._seen_ours = True

    def _heard_foreign(self) -> None:
        """Another swarm was heard. Ours announces every interval, so if it stays silent for one
        interval more, say so (once): a wrong swarm key otherwise looks like serving to nobody."""
        if not self._seen_ours and self._alone_check is None:
            self._alone_check = asyncio.get_running_loop().call_later(self._interval, self._warn_if_alone)

    def _warn_if_alone(self) -> None:
        if not self._seen_ours:
            log.warning("no node of this swarm seen; %d announcements from other swarms were ignored — "
                        "is the swarm key right?", self._browser.foreign,
                        extra={"node": self._record().node_id})  # fmt: skip

    async def start(self) -> None:
        await self._browser.start()
        await self._announcer.announce(self._record())
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._announcer.announce(self._record())
            except Exception as exc:  # a failed refresh must not stop the heartbeat
                log.warning("mDNS refresh failed: %s", exc)
            self._on_event(Tick(time.monotonic()))

    def known_addresses(self) -> list[str]:
        own = self._record().node_id
        found = [p.address for p in self.membership.peers.values() if p.node_id != own]
        return list(dict.fromkeys(self._static + found))

    async def leave(self) -> None:
        """Stop announcing: peers drop this node and route around it."""
        if self._alone_check is not None:
            self._alone_check.cancel()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        await self._announcer.withdraw()

    async def close(self) -> None:
        await self.leave()
        await self._browser.stop()
        await self._zeroconf.async_close()
