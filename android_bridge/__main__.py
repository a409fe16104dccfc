"""`python -m android_bridge CONFIG.json`: run a hosted node from a shell (Termux, a laptop).

Events go to stdout, one JSON object per line; logs go to stderr. SIGINT or SIGTERM drains,
leaves and exits. `--status-every S` also prints the status every S seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from android_bridge.host import NodeHost
from swarm.errors import SwarmError


def _print(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m android_bridge", description="Run a swarm node hosted "
                                     "by the phone bridge: device state steers it (docs/ANDROID.md).")  # fmt: skip
    parser.add_argument("config", type=Path, help="the node config, a JSON file")
    parser.add_argument("--status-every", type=float, default=0.0, help="print the status every S seconds")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    host = NodeHost(listener=_print)
    try:
        host.start(args.config.read_text())
        while not stop.wait(args.status_every or 1.0):
            if args.status_every:
                _print(json.dumps({"event": "status", **json.loads(host.status_json())}))
    except (SwarmError, OSError) as exc:
        print(f"android_bridge: error: {exc}", file=sys.stderr)
        return 1
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
