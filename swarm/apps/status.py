"""`swarm-client status`: the peers of a swarm, how they cover the model's layers, and the
route a new session would take.

`StatusProbe` asks the swarm (through an `AsyncSwarm`, so discovery, gossip, authentication and
route planning are the client's own); the rest is pure functions over the `StatusSnapshot` it
returns: coverage, the text table, and the dict behind `--json`.

Every call to a peer has a deadline (`ClientConfig.connect_timeout_s`), so a dead or stalled
node shows up as unreachable instead of hanging the command.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TextIO

import grpc

from swarm._proto import swarm_pb2 as pb
from swarm.client import AsyncSwarm
from swarm.config import ClientConfig
from swarm.errors import NoRouteError, SwarmError
from swarm.transport import unary

UP, DRAINING, UNREACHABLE, OTHER_MODEL = "up", "draining", "unreachable", "other model"
CLEAR_SCREEN = "\x1b[H\x1b[2J"


@dataclass(frozen=True)
class PeerStatus:
    """One node as the status command last saw it: one per node id, however many addresses reach it."""

    address: str  # where it answered (the first of `addresses`), or the address that never answered
    # UP; DRAINING (finishing its sessions, taking no new ones: leaving, or moving to another span);
    # UNREACHABLE; or OTHER_MODEL (it serves another model than the one shown)
    state: str
    # when UNREACHABLE, the fields below are what it told us last time ("" and 0 if it never answered)
    node_id: str = ""
    model: str = ""
    package_id: str = ""
    start: int = 0  # serves layers [start, end)
    end: int = 0
    steps_per_s: float = 0.0  # its measured decode steps per second through its span
    prefill_tokens_per_s: float = 0.0  # its measured prompt tokens per second through its span
    free_memory: int = 0  # bytes of its budget not taken by weights and KV caches
    sessions: int = 0  # live sessions now
    max_sessions: int = 0
    rtt_ms: float = 0.0  # round trip of its Info call
    last_seen: float | None = None  # wall-clock time (s) of its latest answer; None = not to this command
    error: str = ""  # why it did not answer, when it did not
    addresses: tuple[str, ...] = ()  # every address it answered at (a node may be reachable at several)


@dataclass(frozen=True)
class CoverageRun:
    """Layers [start, end) served by the same nodes; no nodes = a gap."""

    start: int
    end: int
    node_ids: tuple[str, ...]


@dataclass(frozen=True)
class RouteHop:
    node_id: str
    address: str
    start: int
    end: int


@dataclass(frozen=True)
class StatusSnapshot:
    taken_at: float  # wall-clock time (s)
    model: str
    package_id: str
    num_layers: int  # 0 when no peer answered
    peers: tuple[PeerStatus, ...]
    coverage: tuple[CoverageRun, ...]
    route: tuple[RouteHop, ...]  # () when a new session could not start
    problem: str = ""  # why there is no route; "" when there is one

    @property
    def gaps(self) -> list[CoverageRun]:
        return [run for run in self.coverage if not run.node_ids]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["complete"] = bool(self.route)
        data["gaps"] = [[run.start, run.end] for run in self.gaps]
        return data


def coverage(peers: Sequence[PeerStatus], num_layers: int) -> tuple[CoverageRun, ...]:
    """For each stretch of layers, the live peers serving it (draining ones take no new sessions:
    they do not count); stretches nobody serves are gaps."""
    servers: list[tuple[str, ...]] = []
    for layer in range(num_layers):
        servers.append(tuple(p.node_id for p in peers if p.state == UP and p.start <= layer < p.end))
    runs: list[CoverageRun] = []
    for layer, nodes in enumerate(servers):
        if runs and runs[-1].node_ids == nodes:
            runs[-1] = CoverageRun(runs[-1].start, layer + 1, nodes)
        else:
            runs.append(CoverageRun(layer, layer + 1, nodes))
    return tuple(runs)


class StatusProbe:
    """Takes snapshots of one swarm; remembers every node it met (by node id), what it served, at
    which addresses and when it last answered, so a node that went away stays listed (as
    unreachable, with its last span and "last seen") while `--watch` runs."""

    def __init__(self, swarm: AsyncSwarm) -> None:
        self.swarm = swarm
        self._seen: dict[str, PeerStatus] = {}  # node id -> its latest answer
        self._node_at: dict[str, str] = {}  # address -> the node id that answered there last

    async def snapshot(self, rediscover: bool = True) -> StatusSnapshot:
        """`rediscover=False`: no mDNS wait, only the peers already known (and theirs) are asked."""
        problem = ""
        try:
            await self.swarm.refresh(rediscover)
        except SwarmError as exc:
            problem = str(exc)
        # every address the client learned (given, discovered, gossiped) and every one met before
        addresses = list(dict.fromkeys([*self.swarm.config.peers, *self.swarm.probe.known, *self._node_at]))
        answers = await asyncio.gather(*(self._info(a) for a in addresses))
        now = time.time()
        infos = {a: answer for a, answer in zip(addresses, answers, strict=True) if not isinstance(answer, str)}
        errors = {a: answer for a, answer in zip(addresses, answers, strict=True) if isinstance(answer, str)}
        package_id = self.swarm.package_id or next((i.package_id for i, _, _ in infos.values()), "")
        peers = self._rows(infos, errors, package_id, now)
        peers.sort(key=lambda p: (p.state != UP, p.start, p.end, p.address))
        route, route_problem = self._route() if not problem else ((), problem)
        model, num_layers = self._model(package_id, infos)
        return StatusSnapshot(now, model, package_id, num_layers, tuple(peers), coverage(peers, num_layers),
                              route, route_problem)  # fmt: skip

    async def _info(self, address: str) -> tuple[pb.NodeInfo, float, bool] | str:
        """The peer's Info, the round trip in ms and whether it drains, or why it did not answer."""
        try:
            # to whoever answers there: a node that restarted with a new identity is shown as it is now
            answer = await self.swarm.probe.identify(address)
        except SwarmError as exc:
            return str(exc)
        return answer.info, answer.rtt_ms, await self._draining(address, answer.info.node_id)

    async def _draining(self, address: str, node_id: str) -> bool:
        """Whether the node says it drains (its Health); a node that answered Info but not this is
        shown as it answered Info, as up."""
        stub = self.swarm.channels.stub(address)
        try:
            reply = await unary(stub.Health, "Health", pb.HealthRequest(), self.swarm.credentials,
                                self.swarm.config.connect_timeout_s, node_id)  # fmt: skip
        except (grpc.aio.AioRpcError, SwarmError):
            return False
        return bool(reply.status == pb.HealthReply.DRAINING)

    def _rows(self, infos: dict[str, tuple[pb.NodeInfo, float, bool]], errors: dict[str, str], package_id: str,
              now: float) -> list[PeerStatus]:  # fmt: skip
        """One row per node id: up when it answered at any of its addresses; else as it was last
        seen. An address that never answered is a row of its own: whose it is, nobody said."""
        rows: dict[str, PeerStatus] = {}
        for address, (info, rtt_ms, draining) in infos.items():
            self._node_at[address] = info.node_id
            row = rows.get(info.node_id)
            if row is not None:  # the same node again, at another address
                rows[info.node_id] = replace(row, addresses=(*row.addresses, address))
                continue
            answered = self._answered(address, info, rtt_ms, package_id, now, draining)
            rows[info.node_id] = self._seen[info.node_id] = answered
        for address, error in errors.items():
            node_id = self._node_at.get(address)
            if node_id is None:
                rows.setdefault(address, PeerStatus(address, UNREACHABLE, error=error))
            elif node_id not in rows:  # none of its addresses answered: what it served when it last did
                rows[node_id] = replace(self._seen[node_id], state=UNREACHABLE, error=error)
        return list(rows.values())

    @staticmethod
    def _answered(address: str, info: pb.NodeInfo, rtt_ms: float, package_id: str, now: float,
                  draining: bool) -> PeerStatus:  # fmt: skip
        return PeerStatus(
            address=address,
            state=OTHER_MODEL if info.package_id != package_id else DRAINING if draining else UP,
            node_id=info.node_id,
            model=info.model_name,
            package_id=info.package_id,
            start=info.start,
            end=info.end,
            steps_per_s=info.steps_per_s,
            prefill_tokens_per_s=info.prefill_tokens_per_s,
            free_memory=max(info.memory_budget - info.memory_used, 0),
            sessions=info.sessions,
            max_sessions=info.max_sessions,
            rtt_ms=rtt_ms,
            last_seen=now,
            addresses=(address,),
        )

    def _route(self) -> tuple[tuple[RouteHop, ...], str]:
        try:
            route = self.swarm.route()
        except NoRouteError as exc:
            return (), str(exc)
        return tuple(RouteHop(p.node_id, p.address, p.start, p.end) for p in route), ""

    def _model(self, package_id: str, infos: dict[str, tuple[pb.NodeInfo, float, bool]]) -> tuple[str, int]:
        manifest = self.swarm.manifest
        if manifest is not None and self.swarm.package_id == package_id:
            return manifest.name, manifest.num_layers
        info = next((i for i, _, _ in infos.values() if i.package_id == package_id), None)
        return (info.model_name, info.num_layers) if info is not None else ("", 0)


