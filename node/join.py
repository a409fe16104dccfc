"""Joining with no model: find the swarm, pick the model and a span, fetch the blocks.

discover peers (mDNS + --peer) -> choose model -> manifest + tokenizer from a peer ->
choose span -> fetch missing files (resumable, sha256-checked) -> serve from the store
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc

from node.block_store import BlockStore, FileRef, Progress, Source, StoreError
from node.config import NodeConfig
from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.assignment import Served, choose_span
from swarm.auth import ANY_NODE, Credentials
from swarm.client import ClientConfig, discover, fetch_package_meta
from swarm.errors import AuthenticationError, NoRouteError, SwarmError
from swarm.keys import Identity
from swarm.package import ModelPackage
from swarm.progress import ProgressLine
from swarm.transport import insecure_channel, unary_from

log = logging.getLogger("swarm.node")
INFO_TIMEOUT_S = 5.0
HEADROOM = 0.8  # share of --max-memory the weights may take; the rest is for KV caches


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "swarm" / "blocks"


async def _infos(addresses: list[str], credentials: Credentials | None) -> dict[str, pb.NodeInfo]:
    """What each address serves, from an Info to whoever answers there (the first contact: its node
    id is not known yet); the node ids in the answers are the ones their credentials prove."""

    async def info(address: str) -> pb.NodeInfo | None:
        async with insecure_channel(address) as channel:
            stub = pb_grpc.SwarmNodeStub(channel)
            try:
                answer, proof = await unary_from(stub.Info, "Info", pb.InfoRequest(), credentials, INFO_TIMEOUT_S,
                                                 ANY_NODE)  # fmt: skip
                if proof is not None and proof.node_id != answer.node_id:
                    raise AuthenticationError(f"answers as node {proof.node_id} but says it is {answer.node_id}")
                return answer
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.warning("%s refused us: %s (is the swarm key right?)", address, exc.details())
                return None
            except SwarmError as exc:
                log.warning("ignoring %s: %s", address, exc)
                return None

    found = await asyncio.gather(*(info(a) for a in addresses))
    return {a: i for a, i in zip(addresses, found, strict=True) if i is not None}


def choose_model(infos: dict[str, pb.NodeInfo], wanted: str | None) -> str:
    counts = Counter(i.package_id for i in infos.values() if wanted is None or i.package_id.startswith(wanted))
    if not counts:
        raise NoRouteError(f"no node in the swarm serves model {wanted}" if wanted else "found no swarm to join")
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        shown = ", ".join(f"{pid[:12]} ({n} nodes)" for pid, n in ranked)
        raise NoRouteError(f"the swarm serves several models equally: {shown}; choose one with --model-id")
    return ranked[0][0]


async def _fetch_meta(store: BlockStore, source: Source, credentials: Credentials | None) -> ModelPackage:
    async with insecure_channel(source.address) as channel:
        stub = pb_grpc.SwarmNodeStub(channel)
        meta = await fetch_package_meta(stub, source.address, source.node_id, credentials, timeout=30)
    return await asyncio.to_thread(store.save_meta, meta.manifest_json, meta.tokenizer_json)  # hashes the tokenizer


def max_layers(package: ModelPackage, max_memory: int | None) -> int | None:
    """The most layers whose weights fit the share of `max_memory` kept for weights."""
    if max_memory is None:
        return None
    per_layer = max(b.bytes / b.num_layers for b in package.manifest.blocks)
    return max(1, int(max_memory * HEADROOM // per_layer))


def missing_files(package: ModelPackage, start: int, end: int) -> list[FileRef]:
    """The files serving layers [start, end) needs that the package folder does not hold."""
    return [f for f in _needed_files(package, start, end) if not package.path(f.file).is_file()]


def _needed_files(package: ModelPackage, start: int, end: int) -> list[FileRef]:
    m = package.manifest
    files: list[FileRef] = list(m.blocks_in(start, end))
    if start == 0:
        files.insert(0, m.embedding)
    if end == m.num_layers:
        files.append(m.head)
    return files


def _sources(infos: dict[str, pb.NodeInfo], package_id: str, entry: FileRef) -> list[Source]:
    """Peers of the model, those whose span holds the file first."""
    start = getattr(entry, "start", None)
    peers = [Source(a, i.node_id) for a, i in infos.items() if i.package_id == package_id]
    holders = [s for s in peers if start is not None and infos[s.address].start <= start < infos[s.address].end]
    return list(dict.fromkeys([*holders, *peers]))


async def prepare(config: NodeConfig, quiet: bool = False, progress: Progress | None = None,
                  allowed: Callable[[], bool] | None = None) -> NodeConfig:  # fmt: skip
    """The config to serve with: a package fetched into the block store, and a span.
    `progress` replaces the progress line; `allowed()` False pauses the downloads (DownloadPaused)."""
    discovery = ClientConfig(mdns=config.mdns, mdns_interfaces=config.mdns_interfaces,
                             discovery_timeout_s=config.discovery_wait_s, model_id=config.model_id)  # fmt: skip
    # fetching needs no long-lived identity: a throwaway one proves membership just as well
    credentials = Credentials(config.swarm_key, Identity.generate()) if config.swarm_key else None
    found = await discover(discovery, credentials) if config.mdns else []
    addresses = list(dict.fromkeys([*config.peers, *found]))
    infos = await _infos(addresses, credentials)
    if not infos:
        raise NoRouteError(
            f"found no swarm to join within {config.discovery_wait_s:g}s; give --model PKG to seed one, "
            "or --peer HOST:PORT of a node"
        )
    package_id = choose_model(infos, config.model_id)
    store = BlockStore(config.cache_dir or default_cache_dir(), config.cache_limit)
    peers = [a for a, i in infos.items() if i.package_id == package_id]
    package = await _fetch_meta(store, Source(peers[0], infos[peers[0]].node_id), credentials)
    m = package.manifest
    served = [Served(i.start, i.end, 1000 / i.steps_per_s if i.steps_per_s > 0 else 0.0)
              for i in infos.values() if i.package_id == package_id]  # fmt: skip
    edges = [b.start for b in m.blocks] + [m.num_layers]
    start, end = config.span or choose_span(edges, served, max_layers(package, config.max_memory))
    log.info("joining model %s (%s) with layers [%d, %d)", m.name, package_id[:12], start, end)
    # hashing every held block file takes seconds for a large model: never on the event loop
    missing = await asyncio.to_thread(store.missing, package, _needed_files(package, start, end))
    store.make_room(package_id, sum(e.bytes for e in missing))
    report = progress or ProgressLine(quiet=quiet)
    try:
        for entry in missing:
            await store.fetch(package, entry, _sources(infos, package_id, entry), report, credentials, allowed)
    except OSError as exc:
        raise StoreError(f"cannot write to the block store {store.root}: {exc.strerror or exc}") from exc
    return replace(config, model=package.root, span=(start, end), peers=tuple(dict.fromkeys([*config.peers, *peers])))
