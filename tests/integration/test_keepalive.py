"""An idle connection stays up without gRPC's own complaints, and those never reach a CLI user.

Each case is a process of its own (gRPC reads GRPC_VERBOSITY once, when first imported): a server
with the nodes' options, a channel with the clients', one call, then idle through several
keepalive intervals (shortened to fractions of a second)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from tests.conftest import REPO

IDLE_S = 4.0

SCRIPT = """
import asyncio, sys
{prelude}
import grpc
from swarm._proto import swarm_pb2 as pb, swarm_pb2_grpc as pb_grpc
from swarm.transport import Keepalive, channel_options, server_options

async def main(client_s: float, server_s: float, idle_s: float) -> None:
    server = grpc.aio.server(options=server_options(keepalive=Keepalive(time_s=server_s, timeout_s=5)))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    options = channel_options(keepalive=Keepalive(time_s=client_s, timeout_s=5))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{{port}}", options=options) as channel:
        try:
            await pb_grpc.SwarmNodeStub(channel).Health(pb.HealthRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:  # no servicer here: the connection is what is tested
            assert exc.code() == grpc.StatusCode.UNIMPLEMENTED, exc
        await asyncio.sleep(idle_s)
        print(channel.get_state(try_to_connect=False).name)
    await server.stop(0)

asyncio.run(main(*map(float, sys.argv[1:])))
"""


@dataclass
class Idle:
    state: str  # the channel's state after idling: READY, or IDLE once the server sent it away
    stderr: str


def start(client_s: float, server_s: float, prelude: str = "",
          verbosity: str | None = "DEBUG") -> subprocess.Popen[str]:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    if verbosity is not None:
        env["GRPC_VERBOSITY"] = verbosity
    code = SCRIPT.format(prelude=prelude)
    return subprocess.Popen([sys.executable, "-c", code, str(client_s), str(server_s), str(IDLE_S)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> Idle:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return Idle(out.strip(), err)


def test_idle_channels_stay_up_quietly_and_the_clis_silence_grpc() -> None:
    # side by side, so the three idle periods overlap
    aligned = start(client_s=0.5, server_s=0.5)  # the policy every node and client uses, at 1/40 of its times
    # a server that accepts one ping per 5 minutes, gRPC's default and what nodes had before
    eager = start(client_s=0.5, server_s=600)
    # the same mismatch in a process prepared as every CLI prepares its own, GRPC_VERBOSITY unset
    prepared = start(0.5, 600, prelude="from swarm.console import prepare_process; prepare_process()", verbosity=None)
    aligned_run, eager_run, prepared_run = finish(aligned), finish(eager), finish(prepared)

    assert aligned_run.state == "READY"
    assert "too_many_pings" not in aligned_run.stderr and "GOAWAY" not in aligned_run.stderr, aligned_run.stderr
    # the harness does see the failure it looks for
    assert eager_run.state == "IDLE" and "too_many_pings" in eager_run.stderr, eager_run
    assert prepared_run.state == "IDLE" and prepared_run.stderr == ""


def test_the_cli_modules_do_not_load_grpc_before_main_runs() -> None:
    """Else prepare_process() would come too late: gRPC reads its verbosity when first imported."""
    code = "import sys, swarm, swarm.apps.cli, node.cli, export.cli\nprint(sorted({'grpc'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
