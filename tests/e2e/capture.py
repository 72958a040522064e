"""What crossed the guest's NIC, read from QEMU's `filter-dump` pcap.

The e2e tests judge the boot exchange from the wire, independently of the responder's own
log and of peerpxe's codec: scapy splits Ethernet/IPv4/UDP/TCP, and the BOOTP header and
DHCP options (RFC 2131 §2, RFC 2132) and the TFTP packets (RFC 1350, 2347) are parsed here
in a few lines of their own.

Every item keeps its pcap timestamp (`time_s`). A test places its own actions in that
timeline with a *note*: a UDP broadcast to the discard port (RFC 863) that the guest's NIC
receives like any broadcast, so it lands in the pcap between the frames around it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import rdpcap

BOOTP_HEADER_BYTES = 236  # RFC 2131 §2: op .. file, before the magic cookie
MAGIC_COOKIE = b"\x63\x82\x53\x63"
OPTION_PAD, OPTION_END = 0, 255
OPTION_MESSAGE_TYPE = 53
DHCP_DISCOVER, DHCP_OFFER, DHCP_ACK = 1, 2, 5
BOOTREQUEST, BOOTREPLY = 1, 2  # RFC 2131 §2, field `op`
DISCARD_PORT = 9  # RFC 863: where the test's notes go
TFTP_RRQ, TFTP_DATA, TFTP_ERROR = 1, 3, 5
#: options a DHCP server uses to send a machine to a boot program or boot server
BOOT_OPTIONS = {
    43: "vendor-specific (PXE)",
    60: "vendor class (PXEClient)",
    66: "TFTP server name",
    67: "boot file name",
    150: "TFTP server address",
    175: "iPXE encapsulated",
}


@dataclass(frozen=True)
class DhcpReply:
    """One BOOTREPLY the guest received."""

    source: str
    source_port: int
    xid: int
    time_s: float
    yiaddr: str
    siaddr: str
    sname: str
    file: str
    options: dict[int, bytes]

    @property
    def message_type(self) -> int:
        return self.options.get(OPTION_MESSAGE_TYPE, b"\0")[0]

    def boot_options(self) -> list[str]:
        """The boot-related things this reply carries (empty for an address-only reply)."""
        found = [f"option {code} ({name})" for code, name in BOOT_OPTIONS.items()
                 if code in self.options]  # fmt: skip
        found += [f"{name} {value!r}" for name, value in (("file", self.file),
                  ("sname", self.sname)) if value]  # fmt: skip
        return found


@dataclass(frozen=True)
class DhcpRequest:
    """One BOOTREQUEST the guest sent (DISCOVER, REQUEST, ...)."""

    destination_port: int
    xid: int
    #: RFC 2131 "seconds elapsed"; iPXE fills it with (attempt << 2 | has offer << 1 |
    #: has proxy offer) instead, a debugging aid of its dhcp.c
    secs: int
    time_s: float
    options: dict[int, bytes]

    @property
    def message_type(self) -> int:
        return self.options.get(OPTION_MESSAGE_TYPE, b"\0")[0]


@dataclass(frozen=True)
class HttpRequest:
    """The request line of one HTTP request the guest sent, and to whom."""

    server: str
    line: str
    time_s: float


@dataclass(frozen=True)
class Note:
    """A test's note on the wire (UDP to the discard port, not from the guest)."""

    text: str
    time_s: float


@dataclass
class TftpTransfer:
    """One read request and the DATA blocks that answered it (by server and client port)."""

    server: str
    filename: str
    options: dict[str, str]
    started_s: float
    blocks: dict[int, int] = field(default_factory=dict)

    @property
    def bytes_received(self) -> int:
        return sum(self.blocks.values())


@dataclass
class Capture:
    """What crossed the guest's NIC, each kind in wire order."""

    dhcp_replies: list[DhcpReply] = field(default_factory=list)
    dhcp_requests: list[DhcpRequest] = field(default_factory=list)
    tftp: list[TftpTransfer] = field(default_factory=list)
    tftp_errors_sent: list[int] = field(default_factory=list)
    http_requests: list[HttpRequest] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def received(self, server: str, filename: str) -> int:
        """Most bytes of `filename` received from `server` in one transfer."""
        sizes = [transfer.bytes_received for transfer in self.tftp
                 if transfer.server == server and transfer.filename == filename]  # fmt: skip
        return max(sizes, default=0)

    def request_lines(self) -> list[str]:
        """The HTTP request lines, e.g. `GET /boot.ipxe HTTP/1.1`."""
        return [request.line for request in self.http_requests]

    def note_time_s(self, text: str) -> float | None:
        """When the note `text` crossed the NIC (the first time), or None."""
        return next((note.time_s for note in self.notes if note.text == text), None)


@dataclass(frozen=True)
class Datagram:
    """One UDP datagram on the guest's NIC."""

    source: str
    destination: str
    sport: int
    dport: int
    payload: bytes
    from_guest: bool
    time_s: float


