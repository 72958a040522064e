"""Boot actor: answers ProxyDHCP for its subnet while this peer is the elected responder.

Theory of operation
-------------------
The election actor tells this actor its standing in the subnet scope (`LeadershipChanged`):
leading (with the term), a standby rank, or neither. Every datagram on UDP 67 or 4011 comes
in as `DhcpPacketReceived`; the pure `proxy_dhcp.answer_datagram` decides the reply.

- LEADING: answer every valid PXE request at once.
- STANDBY rank 1 (`answer_retries_as_standby`): answer only a *repeated retry*: a DISCOVER
  whose `secs` field says the client has waited at least `retry_secs_min` (12 s: a PXE ROM
  resends after 4, 8, 16, 32 s, so secs 4 is its first retry and 12 its second), or the
  `retry_discovers_min`-th DISCOVER (3rd) from the same client within `retry_window_s`.
  The leader answers first requests at once, and a crashed leader is replaced within about
  2 s, before the client's *first* retry; so the first retry is left to the (new) leader,
  which keeps each DISCOVER to one offer through a failover. A client that still retries a
  second time is not being heard by any leader (its replies dropped by DHCP snooping, a
  leader that peers see but clients do not, heavy loss): the standby then costs the client
  two retries instead of the whole boot (pxe-protocol-notes.md §2.4).
- otherwise: stay silent, count why.

The answer's policy (boot files, MAC lists, unknown computers) is replaced whole by
`BootPolicyChanged`, which the host tells when a new package is served or a new signed
policy is installed.

TFTP and HTTP are served by every peer holding the verified package, leader or not; they do
not pass through this actor. One answerer, many servers (`spread_file_servers`): the answer
names as TFTP server (`siaddr`, the firmware's "next server") another responder-eligible
peer of the subnet, chosen per client by rendezvous hashing of its MAC over the peers that
discovery reports ALIVE and that have been up for `file_server_min_uptime_s`; this peer
itself when there is none. The answering responder is then not also the server of every
download in flight: when it dies (the case failover exists for) the clients holding its
offer still fetch their boot program, and a boot storm is spread over the subnet's peers.
A peer that has only just come up (perhaps in a crash loop) is not chosen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar, Final

from actors.boot.dhcp_packet import DhcpDecodeError, DhcpPacket, decode_packet, ipv4_text
from actors.boot.proxy_dhcp import PXE_PORT, DhcpReply, Ignore, ProxyPolicy, answer
from actors.core import (
    ActorName,
    BootPolicyChanged,
    Command,
    CountMetric,
    DhcpPacketReceived,
    Event,
    LeadershipChanged,
    Log,
    LogLevel,
    MemberChanged,
    MemberInfo,
    MemberState,
    NodeId,
)
from actors.election import RESPONDER_CAPABILITY

RECENT_CLIENTS_MAX: Final = 4096
"""Clients remembered for retry detection; the oldest is forgotten first."""


@dataclass(frozen=True, slots=True)
class BootKnobs:
    """When a standby steps in for a leader whose answers do not arrive."""

    answer_retries_as_standby: bool = True
    retry_secs_min: int = 12
    """`secs` (RFC 2131 §2) of a PXE ROM's second retry (4, 8, 16, 32 s windows: 4 + 8)."""
    retry_discovers_min: int = 3
    """DISCOVERs seen from one client within `retry_window_s` before a standby answers."""
    retry_window_s: float = 60.0
    spread_file_servers: bool = True
    """Name another eligible peer as the TFTP server (see the module docstring)."""
    file_server_min_uptime_s: float = 10.0
    """How long a peer must have been seen ALIVE before it is named as a file server."""


