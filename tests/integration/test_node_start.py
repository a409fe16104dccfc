"""A node's start: a port that is taken fails at once with one line, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import node.server
import swarm.discovery
from node.config import NodeConfig
from node.ports import ListenError
from node.server import serve
from swarm.keys import Identity, claim_identity
from swarm.package import ModelPackage
from tests.conftest import REPO
from tests.helpers import TEST_SWARM_KEY, LocalCluster

NODE = [sys.executable, "-m", "node.cli", "join", "--host", "127.0.0.1", "--no-mdns", "--threads", "1"]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def can_listen_on(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("taken_by", ["another program", "another node", "the metrics port"])
def test_a_taken_port_is_one_line_and_a_nonzero_exit(
    taken_by: str, taken_port: int, cluster: LocalCluster, stories_package: ModelPackage, tmp_path: Path
) -> None:
    other = cluster.start(stories_package.root)
    flag, port = {"another program": ("--port", taken_port), "another node": ("--port", other.port),
                  "the metrics port": ("--metrics-port", taken_port)}[taken_by]  # fmt: skip
    result = subprocess.run([*NODE, "--model", str(stories_package.root), flag, str(port), "--identity",
                             str(tmp_path / "ids")], cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"swarm-node: error: port {port} on 127.0.0.1 is in use (another node?); "
                                          f"choose another {flag}, or 0 for any free port"]  # fmt: skip
    assert result.stdout == ""  # it never claimed to serve


def test_a_port_another_node_serves_is_not_shared(cluster: LocalCluster, stories_package: ModelPackage,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # gRPC's own bind, without the check before it: SO_REUSEPORT would let both nodes listen
    monkeypatch.setattr(node.server, "check_free", lambda host, port, flag: None)
    other = cluster.start(stories_package.root)
    config = NodeConfig(model=stories_package.root, host="127.0.0.1", port=other.port, threads=1, mdns=False,
                        swarm_key=TEST_SWARM_KEY)  # fmt: skip
    assert asyncio.run(fails_to_start(config)) == (
        ListenError,
        f"cannot listen on 127.0.0.1:{other.port} (in use, or not an address of this machine); "
        "choose another --port, or 0 for any free port",
    )


def threads() -> set[threading.Thread]:
    """Live threads, but gRPC's poller: gRPC runs it while any of its objects lives, process-wide."""
    return {t for t in threading.enumerate() if t.is_alive() and "_poll_wrapper" not in t.name}


async def fails_to_start(config: NodeConfig) -> tuple[type[Exception], str]:
    """How the start failed (not the exception itself: its frames hold on to what the start made)."""
    try:
        async with serve(config):
            pass
    except Exception as exc:
        return type(exc), str(exc)
    raise AssertionError("the node started")


async def node_id_of_a_start(config: NodeConfig) -> str:
    async with serve(config) as running:
        return running.node_id


@pytest.mark.parametrize("failing", ["gRPC port", "metrics port", "mDNS"])
def test_a_start_that_fails_half_way_releases_everything_and_a_retry_is_the_same_node(
    failing: str, taken_port: int, stories_package: ModelPackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the port was free when the node looked and taken by the time it bound: each failure comes
    # later in the start, after the identity, the compute thread and (but for the first) the gRPC server
    monkeypatch.setattr(node.server, "check_free", lambda host, port, flag: None)
    if failing == "mDNS":

        async def no_network(self: object, record: object) -> None:
            raise OSError("no multicast route")

        monkeypatch.setattr(swarm.discovery.Announcer, "announce", no_network)
    ids = tmp_path / "ids"
    ids.mkdir()
    own_id = Identity.load_or_create(ids / "node-0.key").node_id
    grpc_port = taken_port if failing == "gRPC port" else free_port()
    config = NodeConfig(model=stories_package.root, host="127.0.0.1", port=grpc_port, threads=1,
                        identity_file=ids, swarm_key=TEST_SWARM_KEY,
                        metrics_port=taken_port if failing == "metrics port" else free_port(),
                        mdns=failing == "mDNS", mdns_interfaces=("127.0.0.1",))  # fmt: skip
    threads_before = threads()

    error, message = asyncio.run(fails_to_start(config))

    assert error is {"gRPC port": ListenError, "metrics port": ListenError, "mDNS": OSError}[failing], message
    assert threads() == threads_before
    if failing != "gRPC port":  # the server that had started is stopped: its port and the metrics port are free
        assert can_listen_on(grpc_port)
    if failing == "mDNS":
        assert config.metrics_port is not None and can_listen_on(config.metrics_port)
    identity = claim_identity(ids)  # the lock was let go: the same identity is free again
    assert identity.node_id == own_id
    identity.release()
    retry = replace(config, port=0, metrics_port=0, mdns=False)
    assert asyncio.run(node_id_of_a_start(retry)) == own_id
    assert sorted(p.name for p in ids.glob("*.key")) == ["node-0.key"]  # no second identity was made
