"""Finding peers on the local network with mDNS (zeroconf), and the static list beside it.

Each node announces `<node id>._swarm-llm._tcp.local.` with a TXT record describing itself;
browsers turn announcements into membership events (`PeerSeen`, `PeerGone`). TXT records
come from the network, so every field is parsed defensively: a bad record is ignored.

In a keyed swarm every record is signed: `pk` (the node's Ed25519 public key, whose hash is
the node id), `ts` (when it was made), `sg` (the signature over the other fields and the
port) and `mc` (an HMAC under the swarm's membership key). Browsers ignore records that are
unsigned, stale, from another swarm, or whose id is not their key's.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import socket
import time
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from zeroconf import IPVersion, ServiceInfo, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from swarm.auth import CLOCK_WINDOW_S, Credentials
from swarm.errors import NoRouteError
from swarm.keys import node_id_of
from swarm.membership import Event, Membership, PeerGone, PeerRecord, PeerSeen, apply
from swarm.routing import plan_route

SERVICE_TYPE = "_swarm-llm._tcp.local."
MAX_NODE_ID = 63  # the longest DNS label: the node id is the service instance name
RESOLVE_TIMEOUT_MS = 3000
MAX_FOREIGN = 1024  # nodes of other swarms counted, at most
log = logging.getLogger("swarm.discovery")


def open_zeroconf(interfaces: Sequence[str] | None = None) -> AsyncZeroconf:
    """A zeroconf instance on the given interface addresses (default: every IPv4 interface)."""
    if interfaces:
        return AsyncZeroconf(interfaces=list(interfaces), ip_version=IPVersion.V4Only)
    return AsyncZeroconf(ip_version=IPVersion.V4Only)


def service_name(node_id: str) -> str:
    return f"{node_id}.{SERVICE_TYPE}"


def txt_record(record: PeerRecord) -> dict[str, str]:
    return {
        "id": record.node_id,
        "sw": record.swarm_id,
        "v": str(record.protocol_version),
        "model": record.package_id,
        "span": f"{record.start}:{record.end}",
        "speed": f"{record.speed:.3g}",
        "pf": f"{record.prefill_speed:.3g}",
        "mem": str(record.free_memory),
        "load": f"{record.sessions}/{record.max_sessions}",
        "drain": "1" if record.draining else "0",
    }


def record_from_txt(properties: dict[bytes, bytes | None], address: str) -> PeerRecord | None:
    """Parse a TXT record; None when anything is missing or malformed."""
    txt = text_properties(properties)
    try:
        start, end = (int(x) for x in txt["span"].split(":"))
        sessions, max_sessions = (int(x) for x in txt["load"].split("/"))
        record = PeerRecord(
            node_id=txt["id"], address=address, package_id=txt["model"], start=start, end=end,
            swarm_id=txt.get("sw", ""), protocol_version=int(txt["v"]), sessions=sessions,
            max_sessions=max_sessions, free_memory=int(txt.get("mem", "0")), speed=float(txt.get("speed", "0")),
            prefill_speed=float(txt.get("pf", "0")),
            draining=txt.get("drain") == "1",
        )  # fmt: skip
    except (KeyError, ValueError):
        return None
    valid = (
        0 <= start < end <= 100_000
        and 0 < len(record.node_id) <= MAX_NODE_ID
        and len(record.package_id) == 64
        and 0 <= sessions <= max_sessions
        and record.free_memory >= 0
        and all(math.isfinite(s) and s >= 0 for s in (record.speed, record.prefill_speed))
    )
    return record if valid else None


_SIGNATURE_FIELDS = ("sg", "mc")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signed_bytes(txt: dict[str, str], port: int) -> bytes:
    fields = "\n".join(f"{k}={v}" for k, v in sorted(txt.items()) if k not in _SIGNATURE_FIELDS)
    return f"swarm/record/1\0{port}\0{fields}".encode()


def sign_txt(txt: dict[str, str], port: int, credentials: Credentials, now: float | None = None) -> dict[str, str]:
    """`txt` with the fields that make it verifiable by members of the swarm."""
    txt = {**txt, "pk": _b64(credentials.identity.public_bytes), "ts": str(int(time.time() if now is None else now))}
    message = _signed_bytes(txt, port)
    signature = credentials.identity.sign(message)
    return {**txt, "sg": _b64(signature), "mc": _b64(credentials.key.prove(message + signature))}


def txt_is_ours(txt: dict[str, str], port: int, credentials: Credentials | None, now: float | None = None) -> bool:
    """Whether a record belongs to our swarm: in an open swarm, an unkeyed record; in a keyed
    one, signed by the node it names, tagged with our membership key, and fresh."""
    if credentials is None:
        return not txt.get("sw") and "sg" not in txt
    try:
        public, signature, tag = _unb64(txt["pk"]), _unb64(txt["sg"]), _unb64(txt["mc"])
        stamp = int(txt["ts"])
        message = _signed_bytes(txt, port)
        if txt.get("sw") != credentials.swarm_id or not credentials.key.check(message + signature, tag):
            return False
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (KeyError, ValueError, InvalidSignature):
        return False
    now = time.time() if now is None else now
    return txt.get("id") == node_id_of(public) and abs(now - stamp) <= CLOCK_WINDOW_S


class Announcer:
    """A node's own announcement: register, refresh (the heartbeat), withdraw."""

    def __init__(self, zeroconf: AsyncZeroconf, addresses: Sequence[str], port: int,
                 credentials: Credentials | None = None) -> None:  # fmt: skip
        self._zeroconf, self._addresses, self._port = zeroconf, list(addresses), port
        self._credentials = credentials
        self._info: ServiceInfo | None = None
        self._beat = 0

    def _service(self, record: PeerRecord) -> ServiceInfo:
        txt = {**txt_record(record), "beat": str(self._beat)}
        if self._credentials is not None:
            txt = sign_txt(txt, self._port, self._credentials)
        return ServiceInfo(
            SERVICE_TYPE,
            service_name(record.node_id),
            addresses=[socket.inet_aton(a) for a in self._addresses],
            port=self._port,
            properties=txt,
            server=f"{record.node_id}.local.",
        )

    async def announce(self, record: PeerRecord) -> None:
        """Publish `record`; each call is a heartbeat (the `beat` field changes every time)."""
        self._beat += 1
        info = self._service(record)
        if self._info is None:
            broadcast = await self._zeroconf.async_register_service(info, allow_name_change=False)
        else:
            broadcast = await self._zeroconf.async_update_service(info)
        self._info = info
        await broadcast  # zeroconf hands back the task that sends the packets

    async def withdraw(self) -> None:
        if self._info is not None:
            await (await self._zeroconf.async_unregister_service(self._info))
            self._info = None


