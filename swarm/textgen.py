"""Text in, text out, over any way of running the model (local or a swarm).

`TextGenerator` is the async core: it tokenizes, opens a token stream for the request, runs the
token loop and detokenizes as tokens arrive. `SyncTextGenerator` is its thin sync facade.
Sampling keywords are those of `SamplingParams`: temperature, top_k, top_p, seed; `speculative=`
chooses a draft source (swarm/speculative.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from swarm._loop import BackgroundLoop
from swarm.conversation import fit_conversation
from swarm.generation import GenerationRequest, GenerationStats, TokenStream, generate_ids
from swarm.package import Manifest
from swarm.sampling import SamplingParams
from swarm.tokenizer import Message, StreamDecoder, TextCodec

OpenStream = Callable[[GenerationRequest, GenerationStats], AbstractAsyncContextManager[TokenStream]]


class TextGenerator:
    def __init__(self, manifest: Manifest, codec: TextCodec, open_stream: OpenStream) -> None:
        self.manifest = manifest
        self.codec = codec
        self._open_stream = open_stream

    async def generate_ids(
        self, request: GenerationRequest, stats: GenerationStats | None = None
    ) -> AsyncIterator[int]:
        request.check(self.manifest.max_context)
        stats = stats or GenerationStats()
        started = time.perf_counter()  # time to first token includes opening the route
        async with self._open_stream(request, stats) as stream:
            eos = self.manifest.tokenizer.eos_token_ids
            async for token in generate_ids(stream, request, eos, stats, started):
                yield token

    async def stream_ids(
        self,
        prompt_ids: Sequence[int],
        max_tokens: int = 128,
        *,
        stop_on_eos: bool = True,
        stats: GenerationStats | None = None,
        speculative: str | None = None,
        **sampling: Any,
    ) -> AsyncIterator[str]:
        """Text pieces as tokens arrive; end-of-sequence tokens are not shown. `speculative`: draft
        tokens with prompt lookup ("lookup") or a draft package (its path), checked by the model."""
        request = GenerationRequest(tuple(prompt_ids), max_tokens, SamplingParams(**sampling), stop_on_eos,
                                    speculative)  # fmt: skip
        decoder = StreamDecoder(self.codec, prompt_ids)
        eos = set(self.manifest.tokenizer.eos_token_ids)
        async for token in self.generate_ids(request, stats):
            if token not in eos and (piece := decoder.push(token)):
                yield piece

    def stream(self, prompt: str, max_tokens: int = 128, **options: Any) -> AsyncIterator[str]:
        return self.stream_ids(self.codec.encode(prompt), max_tokens, **options)

    def stream_chat(
        self, messages: Sequence[Message], max_tokens: int | None = 256, **options: Any
    ) -> AsyncIterator[str]:
        """The reply to a conversation. As much of it as fits the context is sent, the oldest turns
        left out first (`GenerationStats.context_note` says so); `max_tokens=None`: up to the end."""
        fitted = fit_conversation(self.codec, messages, self.manifest.max_context, max_tokens)
        stats = options.pop("stats", None) or GenerationStats()
        stats.context_note = fitted.note()
        return self.stream_ids(fitted.prompt_ids, fitted.max_tokens, stats=stats, **options)

    async def generate(self, prompt: str, max_tokens: int = 128, **options: Any) -> str:
        return "".join([piece async for piece in self.stream(prompt, max_tokens, **options)])

    async def chat(self, messages: Sequence[Message], max_tokens: int | None = 256, **options: Any) -> str:
        return "".join([piece async for piece in self.stream_chat(messages, max_tokens, **options)])


class SyncTextGenerator:
    """The same methods as `TextGenerator`, blocking, with iterators instead of async iterators."""

    def __init__(self, core: TextGenerator, loop: BackgroundLoop) -> None:
        self._core = core
        self._loop = loop

    @property
    def codec(self) -> TextCodec:
        return self._core.codec

    def generate_ids(self, request: GenerationRequest, stats: GenerationStats | None = None) -> Iterator[int]:
        return self._loop.iterate(self._core.generate_ids(request, stats))

    def close(self) -> None:
        """Stop the background loop; the object is unusable afterwards."""
        self._loop.close()

    def __enter__(self) -> SyncTextGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stream(self, prompt: str, max_tokens: int = 128, **options: Any) -> Iterator[str]:
        return self._loop.iterate(self._core.stream(prompt, max_tokens, **options))

    def stream_chat(self, messages: Sequence[Message], max_tokens: int | None = 256, **options: Any) -> Iterator[str]:
        return self._loop.iterate(self._core.stream_chat(messages, max_tokens, **options))

    def generate(self, prompt: str, max_tokens: int = 128, **options: Any) -> str:
        return "".join(self.stream(prompt, max_tokens, **options))

    def chat(self, messages: Sequence[Message], max_tokens: int | None = 256, **options: Any) -> str:
        return "".join(self.stream_chat(messages, max_tokens, **options))
