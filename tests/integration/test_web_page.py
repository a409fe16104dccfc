"""The web page of `swarm-client serve` (swarm/apps/web_page.py, swarm/apps/web/): served open
while the API behind it keeps its key; `/v1/swarm` is `swarm-client status --json` plus the live
sessions' routes; replies carry their timings and route; a client that leaves ends its generation.
And the page itself in a real headless Chromium on a real 3-node swarm: a streamed answer, the
map's spans, a killed node marked unreachable, the next answer completed on the replica.

The browser test needs Debian's chromium and chromium-driver (scripts/test installs them as
root); in CI their absence fails the run.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import pytest

from swarm.apps.cli import main
from swarm.client import AsyncSwarm
from swarm.generation import GenerationRequest, GenerationStats, stepped
from swarm.local import LocalModel
from swarm.package import ModelPackage
from swarm.sampling import SamplingParams
from swarm.textgen import TextGenerator
from tests import browser
from tests.helpers import LocalCluster, start_node, stop_and_read_stderr, wait_until
from tests.integration.test_openai_server import MESSAGES, client, serving

MODEL = "stories260K"


def get(url: str, key: str | None = None) -> tuple[int, str, bytes]:
    """Status, content type and body of a GET."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def swarm_json(base: str, key: str | None = None) -> dict[str, Any]:
    status, _, body = get(f"{base}/swarm", key)
    assert status == 200, body
    return dict(json.loads(body))


@pytest.fixture(scope="module")
def local(stories_package: ModelPackage) -> Iterator[LocalModel]:
    model = LocalModel(stories_package)
    yield model
    model.close()


def test_cli_serve_shows_the_page_on_127_0_0_1_and_the_api_keeps_its_key(stories_package: ModelPackage) -> None:
    cmd = [sys.executable, "-m", "swarm.apps.cli", "serve", "--local", str(stories_package.root), "--port", "0",
           "--api-key", "k1"]  # fmt: skip  # no --host: the default must be loopback only
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        api_line, page_line = process.stderr.readline(), process.stderr.readline()
        assert "serving the OpenAI API at http://127.0.0.1:" in api_line, api_line
        page = re.search(r"web page \(chat and swarm map\) is at (http://127\.0\.0\.1:\d+/)$", page_line.strip())
        assert page is not None, page_line
        root = page.group(1)
        status, kind, html = get(root)  # the page itself is open: it asks for the key
        assert status == 200 and kind.startswith("text/html") and b'<script src="/web/app.js">' in html
        assert get(root + "web/app.js")[:2] == (200, "text/javascript; charset=utf-8")
        assert get(root + "web/style.css")[:2] == (200, "text/css; charset=utf-8")
        assert get(root + "web/../pyproject.toml")[0] == 404 and get(root + "web/index.py")[0] == 404

        for key, code in [(None, None), ("wrong", "invalid_api_key")]:  # what the page shows comes from the API
            for path in ("v1/swarm", "v1/models"):
                status, _, body = get(root + path, key)
                error = json.loads(body)["error"]
                assert status == 401 and error["code"] == code and set(error) == {"message", "type", "param", "code"}
        data = swarm_json(root + "v1", "k1")
        assert data["local"] and data["model"] == MODEL and data["num_layers"] == 5 and data["complete"]
        assert data["peers"] == [] and data["sessions"] == []
    finally:
        logged = stop_and_read_stderr(process)
    requests = [line for line in logged if "logger=swarm.openai" in line]  # info lines only (serve's default)
    assert not any("status=200" in line for line in requests), requests  # an open page's polls do not flood the log
    assert sum('msg="GET /v1/swarm" status=401' in line for line in requests) == 2, requests  # refusals do show


