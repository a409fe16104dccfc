"""`swarm-node join`: serve a span of a model package to the swarm."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from node.config import NodeConfig, parse_bytes, parse_span
from swarm.console import add_version_flag, prepare_process
from swarm.environment import (
    IDENTITY_DIR_NAME,
    SWARM_KEY_ENV,
    config_dir,
    default_identity_dir,
    env_mdns_interfaces,
    load_swarm_key,
)
from swarm.errors import AuthenticationError, SwarmError
from swarm.keys import KEY_FILE_NAME, SwarmKey, write_key_file
from swarm.logs import FORMATS, configure_logging
from swarm.progress import ProgressLine

if TYPE_CHECKING:  # gRPC loads with them: only once main() has set the process defaults
    from node.rebalance import RebalanceSettings
    from node.server import RunningNode

log = logging.getLogger("swarm.node")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swarm-node", description="Run a swarm node on this device.")
    add_version_flag(p)
    sub = p.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create a new swarm: a swarm key, shown as a join code")
    init.add_argument("--key-file", type=Path, help=f"where to keep the key (default {config_dir() / KEY_FILE_NAME})")
    join = sub.add_parser("join", help="serve layers of a model to the swarm")
    join.add_argument("--swarm-key", metavar="CODE|FILE",
                      help=f"the swarm's join code or key file (default: ${SWARM_KEY_ENV}, else the key "
                           "`swarm-node init` wrote)")  # fmt: skip
    join.add_argument("--insecure", action="store_true",
                      help="an open swarm: no swarm key, no authentication, plain frames (trusted networks only)")
    join.add_argument("--identity", type=Path, metavar="PATH",
                      help="this node's Ed25519 key file (created on first use; the node id derives from it), "
                           f"or a folder of them (default {config_dir() / IDENTITY_DIR_NAME}: the first one "
                           "no running node uses)")  # fmt: skip
    join.add_argument("--model", type=Path, help="model package folder to seed (default: fetch the swarm's model)")
    join.add_argument("--model-id", help="with no --model: the swarm model to join (package id or prefix)")
    join.add_argument("--cache-dir", type=Path, help="block store for fetched models (default ~/.cache/swarm/blocks)")
    join.add_argument("--cache-limit", metavar="SIZE", default="20GB", help="block store size limit (default 20GB)")
    join.add_argument("--no-mdns", action="store_true", help="do not announce or browse on the local network")
    join.add_argument("--mdns-interface", action="append", metavar="IP",
                      help="interface address for mDNS (repeatable; default: $SWARM_MDNS_INTERFACES, "
                           "else all IPv4)")  # fmt: skip
    join.add_argument("--announce-interval", type=float, default=5.0,
                      help="seconds between mDNS refreshes (the heartbeat; default 5)")  # fmt: skip
    join.add_argument("--drain-timeout", type=float, default=30.0,
                      help="on SIGINT/SIGTERM, seconds to let live sessions finish (default 30)")  # fmt: skip
    join.add_argument("--discovery-wait", type=float, default=5.0, help="seconds to look for the swarm (default 5)")
    join.add_argument("--blocks", metavar="A:B",
                      help="serve layers [A, B) and stay on them (default: with --model the whole model, without "
                           "it the layers the swarm needs most; a node without --blocks moves when the swarm needs "
                           "it elsewhere)")  # fmt: skip
    join.add_argument("--no-rebalance", action="store_true", help="never move to other layers")
    join.add_argument("--rebalance-interval", type=float, default=30.0,
                      help="seconds between checks whether the swarm needs this node elsewhere (default 30; "
                           "a move needs 3 checks in a row that agree)")  # fmt: skip
    join.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    join.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    join.add_argument("--peer", action="append", default=[], metavar="HOST:PORT", help="another node (repeatable)")
    join.add_argument("--max-memory", metavar="SIZE", help="bytes for weights + KV caches, e.g. 2GB")
    join.add_argument("--max-sessions", type=int, default=32, help="live sessions at once (default 32)")
    join.add_argument("--max-batch", type=int, default=16, help="decode steps batched across sessions (default 16)")
    join.add_argument("--max-context", type=int, help="tokens per session (default: the model's)")
    join.add_argument("--idle-timeout", type=float, default=300.0, help="seconds before an idle session closes")
    join.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: one per core)")
    join.add_argument("--spin", action="store_true",
                      help="one onnxruntime pool whose threads spin between ops: faster decoding for a device "
                           "that runs this node alone; a core stays busy ~40 ms after each step")  # fmt: skip
    join.add_argument("--max-sessions-per-peer", type=int, default=0,
                      help="sessions one client may hold here, relayed or not (default 0: no limit)")  # fmt: skip
    join.add_argument("--rate-limit", type=float, default=2000.0, metavar="N",
                      help="calls per second one peer may make (default 2000; 0 = unlimited)")  # fmt: skip
    join.add_argument("--metrics-port", type=int, metavar="N",
                      help="serve Prometheus metrics on http://HOST:N/metrics (0 = any free port)")  # fmt: skip
    join.add_argument("--log-format", choices=FORMATS, default="text", help="key=value lines (default) or JSON")
    join.add_argument("-v", "--verbose", action="count", default=0,
                      help="more logs: -v info, -vv debug (default: warnings and errors only)")  # fmt: skip
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
        spin=args.spin,
        identity_file=args.identity or default_identity_dir(),
        swarm_key=_swarm_key(args),
        max_sessions_per_peer=args.max_sessions_per_peer,
        max_calls_per_s=args.rate_limit,
        mdns=not args.no_mdns,
        mdns_interfaces=tuple(args.mdns_interface or env_mdns_interfaces()),
        model_id=args.model_id,
        cache_dir=args.cache_dir,
        cache_limit=parse_bytes(args.cache_limit),
        discovery_wait_s=args.discovery_wait,
        metrics_port=args.metrics_port,
        announce_interval_s=args.announce_interval,
        drain_timeout_s=args.drain_timeout,
    )


def _rebalance(args: argparse.Namespace) -> RebalanceSettings | None:
    """A node moves unless its span was pinned with --blocks or moving was turned off."""
    from node.rebalance import RebalanceSettings

    if args.blocks or args.no_rebalance or args.no_mdns:  # without mDNS it sees too little of the swarm
        return None
    return RebalanceSettings(interval_s=args.rebalance_interval)


def _swarm_key(args: argparse.Namespace) -> SwarmKey | None:
    if args.insecure:
        if args.swarm_key:
            raise AuthenticationError("--insecure and --swarm-key contradict each other; choose one")
        return None
    key = load_swarm_key(args.swarm_key)
    if key is None:
        raise AuthenticationError(
            "no swarm key: run `swarm-node init` on the first device (it prints a join code), then "
            "`swarm-node join --swarm-key CODE` on every device; or --insecure for an open swarm"
        )
    return key


def _init(args: argparse.Namespace) -> int:
    path = args.key_file or config_dir() / KEY_FILE_NAME
    key = SwarmKey.generate()
    write_key_file(key, path)
    print(f"created a swarm (id {key.swarm_id}); its key is in {path} (mode 0600)", file=sys.stderr)
    print("join other devices with:  swarm-node join --swarm-key <the code below>", file=sys.stderr)
    print(key.join_code)
    return 0


def _serving(node: RunningNode) -> None:
    span = node.servicer.span
    # one line on stdout that scripts can wait for (again after each move)
    print(f"serving {span.package.manifest.name} layers {span.start}:{span.end} at {node.address} as {node.node_id}",
          flush=True)  # fmt: skip


async def run(config: NodeConfig, rebalance: RebalanceSettings | None = None) -> None:
    from node.join import prepare
    from node.rebalance import serve_and_rebalance
    from node.server import check_ports

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if config.model is None:
        check_ports(config)  # before the swarm is searched and blocks are fetched
        config = await prepare(config)
    await serve_and_rebalance(config, stop, rebalance, _serving, ProgressLine())  # a bar on a terminal only
    log.info("node stopped")


def main(argv: list[str] | None = None) -> int:
    prepare_process()
    args = _parser().parse_args(argv)
    configure_logging(getattr(args, "verbose", 0), getattr(args, "log_format", "text"))
    try:
        if args.command == "init":
            return _init(args)
        asyncio.run(run(config_from_args(args), _rebalance(args)))
    except SwarmError as exc:
        print(f"swarm-node: error: {exc.for_cli}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"swarm-node: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
