"""Structured logs: one line per event, as key=value pairs (`text`) or one JSON object (`json`).

    time=2025-01-01T12:00:00.123Z level=info logger=swarm.node msg="node 3f2a serving layers [0, 2)"

Fields given as `log.info("...", extra={"session": sid})` become keys of their own. Quiet by
default: warnings and errors only; `-v` adds info, `-vv` debug.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
_PLAIN = re.compile(r"[A-Za-z0-9_.:/@\[\]()+-]+")
# attributes every LogRecord has: anything else on a record came from `extra=`
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def level_for(verbosity: int) -> int:
    """0 -> WARNING, 1 (-v) -> INFO, 2 or more (-vv) -> DEBUG."""
    return (logging.WARNING, logging.INFO)[verbosity] if 0 <= verbosity < 2 else logging.DEBUG


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
    fields: dict[str, Any] = {"time": when, "level": record.levelname.lower(), "logger": record.name,
                              "msg": record.getMessage()}  # fmt: skip
    fields.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
    if record.exc_info:
        fields["error"] = logging.Formatter().formatException(record.exc_info)
    return fields


def _value(value: Any) -> str:
    text = str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)  # quoted, newlines escaped


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_value(value)}" for key, value in _fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def configure_logging(verbosity: int = 0, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send this process's logs to `stream` (default stderr), one structured line per event."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_for(verbosity))