def status_json(addresses: Sequence[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["status", *(arg for a in addresses for arg in ("--peer", a)), "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_swarm_endpoint_is_the_status_json_and_replies_carry_their_route(
    cluster: LocalCluster, stories_package: ModelPackage, local: LocalModel, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = cluster.start_chain(stories_package.root, [(0, 2), (2, 5)])

    async def connect(stack: AsyncExitStack) -> Any:
        swarm = await AsyncSwarm.connect(cluster.addresses)
        stack.push_async_callback(swarm.close)
        return swarm  # the swarm, not only its text: /v1/swarm describes its nodes

    with serving(connect) as base:
        data = swarm_json(base)
        reference = status_json(cluster.addresses, capsys)  # what `swarm-client status --json` says
        assert set(data) == set(reference) | {"sessions", "served_model", "local"}
        assert [(p["node_id"], p["start"], p["end"], p["state"]) for p in data["peers"]] == \
            [(n.node_id, *span, "up") for n, span in zip(nodes, [(0, 2), (2, 5)], strict=True)]  # fmt: skip
        assert data["route"] == reference["route"] and data["complete"] and not data["local"]
        assert data["sessions"] == [] and data["served_model"] == MODEL

        hops = [{"address": n.address, "start": s, "end": e} for n, (s, e) in zip(nodes, [(0, 2), (2, 5)], strict=True)]
        expected = local.chat(MESSAGES, max_tokens=30)
        chunks = list(client(base).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30,
                                                           temperature=0, stream=True,
                                                           stream_options={"include_usage": True}))  # fmt: skip
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected  # the client parses
        last = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
        stats = (last.model_extra or {})["swarm"]  # an extra field of the last chunk, kept by the official client
        assert stats["ttft_ms"] > 0 and stats["tokens_per_s"] > 0 and stats["route"] == hops
        assert stats["recoveries"] == 0 and chunks[-1].usage is not None
        reply = client(base).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0)
        assert reply.choices[0].message.content == expected and (reply.model_extra or {})["swarm"]["route"] == hops

        nodes[1].servicer.draining = True  # leaving: the map says so at a later poll

        def state() -> str:
            return next(p["state"] for p in swarm_json(base)["peers"] if p["node_id"] == nodes[1].node_id)

        assert wait_until(lambda: state() == "draining", timeout_s=5), state()
        assert swarm_json(base)["gaps"] == [[2, 5]]  # it takes no new sessions: nobody else serves [2, 5)


class Gate:
    """The local runner, stalled after a few tokens until the generation is closed: a request
    that stays live as long as the test likes, and that records when its stream ends."""

    def __init__(self, local: LocalModel, after: int) -> None:
        self.local, self.after, self.closed = local, after, 0
        self.text = TextGenerator(local.manifest, local.codec, self.open_stream)

    @asynccontextmanager
    async def open_stream(self, request: GenerationRequest, stats: GenerationStats) -> AsyncIterator[Gate]:
        stats.route = [f"local:0-{self.local.manifest.num_layers}"]  # as LocalModel's own stream says
        session, steps = self.local.session(request.total_tokens), 0

        async def step(ids: Sequence[int], params: SamplingParams) -> int:
            nonlocal steps
            steps += 1
            if steps > self.after:
                await asyncio.Event().wait()  # until cancelled
            return await session.step(ids, params)

        self._step = step
        try:
            yield self
        finally:
            self.closed += 1

    def tokens(self, ids: Sequence[int], count: int, params: SamplingParams,
               stop_ids: Sequence[int] = ()) -> AsyncGenerator[int, None]:  # fmt: skip
        return stepped(self._step, ids, count, params, stop_ids)


def test_live_sessions_are_listed_and_a_client_that_leaves_ends_its_generation(local: LocalModel) -> None:
    gate = Gate(local, after=4)

    async def text(stack: AsyncExitStack) -> TextGenerator:
        return gate.text

    with serving(text) as base:
        host, port = base.removeprefix("http://").removesuffix("/v1").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 50, "stream": True}
            connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200
            pieces = 0
            while pieces < 3:  # the first tokens' text has come: the generation is live, and stalls
                line = response.readline().decode()
                assert line, "the stream ended early"
                pieces += line.startswith("data: ") and '"content": "' in line and '"role"' not in line
            sessions = swarm_json(base)["sessions"]
            assert len(sessions) == 1 and sessions[0]["id"].startswith("chatcmpl-")
            assert sessions[0]["route"] == [{"address": "local", "start": 0, "end": 5}]
            assert sessions[0]["tokens"] >= 3 and gate.closed == 0
        finally:
            connection.close()  # what the page's stop button does: the fetch is aborted
        assert wait_until(lambda: gate.closed == 1, timeout_s=5), "the generation outlived its client"
        assert swarm_json(base)["sessions"] == []


