"""The per-token time model (`swarm/latency.py`) against a 3-node swarm on emulated links.

The model's inputs are what a planner would measure: each node's own step time through its span
(`Info.steps_per_s`) and the link's round trip as a ping through the same emulator measures it.
Its prediction, Σ (step + HOP_MS) + links crossed x RTT/2, is held against the median time
between decoded tokens at 0 and 10 ms round trips.

RETURN_PATH is the path the swarm takes by default: the token ring (the last node sends each
sampled token straight to the first, N one-way links per token); the test checks that the extra
round trip adds the ring's links, not the 2(N-1) of the path back up through the stages.
"""

from __future__ import annotations

import socketserver
import statistics
import threading
from collections.abc import Iterator

import pytest

from bench.links import LinkEmulator, LinkProfile, emulated_links
from swarm.client import Swarm
from swarm.generation import GenerationRequest, GenerationStats
from swarm.latency import RETURN_PATHS, ReturnPath, links_crossed, token_time_ms
from swarm.package import ModelPackage
from swarm.routing import PeerView, stage_ms
from tests.conftest import STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS
from tests.helpers import LocalCluster
from tests.unit.test_links import ping_pong_rtts

RETURN_PATH: ReturnPath = "ring"
SPANS = [(0, 2), (2, 3), (3, 5)]
TOKENS = 40
WARM_UP = 3  # the first decode steps after the prefill are slower (caches, thread wake-ups)
RTTS_MS = (0.0, 10.0, 30.0)
# a loaded 2-core machine: generous, and stated. Each run within 2 ms + 20 % of the prediction
# (measured here: 0.5-1.5 ms under it at 0 ms, 2-4 ms over at 10 and 30 ms; the relay's timers wake up to
# 1 ms late on every crossing, which a ping through it shows only in part). What 20 ms more
# round trip adds (30 ms run minus 10 ms run, the constant part of that overshoot cancels):
# within 5 ms of links crossed x 10 ms, half the gap to the next path (ring 3 links, 4 back
# through the stages, 6 via the client)
ABS_MS, SHARE, DELTA_MS = 2.0, 0.20, 5.0


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[str]:
    """A TCP echo on 127.0.0.1, to ping through a relay."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def link_rtt_ms(echo: str, profile: LinkProfile) -> float:
    """The emulated link's round trip as a ping sees it (the relay's own overhead included)."""
    with LinkEmulator() as links:
        return statistics.median(ping_pong_rtts(links.relay(echo, profile), 15)) * 1000


def decode(cluster: LocalCluster, profile: LinkProfile) -> tuple[float, list[PeerView]]:
    """Median ms between decoded tokens through relays of `profile`, and the route taken."""
    with emulated_links(cluster.addresses, profile) as (addresses, _), Swarm(peers=addresses) as swarm:
        stats = GenerationStats()
        request = GenerationRequest(tuple(STORIES_PROMPT_IDS), TOKENS, stop_on_eos=False)
        tokens = list(swarm.generate_ids(request, stats))
        route = swarm.swarm.route()  # the one chain these spans make
    assert tokens == STORIES_REFERENCE_IDS[:TOKENS]
    return statistics.median(stats.step_s[WARM_UP:]) * 1000, route


def predicted_ms(route: list[PeerView], rtt_ms: float, path: ReturnPath) -> float:
    return token_time_ms([stage_ms(p) for p in route], [rtt_ms / 2] * len(route), path)


def test_per_token_time_is_compute_plus_the_links_a_token_crosses(
    cluster: LocalCluster, stories_package: ModelPackage, echo: str
) -> None:
    cluster.start_chain(stories_package.root, SPANS)
    runs = {}
    for rtt_ms in RTTS_MS:
        profile = LinkProfile(delay_s=rtt_ms / 2000)
        measured, route = decode(cluster, profile)
        assert [(p.start, p.end) for p in route] == SPANS
        assert all(p.step_ms > 0 for p in route)  # every node measured itself
        runs[rtt_ms] = measured, link_rtt_ms(echo, profile), route
    summary = {
        rtt: {"measured": round(measured, 2), "link": round(link, 2), "steps": [round(p.step_ms, 3) for p in route]}
        | {path: round(predicted_ms(route, link, path), 2) for path in RETURN_PATHS}
        for rtt, (measured, link, route) in runs.items()
    }
    for measured, link, route in runs.values():
        expected = predicted_ms(route, link, RETURN_PATH)
        assert abs(measured - expected) <= ABS_MS + SHARE * expected, summary
    (slow, slow_link, route), (fast, fast_link, _) = runs[30.0], runs[10.0]
    link_delta = {path: links_crossed(len(route), path) * (slow_link - fast_link) / 2 for path in RETURN_PATHS}
    closest = min(RETURN_PATHS, key=lambda path: abs((slow - fast) - link_delta[path]))
    assert closest == RETURN_PATH, f"the links add {slow - fast:.2f} ms a token, as on {closest!r}: {link_delta}"
    assert abs((slow - fast) - link_delta[RETURN_PATH]) <= DELTA_MS, (slow - fast, link_delta, summary)
    print(summary)  # the table this run measured, shown with pytest -s
