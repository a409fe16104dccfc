"""Device state of a Linux machine from sysfs: power_supply, thermal zones, network interfaces.

Layout read (the root is injectable, so tests point it at a fake tree):
  class/power_supply/<name>/type            Battery | Mains | USB | Wireless ...
  class/power_supply/<name>/capacity        0-100 (batteries)
  class/power_supply/<name>/status          Charging | Discharging | Full | Not charging
  class/power_supply/<name>/online          1 = external power connected (Mains, USB)
  class/thermal/thermal_zone<N>/temp        millidegrees Celsius
  class/thermal/thermal_zone<N>/trip_point_<K>_type / _temp   passive | hot | critical ...
  class/net/<iface>/operstate               up | down | unknown
  class/net/<iface>/wireless, uevent        Wi-Fi; DEVTYPE=wwan marks a cellular modem
Linux cannot tell a metered Wi-Fi from an unmetered one (NetworkManager can); name such
interfaces in `metered_interfaces`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from android_bridge.device import CPU_SCALE, DeviceState, Network, Thermal

CELLULAR_PREFIXES = ("wwan", "rmnet", "ccmni", "ppp")  # modem interfaces on laptops and on Android kernels
ON_POWER_STATUSES = {"charging", "full", "not charging"}  # "not charging": plugged in, held at a limit
TRIP_STATUS = {"critical": Thermal.CRITICAL, "hot": Thermal.SEVERE, "passive": Thermal.MODERATE}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _number(path: Path) -> float | None:
    text = _read(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


class SysfsProvider:
    def __init__(self, root: Path = Path("/sys"), metered_interfaces: Sequence[str] = ()) -> None:
        self.root = root
        self.metered_interfaces = set(metered_interfaces)

    def read(self) -> DeviceState:
        percent, charging = self.battery()
        thermal, celsius = self.thermal()
        return DeviceState(battery_percent=percent, charging=charging, thermal=thermal, temperature_c=celsius,
                           network=self.network(), source="sysfs")  # fmt: skip

    def battery(self) -> tuple[float | None, bool]:
        """(charge in percent over the system's batteries, on external power)."""
        levels, on_power = [], False
        for supply in _children(self.root / "class" / "power_supply"):
            kind = (_read(supply / "type") or "").lower()
            if kind == "battery":
                if (_read(supply / "scope") or "").lower() == "device":
                    continue  # a mouse's or a headset's battery
                level = _number(supply / "capacity")
                if level is not None:
                    levels.append(min(max(level, 0.0), 100.0))
                on_power |= (_read(supply / "status") or "").lower() in ON_POWER_STATUSES
            elif _read(supply / "online") == "1":
                on_power = True
        if not levels:
            return None, True  # no battery: mains powered
        return sum(levels) / len(levels), on_power

    def thermal(self) -> tuple[Thermal, float | None]:
        """The worst status over the thermal zones, and the hottest reading."""
        worst, hottest = Thermal.NONE, None
        for zone in _children(self.root / "class" / "thermal"):
            if not zone.name.startswith("thermal_zone"):
                continue
            milli = _number(zone / "temp")
            if milli is None or not 0 < milli / 1000 < 200:  # absent, or a sensor reporting nonsense
                continue
            celsius = milli / 1000
            hottest = celsius if hottest is None else max(hottest, celsius)
            worst = max(worst, CPU_SCALE.status(celsius), _trip_status(zone, celsius))
        return worst, hottest

    def network(self) -> Network:
        up = [i for i in _children(self.root / "class" / "net") if i.name != "lo" and _read(i / "operstate") == "up"]
        if not up:
            return Network.NONE
        if any(not self._metered(i) for i in up):
            return Network.UNMETERED  # the OS prefers Wi-Fi and Ethernet over a modem
        return Network.METERED

    def _metered(self, interface: Path) -> bool:
        if interface.name in self.metered_interfaces or interface.name.startswith(CELLULAR_PREFIXES):
            return True
        return "DEVTYPE=wwan" in (_read(interface / "uevent") or "")


def _trip_status(zone: Path, celsius: float) -> Thermal:
    status = Thermal.NONE
    for trip_type in zone.glob("trip_point_*_type"):
        level = TRIP_STATUS.get((_read(trip_type) or "").lower())
        limit = _number(trip_type.with_name(trip_type.name.replace("_type", "_temp")))
        if level is not None and limit is not None and limit > 0 and celsius >= limit / 1000:
            status = max(status, level)
    return status
