"""What a client and a stage runtime are told, in one place, with defaults and units.

(A node's own config is `node/config.py`'s `NodeConfig`.) Nothing here reads the environment:
the CLIs (and the SDK's public constructors) turn flags and variables into these values.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarm.keys import SwarmKey

# Consecutive blocks run as one graph up to this many bytes of files (swarm/block_merge.py): a
# session run has a fixed cost that narrow layers pay many times a token, while a wide layer's
# own work dwarfs it; the bound keeps the transient copy a merge makes small.
MERGE_BYTES = 256 << 20
# A prompt longer than this is computed in chunks of this many tokens, by the local runner as by a
# swarm, where the chunks flow through the stages one behind the other (pipelined prefill) and
# the first token comes after about the slowest stage's share instead of the sum of them all.
PREFILL_CHUNK = 128


@dataclass(frozen=True)
class ClientConfig:
    peers: tuple[str, ...] = ()  # host:port of nodes to start from
    model_id: str | None = None  # package id (or a prefix) when peers serve several models
    connect_timeout_s: float = 10.0  # per peer, for Info and metadata
    mdns: bool = True  # with no peers given, find the swarm on the local network
    mdns_interfaces: tuple[str, ...] = ()  # interface addresses to browse on; () = all IPv4
    discovery_timeout_s: float = 5.0  # how long to look for a complete swarm
    step_timeout_s: float = 120.0  # deadline for a step before any step time was measured
    min_step_deadline_s: float = 2.0  # later deadlines follow measured step times, never below this
    open_deadline_s: float = 5.0  # opening a session along a route (allocating its caches) takes less
    max_recoveries: int = 8  # reroutes one step may need before the generation fails
    recovery_wait_s: float = 30.0  # how long to wait for the swarm to cover lost layers again
    swarm_key: SwarmKey | None = None  # membership secret; None = an open swarm
    node_loop: bool = True  # the first node feeds each token back itself: one link fewer per token
    # hidden states between hops: "float32" keeps the local runner's exact numbers (and recovery's
    # bit-identical replay on any route); "float16" and "bfloat16" halve the bytes, "int8" (a scale
    # per position) quarters them, rounding at each stage boundary (swarm/tensors.py)
    wire_dtype: str = "float32"
    # the last node sends each token straight to the first (a token crosses N links, not 2(N-1));
    # off: results travel back up through every hop, and steps are never chunked
    token_ring: bool = True
    prefill_chunk: int = PREFILL_CHUNK  # with the ring: tokens per prefill chunk; 0 = one chunk
    # private sessions (swarm/private.py): this client runs the embedding, the head and sampling
    # (and `private_layers` layers at each end), so nodes see hidden states only, never a token
    private: bool = False
    private_layers: int = 0  # layers the client runs at each end of the model
    private_package: str | None = None  # a package folder holding the client's part; None = fetch it from peers
    private_cache: str | None = None  # where fetched parts go (under <dir>/client/<package id>); None = no fetching
    # re-check this fraction of steps on another replica (swarm/verification.py); 0 = never
    verify_fraction: float = 0.0
    verify_seed: int | None = None  # which steps are checked (not the sampling seed); None = random
    # speculative decoding (speculative=): verify passes in flight at once, each after the first
    # chained on the one ahead (swarm/speculative.py); 1 = one pass at a time. 2 paid on 2-4 node
    # swarms at 0 and 10 ms, 3 did not pay more (docs/BENCHMARKS.md, speculative)
    speculative_depth: int = 2


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int = 0  # onnxruntime intra-op threads; 0 = one per core (one for a stage under 1 MiB)
    spin: bool = False  # one spinning thread pool for the whole process (swarm/runtime.py: _spinning_pool)
    merge_bytes: int = MERGE_BYTES  # consecutive blocks up to this size run as one graph; 0 = never
