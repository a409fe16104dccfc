"""Zero-config swarms on 127.0.0.1: mDNS discovery, heartbeats, leaving, joining with no model."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

import node.block_store
from node.block_store import StoreError
from node.config import NodeConfig
from node.join import prepare
from node.presence import Presence
from node.server import RunningNode
from swarm import Swarm
from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.discovery import SERVICE_TYPE
from swarm.errors import CapacityExceeded, NoRouteError
from swarm.generation import GenerationRequest
from swarm.keys import SwarmKey
from swarm.package import ModelPackage, sha256_file
from tests.conftest import REPO, STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS, STORIES_REFERENCE_TEXT
from tests.helpers import NODE_CMD, TEST_SWARM_KEY, LocalCluster, browse, member_metadata, start_node, wait_until

LOOPBACK = ("127.0.0.1",)
MDNS = {"mdns": True, "mdns_interfaces": LOOPBACK, "announce_interval_s": 0.5}


def greedy(swarm: Swarm) -> list[int]:
    return list(swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), 40)))


def test_client_finds_the_swarm_with_no_peers(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    cluster.start(stories_package.root, (0, 2), **MDNS)
    cluster.start(stories_package.root, (2, 5), **MDNS)
    with Swarm(mdns_interfaces=LOOPBACK) as swarm:
        assert greedy(swarm) == STORIES_REFERENCE_IDS
        assert {p.address for p in swarm.swarm.peers} == set(cluster.addresses)


def test_no_swarm_is_a_clear_error() -> None:
    with pytest.raises(NoRouteError, match=r"found no swarm on the local network within 0\.5s") as raised:
        Swarm(mdns_interfaces=LOOPBACK, discovery_timeout_s=0.5)
    assert str(raised.value).endswith("or pass peers=['host:port']")  # the SDK's words
    assert raised.value.for_cli.endswith("or give --peer HOST:PORT")  # and a command line's


def test_members_see_each_other_and_a_leaving_node_is_dropped(cluster: LocalCluster,
                                                              stories_package: ModelPackage) -> None:  # fmt: skip
    a = cluster.start(stories_package.root, (0, 2), **MDNS)
    b = cluster.start(stories_package.root, (2, 5), **MDNS)
    assert a.presence is not None and b.presence is not None
    assert wait_until(lambda: a.presence.known_addresses() == [b.address])
    assert wait_until(lambda: b.presence.known_addresses() == [a.address])
    cluster.loop.run(b.presence.leave())  # what SIGTERM does first
    assert wait_until(lambda: a.presence.known_addresses() == [], timeout_s=3.0)


def test_a_node_with_a_foreign_key_says_so_within_one_announce_interval(
    cluster: LocalCluster, stories_package: ModelPackage, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    interval = MDNS["announce_interval_s"]
    caplog.set_level(logging.WARNING, logger="swarm.node")
    first_heard: dict[int, float] = {}  # presence -> when it first heard another swarm
    hear = Presence._heard_foreign

    def heard(self: Presence) -> None:
        first_heard.setdefault(id(self), time.time())
        hear(self)

    monkeypatch.setattr(Presence, "_heard_foreign", heard)

    def alone_warnings(node: RunningNode) -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "node", None) == node.node_id]

    cluster.start(stories_package.root, (0, 2), **MDNS)  # the test swarm
    stranger = cluster.start(stories_package.root, (2, 5), **{**MDNS, "swarm_key": SwarmKey.generate()})
    assert wait_until(lambda: alone_warnings(stranger), 5)
    [warning] = alone_warnings(stranger)
    assert re.fullmatch(r"no node of this swarm seen; \d+ announcements from other swarms were ignored — "
                        r"is the swarm key right\?", warning.getMessage())  # fmt: skip
    assert warning.created - first_heard[id(stranger.presence)] <= interval + 0.1
    member = cluster.start(stories_package.root, (2, 5), **MDNS)  # hears the stranger, and its own swarm too
    time.sleep(3 * interval)
    assert alone_warnings(member) == [] and len(alone_warnings(stranger)) == 1  # and said only once


def test_a_crashed_node_expires(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    a = cluster.start(stories_package.root, (0, 2), **MDNS)
    assert a.presence is not None
    crashed = start_node("--model", str(stories_package.root), "--blocks", "2:5")
    try:
        assert wait_until(lambda: len(a.presence.known_addresses()) == 1)
        crashed.send_signal(signal.SIGKILL)  # no goodbye: only the missing heartbeats tell
        crashed.wait()
        started = time.monotonic()
        assert wait_until(lambda: a.presence.known_addresses() == [], timeout_s=5.0)
        assert time.monotonic() - started >= 0.5  # it took the heartbeat timeout, not a goodbye
    finally:
        crashed.kill()


def test_sigterm_unannounces_drains_and_exits(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    a = cluster.start(stories_package.root, (0, 2), **MDNS)
    assert a.presence is not None
    leaving = start_node("--model", str(stories_package.root), "--blocks", "2:5", "--drain-timeout", "10")
    try:
        assert wait_until(lambda: len(a.presence.known_addresses()) == 1)
        with Swarm(peers=[a.address, a.presence.known_addresses()[0]]) as swarm:
            stream = swarm.stream("Once upon a time", max_tokens=60, stop_on_eos=False)
            first = next(stream)
            leaving.send_signal(signal.SIGTERM)
            assert wait_until(lambda: a.presence.known_addresses() == [], timeout_s=3.0)  # unannounced at once
            rest = "".join(stream)  # the session in flight still finishes while the node drains
        assert (first + rest).startswith(", there was a little girl named Lily")
        assert leaving.wait(timeout=15) == 0
        assert "draining 1 sessions" in (leaving.stderr.read() if leaving.stderr else "")
    finally:
        leaving.kill()


def test_join_with_no_model_fetches_blocks_and_serves(cluster: LocalCluster, stories_package: ModelPackage,
                                                      tmp_path: Path) -> None:  # fmt: skip
    seed = cluster.start(stories_package.root, (0, 2), **MDNS)
    config = NodeConfig(model=None, host="127.0.0.1", mdns_interfaces=LOOPBACK, discovery_wait_s=2.0,
                        cache_dir=tmp_path / "blocks", threads=1, announce_interval_s=0.5,
                        swarm_key=TEST_SWARM_KEY)  # fmt: skip
    prepared = cluster.loop.run(prepare(config, quiet=True))
    assert prepared.span == (2, 5)  # the layers nobody served
    assert prepared.model is not None and prepared.model.parent == tmp_path / "blocks"
    assert prepared.model.name == stories_package.package_id
    held = sorted(p.name for p in prepared.model.iterdir())
    assert held == ["block_002.onnx", "block_003.onnx", "block_004.onnx", "head.onnx", "manifest.json",
                    "tokenizer.json"]  # fmt: skip
    cluster.start(prepared.model, prepared.span, **MDNS)
    with Swarm(peers=[seed.address]) as swarm:
        assert greedy(swarm) == STORIES_REFERENCE_IDS


def test_joining_hashes_block_files_off_the_event_loop(
    cluster: LocalCluster, stories_package: ModelPackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = cluster.start(stories_package.root, (0, 2), **MDNS)
    held = tmp_path / "blocks" / stories_package.package_id  # one block already here: checked, not fetched
    held.mkdir(parents=True)
    shutil.copy(stories_package.path("block_003.onnx"), held)
    hashed: list[tuple[str, str]] = []

    def recording_sha256(path: Path) -> str:
        hashed.append((path.name, threading.current_thread().name))
        return sha256_file(path)

    monkeypatch.setattr(node.block_store, "sha256_file", recording_sha256)
    config = NodeConfig(model=None, host="127.0.0.1", peers=(seed.address,), mdns=False, span=(2, 5),
                        cache_dir=tmp_path / "blocks", swarm_key=TEST_SWARM_KEY)  # fmt: skip
    prepared = cluster.loop.run(prepare(config, quiet=True))
    assert prepared.span == (2, 5)
    assert {name for name, _ in hashed} == {"block_003.onnx", "block_002.onnx.part", "block_004.onnx.part",
                                             "head.onnx.part"}  # fmt: skip
    assert "test-nodes" not in {thread for _, thread in hashed}  # the loop's thread never hashes


def test_fetch_serves_only_package_files(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    node = cluster.start(stories_package.root)

    async def fetch(name: str, package_id: str = stories_package.package_id, offset: int = 0) -> tuple[int, str]:
        async with grpc.aio.insecure_channel(node.address) as channel:
            request = pb.FetchFileRequest(package_id=package_id, file=name, offset=offset)
            try:
                metadata = member_metadata("FetchFile", node.node_id, request)
                call = pb_grpc.SwarmNodeStub(channel).FetchFile(request, metadata=metadata)
                data = b"".join([c.data async for c in call])
            except grpc.aio.AioRpcError as exc:
                return -1, f"{exc.code().name}: {exc.details()}"
            return len(data), ""

    run = asyncio.run
    size = stories_package.manifest.blocks[1].bytes
    assert run(fetch("block_001.onnx")) == (size, "")
    assert run(fetch("block_001.onnx", offset=1000)) == (size - 1000, "")
    assert run(fetch("../../../etc/passwd"))[1].startswith("NOT_FOUND")
    assert run(fetch("block_001.onnx", package_id="0" * 64))[1].startswith("NOT_FOUND")
    assert run(fetch("block_001.onnx", offset=size + 1))[1].startswith("OUT_OF_RANGE")


def test_cli_join_with_no_model(cluster: LocalCluster, stories_package: ModelPackage, tmp_path: Path) -> None:
    seed = cluster.start(stories_package.root, (0, 3), **MDNS)
    joined = start_node("--cache-dir", str(tmp_path), "--discovery-wait", "2")
    try:
        with Swarm(peers=[seed.address]) as swarm:
            assert greedy(swarm) == STORIES_REFERENCE_IDS
    finally:
        joined.send_signal(signal.SIGINT)
        assert joined.wait(timeout=15) == 0
    stderr = joined.stderr.read() if joined.stderr else ""
    assert "joining model stories260K" in stderr and "with layers [3, 5)" in stderr
    assert "\r[" not in stderr  # progress bars only on a terminal, never in a pipe
    assert os.path.isdir(tmp_path / stories_package.package_id)


def test_seeder_and_two_empty_joiners_serve_the_whole_model(cluster: LocalCluster, stories_package: ModelPackage,
                                                            tmp_path: Path) -> None:  # fmt: skip
    seeder = start_node("--model", str(stories_package.root), "--blocks", "0:2")
    layer_bytes = stories_package.manifest.blocks[2].bytes
    nodes = [seeder]
    try:
        # the first joiner has memory for two layers, the second for the rest
        nodes.append(start_node("--cache-dir", str(tmp_path / "j1"), "--discovery-wait", "2",
                                "--max-memory", str(int(2.2 * layer_bytes / 0.8) + 200_000)))  # fmt: skip
        time.sleep(1.5)  # let the first joiner's announcement reach everyone
        nodes.append(start_node("--cache-dir", str(tmp_path / "j2"), "--discovery-wait", "2"))
        client = subprocess.run(
            [sys.executable, "-m", "swarm.apps.cli", "generate", "--mdns-interface", "127.0.0.1", "--max-tokens", "40",
             "Once upon a time"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr
        assert "Once upon a time" + client.stdout.rstrip("\n") == STORIES_REFERENCE_TEXT
        # the first joiner took the two layers it has room for; the second covered what was
        # left (alone or also replicating [2, 4): either is a sound choice), so the route ends there
        assert " layers 2:4 at " in nodes[1].serving  # type: ignore[attr-defined]
        _, _, _, span, _, address, *_ = nodes[2].serving.split()  # type: ignore[attr-defined]
        assert span in ("4:5", "2:5") and client.stderr.rstrip().endswith(f"{address}:{span.replace(':', '-')}")
    finally:
        for proc in nodes:
            proc.terminate()
        for proc in nodes:
            proc.wait(timeout=15)


def test_an_independent_mdns_browser_reads_the_announcement(cluster: LocalCluster,
                                                            stories_package: ModelPackage) -> None:  # fmt: skip
    node = cluster.start(stories_package.root, (0, 2), **MDNS)
    services = {}
    assert wait_until(lambda: bool(services.update(browse(SERVICE_TYPE, "127.0.0.1", wait_s=0.5)) or services))
    txt = services[f"{node.node_id}.{SERVICE_TYPE}"]
    assert txt["id"] == node.node_id and txt["model"] == stories_package.package_id
    assert txt["span"] == "0:2" and txt["load"] == "0/32" and float(txt["speed"]) > 0
    assert txt["v"] == str(pb.PROTOCOL_VERSION_CURRENT) and txt["sw"] == TEST_SWARM_KEY.swarm_id and txt["sg"]


def join_config(tmp_path: Path, **options: object) -> NodeConfig:
    return NodeConfig(model=None, host="127.0.0.1", mdns_interfaces=LOOPBACK, discovery_wait_s=2.0,
                      cache_dir=tmp_path / "blocks", threads=1, swarm_key=TEST_SWARM_KEY,
                      **options)  # type: ignore[arg-type]  # fmt: skip


def test_damaged_or_partial_blocks_are_fetched_again(cluster: LocalCluster, stories_package: ModelPackage,
                                                     tmp_path: Path) -> None:  # fmt: skip
    cluster.start(stories_package.root, (0, 2), **MDNS)
    prepared = cluster.loop.run(prepare(join_config(tmp_path), quiet=True))
    assert prepared.model is not None
    block = prepared.model / "block_003.onnx"
    good = block.read_bytes()
    block.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])  # altered on disk
    head = prepared.model / "head.onnx"
    (prepared.model / "head.onnx.part").write_bytes(head.read_bytes()[:5000])  # a transfer cut halfway
    head.unlink()
    again = cluster.loop.run(prepare(join_config(tmp_path), quiet=True))
    assert again.model == prepared.model
    assert block.read_bytes() == good
    assert head.read_bytes() == (stories_package.root / "head.onnx").read_bytes()
    assert not list(prepared.model.glob("*.part"))


def test_a_full_or_unusable_cache_is_a_clear_error(cluster: LocalCluster, stories_package: ModelPackage,
                                                   tmp_path: Path) -> None:  # fmt: skip
    cluster.start(stories_package.root, (0, 2), **MDNS)
    with pytest.raises(CapacityExceeded, match=r"needs .* MiB more.*raise --cache-limit"):
        cluster.loop.run(prepare(join_config(tmp_path, cache_limit=50_000), quiet=True))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"cannot use .* as the block store"):
        cluster.loop.run(prepare(replace(join_config(tmp_path), cache_dir=blocker / "blocks"), quiet=True))
    result = subprocess.run([*NODE_CMD, "--cache-dir", str(blocker / "blocks"), "--discovery-wait", "2"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "swarm-node: error: cannot use" in result.stderr


def test_a_joining_node_relieves_the_bottleneck_while_sessions_run(cluster: LocalCluster,
                                                                   stories_package: ModelPackage,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    front = cluster.start(stories_package.root, (0, 2), **MDNS)
    back = cluster.start(stories_package.root, (2, 5), **MDNS)
    with Swarm(peers=[front.address, back.address]) as swarm:
        in_flight = swarm.stream("Once upon a time", max_tokens=40)
        first = next(in_flight)
        # three layers behind one node make [2, 5) the scarcest capacity: the newcomer replicates it
        prepared = cluster.loop.run(prepare(join_config(tmp_path), quiet=True))
        assert prepared.span == (2, 5)
        joined = cluster.start(prepared.model, prepared.span, **MDNS)  # type: ignore[arg-type]
        assert "Once upon a time" + first + "".join(in_flight) == STORIES_REFERENCE_TEXT
    with Swarm(peers=[front.address, back.address, joined.address]) as swarm:
        assert greedy(swarm) == STORIES_REFERENCE_IDS
