"""`swarm-client serve`, driven by the official `openai` client: over a local package and a real swarm."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager

import openai
import pytest

from swarm._loop import BackgroundLoop
from swarm.apps.openai_server import create_app, run_server
from swarm.client import AsyncSwarm
from swarm.generation import GenerationRequest, GenerationStats, stepped
from swarm.local import LocalModel, LocalSession
from swarm.package import ModelPackage
from swarm.sampling import SamplingParams
from swarm.textgen import TextGenerator
from tests.conftest import STORIES_PROMPT, STORIES_REFERENCE_TEXT
from tests.helpers import LocalCluster, stop_and_read_stderr

MODEL = "stories260K"
MESSAGES = [{"role": "system", "content": "Once upon a time"}, {"role": "user", "content": "there was a cat"}]

MakeText = Callable[[AsyncExitStack], Awaitable[TextGenerator]]


@contextmanager
def serving(make_text: MakeText, api_key: str | None = None, speculative: str | None = None) -> Iterator[str]:
    """The app over the model `make_text` opens, served on a loop thread of its own; yields the base URL."""
    loop = BackgroundLoop("openai-server")
    stack = AsyncExitStack()

    async def start() -> str:
        text = await make_text(stack)
        running = await stack.enter_async_context(run_server(create_app(text, api_key=api_key,
                                                                        speculative=speculative)))
        return running.url

    try:
        yield loop.run(start())
    finally:
        try:
            loop.run(stack.aclose())
        finally:
            loop.close()


def client(url: str, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(stories_package: ModelPackage) -> Iterator[LocalModel]:
    model = LocalModel(stories_package)
    yield model
    model.close()


@pytest.fixture(scope="module")
def url(local: LocalModel) -> Iterator[str]:
    async def text(stack: AsyncExitStack) -> TextGenerator:
        return local.text  # the local runner's async API works on any loop

    with serving(text) as base:
        yield base


def test_models_lists_the_package(url: str) -> None:
    assert [m.id for m in client(url).models.list()] == [MODEL]
    assert client(url).models.retrieve(MODEL).id == MODEL


def test_completion_is_the_local_greedy_text(url: str, local: LocalModel) -> None:
    reply = client(url).completions.create(model=MODEL, prompt=STORIES_PROMPT, max_tokens=40, temperature=0)
    expected = local.generate(STORIES_PROMPT, 40)
    assert reply.object == "text_completion" and len(reply.choices) == 1
    assert reply.choices[0].text == expected and STORIES_PROMPT + expected == STORIES_REFERENCE_TEXT
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (5, 40, 45)


def test_streamed_completion_matches(url: str, local: LocalModel) -> None:
    chunks = list(client(url).completions.create(model=MODEL, prompt=STORIES_PROMPT, max_tokens=40, temperature=0,
                                                 stream=True))  # fmt: skip
    assert all(c.object == "text_completion" for c in chunks) and len(chunks) > 10
    assert "".join(c.choices[0].text for c in chunks) == local.generate(STORIES_PROMPT, 40)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_and_streamed_chat_are_the_local_greedy_text(url: str, local: LocalModel) -> None:
    expected = local.chat(MESSAGES, max_tokens=30)
    reply = client(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "length"
    prompt_tokens = len(local.codec.encode_chat(MESSAGES))
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, 30)

    stream = client(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0,
                                                 stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == prompt_tokens + 30


def test_stop_strings_cut_the_text(url: str, local: LocalModel) -> None:
    full = local.generate(STORIES_PROMPT, 40)
    for stop in ["Lily", [" park", "named"]]:
        reply = client(url).completions.create(model=MODEL, prompt=STORIES_PROMPT, max_tokens=40, temperature=0,
                                               stop=stop)  # fmt: skip
        cut = min(full.index(s) for s in ([stop] if isinstance(stop, str) else stop))
        assert reply.choices[0].text == full[:cut] and reply.choices[0].finish_reason == "stop"
        assert reply.usage is not None and reply.usage.completion_tokens < 40
        chunks = client(url).completions.create(model=MODEL, prompt=STORIES_PROMPT, max_tokens=40, temperature=0,
                                                stop=stop, stream=True)  # fmt: skip
        pieces = list(chunks)
        assert "".join(c.choices[0].text for c in pieces) == full[:cut]
        assert pieces[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_is_the_local_runners(url: str, local: LocalModel) -> None:
    options = {"temperature": 0.8, "top_p": 0.9, "seed": 7}
    reply = client(url).completions.create(model=MODEL, prompt=STORIES_PROMPT, max_tokens=30, **options)
    assert reply.choices[0].text == local.generate(STORIES_PROMPT, 30, **options)


def bad_request(call: Callable[[], object]) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    assert caught.value.status_code == 400 and caught.value.type == "invalid_request_error"
    return caught.value


def request_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[logging.LogRecord]:
    """The server's request log lines, once `count` were written (a stream's comes after its last event)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [r for r in caplog.records if r.name == "swarm.openai"]
        if len(lines) >= count:
            return lines
        time.sleep(0.01)
    raise AssertionError(f"{len(lines)} request lines, not {count}")


