"""The embedding API's edges: bad input, no swarm to join, choosing the device source, stopping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import android_bridge.host as host_module
from android_bridge import CallbackProvider, NodeHost, SysfsProvider, TermuxProvider, parse_config
from android_bridge.device import StaticProvider
from swarm.errors import InvalidRequest


def lonely(tmp_path: Path) -> str:
    """A node with no way to find a swarm: no mDNS, no peers."""
    return json.dumps({"storage_dir": str(tmp_path / "phone"), "device": "static", "mdns": False, "retry_s": 0.2,
                       "poll_interval_s": 0.05, "insecure": True})  # fmt: skip


def test_no_swarm_is_an_error_event_and_the_host_keeps_trying(tmp_path: Path) -> None:
    host = NodeHost()
    host.start(lonely(tmp_path))
    try:
        assert host.events.wait_for("starting", 5)["config"]["device"] == "static"
        assert "found no swarm" in host.events.wait_for("error", 5)["message"]
        assert "found no swarm" in host.events.wait_for("error", 5)["message"]  # tried again after retry_s
        status = json.loads(host.status_json())
        assert status["phase"] == "error" and "found no swarm" in status["error"]
        assert status["decision"]["mode"] == "serve" and status["device"]["source"] == "static"
        polled = json.loads(host.poll_events(1.0))  # the app's way: a JSON array of what happened since
        assert polled and all({"event", "at"} <= set(e) for e in polled)
        with pytest.raises(InvalidRequest, match="already running"):
            host.start(lonely(tmp_path))
    finally:
        host.stop()
    assert json.loads(host.status_json()) == {"phase": "stopped"}
    assert host.events.wait_for("stopped", 1)["event"] == "stopped"
    host.stop()  # twice is harmless


def test_bad_input_is_refused_in_the_callers_thread(tmp_path: Path) -> None:
    host = NodeHost()
    with pytest.raises(InvalidRequest, match="needs storage_dir"):
        host.start("{}")
    with pytest.raises(InvalidRequest, match="swarm_key"):
        host.start(json.dumps({"storage_dir": str(tmp_path), "swarm_key": "swarm1-nope"}))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InvalidRequest, match="cannot use storage_dir"):
        host.start(json.dumps({"storage_dir": str(blocker / "sub"), "insecure": True}))
    with pytest.raises(InvalidRequest, match="unknown device state fields"):
        host.push_device_state('{"batery": 3}')
    assert json.loads(host.status_json()) == {"phase": "stopped"}


def test_pushes_reach_the_callbacks_provider() -> None:
    provider = CallbackProvider()
    host = NodeHost(provider)
    host.push_device_state('{"battery_percent": 33, "charging": true}')
    assert provider.read().battery_percent == 33.0 and provider.read().charging


def test_auto_picks_termux_then_android_callbacks_then_sysfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(json.dumps({"storage_dir": str(tmp_path)}))
    callbacks = CallbackProvider()
    monkeypatch.setattr(host_module, "_on_android", lambda: False)
    monkeypatch.setattr(host_module.shutil, "which", lambda _name: None)
    assert isinstance(host_module.make_provider(config, callbacks), SysfsProvider)
    monkeypatch.setattr(host_module, "_on_android", lambda: True)
    assert host_module.make_provider(config, callbacks) is callbacks
    monkeypatch.setattr(host_module.shutil, "which", lambda _name: "/data/data/com.termux/files/usr/bin/x")
    assert isinstance(host_module.make_provider(config, callbacks), TermuxProvider)
    static = parse_config(json.dumps({"storage_dir": str(tmp_path), "device": "static"}))
    assert isinstance(host_module.make_provider(static, callbacks), StaticProvider)
