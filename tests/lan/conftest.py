"""Hosts of our own: network namespaces joined by a bridge that leads nowhere else.

Every test here needs root and iproute2. In CI their absence fails the run; elsewhere the
tests are skipped with a message saying what went untested.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

SUBNET = "10.77.{tag}.{host}"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str
    link: str  # the bridge side of its veth: set it down to cut the host off

    def cut(self) -> None:
        sh("ip", "link", "set", self.link, "down")

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *args]


_USES = itertools.count()


def _wait_gone(prefix: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        if f" {prefix}" not in links:
            return
        time.sleep(0.1)


@pytest.fixture
def lan() -> Iterator[list[Host]]:
    """Three hosts, 10.77.X.1 to 10.77.X.3, on a private bridge."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        message = "the LAN tests need root and iproute2 to create network namespaces"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI runs as root; this machine cannot)")
        pytest.skip(f"NOT TESTED: {message}; run as root to cover multi-host discovery")
    tag = (os.getpid() + 37 * next(_USES)) % 200 + 20  # another per use: a deleted namespace's veths
    _wait_gone(f"sw{tag}")  # go away asynchronously, and one of an earlier test could still be there
    bridge = f"swbr{tag}"
    hosts = [Host(f"swarm-{tag}-{i}", SUBNET.format(tag=tag, host=i), f"sw{tag}b{i}") for i in (1, 2, 3)]
    sh("ip", "link", "add", bridge, "type", "bridge")
    try:
        sh("ip", "link", "set", bridge, "up")
        for i, host in enumerate(hosts, start=1):
            inside, outside = f"sw{tag}h{i}", f"sw{tag}b{i}"
            sh("ip", "netns", "add", host.namespace)
            sh("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
            sh("ip", "link", "set", inside, "netns", host.namespace)
            sh("ip", "link", "set", outside, "master", bridge, "up")
            sh(*host.command("ip", "addr", "add", f"{host.address}/24", "dev", inside))
            sh(*host.command("ip", "link", "set", inside, "up", "multicast", "on"))
            sh(*host.command("ip", "link", "set", "lo", "up"))
            sh(*host.command("ip", "route", "add", "224.0.0.0/4", "dev", inside))
        yield hosts
    finally:
        for host in hosts:
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
