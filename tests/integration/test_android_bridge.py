"""The phone host on 127.0.0.1: scripted device state steers real nodes through the embedding API.

Battery low -> drain and leave while a generation moves to a replica; plugged in -> rejoin.
Metered network -> a block download pauses, and resumes later from where it stopped.
Thermal throttling -> lower announced capacity; a peer moves onto the slow node's layers.
A phone-class node (cgroup CPU quota + memory limit, small budget) joins and serves.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import android_bridge.lifecycle
import node.block_store as block_store
import node.rebalance
import node.server
import node.servicer
from android_bridge import CallbackProvider, DeviceState, Network, NodeHost
from node.rebalance import Rebalancer
from swarm import Swarm
from swarm.assignment import Move, MoveAdvice
from swarm.errors import PeerUnavailable
from swarm.generation import GenerationRequest, GenerationStats
from swarm.keys import SwarmKey
from swarm.package import ModelPackage
from tests.conftest import REPO, STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS
from tests.helpers import LocalCluster, wait_until

LOOPBACK = ("127.0.0.1",)
# a swarm of this run's own: nodes other test runs announce on this machine's loopback are not its members
KEY = SwarmKey.generate()
MDNS = {"mdns": True, "mdns_interfaces": LOOPBACK, "announce_interval_s": 0.5, "swarm_key": KEY}
PLUGGED_IN = DeviceState(battery_percent=90.0, charging=True, network=Network.UNMETERED, foreground=True)




def host_config(storage: Path, **options: Any) -> str:
    """A phone on 127.0.0.1 with quick clocks: policy read every 0.2 s, 0.3 s to settle."""
    config: dict[str, Any] = {
        "storage_dir": str(storage), "swarm_key": KEY.join_code, "host": "127.0.0.1", "threads": 1,
        "mdns": True, "mdns_interfaces": list(LOOPBACK), "announce_interval_s": 0.5, "discovery_wait_s": 2,
        "poll_interval_s": 0.2, "drain_timeout_s": 0.5, "rebalance": False,
        "policy": {"serve_on_battery": True, "leave_battery_percent": 20, "rejoin_battery_percent": 30,
                   "settle_s": 0.3},
    }  # fmt: skip
    config.update(options)
    return json.dumps(config)


def status(host: NodeHost) -> dict[str, Any]:
    return dict(json.loads(host.status_json()))


@pytest.fixture
def hosts() -> Iterator[list[NodeHost]]:
    """NodeHosts a test starts; all stopped at the end."""
    started: list[NodeHost] = []
    try:
        yield started
    finally:
        for host in started:
            host.stop()


def start_host(hosts: list[NodeHost], provider: CallbackProvider, config: str) -> NodeHost:
    host = NodeHost(provider)
    hosts.append(host)
    host.start(config)
    return host


def greedy(peers: list[str], stats: GenerationStats | None = None) -> list[int]:
    with Swarm(peers=peers, swarm_key=KEY) as swarm:
        return list(swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), 40), stats))


def test_low_battery_leaves_while_the_generation_moves_on_and_plugging_in_rejoins(
    cluster: LocalCluster, stories_package: ModelPackage, hosts: list[NodeHost], tmp_path: Path
) -> None:
    front = cluster.start(stories_package.root, (0, 2), **MDNS)
    device = CallbackProvider(DeviceState(battery_percent=60.0, charging=False, network=Network.UNMETERED))
    phone = start_host(hosts, device, host_config(tmp_path / "phone", model_path=str(stories_package.root),
                                                  span=[2, 5]))  # fmt: skip
    joined = phone.events.wait_for("joined", 30)
    assert phone.events.wait_for("serving", 5)["start"] == 2
    stats = GenerationStats()
    # the client drives every step (no node loop), so the generation is still in flight when
    # the phone leaves instead of having run ahead to its end in a few milliseconds
    with Swarm(peers=[front.address, joined["address"]], swarm_key=KEY, min_step_deadline_s=1.0,
               open_deadline_s=1.0, node_loop=False) as swarm:
        stream = swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), 40), stats)
        tokens = [next(stream) for _ in range(5)]
        assert stats.route[1].startswith(joined["address"])  # the only node for [2, 5) so far
        replica = cluster.start(stories_package.root, (2, 5), **MDNS)
        presence = front.presence
        assert presence is not None
        assert wait_until(lambda: replica.address in presence.known_addresses())  # so the client can learn it
        device.update(battery_percent=15.0)
        left = phone.events.wait_for("left", 15)
        tokens += list(stream)
    assert tokens == STORIES_REFERENCE_IDS  # identical to the reference, across the phone's departure
    assert len(stats.recoveries) == 1 and stats.route[1].startswith(replica.address)
    assert left["reason"] == "on battery at 15% (below 20%): out until charging or above 30%"
    out = status(phone)
    assert out["phase"] == "left" and out["decision"]["mode"] == "leave" and "node_id" not in out

    device.update(battery_percent=16.0, charging=True)  # plugged in: back after settling
    rejoined = phone.events.wait_for("joined", 30)
    assert rejoined["address"] == joined["address"] and rejoined["node_id"] == joined["node_id"]
    assert status(phone)["phase"] == "serving" and status(phone)["decision"]["mode"] == "serve"
    cluster.stop_node(replica)
    stats = GenerationStats()
    assert greedy([front.address, joined["address"]], stats) == STORIES_REFERENCE_IDS
    assert stats.route[1].startswith(joined["address"])


def test_a_metered_network_pauses_a_block_download_and_resumes_without_refetching(
    cluster: LocalCluster, stories_package: ModelPackage, hosts: list[NodeHost], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(node.servicer, "FILE_CHUNK_BYTES", 4096)  # 50 chunks per block file
    monkeypatch.setattr(android_bridge.lifecycle, "PROGRESS_EVERY_S", 0.0)  # an event per chunk
    written: list[tuple[str, int, int]] = []  # (file, offset a transfer started at, bytes it wrote)
    real_download = block_store._download

    async def counting(address: str, package_id: str, entry: Any, part: Path, *rest: Any) -> None:
        start = part.stat().st_size if part.exists() else 0
        try:
            await real_download(address, package_id, entry, part, *rest)
        finally:
            written.append((entry.file, start, (part.stat().st_size if part.exists() else 0) - start))

    monkeypatch.setattr(block_store, "_download", counting)
    seed = cluster.start(stories_package.root, (0, 2), **MDNS)
    device = CallbackProvider(PLUGGED_IN)

    def walk_out_of_wifi(text: str) -> None:
        event = json.loads(text)
        if event["event"] == "downloading" and event["file"] == "block_003.onnx" and event["bytes_done"] >= 100_000:
            device.update(metered=True)

    phone = NodeHost(device, listener=walk_out_of_wifi)
    hosts.append(phone)
    phone.start(host_config(tmp_path / "phone"))
    paused = phone.events.wait_for("paused", 30)
    assert "metered network" in paused["reason"] and "block_003.onnx" in paused["detail"]
    part = next((tmp_path / "phone" / "blocks").glob("*/block_003.onnx.part"))
    kept = part.stat().st_size
    assert kept == 102400  # the chunk in which the network changed was kept, nothing after it
    assert wait_until(lambda: not status(phone)["decision"]["downloads"], 2)  # the policy caught up
    time.sleep(0.5)
    assert status(phone)["phase"] == "paused"  # stays paused while metered
    phone.set_listener(None)
    device.update(metered=False)
    assert phone.events.wait_for("serving", 30)["start"] == 2
    manifest = stories_package.manifest
    needed = {b.file: b.bytes for b in manifest.blocks[2:]} | {manifest.head.file: manifest.head.bytes}
    per_file = {name: sum(n for f, _, n in written if f == name) for name in needed}
    assert per_file == needed  # every byte fetched exactly once, across the pause
    assert [(s, n) for f, s, n in written if f == "block_003.onnx"] == [(0, kept), (kept, 204759 - kept)]
    assert greedy([seed.address, status(phone)["address"]]) == STORIES_REFERENCE_IDS


def test_thermal_throttling_lowers_capacity_and_a_peer_takes_over_its_layers(
    cluster: LocalCluster, stories_package: ModelPackage, hosts: list[NodeHost], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # equal devices, 1 ms per layer: measured speeds of this tiny model on a busy machine are noise
    monkeypatch.setattr(node.server, "measure_steps_per_s", lambda span: 1000.0 / (span.end - span.start))
    root = str(stories_package.root)
    balance = {"rebalance": True, "rebalance_interval_s": 0.2, "rebalance_min_gain": 0.5, "rebalance_patience": 3}
    policy = {"moderate_thermal_capacity": 0.1, "settle_s": 0.3}
    front = cluster.start(stories_package.root, (0, 3), **MDNS)
    helper_device, phone_device = CallbackProvider(PLUGGED_IN), CallbackProvider(PLUGGED_IN)
    helper = start_host(hosts, helper_device, host_config(tmp_path / "helper", model_path=root, span=[0, 3],
                                                          policy=policy, **balance))  # fmt: skip
    phone = start_host(hosts, phone_device, host_config(tmp_path / "phone", model_path=root, span=[3, 5],
                                                        policy=policy, **balance))  # fmt: skip
    helper_address = helper.events.wait_for("joined", 30)["address"]
    phone_address = phone.events.wait_for("joined", 30)["address"]
    time.sleep(1.5)  # several rebalance checks with everyone cool: nobody moves
    assert status(helper)["span"] == [0, 3] and status(phone)["span"] == [3, 5]

    phone_device.update(thermal=2)  # Android's THERMAL_STATUS_MODERATE
    throttled = phone.events.wait_for("capacity", 5)
    assert throttled["capacity"] == 0.1 and throttled["reasons"] == ["thermal status moderate: capacity 0.1"]
    out = status(phone)
    assert (out["measured_steps_per_s"], out["announced_steps_per_s"]) == (500.0, 50.0)
    moving = helper.events.wait_for("moving", 15)
    assert (moving["start"], moving["end"]) == (3, 5) and "bottleneck" in moving["reason"]
    assert helper.events.wait_for("serving", 30)["start"] == 3
    assert status(helper)["span"] == [3, 5] and status(phone)["span"] == [3, 5]  # the phone is now a spare replica
    stats = GenerationStats()
    assert greedy([front.address, helper_address, phone_address], stats) == STORIES_REFERENCE_IDS
    assert stats.route == [f"{front.address}:0-3", f"{helper_address}:3-5"]  # around the hot phone


class ScriptedLooks:
    """Stands in for the rule (`Rebalancer._check`): each look at the swarm answers from a script,
    then never again; records which looks were taken (patience 1 = the second look) and the random waits."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: list[Move | None]) -> None:
        self.answers, self.looks, self.waits = iter(answers), [], []  # type: ignore[var-annotated]
        monkeypatch.setattr(Rebalancer, "_check", self.look)
        monkeypatch.setattr(node.rebalance.random, "uniform", self.wait)

    def look(self, node: object, advice: MoveAdvice, patience: int) -> tuple[MoveAdvice, Move | None]:
        self.looks.append("second" if patience == 1 else "first")
        return advice, next(self.answers, None)

    def wait(self, low: float, high: float) -> float:
        self.waits.append((low, high))
        return 0.05