# --- rendering ------------------------------------------------------------------------------

COLUMNS = ("NODE", "ADDRESS", "LAYERS", "STEPS/S", "PREFILL TOK/S", "FREE MEM", "LOAD", "RTT", "LAST SEEN", "STATE")


def render(snapshot: StatusSnapshot) -> str:
    """The snapshot as text: a header line, the peer table, the coverage, and the route."""
    up = sum(p.state == UP for p in snapshot.peers)
    if snapshot.package_id:
        head = f"model {snapshot.model or '?'} ({snapshot.package_id[:12]}), {snapshot.num_layers} layers"
    else:
        head = "model unknown: no peer answered"
    draining = sum(p.state == DRAINING for p in snapshot.peers)
    count = f"{up} of {len(snapshot.peers)} peers up" + (f", {draining} draining" if draining else "")
    lines = [f"{head}; {count}", "", *_table(snapshot), ""]
    lines += ["coverage:", *(f"  {_layers(r.start, r.end)}: {_servers(r.node_ids)}" for r in snapshot.coverage)]
    if not snapshot.coverage:
        lines.append("  (no layers known)")
    lines.append("")
    if snapshot.route:
        lines.append("route: " + " -> ".join(f"{h.address} {_layers(h.start, h.end)}" for h in snapshot.route))
    else:
        lines.append(f"route: none: {snapshot.problem}")
    return "\n".join(lines)


