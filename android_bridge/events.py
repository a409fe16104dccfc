"""Events for the host app, as JSON: a bounded queue to poll, and an optional listener.

Kinds: starting, decision, downloading, paused, joined, serving, capacity, draining, left,
moving, error, stopped. Each event is one JSON object: {"event": KIND, "at": UNIX_TIME, ...details}.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Any

log = logging.getLogger("swarm.android")
KEEP = 1000  # events kept for polling; older ones are dropped when nobody polls


def _deliver(listener: Any, text: str) -> None:
    """A Python callable, or a Java/Kotlin object with an onEvent(String) method (Chaquopy)."""
    if callable(listener):
        listener(text)
    else:
        listener.onEvent(text)


class EventLog:
    def __init__(self, listener: Any = None, keep: int = KEEP) -> None:
        self._listener = listener
        self._pending: deque[str] = deque(maxlen=keep)
        self._ready = threading.Condition()
        self.count = 0
        self.last: dict[str, Any] | None = None

    def set_listener(self, listener: Any) -> None:
        self._listener = listener

    def emit(self, kind: str, **details: Any) -> None:
        event = {"event": kind, "at": round(time.time(), 3), **details}
        text = json.dumps(event)
        with self._ready:
            self._pending.append(text)
            self.count += 1
            self.last = event
            self._ready.notify_all()
        log.info("event %s", text)
        if self._listener is not None:
            try:
                _deliver(self._listener, text)
            except Exception as exc:  # the app's listener must never take the node down
                log.warning("the event listener failed on %s: %s", kind, exc)

    def poll(self, timeout_s: float = 0.0) -> list[str]:
        """Every event not polled yet, waiting up to `timeout_s` for the first one."""
        deadline = time.monotonic() + timeout_s
        with self._ready:
            while not self._pending and (left := deadline - time.monotonic()) > 0:
                self._ready.wait(left)
            events = list(self._pending)
            self._pending.clear()
        return events

    def wait_for(self, kind: str, timeout_s: float) -> dict[str, Any]:
        """The next event of `kind`; events before it are consumed. For scripts and tests."""
        deadline = time.monotonic() + timeout_s
        with self._ready:
            while True:
                while self._pending:
                    event: dict[str, Any] = json.loads(self._pending.popleft())
                    if event["event"] == kind:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {kind!r} event within {timeout_s:g}s")
                self._ready.wait(left)
