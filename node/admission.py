"""Who is calling this node, and how much they may take.

Every call's credential is checked here (swarm/auth.py): a member's, made for this node and for
this very request, fresh and never seen before. Limits count who is asking: a unary call counts
against its caller; a session counts against the client that opened it, whose signed origin
(swarm/origin.py) every hop checks, not against the node relaying it — so one client cannot use
up a downstream node's share for everyone behind the same relay, and a relay is not held back by
its own clients' sessions. An open swarm proves nothing: there a peer is its host address (not
its host and port, which a new connection would change).

What a session may ask is checked here too, before anything is counted or held: the opening
(protocol, model, route shape, this node's place in it), following on, and each step's order.
"""

from __future__ import annotations

import itertools

import grpc

from node.ratelimit import PeerRates, PeerSessions
from node.sessions import NodeSession
from swarm._proto import swarm_pb2 as pb
from swarm.auth import Credentials, Proof, new_exchange, session_keys
from swarm.errors import InvalidRequest, StaleRoute, SwarmError
from swarm.frames import Frames, PlainFrames, SealedFrames
from swarm.keys import NODE_ID_HEX, is_node_id
from swarm.origin import session_origin
from swarm.span import SpanRuntime
from swarm.speculative import MAX_DRAFTS
from swarm.tensors import HIDDEN_WIRE_DTYPES
from swarm.transport import request_bytes, status_for

PROTOCOL_VERSION = pb.PROTOCOL_VERSION_CURRENT
WIRE_HIDDEN_DTYPES = frozenset({"", *HIDDEN_WIRE_DTYPES})  # "" = float32
MAX_STOP_IDS = 64  # end-of-sequence ids a following step may name
MAX_ADDRESS_CHARS = 255  # host:port of a hop


def peer_host(peer: str) -> str:
    """`ipv4:10.0.0.2:51234` -> `ipv4:10.0.0.2` (ipv6 likewise): every connection of one host is one peer."""
    scheme, _, rest = peer.partition(":")
    if scheme in ("ipv4", "ipv6") and ":" in rest:
        return f"{scheme}:{rest.rpartition(':')[0]}"
    return peer


class Admission:
    """Checks callers and keeps the per-peer limits of one node."""

    def __init__(self, credentials: Credentials | None, max_calls_per_s: float, max_sessions_per_peer: int) -> None:
        self.credentials = credentials  # None = an open swarm: no authentication, plain frames
        self.rates = PeerRates(max_calls_per_s, 2 * max_calls_per_s)
        self.sessions = PeerSessions(max_sessions_per_peer)

    async def unary(self, context: grpc.aio.ServicerContext, method: str, request: object) -> Proof | None:
        """Admit a unary (or server-streaming) call, answering it with this node's credential, or
        end it with the status its error stands for."""
        try:
            return await self._unary(context, method, request)
        except SwarmError as exc:
            await context.abort(status_for(exc), str(exc))
            raise  # abort always raises; this tells the type checker so

    async def _unary(self, context: grpc.aio.ServicerContext, method: str, request: object) -> Proof | None:
        credentials = self.credentials
        if credentials is None:
            self.rates.take(peer_host(context.peer()))
            return None
        proof = credentials.check_call(context.invocation_metadata(), method, request_bytes(request))
        self.rates.take(proof.node_id)
        await context.send_initial_metadata(credentials.reply(method, proof)[0])
        return proof

    async def handshake(self, context: grpc.aio.ServicerContext) -> tuple[Proof | None, Frames]:
        """The caller of a session stream and the frames to speak with it: keys from the caller's
        X25519 key and a fresh one of ours. Limits wait for the opening, which names the origin."""
        credentials = self.credentials
        if credentials is None:
            return None, PlainFrames()
        caller = credentials.check_call(context.invocation_metadata(), "Session")
        private, x_public = new_exchange()
        metadata, transcript = credentials.reply("Session", caller, x_public)
        keys = session_keys(credentials.key, private, caller.x_public, caller.transcript, transcript, caller=False)
        await context.send_initial_metadata(metadata)
        return caller, SealedFrames(keys, caller=False)

    def open_session(self, opening: pb.OpenSession, caller: Proof | None, peer: str) -> str:
        """Count a session opening against the client it comes from (`peer` is gRPC's view of the
        connection); returns the key to `close_session` with. Raises when over a limit."""
        if self.credentials is None or caller is None:
            origin = peer_host(peer)
        else:
            origin = session_origin(self.credentials, opening, caller.node_id)
        self.rates.take(origin)
        self.sessions.acquire(origin)
        return origin

    def close_session(self, origin: str) -> None:
        self.sessions.release(origin)


