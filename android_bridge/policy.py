"""From device state to what the node does. Pure: no clocks, no threads, no I/O.

`evaluate` maps one DeviceState to a Decision: serve (at a share of the measured speed, the
"capacity"), or drain and leave; and whether block downloads may run. `decide` adds hysteresis:
tightening (leaving, less capacity, pausing downloads) applies at once, relaxing waits until
the better conditions have held for `settle_s`, and the battery and heat limits for coming
back are stricter than those for leaving, so a phone at the edge of a limit does not flap.
Every decision carries the reasons behind it, in words, for the status.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from android_bridge.device import DeviceState, Network, Thermal

SETTLING = "conditions improved"  # starts the reason that says a relaxation waits


class Mode(StrEnum):
    SERVE = "serve"  # full measured capacity
    THROTTLE = "throttle"  # serve, announcing a share of the measured speed
    LEAVE = "leave"  # drain the sessions, leave the swarm, stay out


@dataclass(frozen=True)
class Thresholds:
    serve_on_battery: bool = False  # serve while not charging (down to leave_battery_percent)
    leave_battery_percent: float = 30.0  # on battery below this: drain and leave
    rejoin_battery_percent: float = 40.0  # after leaving: come back above this, or when charging
    low_battery_percent: float = 50.0  # on battery below this: announce low_battery_capacity
    low_battery_capacity: float = 0.5  # share of the measured speed
    light_thermal_capacity: float = 0.7  # at thermal status LIGHT
    moderate_thermal_capacity: float = 0.4  # at thermal status MODERATE
    leave_thermal: Thermal = Thermal.SEVERE  # at or above: drain and leave
    rejoin_thermal: Thermal = Thermal.LIGHT  # after leaving: come back at or below this
    screen_on_capacity: float = 0.5  # while the screen is on (someone is using the phone)
    serve_on_metered: bool = False  # serve over a metered (or unknown) network: tokens cost data too
    downloads_on_metered: bool = False  # fetch block files over a metered (or unknown) network
    require_foreground: bool = True  # leave when the host app says it went to the background
    settle_s: float = 30.0  # seconds better conditions must hold before the node relaxes

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Thresholds:
        """From the "policy" object of the host config; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown policy settings {sorted(unknown)}; known: {sorted(known)}")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if name in ("leave_thermal", "rejoin_thermal"):
                values[name] = Thermal.parse(value)
            elif name in ("serve_on_battery", "serve_on_metered", "downloads_on_metered", "require_foreground"):
                if not isinstance(value, bool):
                    raise ValueError(f"policy {name} wants true or false, got {value!r}")
                values[name] = value
            elif isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                values[name] = float(value)
            else:
                raise ValueError(f"policy {name} wants a number >= 0, got {value!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class Decision:
    leave: bool = False
    capacity: float = 1.0  # share of the measured speed to announce (0 when leaving)
    downloads: bool = True  # block files may be fetched
    reasons: tuple[str, ...] = ()

    @property
    def mode(self) -> Mode:
        if self.leave:
            return Mode.LEAVE
        return Mode.THROTTLE if self.capacity < 1.0 else Mode.SERVE

    def key(self) -> tuple[bool, float, bool]:
        return self.leave, self.capacity, self.downloads

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "capacity": self.capacity, "downloads": self.downloads,
                "reasons": list(self.reasons)}  # fmt: skip


@dataclass(frozen=True)
class PolicyState:
    decision: Decision = field(default_factory=Decision)  # in force now
    pending: Decision | None = None  # a more relaxed target, waiting to have held for settle_s
    pending_since: float = 0.0  # seconds, any monotonic clock


def _plain(value: Any) -> Any:
    return value.name.lower() if isinstance(value, Thermal) else value


