"""`peerpxe serve` as a ProxyDHCP next to a real DHCP server, in network namespaces.

Layout: a bridge (own namespace) joins `dhcp` (10.231.8.1, dnsmasq handing out addresses
only, no boot options), `boot` (10.231.8.2, `peerpxe serve` on eth0) and `client` (eth0 up,
no address, like a booting machine). The PXE client is `tests/netns/dhcp_probe.py` sending
scapy-built requests (`tests/unit/pxe_clients.py`) from 0.0.0.0:68 to 255.255.255.255:67;
busybox udhcpc is a second, independent DHCP client implementation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors.boot.dhcp_packet import DhcpPacket, MessageType, decode_packet
from tests.netns.netlab import REPO, LabProcess, NetLab, skip_reason
from tests.unit import pxe_clients
from tests.unit.pxe_clients import CLIENT_MAC, MACHINE_ID, craft, scapy_reply

TOOLS = ("dnsmasq", "busybox", "curl", "setpriv")


def _skip_reason() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (apt: dnsmasq-base busybox curl util-linux)"
    return skip_reason()


pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or ""),
]

DHCP_SERVER = "10.231.8.1"
PROXY = "10.231.8.2"
HTTP_PORT = 8080
SCRIPT = b"#!ipxe\necho peerpxe netns test\nshell\n"
SERVE = [sys.executable, "-m", "peerpxe.cli", "serve"]


@dataclass
class Reply:
    source: tuple[str, int]
    packet: DhcpPacket
    payload: bytes


@dataclass
class Lab:
    net: NetLab
    client: str
    boot: str
    serve: LabProcess
    dnsmasq: LabProcess | None

    def logs(self) -> str:
        return "\n".join(f"--- {p.label}\n{p.log()[-4000:]}" for p in self.net.processes)

    def probe(
        self, payload: bytes, to: str, *, port: int = 68, listen_s: float = 1.0
    ) -> list[Reply]:
        """Send `payload` from the client namespace; every datagram received back."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.client, sys.executable, "-m", "tests.netns.dhcp_probe",
             "--interface", "eth0", "--port", str(port), "--to", to, "--payload", payload.hex(),
             "--listen-s", str(listen_s)],
            capture_output=True, text=True, timeout=30, cwd=REPO, check=True,
        )  # fmt: skip
        replies = []
        for item in json.loads(done.stdout):
            raw = bytes.fromhex(item["payload"])
            replies.append(Reply((item["source"][0], item["source"][1]), decode_packet(raw), raw))
        return replies


def boot_root(parent: Path) -> Path:
    root = parent / "root"
    root.mkdir()
    (root / "undionly.kpxe").write_bytes(os.urandom(4096))
    (root / "ipxe.efi").write_bytes(os.urandom(4096))
    (root / "boot.ipxe").write_bytes(SCRIPT)
    return root


def start_serve(net: NetLab, namespace: str, root: Path, *extra: str) -> LabProcess:
    serve = net.spawn(namespace, "serve", [
        *SERVE, "--interface", "eth0", "--root", str(root), "--bios", "undionly.kpxe",
        "--efi64", "ipxe.efi", "--ipxe-script", "boot.ipxe", "--http-port", str(HTTP_PORT),
        "--log-level", "debug", *extra,
    ])  # fmt: skip
    if net.wait_for(lambda: "ProxyDHCP listening" in serve.log(), 15) is None:
        pytest.fail(f"peerpxe serve did not start:\n{serve.log()}")
    return serve


def start_dnsmasq(net: NetLab, namespace: str) -> LabProcess:
    work = net.workdir
    dnsmasq = net.spawn(namespace, "dnsmasq", [
        "dnsmasq", "--no-daemon", "--port=0", "--interface=eth0", "--bind-interfaces",
        "--dhcp-range=10.231.8.100,10.231.8.150,255.255.255.0,1h",
        f"--dhcp-leasefile={work}/leases", f"--pid-file={work}/dnsmasq.pid",
        "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--no-ping", "--user=root",
        "--log-dhcp",
    ])  # fmt: skip
    if net.wait_for(lambda: "DHCP, IP range" in dnsmasq.log(), 10) is None:
        pytest.fail(f"dnsmasq did not start:\n{dnsmasq.log()}")
    return dnsmasq


def build_lab(tmp_path: Path, *, with_dnsmasq: bool) -> Iterator[Lab]:
    net = NetLab(tmp_path)
    try:
        dhcp = net.add_host("dhcp", f"{DHCP_SERVER}/24")
        boot = net.add_host("boot", f"{PROXY}/24")
        client = net.add_host("client", None)
        dnsmasq = start_dnsmasq(net, dhcp) if with_dnsmasq else None
        serve = start_serve(net, boot, boot_root(tmp_path))
        lab = Lab(net, client, boot, serve, dnsmasq)
        yield lab
    finally:
        net.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    yield from build_lab(tmp_path, with_dnsmasq=True)