def _table(snapshot: StatusSnapshot) -> list[str]:
    rows = [COLUMNS, *(_row(p, snapshot.taken_at) for p in snapshot.peers)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _row(peer: PeerStatus, now: float) -> tuple[str, ...]:
    seen = _ago(peer.last_seen, now)
    more = len(peer.addresses) - 1
    address = peer.address + (f" (+{more})" if more > 0 else "")  # the others are in --json
    if peer.state == UNREACHABLE:
        layers = f"[{peer.start}, {peer.end})" if peer.end else "-"
        return (peer.node_id or "?", address, layers, "-", "-", "-", "-", "-", seen, peer.state)
    return (
        peer.node_id,
        address,
        f"[{peer.start}, {peer.end})",
        f"{peer.steps_per_s:.0f}",
        f"{peer.prefill_tokens_per_s:.0f}",
        _bytes(peer.free_memory),
        f"{peer.sessions}/{peer.max_sessions}",
        f"{peer.rtt_ms:.1f} ms",
        seen,
        peer.state,
    )


def _layers(start: int, end: int) -> str:
    return f"layers [{start}, {end})"


def _servers(node_ids: tuple[str, ...]) -> str:
    if not node_ids:
        return "MISSING"
    replicas = f" ({len(node_ids)} replicas)" if len(node_ids) > 1 else ""
    return ", ".join(node_ids) + replicas


def _ago(when: float | None, now: float) -> str:
    if when is None:  # not to this command: a one-shot status cannot know when the swarm last saw it
        return "-"
    seconds = max(now - when, 0.0)
    return "now" if seconds < 1 else f"{seconds:.0f}s ago"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# --- the command ------------------------------------------------------------------------------


def show(snapshot: StatusSnapshot, out: TextIO, as_json: bool, clear: bool = False) -> None:
    if as_json:  # one object per line: --watch --json is a stream of JSON lines
        out.write(json.dumps(snapshot.to_dict()) + "\n")
    else:
        out.write((CLEAR_SCREEN if clear else "") + render(snapshot) + "\n")
    out.flush()


async def run_status(config: ClientConfig, out: TextIO, as_json: bool = False, watch_s: float | None = None) -> int:
    """Show the swarm's status once (exit status 0 when a new session could start, else 1), or
    every `watch_s` seconds until cancelled (Ctrl-C)."""
    swarm = AsyncSwarm(config)
    probe = StatusProbe(swarm)
    try:
        while True:
            snapshot = await probe.snapshot()
            show(snapshot, out, as_json, clear=watch_s is not None and out.isatty())
            if watch_s is None:
                return 0 if snapshot.route else 1
            await asyncio.sleep(watch_s)
    finally:
        await swarm.close()
