"""An mDNS browser that shares no code with zeroconf: dnspython messages over a raw socket.

It proves the announcements are plain standard mDNS that any other client (Avahi, Bonjour)
can read: a PTR query for the service type, answers parsed into instance -> TXT fields.
"""

from __future__ import annotations

import socket
import time

import dns.message
import dns.rdatatype

MDNS_GROUP, MDNS_PORT = "224.0.0.251", 5353


def browse(service_type: str, interface: str, wait_s: float = 2.0) -> dict[str, dict[str, str]]:
    """Service instance name -> TXT key/values, from every answer heard within `wait_s`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sock.bind((interface, 0))  # a unicast-response port of our own: "legacy" one-shot query
        query = dns.message.make_query(service_type, dns.rdatatype.PTR)
        query.id = 0x5157
        sock.sendto(query.to_wire(), (MDNS_GROUP, MDNS_PORT))
        found: dict[str, dict[str, str]] = {}
        deadline = time.monotonic() + wait_s
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                data, _ = sock.recvfrom(9000)
            except TimeoutError:
                break
            # mDNS compresses names inside NSEC records, which strict DNS forbids: keep going
            _collect(dns.message.from_wire(data, continue_on_error=True), found)
        return found
    finally:
        sock.close()


def _collect(message: dns.message.Message, found: dict[str, dict[str, str]]) -> None:
    for rrset in [*message.answer, *message.additional]:
        if rrset.rdtype != dns.rdatatype.TXT:
            continue
        fields = {}
        for rdata in rrset:
            for chunk in rdata.strings:
                key, _, value = chunk.decode(errors="replace").partition("=")
                fields[key] = value
        found[rrset.name.to_text()] = fields
