"""The phone policy: device state -> serve / throttle / leave, downloads, reasons, hysteresis."""

from __future__ import annotations

import pytest

from android_bridge.device import DeviceState, Network, Thermal
from android_bridge.policy import Decision, Mode, PolicyState, Thresholds, decide, evaluate

ON_BATTERY = Thresholds(serve_on_battery=True, settle_s=30.0)
FINE = DeviceState(battery_percent=80.0, charging=False, network=Network.UNMETERED, screen_on=False, foreground=True)


def state(**changes: object) -> DeviceState:
    from dataclasses import replace

    return replace(FINE, **changes)  # type: ignore[arg-type]


def test_all_clear_serves_at_full_capacity_with_a_reason() -> None:
    decision = evaluate(FINE, ON_BATTERY)
    assert (decision.mode, decision.capacity, decision.downloads) == (Mode.SERVE, 1.0, True)
    assert decision.reasons == ("no limit applies: full capacity",)


def test_defaults_serve_only_while_charging() -> None:
    assert evaluate(FINE, Thresholds()).mode is Mode.LEAVE
    assert "serve_on_battery is off" in evaluate(FINE, Thresholds()).reasons[0]
    assert evaluate(state(charging=True), Thresholds()).mode is Mode.SERVE
    assert evaluate(state(battery_percent=None), Thresholds()).mode is Mode.SERVE  # a desktop


@pytest.mark.parametrize("percent, mode, capacity", [(80, Mode.SERVE, 1.0), (45, Mode.THROTTLE, 0.5),
                                                     (29.9, Mode.LEAVE, 0.0)])  # fmt: skip
def test_battery_bands(percent: float, mode: Mode, capacity: float) -> None:
    decision = evaluate(state(battery_percent=percent), ON_BATTERY)
    assert (decision.mode, decision.capacity) == (mode, capacity)


def test_battery_reason_says_what_brings_it_back() -> None:
    (reason,) = [r for r in evaluate(state(battery_percent=12), ON_BATTERY).reasons if "battery" in r]
    assert reason == "on battery at 12% (below 30%): out until charging or above 40%"


def test_charging_lifts_every_battery_limit() -> None:
    assert evaluate(state(battery_percent=5, charging=True), ON_BATTERY).mode is Mode.SERVE


@pytest.mark.parametrize("thermal, mode, capacity", [
    (Thermal.NONE, Mode.SERVE, 1.0), (Thermal.LIGHT, Mode.THROTTLE, 0.7), (Thermal.MODERATE, Mode.THROTTLE, 0.4),
    (Thermal.SEVERE, Mode.LEAVE, 0.0), (Thermal.SHUTDOWN, Mode.LEAVE, 0.0),
])  # fmt: skip
def test_thermal_bands(thermal: Thermal, mode: Mode, capacity: float) -> None:
    decision = evaluate(state(thermal=thermal), ON_BATTERY)
    assert (decision.mode, decision.capacity) == (mode, capacity)


def test_limits_combine_to_the_lowest_capacity_and_list_every_reason() -> None:
    decision = evaluate(state(battery_percent=45, thermal=Thermal.LIGHT, screen_on=True), ON_BATTERY)
    assert decision.capacity == 0.5 and len(decision.reasons) == 3


@pytest.mark.parametrize("network, mode", [(Network.UNMETERED, Mode.SERVE), (Network.METERED, Mode.LEAVE),
                                           (Network.UNKNOWN, Mode.LEAVE), (Network.NONE, Mode.SERVE)])  # fmt: skip
def test_by_default_a_metered_or_unknown_network_means_out(network: Network, mode: Mode) -> None:
    decision = evaluate(state(network=network), ON_BATTERY)
    assert decision.mode is mode and decision.downloads is (network is Network.UNMETERED)


def test_metered_reasons() -> None:
    (reason,) = evaluate(state(network=Network.METERED), ON_BATTERY).reasons
    assert reason == "metered network: serving would spend the data plan, out until an unmetered network"


@pytest.mark.parametrize("network, downloads", [(Network.UNMETERED, True), (Network.METERED, False),
                                                (Network.UNKNOWN, False), (Network.NONE, False)])  # fmt: skip
def test_serving_on_metered_still_pauses_downloads(network: Network, downloads: bool) -> None:
    decision = evaluate(state(network=network), Thresholds(serve_on_battery=True, serve_on_metered=True))
    assert decision.downloads is downloads and decision.mode is Mode.SERVE


def test_downloads_on_metered_when_allowed() -> None:
    allowed = Thresholds(serve_on_battery=True, serve_on_metered=True, downloads_on_metered=True)
    assert evaluate(state(network=Network.METERED), allowed).downloads