def _battery(state: DeviceState, t: Thresholds, out: bool) -> tuple[bool, float, str | None]:
    """(leave, capacity, reason) from the battery; `out`: the node is out of the swarm now."""
    if state.battery_percent is None or state.charging:
        return False, 1.0, None
    percent = state.battery_percent
    if not t.serve_on_battery:
        return True, 0.0, f"on battery ({percent:.0f}%) and serve_on_battery is off: out until plugged in"
    limit = t.rejoin_battery_percent if out else t.leave_battery_percent
    if percent < limit:
        return True, 0.0, (f"on battery at {percent:.0f}% (below {limit:.0f}%): out until charging "
                           f"or above {t.rejoin_battery_percent:.0f}%")  # fmt: skip
    if percent < t.low_battery_percent:
        return False, t.low_battery_capacity, (f"on battery at {percent:.0f}% (below {t.low_battery_percent:.0f}%): "
                                               f"capacity {t.low_battery_capacity:g}")  # fmt: skip
    return False, 1.0, None


def _thermal(state: DeviceState, t: Thresholds, out: bool) -> tuple[bool, float, str | None]:
    status, name = state.thermal, state.thermal.name.lower()
    if status >= t.leave_thermal or (out and status > t.rejoin_thermal):
        return True, 0.0, (f"thermal status {name}: out until it cools to "
                           f"{t.rejoin_thermal.name.lower()} or below")  # fmt: skip
    if status < Thermal.LIGHT:
        return False, 1.0, None
    share = t.light_thermal_capacity if status == Thermal.LIGHT else t.moderate_thermal_capacity
    return False, share, f"thermal status {name}: capacity {share:g}"


def _network(state: DeviceState, t: Thresholds) -> tuple[bool, str | None]:
    """(leave, why block downloads must wait) from the network."""
    if state.network is Network.NONE:
        return False, "no network: block downloads paused"
    if state.network is Network.UNMETERED:
        return False, None
    what = "metered network" if state.network is Network.METERED else "network type unknown (treated as metered)"
    if not t.serve_on_metered:
        return True, f"{what}: serving would spend the data plan, out until an unmetered network"
    if not t.downloads_on_metered:
        return False, f"{what}: block downloads paused until an unmetered network"
    return False, None


def evaluate(state: DeviceState, t: Thresholds, out: bool = False) -> Decision:
    """What the device state asks for now, before hysteresis. `out`: the node is out of the
    swarm now, so the stricter limits for coming back apply."""
    leave, capacity, reasons = False, 1.0, []
    for rule_leave, share, reason in (_battery(state, t, out), _thermal(state, t, out)):
        leave, capacity = leave or rule_leave, min(capacity, share)
        reasons += [reason] if reason else []
    if state.screen_on and t.screen_on_capacity < 1.0:
        capacity = min(capacity, t.screen_on_capacity)
        reasons.append(f"screen on (someone is using the phone): capacity {t.screen_on_capacity:g}")
    if state.foreground is False and t.require_foreground:
        leave = True
        reasons.append("the host app is in the background: out before Android freezes it")
    network_leave, paused = _network(state, t)
    leave = leave or network_leave
    reasons += [paused] if paused else []
    if not reasons:
        reasons.append("no limit applies: full capacity")
    return Decision(leave, 0.0 if leave else capacity, paused is None and not leave, tuple(reasons))


def _strictest(a: Decision, b: Decision) -> Decision:
    leave = a.leave or b.leave
    return Decision(leave, 0.0 if leave else min(a.capacity, b.capacity), a.downloads and b.downloads, a.reasons)


def decide(state: DeviceState, t: Thresholds, previous: PolicyState, now: float) -> PolicyState:
    """The decision in force after observing `state` at time `now` (seconds)."""
    current = previous.decision
    target = evaluate(state, t, out=current.leave)
    held_back = _strictest(target, current)
    if held_back.key() == target.key():  # as strict as now, or stricter: at once
        return PolicyState(target)
    same_target = previous.pending is not None and previous.pending.key() == target.key()
    since = previous.pending_since if same_target else now
    if now - since >= t.settle_s:
        return PolicyState(target)
    wait = t.settle_s - (now - since)
    note = f"{SETTLING}: relaxing in {wait:.0f}s if they hold"
    return PolicyState(replace(held_back, reasons=(*target.reasons, note)), target, since)
