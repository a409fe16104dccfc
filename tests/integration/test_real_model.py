"""The default chat model, SmolLM2-135M-Instruct from its GGUF, served by a 3-node swarm.

The package is exported at its default precision (the GGUF's own blocks: Q4_1 -> int4 with block
mins, Q8_0 -> int8) and its 30 layers split over three nodes; the question is asked through every
front end a user has: `swarm-client generate`, `swarm-client chat` in a terminal, and the official
openai client against `swarm-client serve`. Conversations longer than the context keep going.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.package import ModelPackage
from tests.conftest import FRANCE_QUESTION, REPO, ExportFn
from tests.helpers import LocalCluster, Terminal

SPANS = [(0, 10), (10, 20), (20, 30)]
SMALL_CONTEXT = 384  # a chat passes this in two or three turns
TURNS = [
    "Hi! What is your name?",
    "What is the capital of France?",
    "Tell me three facts about the Eiffel Tower.",
    "Now write a short poem about Paris.",
    "What did I ask you first?",
    "Thank you, goodbye!",
]


class ServerProcess:
    """`swarm-client serve` over the swarm at `peers`, as a user starts it."""

    def __init__(self, peers: list[str]) -> None:
        self.cmd = [sys.executable, "-m", "swarm.apps.cli", "serve", *peers, "--port", "0"]
        self.url = ""

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "serving the OpenAI API at " not in line:
            self.__exit__()
            raise AssertionError(f"serve did not start: {line}")
        self.url = line.split(" at ")[1].split(";")[0].strip()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def smollm2(export_package: ExportFn, smollm2_gguf: Path) -> ModelPackage:
    return export_package(smollm2_gguf)


@pytest.fixture(scope="module")
def smollm2_small_context(export_package: ExportFn, smollm2_gguf: Path) -> ModelPackage:
    return export_package(smollm2_gguf, max_context=SMALL_CONTEXT)


@pytest.fixture
def swarm_of_three(cluster: LocalCluster, smollm2: ModelPackage) -> list[str]:
    cluster.start_chain(smollm2.root, SPANS)
    return [arg for address in cluster.addresses for arg in ("--peer", address)]


def test_the_default_export_keeps_the_ggufs_bit_width(smollm2: ModelPackage) -> None:
    m = smollm2.manifest
    assert m.quantization == "int4" and m.source["gguf_tensor_types"] == "F32 x61, Q4_1 x210, Q8_0 x1"
    # the Q8_0 embedding stays 8-bit on the first node: ~28 MB of levels, not 113 MB of float32
    assert m.embedding.bytes < 40 * 2**20
    # ~6 bits a weight (4-bit levels, float32 scales and mins per 32) and each block's 1 MiB rotary
    # tables: 113 MB, where float32 blocks would be 425 MB
    assert sum(b.bytes for b in m.blocks) < 120 * 2**20


def test_generate_answers_through_a_3_node_swarm(swarm_of_three: list[str]) -> None:
    cmd = [sys.executable, "-m", "swarm.apps.cli", "generate", *swarm_of_three, "--max-tokens", "24",
           "What is the capital of France?"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    assert "route" in done.stderr and done.stderr.count("->") == 2  # three hops


def test_chat_in_a_terminal_answers(swarm_of_three: list[str]) -> None:
    term = Terminal([sys.executable, "-m", "swarm.apps.cli", "chat", *swarm_of_three, "--max-tokens", "40"])
    try:
        term.expect("you> ", timeout_s=60)
        term.type("What is the capital of France?")
        assert "Paris" in term.expect("you> ", timeout_s=90)
        term.type("/quit")
    finally:
        assert term.close() == 0


@pytest.fixture
def server(cluster: LocalCluster, smollm2: ModelPackage) -> Iterator[ServerProcess]:
    cluster.start_chain(smollm2.root, SPANS)
    peers = [arg for address in cluster.addresses for arg in ("--peer", address)]
    with ServerProcess(peers) as running:
        yield running


def test_the_openai_client_gets_the_answer(server: ServerProcess) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url, api_key="unused")
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, messages=FRANCE_QUESTION, max_tokens=24, temperature=0)
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"  # it ended its turn (<|im_end|>), not ran out


def test_a_six_turn_chat_in_the_terminal_outlives_the_context(
    cluster: LocalCluster, smollm2_small_context: ModelPackage
) -> None:
    cluster.start_chain(smollm2_small_context.root, SPANS)
    peers = [arg for address in cluster.addresses for arg in ("--peer", address)]
    term = Terminal([sys.executable, "-m", "swarm.apps.cli", "chat", *peers, "--max-tokens", "120"])
    dropped = []
    try:
        term.expect("you> ", timeout_s=60)
        for turn in TURNS:
            term.type(turn)
            answer = term.expect("you> ", timeout_s=120)
            assert "error" not in answer and answer.strip().removeprefix(turn).strip(), answer
            term.type("/stats")
            dropped.append("left out to fit the context" in term.expect("you> "))
        term.type("/quit")
    finally:
        assert term.close() == 0
    assert not dropped[0] and dropped[-1], dropped  # the first turn fits whole, the last did not


def test_a_six_turn_chat_through_serve_outlives_the_context(
    cluster: LocalCluster, smollm2_small_context: ModelPackage
) -> None:
    from openai import BadRequestError, OpenAI

    cluster.start_chain(smollm2_small_context.root, SPANS)
    peers = [arg for address in cluster.addresses for arg in ("--peer", address)]
    with ServerProcess(peers) as running:
        client = OpenAI(base_url=running.url, api_key="unused")
        model = client.models.list().data[0].id
        messages: list[dict[str, str]] = []
        prompt_tokens = []
        for turn in TURNS:
            messages.append({"role": "user", "content": turn})
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=120, temperature=0)
            text = reply.choices[0].message.content or ""
            assert text.strip()
            assert reply.usage is not None and reply.usage.total_tokens <= SMALL_CONTEXT
            prompt_tokens.append(reply.usage.prompt_tokens)
            messages.append({"role": "assistant", "content": text})
        assert sum(len(m["content"]) for m in messages) > SMALL_CONTEXT * 2  # the history outgrew the context
        with pytest.raises(BadRequestError, match="newest message"):  # one message alone cannot fit
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Paris " * 400}])
