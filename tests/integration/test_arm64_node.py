"""An aarch64 node in a swarm with x86 ones: the node runs in an arm64 Debian root under qemu-user
(scripts/arm64-root), installed there by the phone install script (scripts/phone-install), on
127.0.0.1 beside x86 nodes in this process.

- A `swarm-node join` with no model, started in the root, finds the x86 swarm by mDNS, fetches
  the layers it lacks from it, and a generation through both ISAs equals the x86 local runner.
- The phone host (`python -m android_bridge`) started in the root, its device state a fake sysfs
  tree (battery, thermal zone, Wi-Fi): it joins and serves; overheating drains it out of the
  swarm, cooling brings it back on the same address and identity; unplugged at low battery it
  leaves again.

Needs root (debootstrap, chroot, mounts): elsewhere it skips, saying why; in CI (root) it runs.
The first run builds the root (~2.5 min, cached at /var/cache/swarm-arm64-root); each module run
installs the project into it (~1-2 min under emulation). Emulated ARM speed is not phone speed:
nothing here measures time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarm import Swarm
from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.auth import ANY_NODE, Credentials
from swarm.generation import GenerationRequest, GenerationStats
from swarm.keys import Identity, SwarmKey
from swarm.local import LocalModel
from swarm.package import ModelPackage
from swarm.transport import insecure_channel, unary
from tests import arm64
from tests.conftest import STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS
from tests.helpers import LocalCluster, close_after_test

pytestmark = pytest.mark.timeout(arm64.BUILD_TIMEOUT_S + arm64.INSTALL_TIMEOUT_S + 300)

LOOPBACK = ("127.0.0.1",)
KEY = SwarmKey.generate()  # this run's own swarm: other runs' nodes on this loopback are not members
MDNS = {"mdns": True, "mdns_interfaces": LOOPBACK, "announce_interval_s": 0.5, "swarm_key": KEY}
JOIN_S = 180  # an emulated node starting: Python, numpy, onnxruntime and grpc imports, block fetch, load
EVENT_S = 60  # an emulated node reacting to a device change (policy read every 0.2 s) and draining


@pytest.fixture(scope="module")
def arm_root() -> Path:
    """The arm64 root with the project installed by the phone install script."""
    reason = arm64.unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI runs as root; this machine cannot)")
        pytest.skip(f"NOT TESTED: {reason}; run as root to cover an aarch64 node in an x86 swarm")
    root = arm64.build_root()
    output = arm64.install_project(root)
    assert "phone-install: ok on aarch64" in output, output  # the script ran on (emulated) ARM
    return root


@pytest.fixture
def workdir(arm_root: Path) -> Iterator[tuple[Path, str]]:
    """A fresh folder inside the root: (its path here, its path inside the root)."""
    inside = f"/tmp/test-{os.getpid()}"
    here = arm_root / inside.lstrip("/")
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir(parents=True)
    try:
        yield here, inside
    finally:
        shutil.rmtree(here, ignore_errors=True)


def greedy(peers: list[str], stats: GenerationStats) -> list[int]:
    with Swarm(peers=peers, swarm_key=KEY) as swarm:
        return list(swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), 40), stats))


def machine_of(address: str) -> str:
    """The machine a node reports in its Info (`platform.machine()` where it runs)."""

    async def info() -> pb.NodeInfo:
        async with insecure_channel(address) as channel:
            credentials = Credentials(KEY, Identity.generate())
            return await unary(pb_grpc.SwarmNodeStub(channel).Info, "Info", pb.InfoRequest(), credentials, 30,
                               ANY_NODE)  # fmt: skip

    return asyncio.run(info()).machine


def test_an_arm64_node_found_by_mdns_serves_an_x86_swarm_the_local_runners_tokens(
    cluster: LocalCluster, stories_package: ModelPackage, workdir: tuple[Path, str]
) -> None:
    local = list(
        close_after_test(LocalModel(stories_package)).generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), 40))
    )
    assert local == STORIES_REFERENCE_IDS  # the x86 local runner, the baseline
    seed = cluster.start(stories_package.root, (0, 2), **MDNS)
    _, inside = workdir
    # no --model and no --peer: it finds the swarm by mDNS and fetches the layers nobody serves
    proc = arm64.start([arm64.venv("swarm-node"), "join", "--swarm-key", KEY.join_code, "--host", "127.0.0.1",
                        "--mdns-interface", "127.0.0.1", "--announce-interval", "0.5", "--discovery-wait", "10",
                        "--threads", "1", "--no-rebalance", "--cache-dir", f"{inside}/blocks",
                        "--identity", f"{inside}/node.key"])  # fmt: skip
    try:
        lines = arm64.Lines(proc)
        serving = lines.wait_for(lambda line: line.startswith("serving "), JOIN_S, "the arm64 node serving")
        # "serving MODEL layers A:B at ADDRESS as ID"
        words = serving.split()
        span, address = words[words.index("layers") + 1], words[words.index("at") + 1]
        assert span == "2:5", serving
        assert machine_of(address) == "aarch64" and machine_of(seed.address) == os.uname().machine
        stats = GenerationStats()
        with Swarm(mdns_interfaces=LOOPBACK, swarm_key=KEY) as swarm:  # the client finds both by mDNS too
            tokens = list(swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), 40), stats))
        assert tokens == local
        assert stats.route == [f"{seed.address}:0-2", f"{address}:2-5"]
        assert arm64.stop(proc) == 0  # SIGTERM: drains and leaves cleanly
    finally:
        arm64.stop(proc, timeout_s=5)


# ---------------------------------------------------------------- the phone host in the root


def write_sysfs(root: Path, *, battery: int, charging: bool, celsius: float) -> None:
    """A phone as the Linux provider reads it: a battery, one thermal zone, Wi-Fi up."""
    files = {
        "class/power_supply/battery/type": "Battery",
        "class/power_supply/battery/capacity": str(battery),
        "class/power_supply/battery/status": "Charging" if charging else "Discharging",
        "class/thermal/thermal_zone0/type": "cpu",
        "class/thermal/thermal_zone0/temp": str(int(celsius * 1000)),
        "class/net/wlan0/operstate": "up",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".new")
        tmp.write_text(text + "\n")
        tmp.replace(path)  # the provider never reads a half-written file


class Events:
    """The JSON event lines of `python -m android_bridge`, waited for by kind."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines = arm64.Lines(proc)

    def wait_for(self, kind: str, timeout_s: float) -> dict[str, Any]:
        def wanted(line: str) -> bool:
            event = json.loads(line)
            assert event["event"] != "error", event
            return bool(event["event"] == kind)

        return dict(json.loads(self.lines.wait_for(wanted, timeout_s, f"a {kind!r} event")))


