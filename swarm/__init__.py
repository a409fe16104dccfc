"""swarm: phones and laptops on one network serve a language model together.

from swarm import Swarm, LocalModel

with Swarm(peers=["192.168.1.20:7001"]) as model:
    print(model.generate("Once upon a time", max_tokens=40))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from swarm.errors import (
    AuthenticationError,
    CapacityExceeded,
    InvalidPackage,
    InvalidRequest,
    NoRouteError,
    PeerUnavailable,
    SessionExpired,
    SwarmError,
)
from swarm.generation import GenerationStats

if TYPE_CHECKING:
    from swarm.client import AsyncSwarm, Swarm
    from swarm.config import ClientConfig, RuntimeOptions
    from swarm.local import LocalModel

# Imported on first use, so `import swarm` (and every CLI, which imports it first) loads neither
# gRPC nor onnxruntime: a CLI sets its process defaults before gRPC starts (swarm/console.py).
_LAZY = {"AsyncSwarm": "swarm.client", "ClientConfig": "swarm.config", "Swarm": "swarm.client",
         "LocalModel": "swarm.local", "RuntimeOptions": "swarm.config"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'swarm' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "AsyncSwarm",
    "AuthenticationError",
    "CapacityExceeded",
    "ClientConfig",
    "GenerationStats",
    "InvalidPackage",
    "InvalidRequest",
    "LocalModel",
    "NoRouteError",
    "PeerUnavailable",
    "RuntimeOptions",
    "SessionExpired",
    "Swarm",
    "SwarmError",
]
