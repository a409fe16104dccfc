"""Nodes' Prometheus metrics: the endpoint parses, and counts what a generation did."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.server import RunningNode
from swarm import Swarm
from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.client import AsyncSwarm
from swarm.generation import GenerationRequest, GenerationStats
from swarm.package import ModelPackage
from tests.conftest import STORIES_PROMPT_IDS
from tests.helpers import LocalCluster, wait_until

TOKENS = 8
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(node: RunningNode, path: str = "/metrics") -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}{path}", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def session_ended(samples: Samples, first: bool) -> bool:
    """No session holds a cache, and its Session streams have ended (with any status): one on each
    node, and at the `first` node the token ring's return link from the last node too."""
    streams = sum(v for (name, labels), v in samples.items()
                  if name == "swarm_node_rpcs_total" and ("method", "Session") in labels)  # fmt: skip
    return value(samples, "swarm_node_active_sessions") == 0 and streams == (2 if first else 1)


def all_ended(nodes: list[RunningNode]) -> bool:
    return all(session_ended(scrape(n), first=i == 0) for i, n in enumerate(nodes))


def test_metrics_count_the_tokens_of_a_generation(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    nodes = cluster.start_chain(stories_package.root, [(0, 2), (2, 5)], metrics_port=0)
    assert all(node.metrics_port for node in nodes)
    with Swarm(peers=cluster.addresses) as swarm:
        ids = list(swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), TOKENS, stop_on_eos=False)))
    assert len(ids) == TOKENS

    deadline = time.monotonic() + 5
    while not all_ended(nodes) and time.monotonic() < deadline:
        time.sleep(0.02)  # the session closes on each node as its stream ends
    for index, node in enumerate(nodes):  # every step went through both nodes: one token per step
        samples = scrape(node)
        assert value(samples, "swarm_node_tokens_total") == TOKENS
        assert value(samples, "swarm_node_step_seconds_count") == TOKENS
        assert 0 < value(samples, "swarm_node_step_seconds_sum") < 10
        assert value(samples, "swarm_node_step_seconds_bucket", le="+Inf") == TOKENS
        assert session_ended(samples, first=index == 0)
        assert value(samples, "swarm_node_received_bytes_total", method="Session") > 0
        assert value(samples, "swarm_node_sent_bytes_total", method="Session") > 0
        assert value(samples, "swarm_node_memory_used_bytes") > 0
    # the first node pushed hidden states to the second: far more bytes than the tokens coming back
    assert value(scrape(nodes[1]), "swarm_node_received_bytes_total", method="Session") > 100 * TOKENS


def test_step_time_is_the_time_per_token_when_the_first_node_loops_tokens_itself(
    cluster: LocalCluster, stories_package: ModelPackage
) -> None:
    # the first node feeds each sampled token back in itself (Step.follow): one request, many replies
    nodes = cluster.start_chain(stories_package.root, [(0, 2), (2, 5)], metrics_port=0)
    tokens = 60

    async def timed_generation() -> list[float]:
        swarm = await AsyncSwarm.connect(cluster.addresses, mdns=False)
        try:
            request = GenerationRequest(tuple(STORIES_PROMPT_IDS), tokens, stop_on_eos=False)
            return [time.perf_counter() async for _ in swarm.text.generate_ids(request, GenerationStats())]
        finally:
            await swarm.close()

    arrivals = asyncio.run(timed_generation())
    assert len(arrivals) == tokens
    tpot = (arrivals[-1] - arrivals[0]) / (tokens - 1)  # as the client measures it
    assert wait_until(lambda: all_ended(nodes), 5)
    first = scrape(nodes[0])
    assert value(first, "swarm_node_step_seconds_count") == tokens
    step = value(first, "swarm_node_step_seconds_sum") / tokens
    # time since the prompt (what was measured before) averages ~tokens/2 x TPOT here
    assert tpot / 2 <= step <= 2 * tpot, f"metric says {step * 1000:.2f} ms per step, the client saw {tpot * 1000:.2f}"
    last = scrape(nodes[1])  # the last node's step is its own compute: a part of the first node's
    assert 0 < value(last, "swarm_node_step_seconds_sum") / tokens <= 2 * tpot


def test_metrics_count_errors_by_kind(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    node = cluster.start(stories_package.root, metrics_port=0)

    async def anonymous_info() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(node.address) as channel:
            try:
                await pb_grpc.SwarmNodeStub(channel).Info(pb.InfoRequest(), timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    assert asyncio.run(anonymous_info()) == grpc.StatusCode.UNAUTHENTICATED  # no swarm credential
    # the node counts the call as its handler ends, which may be just after the client has the answer
    errors = {"method": "Info", "kind": "UNAUTHENTICATED"}
    wait_until(lambda: value(scrape(node), "swarm_node_errors_total", **errors) >= 1, timeout_s=5)
    samples = scrape(node)
    assert value(samples, "swarm_node_errors_total", **errors) == 1
    assert value(samples, "swarm_node_rpcs_total", method="Info", code="UNAUTHENTICATED") == 1
    with pytest.raises(urllib.error.HTTPError, match="404"):
        scrape(node, "/elsewhere")


def test_no_metrics_port_no_endpoint(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    node = cluster.start(stories_package.root)
    assert node.metrics is None and node.metrics_port is None