def read_capture(path: Path, guest_mac: str) -> Capture:
    """Parse QEMU's pcap of the guest NIC (frames to and from `guest_mac`)."""
    reader = _Reader()
    for frame in rdpcap(str(path)):
        if IP not in frame:
            continue
        time_s = float(frame.time)
        if UDP in frame:
            udp = frame[UDP]
            from_guest = frame.src.lower() == guest_mac
            reader.datagram(Datagram(frame[IP].src, frame[IP].dst, udp.sport, udp.dport,
                                     bytes(udp.payload), from_guest, time_s))  # fmt: skip
        elif TCP in frame and bytes(frame[TCP].payload).startswith((b"GET ", b"HEAD ")):
            line = bytes(frame[TCP].payload).split(b"\r\n")[0].decode(errors="replace")
            reader.capture.http_requests.append(HttpRequest(frame[IP].dst, line, time_s))
    return reader.capture


@dataclass
class _Reader:
    capture: Capture = field(default_factory=Capture)
    #: (server port, client port) -> transfer
    sessions: dict[tuple[int, int], TftpTransfer] = field(default_factory=dict)
    #: client port -> request not answered yet
    pending: dict[int, TftpTransfer] = field(default_factory=dict)

    def datagram(self, datagram: Datagram) -> None:
        if _is_dhcp_reply(datagram):
            reply = parse_dhcp_reply(datagram)
            if reply is not None:
                self.capture.dhcp_replies.append(reply)
        elif _is_dhcp_request(datagram):
            request = parse_dhcp_request(datagram)
            if request is not None:
                self.capture.dhcp_requests.append(request)
        elif datagram.dport == DISCARD_PORT and not datagram.from_guest:
            text = datagram.payload.decode(errors="replace")
            self.capture.notes.append(Note(text, datagram.time_s))
        elif len(datagram.payload) >= 4:
            self._tftp(datagram, struct.unpack_from("!H", datagram.payload)[0])

    def _tftp(self, datagram: Datagram, opcode: int) -> None:
        if datagram.from_guest and opcode == TFTP_RRQ:
            transfer = _parse_rrq(datagram.destination, datagram.payload, datagram.time_s)
            self.capture.tftp.append(transfer)
            self.pending[datagram.sport] = transfer
        elif datagram.from_guest and opcode == TFTP_ERROR:
            self.capture.tftp_errors_sent.append(struct.unpack_from("!H", datagram.payload, 2)[0])
        elif not datagram.from_guest and opcode == TFTP_DATA:
            key = (datagram.sport, datagram.dport)
            answered = self.sessions.get(key) or self.pending.pop(datagram.dport, None)
            if answered is not None:
                self.sessions[key] = answered
                block = struct.unpack_from("!H", datagram.payload, 2)[0]
                answered.blocks[block] = len(datagram.payload) - 4


def _is_dhcp_reply(datagram: Datagram) -> bool:
    """Server to client on 67 -> 68, or a 4011 answer (EDK II asks from port 4011)."""
    if datagram.from_guest:
        return False
    return datagram.sport in (67, 4011) and datagram.dport in (68, 4011)


def _is_dhcp_request(datagram: Datagram) -> bool:
    """Client to server: 68 -> 67, or to a boot server's 4011."""
    return datagram.from_guest and datagram.dport in (67, 4011)


def _parse_rrq(server: str, payload: bytes, time_s: float) -> TftpTransfer:
    fields = payload[2:].split(b"\0")
    filename, _mode, *rest = [part.decode(errors="replace") for part in fields]
    options = dict(zip(rest[0::2], rest[1::2], strict=False))
    options.pop("", None)
    return TftpTransfer(server, filename, options, time_s)


def parse_dhcp_reply(datagram: Datagram) -> DhcpReply | None:
    """A BOOTREPLY's header fields and options (RFC 2131 §2, RFC 2132), or None."""
    data = datagram.payload
    options = _options(data, BOOTREPLY)
    if options is None:
        return None
    return DhcpReply(
        source=datagram.source,
        source_port=datagram.sport,
        xid=struct.unpack_from("!I", data, 4)[0],
        time_s=datagram.time_s,
        yiaddr=_ipv4(data[16:20]),
        siaddr=_ipv4(data[20:24]),
        sname=data[44:108].split(b"\0")[0].decode(errors="replace"),
        file=data[108:236].split(b"\0")[0].decode(errors="replace"),
        options=options,
    )


def parse_dhcp_request(datagram: Datagram) -> DhcpRequest | None:
    """A BOOTREQUEST's xid, secs and options (RFC 2131 §2), or None."""
    data = datagram.payload
    options = _options(data, BOOTREQUEST)
    if options is None:
        return None
    xid, secs = struct.unpack_from("!IH", data, 4)
    return DhcpRequest(datagram.dport, xid, secs, datagram.time_s, options)


def _options(data: bytes, op: int) -> dict[int, bytes] | None:
    """The DHCP options of a BOOTP message with this `op` (RFC 2132 §2), or None."""
    if len(data) < BOOTP_HEADER_BYTES + 4 or data[0] != op:
        return None
    if data[BOOTP_HEADER_BYTES : BOOTP_HEADER_BYTES + 4] != MAGIC_COOKIE:
        return None
    options: dict[int, bytes] = {}
    index = BOOTP_HEADER_BYTES + 4
    while index + 1 < len(data) and data[index] != OPTION_END:
        if data[index] == OPTION_PAD:
            index += 1
            continue
        code, length = data[index], data[index + 1]
        options[code] = options.get(code, b"") + data[index + 2 : index + 2 + length]
        index += 2 + length
    return options


def _ipv4(raw: bytes) -> str:
    return ".".join(str(byte) for byte in raw)
