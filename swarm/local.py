"""The local runner: a whole model package chained in one process.

It is the baseline every swarm result is compared with, token for token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from swarm._loop import BackgroundLoop
from swarm.config import PREFILL_CHUNK, RuntimeOptions
from swarm.errors import InvalidRequest
from swarm.generation import GenerationRequest, GenerationStats, stepped
from swarm.package import ModelPackage, load_package
from swarm.runtime import KVCache
from swarm.sampling import SamplingParams
from swarm.span import SpanRuntime, prefill_chunks
from swarm.textgen import SyncTextGenerator, TextGenerator
from swarm.tokenizer import TextCodec


class LocalModel(SyncTextGenerator):
    """`generate`, `stream`, `chat`, `stream_chat` and `generate_ids` on a package in this process:
    the whole model as one span (swarm/span.py, the runtime a node runs its layers with)."""

    def __init__(self, package: str | Path | ModelPackage, options: RuntimeOptions | None = None,
                 prefill_chunk: int = PREFILL_CHUNK) -> None:  # fmt: skip
        self.package = package if isinstance(package, ModelPackage) else load_package(package)
        self.prefill_chunk = prefill_chunk  # as a swarm cuts a long step (swarm/config.py)
        m = self.package.manifest
        self.manifest = m
        self.span = SpanRuntime(self.package, 0, m.num_layers, options or RuntimeOptions())
        codec = TextCodec.from_file(self.package.path(m.tokenizer.file), m.tokenizer)
        self.text = TextGenerator(m, codec, self._open_stream)  # the async API
        # steps compute on a thread of their own, so the loop they are awaited on stays free
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarm-local-compute")
        self.compute.submit(int).result()  # its thread starts with the model, not in the middle of a use
        super().__init__(self.text, BackgroundLoop("swarm-local"))

    def close(self) -> None:
        super().close()
        self.compute.shutdown(wait=True)

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
        self._span, self._compute, self._chunk = model.span, model.compute, model.prefill_chunk
        self._caches: list[KVCache] = self._span.new_caches(capacity)

    @property
    def length(self) -> int:
        return self._caches[0].length

    def hidden(self, ids: Sequence[int]) -> np.ndarray:
        """Hidden states (1, S, H) after the last block for `ids` appended to the sequence."""
        return self._span.run_blocks(self._span.embed(ids), self._caches)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (S, V) for every position of `ids` appended to the sequence."""
        assert self._span.head is not None
        return self._span.head.forward(self.hidden(ids))[0]

    def next_token(self, ids: Sequence[int], params: SamplingParams) -> int:
        *ahead, last = prefill_chunks(ids, self._chunk)  # in a swarm's chunks: the same numbers
        for chunk in ahead:
            self._span.run_blocks(self._span.embed(chunk), self._caches)
        output = self._span.forward(self._span.embed(last), self._caches, params, False)
        assert output.token is not None
        return output.token

    async def step(self, ids: Sequence[int], params: SamplingParams) -> int:
        """Append `ids` and return the sampled next token."""
        return await asyncio.get_running_loop().run_in_executor(self._compute, self.next_token, ids, params)

    def tokens(
        self, ids: Sequence[int], count: int, params: SamplingParams, stop_ids: Sequence[int] = ()
    ) -> AsyncGenerator[int, None]:
        """The token stream (swarm/generation.py): one step per token, in this process."""
        return stepped(self.step, ids, count, params, stop_ids)
