"""Boot actor: answers ProxyDHCP for its subnet while this peer is the elected responder.

Theory of operation
-------------------
The election actor tells this actor its standing in the subnet scope (`LeadershipChanged`):
leading (with the term), a standby rank, or neither. Every datagram on UDP 67 or 4011 comes
in as `DhcpPacketReceived`; the pure `proxy_dhcp.answer_datagram` decides the reply.

- LEADING: answer every valid PXE request at once.
- STANDBY rank 1 (`answer_retries_as_standby`): answer only a *retry*, a DISCOVER whose `secs`
  field says the client has waited at least `retry_secs_min` (PXE firmware resends after
  4, 8, 16, 32 s), or a second DISCOVER from the same client within `retry_window_s`. The
  leader answers first requests at once, so a retry means its answer did not arrive (dead
  leader not yet replaced, its replies dropped by DHCP snooping, or loss): the standby then
  costs the client one retry instead of the whole boot (pxe-protocol-notes.md §2.4).
- otherwise: stay silent, count why.

TFTP and HTTP are served by every peer holding the verified package, leader or not; they do
not pass through this actor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from actors.boot.dhcp_packet import DhcpDecodeError, DhcpPacket, decode_packet
from actors.boot.proxy_dhcp import PXE_PORT, DhcpReply, Ignore, ProxyPolicy, answer
from actors.core import (
    ActorName,
    Command,
    CountMetric,
    DhcpPacketReceived,
    Event,
    LeadershipChanged,
    Log,
    LogLevel,
    MemberInfo,
)
from actors.election import RESPONDER_CAPABILITY

RECENT_CLIENTS_MAX: Final = 4096
"""Clients remembered for retry detection; the oldest is forgotten first."""


@dataclass(frozen=True, slots=True)
class BootKnobs:
    """When a standby steps in for a leader whose answers do not arrive."""

    answer_retries_as_standby: bool = True
    retry_secs_min: int = 4
    retry_window_s: float = 60.0


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
        self._first_seen_s: dict[str, float] = {}

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
        return []

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
        )
        return self._commands_for(decision)

    def _may_answer_as_standby(self) -> bool:
        return self.knobs.answer_retries_as_standby and self.standby_rank == 1

    def _is_retry(self, request: DhcpPacket, now_s: float) -> bool:
        """The client has waited long enough, or asked before: the leader's answer is lost."""
        if request.secs >= self.knobs.retry_secs_min:
            return True
        key = request.chaddr.hex()
        first_s = self._first_seen_s.get(key)
        if first_s is None or now_s - first_s > self.knobs.retry_window_s:
            self._remember(key, now_s)
            return False
        return True

    def _remember(self, key: str, now_s: float) -> None:
        self._first_seen_s.pop(key, None)
        if len(self._first_seen_s) >= RECENT_CLIENTS_MAX:
            del self._first_seen_s[next(iter(self._first_seen_s))]
        self._first_seen_s[key] = now_s

    def _commands_for(self, decision: DhcpReply | Ignore) -> list[Command]:
        if isinstance(decision, Ignore):
            return [CountMetric(f"boot.ignored.{decision.reason.value}")]
        role = "leader" if self.leading else "standby"
        fields = (
            ("mac", decision.client.mac),
            ("arch", decision.client.arch),
            ("port", decision.source.port),
            ("file", decision.boot_file),
            ("term", self.term),
        )
        return [
            decision.command(),
            CountMetric(f"boot.answered.{role}"),
            Log(LogLevel.INFO, "proxy answer", fields),
        ]
