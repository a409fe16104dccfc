"""Structured logs: one line per event, key=value or JSON; warnings only by default."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from swarm.logs import configure_logging, level_for


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_levels() -> None:
    assert [level_for(v) for v in (0, 1, 2, 5)] == [logging.WARNING, logging.INFO, logging.DEBUG, logging.DEBUG]


@pytest.mark.usefixtures("restore_root_logger")
def test_key_value_lines_and_quiet_by_default() -> None:
    out = io.StringIO()
    configure_logging(0, "text", out)
    log = logging.getLogger("swarm.node")
    log.info("not shown by default")
    log.warning("hop %s failed:\nreset", "127.0.0.1:7001", extra={"session": "ab12"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1  # the info line was dropped; the newline in the message was escaped
    line = lines[0]
    assert line.startswith("time=") and " level=warning logger=swarm.node " in line
    assert 'msg="hop 127.0.0.1:7001 failed:\\nreset"' in line and line.endswith(" session=ab12")


@pytest.mark.usefixtures("restore_root_logger")
def test_json_lines_with_verbose() -> None:
    out = io.StringIO()
    configure_logging(1, "json", out)
    logging.getLogger("swarm.node").info("serving layers [%d, %d)", 0, 2, extra={"port": 7001})
    event = json.loads(out.getvalue())
    assert event["level"] == "info" and event["msg"] == "serving layers [0, 2)" and event["port"] == 7001
    assert event["time"].endswith("Z")
