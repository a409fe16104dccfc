"""The local runner: a whole model package chained in one process.

It is the baseline every swarm result is compared with, token for token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from swarm.errors import InvalidRequest
from swarm.generation import GenerationRequest, GenerationStats, generate_ids
from swarm.package import BlockEntry, FileEntry, ModelPackage, load_package
from swarm.runtime import BlockRunner, EmbeddingRunner, HeadRunner, KVCache, RuntimeOptions
from swarm.sampling import SamplingParams, sample
from swarm.tokenizer import Message, StreamDecoder, TextCodec


class LocalModel:
    def __init__(self, package: str | Path | ModelPackage, options: RuntimeOptions | None = None) -> None:
        self.package = package if isinstance(package, ModelPackage) else load_package(package)
        options = options or RuntimeOptions()
        m = self.package.manifest
        entries: list[FileEntry | BlockEntry] = [m.embedding, *m.blocks, m.head]
        for entry in entries:
            self.package.verify_file(entry)
        self.manifest = m
        self.codec = TextCodec(self.package.path(m.tokenizer.file), m.tokenizer)
        self.embedding = EmbeddingRunner(self.package.path(m.embedding.file), options)
        self.blocks = [BlockRunner(self.package.path(b.file), b, m.architecture, options) for b in m.blocks]
        self.head = HeadRunner(self.package.path(m.head.file), options)

    def session(self, capacity: int | None = None) -> LocalSession:
        return LocalSession(self, capacity or self.manifest.max_context)

    def generate_ids(self, request: GenerationRequest, stats: GenerationStats | None = None) -> Iterator[int]:
        request.check(self.manifest.max_context)
        session = self.session(request.total_tokens)
        yield from generate_ids(
            session, request, self.manifest.tokenizer.eos_token_ids, stats or GenerationStats()
        )

    def generate(
        self,
        prompt: str,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_on_eos: bool = True,
    ) -> str:
        return "".join(self.stream(prompt, max_tokens, temperature, top_k, top_p, seed, stop_on_eos))

    def stream(
        self,
        prompt: str,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_on_eos: bool = True,
        stats: GenerationStats | None = None,
    ) -> Iterator[str]:
        """Text pieces as they are generated."""
        ids = tuple(self.codec.encode(prompt))
        yield from self._stream_ids(
            ids, max_tokens, SamplingParams(temperature, top_k, top_p, seed), stop_on_eos, stats
        )

    def chat(self, messages: Sequence[Message], max_tokens: int = 256, **sampling: float) -> str:
        ids = tuple(self.codec.encode_chat(messages))
        params = SamplingParams(**sampling)  # type: ignore[arg-type]
        return "".join(self._stream_ids(ids, max_tokens, params, True, None))

    def _stream_ids(
        self,
        ids: tuple[int, ...],
        max_tokens: int,
        params: SamplingParams,
        stop_on_eos: bool,
        stats: GenerationStats | None,
    ) -> Iterator[str]:
        decoder = StreamDecoder(self.codec, ids)
        eos = set(self.manifest.tokenizer.eos_token_ids)
        for token in self.generate_ids(GenerationRequest(ids, max_tokens, params, stop_on_eos), stats):
            if token not in eos:
                yield decoder.push(token)


class LocalSession:
    """One sequence's KV caches across every block."""

    def __init__(self, model: LocalModel, capacity: int) -> None:
        if capacity > model.manifest.max_context:
            raise InvalidRequest(
                f"{capacity} tokens exceed the model's context of {model.manifest.max_context}"
            )
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
        for block, cache in zip(self._model.blocks, self._caches, strict=False):
            x = block.forward(x, cache)
        return x

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (S, V) for every position of `ids` appended to the sequence."""
        return self._model.head.forward(self.hidden(ids))[0]

    def step(self, ids: Sequence[int], params: SamplingParams) -> int:
        last = self.hidden(ids)[:, -1:, :]
        logits = self._model.head.forward(last)[0, -1]
        return sample(logits, params, position=self.length)