class Boot:
    """The ProxyDHCP responder of one peer (sans-IO)."""

    NAME: ClassVar[ActorName] = ActorName.BOOT

    def __init__(
        self,
        self_info: MemberInfo,
        policy: ProxyPolicy,
        server_address: str,
        knobs: BootKnobs = BootKnobs(),
    ) -> None:
        self.self_info = self_info
        self.policy = policy
        self.server_address = server_address
        self.knobs = knobs
        self.leading = False
        self.term = 0
        self.standby_rank = 0
        self._scope = f"subnet:{self_info.subnet}"
        self._file_servers: dict[NodeId, tuple[str, float]] = {}
        """Eligible ALIVE peers of our subnet: host address, and since when ALIVE."""
        self._seen: dict[str, tuple[float, int]] = {}
        """Per client MAC: when its first recent DISCOVER came, and how many came since."""

    def start(self, now_s: float) -> list[Command]:
        """Nothing to arm: the boot actor waits for packets and leadership news."""
        del now_s
        return []

    def handle(self, event: Event, now_s: float) -> list[Command]:
        """React to leadership changes and DHCP datagrams; never raises for remote input."""
        match event:
            case LeadershipChanged() if event.scope == self._scope:
                return self._on_leadership(event)
            case DhcpPacketReceived():
                return self._on_packet(event, now_s)
            case MemberChanged():
                self._on_member(event, now_s)
            case BootPolicyChanged(policy):
                self.policy = policy
                return [CountMetric("boot.policy_changed")]
        return []

    def _on_member(self, event: MemberChanged, now_s: float) -> None:
        member = event.member
        if member.subnet != self.self_info.subnet or member.node_id == self.self_info.node_id:
            return
        eligible = RESPONDER_CAPABILITY in member.capabilities and member.weight > 0
        if event.state is MemberState.ALIVE and eligible:
            known = self._file_servers.get(member.node_id)
            since_s = known[1] if known is not None else now_s
            self._file_servers[member.node_id] = (member.address.host, since_s)
        else:
            self._file_servers.pop(member.node_id, None)

    def file_server_for(self, mac: bytes, now_s: float) -> str:
        """The TFTP server to name for client `mac` (rendezvous hashing; see the docstring)."""
        if not self.knobs.spread_file_servers:
            return self.server_address
        settled_s = now_s - self.knobs.file_server_min_uptime_s
        hosts = sorted(
            host for host, since_s in self._file_servers.values() if since_s <= settled_s
        )
        if not hosts:
            return self.server_address
        return max(hosts, key=lambda host: hashlib.sha256(mac + host.encode()).digest())

    def _on_leadership(self, event: LeadershipChanged) -> list[Command]:
        assert event.capability == RESPONDER_CAPABILITY
        was_leading = self.leading
        self.leading, self.term, self.standby_rank = event.leading, event.term, event.standby_rank
        if self.leading == was_leading:
            return []
        text = "answering ProxyDHCP" if self.leading else "stopped answering ProxyDHCP"
        metric = "boot.became_responder" if self.leading else "boot.stopped_responding"
        fields = (("subnet", self.self_info.subnet), ("term", self.term))
        return [Log(LogLevel.INFO, text, fields), CountMetric(metric)]

    def _on_packet(self, event: DhcpPacketReceived, now_s: float) -> list[Command]:
        on_pxe_port = event.local.port == PXE_PORT
        if not on_pxe_port and not self.leading and not self._may_answer_as_standby():
            return [CountMetric("boot.silent_not_leader")]
        try:
            request = decode_packet(event.payload)
        except DhcpDecodeError:
            return [CountMetric("boot.ignored.malformed")]
        # A 4011 request names its server (option 54): it follows an offer this peer made,
        # perhaps just before stepping down, so it is answered whatever our standing now.
        if not on_pxe_port and not self.leading and not self._is_retry(request, now_s):
            return [CountMetric("boot.silent_standby")]
        decision = answer(
            request,
            local_port=event.local.port,
            source=event.source,
            server=self.server_address,
            policy=self.policy,
            file_server=self.file_server_for(request.chaddr[: request.hlen], now_s),
        )
        return self._commands_for(decision)

    def _may_answer_as_standby(self) -> bool:
        return self.knobs.answer_retries_as_standby and self.standby_rank == 1

    def _is_retry(self, request: DhcpPacket, now_s: float) -> bool:
        """The client has waited long enough, or asked often enough: no leader hears it."""
        count = self._count_discover(request.chaddr.hex(), now_s)
        return request.secs >= self.knobs.retry_secs_min or count >= self.knobs.retry_discovers_min

    def _count_discover(self, key: str, now_s: float) -> int:
        """Count one more DISCOVER from `key`; the oldest client is forgotten when full."""
        first_s, count = self._seen.pop(key, (now_s, 0))
        if now_s - first_s > self.knobs.retry_window_s:
            first_s, count = now_s, 0
        if len(self._seen) >= RECENT_CLIENTS_MAX:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = (first_s, count + 1)
        return count + 1

    def _commands_for(self, decision: DhcpReply | Ignore) -> list[Command]:
        if isinstance(decision, Ignore):
            return [CountMetric(f"boot.ignored.{decision.reason.value}")]
        role = "leader" if self.leading else "standby"
        fields = (
            ("mac", decision.client.mac),
            ("arch", decision.client.arch),
            ("port", decision.source.port),
            ("file", decision.boot_file),
            ("file_server", ipv4_text(decision.payload[20:24])),
            ("term", self.term),
        )
        return [
            decision.command(),
            CountMetric(f"boot.answered.{role}"),
            Log(LogLevel.INFO, "proxy answer", fields),
        ]
