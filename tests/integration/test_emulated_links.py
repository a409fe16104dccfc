"""A swarm on emulated Wi-Fi links (bench/links.py relays in front of every node) stays exact."""

from __future__ import annotations

from bench.links import LinkProfile, emulated_links
from swarm.client import Swarm
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
