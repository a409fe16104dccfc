"""Device state of an Android phone from the termux-api commands (Termux + the Termux:API app).

  termux-battery-status        {"percentage": 81, "plugged": "UNPLUGGED", "status": "DISCHARGING",
                                "temperature": 31.2, "health": "GOOD", ...}
  termux-wifi-connectioninfo   {"supplicant_state": "COMPLETED", "ip": "192.168.1.23", "ssid": "home", ...}
  termux-telephony-deviceinfo  {"data_state": "connected", "network_type": "lte", ...}

termux-api has no thermal status, no metered flag and no screen state: heat is judged from the
battery temperature, a connected Wi-Fi counts as unmetered unless its SSID is listed in
`metered_ssids` (a phone's hotspot), mobile data as metered, and the screen stays unknown.
The command runner is injectable, so tests replay recorded JSON.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from android_bridge.device import BATTERY_SCALE, DeviceState, Network, Thermal

log = logging.getLogger("swarm.android")
Runner = Callable[[Sequence[str]], str]
COMMAND_TIMEOUT_S = 10.0  # termux-api waits for the Termux:API app; without it, it hangs
UNPLUGGED = {"", "UNPLUGGED", "UNKNOWN"}
ON_POWER_STATUSES = {"CHARGING", "FULL"}


def run_command(args: Sequence[str]) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=True).stdout


def parse_battery(raw: dict[str, Any]) -> tuple[float | None, bool, float | None, Thermal]:
    """(percent, on external power, temperature °C, thermal status) from termux-battery-status."""
    percent = raw.get("percentage")
    plugged = str(raw.get("plugged", "")).upper()
    status = str(raw.get("status", "")).upper()
    temperature = raw.get("temperature")
    celsius = float(temperature) if isinstance(temperature, int | float) else None
    thermal = BATTERY_SCALE.status(celsius)
    if str(raw.get("health", "")).upper() == "OVERHEAT":
        thermal = max(thermal, Thermal.SEVERE)
    level = float(percent) if isinstance(percent, int | float) else None
    return level, plugged not in UNPLUGGED or status in ON_POWER_STATUSES, celsius, thermal


def wifi_network(raw: dict[str, Any], metered_ssids: set[str]) -> Network | None:
    """The network from termux-wifi-connectioninfo; None when Wi-Fi is not connected."""
    connected = str(raw.get("supplicant_state", "")).upper() == "COMPLETED" and raw.get("ip") not in (None, "0.0.0.0")
    if not connected:
        return None
    return Network.METERED if str(raw.get("ssid", "")).strip('"') in metered_ssids else Network.UNMETERED


def cellular_network(raw: dict[str, Any]) -> Network:
    return Network.METERED if str(raw.get("data_state", "")).lower() == "connected" else Network.NONE


class TermuxProvider:
    def __init__(self, run: Runner = run_command, metered_ssids: Sequence[str] = ()) -> None:
        self._run = run
        self.metered_ssids = set(metered_ssids)

    def _json(self, command: str) -> dict[str, Any] | None:
        try:
            raw = json.loads(self._run([command]))
        except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
            log.warning("%s failed: %s", command, exc)
            return None
        return raw if isinstance(raw, dict) else None

    def read(self) -> DeviceState:
        battery = self._json("termux-battery-status")
        percent, charging, celsius, thermal = parse_battery(battery) if battery else (None, False, None, Thermal.NONE)
        return DeviceState(battery_percent=percent, charging=charging, thermal=thermal, temperature_c=celsius,
                           network=self.network(), source="termux")  # fmt: skip

    def network(self) -> Network:
        wifi = self._json("termux-wifi-connectioninfo")
        found = wifi_network(wifi, self.metered_ssids) if wifi else None
        if found is not None:
            return found
        phone = self._json("termux-telephony-deviceinfo")
        if phone is None:
            return Network.UNKNOWN if wifi is None else Network.NONE
        return cellular_network(phone)
