"""Origins of sessions, peers of an open swarm and rate-limited warnings, without a network."""

from __future__ import annotations

import logging

import pytest

from node.admission import Admission, peer_host
from node.decoding import RateLimitedWarnings
from swarm._proto import swarm_pb2 as pb
from swarm.auth import NO_X25519, Credentials, Proof
from swarm.errors import AuthenticationError, CapacityExceeded, InvalidRequest
from swarm.keys import Identity, SwarmKey
from swarm.origin import session_origin, sign_origin

KEY = SwarmKey(bytes(range(32)))


def member() -> Credentials:
    return Credentials(KEY, Identity.generate())


def opening(route: list[Credentials], session_id: str = "s1") -> pb.OpenSession:
    hops = [pb.Hop(address=f"127.0.0.1:{7000 + n}", node_id=c.node_id, start=n, end=n + 1) for n, c in enumerate(route)]
    return pb.OpenSession(session_id=session_id, package_id="a" * 64, route=hops)


def handed_on(msg: pb.OpenSession, hops: int = 1) -> pb.OpenSession:
    """`msg` as a relay forwards it, `hops` nodes down the route."""
    forwarded = pb.OpenSession()
    forwarded.CopyFrom(msg)
    del forwarded.route[:hops]
    return forwarded


def test_every_hop_counts_the_session_against_the_client_that_signed_it() -> None:
    client, a, b, c = member(), member(), member(), member()
    msg = opening([a, b, c])
    sign_origin(client, msg)
    assert session_origin(a, msg, caller=client.node_id) == client.node_id
    assert session_origin(b, handed_on(msg), caller=a.node_id) == client.node_id
    assert session_origin(c, handed_on(msg, 2), caller=b.node_id) == client.node_id


@pytest.mark.parametrize("attack", ["replayed", "another caller", "another session", "another route",
                                    "not through this node", "first hop from another caller"])  # fmt: skip
def test_an_origin_is_good_for_its_own_session_route_and_callers_only(attack: str) -> None:
    client, a, b, relay = member(), member(), member(), member()
    msg = opening([a, b])
    sign_origin(client, msg)
    hop, caller, received = b, a.node_id, handed_on(msg)
    expected = "was already used"
    if attack == "replayed":  # the relay opens a second session at b with the statement it relayed
        session_origin(b, handed_on(msg), caller=a.node_id)
    elif attack == "another caller":  # a member that is not the hop before b on the signed route
        caller, expected = relay.node_id, f"session brought by {relay.node_id}, but its signed route has {a.node_id}"
    elif attack == "another session":
        received.session_id, expected = "s2", "made for another request, not for this session"
    elif attack == "another route":  # the relay names itself as the hop before b
        received.origin.route[0], caller = relay.node_id, relay.node_id
        expected = "made for another request, not for this session"
    elif attack == "not through this node":
        hop, expected = relay, "signed for another route"
    else:
        hop, received, caller, expected = a, msg, relay.node_id, f"session brought by {relay.node_id}"
    with pytest.raises(AuthenticationError, match=expected):
        session_origin(hop, received, caller=caller)


def test_a_session_without_origin_counts_against_its_caller_and_is_never_relayed() -> None:
    caller, a, b = member(), member(), member()
    assert session_origin(b, opening([b]), caller=caller.node_id) == caller.node_id  # it ends here
    with pytest.raises(InvalidRequest, match="must carry its origin"):
        session_origin(a, opening([a, b]), caller=caller.node_id)


def test_a_relay_is_not_held_back_by_its_clients_sessions() -> None:
    relay, node = member(), member()
    admission = Admission(node, max_calls_per_s=1, max_sessions_per_peer=2)  # bursts of 2 calls
    relayed = Proof(relay.node_id, relay.identity.public_bytes, NO_X25519, b"")

    def relay_for(client: Credentials, session_id: str) -> str:
        msg = opening([relay, node], session_id)
        sign_origin(client, msg)
        return admission.open_session(handed_on(msg), relayed, "ipv4:127.0.0.1:7000")

    clients = [member() for _ in range(5)]  # five clients' sessions: more than any one peer's allowance
    assert [relay_for(c, f"s{n}") for n, c in enumerate(clients)] == [c.node_id for c in clients]
    assert admission.sessions.held(relay.node_id) == 0
    relay_for(clients[0], "again")
    with pytest.raises(CapacityExceeded, match=f"too many messages from {clients[0].node_id}"):
        relay_for(clients[0], "and again")  # one client's own opens are still bounded


@pytest.mark.parametrize(("peer", "host"), [
    ("ipv4:192.168.1.20:51234", "ipv4:192.168.1.20"),
    ("ipv6:[fe80::1%25eth0]:7000", "ipv6:[fe80::1%25eth0]"),
    ("ipv6:%5B::1%5D:40000", "ipv6:%5B::1%5D"),
    ("unix:/run/swarm.sock", "unix:/run/swarm.sock"),
])  # fmt: skip
def test_an_open_swarm_peer_is_its_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_warnings_are_one_line_per_key_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    warnings = RateLimitedWarnings(logging.getLogger("test.warnings"), interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.warnings"):
        for _ in range(5):
            warnings.warn("ipv4:10.0.0.2", "bad bytes from 10.0.0.2")
            now[0] += 1
        warnings.warn("ipv4:10.0.0.3", "bad bytes from 10.0.0.3")  # another peer is not held back
        now[0] = 161.0
        warnings.warn("ipv4:10.0.0.2", "bad bytes from 10.0.0.2")
    assert [r.getMessage() for r in caplog.records] == [
        "bad bytes from 10.0.0.2", "bad bytes from 10.0.0.3",
        "bad bytes from 10.0.0.2 (4 more like it in the 61s since the last line)",
    ]  # fmt: skip
