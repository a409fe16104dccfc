"""The link emulator measures what it was set to: the RTT, the bandwidth, order under jitter."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from bench.links import LinkEmulator, LinkProfile


@pytest.fixture
def echo() -> Iterator[str]:
    """A TCP echo server on 127.0.0.1 (a thread per connection)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    server.close()


def dial(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def receive(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        got += sock.recv(size - len(got))
    return got


def ping_pong_rtts(address: str, count: int) -> list[float]:
    with dial(address) as sock:
        rtts = []
        for i in range(count):
            start = time.perf_counter()
            sock.sendall(bytes([i % 256]) * 16)
            assert receive(sock, 16) == bytes([i % 256]) * 16
            rtts.append(time.perf_counter() - start)
        return rtts


def test_a_ping_pong_measures_the_rtt_it_was_set_to(echo: str) -> None:
    with LinkEmulator() as links:
        direct = statistics.median(ping_pong_rtts(echo, 20))
        relayed = statistics.median(ping_pong_rtts(links.relay(echo, LinkProfile(delay_s=0.010)), 20))
    # 10 ms each way: 20 ms round trip, plus what loopback and the relay's own hop take
    assert 0.020 <= relayed - direct < 0.028, (direct, relayed)


def test_bandwidth_is_limited_to_what_was_set(echo: str) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB
    with LinkEmulator() as links, dial(links.relay(echo, LinkProfile(bandwidth_bps=8e6))) as sock:
        start = time.perf_counter()
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert receive(sock, len(payload)) == payload
        took = time.perf_counter() - start
        sender.join()
    # both ways at 8 Mbit/s, pipelined: the one-way serialization time, 0.262 s, and not much more
    assert 0.25 <= took < 0.40, took


def test_jitter_never_reorders_bytes(echo: str) -> None:
    profile = LinkProfile(delay_s=0.002, jitter_s=0.004)
    with LinkEmulator() as links, dial(links.relay(echo, profile)) as sock:
        pieces = [i.to_bytes(4, "big") for i in range(300)]
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.0005)  # separate chunks, each with its own jitter
        assert receive(sock, 4 * len(pieces)) == b"".join(pieces)


def test_the_relay_counts_what_crossed_it(echo: str) -> None:
    with LinkEmulator() as links:
        rtts = ping_pong_rtts(links.relay(echo, LinkProfile()), 5)
        time.sleep(0.05)  # the last reply's count lands as it is delivered
        (stats,) = links.stats()
    assert len(rtts) == 5 and stats.connections == 1
    assert stats.forward.bytes == stats.backward.bytes == 5 * 16
    assert stats.forward.chunks == stats.backward.chunks == 5


def test_loss_holds_a_chunk_for_a_retransmission(echo: str) -> None:
    profile = LinkProfile(loss=1.0, retransmit_s=0.05)
    with LinkEmulator() as links:
        relayed = statistics.median(ping_pong_rtts(links.relay(echo, profile), 5))
        (stats,) = links.stats()
    assert relayed >= 0.1  # one retransmission each way
    assert stats.forward.lost == stats.backward.lost == 5


def test_a_target_that_is_down_closes_the_connection() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{unused.getsockname()[1]}"
    with LinkEmulator() as links, dial(links.relay(dead, LinkProfile())) as sock:
        assert sock.recv(1) == b""


def test_the_emulator_leaves_no_task_behind(echo: str) -> None:
    links = LinkEmulator()
    ping_pong_rtts(links.relay(echo, LinkProfile(delay_s=0.001)), 3)
    links.close()
    assert links.loop.is_closed() and not links.thread.is_alive()
