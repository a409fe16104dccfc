"""The host app's JSON config, checked in one place and turned into a NodeConfig.

{"storage_dir": "/data/user/0/org.example/files/swarm",   required: keys, identity, blocks
 "swarm_key": "swarm1-...",        join code (or a key file path); required unless "insecure": true
 "model_id": "3f2a...",            which swarm model to join; absent = the one most nodes serve
 "memory_budget": "1.5GB",         weights + KV caches (bytes or a size like 1.5GB)
 "threads": 2,                     onnxruntime threads; 0 = one per core
 "device": "auto",                 auto | linux | termux | callbacks | static
 "policy": {"serve_on_battery": true, ...}}   see android_bridge/policy.py Thresholds
Every other key is listed in HostConfig with its default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from android_bridge.policy import Thresholds
from node.config import NodeConfig, parse_bytes
from swarm.errors import InvalidRequest, SwarmError
from swarm.keys import parse_swarm_key

DEVICES = ("auto", "linux", "termux", "callbacks", "static")


@dataclass(frozen=True)
class HostConfig:
    storage_dir: Path  # the app's private folder: identity, fetched blocks
    swarm_key: str | None = None  # join code or key file
    insecure: bool = False  # no swarm key on purpose: an open swarm (trusted networks only)
    model_id: str | None = None  # package id (or prefix) to join; None = the swarm's model
    model_path: Path | None = None  # a complete local package to seed with instead of fetching
    span: tuple[int, int] | None = None  # layers [start, end) to serve; None = what the swarm lacks
    memory_budget: int | None = None  # bytes for weights + KV caches; None = weights + 1 GiB
    threads: int = 0  # onnxruntime threads; 0 = one per core
    max_sessions: int = 8  # live sessions at once
    max_context: int | None = None  # tokens per session; None = the model's
    host: str = "0.0.0.0"  # address to listen on
    port: int = 0  # 0 = any free port (kept across leave and rejoin)
    peers: tuple[str, ...] = ()  # host:port of nodes to join through, besides mDNS
    mdns: bool = True  # find the swarm (and be found) on the local network
    mdns_interfaces: tuple[str, ...] = ()  # interface addresses for mDNS; () = all IPv4
    announce_interval_s: float = 5.0  # mDNS heartbeat
    discovery_wait_s: float = 5.0  # how long to look for the swarm when joining
    drain_timeout_s: float = 10.0  # when leaving, how long live sessions may take to finish
    cache_limit: int = 4 * 10**9  # bytes the block store may hold
    device: str = "auto"  # where the device state comes from (DEVICES)
    sysfs_root: Path = Path("/sys")  # for device "linux"
    metered_interfaces: tuple[str, ...] = ()  # for "linux": interfaces that cost per byte
    metered_ssids: tuple[str, ...] = ()  # for "termux": Wi-Fi networks that cost per byte (hotspots)
    poll_interval_s: float = 10.0  # seconds between device state reads
    retry_s: float = 15.0  # after a failed join, seconds before the next try
    rebalance: bool = True  # move to the swarm's bottleneck layers when that clearly helps
    rebalance_interval_s: float = 30.0  # seconds between rebalance checks
    rebalance_min_gain: float = 0.2  # a move must make the slowest stage this much faster
    rebalance_patience: int = 3  # ... on this many consecutive checks
    policy: Thresholds = field(default_factory=Thresholds)

    @property
    def identity_file(self) -> Path:
        return self.storage_dir / "node.key"

    @property
    def cache_dir(self) -> Path:
        return self.storage_dir / "blocks"

    def node_config(self) -> NodeConfig:
        if self.insecure == bool(self.swarm_key):
            raise InvalidRequest('give the swarm\'s join code as "swarm_key", or "insecure": true for an open swarm '
                                 "(not both)")  # fmt: skip
        try:
            key = parse_swarm_key(self.swarm_key) if self.swarm_key else None
        except SwarmError as exc:
            raise InvalidRequest(f"swarm_key: {exc}") from exc
        return NodeConfig(
            model=self.model_path, span=self.span, host=self.host, port=self.port, peers=self.peers,
            max_memory=self.memory_budget, max_sessions=self.max_sessions, max_context=self.max_context,
            threads=self.threads, identity_file=self.identity_file, swarm_key=key,
            drain_timeout_s=self.drain_timeout_s, mdns=self.mdns, mdns_interfaces=self.mdns_interfaces,
            announce_interval_s=self.announce_interval_s, model_id=self.model_id, cache_dir=self.cache_dir,
            cache_limit=self.cache_limit, discovery_wait_s=self.discovery_wait_s,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """For the status: everything but the swarm key."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Thresholds) else _plain(value)
        out["swarm_key"] = "(set)" if self.swarm_key else None
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        return parse_bytes(value)
    raise ValueError(f"wants a size in bytes or like '1.5GB', got {value!r}")


