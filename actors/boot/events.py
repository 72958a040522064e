"""Boot-specific events and commands (candidates for `actors.core` once the boot actor lands).

They follow the `actors.core` shape: frozen, slotted dataclasses; events are past-tense facts,
commands imperatives. The boot actor's host turns a datagram on UDP 67 or 4011 into
`DhcpPacketReceived` and carries out `SendDhcpReply` with `sendto`, from `source` (the port
and, where the host can choose it, the address: iPXE checks both on 4011 replies).
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.core import Address


@dataclass(frozen=True, slots=True)
class DhcpPacketReceived:
    """A datagram arrived on a ProxyDHCP port: `local` is our address and port (67 or 4011)."""

    payload: bytes
    source: Address
    local: Address


@dataclass(frozen=True, slots=True)
class SendDhcpReply:
    """Send `payload` from `source` (port 67 or 4011) to `target` (may be a broadcast)."""

    payload: bytes
    source: Address
    target: Address
