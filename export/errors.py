"""Errors the exporter reports as one clear line."""

from __future__ import annotations

from swarm.errors import SwarmError


class ExportError(SwarmError):
    """The checkpoint cannot be exported as asked; the message says why and what to do."""