def _span(value: Any) -> tuple[int, int]:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value) and value[0] < value[1]:
        return value[0], value[1]
    raise ValueError(f"wants [start, end] with start < end, got {value!r}")


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"wants a list of strings, got {value!r}")


def _typed(kind: type) -> Any:
    def check(value: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"wants {kind.__name__}, got {value!r}")
        return value

    return check


def _seconds(value: Any) -> float:
    seconds = float(_typed(float)(value))
    if seconds <= 0:
        raise ValueError(f"wants seconds > 0, got {value!r}")
    return seconds


def _device(value: Any) -> str:
    if value not in DEVICES:
        raise ValueError(f"wants one of {list(DEVICES)}, got {value!r}")
    return str(value)


def _optional(convert: Any) -> Any:
    return lambda value: None if value is None else convert(value)


_PARSERS: dict[str, Any] = {
    "storage_dir": lambda v: Path(_typed(str)(v)), "swarm_key": _optional(_typed(str)), "insecure": _typed(bool),
    "model_id": _optional(_typed(str)), "model_path": _optional(lambda v: Path(_typed(str)(v))),
    "span": _optional(_span), "memory_budget": _optional(_size), "threads": _typed(int),
    "max_sessions": _typed(int), "max_context": _optional(_typed(int)), "host": _typed(str), "port": _typed(int),
    "peers": _strings, "mdns": _typed(bool), "mdns_interfaces": _strings, "announce_interval_s": _seconds,
    "discovery_wait_s": _seconds, "drain_timeout_s": _typed(float), "cache_limit": _size,
    "device": _device, "sysfs_root": lambda v: Path(_typed(str)(v)), "metered_interfaces": _strings,
    "metered_ssids": _strings, "poll_interval_s": _seconds, "retry_s": _seconds,
    "rebalance": _typed(bool), "rebalance_interval_s": _seconds, "rebalance_min_gain": _typed(float),
    "rebalance_patience": _typed(int), "policy": lambda v: Thresholds.from_dict(_typed(dict)(v)),
}  # fmt: skip


def json_object(text: str, what: str) -> dict[str, Any]:
    """`text` parsed as a JSON object; a clear InvalidRequest naming `what` otherwise."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{what} is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return raw


def parse_config(text: str) -> HostConfig:
    """A HostConfig from the host app's JSON; a clear InvalidRequest naming the bad key otherwise."""
    raw = json_object(text, "the node config")
    unknown = set(raw) - set(_PARSERS)
    if unknown:
        raise InvalidRequest(f"unknown node config keys {sorted(unknown)}; known: {sorted(_PARSERS)}")
    if "storage_dir" not in raw:
        raise InvalidRequest("the node config needs storage_dir: a folder the app owns (keys, fetched blocks)")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            values[key] = _PARSERS[key](value)
        except (ValueError, SwarmError) as exc:
            raise InvalidRequest(f"node config {key!r}: {exc}") from None
    return HostConfig(**values)