def moving_host(hosts: list[NodeHost], stories_package: ModelPackage,
                tmp_path: Path) -> tuple[NodeHost, list[dict[str, Any]]]:  # fmt: skip
    """A host serving [0, 3) from a local package, checking for moves every 0.1 s; and its events."""
    events: list[dict[str, Any]] = []
    host = NodeHost(CallbackProvider(PLUGGED_IN), listener=lambda text: events.append(json.loads(text)))
    hosts.append(host)
    host.start(host_config(tmp_path / "phone", model_path=str(stories_package.root), span=[0, 3], mdns=False,
                           rebalance=True, rebalance_interval_s=0.1))  # fmt: skip
    return host, events


def test_the_host_moves_as_every_node_does_after_a_random_wait_and_a_second_look(
    stories_package: ModelPackage, hosts: list[NodeHost], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bottleneck = Move((3, 5), "layers [3, 5) are the swarm's bottleneck")
    # the first time the second look disagrees (another replica moved first): no move; the next time it agrees
    script = ScriptedLooks(monkeypatch, [bottleneck, None, bottleneck, bottleneck])
    host, events = moving_host(hosts, stories_package, tmp_path)
    address = host.events.wait_for("joined", 30)["address"]
    assert host.events.wait_for("moving", 15)["reason"] == bottleneck.reason
    assert host.events.wait_for("joined", 30)["address"] == address  # same port
    assert host.events.wait_for("serving", 5)["start"] == 3
    assert script.looks[:4] == ["first", "second", "first", "second"]
    assert script.waits[:2] == [(0, 0.1), (0, 0.1)]  # a random part of one interval, before each second look
    assert [e["event"] for e in events].count("moving") == 1
    assert status(host)["span"] == [3, 5]


def test_a_host_move_whose_blocks_cannot_be_fetched_serves_the_old_layers_again(
    stories_package: ModelPackage, hosts: list[NodeHost], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_peer_has_them(config: object, **options: object) -> object:
        raise PeerUnavailable("could not fetch block_003.onnx: no peer has it")

    ScriptedLooks(monkeypatch, [Move((3, 5), "a test asked for it"), Move((3, 5), "a test asked for it")])
    monkeypatch.setattr(node.rebalance, "missing_files", lambda package, start, end: ["block_003.onnx"])
    monkeypatch.setattr(android_bridge.lifecycle, "prepare", no_peer_has_them)
    host, events = moving_host(hosts, stories_package, tmp_path)
    address = host.events.wait_for("joined", 30)["address"]
    assert host.events.wait_for("moving", 15)["start"] == 3
    assert host.events.wait_for("joined", 30)["address"] == address  # same port
    assert host.events.wait_for("serving", 5)["start"] == 0  # the old layers, not an error
    assert status(host)["phase"] == "serving" and status(host)["span"] == [0, 3]
    assert "error" not in [e["event"] for e in events]


# ---------------------------------------------------------------- a phone-class process

CGROUP_CPU, CGROUP_MEMORY = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/memory")
PHONE_CPU_SHARE = 0.5  # of one core
PHONE_RAM = 384 << 20  # bytes the whole process may use (page cache included)


@pytest.fixture
def phone_cgroups() -> Iterator[tuple[Path, Path]]:
    """A cgroup v1 pair: CPU quota of half a core, and a memory limit."""
    if os.geteuid() != 0 or not (CGROUP_CPU / "cpu.cfs_quota_us").exists() or not CGROUP_MEMORY.is_dir():
        message = "the phone-class test needs root and the cgroup v1 cpu and memory controllers"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI runs as root; this machine cannot)")
        pytest.skip(f"NOT TESTED: {message}; run as root to cover a CPU- and memory-limited node")
    name = f"swarm-phone-{os.getpid()}"
    cpu, memory = CGROUP_CPU / name, CGROUP_MEMORY / name
    cpu.mkdir()
    memory.mkdir()
    try:
        (cpu / "cpu.cfs_period_us").write_text("100000")
        (cpu / "cpu.cfs_quota_us").write_text(str(int(100000 * PHONE_CPU_SHARE)))
        (memory / "memory.limit_in_bytes").write_text(str(PHONE_RAM))
        yield cpu, memory
    finally:
        for group, root in ((cpu, CGROUP_CPU), (memory, CGROUP_MEMORY)):
            for pid in (group / "cgroup.procs").read_text().split():
                (root / "cgroup.procs").write_text(pid)  # move stragglers back before removing
            group.rmdir()


class EventLines:
    """The JSON event lines a `python -m android_bridge` process prints, read on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def next(self, kind: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = json.loads(self.lines.get(timeout=left))
            except queue.Empty:
                break
            if event["event"] == kind:
                return dict(event)
            assert event["event"] != "error", event
        raise AssertionError(f"no {kind} event within {timeout_s}s (exit code {self.proc.poll()})")


def test_a_phone_class_node_started_through_the_embedding_api_joins_and_serves(
    cluster: LocalCluster, stories_package: ModelPackage, phone_cgroups: tuple[Path, Path], tmp_path: Path
) -> None:
    cpu, memory = phone_cgroups
    seed = cluster.start(stories_package.root, (0, 2), swarm_key=KEY)
    sysfs = tmp_path / "sys"  # a charging phone on Wi-Fi, as the Linux provider reads it
    for name, text in {"class/power_supply/battery/type": "Battery", "class/power_supply/battery/capacity": "83",
                       "class/power_supply/battery/status": "Charging", "class/net/wlan0/operstate": "up"}.items():
        (sysfs / name).parent.mkdir(parents=True, exist_ok=True)
        (sysfs / name).write_text(text + "\n")
    config = tmp_path / "phone.json"
    config.write_text(host_config(tmp_path / "phone", mdns=False, peers=[seed.address], memory_budget="4MB",
                                  device="linux", sysfs_root=str(sysfs), max_sessions=4))  # fmt: skip
    enter = f"echo $$ > {cpu}/cgroup.procs && echo $$ > {memory}/cgroup.procs && exec \"$0\" \"$@\""
    proc = subprocess.Popen(["sh", "-c", enter, sys.executable, "-m", "android_bridge", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        events = EventLines(proc)
        joined = events.next("joined", 60)
        serving = events.next("serving", 5)
        assert (serving["start"], serving["end"]) == (2, 5)  # the layers the seed lacked, fetched from it
        assert f"{cpu.name}" in Path(f"/proc/{proc.pid}/cgroup").read_text()
        stats = GenerationStats()
        assert greedy([seed.address, joined["address"]], stats) == STORIES_REFERENCE_IDS
        assert stats.route[1].startswith(joined["address"])
        assert int((memory / "memory.max_usage_in_bytes").read_text()) < PHONE_RAM
        throttled = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
        print(f"phone-class node: peak memory {int((memory / 'memory.max_usage_in_bytes').read_text()) >> 20} MiB, "
              f"CPU throttled in {throttled['nr_throttled']} of {throttled['nr_periods']} periods")
        assert int(throttled["nr_throttled"]) > 0  # the quota really held it back
        proc.send_signal(signal.SIGTERM)
        assert events.next("left", 30)["reason"] == "stopped by the app"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
