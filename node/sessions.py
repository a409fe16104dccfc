"""Live inference sessions on one node, and the admission control that bounds them.

Admission decides before anything is allocated: a session's KV cache is sized for its whole
declared length up front, so a session that was admitted can never run the node out of memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from swarm.errors import CapacityExceeded, InvalidRequest
from swarm.runtime import KVCache
from swarm.sampling import SamplingParams


@dataclass
class NodeSession:
    session_id: str
    max_length: int
    sampling: SamplingParams | None  # None: a private session (its client samples)
    return_logits: bool
    caches: list[KVCache]
    cache_bytes: int
    next_step: int = 0
    wire_dtype: str = "float32"  # how hidden states travel to and from this node (OpenSession.wire_dtype)
    ring: bool = False  # results go round the token ring (OpenSession.ring_head), not back up the chain
    prefill_chunk: int = 0  # the first node splits longer steps into chunks of this many tokens; 0 = never
    rollback_floor: int | None = None  # after a verify step: the least position the next step may start at
    # the last node, after a verify step that accepted all its drafts: the token it ended with, the
    # one a chained verify step must start with (None: a chained step now is cancelled)
    chain_token: int | None = None
    first: bool = True  # the route's first node: it takes the client's input
    last: bool = True  # the route's last node: it answers each step
    private: bool = False  # hidden states in and out (OpenSession.private): no embedding, head or sampling here
    return_all: bool = False  # private: the client runs the last layers, so it gets every position back
    held: list[np.ndarray] = field(default_factory=list)  # private, last node: a chunked step's outputs so far

    @property
    def length(self) -> int:
        """Tokens already in the cache."""
        return self.caches[0].length


@dataclass(frozen=True)
class Limits:
    memory_budget: int  # bytes for weights + every session's KV cache
    weight_bytes: int
    max_sessions: int
    max_context: int  # tokens per session


@dataclass
class SessionTable:
    limits: Limits
    sessions: dict[str, NodeSession] = field(default_factory=dict)

    @property
    def cache_bytes(self) -> int:
        return sum(s.cache_bytes for s in self.sessions.values())

    @property
    def memory_used(self) -> int:
        return self.limits.weight_bytes + self.cache_bytes

    def check_admission(self, session_id: str, max_length: int, cache_bytes: int) -> None:
        limits = self.limits
        if session_id in self.sessions:
            raise InvalidRequest(f"session {session_id} is already open on this node")
        if not 1 <= max_length <= limits.max_context:
            raise InvalidRequest(f"session length {max_length} is outside [1, {limits.max_context}] tokens")
        if len(self.sessions) >= limits.max_sessions:
            raise CapacityExceeded(f"node has {len(self.sessions)} of {limits.max_sessions} sessions; try later")
        if self.memory_used + cache_bytes > limits.memory_budget:
            free = max(limits.memory_budget - self.memory_used, 0)
            raise CapacityExceeded(
                f"a {max_length}-token session needs {cache_bytes / 2**20:.1f} MiB of KV cache, "
                f"{free / 2**20:.1f} MiB of the node's memory budget is free; use a shorter session or try later"
            )

    def open(
        self,
        session_id: str,
        max_length: int,
        sampling: SamplingParams | None,
        return_logits: bool,
        cache_bytes: int,
        allocate: Callable[[int], list[KVCache]],
    ) -> NodeSession:
        self.check_admission(session_id, max_length, cache_bytes)
        session = NodeSession(session_id, max_length, sampling, return_logits, allocate(max_length), cache_bytes)
        self.sessions[session_id] = session
        return session

    def close(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