def test_background_app_leaves_unless_told_otherwise() -> None:
    assert evaluate(state(foreground=False), ON_BATTERY).mode is Mode.LEAVE
    assert evaluate(state(foreground=None), ON_BATTERY).mode is Mode.SERVE  # unknown: no opinion
    relaxed = Thresholds(serve_on_battery=True, require_foreground=False)
    assert evaluate(state(foreground=False), relaxed).mode is Mode.SERVE


def test_leaving_never_downloads() -> None:
    assert not evaluate(state(battery_percent=3), ON_BATTERY).downloads


# ---------------------------------------------------------------- hysteresis


def run(states: list[tuple[float, DeviceState]], t: Thresholds = ON_BATTERY) -> list[Decision]:
    policy, out = PolicyState(), []
    for now, s in states:
        policy = decide(s, t, policy, now)
        out.append(policy.decision)
    return out


def test_tightening_is_immediate_relaxing_waits_to_settle() -> None:
    decisions = run([(0, FINE), (1, state(thermal=Thermal.MODERATE)), (2, FINE), (20, FINE), (32, FINE)])
    assert [d.capacity for d in decisions] == [1.0, 0.4, 0.4, 0.4, 1.0]
    assert decisions[2].reasons[-1] == "conditions improved: relaxing in 30s if they hold"
    assert decisions[3].reasons[-1] == "conditions improved: relaxing in 12s if they hold"


def test_a_relapse_restarts_the_settle_clock() -> None:
    hot, cool = state(thermal=Thermal.MODERATE), FINE
    decisions = run([(0, hot), (10, cool), (35, hot), (36, cool), (60, cool), (66, cool)])
    assert [d.capacity for d in decisions] == [0.4, 0.4, 0.4, 0.4, 0.4, 1.0]


def test_battery_band_prevents_flapping_around_the_limit() -> None:
    readings = [29.0, 31.0, 33.0, 38.0, 39.0, 41.0, 41.5, 42.0]
    decisions = run([(i * 20.0, state(battery_percent=p)) for i, p in enumerate(readings)])
    # out below 30 %; above 30 % is not enough to come back, above 40 % is, once it held for 30 s
    assert [d.mode for d in decisions] == [Mode.LEAVE] * 7 + [Mode.THROTTLE]


def test_plugging_in_brings_it_back_after_settling() -> None:
    decisions = run([(0, state(battery_percent=10)), (5, state(battery_percent=10, charging=True)),
                     (36, state(battery_percent=11, charging=True))])  # fmt: skip
    assert [d.mode for d in decisions] == [Mode.LEAVE, Mode.LEAVE, Mode.SERVE]


def test_thermal_band_needs_a_cool_down_to_light() -> None:
    t = Thresholds(serve_on_battery=True, settle_s=0)
    decisions = run([(0, state(thermal=Thermal.SEVERE)), (1, state(thermal=Thermal.MODERATE)),
                     (2, state(thermal=Thermal.LIGHT))], t)  # fmt: skip
    assert [d.mode for d in decisions] == [Mode.LEAVE, Mode.LEAVE, Mode.THROTTLE]


def test_mixed_change_tightens_at_once_and_relaxes_later() -> None:
    # the battery recovers while the network turns metered: downloads stop now, capacity waits
    t = Thresholds(serve_on_battery=True, serve_on_metered=True)
    decisions = run([(0, state(battery_percent=45)), (1, state(battery_percent=90, network=Network.METERED)),
                     (40, state(battery_percent=90, network=Network.METERED))], t)  # fmt: skip
    assert [(d.capacity, d.downloads) for d in decisions] == [(0.5, True), (0.5, False), (1.0, False)]


def test_first_decision_applies_at_once() -> None:
    assert run([(0, state(battery_percent=5))])[0].mode is Mode.LEAVE
    assert run([(0, FINE)], Thresholds(serve_on_battery=True, settle_s=999))[0].mode is Mode.SERVE


# ---------------------------------------------------------------- settings


def test_thresholds_from_json_settings() -> None:
    t = Thresholds.from_dict({"serve_on_battery": True, "leave_battery_percent": 15, "leave_thermal": "critical",
                              "rejoin_thermal": 2, "settle_s": 5})  # fmt: skip
    assert (t.leave_battery_percent, t.leave_thermal, t.rejoin_thermal, t.settle_s) == (
        15.0, Thermal.CRITICAL, Thermal.MODERATE, 5.0)  # fmt: skip
    assert Thresholds.from_dict(t.to_dict()) == t


@pytest.mark.parametrize("raw, message", [({"leave_battery": 5}, "unknown policy settings"),
                                          ({"serve_on_battery": 1}, "wants true or false"),
                                          ({"settle_s": -1}, "wants a number >= 0"),
                                          ({"leave_thermal": "warm"}, "not a thermal status")])  # fmt: skip
def test_thresholds_refuse_bad_settings(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Thresholds.from_dict(raw)