@pytest.fixture
def proxy_only(tmp_path: Path) -> Iterator[Lab]:
    yield from build_lab(tmp_path, with_dnsmasq=False)


def by_source(replies: list[Reply], host: str) -> Reply:
    found = [reply for reply in replies if reply.source[0] == host]
    assert len(found) == 1, f"{len(found)} replies from {host}: {replies}"
    return found[0]


def lease(lab: Lab, address: str) -> None:
    """Give the client the address dnsmasq offered, as firmware does after its DHCPACK."""
    subprocess.run(
        ["ip", "-n", lab.client, "addr", "add", f"{address}/24", "dev", "eth0"], check=True
    )


def test_bios_discover_gets_proxy_offer_and_dhcp_offer(lab: Lab) -> None:
    """A BIOS DISCOVER gets both offers: dnsmasq's address, and our boot-only proxy offer."""
    replies = lab.probe(pxe_clients.bios_discover(), "255.255.255.255:67")
    offer = by_source(replies, PROXY)
    assert offer.source == (PROXY, 67)
    header, options = scapy_reply(offer.payload)
    assert options["message-type"] == 2
    assert header["yiaddr"] == "0.0.0.0"
    assert header["siaddr"] == PROXY
    assert header["file"] == b"undionly.kpxe"
    assert options["server_id"] == PROXY
    assert options["vendor_class_id"] == b"PXEClient"
    assert offer.packet.options[97] == MACHINE_ID
    assert offer.packet.options[43] == bytes.fromhex("060108ff")
    assert offer.packet.mac == CLIENT_MAC
    real = by_source(replies, DHCP_SERVER)
    assert real.packet.message_type() is MessageType.OFFER
    assert socket.inet_ntoa(real.packet.yiaddr).startswith("10.231.8.1")
    assert 43 not in real.packet.options
    assert "mac=52:54:00:12:34:56 arch=0 (bios) port=67 DISCOVER: offer" in lab.serve.log()


def test_uefi_discover_gets_proxybinl_offer(lab: Lab) -> None:
    """An x64 UEFI DISCOVER gets a proxy offer without file or 43: ask again on 4011."""
    offer = by_source(lab.probe(pxe_clients.ovmf_discover(), "255.255.255.255:67"), PROXY)
    assert offer.packet.file == b""
    assert 43 not in offer.packet.options
    assert offer.packet.server_identifier() == socket.inet_aton(PROXY)


@pytest.mark.parametrize("client_port", [4011, 68], ids=["edk2-from-4011", "ipxe-from-68"])
def test_uefi_request_on_4011_gets_ack(lab: Lab, client_port: int) -> None:
    """After its lease, the x64 UEFI client asks on 4011 and gets the ACK from 4011, at the
    source port it used (EDK2 sends from 4011, iPXE from 68)."""
    offered = by_source(lab.probe(pxe_clients.ovmf_discover(), "255.255.255.255:67"), DHCP_SERVER)
    address = socket.inet_ntoa(offered.packet.yiaddr)
    lease(lab, address)
    options = pxe_clients.ovmf_options(7, message_type=3)
    options[54] = socket.inet_aton(PROXY)
    request = craft(options, ciaddr=address, flags=0)
    replies = lab.probe(request, f"{PROXY}:4011", port=client_port, listen_s=1.0)
    ack = by_source(replies, PROXY)
    assert ack.source == (PROXY, 4011)
    header, options_seen = scapy_reply(ack.payload)
    assert options_seen["message-type"] == 5
    assert header["siaddr"] == PROXY
    assert header["sname"] == PROXY.encode()
    assert header["file"] == b"ipxe.efi"
    assert header["ciaddr"] == address
    assert options_seen["vendor_class_id"] == b"PXEClient"
    assert ack.packet.options[97] == MACHINE_ID


def test_ipxe_gets_script_url_and_script_over_http(lab: Lab) -> None:
    """iPXE's DISCOVER gets the script URL (never the NBP again); the URL serves the script."""
    offer = by_source(lab.probe(pxe_clients.ipxe_discover(), "255.255.255.255:67"), PROXY)
    url = f"http://{PROXY}:{HTTP_PORT}/boot.ipxe"
    assert offer.packet.file == url.encode()
    lease(lab, "10.231.8.200")
    fetched = subprocess.run(
        ["ip", "netns", "exec", lab.client, "curl", "-s", "-f", "--max-time", "5", url],
        capture_output=True, check=True, timeout=20,
    )  # fmt: skip
    assert fetched.stdout == SCRIPT


