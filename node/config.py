"""Everything a node is told, in one place, with defaults and units."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from swarm.errors import InvalidRequest
from swarm.keys import SwarmKey

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}  # fmt: skip


def parse_bytes(text: str) -> int:
    """'2GB', '512MiB', '1.5g', '1000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise InvalidRequest(f"not a size: {text!r} (examples: 2GB, 512MiB, 1500000000)")
    return round(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_span(text: str) -> tuple[int, int]:
    """'A:B' -> (A, B), the half-open layer range [A, B)."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match or int(match.group(1)) >= int(match.group(2)):
        raise InvalidRequest(f"--blocks wants START:END with START < END (layers [START, END)), got {text!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class NodeConfig:
    model: Path | None = None  # model package folder; None = join the swarm's model, fetching blocks
    span: tuple[int, int] | None = None  # layers [start, end) to serve; None = the whole model
    host: str = "0.0.0.0"  # address to listen on
    port: int = 0  # 0 = any free port
    peers: tuple[str, ...] = ()  # host:port of other nodes
    max_memory: int | None = None  # bytes for weights + KV caches; None = weights + 1 GiB
    max_sessions: int = 32  # live sessions at once
    max_batch: int = 16  # decode steps of different sessions run together in one pass, at most
    max_context: int | None = None  # tokens per session; None = the package's max context
    idle_timeout_s: float = 300.0  # a session with no step for this long is closed
    hop_timeout_s: float = 60.0  # the next hop must answer a step within this
    threads: int = 0  # onnxruntime threads; 0 = one per core
    spin: bool = False  # one spinning onnxruntime pool: faster, for a device running this node alone
    identity_file: Path | None = None  # the node's Ed25519 key (its id); None = a new one for this run
    swarm_key: SwarmKey | None = None  # membership secret; None = an open swarm (no auth, plain frames)
    max_sessions_per_peer: int = 0  # sessions one peer may hold here; 0 = only max_sessions
    max_calls_per_s: float = 2000.0  # calls (not steps) per peer, bursts of twice that; 0 = unlimited
    drain_timeout_s: float = 30.0  # on shutdown, wait this long for live sessions
    mdns: bool = True  # announce on the local network and browse for other nodes
    mdns_interfaces: tuple[str, ...] = ()  # interface addresses for mDNS; () = all IPv4
    announce_interval_s: float = 5.0  # mDNS refresh = heartbeat; peers expire us after 3 missed
    model_id: str | None = None  # with no model: which swarm model to join (package id or prefix)
    cache_dir: Path | None = None  # block store for fetched packages; None = ~/.cache/swarm/blocks
    cache_limit: int = 20 * 10**9  # bytes the block store may hold
    discovery_wait_s: float = 5.0  # with no model: how long to look for the swarm
    metrics_port: int | None = None  # Prometheus metrics over HTTP on the node's host; 0 = any free port


DEFAULT_KV_HEADROOM = 1 << 30  # bytes for KV caches when --max-memory is not given
