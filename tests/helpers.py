"""The helpers tests share, in one module: real nodes in this process (on 127.0.0.1 and port 0,
for tests and benchmarks), members of the test swarm, session requests made by hand, polling
with a deadline, an mDNS browser that shares no code with zeroconf, and Hypothesis strategies."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pty
import select
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import dns.message
import dns.rdatatype
from google.protobuf.message import Message
from hypothesis import strategies as st

from node.config import NodeConfig
from node.server import RunningNode, serve
from swarm._loop import BackgroundLoop
from swarm._proto import swarm_pb2 as pb
from swarm.auth import Credentials, Metadata
from swarm.keys import Identity, SwarmKey
from swarm.origin import sign_origin
from swarm.package import ModelPackage
from swarm.transport import request_bytes

REPO = Path(__file__).resolve().parents[1]


class SupportsClose(Protocol):
    def close(self) -> None: ...


# the swarm every test node and client is in, unless a test says otherwise (conftest puts it
# in $SWARM_KEY too, so SDK clients and node processes started by tests use it)
TEST_SWARM_KEY = SwarmKey(hashlib.sha256(b"swarm test suite").digest())


_T = TypeVar("_T", bound=SupportsClose)
CLOSE_AFTER_TEST: list[SupportsClose] = []  # closed when the running test ends (tests/conftest.py)


def close_after_test(resource: _T) -> _T:
    """`resource`, closed when the test ends, before the leak check looks for its threads."""
    CLOSE_AFTER_TEST.append(resource)
    return resource


def member_credentials() -> Credentials:
    """A fresh member of the test swarm, for tests that call nodes by hand."""
    return Credentials(TEST_SWARM_KEY, Identity.generate())


def member_metadata(method: str, node_id: str, request: Message | None = None) -> Metadata:
    """Call metadata of a fresh member of the test swarm, made for `method` with `request` on node
    `node_id` (ANY_NODE: whoever answers, for Info only)."""
    return member_credentials().call(method, node_id, request_bytes(request) if request is not None else b"")[0]


def signed(credentials: Credentials, request: pb.SessionRequest) -> pb.SessionRequest:
    """`request`, when it opens a session, signed as opened by `credentials` (as RemoteSession does)."""
    if request.WhichOneof("kind") != "open":
        return request
    copy = pb.SessionRequest()
    copy.CopyFrom(request)
    sign_origin(credentials, copy.open)
    return copy


class LocalCluster:
    """Nodes on a loop thread of their own; `stop()` shuts them all down."""

    def __init__(self) -> None:
        self.loop = BackgroundLoop("test-nodes")
        self._stack = contextlib.AsyncExitStack()
        self.nodes: list[RunningNode] = []

    def start(self, model: Path, span: tuple[int, int] | None = None, **options: Any) -> RunningNode:
        options.setdefault("mdns", False)  # tests that want discovery turn it on, on 127.0.0.1 only
        options.setdefault("threads", 1)
        options.setdefault("swarm_key", TEST_SWARM_KEY)
        config = NodeConfig(model=model, span=span, host="127.0.0.1", port=0, **options)

        async def enter() -> RunningNode:
            return await self._stack.enter_async_context(serve(config))

        node = self.loop.run(enter())
        self.nodes.append(node)
        return node

    def start_chain(self, model: Path, spans: Sequence[tuple[int, int]], **options: Any) -> list[RunningNode]:
        return [self.start(model, span, **options) for span in spans]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def stop_node(self, node: RunningNode) -> None:
        async def stop() -> None:
            await node.server.stop(grace=0)

        self.loop.run(stop())

    def stop(self) -> None:
        async def close() -> None:
            await self._stack.aclose()

        try:
            self.loop.run(close())
        finally:
            self.loop.close()
            self.nodes.clear()  # the servers go with them, and gRPC's poller thread once the last one is gone


def token_step(ids: list[int], position: int = 0, step: int = 0, **fields: Any) -> pb.SessionRequest:
    """A session step of token ids, as a client sends it."""
    return pb.SessionRequest(step=pb.Step(step=step, position=position, tokens=pb.TokenIds(ids=ids), **fields))


# --- polling for a condition, always with a deadline ---------------------------------------------


def wait_until(condition: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:
    """True as soon as `condition()` holds; after `timeout_s`, whether it holds then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())


# --- an mDNS browser that shares no code with zeroconf: dnspython messages over a raw socket ----
# It proves the announcements are plain standard mDNS that any other client (Avahi, Bonjour) can
# read: a PTR query for the service type, answers parsed into instance -> TXT fields.

MDNS_GROUP, MDNS_PORT = "224.0.0.251", 5353


