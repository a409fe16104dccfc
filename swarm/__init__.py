"""swarm: phones and laptops on one network serve a language model together.

from swarm import Swarm, LocalModel

with Swarm(peers=["192.168.1.20:7001"]) as model:
    print(model.generate("Once upon a time", max_tokens=40))
"""

from swarm.client import AsyncSwarm, ClientConfig, Swarm
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
from swarm.local import LocalModel

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
    "SessionExpired",
    "Swarm",
    "SwarmError",
]
