"""What an eavesdropper on the network sees: a packet capture (tcpdump, on loopback) taken while
a known prompt is generated holds neither the prompt nor any activation tensor's bytes.

The same capture of an open swarm (no key) does show them: that is what makes this test able
to fail. Needs root and tcpdump (scripts/test installs it); in CI their absence fails the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from swarm import Swarm
from swarm._proto import swarm_pb2 as pb
from swarm.config import RuntimeOptions
from swarm.environment import SWARM_KEY_ENV
from swarm.generation import GenerationRequest
from swarm.package import ModelPackage
from swarm.sampling import SamplingParams
from swarm.span import SpanRuntime
from tests.conftest import STORIES_PROMPT, STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS
from tests.helpers import LocalCluster

SPANS = [(0, 2), (2, 5)]


@pytest.fixture(scope="module")
def tcpdump() -> str:
    path = shutil.which("tcpdump")
    if os.geteuid() != 0 or path is None:
        message = "the capture test needs root and tcpdump (apt-get install tcpdump)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; scripts/test installs it when run as root")
        pytest.skip(f"NOT TESTED: {message}; nothing checked what the wire shows")
    return path


@contextmanager
def capture(tcpdump: str, ports: list[int], out: Path) -> Iterator[Path]:
    expression = " or ".join(f"tcp port {p}" for p in ports)
    # immediate mode: without it packets wait in a kernel buffer that SIGINT throws away
    command = [tcpdump, "-i", "lo", "--immediate-mode", "-U", "-s", "0", "-Z", "root", "-w", str(out), expression]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "listening on lo ..." once it captures
        assert "listening" in line, line
        time.sleep(1.0)  # the filter is attached a moment after tcpdump says it listens
        yield out
        time.sleep(0.3)  # the last segments reach the capture
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


def hidden_rows(package: ModelPackage) -> list[bytes]:
    """The float32 bytes of the prompt's hidden states as the first node sends them to the second."""
    span = SpanRuntime(package, *SPANS[0], RuntimeOptions(threads=1))
    hidden = span.forward(span.embed(STORIES_PROMPT_IDS), span.new_caches(16), SamplingParams(), False).hidden
    assert hidden is not None
    return [np.ascontiguousarray(row).tobytes()[:32] for row in hidden[0]]


def generate_and_capture(cluster: LocalCluster, package: ModelPackage, tcpdump: str, out: Path,
                         **options: object) -> bytes:  # fmt: skip
    nodes = cluster.start_chain(package.root, SPANS, **options)
    with capture(tcpdump, [n.port for n in nodes], out), Swarm(peers=cluster.addresses) as swarm:
        ids = list(swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), 40)))
    assert ids == STORIES_REFERENCE_IDS
    data = out.read_bytes()
    assert len(data) > 10_000, "the capture saw no traffic"
    return data


def secrets_seen(data: bytes, package: ModelPackage) -> list[str]:
    seen = []
    if STORIES_PROMPT.encode() in data:
        seen.append("prompt text")
    if pb.TokenIds(ids=STORIES_PROMPT_IDS).SerializeToString() in data:
        seen.append("prompt token ids")
    seen += [f"hidden state of position {i}" for i, row in enumerate(hidden_rows(package)) if row in data]
    return seen


def test_the_wire_shows_no_prompt_and_no_activation(cluster: LocalCluster, stories_package: ModelPackage,
                                                   tcpdump: str, tmp_path: Path) -> None:  # fmt: skip
    data = generate_and_capture(cluster, stories_package, tcpdump, tmp_path / "keyed.pcap")
    assert secrets_seen(data, stories_package) == []


def test_an_open_swarm_shows_them_which_is_what_the_capture_test_relies_on(
    cluster: LocalCluster, stories_package: ModelPackage, tcpdump: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv(SWARM_KEY_ENV)
    data = generate_and_capture(cluster, stories_package, tcpdump, tmp_path / "open.pcap", swarm_key=None)
    seen = secrets_seen(data, stories_package)
    assert "prompt token ids" in seen
    assert sum(s.startswith("hidden state") for s in seen) == len(STORIES_PROMPT_IDS)
