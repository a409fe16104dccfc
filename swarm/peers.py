"""Who is out there: the one place that asks nodes about themselves.

`PeerProbe` makes the calls a newcomer makes (the SDK's client, `swarm-client status`, a node
joining with `node/join.py`): an `Info` to whoever answers at an address (the first contact,
docs/SECURITY.md), the quickest of a few round trips, `Peers` (gossip, followed transitively and
bounded) and `GetPackageMeta` (signed by the node that sends it). It remembers every address it
learned and the node that answered there. Choosing the model from the answers is two pure
functions: a client takes the only one (or the one asked for), a joining node the one most nodes
serve.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

from swarm._proto import swarm_pb2 as pb
from swarm.auth import ANY_NODE, Credentials, check_manifest_signature
from swarm.errors import AuthenticationError, InvalidPackage, NoRouteError, SwarmError
from swarm.package import Manifest
from swarm.transport import ChannelPool, error_from_rpc, unary, unary_from

MAX_PEERS = 256  # nodes one probe learns of through gossip
TIMED_INFOS = 3  # a round trip is the quickest of this many: one alone is noisy


@dataclass(frozen=True)
class Answer:
    info: pb.NodeInfo
    rtt_ms: float  # round trip of an Info call


class PeerProbe:
    """Asks nodes what they serve, with a deadline of `timeout_s` on every call."""

    def __init__(self, channels: ChannelPool, credentials: Credentials | None, timeout_s: float) -> None:
        self.channels, self.credentials, self.timeout_s = channels, credentials, timeout_s
        self.known: list[str] = []  # every address learned so far (given, discovered, gossiped)
        self.node_ids: dict[str, str] = {}  # address -> the node that last answered there (authenticated)
        self.refused: list[SwarmError] = []  # peers that answered, but refused our credential

    async def identify(self, address: str) -> Answer:
        """The Info of whoever answers at `address` (to any node: the one call made before the
        caller knows who it is talking to; every later call names it). Raises a SwarmError."""
        started = time.perf_counter()
        try:
            info, proof = await unary_from(self.channels.stub(address).Info, "Info", pb.InfoRequest(),
                                           self.credentials, self.timeout_s, ANY_NODE)  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            error = error_from_rpc(exc, address)
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                self.refused.append(error)
            raise error from exc
        rtt_ms = (time.perf_counter() - started) * 1000
        node_id = proof.node_id if proof is not None else info.node_id
        if info.node_id != node_id:
            raise AuthenticationError(f"{address} answers as node {node_id} but says it is {info.node_id}")
        self.node_ids[address] = node_id
        return Answer(info, rtt_ms)

    async def measure(self, address: str) -> Answer | None:
        """The peer's Info and the quickest of a few round trips to it; None when it does not
        answer as a member of our swarm."""
        try:
            answer = await self.identify(address)  # connects first, and learns who answers there
            stub = self.channels.stub(address)
            round_trips = []
            for _ in range(TIMED_INFOS):
                started = time.perf_counter()
                info = await unary(stub.Info, "Info", pb.InfoRequest(), self.credentials, self.timeout_s,
                                   answer.info.node_id)  # fmt: skip
                round_trips.append((time.perf_counter() - started) * 1000)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                self.refused.append(error_from_rpc(exc, address))
            return None
        except SwarmError:  # it failed authentication, or did not answer: not one of ours
            return None
        return Answer(info, min(round_trips))

    async def gossip(self, address: str) -> list[str]:
        """The addresses the node at `address` knows of (nothing, if it never answered us)."""
        node_id = self.node_ids.get(address)
        if node_id is None:
            return []
        try:
            reply = await unary(self.channels.stub(address).Peers, "Peers", pb.PeersRequest(), self.credentials,
                                self.timeout_s, node_id)  # fmt: skip
        except (grpc.aio.AioRpcError, SwarmError):
            return []
        return [a for a in reply.addresses[:MAX_PEERS] if 0 < len(a) <= 255]

    async def survey(self, addresses: Sequence[str]) -> dict[str, Answer | None]:
        """Each address's answer (None: no answer), and the same for every node they know of,
        transitively (bounded): gossip is asked of the peers that answered. Every address met
        joins `known`."""
        self.refused = []
        addresses = list(dict.fromkeys(addresses))
        answers = dict(zip(addresses, await asyncio.gather(*(self.measure(a) for a in addresses)), strict=True))
        frontier = [a for a in addresses if answers[a] is not None]
        while frontier and len(answers) < MAX_PEERS:
            found = await asyncio.gather(*(self.gossip(a) for a in frontier))
            new = [a for a in dict.fromkeys(x for f in found for x in f) if a not in answers]
            new = new[: MAX_PEERS - len(answers)]
            answers |= dict(zip(new, await asyncio.gather(*(self.measure(a) for a in new)), strict=True))
            frontier = [a for a in new if answers[a] is not None]
        self.known = list(dict.fromkeys([*self.known, *answers]))[:MAX_PEERS]
        return answers

    async def package_meta(self, address: str, node_id: str, timeout_s: float | None = None) -> pb.PackageMeta:
        """The manifest and tokenizer node `node_id` serves; in a keyed swarm, signed by that
        (authenticated) node."""
        stub = self.channels.stub(address)
        try:
            meta, signer = await unary_from(stub.GetPackageMeta, "GetPackageMeta", pb.PackageMetaRequest(),
                                            self.credentials, timeout_s or self.timeout_s, node_id)  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, address) from exc
        except AuthenticationError as exc:
            raise InvalidPackage(f"{address} failed authentication: {exc}") from exc
        if signer is not None:
            check_manifest_signature(meta.manifest_json, meta.manifest_signature, signer)
        return meta


def checked_manifest(meta: pb.PackageMeta, package_id: str, address: str) -> Manifest:
    """The manifest in `meta`, once it and its tokenizer match the package id the node named."""
    manifest = Manifest.from_dict(json.loads(meta.manifest_json))
    if manifest.package_id != package_id:
        raise InvalidPackage(f"{address} sent a manifest that does not match its model id")
    if hashlib.sha256(meta.tokenizer_json).hexdigest() != manifest.tokenizer.sha256:
        raise InvalidPackage(f"{address} sent a tokenizer that does not match the manifest")
    return manifest


def only_model(package_ids: Iterable[str], wanted: str | None) -> str:
    """A client's model: the one the peers serve, or the one of `wanted` (a package id prefix)."""
    ids = sorted(set(package_ids))
    if wanted:
        ids = [i for i in ids if i.startswith(wanted)]
        if not ids:
            raise NoRouteError(f"no peer serves model {wanted}")
    if len(ids) > 1:
        several = f"peers serve several models ({', '.join(i[:12] for i in ids)}); choose one with"
        raise NoRouteError(f"{several} model_id='...'", cli=f"{several} --model-id ID")
    return ids[0]


def most_served_model(package_ids: Iterable[str], wanted: str | None) -> str:
    """A joining node's model: the one most nodes serve (of `wanted`, a prefix, when given)."""
    counts = Counter(i for i in package_ids if wanted is None or i.startswith(wanted))
    if not counts:
        raise NoRouteError(f"no node in the swarm serves model {wanted}" if wanted else "found no swarm to join")
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        shown = ", ".join(f"{pid[:12]} ({n} nodes)" for pid, n in ranked)
        raise NoRouteError(f"the swarm serves several models equally: {shown}; choose one with --model-id")
    return ranked[0][0]
