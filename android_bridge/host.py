"""The embedding API: what an Android app (through Chaquopy) or a Termux script calls.

    host = NodeHost()
    host.start(config_json)            # returns at once; the node joins in the background
    host.push_device_state('{"battery_percent": 54, "charging": false}')   # device "callbacks"
    host.poll_events(1.0)              # '[{"event": "joined", ...}, ...]'
    host.status_json()                 # '{"phase": "serving", "span": [2, 5], "decision": ...}'
    host.stop()                        # drains, leaves, returns when done

Strings in, strings out: every value crossing the boundary is JSON text, which any embedding
runtime passes without conversion. The node runs on an asyncio loop in a background thread.
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

from android_bridge.callbacks import CallbackProvider
from android_bridge.config import HostConfig, parse_config
from android_bridge.device import DeviceStateProvider, StaticProvider
from android_bridge.events import EventLog
from android_bridge.supervisor import Supervisor
from android_bridge.sysfs import SysfsProvider
from android_bridge.termux import TermuxProvider
from swarm._loop import BackgroundLoop
from swarm.errors import InvalidRequest

STOP_TIMEOUT_S = 120.0


def _on_android() -> bool:
    return sys.platform == "android" or hasattr(sys, "getandroidapilevel")


def make_provider(config: HostConfig, callbacks: CallbackProvider) -> DeviceStateProvider:
    """The device state source the config names; "auto": termux-api when installed, the host
    app's callbacks inside an Android app, else Linux sysfs."""
    device = config.device
    if device == "auto":
        device = "termux" if shutil.which("termux-battery-status") else "callbacks" if _on_android() else "linux"
    if device == "termux":
        return TermuxProvider(metered_ssids=config.metered_ssids)
    if device == "callbacks":
        return callbacks
    if device == "static":
        return StaticProvider()
    return SysfsProvider(config.sysfs_root, config.metered_interfaces)


class NodeHost:
    def __init__(self, provider: DeviceStateProvider | None = None, listener: Any = None) -> None:
        """`provider` overrides the config's "device" (tests, custom sources); `listener` gets
        each event as JSON text: a Python callable, or an object with onEvent(String)."""
        self.events = EventLog(listener)
        self.callbacks = provider if isinstance(provider, CallbackProvider) else CallbackProvider()
        self._provider = provider
        self._loop: BackgroundLoop | None = None
        self._supervisor: Supervisor | None = None

    def set_listener(self, listener: Any) -> None:
        self.events.set_listener(listener)

    def start(self, config_json: str) -> None:
        if self._supervisor is not None:
            raise InvalidRequest("this NodeHost is already running; stop() it first")
        config = parse_config(config_json)
        config.node_config()  # a bad swarm key fails here, in the caller's thread
        try:
            config.storage_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidRequest(f"cannot use storage_dir {config.storage_dir}: {exc.strerror or exc}") from exc
        provider = self._provider or make_provider(config, self.callbacks)
        supervisor = Supervisor(config, provider, self.events)
        if isinstance(provider, CallbackProvider):
            provider.subscribe(supervisor.on_push)
        loop = BackgroundLoop("swarm-android")
        loop.run(supervisor.start())
        self._loop, self._supervisor = loop, supervisor

    def stop(self) -> None:
        """Drain, leave and stop; returns when the node is gone (bounded by the drain timeout)."""
        loop, supervisor = self._loop, self._supervisor
        if loop is None or supervisor is None:
            return
        try:
            loop.run(supervisor.stop())
        finally:
            loop.close()
            self._loop, self._supervisor = None, None

    def status_json(self) -> str:
        loop, supervisor = self._loop, self._supervisor
        if loop is None or supervisor is None:
            return json.dumps({"phase": "stopped"})

        async def snapshot() -> dict[str, Any]:
            return supervisor.status()

        return json.dumps(loop.run(snapshot()))

    def poll_events(self, timeout_s: float = 0.0) -> str:
        """Events not polled yet, as a JSON array; waits up to `timeout_s` for the first."""
        return "[" + ",".join(self.events.poll(timeout_s)) + "]"

    def push_device_state(self, state_json: str) -> None:
        """For device "callbacks": merge these fields into the device state and act on it now."""
        self.callbacks.update_json(state_json)
