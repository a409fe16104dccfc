"""Device state pushed by the host app: Android's own callbacks are the best source on a phone.

The app registers for what Android already tells it and forwards each change as JSON:
  ACTION_BATTERY_CHANGED            {"battery_percent": 54, "charging": false}
  PowerManager thermal listener     {"thermal": 2}            (THERMAL_STATUS_*, 0-6)
  ConnectivityManager callback      {"metered": true}  or  {"network": "none"}
  ACTION_SCREEN_ON / _OFF           {"screen_on": true}
  service lifecycle                 {"foreground": false}
A push may carry any subset of the fields; the rest keep their last value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from android_bridge.config import json_object
from android_bridge.device import DeviceState, Network, Thermal
from swarm.errors import InvalidRequest

FIELDS = {"battery_percent", "charging", "thermal", "temperature_c", "network", "metered", "screen_on", "foreground"}


def _optional_bool(value: Any, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidRequest(f"device state field {name!r} wants true, false or null, got {value!r}")


def _number(value: Any, name: str) -> float | None:
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return None if value is None else float(value)
    raise InvalidRequest(f"device state field {name!r} wants a number or null, got {value!r}")


def _network(value: Any) -> Network:
    try:
        return Network(str(value).lower())
    except ValueError:
        raise InvalidRequest(f"network wants one of {[n.value for n in Network]}, got {value!r}") from None


def apply_update(state: DeviceState, fields: dict[str, Any]) -> DeviceState:
    """`state` with the pushed fields changed; unknown fields or bad values are a clear error."""
    unknown = set(fields) - FIELDS
    if unknown:
        raise InvalidRequest(f"unknown device state fields {sorted(unknown)}; known: {sorted(FIELDS)}")
    changes: dict[str, Any] = {}
    for name in ("battery_percent", "temperature_c"):
        if name in fields:
            changes[name] = _number(fields[name], name)
    for name in ("screen_on", "foreground"):
        if name in fields:
            changes[name] = _optional_bool(fields[name], name)
    if "charging" in fields:
        changes["charging"] = bool(_optional_bool(fields["charging"], "charging"))
    if "thermal" in fields:
        try:
            changes["thermal"] = Thermal.parse(fields["thermal"])
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    if "network" in fields:
        changes["network"] = _network(fields["network"])
    if "metered" in fields:
        changes["network"] = Network.METERED if _optional_bool(fields["metered"], "metered") else Network.UNMETERED
    return replace(state, **changes)


class CallbackProvider:
    """The last state the host app pushed. Thread-safe: pushes come from the app's threads."""

    def __init__(self, initial: DeviceState | None = None) -> None:
        self._state = initial or DeviceState(source="callbacks")
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def read(self) -> DeviceState:
        with self._lock:
            return self._state

    def update(self, **fields: Any) -> DeviceState:
        with self._lock:
            self._state = apply_update(self._state, fields)
            state, listeners = self._state, list(self._listeners)
        for listener in listeners:
            listener()
        return state

    def update_json(self, text: str) -> DeviceState:
        return self.update(**json_object(text, "device state"))

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every push (the host re-evaluates its policy at once)."""
        with self._lock:
            self._listeners.append(listener)
