"""Starting and stopping a node: `async with serve(config) as node: ... node.port ...`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from node.batcher import ComputeExecutor
from node.config import DEFAULT_KV_HEADROOM, NodeConfig
from node.decoding import UndecodableRequests
from node.metrics import NodeMetrics
from node.ports import NO_PORT_SHARING, ListenError, check_free
from node.presence import Presence
from node.servicer import NodeServicer, ServicerSettings
from node.sessions import Limits, SessionTable
from node.throughput import Capacity, measure_prefill_tokens_per_s, measure_steps_per_s
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.auth import Credentials
from swarm.config import RuntimeOptions
from swarm.errors import CapacityExceeded, InvalidRequest
from swarm.keys import Identity, claim_identity
from swarm.membership import PeerRecord
from swarm.package import MANIFEST_NAME, load_package
from swarm.progress import Progress
from swarm.span import SpanRuntime
from swarm.transport import server_options

log = logging.getLogger("swarm.node")


@dataclass
class RunningNode:
    server: grpc.aio.Server
    servicer: NodeServicer
    port: int
    config: NodeConfig
    presence: Presence | None = None
    metrics: NodeMetrics | None = None  # with config.metrics_port
    metrics_port: int | None = None  # where /metrics is served, once bound

    def set_capacity_scale(self, scale: float) -> None:
        """Announce `scale` x the measured speed (0 < scale <= 1), so routing and assignment send less here."""
        self.servicer.capacity = self.servicer.capacity.scaled(scale)

    @property
    def speed(self) -> float:
        """Decode steps per second through the span, measured at start."""
        return self.servicer.capacity.measured_steps_per_s

    @property
    def capacity_scale(self) -> float:
        """The share of `speed` announced: a throttled device looks slower to the swarm."""
        return self.servicer.capacity.scale

    @property
    def node_id(self) -> str:
        return self.servicer.settings.node_id

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
        return f"{host}:{self.port}"

    @property
    def sessions(self) -> SessionTable:
        return self.servicer.table


def _limits(config: NodeConfig, span: SpanRuntime, package_context: int) -> Limits:
    max_context = min(config.max_context or package_context, package_context)
    budget = config.max_memory if config.max_memory is not None else span.weight_bytes + DEFAULT_KV_HEADROOM
    if budget < span.weight_bytes:
        raise CapacityExceeded(
            f"--max-memory {budget / 2**20:.0f} MiB is less than the {span.weight_bytes / 2**20:.0f} MiB "
            f"of weights for layers [{span.start}, {span.end}); serve fewer layers or raise it"
        )
    return Limits(budget, span.weight_bytes, config.max_sessions, max_context)


def _start_steps(progress: Progress | None, blocks: int) -> Progress:
    """A node's start as one bar: each block loaded, then the speed measured, then started."""

    def step(what: str, done: int, _total: int) -> None:
        if progress is not None:
            progress(what, done, blocks + 1)

    return step


def max_message_bytes(hidden_size: int, max_context: int) -> int:
    """Big enough for a whole-context prefill of float32 hidden states, and no bigger."""
    return max(1 << 20, hidden_size * max_context * 4 + (64 << 10))


@contextlib.asynccontextmanager
async def serve(config: NodeConfig, progress: Progress | None = None) -> AsyncIterator[RunningNode]:
    """A node serving `config`; `progress` hears of each step of the start (blocks loaded, speed measured).

    Everything the start acquires (the identity's lock, the compute thread, the gRPC server, the
    metrics endpoint, the mDNS presence) enters one exit stack as it is acquired, so a start that
    fails half way releases what it took, and a retry in the same process comes up as the same node."""
    if config.model is None:
        raise InvalidRequest("a node needs a model package to serve (node.join.prepare fetches one)")
    check_ports(config)  # before loading blocks: a taken port fails at once
    package = load_package(config.model)
    m = package.manifest
    start, end = config.span or (0, m.num_layers)
    if not 0 <= start < end <= m.num_layers:
        raise InvalidRequest(f"layers [{start}, {end}) are outside the model's [0, {m.num_layers})")
    options = RuntimeOptions(threads=config.threads, spin=config.spin)
    block_count = len(m.blocks_in(start, end))
    steps = _start_steps(progress, block_count)
    span = await asyncio.to_thread(SpanRuntime, package, start, end, options, steps)
    steps("measuring speed", block_count, 0)
    speed = await asyncio.to_thread(measure_steps_per_s, span)
    limits = _limits(config, span, m.max_context)
    prefill_speed = await asyncio.to_thread(measure_prefill_tokens_per_s, span, limits.max_context)
    message_bytes = max_message_bytes(m.architecture.hidden_size, limits.max_context)
    async with contextlib.AsyncExitStack() as stack:
        identity = claim_identity(config.identity_file) if config.identity_file else Identity.generate()
        stack.callback(identity.release)
        compute = ComputeExecutor(span.weight_bytes)
        stack.callback(compute.close)  # after the servicer: a step may still be computing
        servicer = NodeServicer(span, SessionTable(limits), _settings(config, identity, message_bytes), compute)
        stack.push_async_callback(servicer.close)  # its channels to next hops
        servicer.capacity = Capacity(speed, prefill_speed)
        metrics = NodeMetrics(servicer.table) if config.metrics_port is not None else None
        if metrics is not None:
            servicer.stream.on_step = metrics.observe_step
        server, port = await _grpc_server(stack, config, servicer, metrics, message_bytes)
        node = RunningNode(server, servicer, port, config, metrics=metrics)
        if metrics is not None and config.metrics_port is not None:
            stack.push_async_callback(metrics.close)
            node.metrics_port = await metrics.serve_http(config.host, config.metrics_port)
        if config.mdns:
            node.presence = await _announce(stack, node)
            servicer.known_peers = node.presence.known_addresses
        stack.push_async_callback(_leave, node)  # runs first: unannounce, then drain
        log.info("node %s serving layers [%d, %d) of %s on port %d", node.node_id, start, end, m.name, port)
        steps("started", block_count + 1, 0)
        yield node