# ---- the page in a browser, on a swarm of node processes ---------------------------------------


@pytest.fixture(scope="module")
def chromium_ready() -> None:
    if missing := browser.missing():
        message = f"the web page test needs Debian's chromium and chromium-driver ({', '.join(missing)} missing)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; scripts/test installs them when run as root")
        pytest.skip(f"NOT TESTED: {message}; nothing drove the page in a browser")


SWARM_SPANS = [(0, 2), (2, 5), (2, 5)]  # the last two are replicas: one can be killed


Node = tuple[subprocess.Popen[str], str, str]  # a node process, its address and node id


@contextmanager
def node_processes(package: ModelPackage, spans: Sequence[tuple[int, int]]) -> Iterator[list[Node]]:
    """(process, address, node id) of a node process per span, without mDNS (the client is given
    their addresses); all stopped at the end."""
    started = []
    try:
        for start, end in spans:
            proc = start_node("--model", str(package.root), "--blocks", f"{start}:{end}", "--no-mdns",
                              "--drain-timeout", "0")  # fmt: skip
            words = proc.serving.split()  # type: ignore[attr-defined]  # serving M layers A:B at ADDRESS as ID
            started.append((proc, words[words.index("at") + 1], words[words.index("as") + 1]))
        yield started
    finally:
        for proc, _, _ in started:
            proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def map_nodes(driver: Any) -> dict[str, dict[str, str]]:
    """The nodes the map draws: address -> their data attributes."""
    found = driver.execute_script("""
        return [...document.querySelectorAll('#map .node')].map((n) => ({...n.dataset}));""")
    return {node["address"]: node for node in found}