# --- what a session may ask ----------------------------------------------------------------


def check_open(request: pb.SessionRequest, span: SpanRuntime, node_id: str, keyed: bool) -> pb.OpenSession:
    """The opening of a session stream, checked against this node (`node_id`, serving `span`) before
    anything is counted or held. `keyed`: in a keyed swarm every later hop must name its node."""
    if request.WhichOneof("kind") != "open":
        raise InvalidRequest("a session stream must start with OpenSession")
    msg = request.open
    if msg.protocol_version != PROTOCOL_VERSION:
        raise InvalidRequest(f"protocol version {msg.protocol_version}; this node speaks {PROTOCOL_VERSION}")
    if msg.package_id != span.package.package_id:
        raise InvalidRequest(
            f"this node serves model {span.package.package_id[:16]}, not {msg.package_id[:16]}"
        )
    if not 0 < len(msg.session_id) <= 64:
        raise InvalidRequest("session id must be 1 to 64 characters")
    if msg.wire_dtype not in WIRE_HIDDEN_DTYPES:
        raise InvalidRequest(f"wire dtype {msg.wire_dtype[:16]!r} is not one of {sorted(WIRE_HIDDEN_DTYPES - {''})}")
    route = list(msg.route)
    if not route or len(route) > span.arch.num_layers:
        raise InvalidRequest(f"route must have 1 to {span.arch.num_layers} hops, got {len(route)}")
    me = route[0]
    if (me.start, me.end) != (span.start, span.end) or me.node_id not in ("", node_id):
        raise StaleRoute(
            f"route sends layers [{me.start}, {me.end}) of node {me.node_id or '?'} here; this node is "
            f"{node_id} with layers [{span.start}, {span.end})"
        )
    for hop, following in itertools.pairwise(route):
        if hop.end != following.start:
            raise InvalidRequest("route hops must chain: each hop starts where the previous one ends")
    _check_private(msg, span)
    end = span.arch.num_layers - msg.client_layers  # a private session's client runs the layers past it
    if route[-1].end != end:
        raise InvalidRequest(f"route must end at layer {end}")
    if keyed:  # the next hop's credential is made for that node only
        for number, hop in enumerate(route[1:], start=2):
            if not is_node_id(hop.node_id):
                raise InvalidRequest(f"route hop {number} must name its node id ({NODE_ID_HEX} hex digits)")
    _check_ring(msg, span, node_id, keyed)
    return msg


def roles(msg: pb.OpenSession, span: SpanRuntime) -> tuple[bool, bool]:
    """Whether this node is the first of the session's route (it takes the client's input) and
    whether it is the last (it answers each step). In a private session the route covers
    [client_layers, L - client_layers): its ends need not be the model's."""
    if msg.private:
        return span.start == msg.client_layers, span.end == span.arch.num_layers - msg.client_layers
    return span.is_first, span.is_last


def _check_private(msg: pb.OpenSession, span: SpanRuntime) -> None:
    """A private session names no sampling, asks for no logits, and leaves the route at least a layer."""
    if not msg.private:
        if msg.client_layers:
            raise InvalidRequest("client_layers belongs to private sessions only")
        return
    if 2 * msg.client_layers >= span.arch.num_layers:
        raise InvalidRequest(f"a private session's client runs {msg.client_layers} layers at each end of "
                             f"{span.arch.num_layers}; the route must keep at least one")  # fmt: skip
    if msg.HasField("sampling") and msg.sampling != pb.Sampling():
        raise InvalidRequest("a private session carries no sampling: its client samples")
    if msg.return_logits:
        raise InvalidRequest("a private session returns hidden states, never logits")
    if span.start < msg.client_layers:
        raise InvalidRequest(f"this node's layers [{span.start}, {span.end}) lie in the client's part")


def _check_ring(msg: pb.OpenSession, span: SpanRuntime, node_id: str, keyed: bool) -> None:
    """The ring's head is the route's first node (which names itself before passing the opening
    on); chunked steps need the ring, where nodes pass chunks on without waiting."""
    if msg.HasField("ring_head"):
        head = msg.ring_head
        if not 0 < len(head.address) <= MAX_ADDRESS_CHARS:
            raise InvalidRequest(f"the ring head needs an address of 1 to {MAX_ADDRESS_CHARS} characters")
        first, _ = roles(msg, span)
        if first and head.node_id not in ("", node_id):
            raise InvalidRequest("the ring's head must be the route's first node")
        if keyed and not first and not is_node_id(head.node_id):
            raise InvalidRequest(f"the ring head must name its node id ({NODE_ID_HEX} hex digits)")
    elif msg.prefill_chunk and len(msg.route) > 1:
        raise InvalidRequest("chunked steps (prefill_chunk) pass between nodes on a ring only: set ring_head")


