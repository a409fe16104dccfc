"""The process environment, read in one place.

Only the front doors call this: the CLIs (`swarm-client`, `swarm-node`) and the SDK's
constructors (`Swarm(...)`, `AsyncSwarm.connect`), which honour the same variables as the CLIs.
Everything below them takes values (`ClientConfig`, `NodeConfig`, a `SwarmKey`) and never looks
at the environment itself (tests/unit/test_imports.py checks that).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from swarm.keys import KEY_FILE_NAME, SwarmKey, parse_swarm_key, read_key_file

SWARM_KEY_ENV = "SWARM_KEY"  # the swarm's join code or key file
MDNS_INTERFACES_ENV = "SWARM_MDNS_INTERFACES"  # interface addresses for mDNS, comma-separated
IDENTITY_DIR_NAME = "identities"


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where swarm keeps keys: $XDG_CONFIG_HOME/swarm, else ~/.config/swarm."""
    return Path(environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")) / "swarm"


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where a client keeps what it fetched (a private session's part of the model):
    $XDG_CACHE_HOME/swarm, else ~/.cache/swarm."""
    return Path(environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "swarm"


def env_mdns_interfaces(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """Interface addresses from $SWARM_MDNS_INTERFACES ("10.0.0.5,127.0.0.1"): what the CLIs use
    when no --mdns-interface is given, and the SDK when no `mdns_interfaces` is (e.g. to keep a
    test or a demo on loopback)."""
    return tuple(a.strip() for a in environ.get(MDNS_INTERFACES_ENV, "").split(",") if a.strip())


def load_swarm_key(value: str | None, environ: Mapping[str, str] = os.environ) -> SwarmKey | None:
    """The swarm key from `value` (a join code or a key file), else $SWARM_KEY, else the default
    key file if `swarm-node init` wrote one; None when there is none anywhere."""
    value = value or environ.get(SWARM_KEY_ENV)
    if value is None:
        default = config_dir(environ) / KEY_FILE_NAME
        return read_key_file(default) if default.is_file() else None
    return parse_swarm_key(value)


def default_identity_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The folder of this device's node identities (one per running node), made if missing."""
    folder = config_dir(environ) / IDENTITY_DIR_NAME
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder
