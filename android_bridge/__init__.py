"""The phone host: embed a swarm node in an app, and let the device's state steer it.

    from android_bridge import NodeHost
    host = NodeHost()
    host.start('{"storage_dir": "/data/.../files/swarm", "swarm_key": "swarm1-...", "device": "callbacks"}')

See docs/ANDROID.md. Nothing here imports Android-only modules: it runs (and is tested) on Linux.
"""

from android_bridge.callbacks import CallbackProvider
from android_bridge.config import HostConfig, parse_config
from android_bridge.device import DeviceState, DeviceStateProvider, Network, StaticProvider, Thermal
from android_bridge.host import NodeHost
from android_bridge.policy import Decision, Mode, Thresholds, decide, evaluate
from android_bridge.sysfs import SysfsProvider
from android_bridge.termux import TermuxProvider

__all__ = [
    "CallbackProvider",
    "Decision",
    "DeviceState",
    "DeviceStateProvider",
    "HostConfig",
    "Mode",
    "Network",
    "NodeHost",
    "StaticProvider",
    "SysfsProvider",
    "TermuxProvider",
    "Thermal",
    "Thresholds",
    "decide",
    "evaluate",
    "parse_config",
]
