"""Joining with no model: find the swarm, pick the model and a span, fetch the blocks.

discover peers (mDNS + --peer) -> choose model -> manifest + tokenizer from a peer ->
choose span -> fetch missing files (resumable, sha256-checked) -> serve from the store
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from node.block_store import BlockStore, FileRef, Progress, Source, StoreError
from node.config import NodeConfig
from swarm._proto import swarm_pb2 as pb
from swarm.assignment import Served, choose_span
from swarm.auth import Credentials
from swarm.discovery import discover
from swarm.errors import AuthenticationError, NoRouteError, SwarmError
from swarm.keys import Identity
from swarm.package import ModelPackage
from swarm.peers import PeerProbe, most_served_model
from swarm.progress import ProgressLine
from swarm.transport import ChannelPool

log = logging.getLogger("swarm.node")
INFO_TIMEOUT_S = 5.0
HEADROOM = 0.8  # share of --max-memory the weights may take; the rest is for KV caches


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "swarm" / "blocks"


async def _infos(probe: PeerProbe, addresses: list[str]) -> dict[str, pb.NodeInfo]:
    """What each address serves, from an Info to whoever answers there (the first contact: its node
    id is not known yet); the node ids in the answers are the ones their credentials prove."""

    async def info(address: str) -> pb.NodeInfo | None:
        try:
            return (await probe.identify(address)).info
        except AuthenticationError as exc:  # it refused us, or is not who it says
            log.warning("ignoring a peer: %s", exc)
        except SwarmError:  # not there
            pass
        return None

    found = await asyncio.gather(*(info(a) for a in addresses))
    return {a: i for a, i in zip(addresses, found, strict=True) if i is not None}


async def _fetch_meta(probe: PeerProbe, store: BlockStore, source: Source) -> ModelPackage:
    meta = await probe.package_meta(source.address, source.node_id, timeout_s=30)
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
    # fetching needs no long-lived identity: a throwaway one proves membership just as well
    credentials = Credentials(config.swarm_key, Identity.generate()) if config.swarm_key else None
    found = await discover(config.mdns_interfaces, config.discovery_wait_s, config.model_id,
                           credentials) if config.mdns else []  # fmt: skip
    addresses = list(dict.fromkeys([*config.peers, *found]))
    channels = ChannelPool()
    try:
        return await _join(config, PeerProbe(channels, credentials, INFO_TIMEOUT_S), addresses, quiet, progress,
                           allowed)  # fmt: skip
    finally:
        await channels.close()


async def _join(config: NodeConfig, probe: PeerProbe, addresses: list[str], quiet: bool, progress: Progress | None,
                allowed: Callable[[], bool] | None) -> NodeConfig:  # fmt: skip
    infos = await _infos(probe, addresses)
    if not infos:
        raise NoRouteError(
            f"found no swarm to join within {config.discovery_wait_s:g}s; give --model PKG to seed one, "
            "or --peer HOST:PORT of a node"
        )
    package_id = most_served_model((i.package_id for i in infos.values()), config.model_id)
    store = BlockStore(config.cache_dir or default_cache_dir(), config.cache_limit)
    peers = [a for a, i in infos.items() if i.package_id == package_id]
    package = await _fetch_meta(probe, store, Source(peers[0], infos[peers[0]].node_id))
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
            await store.fetch(package, entry, _sources(infos, package_id, entry), report, probe.credentials, allowed)
    except OSError as exc:
        raise StoreError(f"cannot write to the block store {store.root}: {exc.strerror or exc}") from exc
    return replace(config, model=package.root, span=(start, end), peers=tuple(dict.fromkeys([*config.peers, *peers])))
