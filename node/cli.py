"""`swarm-node join`: serve a span of a model package to the swarm."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from node.config import NodeConfig, check_node_id, parse_bytes, parse_span
from node.join import prepare
from node.server import serve
from swarm.errors import SwarmError

log = logging.getLogger("swarm.node")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swarm-node", description="Run a swarm node on this device.")
    sub = p.add_subparsers(dest="command", required=True)
    join = sub.add_parser("join", help="serve layers of a model to the swarm")
    join.add_argument("--model", type=Path, help="model package folder to seed (default: fetch the swarm's model)")
    join.add_argument("--model-id", help="with no --model: the swarm model to join (package id or prefix)")
    join.add_argument("--cache-dir", type=Path, help="block store for fetched models (default ~/.cache/swarm/blocks)")
    join.add_argument("--cache-limit", metavar="SIZE", default="20GB", help="block store size limit (default 20GB)")
    join.add_argument("--no-mdns", action="store_true", help="do not announce or browse on the local network")
    join.add_argument("--mdns-interface", action="append", default=[], metavar="IP",
                      help="interface address for mDNS (repeatable; default: all IPv4)")  # fmt: skip
    join.add_argument("--announce-interval", type=float, default=5.0,
                      help="seconds between mDNS refreshes (the heartbeat; default 5)")  # fmt: skip
    join.add_argument("--drain-timeout", type=float, default=30.0,
                      help="on SIGINT/SIGTERM, seconds to let live sessions finish (default 30)")  # fmt: skip
    join.add_argument("--discovery-wait", type=float, default=5.0, help="seconds to look for the swarm (default 5)")
    join.add_argument("--blocks", metavar="A:B", help="serve layers [A, B) (default: the whole model)")
    join.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    join.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    join.add_argument("--peer", action="append", default=[], metavar="HOST:PORT", help="another node (repeatable)")
    join.add_argument("--max-memory", metavar="SIZE", help="bytes for weights + KV caches, e.g. 2GB")
    join.add_argument("--max-sessions", type=int, default=32, help="live sessions at once (default 32)")
    join.add_argument("--max-batch", type=int, default=16, help="decode steps batched across sessions (default 16)")
    join.add_argument("--max-context", type=int, help="tokens per session (default: the model's)")
    join.add_argument("--idle-timeout", type=float, default=300.0, help="seconds before an idle session closes")
    join.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: one per core)")
    join.add_argument("--node-id", help="a stable name for this node (default: random)")
    join.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    return NodeConfig(
        model=args.model,
        span=parse_span(args.blocks) if args.blocks else None,
        host=args.host,
        port=args.port,
        peers=tuple(args.peer),
        max_memory=parse_bytes(args.max_memory) if args.max_memory else None,
        max_sessions=args.max_sessions,
        max_batch=args.max_batch,
        max_context=args.max_context,
        idle_timeout_s=args.idle_timeout,
        threads=args.threads,
        node_id=check_node_id(args.node_id) if args.node_id else None,
        mdns=not args.no_mdns,
        mdns_interfaces=tuple(args.mdns_interface),
        model_id=args.model_id,
        cache_dir=args.cache_dir,
        cache_limit=parse_bytes(args.cache_limit),
        discovery_wait_s=args.discovery_wait,
        announce_interval_s=args.announce_interval,
        drain_timeout_s=args.drain_timeout,
    )


async def run(config: NodeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if config.model is None:
        config = await prepare(config)
    async with serve(config) as node:
        m = node.servicer.span.package.manifest
        span = node.servicer.span
        # one line on stdout that scripts can wait for
        print(f"serving {m.name} layers {span.start}:{span.end} at {node.address} as {node.node_id}", flush=True)
        await stop.wait()
        log.info("leaving: withdrawing the announcement, draining %d sessions (at most %gs)",
                 len(node.sessions.sessions), config.drain_timeout_s)  # fmt: skip
    log.info("node stopped")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(run(config_from_args(args)))
    except SwarmError as exc:
        print(f"swarm-node: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"swarm-node: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
