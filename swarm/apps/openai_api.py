"""The OpenAI API's shapes over the async text API: request bodies, errors, response objects,
and the generation of one request (stop strings, finish reason, token counts).

No HTTP here: `swarm.apps.openai_server` serves these. Needs pydantic (installed with fastapi).
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from swarm.errors import CapacityExceeded, InvalidRequest, NoRouteError, PeerUnavailable, SwarmError
from swarm.generation import GenerationRequest, GenerationStats
from swarm.sampling import SamplingParams
from swarm.textgen import TextGenerator
from swarm.tokenizer import Message, StreamDecoder

COMPLETION_DEFAULT_MAX_TOKENS = 16  # as in the OpenAI API; chat defaults to the rest of the context


# ---- errors


class ApiError(Exception):
    """An error answered in the OpenAI shape with this HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}


def from_swarm_error(exc: SwarmError) -> ApiError:
    if isinstance(exc, InvalidRequest):
        return ApiError(400, str(exc))
    if isinstance(exc, CapacityExceeded):
        return ApiError(503, str(exc), "server_error", code="capacity_exceeded")
    if isinstance(exc, (NoRouteError, PeerUnavailable)):
        return ApiError(503, str(exc), "server_error", code="swarm_unavailable")
    return ApiError(500, str(exc), "server_error")


# ---- requests


class Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI parameters this server does not use are ignored

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)  # None = 1, as in the OpenAI API
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # an extension, as in vLLM
    seed: int | None = Field(default=None, ge=0, lt=2**64)  # None = a random seed
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    logprobs: Any = None


class CompletionBody(Body):
    prompt: str | list[str] | list[int]


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatBody(Body):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


def parse_stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not s for s in stops):
        raise ApiError(400, "stop strings must not be empty", param="stop")
    return stops


def sampling_params(body: Body) -> SamplingParams:
    try:
        return SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_k=body.top_k or 0,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=secrets.randbits(63) if body.seed is None else body.seed,
        )
    except InvalidRequest as exc:
        raise ApiError(400, str(exc)) from exc


def check_unsupported(body: Body) -> None:
    if (body.n or 1) != 1:
        raise ApiError(400, "n must be 1: send one request per completion", param="n")
    if body.logprobs:
        raise ApiError(400, "logprobs are not supported", param="logprobs")


def chat_messages(messages: Sequence[ChatMessage]) -> list[Message]:
    def text(content: str | list[ContentPart] | None) -> str:
        return content if isinstance(content, str) else "".join(part.text for part in content or ())

    role = {"developer": "system"}
    return [{"role": role.get(m.role, m.role), "content": text(m.content)} for m in messages]


def prompt_ids_of(model: TextGenerator, prompt: str | list[str] | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return model.codec.encode(prompt)
    if prompt and all(isinstance(p, int) for p in prompt):
        vocab = model.manifest.architecture.vocab_size
        if any(not 0 <= int(t) < vocab for t in prompt):
            raise ApiError(400, f"token ids must be in [0, {vocab})", param="prompt")
        return [int(t) for t in prompt]
    if len(prompt) != 1:
        raise ApiError(400, "send exactly one prompt per request", param="prompt")
    return model.codec.encode(str(prompt[0]))


@dataclass(frozen=True)
class Job:
    """One checked request: what to generate and where to stop."""

    request: GenerationRequest
    stops: tuple[str, ...]


def make_job(model: TextGenerator, body: Body, prompt_ids: list[int], max_tokens: int | None,
             speculative: str | None = None) -> Job:  # fmt: skip
    check_unsupported(body)
    if max_tokens is None:
        max_tokens = max(1, model.manifest.max_context - len(prompt_ids))
    request = GenerationRequest(tuple(prompt_ids), max_tokens, sampling_params(body), speculative=speculative)
    request.check(model.manifest.max_context)  # before a stream starts, so the error is a plain 400
    return Job(request, parse_stops(body.stop))


# ---- generation


class StopScanner:
    """Cuts streamed text at the first stop string to be completed, holding back a tail that may begin one.

    The cut is where a character-by-character scan stops, so it does not depend on how the text
    is split into pieces."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.parse_stops = tuple(stops)
        self._held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """The text safe to send now, and whether a stop string was reached."""
        text = self._held + piece
        found = [(i + len(s), i) for s in self.parse_stops if (i := text.find(s)) >= 0]  # (end, start)
        if found:
            self._held = ""
            return text[: min(found)[1]], True
        keep = self._partial_stop(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _partial_stop(self, text: str) -> int:
        """The length of the longest end of `text` that begins some stop string."""
        best = 0
        for stop in self.parse_stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best


@dataclass
class Outcome:
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str = "length"  # "stop" at end-of-sequence or a stop string
    stats: GenerationStats = field(default_factory=GenerationStats)  # timings, for the request's log line

    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


async def run_job(model: TextGenerator, job: Job, outcome: Outcome) -> AsyncIterator[str]:
    """Text pieces as tokens arrive, cut at end-of-sequence or a stop string; counts go to `outcome`."""
    decoder = StreamDecoder(model.codec, job.request.prompt_ids)
    eos = set(model.manifest.tokenizer.eos_token_ids)
    scanner = StopScanner(job.stops)
    tokens = cast(AsyncGenerator[int, None], model.generate_ids(job.request, outcome.stats))  # an async generator
    async with aclosing(tokens):
        async for token in tokens:
            outcome.completion_tokens += 1
            if token in eos:
                outcome.finish_reason = "stop"
                break
            text, stopped = scanner.push(decoder.push(token))
            if text:
                yield text
            if stopped:
                outcome.finish_reason = "stop"
                return
    if rest := scanner.flush():
        yield rest


# ---- responses


@dataclass(frozen=True)
class Envelope:
    """The fields every response object of one request shares."""

    object: str  # chat.completion | chat.completion.chunk | text_completion
    model: str
    id: str
    created: int = field(default_factory=lambda: int(time.time()))

    def wrap(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                                "choices": choices}  # fmt: skip
        if usage is not None:
            body["usage"] = usage
        return body


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def text_choice(text: str, finish: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def message_choice(text: str, finish: str) -> dict[str, Any]:
    return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}


def delta_choice(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
