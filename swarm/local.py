"""The local runner: a whole model package chained in one process.

It is the baseline every swarm result is compared with, token for token.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from swarm._loop import BackgroundLoop
from swarm.config import PREFILL_CHUNK, RuntimeOptions
from swarm.errors import InvalidRequest
from swarm.generation import GenerationRequest, GenerationStats, TokenStream, stepped
from swarm.package import Manifest, ModelPackage, load_package
from swarm.runtime import KVCache
from swarm.sampling import SamplingParams
from swarm.span import SpanRuntime, prefill_chunks, truncate_caches
from swarm.speculative import (
    LOOKUP,
    AdaptiveWindow,
    Drafter,
    ModelDrafter,
    Pass,
    PromptLookup,
    check_same_tokenizer,
    speculative_tokens,
)
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
        self._options = options
        self._draft_models: dict[str, LocalModel] = {}  # speculative=PKG: loaded on first use, kept
        super().__init__(self.text, BackgroundLoop("swarm-local"))

    def close(self) -> None:
        super().close()
        self.compute.shutdown(wait=True)
        for draft in self._draft_models.values():
            draft.close()

    def session(self, capacity: int | None = None) -> LocalSession:
        return LocalSession(self, capacity or self.manifest.max_context)

    @asynccontextmanager
    async def _open_stream(self, request: GenerationRequest, stats: GenerationStats) -> AsyncIterator[TokenStream]:
        stats.route = [f"local:0-{self.manifest.num_layers}"]
        session = self.session(request.total_tokens)
        if request.speculative is None:
            yield session
        else:
            yield _SpeculativeStream(session, self.drafter(request.speculative, request.total_tokens), stats)

    def drafter(self, source: str, tokens: int) -> Drafter:
        """The draft source `speculative=` names, for a sequence of up to `tokens` tokens: prompt
        lookup ("lookup"), or a draft model (the path of a package with this model's tokenizer)."""
        if source == LOOKUP:
            return PromptLookup()
        if source not in self._draft_models:
            draft = LocalModel(source, self._options, self.prefill_chunk)
            try:
                check_same_tokenizer(draft.manifest, self.manifest)
            except BaseException:
                draft.close()
                raise
            self._draft_models[source] = draft
        return model_drafter(self._draft_models[source], self.manifest, tokens)


def model_drafter(draft: LocalModel, target: Manifest, tokens: int) -> ModelDrafter:
    """Greedy drafts from `draft` for `target` (same tokenizer, or InvalidRequest), on caches of
    its own for `tokens` positions (as many as its context allows; past them it proposes nothing)."""
    check_same_tokenizer(draft.manifest, target)
    return ModelDrafter(draft.session(min(tokens, draft.manifest.max_context)))


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

    @property
    def capacity(self) -> int:
        return self._caches[0].capacity

    @property
    def draft_limit(self) -> int:
        """The most drafts a verify step may carry here: its k + 1 positions run as one step, so a
        sliding-window cache can still roll any of them back (KVCache.truncate)."""
        return min(c.step_limit for c in self._caches) - 1

    def truncate(self, length: int) -> None:
        """Forget every token from position `length` on, as if they never happened."""
        truncate_caches(self._caches, length)

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

    def verify(self, last: int, drafts: Sequence[int], params: SamplingParams) -> tuple[int, int]:
        """One verify pass of [last, *drafts]; the caches keep `last` and the accepted drafts.
        Returns (accepted drafts, the target's next token)."""
        before = self.length
        output = self._span.verify(self._span.embed([last, *drafts]), self._caches, drafts, params)
        assert output.token is not None and output.accepted is not None
        self.truncate(before + 1 + output.accepted)
        return output.accepted, output.token

    async def pooled_verify(self, last: int, drafts: Sequence[int], params: SamplingParams) -> tuple[int, int]:
        """`verify`, on the model's compute pool."""
        return await asyncio.get_running_loop().run_in_executor(self._compute, self.verify, last, drafts, params)

    def speculative_tokens(
        self, ids: Sequence[int], count: int, params: SamplingParams, stop_ids: Sequence[int] = (),
        drafter: Drafter | None = None, window: AdaptiveWindow | None = None, stats: GenerationStats | None = None,
        depth: int = 1,
    ) -> AsyncGenerator[int, None]:  # fmt: skip
        """The token stream with speculation (swarm/speculative.py: speculative_tokens), in this
        process: drafts from `drafter` (prompt lookup by default), each pass one verify step whose
        rejected drafts are rolled back at once. `stats` counts drafts and passes; `depth` > 1 makes
        the passes a swarm pipelining that deep makes (no faster here: one process runs them in turn)."""
        drafts_from = drafter or PromptLookup()

        async def propose(context: list[int], k: int) -> list[int]:
            return await asyncio.get_running_loop().run_in_executor(self._compute, drafts_from.propose, context, k)

        def plain(last: int, n: int, params: SamplingParams, stop_ids: Sequence[int]) -> AsyncGenerator[int, None]:
            return stepped(self.step, [last], n, params, stop_ids)

        return speculative_tokens(self.step, propose, _LocalPasses(self, params), plain, ids, count, params, stop_ids,
                                  window or AdaptiveWindow(), stats or GenerationStats(), self.draft_limit,
                                  depth)  # fmt: skip


class _LocalPasses:
    """Verify passes in this process: each runs as it is sent (a chained one only if the pass ahead
    held whole and ended with its first draft, as a swarm's last node judges), its answer kept
    until it is read. So a pipelined generation makes here the very passes a swarm makes."""

    def __init__(self, session: LocalSession, params: SamplingParams) -> None:
        self._session, self._params = session, params
        self._answers: deque[tuple[int, int]] = deque()
        self._chain_token: int | None = None  # the token a chained pass must start with; None: cancel it

    async def send(self, sent: Pass) -> None:
        if sent.chained and sent.ids[0] != self._chain_token:
            self._chain_token = None
            self._answers.append((0, 0))  # cancelled: nothing computed
            return
        last, drafts = sent.ids[0], sent.ids[1:]
        self._session.truncate(sent.position)
        accepted, token = await self._session.pooled_verify(last, drafts, self._params)
        self._chain_token = token if accepted == len(drafts) else None
        self._answers.append((accepted + 1 if sent.chained else accepted, token))

    async def receive(self, sent: Pass) -> tuple[int, int]:
        return self._answers.popleft()


class _SpeculativeStream:
    """A session's token stream with speculation (LocalModel's `speculative=`)."""

    def __init__(self, session: LocalSession, drafter: Drafter, stats: GenerationStats) -> None:
        self._session, self._drafter, self._stats = session, drafter, stats

    def tokens(
        self, ids: Sequence[int], count: int, params: SamplingParams, stop_ids: Sequence[int] = ()
    ) -> AsyncGenerator[int, None]:
        return self._session.speculative_tokens(ids, count, params, stop_ids, self._drafter, AdaptiveWindow(),
                                                self._stats)  # fmt: skip
