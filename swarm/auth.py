"""Mutual authentication of every call between swarm members.

A caller sends, in the call's metadata, a credential: a timestamp, a random nonce, its Ed25519
public key, (for a session) an ephemeral X25519 public key, the node id of the callee it is
meant for and a digest of the request it is meant for (method and message), all signed with
its identity and tagged with an HMAC under the swarm's membership key. The callee checks the
tag (membership), the signature (identity), that it is the node named and that this is the
request named, the clock window and that the nonce is new (replay), then answers with a
credential of its own, bound to the hash of the caller's: the caller learns that the callee is
a member, who it is, and that the answer is fresh. A credential captured on its way to one
node is good for nothing else: not on another node, not for another request, not twice. The
swarm key never crosses the wire; only HMAC tags made with a key derived from it do.

Only `Info` may be asked of "any node" (a caller's first contact with an address, before it
knows who answers there; see docs/SECURITY.md): it tells no more than a node announces anyway.

For a session both ephemeral X25519 keys are in the two credentials; `session_keys` turns them,
the swarm's frame key and both transcripts into one key per direction (HKDF), so the session's
opening and every frame after it are bound to this handshake. An origin credential
(`Credentials.origin`, see swarm/origin.py) is the same statement made for a whole session route.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from swarm.errors import AuthenticationError, InvalidRequest, StaleRoute
from swarm.keys import NODE_ID_HEX, Identity, SwarmKey, is_node_id, node_id_of

AUTH_KEY = "swarm-auth-bin"  # gRPC binary metadata key (the -bin suffix makes it raw bytes)
CLOCK_WINDOW_S = 300.0  # credentials older or newer than this are refused: clocks may drift
REPLAY_MEMORY = 100_000  # nonces remembered; beyond that the window shrinks instead
ANY_NODE = ""  # the callee of a first contact, before the caller knows who answers at an address
ANY_NODE_METHODS = frozenset({"Info"})  # the only calls a credential may address to any node
# timestamp ms, nonce, Ed25519 public, X25519 public (or zeros), callee node id (or zeros for any node),
# digest of the request (see request_digest)
_FIELDS = struct.Struct(">Q16s32s32s12s32s")
_SIG, _TAG = 64, 16
CREDENTIAL_BYTES = _FIELDS.size + _SIG + _TAG
_UNBOUND_CREDENTIAL_BYTES = CREDENTIAL_BYTES - 12 - 32  # what swarm sent before credentials named both
NO_X25519 = bytes(32)
_ANY_AUDIENCE = bytes(NODE_ID_HEX // 2)

Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Proof:
    """A verified credential: who made it, and what a session needs from it."""

    node_id: str
    public: bytes  # Ed25519
    x_public: bytes  # X25519, or NO_X25519
    transcript: bytes  # the signed bytes


def _transcript(kind: str, swarm_id: str, fields: bytes) -> bytes:
    return b"\0".join([f"swarm/{kind}/2".encode(), swarm_id.encode(), fields])


def request_digest(method: str, request: bytes) -> bytes:
    """What a credential is bound to: one method with one serialized request (b"" for a session,
    which is bound to its handshake instead)."""
    return hashlib.sha256(b"swarm/request/1\0" + method.encode() + b"\0" + request).digest()


def _audience(node_id: str) -> bytes:
    if node_id == ANY_NODE:
        return _ANY_AUDIENCE
    if not is_node_id(node_id):
        raise InvalidRequest(f"{node_id!r} is not a node id ({NODE_ID_HEX} hex digits)")
    return bytes.fromhex(node_id)


class ReplayGuard:
    """Remembers nonces seen within the clock window; a repeat is a replay."""

    def __init__(self, window_s: float = CLOCK_WINDOW_S, memory: int = REPLAY_MEMORY) -> None:
        self._window, self._memory = window_s, memory
        self._seen: dict[bytes, float] = {}
        self._floor = 0.0  # timestamps at or below this are refused: their nonces were forgotten

    def check(self, nonce: bytes, stamp: float, now: float) -> None:
        if abs(now - stamp) > self._window:
            raise AuthenticationError(
                f"credential is {now - stamp:+.0f}s off this node's clock (more than {self._window:.0f}s): "
                "check the device clocks"
            )
        if stamp <= self._floor or nonce in self._seen:
            raise AuthenticationError("credential was already used (a replay)")
        self._forget(now)
        self._seen[nonce] = stamp

    def _forget(self, now: float) -> None:
        for nonce, stamp in list(self._seen.items()):
            if len(self._seen) < self._memory and stamp >= now - self._window:
                break
            del self._seen[nonce]
            self._floor = max(self._floor, stamp)


class Credentials:
    """What a member holds: the swarm key and its own identity."""

    def __init__(self, key: SwarmKey, identity: Identity, clock: Callable[[], float] = time.time) -> None:
        self.key, self.identity, self._clock = key, identity, clock
        self.replays = ReplayGuard()
        self.origins = ReplayGuard()  # origin statements: each hop of a route sees one exactly once
        self._own_audience = _audience(identity.node_id)

    @property
    def swarm_id(self) -> str:
        return self.key.swarm_id

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def _credential(self, kind: str, audience: str, subject: bytes, x_public: bytes) -> tuple[bytes, bytes]:
        stamp = int(self._clock() * 1000)
        fields = _FIELDS.pack(stamp, secrets.token_bytes(16), self.identity.public_bytes, x_public,
                              _audience(audience), subject)  # fmt: skip
        transcript = _transcript(kind, self.swarm_id, fields)
        signature = self.identity.sign(transcript)
        return fields + signature + self.key.prove(transcript + signature), transcript

    def _verify(self, kind: str, credential: bytes, subject: bytes, purpose: str, guard: ReplayGuard,
                any_node: bool = False) -> Proof:  # fmt: skip
        """The credential's maker, once it is shown to be a member's, made for this node (or, where
        `any_node`, for any node) and for `subject`, fresh and not seen before."""
        if len(credential) == _UNBOUND_CREDENTIAL_BYTES:
            raise AuthenticationError("peer runs an older swarm, whose credentials name no callee: upgrade it")
        if len(credential) != CREDENTIAL_BYTES:
            raise AuthenticationError("missing or malformed swarm credential: is this peer in the swarm?")
        fields, signature, tag = credential[: _FIELDS.size], credential[_FIELDS.size : -_TAG], credential[-_TAG:]
        stamp, nonce, public, x_public, audience, bound = _FIELDS.unpack(fields)
        transcript = _transcript(kind, self.swarm_id, fields)
        if not self.key.check(transcript + signature, tag):
            raise AuthenticationError("peer is not a member of this swarm (membership proof failed)")
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, transcript)
        except InvalidSignature:
            raise AuthenticationError("peer's signature does not match its identity") from None
        if audience == _ANY_AUDIENCE and not any_node:
            raise AuthenticationError(f"credential names no node, so it is not good for {purpose}: only "
                                      f"{', '.join(sorted(ANY_NODE_METHODS))} may be asked of any node")  # fmt: skip
        if audience not in (_ANY_AUDIENCE, self._own_audience):
            raise AuthenticationError(f"credential was made for node {audience.hex()}, not for this node "
                                      f"{self.node_id}: a captured credential is good for nothing else")  # fmt: skip
        if bound != subject:
            raise AuthenticationError(f"credential was made for another request, not for {purpose}: "
                                      "a captured credential is good for nothing else")  # fmt: skip
        guard.check(nonce, stamp / 1000, self._clock())
        return Proof(node_id_of(public), public, x_public, transcript)

    # --- the caller's side ----------------------------------------------------------------

    def call(self, method: str, node_id: str, request: bytes = b"",
             x_public: bytes = NO_X25519) -> tuple[Metadata, bytes]:  # fmt: skip
        """Metadata for calling `method` with the serialized `request` on node `node_id` (ANY_NODE:
        whoever answers, for Info only), and the transcript a reply must be bound to."""
        credential, transcript = self._credential("call", node_id, request_digest(method, request), x_public)
        return ((AUTH_KEY, credential),), transcript

    def check_reply(self, metadata: Metadata | None, method: str, call_transcript: bytes,
                    expected_node: str = "") -> Proof:  # fmt: skip
        """The callee's credential from the reply's initial metadata, checked; `expected_node`
        (when given) must be the callee's node id."""
        subject = request_digest(method, _digest(call_transcript))
        proof = self._verify("reply", _credential_in(metadata), subject, f"the answer to this {method} call",
                             self.replays)  # fmt: skip
        if expected_node and proof.node_id != expected_node:  # e.g. restarted with a new identity
            raise StaleRoute(f"peer is node {proof.node_id}, not the {expected_node} the route names")
        return proof

    def origin(self, session: bytes) -> bytes:
        """A statement that this identity opens the session `session` describes (swarm/origin.py)."""
        return self._credential("origin", ANY_NODE, request_digest("origin", session), NO_X25519)[0]

    # --- the callee's side ----------------------------------------------------------------

    def check_call(self, metadata: Metadata | None, method: str, request: bytes = b"") -> Proof:
        """The caller's credential, checked against this node and this `method` with this serialized `request`."""
        return self._verify("call", _credential_in(metadata), request_digest(method, request), f"this {method} call",
                            self.replays, any_node=method in ANY_NODE_METHODS)  # fmt: skip

    def reply(self, method: str, call: Proof, x_public: bytes = NO_X25519) -> tuple[Metadata, bytes]:
        subject = request_digest(method, _digest(call.transcript))
        credential, transcript = self._credential("reply", call.node_id, subject, x_public)
        return ((AUTH_KEY, credential),), transcript

    def check_origin(self, credential: bytes, session: bytes) -> Proof:
        """Who signed the origin statement of the session `session` describes; each statement is taken once."""
        return self._verify("origin", credential, request_digest("origin", session), "this session", self.origins,
                            any_node=True)  # fmt: skip


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _credential_in(metadata: Metadata | None) -> bytes:
    for key, value in metadata or ():
        if key == AUTH_KEY and isinstance(value, bytes):
            return value
    return b""


