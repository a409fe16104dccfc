"""The floor under a swarm's per-token time: one round trip between two processes on loopback.

    python bench/bench_transport.py [--messages 3000] [--rounds 3]

A 2-node swarm moves one hidden state A -> B and one token B -> A per generated token, so its
time per token is at least the local runner's plus one round trip of the transport. This
measures that round trip for a grpc.aio bidirectional stream (what nodes speak) and, for
comparison, for plain length-prefixed frames over an asyncio TCP socket, each as an echo
between two processes carrying a stories260K-sized hidden state (64 floats) in our Step
message. Writes the "transport" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import replace_section  # noqa: E402
from swarm._proto import swarm_pb2 as pb  # noqa: E402
from swarm._proto import swarm_pb2_grpc as pb_grpc  # noqa: E402
from swarm.tensors import to_wire  # noqa: E402
from swarm.transport import channel_options, server_options  # noqa: E402

HIDDEN = pb.SessionRequest(step=pb.Step(step=1, position=70, hidden=to_wire(np.ones((1, 1, 64), np.float32))))
TOKEN = pb.SessionReply(result=pb.StepResult(step=1, token=432))


class Echo(pb_grpc.SwarmNodeServicer):
    async def Session(self, requests: AsyncIterator[pb.SessionRequest], context: Any) -> AsyncIterator[pb.SessionReply]:
        async for _ in requests:
            yield TOKEN


async def serve_grpc(port: int) -> None:
    server = grpc.aio.server(options=server_options())
    pb_grpc.add_SwarmNodeServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def serve_tcp(port: int) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reply = TOKEN.SerializeToString()
        try:
            while True:
                (size,) = struct.unpack("<I", await reader.readexactly(4))
                pb.SessionRequest.FromString(await reader.readexactly(size))
                writer.write(struct.pack("<I", len(reply)) + reply)
        except asyncio.IncompleteReadError:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", port)
    await server.serve_forever()


async def time_grpc(port: int, messages: int) -> list[float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options()) as channel:
        call = pb_grpc.SwarmNodeStub(channel).Session()
        times = []
        for _ in range(messages):
            started = time.perf_counter()
            await call.write(HIDDEN)
            await call.read()
            times.append(time.perf_counter() - started)
        call.cancel()
        return times


async def time_tcp(port: int, messages: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(messages):
        started = time.perf_counter()
        body = HIDDEN.SerializeToString()
        writer.write(struct.pack("<I", len(body)) + body)
        (size,) = struct.unpack("<I", await reader.readexactly(4))
        pb.SessionReply.FromString(await reader.readexactly(size))
        times.append(time.perf_counter() - started)
    writer.close()
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def round_trip_us(kind: str, messages: int) -> float:
    """Median round trip, echo server in a process of its own."""
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port)], cwd=REPO)
    try:
        for _ in range(100):  # bounded wait for the server to listen
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        timer = time_grpc if kind == "grpc" else time_tcp
        times = asyncio.run(timer(port, messages))
    finally:
        server.kill()
        server.wait()
    return statistics.median(times[messages // 10 :]) * 1e6  # the first tenth warms up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)  # internal: KIND PORT
    args = p.parse_args()
    if args.serve:
        kind, port = args.serve[0], int(args.serve[1])
        asyncio.run(serve_grpc(port) if kind == "grpc" else serve_tcp(port))
        return
    rounds: dict[str, list[float]] = {"grpc": [], "tcp": []}
    for _ in range(args.rounds):
        for kind in rounds:
            rounds[kind].append(round_trip_us(kind, args.messages))
    result = {kind: round(statistics.median(values), 1) for kind, values in rounds.items()}
    result_rounds = {kind: [round(v, 1) for v in values] for kind, values in rounds.items()}
    print(json.dumps({"median_us": result, "rounds_us": result_rounds}))
    command = ("python bench/bench_transport.py " + " ".join(sys.argv[1:])).strip()
    lines = [
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}; echo of a 64-float hidden state in a Step message "
        f"and a token back, between two processes on 127.0.0.1; median of {args.messages} messages, "
        f"median over {args.rounds} rounds).",
        "",
        "| transport | round trip µs | rounds |",
        "| --- | ---: | --- |",
        f"| grpc.aio bidirectional stream (what nodes speak) | {result['grpc']:.0f} | {result_rounds['grpc']} |",
        f"| length-prefixed frames on an asyncio TCP socket | {result['tcp']:.0f} | {result_rounds['tcp']} |",
    ]
    replace_section(REPO / "docs" / "BENCHMARKS.md", "transport", "\n".join(lines))


if __name__ == "__main__":
    main()
