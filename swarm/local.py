"""The local runner: a whole model package chained in one process.

It is the baseline every swarm result is compared with, token for token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from swarm._loop import BackgroundLoop
from swarm.config import RuntimeOptions
from swarm.errors import InvalidRequest
from swarm.generation import GenerationRequest, GenerationStats, stepped
from swarm.package import BlockEntry, FileEntry, ModelPackage, load_package
from swarm.runtime import BlockRunner, EmbeddingRunner, HeadRunner, KVCache, group_blocks
from swarm.sampling import SamplingParams, sample
from swarm.textgen import SyncTextGenerator, TextGenerator
from swarm.tokenizer import TextCodec


class LocalModel(SyncTextGenerator):
    """`generate`, `stream`, `chat`, `stream_chat` and `generate_ids` on a package in this process."""

    def __init__(self, package: str | Path | ModelPackage, options: RuntimeOptions | None = None) -> None:
        self.package = package if isinstance(package, ModelPackage) else load_package(package)
        options = options or RuntimeOptions()
        m = self.package.manifest
        entries: list[FileEntry | BlockEntry] = [m.embedding, *m.blocks, m.head]
        for entry in entries:
            self.package.verify_file(entry)
        self.manifest = m
        self.embedding = EmbeddingRunner(self.package.path(m.embedding.file), options)
        self.blocks = [BlockRunner([self.package.path(b.file) for b in group], group, m.architecture, options)
                       for group in group_blocks(m.blocks, options.merge_bytes)]  # fmt: skip
        self.head = HeadRunner(self.package.path(m.head.file), options)
        codec = TextCodec.from_file(self.package.path(m.tokenizer.file), m.tokenizer)
        self.text = TextGenerator(m, codec, self._open_stream)  # the async API
        super().__init__(self.text, BackgroundLoop("swarm-local"))

    def session(self, capacity: int | None = None) -> LocalSession:
        return LocalSession(self, capacity or self.manifest.max_context)

    @asynccontextmanager
    async def _open_stream(self, request: GenerationRequest, stats: GenerationStats) -> AsyncIterator[LocalSession]:
        stats.route = [f"local:0-{self.manifest.num_layers}"]
        yield self.session(request.total_tokens)


class LocalSession:
    """One sequence's KV caches across every block."""

    def __init__(self, model: LocalModel, capacity: int) -> None:
        if capacity > model.manifest.max_context:
            raise InvalidRequest(f"{capacity} tokens exceed the model's context of {model.manifest.max_context}")
        self._model = model
        self._caches: list[KVCache] = [block.new_cache(capacity) for block in model.blocks]

    @property
    def length(self) -> int:
        return self._caches[0].length

    def hidden(self, ids: Sequence[int]) -> np.ndarray:
        """Hidden states (1, S, H) after the last block for `ids` appended to the sequence."""
        vocab = self._model.manifest.architecture.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidRequest(f"token ids must be in [0, {vocab})")
        x = self._model.embedding.forward(np.asarray([ids], dtype=np.int64))
        for block, cache in zip(self._model.blocks, self._caches, strict=True):
            x = block.forward(x, cache)
        return x

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (S, V) for every position of `ids` appended to the sequence."""
        return self._model.head.forward(self.hidden(ids))[0]

    def next_token(self, ids: Sequence[int], params: SamplingParams) -> int:
        last = self.hidden(ids)[:, -1:, :]
        logits = self._model.head.forward(last)[0, -1]
        return sample(logits, params, position=self.length)

    async def step(self, ids: Sequence[int], params: SamplingParams) -> int:
        """Append `ids` and return the sampled next token."""
        # onnxruntime in a worker thread keeps the event loop responsive
        return await asyncio.to_thread(self.next_token, ids, params)

    def tokens(
        self, ids: Sequence[int], count: int, params: SamplingParams, stop_ids: Sequence[int] = ()
    ) -> AsyncGenerator[int, None]:
        """The token stream (swarm/generation.py): one step per token, in this process."""
        return stepped(self.step, ids, count, params, stop_ids)
