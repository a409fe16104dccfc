"""A stand-in for one socket option qemu-user lacks; loaded only inside the emulated arm64 root.

qemu-user (7.2, Debian bookworm's; QEMU issue #1837) does not translate
setsockopt(IPPROTO_IP, IP_MULTICAST_IF): it fails with ENOPROTOOPT. zeroconf sets that option
on each interface's mDNS respond socket, so a node could not announce itself under emulation.
A real aarch64 kernel (a phone, a board) has the option; only the emulator lacks it.

tests/arm64.py installs this module with a .pth file into the virtual environment the phone
install script made in the root (the script and the project stay as a phone runs them). When
the option fails with ENOPROTOOPT, the socket is bound to the interface that holds the address
(SO_BINDTODEVICE, which qemu-user does translate): its multicast then leaves by that interface,
which is what IP_MULTICAST_IF would have done.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

_setsockopt = socket.socket.setsockopt


def _interface_named_by(address: str) -> str | None:
    import ifaddr  # zeroconf's own dependency

    for adapter in ifaddr.get_adapters():
        if any(ip.ip == address for ip in adapter.ips):
            return str(adapter.name)
    return None


def setsockopt(self: socket.socket, level: int, option: int, value: Any, *rest: Any) -> None:
    try:
        _setsockopt(self, level, option, value, *rest)
    except OSError as exc:
        if (exc.errno != errno.ENOPROTOOPT or (level, option) != (socket.IPPROTO_IP, socket.IP_MULTICAST_IF)
                or not isinstance(value, bytes) or len(value) != 4):  # fmt: skip
            raise
        name = _interface_named_by(socket.inet_ntoa(value))  # an in_addr, as zeroconf passes it
        if name is None:
            raise
        _setsockopt(self, socket.SOL_SOCKET, socket.SO_BINDTODEVICE, name.encode())


socket.socket.setsockopt = setsockopt  # type: ignore[method-assign,assignment]
