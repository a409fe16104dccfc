"""The host app's JSON config: defaults, checks, and the NodeConfig it becomes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from android_bridge.config import parse_config
from android_bridge.device import Thermal
from android_bridge.events import EventLog
from swarm.errors import InvalidRequest
from swarm.keys import SwarmKey


def test_a_minimal_config(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match='"swarm_key", or "insecure": true'):
        parse_config(json.dumps({"storage_dir": str(tmp_path)})).node_config()  # an open swarm only on purpose
    config = parse_config(json.dumps({"storage_dir": str(tmp_path), "insecure": True}))
    node = config.node_config()
    assert node.model is None and node.swarm_key is None and node.max_memory is None
    assert node.cache_dir == tmp_path / "blocks" and node.identity_file == tmp_path / "node.key"
    assert config.device == "auto" and not config.policy.serve_on_battery


def test_a_full_config_reaches_the_node_config(tmp_path: Path) -> None:
    key = SwarmKey.generate()
    config = parse_config(json.dumps({
        "storage_dir": str(tmp_path), "swarm_key": key.join_code, "model_id": "ab12", "memory_budget": "64MB",
        "threads": 1, "span": [2, 5], "peers": ["10.0.0.2:7000"], "port": 7001, "device": "callbacks",
        "policy": {"serve_on_battery": True, "leave_thermal": "critical"}, "drain_timeout_s": 2,
    }))  # fmt: skip
    node = config.node_config()
    assert node.swarm_key is not None and node.swarm_key.swarm_id == key.swarm_id
    assert (node.model_id, node.max_memory, node.threads, node.span, node.peers, node.port) == (
        "ab12", 64_000_000, 1, (2, 5), ("10.0.0.2:7000",), 7001)  # fmt: skip
    assert node.drain_timeout_s == 2.0 and config.policy.leave_thermal is Thermal.CRITICAL
    assert config.to_dict()["swarm_key"] == "(set)"  # the status never shows the key


@pytest.mark.parametrize("raw, message", [
    ({}, "needs storage_dir"),
    ({"storage_dir": "/x", "memory": "1GB"}, "unknown node config keys"),
    ({"storage_dir": "/x", "threads": "2"}, "'threads': wants int"),
    ({"storage_dir": "/x", "memory_budget": "lots"}, "'memory_budget': not a size"),
    ({"storage_dir": "/x", "span": [3, 1]}, "'span': wants \\[start, end\\]"),
    ({"storage_dir": "/x", "device": "ios"}, "'device': wants one of"),
    ({"storage_dir": "/x", "poll_interval_s": 0}, "'poll_interval_s': wants seconds > 0"),
    ({"storage_dir": "/x", "policy": {"nap": True}}, "'policy': unknown policy settings"),
    ({"storage_dir": "/x", "policy": "strict"}, "'policy': wants dict"),
])  # fmt: skip
def test_bad_configs_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_config(json.dumps(raw))


def test_a_mistyped_join_code_is_clear(tmp_path: Path) -> None:
    code = SwarmKey.generate().join_code
    typo = code[:10] + ("a" if code[10] != "a" else "b") + code[11:]
    config = parse_config(json.dumps({"storage_dir": str(tmp_path), "swarm_key": typo}))
    with pytest.raises(InvalidRequest, match=r"swarm_key: .*join code"):
        config.node_config()


def test_not_json_is_clear() -> None:
    with pytest.raises(InvalidRequest, match="not JSON"):
        parse_config("{storage_dir: /x}")


def test_events_reach_a_callable_or_an_object_with_on_event_and_the_poll_queue() -> None:
    got: list[str] = []

    class JavaListener:  # what a Kotlin object looks like through Chaquopy
        def onEvent(self, text: str) -> None:
            got.append("java " + text)

    log = EventLog(got.append)
    log.emit("joined", node_id="n1")
    log.set_listener(JavaListener())
    log.emit("left", reason="battery")
    assert [json.loads(g.removeprefix("java "))["event"] for g in got] == ["joined", "left"]
    assert [json.loads(e)["event"] for e in log.poll()] == ["joined", "left"]
    assert log.poll(0.01) == []


def test_a_failing_listener_does_not_stop_events() -> None:
    def broken(_text: str) -> None:
        raise RuntimeError("app bug")

    log = EventLog(broken)
    log.emit("serving", start=0, end=2)
    assert log.wait_for("serving", 0.1)["end"] == 2