@dataclass(frozen=True)
class SessionKeys:
    send: bytes
    receive: bytes
    binding: bytes  # hash of both transcripts: names this session's link between two peers


def new_exchange() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def session_keys(key: SwarmKey, private: X25519PrivateKey, peer_public: bytes, call_transcript: bytes,
                 reply_transcript: bytes, caller: bool) -> SessionKeys:  # fmt: skip
    """One key per direction from the ephemeral exchange, bound to both transcripts and the swarm."""
    if peer_public == NO_X25519:
        raise AuthenticationError("session credential carries no key exchange")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise AuthenticationError("peer's key exchange is invalid") from None
    binding = _digest(call_transcript + reply_transcript)
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=binding, info=b"swarm/session/1").derive(
        key.frame_key + shared
    )
    upstream, downstream = okm[:32], okm[32:]  # caller -> callee, callee -> caller
    if caller:
        return SessionKeys(upstream, downstream, binding)
    return SessionKeys(downstream, upstream, binding)


def manifest_signed_bytes(manifest_json: bytes) -> bytes:
    """What a node signs to vouch for a manifest it serves (PackageMeta.manifest_signature)."""
    return b"swarm/manifest/1\0" + _digest(manifest_json)


def check_manifest_signature(manifest_json: bytes, signature: bytes, signer: Proof) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(signer.public).verify(signature, manifest_signed_bytes(manifest_json))
    except InvalidSignature:
        raise AuthenticationError(f"manifest from {signer.node_id} is not signed by it") from None