class MdnsBrowser:
    """Turns mDNS announcements into membership events for `on_event`; `on_foreign` hears of
    each announcement ignored as not of our swarm (signed for another key, or not signed)."""

    def __init__(self, zeroconf: AsyncZeroconf, on_event: Callable[[Event], None],
                 clock: Callable[[], float] = time.monotonic, credentials: Credentials | None = None,
                 on_foreign: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self._zeroconf, self._on_event, self._clock = zeroconf, on_event, clock
        self._credentials = credentials
        self._on_foreign = on_foreign
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._foreign: set[str] = set()  # names of the nodes of other swarms heard (bounded)

    @property
    def foreign(self) -> int:
        """How many nodes not of our swarm were heard announcing."""
        return len(self._foreign)

    async def start(self) -> None:
        self._browser = AsyncServiceBrowser(self._zeroconf.zeroconf, [SERVICE_TYPE], handlers=[self._changed])

    def _changed(self, zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            self._on_event(PeerGone(name.removesuffix("." + SERVICE_TYPE), self._clock()))
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._tasks.add(task)  # keep a reference until it finishes
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MS):
            return
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses or not info.port:
            return
        record = record_from_txt(info.properties, f"{addresses[0]}:{info.port}")
        if record is None:
            log.debug("ignoring malformed announcement %s", name)
            return
        if not txt_is_ours(text_properties(info.properties), info.port, self._credentials):
            log.debug("ignoring announcement %s: not signed for this swarm", name)
            if len(self._foreign) < MAX_FOREIGN:
                self._foreign.add(name)
            self._on_foreign()
            return
        self._on_event(PeerSeen(record, self._clock()))

    async def stop(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def discover(interfaces: Sequence[str], timeout_s: float, model_id: str | None = None,
                   credentials: Credentials | None = None) -> list[str]:  # fmt: skip
    """Addresses of swarm nodes announced on the local network (browsing on `interfaces`; () = every
    IPv4 one), once the live ones cover every layer of one model (of `model_id`, a package id or
    prefix, when given) or `timeout_s` passes. Only records signed for our swarm count."""
    state = Membership()

    def seen(event: Event) -> None:
        nonlocal state
        state = apply(state, event)

    zeroconf = open_zeroconf(interfaces)
    browser = MdnsBrowser(zeroconf, seen, credentials=credentials)
    try:
        await browser.start()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline and not _complete(state.live(), model_id):
            await asyncio.sleep(0.1)
    finally:
        await browser.stop()
        await zeroconf.async_close()
    return [r.address for r in state.live()]


def _complete(records: Sequence[PeerRecord], model_id: str | None) -> bool:
    """Whether the records of some model (of `model_id`, when given) chain through all its layers."""
    by_model: dict[str, list[PeerRecord]] = {}
    for r in records:
        if model_id is None or r.package_id.startswith(model_id):
            by_model.setdefault(r.package_id, []).append(r)
    for group in by_model.values():
        try:
            plan_route([r.view() for r in group], max(r.end for r in group))
        except NoRouteError:
            continue
        return True
    return False


def text_properties(properties: dict[bytes, bytes | None]) -> dict[str, str]:
    """A TXT record as text; empty (so every lookup fails) when it is not UTF-8."""
    try:
        return {k.decode(): (v or b"").decode() for k, v in properties.items()}
    except UnicodeDecodeError:
        return {}
