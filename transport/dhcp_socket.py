"""ProxyDHCP sockets: UDP 67 and 4011 on one interface, answered by the pure decision code.

Theory of operation
-------------------
Two sockets, one receive thread (`selectors` over both sockets and a wake-up pair):

- **67** is bound to `0.0.0.0` with `SO_BINDTODEVICE` naming the interface: a PXE
  client's DHCPDISCOVER goes to 255.255.255.255, which a socket bound to the interface
  address never receives (reference/benchmarking.md, last section). `SO_REUSEADDR` lets a
  DHCP server on the same host keep its own :67 (both sockets get each broadcast), and
  `SO_BINDTODEVICE` also routes our broadcast replies out of that interface, so they work
  in a namespace or on a host without a default route (a plain `sendto` to
  255.255.255.255 fails with ENETUNREACH there). Replies from 67 are sent with `sendmsg`
  and `IP_PKTINFO` naming the interface and the server address as source, which matters
  when the server address is not the interface's primary one.
- **4011** is bound to the server address (the one we put in option 54 and `siaddr`):
  clients send their DHCPREQUEST there, unicast, and iPXE checks that the ACK comes from
  that address and port.

Two modes:

- **serve** (no `on_packet`, `peerpxe serve`): for each datagram the thread calls
  `proxy_dhcp.answer_datagram` (struct codec, no scapy: ~15 µs), sends the `DhcpReply` from
  the socket of the port it arrived on, and logs one line.
- **forwarding** (`on_packet` given, `peerpxe agent`): each datagram becomes
  `DhcpPacketReceived(payload, source, local=Address(server, port))` handed to `on_packet`
  (the agent tells it to the boot actor, which decides whether this peer answers at all);
  the answer comes back as a `SendDhcpReply` command that the host carries out with
  `send_reply`, from the socket of `command.source.port`, by the same `IP_PKTINFO` path.

Nothing a remote sends can stop the thread: malformed packets are `Ignore(MALFORMED)` in the
pure code, send errors are counted and logged, and an unexpected exception is logged with
its traceback and counted as `dhcp.internal_error`.

Logging: an answer, and a refusal of a PXE client (policy, no boot file, unknown
architecture, ...), is one INFO line with the MAC, architecture, port and decision. The rest
of the segment's DHCP traffic (non-PXE clients, DHCPREQUESTs on 67 meant for the DHCP
server, malformed packets) is counted and logged at DEBUG only: on a busy segment it would
drown the log.

Counters (`SharedCounters`): `dhcp.received`, `dhcp.answered`, `dhcp.ignored.<reason>`
(serve mode), `dhcp.forwarded` (forwarding mode), `dhcp.send_failed`, `dhcp.internal_error`.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from actors.boot.dhcp_packet import DhcpDecodeError, decode_packet
from actors.boot.proxy_dhcp import (
    DHCP_SERVER_PORT,
    PXE_PORT,
    DhcpReply,
    Ignore,
    IgnoreReason,
    ProxyPolicy,
    answer_datagram,
)
from actors.core import Address, DhcpPacketReceived, SendDhcpReply
from transport.metrics import SharedCounters

_LOG = logging.getLogger(__name__)

RECEIVE_BYTES_MAX: Final = 65_535
"""Larger than any datagram, so an oversized one is read whole (and refused whole)."""

QUIET_REASONS: Final = frozenset(
    {
        IgnoreReason.MALFORMED,
        IgnoreReason.NOT_BOOTREQUEST,
        IgnoreReason.BOOTP,
        IgnoreReason.NOT_PXE,
        IgnoreReason.WRONG_PORT,
        IgnoreReason.OTHER_SERVER,
    }
)
"""Ignore reasons that are ordinary DHCP traffic of the segment: logged at DEBUG only."""

_PRIVILEGE_ERRNOS: Final = (errno.EACCES, errno.EPERM)
IP_PKTINFO: Final = 8  # linux/in.h; the `socket` module of Python 3.11 does not export it
_IN_PKTINFO: Final = struct.Struct("@i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_MAC_OFFSET: Final = 28  # RFC 2131 §2: chaddr starts at byte 28
_MAC_BYTES: Final = 6


class BindError(OSError):
    """A listening socket could not be set up; the message says what to do about it."""


def bind_error(error: OSError, what: str, address: Address) -> BindError:
    """A `BindError` for `error` raised while binding `what` on `address`, with advice."""
    where = f"{address.host}:{address.port}"
    if error.errno in _PRIVILEGE_ERRNOS:
        advice = (
            "needs root or CAP_NET_BIND_SERVICE (ports below 1024) and CAP_NET_RAW "
            "(SO_BINDTODEVICE), e.g. `sudo setcap cap_net_bind_service,cap_net_raw+ep` on "
            "the Python interpreter, or run as root"
        )
    elif error.errno == errno.EADDRINUSE:
        advice = "the port is in use by another program (a DHCP, TFTP or web server?)"
    elif error.errno == errno.EADDRNOTAVAIL:
        advice = "that address is not configured on this machine"
    elif error.errno == errno.ENODEV:
        advice = "no such network interface"
    else:
        advice = error.strerror or str(error)
    return BindError(error.errno, f"cannot listen for {what} on {where}: {advice}")


@dataclass(frozen=True, slots=True)
class DhcpListen:
    """Where the ProxyDHCP sockets listen.

    `interface` None skips `SO_BINDTODEVICE` (loopback tests); `port_67` and `port_4011` may
    be moved for unprivileged tests, while the decision code still sees 67 and 4011.
    """

    server: str
    interface: str | None
    port_67: int = DHCP_SERVER_PORT
    port_4011: int = PXE_PORT
    bind_67: str = "0.0.0.0"  # noqa: S104 - broadcasts only reach a wildcard bind


class ProxyDhcpServer:
    """The two ProxyDHCP sockets and their receive thread; `start()` binds, `stop()` joins."""

    name = "proxydhcp"

    def __init__(
        self,
        listen: DhcpListen,
        policy: ProxyPolicy,
        *,
        counters: SharedCounters,
        on_packet: Callable[[DhcpPacketReceived], None] | None = None,
    ) -> None:
        """`on_packet` selects forwarding mode: datagrams go to it instead of being answered
        here with `policy` (see the module docstring)."""
        self.listen = listen
        self.policy = policy
        self.counters = counters
        self.on_packet = on_packet
        self._sockets: dict[int, socket.socket] = {}  # logical port (67, 4011) -> socket
        self._pktinfo: list[tuple[int, int, bytes]] = []  # ancillary data for 67 replies
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._receive_loop, name="peerpxe-dhcp")

    @property
    def addresses(self) -> dict[int, Address]:
        """The bound address of each socket, by logical port (67, 4011)."""
        return {port: Address(*sock.getsockname()) for port, sock in self._sockets.items()}

    def start(self) -> None:
        """Bind both sockets and start the receive thread; `BindError` if a bind fails."""
        listen = self.listen
        if listen.interface is not None:
            try:
                self._pktinfo = [(socket.IPPROTO_IP, IP_PKTINFO, _pktinfo(listen))]
            except OSError as error:
                raise bind_error(error, "ProxyDHCP", Address(listen.server, 67)) from error
        try:
            self._sockets[DHCP_SERVER_PORT] = _open_socket(
                Address(listen.bind_67, listen.port_67), listen.interface, "ProxyDHCP (67)"
            )
            self._sockets[PXE_PORT] = _open_socket(
                Address(listen.server, listen.port_4011), listen.interface, "PXE boot (4011)"
            )
        except BindError:
            self._close_sockets()
            raise
        for port, sock in self._sockets.items():
            self._selector.register(sock, selectors.EVENT_READ, port)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._thread.start()
        _LOG.info(
            "ProxyDHCP listening on %s (67 on %s:%d, 4011 on %s:%d), server address %s",
            listen.interface or "any interface",
            listen.bind_67,
            self.addresses[DHCP_SERVER_PORT].port,
            listen.server,
            self.addresses[PXE_PORT].port,
            listen.server,
        )

    def stop(self) -> None:
        """Stop the receive thread and close the sockets (idempotent)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake_write.send(b"\0")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._selector.close()
        self._close_sockets()
        self._wake_read.close()
        self._wake_write.close()

    def handle(self, payload: bytes, port: int, source: Address) -> DhcpReply | Ignore:
        """Answer one datagram that arrived on logical `port`, send the reply, log, count."""
        self.counters.add("dhcp.received")
        decision = answer_datagram(
            payload, local_port=port, source=source, server=self.listen.server, policy=self.policy
        )
        if isinstance(decision, Ignore):
            self.counters.add(f"dhcp.ignored.{decision.reason.value}")
            _log_ignore(payload, port, source, decision)
            return decision
        self._send(decision, port)
        return decision

    def forward(self, payload: bytes, port: int, source: Address) -> None:
        """Hand one datagram that arrived on logical `port` to `on_packet` (forwarding mode)."""
        assert self.on_packet is not None
        self.counters.add("dhcp.received")
        self.on_packet(DhcpPacketReceived(payload, source, Address(self.listen.server, port)))
        self.counters.add("dhcp.forwarded")

    def send_reply(self, command: SendDhcpReply) -> None:
        """Carry out a boot actor's reply: send from the socket of `command.source.port`.

        Never raises: a closed socket (stopping) or a failed send is counted as
        `dhcp.send_failed` and logged.
        """
        port, target = command.source.port, command.target
        sock = self._sockets.get(port)
        if sock is None:
            self.counters.add("dhcp.send_failed")
            _LOG.warning("no ProxyDHCP socket for port %d: reply to %s dropped", port, target.host)
            return
        try:
            self._send_from(sock, port, command.payload, target)
        except OSError as error:
            self.counters.add("dhcp.send_failed")
            _LOG.warning(
                "cannot send a reply from %d to %s:%d: %s", port, target.host, target.port, error
            )
            return
        self.counters.add("dhcp.answered")

    def _send_from(self, sock: socket.socket, port: int, payload: bytes, target: Address) -> None:
        if port == DHCP_SERVER_PORT and self._pktinfo:
            # IP_PKTINFO: leave by our interface with the server address as source, even
            # when it is not the interface's primary address (dnsmasq does the same)
            sock.sendmsg([payload], self._pktinfo, 0, (target.host, target.port))
        else:
            sock.sendto(payload, (target.host, target.port))

    def _receive_loop(self) -> None:
        while not self._stopping.is_set():
            for key, _ in self._selector.select():
                if key.data is None:
                    return  # woken by stop()
                self._receive_one(self._sockets[key.data], key.data)

    def _receive_one(self, sock: socket.socket, port: int) -> None:
        try:
            payload, (host, source_port) = sock.recvfrom(RECEIVE_BYTES_MAX)
        except OSError as error:  # e.g. ICMP-induced errors; the socket stays usable
            _LOG.debug("receive on %d failed: %s", port, error)
            return
        try:
            if self.on_packet is not None:
                self.forward(payload, port, Address(host, source_port))
            else:
                self.handle(payload, port, Address(host, source_port))
        except Exception:  # noqa: BLE001 - a bug on one packet must not end the service
            self.counters.add("dhcp.internal_error")
            _LOG.exception("internal error answering %d bytes from %s", len(payload), host)

    def _send(self, reply: DhcpReply, port: int) -> None:
        client = reply.client
        target = reply.target
        try:
            self._send_from(self._sockets[port], port, reply.payload, target)
        except OSError as error:
            self.counters.add("dhcp.send_failed")
            _LOG.warning(
                "mac=%s arch=%d port=%d: cannot send %s to %s:%d: %s",
                client.mac, client.arch, port, client.message_type.name, target.host,
                target.port, error,
            )  # fmt: skip
            return
        self.counters.add("dhcp.answered")
        verb = "ack" if port == PXE_PORT else "offer"
        _LOG.info(
            "mac=%s arch=%d (%s) port=%d %s: %s %s to %s:%d",
            client.mac, client.arch, client.arch_class.value, port, client.message_type.name,
            verb, _describe_boot(reply), target.host, target.port,
        )  # fmt: skip

    def _close_sockets(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()


def _open_socket(address: Address, interface: str | None, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if interface is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind((address.host, address.port))
    except OSError as error:
        sock.close()
        raise bind_error(error, what, address) from error
    return sock


def _pktinfo(listen: DhcpListen) -> bytes:
    assert listen.interface is not None
    index = socket.if_nametoindex(listen.interface)
    return _IN_PKTINFO.pack(index, socket.inet_aton(listen.server), bytes(4))


def _describe_boot(reply: DhcpReply) -> str:
    kind = reply.client.kind.value
    if not reply.boot_file:
        return f"{kind} -> come back on 4011"
    return f"{kind} -> {reply.boot_file}"


def _log_ignore(payload: bytes, port: int, source: Address, decision: Ignore) -> None:
    quiet = decision.reason in QUIET_REASONS
    if quiet and not _LOG.isEnabledFor(logging.DEBUG):
        return
    mac, arch = _client_facts(payload)
    _LOG.log(
        logging.DEBUG if quiet else logging.INFO,
        "mac=%s arch=%s port=%d from %s:%d: ignored (%s) %s",
        mac, arch, port, source.host, source.port, decision.reason.value, decision.detail,
    )  # fmt: skip


def _client_facts(payload: bytes) -> tuple[str, str]:
    """Best-effort MAC and architecture for a log line about an ignored packet."""
    mac = payload[_MAC_OFFSET : _MAC_OFFSET + _MAC_BYTES].hex(":") or "?"
    try:
        architectures = decode_packet(payload).client_architectures()
    except DhcpDecodeError:
        return mac, "?"
    return mac, str(architectures[0]) if architectures else "-"
