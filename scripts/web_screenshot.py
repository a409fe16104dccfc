"""Regenerates docs/web-page.png: the web page of `swarm-client serve` on a 3-node swarm.

    python scripts/web_screenshot.py [--out docs/web-page.png]

Exports ../shared/models/stories260K into a temporary folder, starts three node processes on
127.0.0.1 (layers [0, 2), and [2, 5) twice: a replica), serves the page over them on a free port,
asks a question in a headless Chromium (Debian's chromium and chromium-driver, as the tests use:
tests/browser.py) and saves the page once the reply is done. Everything it starts it stops.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a file: the repository's packages and tests/browser.py

from export.exporter import ExportOptions, export_checkpoint  # noqa: E402
from swarm._loop import BackgroundLoop  # noqa: E402
from swarm.apps.openai_server import create_app, run_server  # noqa: E402
from swarm.client import AsyncSwarm  # noqa: E402
from swarm.keys import SwarmKey  # noqa: E402
from tests import browser  # noqa: E402

SPANS = ["0:2", "2:5", "2:5"]
QUESTION = "Once upon a time"


def start_node(package: Path, blocks: str, key: SwarmKey, home: Path) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "node.cli", "join", "--model", str(package), "--blocks", blocks, "--host",
           "127.0.0.1", "--port", "0", "--threads", "1", "--no-mdns", "--drain-timeout", "0",
           "--swarm-key", key.join_code]  # fmt: skip
    env = {**os.environ, "XDG_CONFIG_HOME": str(home)}  # identities of their own, not this user's
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "serving MODEL layers A:B at ADDRESS as ID"
    if not line.startswith("serving "):
        proc.kill()
        raise SystemExit(f"a node did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0]


def screenshot(out: Path) -> None:
    key = SwarmKey.generate()
    with tempfile.TemporaryDirectory(prefix="swarm-web-shot-") as tmp, ExitStack() as stack:
        package = export_checkpoint(REPO.parent / "shared" / "models" / "stories260K", Path(tmp) / "stories260K",
                                    ExportOptions())  # fmt: skip
        addresses = []
        for blocks in SPANS:
            proc, address = start_node(package.root, blocks, key, Path(tmp) / "config")
            stack.callback(proc.wait, 10)
            stack.callback(proc.kill)
            addresses.append(address)

        loop = BackgroundLoop("web-screenshot")
        stack.callback(loop.close)
        serving = AsyncExitStack()

        async def serve() -> int:
            swarm = await AsyncSwarm.connect(addresses, swarm_key=key)
            serving.push_async_callback(swarm.close)
            return (await serving.enter_async_context(run_server(create_app(swarm)))).port

        port = loop.run(serve())
        stack.callback(lambda: loop.run(serving.aclose()))
        driver = stack.enter_context(browser.chromium(width=1400, height=640))
        driver.get(f"http://127.0.0.1:{port}/")
        wait(lambda: len(driver.find_elements("css selector", "#map .node")) == len(SPANS))
        driver.find_element("id", "max-tokens").clear()
        driver.find_element("id", "max-tokens").send_keys("120")
        driver.find_element("id", "prompt").send_keys(QUESTION + "\n")
        wait(lambda: driver.find_elements("css selector", '.msg.assistant[data-done="true"]'))
        time.sleep(2.0)  # a map refresh after the reply: the loads settle, the last route is drawn
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    print(f"wrote {out}")


def wait(condition: Callable[[], object], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the page")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "web-page.png")
    screenshot(parser.parse_args().out)


if __name__ == "__main__":
    main()