def test_non_pxe_discover_gets_only_the_dhcp_offer(lab: Lab) -> None:
    """An ordinary DHCP client is the DHCP server's business: no proxy offer."""
    plain = craft({53: b"\x01", 55: bytes([1, 3, 6])})
    replies = lab.probe(plain, "255.255.255.255:67")
    assert [reply.source[0] for reply in replies] == [DHCP_SERVER]


def test_busybox_udhcpc_parses_the_proxy_offer(proxy_only: Lab) -> None:
    """An independent client (busybox udhcpc) accepts our offer as a DHCP offer from
    10.231.8.2 with yiaddr 0, and the proxy never acknowledges its DHCPREQUEST on 67:
    so a ProxyDHCP alone hands out no address."""
    done = subprocess.run(
        ["ip", "netns", "exec", proxy_only.client, "busybox", "udhcpc", "-i", "eth0", "-f",
         "-n", "-q", "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000",
         "-s", "/bin/true", "-t", "1", "-T", "1"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert f"select for 0.0.0.0, server {PROXY}" in output, output
    assert done.returncode != 0, output
    assert "no lease" in output
    log = proxy_only.serve.log()
    assert "arch=0 (bios) port=67 DISCOVER: offer pxe -> undionly.kpxe" in log
    assert "ignored (wrong_port) REQUEST on 67" in log


def test_dhcp_server_on_the_same_host(tmp_path: Path) -> None:
    """dnsmasq (--bind-interfaces) and `peerpxe serve` share port 67 in one namespace: each
    broadcast reaches both, and the client gets both offers from the same address."""
    net = NetLab(tmp_path)
    try:
        boot = net.add_host("boot", f"{PROXY}/24")
        client = net.add_host("client", None)
        dnsmasq = start_dnsmasq(net, boot)
        lab = Lab(net, client, boot, start_serve(net, boot, boot_root(tmp_path)), dnsmasq)
        replies = lab.probe(pxe_clients.bios_discover(), "255.255.255.255:67")
    finally:
        net.close()
    assert sorted(reply.source for reply in replies) == [(PROXY, 67), (PROXY, 67)]
    proxy = [reply for reply in replies if reply.packet.yiaddr == bytes(4)]
    assert [reply.packet.file for reply in proxy] == [b"undionly.kpxe"]


def test_secondary_address_is_the_source(tmp_path: Path) -> None:
    """With `--listen` on a secondary address, offers come from it (IP_PKTINFO), match
    option 54, and the 4011 ACK comes from it too."""
    secondary = "10.231.8.3"
    net = NetLab(tmp_path)
    try:
        boot = net.add_host("boot", f"{PROXY}/24")
        subprocess.run(
            ["ip", "-n", boot, "addr", "add", f"{secondary}/24", "dev", "eth0"], check=True
        )
        client = net.add_host("client", None)
        serve = start_serve(net, boot, boot_root(tmp_path), "--listen", secondary)
        lab = Lab(net, client, boot, serve, None)
        offers = lab.probe(pxe_clients.bios_discover(), "255.255.255.255:67")
        lease(lab, "10.231.8.201")
        request = craft(pxe_clients.ovmf_options(7, message_type=3), ciaddr="10.231.8.201")
        acks = lab.probe(request, f"{secondary}:4011", listen_s=1.0)
    finally:
        net.close()
    assert [offer.source for offer in offers] == [(secondary, 67)]
    assert offers[0].packet.server_identifier() == socket.inet_aton(secondary)
    assert [ack.source for ack in acks] == [(secondary, 4011)]
    assert acks[0].packet.file == b"ipxe.efi"


def test_sigterm_stops_cleanly(proxy_only: Lab) -> None:
    """SIGTERM: `peerpxe serve` closes its sockets and exits 0."""
    process = proxy_only.serve.process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert "stopped" in proxy_only.serve.log()


def test_unprivileged_bind_error_is_clear(tmp_path: Path) -> None:
    """As an unprivileged user, port 67 cannot be bound: exit 1 with what to do about it."""
    net = NetLab(tmp_path)
    public = Path(tempfile.mkdtemp(prefix="ppxroot"))  # readable by nobody
    try:
        namespace = net.add_host("boot", f"{PROXY}/24")
        public.chmod(0o755)
        (public / "undionly.kpxe").write_bytes(b"x")
        (public / "undionly.kpxe").chmod(0o644)
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, "setpriv", "--reuid=65534", "--regid=65534",
             "--clear-groups", *SERVE, "--interface", "eth0", "--root", str(public),
             "--bios", "undionly.kpxe", "--http-port", "8080", "--tftp-port", "6969"],
            capture_output=True, text=True, timeout=30, cwd=REPO, check=False,
        )  # fmt: skip
    finally:
        net.close()
        shutil.rmtree(public)
    assert done.returncode == 1, done.stderr
    assert "needs root or CAP_NET_BIND_SERVICE" in done.stderr
    assert "0.0.0.0:67" in done.stderr