def check_follow(session: NodeSession, request: pb.SessionRequest) -> tuple[int, frozenset[int]]:
    """How many steps the first node may feed back by itself after this one, and where it stops."""
    step = request.step
    if session.private and (step.follow or step.stop_ids):
        raise InvalidRequest("a private session's client closes every token's loop: no follow, no stop ids")
    if step.follow == 0:
        return 0, frozenset()
    if step.WhichOneof("input") != "tokens":
        raise InvalidRequest("only the first node of a route follows on: send token ids with `follow`")
    room = session.max_length - step.position - len(step.tokens.ids)  # (from the position: after a rollback)
    if step.follow > room:
        raise InvalidRequest(f"follow of {step.follow} steps; the session has room for {max(room, 0)}")
    if len(step.stop_ids) > MAX_STOP_IDS:
        raise InvalidRequest(f"at most {MAX_STOP_IDS} stop ids, got {len(step.stop_ids)}")
    return step.follow, frozenset(step.stop_ids)


def check_step(session: NodeSession, request: pb.SessionRequest, span: SpanRuntime) -> pb.Step:
    """A step of an open session, in order and at the position the session is at; a chunk of a
    step (`partial`) only between the nodes of a ring."""
    step = request.step
    if request.WhichOneof("kind") != "step":
        raise InvalidRequest("session is already open; send steps")
    if step.step != session.next_step:
        raise InvalidRequest(f"step {step.step} out of order; expected {session.next_step}")
    if step.partial and (session.first or not session.ring):
        raise InvalidRequest("partial steps pass between the nodes of a ring only")
    if session.private and (step.WhichOneof("input") != "hidden" or step.drafts):
        raise InvalidRequest("a private session's steps carry hidden states only: no token ids, no drafts")
    if len(step.timings) > span.arch.num_layers:
        raise InvalidRequest(f"a step carries at most {span.arch.num_layers} hop timings")
    if step.chained:
        check_chained(session, step)
        if session.last and session.chain_token is None:  # to be cancelled: where it starts no longer matters
            return step
        if step.position != session.length:
            raise InvalidRequest(f"a chained verify step starts where the step ahead ends ({session.length}), "
                                 f"not at {step.position}")  # fmt: skip
    floor = session.rollback_floor if session.rollback_floor is not None else session.length
    if not floor <= step.position <= session.length:
        held = f"the session holds {session.length}" + (f" (of which {floor} are settled)" if floor < session.length
                                                       else "")  # fmt: skip
        raise InvalidRequest(f"step starts at position {step.position} but {held}")
    return step


def check_chained(session: NodeSession, step: pb.Step) -> None:
    """A chained verify step (pipelined speculation) follows a verify step and is drafts only."""
    if session.rollback_floor is None:
        raise InvalidRequest("a chained verify step must follow a verify step")
    if step.partial or step.follow or session.private:
        raise InvalidRequest("a chained verify step is one pass of drafts: neither partial nor followed")
    shape = list(step.hidden.shape)  # (1, S, H) downstream: S is all a node needs to know before it cancels
    positions = len(step.tokens.ids) if step.WhichOneof("input") == "tokens" else shape[1] if len(shape) == 3 else -1
    if not 0 < len(step.drafts) == positions <= MAX_DRAFTS:
        raise InvalidRequest(f"a chained verify step is 1 to {MAX_DRAFTS} drafts and nothing else, "
                             f"got {len(step.drafts)} drafts in {positions} positions")  # fmt: skip


def check_drafts(step: pb.Step, positions: int, position: int) -> int:
    """A verify step's drafts: fewer than its positions, bounded, and never part of a chunked or
    followed step; returns the least position the step after it may start at (every draft
    rejected). A chained step is all drafts (`check_chained` has seen to it): its own start."""
    if step.chained:
        return position
    if not 0 < len(step.drafts) < positions or len(step.drafts) > MAX_DRAFTS:
        raise InvalidRequest(f"a verify step checks 1 to {min(MAX_DRAFTS, positions - 1)} drafts, "
                             f"got {len(step.drafts)}")  # fmt: skip
    if step.partial or step.follow:
        raise InvalidRequest("a verify step is one pass: neither partial nor followed")
    return position + positions - len(step.drafts)
