"""Emulated network links for tests and benchmarks: a userspace TCP relay in front of each node.

This kernel has no netem, so delay, jitter and loss are added here, in userspace: every chunk a
relay reads is delivered to the other side after the link's one-way delay (plus jitter, never
reordering bytes, as TCP would not), at most at the link's bandwidth. A lost packet on a TCP link
is a retransmission, so `loss` is the chance that a chunk is held for one more retransmission
timeout. Test and bench tooling, not part of the product.

    python -m bench.links 127.0.0.1:7001=127.0.0.1:5001 --delay-ms 5 [--jitter-ms 1] [--mbit 50]

serves one relay per LISTEN=TARGET pair until interrupted. In code, `LinkEmulator` runs relays on
a background thread: `address = links.relay("127.0.0.1:5001", LinkProfile(delay_s=0.005))`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import socket
import socketserver
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

CHUNK_BYTES = 64 * 1024
QUEUED_CHUNKS = 64  # then the relay stops reading: TCP's own backpressure reaches the sender
LINUX_MIN_RTO_S = 0.2


@dataclass(frozen=True)
class LinkProfile:
    delay_s: float = 0.0  # one way; a request and its reply through one relay wait 2x this
    jitter_s: float = 0.0  # uniform extra delay in [0, jitter_s] per chunk
    bandwidth_bps: float | None = None  # bits per second, each direction; None: unlimited
    loss: float = 0.0  # chance a chunk waits one more retransmission timeout
    retransmit_s: float = LINUX_MIN_RTO_S


@dataclass
class Direction:
    """What crossed a relay one way: bytes and the chunks they came in."""

    bytes: int = 0
    chunks: int = 0
    lost: int = 0


@dataclass
class LinkStats:
    forward: Direction = field(default_factory=Direction)  # towards the target
    backward: Direction = field(default_factory=Direction)  # back to whoever connected
    connections: int = 0


class Schedule:
    """When each chunk of one direction arrives: after the delay, in order, at the bandwidth."""

    def __init__(self, profile: LinkProfile, rng: random.Random) -> None:
        self.profile, self.rng = profile, rng
        self.wire_free = 0.0  # when the previous chunk finished serializing
        self.last_arrival = 0.0

    def arrival(self, now: float, size: int, counts: Direction) -> float:
        p = self.profile
        sent = now
        if p.bandwidth_bps:
            sent = max(now, self.wire_free) + size * 8 / p.bandwidth_bps
            self.wire_free = sent
        extra = self.rng.uniform(0.0, p.jitter_s) if p.jitter_s else 0.0
        if p.loss and self.rng.random() < p.loss:
            counts.lost += 1
            extra += p.retransmit_s
        # no reordering: a chunk never overtakes the one before it
        self.last_arrival = max(sent + p.delay_s + extra, self.last_arrival)
        return self.last_arrival


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, schedule: Schedule,
               counts: Direction) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUED_CHUNKS)

    async def deliver() -> None:
        while True:
            at, data = await queue.get()
            if not data:
                return
            await asyncio.sleep(max(0.0, at - loop.time()))
            writer.write(data)
            await writer.drain()

    delivering = asyncio.create_task(deliver())
    try:
        while data := await reader.read(CHUNK_BYTES):
            counts.bytes += len(data)
            counts.chunks += 1
            await queue.put((schedule.arrival(loop.time(), len(data), counts), data))
        await queue.put((0.0, b""))
        await delivering
    finally:
        delivering.cancel()
        with contextlib.suppress(BaseException):  # ended: by the far side, a reset or a cancel
            await delivering
        with contextlib.suppress(Exception):
            writer.close()


class Relay:
    """One listening socket; each connection to it is carried to `target` over the emulated link."""

    def __init__(self, target: str, profile: LinkProfile, seed: int = 0) -> None:
        self.target, self.profile = target, profile
        self.stats = LinkStats()
        self.rng = random.Random(seed)
        self.server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.server = await asyncio.start_server(self._carry, host, port)
        return f"{host}:{self.server.sockets[0].getsockname()[1]}"

    async def _carry(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        host, port = self.target.rsplit(":", 1)
        try:
            target_reader, target_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        self.stats.connections += 1
        pumps = [
            asyncio.create_task(
                pump(client_reader, target_writer, Schedule(self.profile, self.rng), self.stats.forward)
            ),
            asyncio.create_task(
                pump(target_reader, client_writer, Schedule(self.profile, self.rng), self.stats.backward)
            ),
        ]
        try:
            await asyncio.wait(pumps)
        except asyncio.CancelledError:
            pass  # the emulator is closing; a cancelled handler would have start_server log a traceback
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.wait(pumps)
            for task in pumps:  # a reset connection is the link going down, not an error here
                if not task.cancelled():
                    task.exception()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()  # live connections end when the emulator cancels their pumps


class LinkEmulator:
    """Relays on a background thread's event loop, for synchronous tests and benchmarks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="links", daemon=True)
        self.thread.start()
        self.relays: list[Relay] = []

    def relay(self, target: str, profile: LinkProfile, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start a relay in front of `target`; returns the address to dial instead."""
        relay = Relay(target, profile, seed=len(self.relays))
        address = asyncio.run_coroutine_threadsafe(relay.start(host, port), self.loop).result(timeout=10)
        self.relays.append(relay)
        return address

    def stats(self) -> list[LinkStats]:
        return [r.stats for r in self.relays]

    def close(self) -> None:
        async def close_all() -> None:
            for relay in self.relays:
                await relay.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> LinkEmulator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@contextlib.contextmanager
def emulated_links(targets: list[str], profile: LinkProfile) -> Iterator[tuple[list[str], LinkEmulator]]:
    """A relay in front of each target: the addresses to dial, and the emulator (for its counts)."""
    with LinkEmulator() as links:
        yield [links.relay(t, profile) for t in targets], links


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def _ping_pongs(address: str, count: int) -> list[float]:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for i in range(count):
            started = time.perf_counter()
            sock.sendall(bytes([i % 256]) * 16)
            got = b""
            while len(got) < 16:
                got += sock.recv(16 - len(got))
            rtts.append(time.perf_counter() - started)
    return rtts


def measured_one_way_s(profile: LinkProfile, pings: int = 30) -> float:
    """What one crossing of a relay with `profile` takes on this machine beyond loopback: half the
    median ping-pong through it less half the direct one. It includes the relay's own hop and its
    timers' lateness (a sleep wakes up to a millisecond late), so it is the latency a token really
    waits for on the emulated link, which a bound should use rather than the nominal delay."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        echo = f"127.0.0.1:{server.server_address[1]}"
        with LinkEmulator() as links:
            relayed = statistics.median(_ping_pongs(links.relay(echo, profile), pings))
        direct = statistics.median(_ping_pongs(echo, pings))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return max(relayed - direct, 0.0) / 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", metavar="LISTEN=TARGET", help="e.g. 127.0.0.1:7001=127.0.0.1:5001")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per chunk")
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--mbit", type=float, default=None, help="bandwidth each way, Mbit/s")
    p.add_argument("--loss", type=float, default=0.0, help="chance a chunk waits one retransmission timeout")
    args = p.parse_args()
    profile = LinkProfile(args.delay_ms / 1e3, args.jitter_ms / 1e3, args.mbit * 1e6 if args.mbit else None,
                          args.loss)  # fmt: skip

    async def serve() -> None:
        for pair in args.pairs:
            listen, target = pair.split("=", 1)
            host, port = listen.rsplit(":", 1)
            address = await Relay(target, profile).start(host, int(port))
            print(f"relay {address} -> {target}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
