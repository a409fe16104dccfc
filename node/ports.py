"""The ports a node listens on: one that is taken is refused with one line saying so.

gRPC servers bind with SO_REUSEPORT by default: a second node started on a port another node
serves comes up without a word, and the kernel splits the clients between the two processes.
The node's gRPC server turns that off (`NO_PORT_SHARING`), and `check_free` looks before the
node loads its blocks, so a taken port fails at once, and without gRPC's own log lines.
"""

from __future__ import annotations

import errno
import socket

from swarm.errors import SwarmError

NO_PORT_SHARING = ("grpc.so_reuseport", 0)  # gRPC server option: a port in use fails to bind


class ListenError(SwarmError):
    """The node cannot listen where it was told to: the port is taken, or the address is not this machine's."""


def check_free(host: str, port: int, flag: str) -> None:
    """Raise ListenError unless `host:port` could be listened on now. Port 0 (any free one) always can."""
    if port == 0:
        return
    wildcard = host in ("", "0.0.0.0", "::")
    try:
        addresses = socket.getaddrinfo(None if wildcard else host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)  # fmt: skip
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}; check --host") from exc
    for family, kind, proto, _, address in addresses:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:  # e.g. no IPv6 on this machine: the server will not bind there either
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
            try:
                probe.bind(address)
            except OSError as exc:
                raise refusal(exc, host, port, flag) from exc


def refusal(exc: OSError, host: str, port: int, flag: str) -> ListenError:
    """The error a user sees for a failed bind, by its cause."""
    if exc.errno == errno.EADDRINUSE:
        return ListenError(f"port {port} on {host} is in use (another node?); choose another {flag}, "
                           "or 0 for any free port")  # fmt: skip
    if exc.errno == errno.EADDRNOTAVAIL:
        return ListenError(f"cannot listen on {host}:{port}: {host} is not an address of this machine; check --host")
    return ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
