"""A swarm on emulated Wi-Fi links (bench/links.py relays in front of every node) stays exact."""

from __future__ import annotations

import pytest

from bench.links import LinkProfile, emulated_links
from swarm.client import Swarm
from swarm.errors import SwarmError
from swarm.generation import GenerationRequest, GenerationStats
from swarm.package import ModelPackage
from tests.conftest import STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS
from tests.helpers import LocalCluster

SPANS = [(0, 2), (2, 3), (3, 5)]
ONE_WAY_S = 0.005  # 10 ms round trip on every hop


def test_a_three_node_swarm_on_10ms_links_gives_the_reference_tokens(
    cluster: LocalCluster, stories_package: ModelPackage
) -> None:
    cluster.start_chain(stories_package.root, SPANS)
    with emulated_links(cluster.addresses, LinkProfile(delay_s=ONE_WAY_S)) as (addresses, links):
        stats = GenerationStats()
        with Swarm(peers=addresses) as swarm:
            request = GenerationRequest(tuple(STORIES_PROMPT_IDS), 20, stop_on_eos=False)
            tokens = list(swarm.generate_ids(request, stats))
        crossed = links.stats()
    assert tokens == STORIES_REFERENCE_IDS[:20]
    # every hop went through its relay: the client dialled the first node's, each node the next one's
    assert all(s.forward.bytes > 0 and s.backward.bytes > 0 for s in crossed), crossed
    # and the delay applied: a token waits at least for each of the three links it crosses one way
    assert min(stats.step_s) >= 3 * ONE_WAY_S, stats.step_s


def relayed_bytes(cluster: LocalCluster, wire_dtype: str, tokens: int) -> tuple[list[int], int]:
    """Greedy tokens through the running chain, and the bytes its hops carried towards the last node."""
    with emulated_links(cluster.addresses, LinkProfile()) as (addresses, links):
        with Swarm(peers=addresses, wire_dtype=wire_dtype) as swarm:
            request = GenerationRequest(tuple(STORIES_PROMPT_IDS), tokens, stop_on_eos=False)
            ids = list(swarm.generate_ids(request))
        # what reached the second and third nodes: the hidden states (the first node gets token ids)
        return ids, sum(s.forward.bytes for s in links.stats()[1:])


def test_float16_hidden_states_halve_the_bytes_on_the_wire(
    cluster: LocalCluster, stories_package: ModelPackage
) -> None:
    cluster.start_chain(stories_package.root, SPANS)
    exact, float32_bytes = relayed_bytes(cluster, "float32", 40)
    half, float16_bytes = relayed_bytes(cluster, "float16", 40)
    assert exact == STORIES_REFERENCE_IDS[:40]
    assert half == exact  # stories260K's greedy tokens survive the rounding at both stage boundaries
    # two bytes saved per hidden value: (prompt + 39 decode positions) x 64 values x 2 hops; the
    # framing around them (sealed frames, HTTP/2) is the same, so it is all that changes
    saved = (len(STORIES_PROMPT_IDS) + 39) * 64 * 2 * 2
    assert abs((float32_bytes - float16_bytes) - saved) < 0.03 * saved, (float32_bytes, float16_bytes, saved)


@pytest.mark.parametrize(("wire", "per_value", "per_position"), [("bfloat16", 2, 0), ("int8", 1, 4)])
def test_compact_encodings_carry_what_they_promise(cluster: LocalCluster, stories_package: ModelPackage, wire: str,
                                                   per_value: int, per_position: int) -> None:  # fmt: skip
    cluster.start_chain(stories_package.root, SPANS)
    exact, float32_bytes = relayed_bytes(cluster, "float32", 40)
    compact, compact_bytes = relayed_bytes(cluster, wire, 40)
    positions = (len(STORIES_PROMPT_IDS) + 39) * 2  # hidden vectors that crossed the two hops
    saved = positions * (64 * (4 - per_value) - per_position)
    assert abs((float32_bytes - compact_bytes) - saved) < 0.03 * saved, (float32_bytes, compact_bytes, saved)
    assert compact == exact  # stories260K's greedy tokens survive both roundings (SmolLM2's: bench_wire)


def test_an_unknown_wire_dtype_is_refused(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    cluster.start_chain(stories_package.root, SPANS)
    with (
        Swarm(peers=cluster.addresses, wire_dtype="int3") as swarm,
        pytest.raises(SwarmError, match="wire dtype 'int3'"),
    ):
        swarm.generate("Once upon a time", max_tokens=2)
