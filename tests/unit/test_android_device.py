"""Device state providers: fake sysfs trees, recorded termux-api JSON, host-app callbacks."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from android_bridge.callbacks import CallbackProvider
from android_bridge.device import BATTERY_SCALE, DeviceState, Network, Thermal
from android_bridge.sysfs import SysfsProvider
from android_bridge.termux import TermuxProvider
from swarm.errors import InvalidRequest

TERMUX_JSON = Path(__file__).parent / "termux_json"


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


LAPTOP_ON_BATTERY = {
    "class/power_supply/AC/type": "Mains",
    "class/power_supply/AC/online": "0",
    "class/power_supply/BAT0/type": "Battery",
    "class/power_supply/BAT0/capacity": "17",
    "class/power_supply/BAT0/status": "Discharging",
    "class/power_supply/hidpp_battery_0/type": "Battery",  # a wireless mouse: not the laptop's battery
    "class/power_supply/hidpp_battery_0/scope": "Device",
    "class/power_supply/hidpp_battery_0/capacity": "90",
    "class/thermal/thermal_zone0/type": "acpitz",
    "class/thermal/thermal_zone0/temp": "45000",
    "class/thermal/thermal_zone0/trip_point_0_type": "critical",
    "class/thermal/thermal_zone0/trip_point_0_temp": "128000",
    "class/thermal/thermal_zone1/type": "x86_pkg_temp",
    "class/thermal/thermal_zone1/temp": "52000",
    "class/net/lo/operstate": "unknown",
    "class/net/wlp2s0/operstate": "up",
    "class/net/wlp2s0/wireless/.keep": "",
    "class/net/wlp2s0/uevent": "DEVTYPE=wlan\nINTERFACE=wlp2s0",
}


# ---------------------------------------------------------------- sysfs


def test_sysfs_laptop_on_battery(tmp_path: Path) -> None:
    state = SysfsProvider(write_tree(tmp_path, LAPTOP_ON_BATTERY)).read()
    assert state == DeviceState(battery_percent=17.0, charging=False, thermal=Thermal.NONE, temperature_c=52.0,
                                network=Network.UNMETERED, source="sysfs")  # fmt: skip


def test_sysfs_plugged_in_by_mains_or_by_battery_status(tmp_path: Path) -> None:
    tree = write_tree(tmp_path, {**LAPTOP_ON_BATTERY, "class/power_supply/AC/online": "1"})
    assert SysfsProvider(tree).read().charging
    tree = write_tree(tmp_path, {**LAPTOP_ON_BATTERY, "class/power_supply/BAT0/status": "Not charging"})
    (tree / "class/power_supply/AC/online").write_text("0\n")
    assert SysfsProvider(tree).read().charging  # held at a charge limit, but on mains


def test_sysfs_averages_two_batteries(tmp_path: Path) -> None:
    tree = write_tree(tmp_path, {**LAPTOP_ON_BATTERY, "class/power_supply/BAT1/type": "Battery",
                                 "class/power_supply/BAT1/capacity": "61"})  # fmt: skip
    assert SysfsProvider(tree).read().battery_percent == 39.0


def test_sysfs_desktop_without_battery_counts_as_on_power(tmp_path: Path) -> None:
    state = SysfsProvider(write_tree(tmp_path, {"class/net/eth0/operstate": "up"})).read()
    assert state.battery_percent is None and state.charging and state.network is Network.UNMETERED


def test_sysfs_thermal_from_trip_points_and_from_temperature(tmp_path: Path) -> None:
    passive = write_tree(tmp_path / "a", {"class/thermal/thermal_zone0/temp": "66000",
                                          "class/thermal/thermal_zone0/trip_point_0_type": "passive",
                                          "class/thermal/thermal_zone0/trip_point_0_temp": "65000"})  # fmt: skip
    assert SysfsProvider(passive).thermal() == (Thermal.MODERATE, 66.0)
    hot = write_tree(tmp_path / "b", {"class/thermal/thermal_zone3/temp": "91500"})
    assert SysfsProvider(hot).thermal() == (Thermal.SEVERE, 91.5)
    broken = write_tree(tmp_path / "c", {"class/thermal/thermal_zone0/temp": "-273000",
                                         "class/thermal/thermal_zone1/temp": "garbage"})  # fmt: skip
    assert SysfsProvider(broken).thermal() == (Thermal.NONE, None)


def test_sysfs_network_kinds(tmp_path: Path) -> None:
    modem = write_tree(tmp_path / "a", {"class/net/wwan0/operstate": "up", "class/net/wlan0/operstate": "down"})
    assert SysfsProvider(modem).network() is Network.METERED
    tethered = write_tree(tmp_path / "b", {"class/net/usb0/operstate": "up", "class/net/usb0/uevent": "DEVTYPE=wwan"})
    assert SysfsProvider(tethered).network() is Network.METERED
    both = write_tree(tmp_path / "c", {"class/net/wwan0/operstate": "up", "class/net/wlan0/operstate": "up"})
    assert SysfsProvider(both).network() is Network.UNMETERED
    assert SysfsProvider(both, metered_interfaces=["wlan0"]).network() is Network.METERED
    nothing = write_tree(tmp_path / "d", {"class/net/lo/operstate": "unknown", "class/net/eth0/operstate": "down"})
    assert SysfsProvider(nothing).network() is Network.NONE


def test_sysfs_missing_tree_is_an_unknown_desktop(tmp_path: Path) -> None:
    state = SysfsProvider(tmp_path / "nothing").read()
    assert (state.battery_percent, state.charging, state.thermal, state.network) == (
        None, True, Thermal.NONE, Network.NONE)  # fmt: skip


# ---------------------------------------------------------------- termux


class Recorded:
    """Replays recorded termux-api output; a command mapped to None fails like a missing Termux:API app."""

    def __init__(self, **outputs: str | None) -> None:
        self.outputs = {f"termux-{k.replace('_', '-')}": v for k, v in outputs.items()}
        self.calls: list[str] = []

    def __call__(self, args: Sequence[str]) -> str:
        self.calls.append(args[0])
        name = self.outputs.get(args[0])
        if name is None:
            raise subprocess.TimeoutExpired(list(args), 10)
        return (TERMUX_JSON / f"{name}.json").read_text()


def test_termux_phone_on_battery_on_wifi() -> None:
    run = Recorded(battery_status="battery_discharging", wifi_connectioninfo="wifi_connected")
    state = TermuxProvider(run).read()
    assert state == DeviceState(battery_percent=18.0, charging=False, thermal=Thermal.NONE, temperature_c=31.5,
                                network=Network.UNMETERED, source="termux")  # fmt: skip
    assert "termux-telephony-deviceinfo" not in run.calls  # Wi-Fi answered: the modem is not asked


def test_termux_overheating_while_charging_on_mobile_data() -> None:
    run = Recorded(battery_status="battery_charging_hot", wifi_connectioninfo="wifi_disconnected",
                   telephony_deviceinfo="telephony_lte")  # fmt: skip
    state = TermuxProvider(run).read()
    assert state.charging and state.battery_percent == 64.0
    assert state.thermal is Thermal.SEVERE  # 45.9 °C is past the battery's severe limit; health says OVERHEAT
    assert state.network is Network.METERED


def test_termux_full_battery_is_on_power_and_warm() -> None:
    state = TermuxProvider(Recorded(battery_status="battery_full", wifi_connectioninfo="wifi_connected")).read()
    assert state.charging and state.thermal is Thermal.LIGHT == BATTERY_SCALE.status(39.2)


def test_termux_hotspot_ssid_is_metered() -> None:
    run = Recorded(battery_status="battery_full", wifi_connectioninfo="wifi_connected")
    assert TermuxProvider(run, metered_ssids=["home"]).read().network is Network.METERED


def test_termux_no_wifi_and_no_data_is_no_network() -> None:
    run = Recorded(battery_status="battery_full", wifi_connectioninfo="wifi_disconnected",
                   telephony_deviceinfo="telephony_no_data")  # fmt: skip
    assert TermuxProvider(run).read().network is Network.NONE


def test_termux_without_the_api_app_reports_unknowns() -> None:
    state = TermuxProvider(Recorded()).read()
    assert state.battery_percent is None and state.network is Network.UNKNOWN and state.thermal is Thermal.NONE


# ---------------------------------------------------------------- callbacks


def test_callbacks_merge_partial_pushes_and_notify() -> None:
    provider = CallbackProvider()
    seen: list[DeviceState] = []
    provider.subscribe(lambda: seen.append(provider.read()))
    provider.update_json('{"battery_percent": 54, "charging": false}')
    provider.update_json('{"thermal": 2, "metered": true}')
    provider.update(screen_on=True, foreground=True, thermal="severe")
    state = provider.read()
    assert (state.battery_percent, state.charging, state.thermal, state.network, state.screen_on) == (
        54.0, False, Thermal.SEVERE, Network.METERED, True)  # fmt: skip
    assert len(seen) == 3 and seen[1].thermal is Thermal.MODERATE


@pytest.mark.parametrize("bad, message", [
    ('{"batery_percent": 5}', "unknown device state fields"),
    ('{"charging": "yes"}', "wants true, false or null"),
    ('{"thermal": "toasty"}', "not a thermal status"),
    ('{"network": "5g"}', "network wants one of"),
    ('[1, 2]', "must be a JSON object"),
    ("{", "not JSON"),
])  # fmt: skip
def test_callbacks_refuse_bad_pushes_clearly(bad: str, message: str) -> None:
    provider = CallbackProvider()
    with pytest.raises(InvalidRequest, match=message):
        provider.update_json(bad)
    assert provider.read() == DeviceState(source="callbacks")  # nothing half-applied


def test_device_state_as_json() -> None:
    state = DeviceState(battery_percent=40.0, thermal=Thermal.MODERATE, network=Network.METERED)
    assert json.loads(json.dumps(state.to_dict()))["thermal"] == "moderate"