def check_ports(config: NodeConfig) -> None:
    """Refuse ports that are taken before anything slow happens (loading blocks, fetching them)."""
    check_free(config.host, config.port, "--port")
    if config.metrics_port:
        check_free(config.host, config.metrics_port, "--metrics-port")


def _settings(config: NodeConfig, identity: Identity, message_bytes: int) -> ServicerSettings:
    return ServicerSettings(
        node_id=identity.node_id,
        idle_timeout_s=config.idle_timeout_s,
        hop_timeout_s=config.hop_timeout_s,
        max_message_bytes=message_bytes,
        peers=config.peers,
        max_batch=config.max_batch,
        credentials=Credentials(config.swarm_key, identity) if config.swarm_key else None,
        max_sessions_per_peer=config.max_sessions_per_peer,
        max_calls_per_s=config.max_calls_per_s,
    )


async def _grpc_server(stack: contextlib.AsyncExitStack, config: NodeConfig, servicer: NodeServicer,
                       metrics: NodeMetrics | None, message_bytes: int) -> tuple[grpc.aio.Server, int]:  # fmt: skip
    """The node's gRPC server, started, listening on a port of its own (never shared: NO_PORT_SHARING)."""
    # metrics outermost, so that requests refused as undecodable are counted too
    interceptors: list[grpc.aio.ServerInterceptor] = [metrics.interceptor] if metrics is not None else []
    interceptors.append(UndecodableRequests())
    # GetPackageMeta sends the manifest and tokenizer.json (3.5 MB for a 49k vocabulary) in one message
    package = servicer.span.package
    meta_bytes = sum(package.path(n).stat().st_size for n in (MANIFEST_NAME, package.manifest.tokenizer.file))
    send_bytes = max(message_bytes, meta_bytes + (64 << 10))
    server = grpc.aio.server(options=[*server_options(message_bytes, send_bytes), NO_PORT_SHARING],
                             interceptors=interceptors)  # fmt: skip
    stack.push_async_callback(server.stop, 1.0)
    pb_grpc.add_SwarmNodeServicer_to_server(servicer, server)
    try:
        port = server.add_insecure_port(f"{config.host}:{config.port}")
    except RuntimeError as exc:  # taken since check_ports looked, or an address gRPC cannot use
        raise ListenError(f"cannot listen on {config.host}:{config.port} (in use, or not an address of this "
                          "machine); choose another --port, or 0 for any free port") from exc  # fmt: skip
    await server.start()
    return server, port


async def _leave(node: RunningNode) -> None:
    if node.presence is not None:
        await node.presence.leave()  # first, so nobody routes new sessions here
    await drain(node, node.config.drain_timeout_s)


def own_record(node: RunningNode, address: str) -> PeerRecord:
    servicer = node.servicer
    limits = servicer.table.limits
    return PeerRecord(
        node_id=node.node_id,
        address=address,
        package_id=servicer.span.package.package_id,
        start=servicer.span.start,
        end=servicer.span.end,
        sessions=len(servicer.table.sessions),
        max_sessions=limits.max_sessions,
        free_memory=max(limits.memory_budget - servicer.table.memory_used, 0),
        draining=servicer.draining,
        speed=servicer.capacity.steps_per_s,
        prefill_speed=servicer.capacity.prefill_tokens_per_s,
        swarm_id=servicer.settings.credentials.swarm_id if servicer.settings.credentials else "",
    )


async def _announce(stack: contextlib.AsyncExitStack, node: RunningNode) -> Presence:
    config = node.config
    specific = config.host not in ("0.0.0.0", "::", "")
    addresses = [config.host] if specific else list(config.mdns_interfaces)
    presence = Presence(
        lambda: own_record(node, node.address),
        node.port,
        static_peers=config.peers,
        interfaces=config.mdns_interfaces or ((config.host,) if specific else ()),
        announce_addresses=addresses,
        interval_s=config.announce_interval_s,
        credentials=node.servicer.settings.credentials,
    )
    stack.push_async_callback(presence.close)
    await presence.start()
    return presence


async def drain(node: RunningNode, timeout_s: float) -> None:
    """Stop taking sessions and wait (bounded) for the live ones to finish."""
    node.servicer.draining = True
    deadline = asyncio.get_running_loop().time() + timeout_s
    while node.sessions.sessions and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
