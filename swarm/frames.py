"""Session frames on the wire: sealed (ChaCha20-Poly1305) in a keyed swarm, plain in an open one.

A sealed frame carries a sequence number and the AEAD box of one serialized SessionRequest or
SessionReply. The nonce is (direction, sequence number); the associated data binds the frame
to this session's link (the hash of both handshake transcripts), its direction and its
sequence number (the nonce itself). A receiver takes sequence numbers 0, 1, 2 ... in order only, so a frame
that is replayed, reordered, altered or made with another key fails to open. Session id, step
and hop travel inside the box, authenticated with it.
"""

from __future__ import annotations

import struct
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from google.protobuf.message import DecodeError

from swarm._proto import swarm_pb2 as pb
from swarm.auth import SessionKeys
from swarm.errors import AuthenticationError, InvalidRequest

_UP, _DOWN = 1, 2  # request frames go caller -> callee ("up" the route), replies come back
_NONCE = struct.Struct(">IQ")
Message = TypeVar("Message", pb.SessionRequest, pb.SessionReply)


class PlainFrames:
    """An open swarm: frames as they are; a sealed one is refused (the peers disagree)."""

    secure = False

    def seal(self, message: Message) -> Message:
        return message

    def open(self, message: Message) -> Message:
        if message.WhichOneof("kind") == "sealed":
            raise InvalidRequest("got an encrypted frame, but this peer is in an open swarm (no swarm key)")
        return message


class SealedFrames:
    """One session link's frames, both directions."""

    secure = True

    def __init__(self, keys: SessionKeys, caller: bool) -> None:
        self._send, self._receive = ChaCha20Poly1305(keys.send), ChaCha20Poly1305(keys.receive)
        self._aad_prefix = b"swarm/frame/1" + keys.binding
        self._send_dir, self._receive_dir = (_UP, _DOWN) if caller else (_DOWN, _UP)
        self._sent = self._received = 0

    def seal(self, message: Message) -> Message:
        seq, self._sent = self._sent, self._sent + 1
        nonce = _NONCE.pack(self._send_dir, seq)
        box = self._send.encrypt(nonce, message.SerializeToString(), self._aad_prefix + nonce)
        sealed = type(message)()
        sealed.sealed.seq, sealed.sealed.box = seq, box
        return sealed

    def open(self, message: Message) -> Message:
        if message.WhichOneof("kind") != "sealed":
            raise AuthenticationError("this swarm encrypts sessions: got a frame that is not sealed")
        sealed = message.sealed
        if sealed.seq != self._received:
            raise AuthenticationError(f"frame {sealed.seq} out of sequence (expected {self._received}): replayed?")
        nonce = _NONCE.pack(self._receive_dir, sealed.seq)
        try:
            plain = self._receive.decrypt(nonce, sealed.box, self._aad_prefix + nonce)
        except InvalidTag:
            raise AuthenticationError("frame failed authentication (altered, or made with another key)") from None
        self._received += 1
        inner = type(message)()
        try:
            inner.ParseFromString(plain)
        except DecodeError:
            raise InvalidRequest("sealed frame holds no valid message") from None
        if inner.WhichOneof("kind") in (None, "sealed"):
            raise InvalidRequest("sealed frame holds no request or reply")
        return inner


Frames = PlainFrames | SealedFrames