def test_each_request_is_one_info_line(url: str, local: LocalModel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="swarm.openai")
    c = client(url)
    c.completions.create(model=MODEL, prompt=STORIES_PROMPT, max_tokens=10, temperature=0)
    list(c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0, stream=True))
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="nope", prompt=STORIES_PROMPT, max_tokens=1)
    completion, chat, missing = request_lines(caplog, 3)
    assert completion.levelno == logging.INFO and completion.getMessage() == "POST /v1/completions"
    fields = vars(completion)
    assert fields["status"] == 200
    assert (fields["model"], fields["prompt_tokens"], fields["completion_tokens"]) == (MODEL, 5, 10)
    assert fields["ttft_ms"] > 0 and fields["decode_tokens_per_s"] > 0 and fields["seconds"] > 0
    assert chat.getMessage() == "POST /v1/chat/completions" and vars(chat)["status"] == 200
    prompt_tokens = len(local.codec.encode_chat(MESSAGES))  # type: ignore[arg-type]
    assert (vars(chat)["prompt_tokens"], vars(chat)["completion_tokens"]) == (prompt_tokens, 12)
    assert vars(missing)["status"] == 404 and "prompt_tokens" not in vars(missing)


def test_bad_requests_get_openai_shaped_400s(url: str) -> None:
    c = client(url)
    completion = c.completions.create
    assert bad_request(lambda: completion(model=MODEL, prompt="hi", max_tokens=-1)).param == "max_tokens"
    assert bad_request(lambda: completion(model=MODEL, prompt="hi", n=2)).param == "n"
    assert bad_request(lambda: completion(model=MODEL, prompt="hi", temperature=-1)).param == "temperature"
    assert bad_request(lambda: c.chat.completions.create(model=MODEL, messages=[])).param == "messages"
    too_long = bad_request(lambda: completion(model=MODEL, prompt="hi", max_tokens=600))
    assert "exceeds the model's context" in too_long.message
    streamed = bad_request(lambda: completion(model=MODEL, prompt="hi", max_tokens=600, stream=True))
    assert "exceeds the model's context" in streamed.message  # refused before the stream starts


def test_unknown_model_is_404(url: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(url).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.status_code == 404 and caught.value.code == "model_not_found"
    assert caught.value.param == "model"


def post(url: str, body: dict[str, object], headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_api_key(local: LocalModel) -> None:
    async def text(stack: AsyncExitStack) -> TextGenerator:
        return local.text

    with serving(text, api_key="sekret") as base:
        reply = client(base, "sekret").completions.create(model=MODEL, prompt=STORIES_PROMPT, max_tokens=3,
                                                          temperature=0)  # fmt: skip
        assert reply.choices[0].text == local.generate(STORIES_PROMPT, 3)
        with pytest.raises(openai.AuthenticationError) as caught:
            client(base, "wrong").models.list()
        assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
        status, body = post(f"{base}/completions", {"model": MODEL, "prompt": "hi"}, {})
        assert status == 401 and set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}


class SlowStepper:
    """The local runner with a pause before every step, as if the model ran on slow devices."""

    def __init__(self, session: LocalSession) -> None:
        self.session = session

    async def step(self, ids: Sequence[int], params: SamplingParams) -> int:
        await asyncio.sleep(0.01)
        return await self.session.step(ids, params)

    def tokens(self, ids: Sequence[int], count: int, params: SamplingParams,
               stop_ids: Sequence[int] = ()) -> AsyncGenerator[int, None]:  # fmt: skip
        return stepped(self.step, ids, count, params, stop_ids)


def test_concurrent_requests_overlap(local: LocalModel) -> None:
    spans: list[tuple[float, float]] = []

    @asynccontextmanager
    async def open_stepper(request: GenerationRequest, stats: GenerationStats) -> AsyncIterator[SlowStepper]:
        started = time.monotonic()
        try:
            yield SlowStepper(local.session(request.total_tokens))
        finally:
            spans.append((started, time.monotonic()))

    async def text(stack: AsyncExitStack) -> TextGenerator:
        return TextGenerator(local.manifest, local.codec, open_stepper)

    with serving(text) as base:
        texts = run_concurrently(base, 2, max_tokens=20)
    assert texts == [local.generate(STORIES_PROMPT, 20)] * 2
    assert len(spans) == 2 and max(s for s, _ in spans) < min(e for _, e in spans)  # served at the same time


def run_concurrently(base: str, count: int, max_tokens: int) -> list[str]:
    texts: list[str] = [""] * count

    def one(i: int) -> None:
        reply = client(base).completions.create(model=MODEL, prompt=STORIES_PROMPT, max_tokens=max_tokens,
                                                temperature=0)  # fmt: skip
        texts[i] = reply.choices[0].text

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return texts


def test_through_a_swarm(cluster: LocalCluster, stories_package: ModelPackage, local: LocalModel) -> None:
    cluster.start_chain(stories_package.root, [(0, 2), (2, 5)])

    async def text(stack: AsyncExitStack) -> TextGenerator:
        swarm = await AsyncSwarm.connect(cluster.addresses)
        stack.push_async_callback(swarm.close)
        return swarm.text

    with serving(text) as base:
        c = client(base)
        reply = c.completions.create(model=MODEL, prompt=STORIES_PROMPT, max_tokens=40, temperature=0)
        assert STORIES_PROMPT + reply.choices[0].text == STORIES_REFERENCE_TEXT
        expected = local.chat(MESSAGES, max_tokens=30)
        chat = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0)
        assert chat.choices[0].message.content == expected
        stream = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == expected
        assert run_concurrently(base, 3, max_tokens=20) == [local.generate(STORIES_PROMPT, 20)] * 3


