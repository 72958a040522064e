"""ProxyDHCP in forwarding mode (the agent's): datagrams go to the boot actor, replies come back
as `SendDhcpReply` commands that the host carries out through the same sockets.

Loopback, unprivileged: sockets on 127.0.0.1 with free ports (the boot actor still sees the
logical ports 67 and 4011). Only 4011 replies are sent for real here (they go back to the
client's own address); a 67 offer is a broadcast, covered by tests/netns/.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from actors.boot.actor import Boot
from actors.boot.dhcp_packet import MessageType, decode_packet
from actors.boot.proxy_dhcp import ArchClass, ProxyPolicy
from actors.core import (
    ActorName,
    Address,
    DhcpPacketReceived,
    LeadershipChanged,
    MemberInfo,
    SendDhcpReply,
)
from actors.election import RESPONDER_CAPABILITY
from tests.integration.standins import Recorder
from tests.integration.waiting import wait_until
from tests.unit import pxe_clients
from transport.dhcp_socket import DhcpListen, ProxyDhcpServer
from transport.host import Peer, PeerSettings
from transport.metrics import SharedCounters

pytestmark = pytest.mark.integration

SERVER = "127.0.0.1"
POLICY = ProxyPolicy(boot_files={ArchClass.BIOS: "undionly.kpxe", ArchClass.EFI_X64: "ipxe.efi"})
INFO = MemberInfo("n1", "lab", "127.0.0.0/8", Address(SERVER, 0), 50, (RESPONDER_CAPABILITY,))


class Inbox:
    """An `on_packet` callback that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[DhcpPacketReceived] = []
        self.arrived = threading.Event()

    def __call__(self, event: DhcpPacketReceived) -> None:
        self.events.append(event)
        self.arrived.set()


def forwarding_proxy(on_packet: Callable[[DhcpPacketReceived], None]) -> ProxyDhcpServer:
    listen = DhcpListen(SERVER, None, port_67=0, port_4011=0, bind_67=SERVER)
    server = ProxyDhcpServer(listen, POLICY, counters=SharedCounters(), on_packet=on_packet)
    server.start()
    return server


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((SERVER, 0))
    sock.settimeout(2.0)
    try:
        yield sock
    finally:
        sock.close()


def test_datagrams_are_forwarded_with_their_logical_port(client: socket.socket) -> None:
    """Each datagram becomes DhcpPacketReceived(payload, source, local=(server, 67|4011));
    nothing is answered inline."""
    inbox = Inbox()
    proxy = forwarding_proxy(inbox)
    try:
        discover = pxe_clients.ovmf_discover()
        client.sendto(discover, (SERVER, proxy.addresses[67].port))
        assert wait_until(lambda: len(inbox.events) == 1, timeout_s=2.0)
        client.sendto(b"junk", (SERVER, proxy.addresses[4011].port))
        assert wait_until(lambda: len(inbox.events) == 2, timeout_s=2.0)
    finally:
        proxy.stop()
    first, second = inbox.events
    assert first == DhcpPacketReceived(
        discover, Address(*client.getsockname()), Address(SERVER, 67)
    )
    assert second.local == Address(SERVER, 4011)
    assert second.payload == b"junk"
    assert proxy.counters.get("dhcp.forwarded") == 2
    assert proxy.counters.get("dhcp.answered") == 0


def test_send_reply_uses_the_socket_of_the_source_port(client: socket.socket) -> None:
    """send_reply sends from the 4011 socket for source port 4011; unknown ports are counted."""
    proxy = forwarding_proxy(Inbox())
    port_4011 = proxy.addresses[4011].port
    try:
        target = Address(*client.getsockname())
        proxy.send_reply(SendDhcpReply(b"reply", Address(SERVER, 4011), target))
        payload, source = client.recvfrom(65535)
        proxy.send_reply(SendDhcpReply(b"x", Address(SERVER, 5000), target))
    finally:
        proxy.stop()
    assert payload == b"reply"
    assert source == (SERVER, port_4011)
    assert proxy.counters.get("dhcp.answered") == 1
    assert proxy.counters.get("dhcp.send_failed") == 1


def test_boot_actor_answers_4011_through_the_host(client: socket.socket) -> None:
    """Socket -> boot actor (pykka) -> SendDhcpReply -> the same socket: a 4011 ACK."""
    peer = Peer(PeerSettings("n1", b"k" * 32, epoch=1, bind=Address(SERVER, 0)))
    proxy = forwarding_proxy(lambda event: peer.tell(ActorName.BOOT, event))
    port_4011 = proxy.addresses[4011].port
    try:
        peer.attach_dhcp(proxy)
        peer.start([Boot(INFO, POLICY, SERVER)])
        client.sendto(pxe_clients.ovmf_request_4011(), (SERVER, port_4011))
        payload, source = client.recvfrom(65535)
    finally:
        proxy.stop()
        peer.stop()
    assert source == (SERVER, port_4011)
    reply = decode_packet(payload)
    assert reply.message_type() is MessageType.ACK
    assert reply.file == b"ipxe.efi"
    assert peer.counters.get("boot.answered.standby") == 1


def test_offer_only_while_leading_and_no_sender_is_counted() -> None:
    """A DISCOVER is answered only after LeadershipChanged(leading); without a DHCP sender
    the reply is counted as dhcp.no_sender."""
    peer = Peer(PeerSettings("n1", b"k" * 32, epoch=1, bind=Address(SERVER, 0)))
    peer.start([Boot(INFO, POLICY, SERVER), Recorder()])
    try:
        event = DhcpPacketReceived(
            pxe_clients.ovmf_discover(), Address("0.0.0.0", 68), Address(SERVER, 67)
        )
        peer.tell(ActorName.BOOT, event)
        assert wait_until(lambda: peer.counters.get("boot.silent_not_leader") == 1, 2.0)
        scope = f"subnet:{INFO.subnet}"
        peer.tell(ActorName.BOOT, LeadershipChanged(scope, RESPONDER_CAPABILITY, True, 3, "n1"))
        peer.tell(ActorName.BOOT, event)
        assert wait_until(lambda: peer.counters.get("dhcp.no_sender") == 1, 2.0)
    finally:
        peer.stop()
    assert peer.counters.get("boot.answered.leader") == 1
    assert peer.counters.get("boot.became_responder") == 1
