"""mDNS/DNS-SD for discovery: advertise `_peerpxe._udp.local.`, browse it, tell what is seen.

Theory of operation
-------------------
`start()` opens a `Zeroconf` bound to the configured interface address(es) only (so a peer
in a network namespace uses that namespace's link), registers this peer's service with the
TXT record below, and starts a `ServiceBrowser` on the same type.

The browser calls `_on_change` on zeroconf's own thread. That callback does no blocking
work: an added or updated service name goes onto a queue; a removed one is translated to
`PeerLost(node_id)` from the names already resolved and told to the discovery actor. A
helper thread takes names off the queue, resolves them (`ServiceInfo.request`, which blocks
up to `resolve_timeout_ms`), parses the TXT record and tells
`PeerDiscovered(member, wire_version)`. Our own record is ignored. Malformed records are
counted (`mdns.bad_record`) and skipped.

mDNS is discovery only: after a crash no goodbye is sent and browsers keep the record for
its TTL, so failure detection is the discovery actor's job (SWIM probes). `stop_browsing()`
cancels the browser and stops the helper (no more events); `close()` also unregisters the
service, which multicasts a goodbye (TTL 0, RFC 6762 §10.1), and closes zeroconf.

TXT record (RFC 6763 §6): `id` node id, `site`, `subnet` (CIDR), `wire` (wire version),
`port` (UDP port of the peer endpoint), `weight` (0 = never responder), `caps` (capabilities,
comma-separated).
"""

from __future__ import annotations

import logging
import queue
import re
import socket
import threading
from typing import Final

import pykka
from zeroconf import (
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from actors.core import Address, MemberInfo, NodeId, PeerDiscovered, PeerLost
from transport.metrics import SharedCounters
from transport.timers import Teller

_LOG = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_peerpxe._udp.local."
RESOLVE_TIMEOUT_MS: Final = 3000
INSTANCE_BYTES_MAX: Final = 63  # one DNS label (RFC 6763 §4.1.1)
_UNSAFE_LABEL = re.compile(r"[^A-Za-z0-9_-]")


class ZeroconfAdapter:
    """Advertises this peer over mDNS and tells the discovery actor who else is there."""

    def __init__(
        self,
        self_info: MemberInfo,
        wire_version: int,
        interfaces: tuple[str, ...],
        target: Teller,
        *,
        counters: SharedCounters,
        resolve_timeout_ms: int = RESOLVE_TIMEOUT_MS,
    ) -> None:
        assert interfaces, "zeroconf needs at least one interface address"
        self._self_info = self_info
        self._wire_version = wire_version
        self._interfaces = interfaces
        self._target = target
        self._counters = counters
        self._resolve_timeout_ms = resolve_timeout_ms
        self._names: dict[str, NodeId] = {}
        self._names_lock = threading.Lock()
        self._pending: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._resolver = threading.Thread(
            target=self._resolve_loop, name=f"peerpxe-mdns-{self_info.node_id}", daemon=True
        )
        self._zeroconf: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._info = service_info(self_info, wire_version)

    def start(self) -> None:
        """Open zeroconf on the interfaces, start browsing, register our service."""
        self._zeroconf = Zeroconf(interfaces=list(self._interfaces), ip_version=IPVersion.V4Only)
        self._resolver.start()
        self._browser = ServiceBrowser(self._zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        self._zeroconf.register_service(self._info)
        _LOG.info("mdns registered %s on %s", self._info.name, ",".join(self._interfaces))

    def stop_browsing(self) -> None:
        """Stop browsing and resolving: nothing more is told to the discovery actor."""
        if self._browser is not None:
            self._browser.cancel()
            self._browser = None
        if self._resolver.is_alive():
            self._pending.put(None)
            self._resolver.join()

    def close(self) -> None:
        """Stop browsing, multicast the goodbye for our service and close zeroconf."""
        self.stop_browsing()
        if self._zeroconf is not None:
            try:
                self._zeroconf.unregister_service(self._info)
            finally:
                self._zeroconf.close()
            self._zeroconf = None

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        # Runs on zeroconf's thread: never block here.
        if name == self._info.name:
            return
        if state_change is ServiceStateChange.Removed:
            with self._names_lock:
                node_id = self._names.pop(name, None)
            if node_id is not None:
                self._tell(PeerLost(node_id))
            return
        self._pending.put(name)

    def _resolve_loop(self) -> None:
        while (name := self._pending.get()) is not None:
            zeroconf = self._zeroconf
            if zeroconf is None:
                return
            info = ServiceInfo(SERVICE_TYPE, name)
            if not info.request(zeroconf, self._resolve_timeout_ms):
                self._counters.add("mdns.resolve_failed")
                continue
            self._tell_discovered(name, info)

    def _tell_discovered(self, name: str, info: ServiceInfo) -> None:
        parsed = parse_service_info(info)
        if parsed is None:
            self._counters.add("mdns.bad_record")
            _LOG.debug("mdns: ignoring malformed record %s", name)
            return
        member, wire_version = parsed
        if member.node_id == self._self_info.node_id:
            return
        with self._names_lock:
            self._names[name] = member.node_id
        self._counters.add("mdns.discovered")
        self._tell(PeerDiscovered(member=member, wire_version=wire_version))

    def _tell(self, event: PeerDiscovered | PeerLost) -> None:
        try:
            self._target.tell(event)
        except pykka.ActorDeadError:
            self._counters.add("mdns.actor_gone")


def instance_name(node_id: NodeId) -> str:
    """A DNS-SD instance label for `node_id` (the TXT `id` carries the exact id)."""
    label = _UNSAFE_LABEL.sub("-", node_id)
    return label.encode()[:INSTANCE_BYTES_MAX].decode(errors="ignore") or "peer"


def service_info(member: MemberInfo, wire_version: int) -> ServiceInfo:
    """The service record advertising `member` (address must be a concrete IPv4 address)."""
    instance = instance_name(member.node_id)
    properties = {
        "id": member.node_id,
        "site": member.site,
        "subnet": member.subnet,
        "wire": str(wire_version),
        "port": str(member.address.port),
        "weight": str(member.weight),
        "caps": ",".join(member.capabilities),
    }
    return ServiceInfo(
        SERVICE_TYPE,
        f"{instance}.{SERVICE_TYPE}",
        port=member.address.port,
        properties=properties,
        server=f"{instance}.local.",
        addresses=[socket.inet_aton(member.address.host)],
    )


def parse_service_info(info: ServiceInfo) -> tuple[MemberInfo, int] | None:
    """The member and wire version a resolved record advertises, or None if malformed."""
    txt = info.decoded_properties
    addresses = info.parsed_addresses(IPVersion.V4Only)
    node_id, site, subnet = txt.get("id"), txt.get("site"), txt.get("subnet")
    wire = _parse_int(txt.get("wire"))
    port = _parse_int(txt.get("port")) or info.port
    weight = _parse_int(txt.get("weight"))
    if not node_id or site is None or subnet is None or not addresses:
        return None
    if wire is None or weight is None or port is None or not 0 < port < 65_536:
        return None
    caps = tuple(cap for cap in (txt.get("caps") or "").split(",") if cap)
    member = MemberInfo(
        node_id=node_id,
        site=site,
        subnet=subnet,
        address=Address(addresses[0], port),
        weight=weight,
        capabilities=caps,
    )
    return member, wire


def _parse_int(text: str | None) -> int | None:
    if text is None or not text.isdigit():
        return None
    return int(text)