@pytest.mark.parametrize("depth", [1, 2])
def test_speculative_serving_through_a_swarm(cluster: LocalCluster, stories_package: ModelPackage, depth: int) -> None:
    cluster.start_chain(stories_package.root, [(0, 2), (2, 5)])

    async def text(stack: AsyncExitStack) -> TextGenerator:
        swarm = await AsyncSwarm.connect(cluster.addresses, speculative_depth=depth)
        stack.push_async_callback(swarm.close)
        return swarm.text

    with serving(text, speculative="lookup") as base:
        reply = client(base).completions.create(model=MODEL, prompt=STORIES_PROMPT, max_tokens=40, temperature=0)
    assert STORIES_PROMPT + reply.choices[0].text == STORIES_REFERENCE_TEXT  # plain greedy's, on this prompt
    spec = (reply.model_extra or {})["swarm"]["speculative"]  # how the drafts did, beside the timings
    assert 0 <= spec["acceptance"] <= 1 and spec["tokens_per_pass"] >= 1, spec
    assert (spec["passes_chained"] + spec["passes_dropped"] > 0) == (depth > 1), spec


def test_cli_serve(stories_package: ModelPackage, local: LocalModel) -> None:
    cmd = [sys.executable, "-m", "swarm.apps.cli", "serve", "--local", str(stories_package.root), "--port", "0",
           "--model-name", "tiny", "--api-key", "k1"]  # fmt: skip
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "serving the OpenAI API at http://127.0.0.1:" in line, line
        base = line.split(" at ")[1].split(";")[0].strip()
        c = client(base, "k1")
        assert [m.id for m in c.models.list()] == ["tiny"]
        reply = c.completions.create(model="tiny", prompt=STORIES_PROMPT, max_tokens=10, temperature=0)
        assert reply.choices[0].text == local.generate(STORIES_PROMPT, 10)
    finally:
        logged = stop_and_read_stderr(process)
    requests = [line for line in logged if "logger=swarm.openai" in line]  # one per request, at info
    assert len(requests) == 2 and all("level=info" in line for line in requests), logged
    assert 'msg="GET /v1/models" status=200 seconds=' in requests[0]
    assert 'msg="POST /v1/completions" status=200 seconds=' in requests[1]
    assert "model=tiny prompt_tokens=5 completion_tokens=10 ttft_ms=" in requests[1]


def test_cli_serve_without_fastapi_says_what_to_install(stories_package: ModelPackage) -> None:
    code = ("import sys; sys.modules['fastapi'] = None; from swarm.apps.cli import main; "
            f"sys.exit(main(['serve', '--local', {str(stories_package.root)!r}]))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "pip install 'swarm-llm[serve]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_serve_on_a_taken_port_is_one_line(stories_package: ModelPackage) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "swarm.apps.cli", "serve", "--local", str(stories_package.root),
               "--port", str(port)]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"swarm-client: error: cannot listen on 127.0.0.1:{port}")
