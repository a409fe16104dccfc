"""Polling for a condition in tests, always with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(condition: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:
    """True as soon as `condition()` holds; after `timeout_s`, whether it holds then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())
