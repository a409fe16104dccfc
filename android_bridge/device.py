"""What the policy knows of the device: battery, heat, network, screen. One value, many sources.

A provider (sysfs on Linux laptops, termux-api on a phone, callbacks from the host app) turns
its source into a `DeviceState`; the policy only ever sees that value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum, StrEnum
from typing import Any, Protocol


class Thermal(IntEnum):
    """Android's PowerManager.THERMAL_STATUS_* values, so a host app passes them through as they are."""

    NONE = 0
    LIGHT = 1
    MODERATE = 2
    SEVERE = 3
    CRITICAL = 4
    EMERGENCY = 5
    SHUTDOWN = 6

    @classmethod
    def parse(cls, value: int | str) -> Thermal:
        """3, '3' or 'severe' -> Thermal.SEVERE."""
        text = str(value).strip()
        if text.isdigit():
            return cls(min(int(text), cls.SHUTDOWN))
        try:
            return cls[text.upper()]
        except KeyError:
            names = [t.name.lower() for t in cls]
            raise ValueError(f"not a thermal status: {value!r} (0-6 or one of {names})") from None


class Network(StrEnum):
    UNMETERED = "unmetered"  # Wi-Fi or Ethernet that costs nothing per byte
    METERED = "metered"  # cellular, a hotspot, or anything the OS marks metered
    NONE = "none"  # no network at all
    UNKNOWN = "unknown"  # the source could not tell; the policy treats it as metered


@dataclass(frozen=True)
class DeviceState:
    battery_percent: float | None = None  # 0-100; None = no battery (a desktop) or unknown
    charging: bool = False  # on external power (charging, full, or plugged in)
    thermal: Thermal = Thermal.NONE
    temperature_c: float | None = None  # the hottest sensor the source reads, for status only
    network: Network = Network.UNKNOWN
    screen_on: bool | None = None  # None = unknown (no such source)
    foreground: bool | None = None  # the host app (or its foreground service) runs; None = unknown
    source: str = ""  # which provider produced this

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["thermal"] = self.thermal.name.lower()
        raw["network"] = self.network.value
        return raw


class DeviceStateProvider(Protocol):
    def read(self) -> DeviceState:
        """The device's state now. May block briefly (a file read, a short command)."""
        ...


class StaticProvider:
    """A fixed state: a desktop on mains power, or a test."""

    def __init__(self, state: DeviceState | None = None) -> None:
        self.state = state or DeviceState(charging=True, network=Network.UNMETERED, source="static")

    def read(self) -> DeviceState:
        return self.state


@dataclass(frozen=True)
class TemperatureScale:
    """Temperatures (°C) at which a sensor's reading counts as each thermal status."""

    light: float
    moderate: float
    severe: float
    critical: float

    def status(self, celsius: float | None) -> Thermal:
        if celsius is None:
            return Thermal.NONE
        for limit, status in ((self.critical, Thermal.CRITICAL), (self.severe, Thermal.SEVERE),
                              (self.moderate, Thermal.MODERATE), (self.light, Thermal.LIGHT)):  # fmt: skip
            if celsius >= limit:
                return status
        return Thermal.NONE


# A phone battery: Android stops charging around 45 °C and warns near 50 °C.
BATTERY_SCALE = TemperatureScale(light=38.0, moderate=41.0, severe=44.0, critical=48.0)
# A laptop CPU package with no trip points to go by.
CPU_SCALE = TemperatureScale(light=70.0, moderate=80.0, severe=90.0, critical=98.0)
