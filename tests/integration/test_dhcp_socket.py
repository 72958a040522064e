"""ProxyDHCP sockets on loopback: the 4011 path end to end, and garbage that must not hurt.

Unprivileged: both sockets bind 127.0.0.1 on free ports (the decision code still sees 67 and
4011) and `SO_BINDTODEVICE` is skipped. Broadcast offers on 67 are not sent here (they would
leave by the host's default interface); tests/netns/test_proxy_dhcp_netns.py covers them.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from actors.boot.dhcp_packet import MessageType, decode_packet
from actors.boot.proxy_dhcp import ArchClass, ProxyPolicy
from tests.unit import pxe_clients
from transport.dhcp_socket import BindError, DhcpListen, ProxyDhcpServer
from transport.metrics import SharedCounters

pytestmark = pytest.mark.integration

SERVER = "127.0.0.1"
POLICY = ProxyPolicy(
    boot_files={ArchClass.BIOS: "undionly.kpxe", ArchClass.EFI_X64: "ipxe.efi"},
    ipxe_script_url="http://127.0.0.1:8080/boot.ipxe",
)


@pytest.fixture
def proxy() -> Iterator[ProxyDhcpServer]:
    listen = DhcpListen(SERVER, None, port_67=0, port_4011=0, bind_67=SERVER)
    server = ProxyDhcpServer(listen, POLICY, counters=SharedCounters())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((SERVER, 0))
    sock.settimeout(2.0)
    try:
        yield sock
    finally:
        sock.close()


def counter(server: ProxyDhcpServer, name: str, expected: int) -> int:
    """The counter once it reached `expected` (the receive thread is asynchronous)."""
    deadline = time.monotonic() + 2.0
    value = server.counters.get(name)
    while value < expected and time.monotonic() < deadline:
        time.sleep(0.01)
        value = server.counters.get(name)
    return value


def test_4011_request_gets_ack_from_4011(proxy: ProxyDhcpServer, client: socket.socket) -> None:
    """An OVMF-style DHCPREQUEST to 4011 gets the ACK from the 4011 socket's address."""
    port_4011 = proxy.addresses[4011].port
    client.sendto(pxe_clients.ovmf_request_4011(), (SERVER, port_4011))
    payload, source = client.recvfrom(65535)
    assert source == (SERVER, port_4011)
    reply = decode_packet(payload)
    assert reply.message_type() is MessageType.ACK
    assert reply.file == b"ipxe.efi"
    assert reply.sname == SERVER.encode()
    assert reply.siaddr == socket.inet_aton(SERVER)
    assert reply.xid == pxe_clients.XID
    assert counter(proxy, "dhcp.answered", 1) == 1


def test_ipxe_gets_script_url_on_4011(proxy: ProxyDhcpServer, client: socket.socket) -> None:
    """iPXE asking on 4011 (from port 68 in real life) gets the script URL, never the NBP."""
    request = pxe_clients.craft(
        {**pxe_clients.ipxe_options(7), 53: b"\x03"}, ciaddr=pxe_clients.CLIENT_IP, flags=0
    )
    client.sendto(request, (SERVER, proxy.addresses[4011].port))
    reply = decode_packet(client.recvfrom(65535)[0])
    assert reply.file == POLICY.ipxe_script_url.encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "malformed"),
        (b"\x01" * 100, "malformed"),
        (bytes(400), "malformed"),
        (pxe_clients.craft({53: b"\x01", 60: b"MSFT 5.0"}), "not_pxe"),
        (pxe_clients.craft({60: b"PXEClient:Arch:00000:UNDI:002001"}), "bootp"),
        (pxe_clients.ovmf_discover(), "wrong_port"),  # DISCOVER on 4011
    ],
)
def test_junk_is_counted_and_service_survives(
    proxy: ProxyDhcpServer, client: socket.socket, payload: bytes, reason: str
) -> None:
    """Garbage and non-PXE traffic is ignored and counted; the next request still works."""
    client.sendto(payload, (SERVER, proxy.addresses[4011].port))
    client.sendto(payload, (SERVER, proxy.addresses[67].port))
    assert counter(proxy, f"dhcp.ignored.{reason}", 1) >= 1
    client.sendto(pxe_clients.ovmf_request_4011(), (SERVER, proxy.addresses[4011].port))
    assert decode_packet(client.recvfrom(65535)[0]).file == b"ipxe.efi"
    assert proxy.counters.get("dhcp.internal_error") == 0


def test_request_naming_other_server_is_ignored(
    proxy: ProxyDhcpServer, client: socket.socket
) -> None:
    """A 4011 request whose option 54 names another server gets no answer."""
    options = {**pxe_clients.ovmf_options(7, message_type=3), 54: socket.inet_aton("10.0.0.9")}
    client.sendto(pxe_clients.craft(options, flags=0), (SERVER, proxy.addresses[4011].port))
    assert counter(proxy, "dhcp.ignored.other_server", 1) == 1
    client.settimeout(0.3)
    with pytest.raises(TimeoutError):
        client.recvfrom(65535)


def test_unconfigured_address_is_a_clear_bind_error() -> None:
    """4011 on an address this machine does not have: BindError that says so."""
    listen = DhcpListen("203.0.113.254", None, port_67=0, port_4011=0, bind_67=SERVER)
    server = ProxyDhcpServer(listen, POLICY, counters=SharedCounters())
    with pytest.raises(BindError, match="not configured on this machine"):
        server.start()
    server.stop()


def test_stop_is_prompt_and_idempotent(proxy: ProxyDhcpServer) -> None:
    """stop() wakes the receive thread at once and may be called twice."""
    started = time.monotonic()
    proxy.stop()
    proxy.stop()
    assert time.monotonic() - started < 1.0
