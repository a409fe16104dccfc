"""Who opened a session: a statement signed by the client and checked by every hop of its route.

A node that relays a session did not ask for it: counting the session against the relay would let
one client's sessions exhaust a downstream node for everyone else behind the same relay. So the
client signs an origin statement for the session (its id, its model and the node ids of the whole
route), relays pass it on unchanged, and each hop counts the session against the client it names.
A hop takes the statement only when it is
- made by a member (HMAC) with the key it names (signature), fresh, and new to this hop (a hop
  sees each statement once: a route visits a node once);
- made for this session: the route it names ends with the route this hop was handed, which
  starts at this node;
- brought by the right caller: the client itself when this node is the route's first hop, else
  the hop before this one on the signed route.
So a relay can neither lend a client's statement to another session, node or caller, nor make
statements for clients whose keys it does not hold. Like any member, it can make up identities of
its own and sign for them (docs/SECURITY.md says what that allows).
"""

from __future__ import annotations

import json

from swarm._proto import swarm_pb2 as pb
from swarm.auth import Credentials
from swarm.errors import AuthenticationError, InvalidRequest

MAX_ROUTE_HOPS = 256  # node ids a signed route may name


def _described(session_id: str, package_id: str, route: list[str]) -> bytes:
    return json.dumps([session_id, package_id, route], separators=(",", ":")).encode()


def sign_origin(credentials: Credentials, opening: pb.OpenSession) -> None:
    """Sign `opening`, whose route is the whole route, as a session `credentials`' identity opens."""
    route = [hop.node_id for hop in opening.route]
    credential = credentials.origin(_described(opening.session_id, opening.package_id, route))
    opening.origin.CopyFrom(pb.Origin(credential=credential, route=route))


def session_origin(credentials: Credentials, opening: pb.OpenSession, caller: str) -> str:
    """The node id of the client that opened the session `opening` asks this node to join, as
    brought by `caller` (an authenticated node id): the one to count the session against."""
    if not opening.HasField("origin"):
        if len(opening.route) > 1:
            raise InvalidRequest("a session that goes on past this node must carry its origin, signed by the client")
        return caller  # it ends here: whoever calls is the one asking
    signed = list(opening.origin.route)
    handed = [hop.node_id for hop in opening.route]
    if len(signed) > MAX_ROUTE_HOPS:
        raise InvalidRequest(f"the origin's route names {len(signed)} hops (at most {MAX_ROUTE_HOPS})")
    here = len(signed) - len(handed)
    if not handed or here < 0 or signed[here:] != handed or signed[here] != credentials.node_id:
        raise AuthenticationError("the session's origin statement was signed for another route, not one through "
                                  f"this node {credentials.node_id}")  # fmt: skip
    described = _described(opening.session_id, opening.package_id, signed)
    origin = credentials.check_origin(opening.origin.credential, described)
    expected = origin.node_id if here == 0 else signed[here - 1]
    if caller != expected:
        raise AuthenticationError(f"session brought by {caller}, but its signed route has {expected} "
                                  "bring it here: an origin statement is good for its own route only")  # fmt: skip
    return origin.node_id
