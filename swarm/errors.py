"""One exception tree for everything a user of swarm can see.

Every message says what went wrong and, where there is one, what to do about it.
"""

from __future__ import annotations


class SwarmError(Exception):
    """Base of every error swarm raises on purpose.

    The message speaks to whoever called: `str(error)` names the SDK's arguments (`peers=[...]`),
    and where the command line spells the remedy otherwise (`--peer HOST:PORT`), the error also
    carries that wording as `cli`; `error.for_cli` is what a command line prints."""

    def __init__(self, *args: object, cli: str | None = None) -> None:
        super().__init__(*args)
        self.cli = cli

    @property
    def for_cli(self) -> str:
        return self.cli if self.cli is not None else str(self)


class InvalidPackage(SwarmError):
    """A model package is missing, malformed, or does not match its manifest."""


class InvalidRequest(SwarmError):
    """A request that can never succeed as sent (wrong shape, dtype, position, argument)."""


class CapacityExceeded(SwarmError):
    """Admitting this request would exceed a configured limit (memory, context, sessions)."""


class NoRouteError(SwarmError):
    """No chain of live peers covers every layer of the model."""


class PeerUnavailable(SwarmError):
    """A peer could not be reached or stopped answering."""


class StaleRoute(PeerUnavailable):
    """The route names a node or span that is not there any more (a node restarted, moved or
    was replaced): refresh the view of the swarm and plan again."""


class SessionExpired(SwarmError):
    """The session is unknown to the peer: closed, timed out, or never opened."""


class AuthenticationError(SwarmError):
    """A peer or message failed authentication."""