def test_the_phone_host_on_arm64_leaves_and_rejoins_as_its_battery_and_heat_say(
    cluster: LocalCluster, stories_package: ModelPackage, workdir: tuple[Path, str]
) -> None:
    here, inside = workdir
    seed = cluster.start(stories_package.root, (0, 2), **MDNS)
    write_sysfs(here / "sys", battery=80, charging=True, celsius=45)
    config = {
        "storage_dir": f"{inside}/phone", "swarm_key": KEY.join_code, "host": "127.0.0.1", "threads": 1,
        "mdns": True, "mdns_interfaces": list(LOOPBACK), "announce_interval_s": 0.5, "discovery_wait_s": 10,
        "device": "linux", "sysfs_root": f"{inside}/sys", "poll_interval_s": 0.2, "drain_timeout_s": 0.5,
        "rebalance": False,
        "policy": {"serve_on_battery": True, "leave_battery_percent": 20, "rejoin_battery_percent": 30,
                   "settle_s": 0.3},
    }  # fmt: skip
    (here / "phone.json").write_text(json.dumps(config))
    proc = arm64.start([arm64.venv("python"), "-m", "android_bridge", f"{inside}/phone.json"])
    try:
        events = Events(proc)
        joined = events.wait_for("joined", JOIN_S)
        serving = events.wait_for("serving", EVENT_S)
        assert (serving["start"], serving["end"]) == (2, 5)  # the layers the seed lacked, fetched from it
        assert machine_of(joined["address"]) == "aarch64"
        stats = GenerationStats()
        assert greedy([seed.address, joined["address"]], stats) == STORIES_REFERENCE_IDS
        assert stats.route[1] == f"{joined['address']}:2-5"

        write_sysfs(here / "sys", battery=80, charging=True, celsius=92)  # 90 °C and up: severe
        left = events.wait_for("left", EVENT_S)
        assert left["reason"] == "thermal status severe: out until it cools to light or below"
        write_sysfs(here / "sys", battery=80, charging=True, celsius=50)  # cooled: back after settling
        rejoined = events.wait_for("joined", JOIN_S)
        assert (rejoined["address"], rejoined["node_id"]) == (joined["address"], joined["node_id"])
        stats = GenerationStats()
        assert greedy([seed.address, joined["address"]], stats) == STORIES_REFERENCE_IDS
        assert stats.route[1] == f"{joined['address']}:2-5"

        write_sysfs(here / "sys", battery=15, charging=False, celsius=50)  # unplugged, nearly empty
        left = events.wait_for("left", EVENT_S)
        assert left["reason"] == "on battery at 15% (below 20%): out until charging or above 30%"
        assert arm64.stop(proc) == 0
    finally:
        arm64.stop(proc, timeout_s=5)
