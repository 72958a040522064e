"""Simulated PXE firmware: DISCOVER/REQUEST retry timing of BIOS ROMs, UEFI and iPXE.

Theory of operation
-------------------
A `PxeClient` is a small state machine driven by the simulator with `start(now_s)`,
`on_reply(payload, sender, now_s)` and `on_timer(now_s)`; it returns `ClientAction`s (send a
DHCP datagram, arm the timer, fetch the boot program, finish). It builds real DHCP packets
with the project's codec, so the boot actors under test parse the same bytes a firmware
sends. The site's DHCP server is assumed to answer every DISCOVER with an address (peerpxe
never replaces it); only the *proxy* offer is modelled.

Timing per firmware (pxe-protocol-notes.md §5, distributed-numbers.md §2.2):

- BIOS PXE ROM and UEFI (EDK II): DISCOVER, then wait 4, 8, 16, 32 s for offers, resending
  with `secs` = seconds since the first DISCOVER; the client collects proxy offers for the
  whole window and takes the first at its end (EDK II selects by offer type at the end of the
  window). ~60 s in all, then the boot fails.
- UEFI then unicasts DHCPREQUEST to the proxy's server identifier on port 4011 and waits
  `REQUEST_TIMEOUT_S` (twice) for the ACK that names the boot program.
- iPXE: DISCOVER with back-off 1, 2, 4, 8 s; it waits only `IPXE_PROXY_WAIT_S` (2 s) after
  the DHCP server's offer for a proxy offer (iPXE `config/dhcp.h`); the embedded script
  retries `dhcp` a few times when `${filename}` stayed empty (pixiecore's boot.ipxe).
- Then the boot program is fetched over TFTP from `siaddr`: the simulator models the
  transfer with bandwidth and fails it if that peer dies meanwhile. A BIOS ROM or UEFI
  firmware whose download fails gives up (PXE-E32 and friends: the boot fails); iPXE's
  embedded script goes round its `dhcp` loop again (within the same attempt budget).

Every DISCOVER records which distinct servers answered it (`offers_per_discover`), for the
duplicate-offer rate.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from actors.boot.dhcp_packet import (
    DhcpDecodeError,
    DhcpPacket,
    decode_packet,
    encode_packet,
    ipv4_bytes,
    ipv4_text,
)

BIOS_TIMEOUTS_S: Final = (4.0, 8.0, 16.0, 32.0)  # PXE 2.1 spec; EDK II the same
IPXE_PROXY_WAIT_S: Final = 2.0  # iPXE: PROXYDHCP wait after the first offer (dhcp.h)
IPXE_DISCOVER_ATTEMPTS: Final = 8  # embedded script: retry `dhcp` while ${filename} is empty
REQUEST_TIMEOUT_S: Final = 2.0  # UEFI 4011 request wait (iPXE uses 2 s too, spec 7)
REQUEST_ATTEMPTS: Final = 2
DHCP_SERVER_PORT: Final = 67  # RFC 2131 §4.1
PXE_PORT: Final = 4011
ARCH_OF: Final = {"bios": 0, "uefi": 7, "ipxe": 0}
BOOTP_REQUEST: Final = 1
DISCOVER: Final = 1  # RFC 2132 §9.6
REQUEST: Final = 3
OFFER: Final = 2
ACK: Final = 5


class Firmware(StrEnum):
    """Which firmware the simulated machine runs."""

    #: BIOS PXE 2.1 ROM: boots from the 67 offer (option 43 + file)
    BIOS = "bios"
    #: UEFI (EDK II): ProxyBinl offer on 67, then DHCPREQUEST to 4011
    UEFI = "uefi"
    #: iPXE (user class `iPXE`): short proxy wait, script URL as the boot file
    IPXE = "ipxe"


class Phase(StrEnum):
    """Where the client is in its boot."""

    DISCOVERING = "discovering"
    REQUESTING = "requesting"
    FETCHING = "fetching"
    BOOTED = "booted"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SendDhcp:
    """Send `payload` to UDP `port` of `server` (None: broadcast on the client's subnet)."""

    payload: bytes
    port: int
    server: str | None


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Call `on_timer` at `deadline_s` (one timer per client; re-arming replaces it)."""

    deadline_s: float


@dataclass(frozen=True, slots=True)
class FetchBootFile:
    """Download `boot_file` from `server` (the simulator models TFTP and reports back)."""

    server: str
    boot_file: str


ClientAction = SendDhcp | ArmTimer | FetchBootFile


@dataclass(slots=True)
class _Offer:
    server: str
    """Option 54: who answered (where a UEFI client sends its 4011 request)."""
    boot_file: str
    file_server: str
    """`siaddr`, the "next server" the boot file is fetched from (option 54 when zero)."""


@dataclass(slots=True)
class PxeClient:
    """One network-booting machine (see the module docstring)."""

    client_id: int
    firmware: Firmware
    mac: bytes
    phase: Phase = Phase.DISCOVERING
    started_s: float = 0.0
    finished_s: float = 0.0
    failure: str = ""
    booted_from: str = ""
    attempt: int = 0
    script_attempt: int = 0
    xid: int = 0
    offers: list[_Offer] = field(default_factory=list)
    offers_per_discover: list[int] = field(default_factory=list)
    tftp_failures: int = 0
    _answered_this_xid: dict[str, None] = field(default_factory=dict)
    _request_server: str = ""

    def start(self, now_s: float) -> list[ClientAction]:
        """Power on: the first DISCOVER."""
        self.started_s = now_s
        return self._discover(now_s)

    def on_reply(self, payload: bytes, now_s: float) -> list[ClientAction]:
        """A DHCP datagram reached this client (already filtered by the simulator's MAC)."""
        try:
            reply = decode_packet(payload)
        except DhcpDecodeError:
            return []
        if reply.xid != self.xid or reply.chaddr[: len(self.mac)] != self.mac:
            return []
        message_type = reply.options.get(53, b"\x00")[0]
        if message_type == OFFER and self.phase is Phase.DISCOVERING:
            return self._on_offer(reply)
        if message_type == ACK and self.phase is Phase.REQUESTING:
            return self._on_ack(reply, now_s)
        del now_s
        return []

    def on_timer(self, now_s: float) -> list[ClientAction]:
        """The current wait ended."""
        if self.phase is Phase.DISCOVERING:
            return self._end_of_window(now_s)
        if self.phase is Phase.REQUESTING:
            return self._request_timed_out(now_s)
        return []

    def on_fetched(self, ok: bool, reason: str, now_s: float) -> list[ClientAction]:
        """The simulator finished the TFTP download of the boot program."""
        if ok:
            self.phase, self.finished_s = Phase.BOOTED, now_s
            return []
        self.tftp_failures += 1
        if self.firmware is Firmware.IPXE:
            return self._retry_or_fail(now_s)  # the script's `dhcp` loop
        return self._fail(now_s, f"tftp: {reason}")

    # ------------------------------------------------------------------ discovery

    def _discover(self, now_s: float) -> list[ClientAction]:
        self.phase = Phase.DISCOVERING
        self.xid = (self.client_id * 2654435761 + self.attempt + 1) & 0xFFFFFFFF
        self.offers = []
        self._answered_this_xid = {}
        secs = min(0xFFFF, int(now_s - self.started_s))
        payload = _request(self, DISCOVER, secs, server=None)
        wait_s = self._window_s()
        return [SendDhcp(payload, DHCP_SERVER_PORT, None), ArmTimer(now_s + wait_s)]

    def _window_s(self) -> float:
        if self.firmware is Firmware.IPXE:
            return IPXE_PROXY_WAIT_S
        return BIOS_TIMEOUTS_S[self.attempt]

    def _on_offer(self, reply: DhcpPacket) -> list[ClientAction]:
        vendor = reply.options.get(60, b"")
        if reply.yiaddr != bytes(4) or not vendor.startswith(b"PXEClient"):
            return []
        server = ipv4_text(reply.options.get(54, reply.siaddr))
        if server not in self._answered_this_xid:
            self._answered_this_xid[server] = None
        boot_file = reply.file.rstrip(b"\x00").decode("ascii", "replace")
        file_server = ipv4_text(reply.siaddr) if reply.siaddr != bytes(4) else server
        self.offers.append(_Offer(server=server, boot_file=boot_file, file_server=file_server))
        return []

    def _end_of_window(self, now_s: float) -> list[ClientAction]:
        self.offers_per_discover.append(len(self._answered_this_xid))
        if self.offers:
            return self._proceed(self.offers[0], now_s)
        return self._retry_or_fail(now_s)

    def _retry_or_fail(self, now_s: float) -> list[ClientAction]:
        if self.firmware is Firmware.IPXE:
            self.script_attempt += 1
            if self.script_attempt >= IPXE_DISCOVER_ATTEMPTS:
                return self._fail(now_s, "no proxy offer (iPXE)")
            self.attempt = self.script_attempt
            return self._discover(now_s)
        self.attempt += 1
        if self.attempt >= len(BIOS_TIMEOUTS_S):
            return self._fail(now_s, "no proxy offer (PXE-E53)")
        return self._discover(now_s)

    def _proceed(self, offer: _Offer, now_s: float) -> list[ClientAction]:
        if self.firmware is Firmware.UEFI and not offer.boot_file:
            return self._request(offer.server, now_s, first=True)
        if not offer.boot_file:
            return self._retry_or_fail(now_s)
        return self._fetch(_url_host(offer.boot_file) or offer.file_server, offer.boot_file)

    # ------------------------------------------------------------------ 4011 request

    def _request(self, server: str, now_s: float, *, first: bool) -> list[ClientAction]:
        self.phase = Phase.REQUESTING
        self._request_server = server
        if first:
            self.script_attempt = 0
        payload = _request(self, REQUEST, 0, server=server)
        return [SendDhcp(payload, PXE_PORT, server), ArmTimer(now_s + REQUEST_TIMEOUT_S)]

    def _on_ack(self, reply: DhcpPacket, now_s: float) -> list[ClientAction]:
        boot_file = reply.file.rstrip(b"\x00").decode("ascii", "replace")
        if not boot_file:
            return self._fail(now_s, "4011 ACK without a boot file")
        server = ipv4_text(reply.siaddr) if reply.siaddr != bytes(4) else self._request_server
        return self._fetch(server, boot_file)

    def _request_timed_out(self, now_s: float) -> list[ClientAction]:
        self.script_attempt += 1
        if self.script_attempt < REQUEST_ATTEMPTS:
            return self._request(self._request_server, now_s, first=False)
        # EDK II restarts discovery when the boot server stays silent (PXE-E55 otherwise).
        return self._retry_or_fail(now_s)

    # ------------------------------------------------------------------ endings

    def _fetch(self, server: str, boot_file: str) -> list[ClientAction]:
        self.phase = Phase.FETCHING
        self.booted_from = server
        return [FetchBootFile(server, boot_file)]

    def _fail(self, now_s: float, reason: str) -> list[ClientAction]:
        self.phase, self.finished_s, self.failure = Phase.FAILED, now_s, reason
        return []


def _url_host(boot_file: str) -> str:
    """The host of an iPXE script URL (`http://10.0.0.5:8080/boot.ipxe`), or ''."""
    return urllib.parse.urlsplit(boot_file).hostname or "" if "://" in boot_file else ""


def _request(client: PxeClient, message_type: int, secs: int, server: str | None) -> bytes:
    arch = ARCH_OF[client.firmware.value]
    options: dict[int, bytes] = {
        53: bytes((message_type,)),
        93: arch.to_bytes(2, "big"),
        94: b"\x01\x02\x01",
        97: b"\x00" + client.mac.rjust(16, b"\x00"),
        60: f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode(),
    }
    if client.firmware is Firmware.IPXE:
        options[77] = b"iPXE"
    if server is not None:
        options[54] = ipv4_bytes(server)
    packet = DhcpPacket(
        op=BOOTP_REQUEST,
        htype=1,
        hlen=len(client.mac),
        hops=0,
        xid=client.xid,
        secs=secs,
        flags=0x8000,
        ciaddr=bytes(4),
        yiaddr=bytes(4),
        siaddr=bytes(4),
        giaddr=bytes(4),
        chaddr=client.mac.ljust(16, b"\x00"),
        sname=b"",
        file=b"",
        options=options,
    )
    return encode_packet(packet)
