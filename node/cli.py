"""`swarm-node join`: serve a span of a model package to the swarm."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from node.config import NodeConfig, parse_bytes, parse_span
from node.server import serve
from swarm.errors import SwarmError

log = logging.getLogger("swarm.node")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swarm-node", description="Run a swarm node on this device.")
    sub = p.add_subparsers(dest="command", required=True)
    join = sub.add_parser("join", help="serve layers of a model to the swarm")
    join.add_argument("--model", required=True, type=Path, help="model package folder (made by swarm-export)")
    join.add_argument("--blocks", metavar="A:B", help="serve layers [A, B) (default: the whole model)")
    join.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    join.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    join.add_argument("--peer", action="append", default=[], metavar="HOST:PORT", help="another node (repeatable)")
    join.add_argument("--max-memory", metavar="SIZE", help="bytes for weights + KV caches, e.g. 2GB")
    join.add_argument("--max-sessions", type=int, default=32, help="live sessions at once (default 32)")
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
        max_context=args.max_context,
        idle_timeout_s=args.idle_timeout,
        threads=args.threads,
        node_id=args.node_id,
    )


async def run(config: NodeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(config) as node:
        m = node.servicer.span.package.manifest
        span = node.servicer.span
        # one line on stdout that scripts can wait for
        print(f"serving {m.name} layers {span.start}:{span.end} at {node.address} as {node.node_id}", flush=True)
        await stop.wait()
        log.info("shutting down: draining %d sessions", len(node.sessions.sessions))


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
