"""The one stage runtime: layers [start, end) of one package, chained in onnxruntime.

A node runs its span with it (node/stream.py, node/batcher.py); the local runner runs the whole
model as one span, [0, num_layers) (swarm/local.py). The span holding layer 0 also runs the
embedding; the one holding the last layer also runs the head and samples. Every file is checked
against the manifest sha256 before loading; `swarm/runtime.py` runs each stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from swarm.config import RuntimeOptions
from swarm.errors import InvalidRequest
from swarm.package import ModelPackage
from swarm.progress import Progress
from swarm.runtime import (
    BlockRunner,
    EmbeddingRunner,
    HeadRunner,
    KVCache,
    group_blocks,
)
from swarm.sampling import SamplingParams, sample
from swarm.speculative import accept


def prefill_chunks(ids: Sequence[int], chunk: int) -> list[list[int]]:
    """`ids` in consecutive chunks of `chunk` tokens (the last may be shorter); 0 = one chunk.

    A step's chunking is part of its floating-point path: the local runner and every node of a
    session cut the same step at the same places, so their numbers agree exactly."""
    ids = list(ids)
    if chunk <= 0 or len(ids) <= chunk:
        return [ids]
    return [ids[i : i + chunk] for i in range(0, len(ids), chunk)]


@dataclass
class StepOutput:
    hidden: np.ndarray | None = None  # (1, S, H) for the next hop, when this is not the last span
    token: int | None = None  # sampled next token, when this is the last span
    logits: np.ndarray | None = None  # (V,) of the last position, when asked for
    accepted: int | None = None  # of a verify step (last span): how many of its drafts the target kept


def truncate_caches(caches: Sequence[KVCache], length: int) -> None:
    """Roll a session's caches back to `length` positions (after a verify step: the accepted ones)."""
    for cache in caches:
        cache.truncate(length)


class SpanRuntime:
    def __init__(self, package: ModelPackage, start: int, end: int, options: RuntimeOptions,
                 progress: Progress | None = None) -> None:  # fmt: skip
        m = package.manifest
        self.package = package
        self.start, self.end = start, end
        self.arch = m.architecture
        entries = list(m.blocks_in(start, end)) if start < end else []  # empty: the embedding or head alone
        for entry in entries:
            package.verify_file(entry)
        self.blocks = []
        loaded = 0
        for group in group_blocks(entries, options.merge_bytes):  # the slow part of a start: report it
            if progress is not None:
                progress(f"loading {group[0].file}" + (f" .. {group[-1].file}" if len(group) > 1 else ""),
                         loaded, len(entries))  # fmt: skip
            self.blocks.append(BlockRunner([package.path(b.file) for b in group], group, m.architecture, options))
            loaded += len(group)
        self.embedding = None
        self.head = None
        weight_files = [b.bytes for b in entries]
        if self.is_first:
            package.verify_file(m.embedding)
            self.embedding = EmbeddingRunner(package.path(m.embedding.file), options)
            weight_files.append(m.embedding.bytes)
        if self.is_last:
            package.verify_file(m.head)
            self.head = HeadRunner(package.path(m.head.file), options)
            weight_files.append(m.head.bytes)
        self.weight_bytes = sum(weight_files)

    @property
    def is_first(self) -> bool:
        return self.start == 0

    @property
    def is_last(self) -> bool:
        return self.end == self.arch.num_layers

    def cache_bytes(self, tokens: int) -> int:
        """What `new_caches(tokens)` will allocate: sliding layers hold only their window."""
        return sum(block.cache_bytes(tokens) for block in self.blocks)

    def new_caches(self, tokens: int) -> list[KVCache]:
        return [block.new_cache(tokens) for block in self.blocks]

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        assert self.embedding is not None
        if any(not 0 <= t < self.arch.vocab_size for t in ids):
            raise InvalidRequest(f"token ids must be in [0, {self.arch.vocab_size})")
        return self.embedding.forward(np.asarray([ids], dtype=np.int64))

    def run_blocks(self, hidden: np.ndarray, caches: list[KVCache]) -> np.ndarray:
        """Hidden states (1, S, H) after the span's blocks, each cache extended by S positions."""
        for block, cache in zip(self.blocks, caches, strict=True):
            hidden = block.forward(hidden, cache)
        return hidden

    def forward(
        self, hidden: np.ndarray, caches: list[KVCache], sampling: SamplingParams | None, want_logits: bool
    ) -> StepOutput:
        """Run the blocks; on the last span also the head and the sampler, unless `sampling` is None
        (a private session, whose client runs the head: the hidden states are the output)."""
        return self._finish(self.run_blocks(hidden, caches), [caches], [sampling], [want_logits])[0]

    def forward_batch(
        self, hidden: np.ndarray, caches: list[list[KVCache]], samplings: list[SamplingParams | None],
        want_logits: list[bool],
    ) -> list[StepOutput]:  # fmt: skip
        """One decode step for several sessions in one pass: `hidden` (B, 1, H), row i with `caches[i]`."""
        for index, block in enumerate(self.blocks):
            hidden = block.forward_batch(hidden, [session[index] for session in caches])
        return self._finish(hidden, caches, samplings, want_logits)

    def verify(
        self, hidden: np.ndarray, caches: list[KVCache], drafts: Sequence[int], sampling: SamplingParams,
        want_logits: bool = False,
    ) -> StepOutput:
        """A verify step: `hidden` (1, k + 1, H) for [last token, d1 .. dk] through the blocks; on the
        last span the head over every position and `accept` (swarm/speculative.py). The caches keep
        all k + 1 positions: rolling them back to the accepted length is the caller's (every span's)
        part, once it knows it (`truncate_caches`). `logits`, when asked for: the row the token came from."""
        if hidden.shape[1] != len(drafts) + 1:
            raise InvalidRequest(f"a verify step of {len(drafts)} drafts carries {len(drafts) + 1} positions, "
                                 f"got {hidden.shape[1]}")  # fmt: skip
        hidden = self.run_blocks(hidden, caches)
        if self.head is None:
            return StepOutput(hidden=hidden)
        logits = self.head.forward(hidden)[0]  # (k + 1, V)
        position = caches[0].length - len(drafts)  # of the token after the last one: as a plain step's
        accepted, token = accept(logits, drafts, sampling, position)
        return StepOutput(token=token, logits=logits[accepted] if want_logits else None, accepted=accepted)

    def _finish(
        self, hidden: np.ndarray, caches: list[list[KVCache]], samplings: list[SamplingParams | None],
        want_logits: list[bool],
    ) -> list[StepOutput]:  # fmt: skip
        """Hand the hidden states on, or (last span) apply the head and sample each row; rows
        without sampling (private sessions) keep their hidden states."""
        outputs = [StepOutput(hidden=hidden[i : i + 1]) for i in range(hidden.shape[0])]
        sampled = [row for row, params in enumerate(samplings) if params is not None]
        if self.head is None or not sampled:
            return outputs
        rows = hidden if len(sampled) == hidden.shape[0] else hidden[sampled]
        logits = self.head.forward(rows[:, -1:, :])[:, -1]
        for index, row in enumerate(sampled):
            params = samplings[row]
            assert params is not None
            token = sample(logits[index], params, position=caches[row][0].length)
            outputs[row] = StepOutput(token=token, logits=logits[index] if want_logits[row] else None)
        return outputs
