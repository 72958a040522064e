"""The boot actor's sans-IO parts: ProxyDHCP and TFTP, codecs and decisions.

`dhcp_packet` parses and builds BOOTP/DHCPv4 packets; `proxy_dhcp` decides the ProxyDHCP
answer (pure functions); `events` holds the boot-specific events and commands; the `tftp_*`
modules hold the TFTP codec, path validation and per-transfer state machine.
"""

from actors.boot.dhcp_packet import DhcpDecodeError, DhcpPacket, decode_packet, encode_packet
from actors.boot.events import DhcpPacketReceived, SendDhcpReply
from actors.boot.proxy_dhcp import (
    ArchClass,
    DhcpReply,
    Ignore,
    IgnoreReason,
    ProxyPolicy,
    answer,
    answer_datagram,
)

__all__ = [
    "ArchClass",
    "DhcpDecodeError",
    "DhcpPacket",
    "DhcpPacketReceived",
    "DhcpReply",
    "Ignore",
    "IgnoreReason",
    "ProxyPolicy",
    "SendDhcpReply",
    "answer",
    "answer_datagram",
    "decode_packet",
    "encode_packet",
]