def ask(driver: Any, question: str, timeout_s: float = 60) -> tuple[str, str, list[int]]:
    """Type `question`, wait for the reply to complete; its text, its stats line, and the reply's
    length each time the page changed it while it streamed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    before = len(driver.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
    # record the reply's length at every change the page makes (a test-side observer, not a page hook)
    driver.execute_script("""
        window.lengths = [];
        new MutationObserver(() => {
          const replies = document.querySelectorAll('.msg.assistant .text');
          if (replies.length > arguments[0]) window.lengths.push(replies[arguments[0]].textContent.length);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
    """, before)  # fmt: skip
    prompt = driver.find_element(By.ID, "prompt")
    prompt.send_keys(question, Keys.ENTER)
    deadline = time.monotonic() + timeout_s
    while True:
        replies = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")
        if len(replies) > before and replies[before].get_attribute("data-done") == "true":
            break
        assert time.monotonic() < deadline, "the reply did not complete"
        time.sleep(0.05)
    reply = replies[before]
    assert not driver.find_element(By.ID, "stop").is_displayed()  # the stop button goes with the stream
    text = driver.execute_script("return arguments[0].textContent", reply.find_element(By.CSS_SELECTOR, ".text"))
    return text, reply.find_element(By.CSS_SELECTOR, ".stats").text, driver.execute_script("return window.lengths")


def test_the_page_chats_and_maps_a_live_swarm(chromium_ready: None, stories_package: ModelPackage) -> None:
    from selenium.webdriver.common.by import By

    with node_processes(stories_package, SWARM_SPANS) as nodes, browser.chromium() as driver:

        async def connect(stack: AsyncExitStack) -> Any:
            swarm = await AsyncSwarm.connect([address for _, address, _ in nodes], open_deadline_s=1.0,
                                             min_step_deadline_s=1.0)  # fmt: skip
            stack.push_async_callback(swarm.close)
            return swarm

        with serving(connect) as base:
            driver.get(base.removesuffix("v1"))
            expected = {address: {"nodeId": node_id, "address": address, "start": str(s), "end": str(e), "state": "up"}
                        for (_, address, node_id), (s, e) in zip(nodes, SWARM_SPANS, strict=True)}  # fmt: skip
            assert wait_until(lambda: map_nodes(driver) == expected, timeout_s=15), map_nodes(driver)
            assert driver.find_element(By.ID, "model-label").text == MODEL  # one model: a label, no picker
            assert not driver.find_element(By.ID, "model-picker").is_displayed()

            text, stats, lengths = ask(driver, "Once upon a time")
            assert len(text) > 100 and "error" not in stats
            print(f"the reply grew in {len(set(lengths))} steps to {len(text)} characters")
            assert lengths == sorted(lengths) and lengths[-1] == len(text), lengths  # it only grew, to the end
            assert len(set(lengths) - {0}) >= 10, lengths  # in many pieces: streamed, not all at once
            route = re.findall(r"(127\.0\.0\.1:\d+) \[(\d+), (\d+)\)", stats)
            assert [(int(s), int(e)) for _, s, e in route] == [(0, 2), (2, 5)], stats
            assert re.search(r"first token \d+ ms · [\d.]+ tokens/s", stats), stats

            victim = next(proc for proc, address, _ in nodes if address == route[1][0])  # the replica that served
            victim.kill()
            victim.wait(timeout=10)
            killed = time.monotonic()
            assert wait_until(lambda: map_nodes(driver)[route[1][0]]["state"] == "unreachable", timeout_s=5), \
                map_nodes(driver)  # fmt: skip
            print(f"the map marked the killed node unreachable after {time.monotonic() - killed:.1f}s")
            others = {a: n["state"] for a, n in map_nodes(driver).items() if a != route[1][0]}
            assert set(others.values()) == {"up"} and len(others) == 2
            assert driver.find_element(By.CSS_SELECTOR, f'.node[data-address="{route[1][0]}"] .bar.unreachable')

            text, stats, _ = ask(driver, "Tell me more")
            assert text and "error" not in stats, stats
            hops = re.findall(r"(127\.0\.0\.1:\d+) \[(\d+), (\d+)\)", stats)
            assert [(int(s), int(e)) for _, s, e in hops] == [(0, 2), (2, 5)] and hops[1][0] != route[1][0], stats
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == [], errors


def test_the_page_asks_for_the_key_and_its_stop_button_ends_the_generation(chromium_ready: None,
                                                                           local: LocalModel) -> None:  # fmt: skip
    from selenium.webdriver.common.by import By

    gate = Gate(local, after=6)

    async def text(stack: AsyncExitStack) -> TextGenerator:
        return gate.text

    with serving(text, api_key="s3cret") as base, browser.chromium() as driver:
        driver.get(base.removesuffix("v1"))
        key_form = driver.find_element(By.ID, "key-form")
        assert wait_until(key_form.is_displayed, timeout_s=10)  # the API said 401: the page asks
        driver.find_element(By.ID, "key-input").send_keys("wrong\n")
        assert wait_until(lambda: "incorrect API key" in driver.find_element(By.ID, "key-error").text, timeout_s=10)
        driver.find_element(By.ID, "key-input").clear()
        driver.find_element(By.ID, "key-input").send_keys("s3cret\n")
        assert wait_until(lambda: not key_form.is_displayed(), timeout_s=10)
        summary = driver.find_element(By.ID, "map-summary")
        assert wait_until(lambda: "run in this process" in summary.text, timeout_s=10), summary.text

        driver.find_element(By.ID, "prompt").send_keys("Once upon a time\n")
        stop = driver.find_element(By.ID, "stop")
        assert wait_until(stop.is_displayed, timeout_s=10)
        reply = driver.find_element(By.CSS_SELECTOR, ".msg.assistant .text")
        assert wait_until(lambda: reply.text, timeout_s=10)  # the first tokens came; then the generation stalls
        session = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#map .route.session"), timeout_s=10)
        assert session  # the live session is drawn on the map
        assert gate.closed == 0
        stop.click()
        assert wait_until(lambda: gate.closed == 1, timeout_s=5), "the stop button left the generation running"
        stats = driver.find_element(By.CSS_SELECTOR, ".msg.assistant .stats").text
        assert stats.startswith("stopped") and not stop.is_displayed()
        assert driver.find_element(By.CSS_SELECTOR, ".msg.assistant").get_attribute("data-done") == "true"