def browse(service_type: str, interface: str, wait_s: float = 2.0) -> dict[str, dict[str, str]]:
    """Service instance name -> TXT key/values, from every answer heard within `wait_s`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sock.bind((interface, 0))  # a unicast-response port of our own: "legacy" one-shot query
        query = dns.message.make_query(service_type, dns.rdatatype.PTR)
        query.id = 0x5157
        sock.sendto(query.to_wire(), (MDNS_GROUP, MDNS_PORT))
        found: dict[str, dict[str, str]] = {}
        deadline = time.monotonic() + wait_s
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                data, _ = sock.recvfrom(9000)
            except TimeoutError:
                break
            # mDNS compresses names inside NSEC records, which strict DNS forbids: keep going
            _collect(dns.message.from_wire(data, continue_on_error=True), found)
        return found
    finally:
        sock.close()


def _collect(message: dns.message.Message, found: dict[str, dict[str, str]]) -> None:
    for rrset in [*message.answer, *message.additional]:
        if rrset.rdtype != dns.rdatatype.TXT:
            continue
        fields = {}
        for rdata in rrset:
            for chunk in rdata.strings:
                key, _, value = chunk.decode(errors="replace").partition("=")
                fields[key] = value
        found[rrset.name.to_text()] = fields


# --- Hypothesis strategies -----------------------------------------------------------------------


@st.composite
def block_edges(draw: st.DrawFn) -> list[int]:
    """Block boundaries of a model: 0, then 1-12 blocks of 1-4 layers each."""
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=12))
    edges = [0]
    for size in sizes:
        edges.append(edges[-1] + size)
    return edges


# --- sessions by hand: what a client sends a node ----------------------------------------------

SPANS = [(0, 2), (2, 5)]  # stories260K over two nodes


def live(nodes: list[RunningNode]) -> list[tuple[int, int]]:
    return [(len(n.sessions.sessions), n.sessions.cache_bytes) for n in nodes]


def open_message(package: ModelPackage, nodes: list[RunningNode], first: int, spans: Sequence[tuple[int, int]] = SPANS,
                 **fields: object) -> pb.SessionRequest:  # fmt: skip
    route = [pb.Hop(address=n.address, node_id=n.node_id, start=s, end=e)
             for n, (s, e) in zip(nodes, spans, strict=True)][first:]  # fmt: skip
    msg = pb.OpenSession(protocol_version=pb.PROTOCOL_VERSION_CURRENT, session_id="s-" + str(time.monotonic_ns()),
                         package_id=package.package_id, route=route, max_length=64, sampling=pb.Sampling())  # fmt: skip
    for key, value in fields.items():
        if key == "route":
            del msg.route[:]
            msg.route.extend(value)  # type: ignore[arg-type]
        else:
            setattr(msg, key, value)
    return pb.SessionRequest(open=msg)


# --- programs the tests start: a node process, a command in a terminal ---------------------------

NODE_CMD = [sys.executable, "-m", "node.cli", "join", "--host", "127.0.0.1", "--mdns-interface", "127.0.0.1",
            "--announce-interval", "0.5", "--threads", "1", "-v"]  # fmt: skip


# node processes start_node began: the leak check kills (and fails) any a test left running, since
# a node left announcing on 127.0.0.1 would join the next test's swarm
NODE_PROCESSES: list[subprocess.Popen[str]] = []


def start_node(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*NODE_CMD, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    NODE_PROCESSES.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("serving "), (line, proc.stderr.read() if proc.poll() is not None else "")
    proc.serving = line  # type: ignore[attr-defined]  # "serving MODEL layers A:B at ADDRESS as ID"
    return proc


def stop_and_read_stderr(process: subprocess.Popen[str]) -> list[str]:
    """Terminate `process` (e.g. `swarm-client serve`), wait for it, and return what it logged."""
    process.terminate()
    process.wait(timeout=20)
    if process.stderr is None:
        return []
    try:
        return process.stderr.read().splitlines()
    finally:
        process.stderr.close()


# the program's own session, with the pty as its controlling terminal, then the program itself
CONTROLLING_TTY = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                   "os.execv(sys.argv[1], sys.argv[1:])")


class Terminal:
    def __init__(self, args: list[str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-c", CONTROLLING_TTY, *args], stdin=slave, stdout=slave,
                                     stderr=slave, cwd=REPO, close_fds=True, start_new_session=True)  # fmt: skip
        os.close(slave)
        self.screen = ""

    def expect(self, text: str, timeout_s: float = 30.0) -> str:
        """Read until `text` shows up after what was already read; return what came before it."""
        start = len(self.screen)
        deadline = time.monotonic() + timeout_s
        while text not in self.screen[start:]:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out waiting for {text!r}; screen so far:\n{self.screen[start:]}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    self.screen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the program exited
                    break
        assert text in self.screen[start:], self.screen[start:]
        return self.screen[start : self.screen.index(text, start)]

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def interrupt(self) -> None:
        os.write(self.master, b"\x03")  # Ctrl-C: the terminal sends SIGINT to its foreground process group

    def close(self) -> int:
        """The exit code; a program still running after 20 s is killed (a negative code), so that
        an assertion that failed first is the one reported."""
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            os.close(self.master)


async def collect(stream: AsyncIterator[int]) -> list[int]:
    """Every token of an async token stream."""
    return [token async for token in stream]
