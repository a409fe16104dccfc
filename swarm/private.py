"""Private sessions: the client runs the model's ends, so no node sees a token.

In a private session (`ClientConfig.private`) the client embeds the token ids and runs layers
[0, k) itself, sends only the hidden states to the route, which covers [k, L - k), and gets hidden
states back, runs layers [L - k, L) and the head itself and samples here: no node receives token
ids, text, logits, stop ids or the sampling seed. It is a routing choice over the stage
boundaries every node already has (OpenSession.private), with the same graphs in the same order
and the same prefill chunks as the local runner, so its tokens are the local runner's exactly.

The client's part comes from a package on this device (`private_package`), or is fetched from
the peers (the embedding, the head and the k layers' block files, each checked against the
manifest's sha256 before it loads). What the nodes still see, hidden states, can be inverted:
docs/SECURITY.md says how far this goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from swarm._proto import swarm_pb2 as pb
from swarm.config import RuntimeOptions
from swarm.errors import InvalidRequest
from swarm.generation import stepped
from swarm.package import ModelPackage
from swarm.runtime import KVCache
from swarm.sampling import SamplingParams, sample
from swarm.span import SpanRuntime, prefill_chunks
from swarm.tensors import from_wire, to_wire


class ClientEnds:
    """The client's part of a private session's model: the embedding and layers [0, k) (`front`),
    layers [L - k, L) and the head (`back`), each file checked against the manifest first."""

    def __init__(self, package: ModelPackage, layers: int, options: RuntimeOptions | None = None) -> None:
        num_layers = package.manifest.num_layers
        if not 0 <= 2 * layers < num_layers:
            raise InvalidRequest(f"private_layers={layers}: the client may run at most {(num_layers - 1) // 2} "
                                 f"layers at each end of {num_layers}, leaving the swarm at least one")  # fmt: skip
        options = options or RuntimeOptions()
        self.package, self.layers = package, layers
        self.front = SpanRuntime(package, 0, layers, options)  # the embedding, then [0, k)
        self.back = SpanRuntime(package, num_layers - layers, num_layers, options)  # [L - k, L), then the head
        self.hidden_size = package.manifest.architecture.hidden_size
        # the client's compute runs off the event loop, on one thread (as the local runner's)
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarm-private-compute")

    @property
    def route_layers(self) -> tuple[int, int]:
        """The layers the swarm computes: [k, L - k)."""
        return self.layers, self.package.manifest.num_layers - self.layers

    def session(self, capacity: int, prefill_chunk: int, wire_dtype: str) -> EndsSession:
        return EndsSession(self, capacity, prefill_chunk, wire_dtype)

    def close(self) -> None:
        self.compute.shutdown(wait=True)


@dataclass
class EndsSession:
    """One sequence's caches on the client's side of a private session."""

    ends: ClientEnds
    capacity: int
    prefill_chunk: int
    wire_dtype: str
    length: int = 0  # positions in the sequence
    front: list[KVCache] = field(default_factory=list)
    back: list[KVCache] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.front = self.ends.front.new_caches(self.capacity)
        self.back = self.ends.back.new_caches(self.capacity)

    def enter(self, ids: Sequence[int]) -> pb.Tensor:
        """The hidden states (1, S, H) after the client's first layers for `ids`, on the wire:
        embedded and run chunk by chunk, as the local runner cuts a step."""
        if not 1 <= len(ids) <= self.capacity - self.length:
            raise InvalidRequest(f"step of {len(ids)} tokens; the session has room for {self.capacity - self.length}")
        front = self.ends.front
        chunks = [front.run_blocks(front.embed(chunk), self.front) for chunk in prefill_chunks(ids, self.prefill_chunk)]
        hidden = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=1)
        return to_wire(hidden, self.wire_dtype)

    def leave(self, returned: pb.Tensor, positions: int, params: SamplingParams) -> int:
        """The next token from the route's answer to a step of `positions`: the client's last
        layers, chunk by chunk, then the head and the sampler."""
        back = self.ends.back
        want = positions if back.blocks else 1  # RemoteSession checked it, blaming the last node
        hidden = from_wire(returned, (1, want, self.ends.hidden_size), (self.wire_dtype,))
        if back.blocks:  # the client's last layers, cut as the route cut the step
            for cut in prefill_chunks(range(positions), self.prefill_chunk):
                out = back.run_blocks(np.ascontiguousarray(hidden[:, cut[0] : cut[-1] + 1]), self.back)
            hidden = out
        self.length += positions
        assert back.head is not None
        logits = back.head.forward(hidden[:, -1:, :])[:, -1]
        return sample(logits[0], params, position=self.length)


class PrivateStream:
    """A private session's token stream: each token one round trip through the route and the
    client (the node loop cannot close without the head), every step recovered by the session."""

    def __init__(self, session: HiddenSteps, ends: EndsSession) -> None:
        self._session, self._ends = session, ends

    def tokens(
        self, ids: Sequence[int], count: int, params: SamplingParams, stop_ids: Sequence[int] = ()
    ) -> AsyncGenerator[int, None]:
        return stepped(self.step, ids, count, params, stop_ids)

    async def step(self, ids: Sequence[int], params: SamplingParams) -> int:
        loop = asyncio.get_running_loop()
        compute = self._ends.ends.compute
        hidden = await loop.run_in_executor(compute, self._ends.enter, list(ids))
        returned = await self._session.hidden_step(hidden, len(ids))
        return await loop.run_in_executor(compute, self._ends.leave, returned, len(ids), params)


class HiddenSteps(Protocol):
    """What a private stream needs of a session (RecoveringSession is one): one step of hidden
    states through the route, recovered when a node fails, and the route's answer."""

    async def hidden_step(self, hidden: pb.Tensor, positions: int) -> pb.Tensor: ...
