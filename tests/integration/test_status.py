"""`swarm-client status` against real nodes: peers, coverage and route; a stopped node leaves a gap."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO

import pytest

from swarm.apps.cli import main
from swarm.apps.status import DRAINING, UNREACHABLE, UP, StatusProbe, StatusSnapshot, render, run_status
from swarm.client import AsyncSwarm
from swarm.config import ClientConfig
from swarm.package import ModelPackage
from tests.conftest import REPO
from tests.helpers import TEST_SWARM_KEY, LocalCluster

SPANS = [(0, 2), (2, 4), (4, 5)]


def status(capsys: pytest.CaptureFixture[str], addresses: list[str], *flags: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["status", *(arg for a in addresses for arg in ("--peer", a)), *flags])
    return code, capsys.readouterr().out


def test_status_lists_peers_coverage_and_route_then_the_gap(cluster: LocalCluster, stories_package: ModelPackage,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    nodes = cluster.start_chain(stories_package.root, SPANS)
    code, out = status(capsys, cluster.addresses, "--json")
    data = json.loads(out)
    assert code == 0 and data["complete"] and data["gaps"] == []
    assert data["model"] == "stories260K" and data["num_layers"] == 5
    assert {p["address"] for p in data["peers"]} == set(cluster.addresses)
    assert all(p["state"] == UP and p["free_memory"] > 0 and p["steps_per_s"] > 0 for p in data["peers"])
    expected = [(n.node_id, *span) for n, span in zip(nodes, SPANS, strict=True)]
    assert [(h["node_id"], h["start"], h["end"]) for h in data["route"]] == expected

    code, out = status(capsys, cluster.addresses)
    assert code == 0 and "3 of 3 peers up" in out and "MISSING" not in out
    assert all(address in out for address in cluster.addresses)
    hops = [f"{n.address} layers [{start}, {end})" for n, (start, end) in zip(nodes, SPANS, strict=True)]
    assert "route: " + " -> ".join(hops) in out

    cluster.stop_node(nodes[1])
    started = time.monotonic()
    code, out = status(capsys, cluster.addresses)
    assert time.monotonic() - started < 5
    assert code == 1 and "2 of 3 peers up" in out and "layers [2, 4): MISSING" in out
    assert "route: none: no peer serves layers [2, 4) of 5" in out
    row = next(line for line in out.splitlines() if nodes[1].address in line)
    assert row.endswith(UNREACHABLE)

    code, out = status(capsys, cluster.addresses, "--json")
    data = json.loads(out)
    assert code == 1 and not data["complete"] and data["gaps"] == [[2, 4]] and data["route"] == []
    assert {p["address"]: p["state"] for p in data["peers"]}[nodes[1].address] == UNREACHABLE


def test_a_draining_node_is_shown_draining_and_covers_nothing_new(
    cluster: LocalCluster, stories_package: ModelPackage, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = cluster.start_chain(stories_package.root, [(0, 2), (2, 5), (2, 5)])
    nodes[2].servicer.draining = True  # as when it leaves or moves: finishing its sessions, taking no new ones
    code, out = status(capsys, cluster.addresses, "--json")
    data = json.loads(out)
    states = {p["node_id"]: p["state"] for p in data["peers"]}
    assert states == {nodes[0].node_id: UP, nodes[1].node_id: UP, nodes[2].node_id: DRAINING}
    assert code == 0 and [r["node_ids"] for r in data["coverage"]] == [[nodes[0].node_id], [nodes[1].node_id]]
    drained = next(p for p in data["peers"] if p["state"] == DRAINING)
    assert (drained["start"], drained["end"]) == (2, 5) and drained["steps_per_s"] > 0  # otherwise as it answered
    code, out = status(capsys, cluster.addresses)
    row = next(line for line in out.splitlines() if line.startswith(nodes[2].node_id))
    assert row.endswith(DRAINING) and "; 2 of 3 peers up, 1 draining" in out


@contextlib.contextmanager
def second_address(cluster: LocalCluster, target: str) -> Iterator[str]:
    """Another address for the node at `target` (a TCP forwarder on 127.0.0.1), as a node on two
    interfaces has: two addresses, one node id."""
    host, port = target.rsplit(":", 1)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()  # the node is gone: so is this address
            return
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = cluster.loop.run(asyncio.start_server(forward, "127.0.0.1", 0))  # type: ignore[arg-type]
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def test_a_node_reachable_at_two_addresses_is_one_row(cluster: LocalCluster, stories_package: ModelPackage,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    first, second = cluster.start_chain(stories_package.root, [(0, 2), (2, 5)])
    with second_address(cluster, second.address) as alias:
        code, out = status(capsys, [first.address, second.address, alias], "--json")
        data = json.loads(out)
        assert code == 0 and [p["node_id"] for p in data["peers"]] == [first.node_id, second.node_id]
        assert data["peers"][1]["addresses"] == [second.address, alias]
        assert [r["node_ids"] for r in data["coverage"]] == [[first.node_id], [second.node_id]]  # no replica of itself
        code, out = status(capsys, [first.address, second.address, alias])
        assert "2 of 2 peers up" in out and f"{second.address} (+1)" in out

        config = ClientConfig(peers=(first.address, second.address, alias), swarm_key=TEST_SWARM_KEY,
                              connect_timeout_s=1.0)  # fmt: skip

        async def watch_it_die() -> StatusSnapshot:
            swarm = AsyncSwarm(config)
            try:
                probe = StatusProbe(swarm)
                await probe.snapshot()
                await asyncio.to_thread(cluster.stop_node, second)  # killed: neither address answers now
                return await probe.snapshot()
            finally:
                await swarm.close()

        after = asyncio.run(watch_it_die())
    assert [(p.node_id, p.state) for p in after.peers] == [(first.node_id, UP), (second.node_id, UNREACHABLE)]
    gone = after.peers[1]
    assert (gone.start, gone.end) == (2, 5) and gone.last_seen is not None and gone.error  # as it was last seen
    row = next(line for line in render(after).splitlines() if line.startswith(second.node_id))
    assert re.search(r"(now|\d+s ago)\s+unreachable$", row), row  # LAST SEEN: when it last answered, not "never"


@pytest.fixture
def silent_peer() -> Iterator[str]:
    """An address that accepts connections and never says a word (a stalled host)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_a_silent_peer_costs_at_most_the_timeout(
    cluster: LocalCluster, stories_package: ModelPackage, silent_peer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.start(stories_package.root)
    started = time.monotonic()
    code, out = status(capsys, [*cluster.addresses, silent_peer], "--timeout", "0.5", "--json")
    assert time.monotonic() - started < 4
    states = {p["address"]: p["state"] for p in json.loads(out)["peers"]}
    assert code == 0 and states == {cluster.addresses[0]: UP, silent_peer: UNREACHABLE}


def test_watch_remembers_when_a_stopped_node_was_last_seen(cluster: LocalCluster,
                                                           stories_package: ModelPackage) -> None:  # fmt: skip
    nodes = cluster.start_chain(stories_package.root, SPANS)
    config = ClientConfig(peers=tuple(cluster.addresses), swarm_key=TEST_SWARM_KEY, connect_timeout_s=1.0)

    async def watch() -> tuple[list[str], str]:
        out = io.StringIO()
        with pytest.raises(TimeoutError):  # --watch runs until interrupted
            await asyncio.wait_for(run_status(config, out, as_json=True, watch_s=0.05), 1.0)
        swarm = AsyncSwarm(config)
        try:
            probe = StatusProbe(swarm)
            await probe.snapshot()
            await asyncio.to_thread(cluster.stop_node, nodes[2])
            after = await probe.snapshot()
        finally:
            await swarm.close()
        gone = next(p for p in after.peers if p.address == nodes[2].address)
        assert gone.state == UNREACHABLE and gone.last_seen is not None and gone.error
        assert (gone.node_id, gone.start, gone.end) == (nodes[2].node_id, 4, 5)  # as it was last seen
        return out.getvalue().splitlines(), after.problem

    lines, problem = asyncio.run(watch())
    assert len(lines) >= 2 and all(json.loads(line)["complete"] for line in lines)  # one JSON object per refresh
    assert "layers [4, 5)" in problem


class Lines:
    """The lines a process prints, read on a thread, so a test can wait for one with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(line) for line in stream], daemon=True).start()

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                if text in self.queue.get(timeout=left):
                    return
        raise AssertionError(f"no line with {text!r} within {timeout_s}s")


@pytest.mark.parametrize("moment", ["during the first probe", "between refreshes", "during a later probe"])
def test_ctrl_c_ends_watch_at_once(moment: str, cluster: LocalCluster, stories_package: ModelPackage) -> None:
    assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN  # or no child of this run would heed it (conftest)
    cluster.start(stories_package.root)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # a stalled host: every probe waits on it
        silent.settimeout(30)
        watch = {"during the first probe": "30", "between refreshes": "30", "during a later probe": "0.1"}[moment]
        proc = subprocess.Popen([sys.executable, "-m", "swarm.apps.cli", "status", "--peer", cluster.addresses[0],
                                 "--peer", f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "1", "--watch", watch],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proc.stdout is not None
            out = Lines(proc.stdout)
            if moment == "during the first probe":
                connection, _ = silent.accept()  # the probe is under way: it is calling the silent host
                connection.close()
            else:
                out.wait_for("route:", 30)  # the first table is out; the watch sleeps, or probes again at once
                time.sleep(0.5 if moment == "during a later probe" else 0.2)
            proc.send_signal(signal.SIGINT)
            started = time.monotonic()
            code = proc.wait(timeout=10)
            assert time.monotonic() - started < 3, f"took {time.monotonic() - started:.1f}s after SIGINT"
            assert proc.stderr is not None
            assert code == 0 and "Traceback" not in proc.stderr.read()
        finally:
            proc.kill()
            proc.wait()
