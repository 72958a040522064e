"""Boot-specific events and commands, defined in `actors.core` and re-exported here.

The boot actor's host turns a datagram on UDP 67 or 4011 into `DhcpPacketReceived` and
carries out `SendDhcpReply` with `sendto`, from `source` (the port and, where the host can
choose it, the address: iPXE checks both on 4011 replies).
"""

from __future__ import annotations

from actors.core import DhcpPacketReceived, SendDhcpReply

__all__ = ["DhcpPacketReceived", "SendDhcpReply"]
