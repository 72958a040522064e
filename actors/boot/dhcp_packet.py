"""BOOTP/DHCPv4 codec for ProxyDHCP: the RFC 2131 header, RFC 2132 options, PXE options.

`decode_packet(data)` trusts nothing: every malformed input (truncated header, bad magic
cookie, unknown `op`, `hlen` > 16, an option running past the end of its field, a bad
option-overload value) raises `DhcpDecodeError` and nothing else escapes. The typed accessors
(`message_type()`, `client_architectures()`, ...) check the option they read and raise
`DhcpDecodeError` too, so a caller that catches it around decode *and* accessors is safe.
`encode_packet(packet)` and `build_reply(...)` trust their input (it comes from our code) and
assert on misuse.

Framing decisions, with their sources:
- Options are TLV after the magic cookie (RFC 2131 §3, RFC 2132 §2); PAD (0) is skipped and
  END (255) stops a field. A field that reaches its end without END is accepted, as most
  stacks do; a TLV whose length runs past the end of its field is refused.
- An option that appears several times is the concatenation of its instances, in order, over
  the aggregate buffer "options, then file, then sname" (RFC 3396; RFC 2131 §4.1).
  `encode_packet` splits values over 255 bytes into several instances the same way.
- Option overload (52, RFC 2132 §9.3) is honoured when it appears in the options field: value
  1 = `file` carries options, 2 = `sname`, 3 = both; that field then has no string value.
  Any other length or value is refused. A 52 inside an overloaded field is ignored.
- `sname` and `file` are NUL-terminated (RFC 2131 §2); an unterminated field is taken whole.
- Replies are padded to 300 bytes, the BOOTP minimum some relays and old PXE ROMs insist on
  (RFC 1542: "the minimal BOOTP header of 300 octets").

`DhcpPacket` is a `NamedTuple`, not a frozen dataclass: building a 15-field frozen dataclass
costs ~2.5 µs (one `object.__setattr__` per field), a NamedTuple ~0.5 µs, and every DHCP
packet on the segment goes through here. Options are kept raw (`dict[int, bytes]`) and
decoded only when asked.

Measured (timeit, best of 5, Python 3.11.7 on this project's 2-core machine, another job
running; guard: `tests/unit/test_dhcp_packet.py::test_codec_speed_budget`): decode of an
OVMF-style DISCOVER (7 options, 346 bytes) ~2.7 µs, of iPXE's (10 options) ~3.2 µs; encode
of a BIOS proxy offer ~1.8 µs; `build_reply` ~2.5 µs. scapy on the same packets: ~65-115 µs
to dissect `BOOTP`/`DHCP`, ~140-200 µs to build an offer. The whole ProxyDHCP path
(`proxy_dhcp.answer_datagram`: decode, decide, encode) takes ~13-18 µs.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from enum import IntEnum
from functools import lru_cache
from typing import Final, NamedTuple

from actors.errors import DecodeError


class DhcpDecodeError(DecodeError):
    """A datagram that is not a well-formed BOOTP/DHCPv4 packet (or carries a bad option)."""


# --------------------------------------------------------------------------- constants

BOOTREQUEST: Final = 1  # RFC 2131 §2, `op`
BOOTREPLY: Final = 2
HTYPE_ETHERNET: Final = 1  # RFC 1700 hardware type, `htype`
ETHERNET_ADDRESS_BYTES: Final = 6
CHADDR_BYTES: Final = 16  # RFC 2131 §2, `chaddr` field size (so `hlen` <= 16)
SNAME_BYTES: Final = 64
FILE_BYTES: Final = 128
BROADCAST_FLAG: Final = 0x8000  # RFC 2131 §2, Figure 2: the leftmost bit of `flags`
MAGIC_COOKIE: Final = b"\x63\x82\x53\x63"  # RFC 2131 §3 (99.130.83.99, RFC 1497)
OPTION_VALUE_BYTES_MAX: Final = 255  # one length octet; longer values split (RFC 3396)
REPLY_BYTES_MIN: Final = 300  # RFC 1542: minimal BOOTP message

# op htype hlen hops | xid | secs flags | ciaddr yiaddr siaddr giaddr | chaddr sname file | cookie
HEADER: Final = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")  # RFC 2131 §2, Figure 1
_OPTION_HEAD: Final = struct.Struct("!BB")  # code, length
HEADER_BYTES: Final = HEADER.size  # 236-byte BOOTP header + 4-byte cookie = 240
SNAME_OFFSET: Final = 44
FILE_OFFSET: Final = SNAME_OFFSET + SNAME_BYTES  # 108
OPTIONS_OFFSET: Final = HEADER_BYTES  # 240

ZERO_ADDRESS: Final = b"\x00\x00\x00\x00"


class Option:
    """DHCP option codes this project reads or writes.

    Plain `int` constants, not an `IntEnum`: on Python 3.11 an enum member lookup in the
    option loop made decoding twice as slow.
    """

    PAD: Final = 0  # RFC 2132 §3.1
    VENDOR_SPECIFIC: Final = 43  # RFC 2132 §8.4; PXE sub-options (PXE 2.1 spec)
    OVERLOAD: Final = 52  # RFC 2132 §9.3
    MESSAGE_TYPE: Final = 53  # RFC 2132 §9.6
    SERVER_IDENTIFIER: Final = 54  # RFC 2132 §9.7
    PARAMETER_REQUEST_LIST: Final = 55  # RFC 2132 §9.8
    MAX_MESSAGE_SIZE: Final = 57  # RFC 2132 §9.10
    VENDOR_CLASS: Final = 60  # RFC 2132 §9.13
    CLIENT_IDENTIFIER: Final = 61  # RFC 2132 §9.14
    BOOTFILE_NAME: Final = 67  # RFC 2132 §9.5
    USER_CLASS: Final = 77  # RFC 3004
    CLIENT_ARCHITECTURE: Final = 93  # RFC 4578 §2.1
    CLIENT_NETWORK_INTERFACE: Final = 94  # RFC 4578 §2.2
    CLIENT_MACHINE_ID: Final = 97  # RFC 4578 §2.3
    IPXE_ENCAPSULATED: Final = 175  # iPXE `include/ipxe/dhcp.h`, DHCP_EB_ENCAP
    WDS_NBP: Final = 250  # private: WDSNBP/wdsmgfw sub-options (Windows Deployment Services)
    BCD_PATH: Final = 252  # private: bootmgr's BCD store path on TFTP (also WPAD elsewhere)
    END: Final = 255  # RFC 2132 §3.2


class MessageType(IntEnum):
    """DHCP message types, option 53 (RFC 2132 §9.6; 9-18 from the IANA registry)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8
    FORCERENEW = 9  # RFC 3203
    LEASEQUERY = 10  # RFC 4388
    LEASEUNASSIGNED = 11
    LEASEUNKNOWN = 12
    LEASEACTIVE = 13
    BULKLEASEQUERY = 14  # RFC 6926
    LEASEQUERYDONE = 15
    ACTIVELEASEQUERY = 16  # RFC 7724
    LEASEQUERYSTATUS = 17
    TLS = 18


_MESSAGE_TYPES: Final = {member.value: member for member in MessageType}

PXE_DISCOVERY_CONTROL: Final = 6  # PXE 2.1 vendor sub-option: discovery control bits
PXE_BOOT_ITEM: Final = 71  # PXE 2.1 vendor sub-option: boot server type (uint16) + layer (uint16)
USER_CLASS_IPXE: Final = b"iPXE"  # iPXE `src/net/udp/dhcp.c`, DHCP_USER_CLASS_ID
UUID_TYPE_GUID: Final = 0  # RFC 4578 §2.3: type 0 = 16-byte GUID follows
MACHINE_ID_BYTES: Final = 17


class NetworkInterfaceId(NamedTuple):
    """Option 94 (RFC 4578 §2.2): interface type (1 = UNDI) and its version."""

    interface_type: int
    major: int
    minor: int


# --------------------------------------------------------------------------- the packet


class DhcpPacket(NamedTuple):
    """One BOOTP/DHCPv4 packet: header fields, raw concatenated options, typed accessors.

    Addresses are 4 raw bytes (`ipv4_text` formats them); `chaddr` holds the first `hlen`
    bytes of the field; `sname` and `file` are the bytes before the first NUL (empty when the
    field carried overloaded options).
    """

    op: int
    htype: int
    hlen: int
    hops: int
    xid: int
    secs: int
    flags: int
    ciaddr: bytes
    yiaddr: bytes
    siaddr: bytes
    giaddr: bytes
    chaddr: bytes
    sname: bytes
    file: bytes
    options: Mapping[int, bytes]

    @property
    def is_broadcast(self) -> bool:
        """True when the client asked for broadcast replies (RFC 2131 §4.1)."""
        return bool(self.flags & BROADCAST_FLAG)

    @property
    def mac(self) -> str:
        """`chaddr` as lowercase colon-separated hex, e.g. `52:54:00:12:34:56`."""
        return self.chaddr.hex(":")

    def message_type(self) -> MessageType | None:
        """Option 53, or None for plain BOOTP."""
        value = self.options.get(Option.MESSAGE_TYPE)
        if value is None:
            return None
        if len(value) != 1:
            raise DhcpDecodeError(f"option 53 has {len(value)} bytes, expected 1")
        kind = _MESSAGE_TYPES.get(value[0])
        if kind is None:
            raise DhcpDecodeError(f"unknown DHCP message type {value[0]}")
        return kind

    def server_identifier(self) -> bytes | None:
        """Option 54: the 4-byte address of the server the client talks to."""
        return self._address_option(Option.SERVER_IDENTIFIER)

    def parameter_request_list(self) -> tuple[int, ...]:
        """Option 55: the option codes the client asks for (empty if absent)."""
        return tuple(self.options.get(Option.PARAMETER_REQUEST_LIST, b""))

    def vendor_class(self) -> bytes | None:
        """Option 60, e.g. `PXEClient:Arch:00007:UNDI:003016`."""
        return self.options.get(Option.VENDOR_CLASS)

    def client_identifier(self) -> bytes | None:
        """Option 61: type octet + identifier (at least 2 bytes, RFC 2132 §9.14)."""
        value = self.options.get(Option.CLIENT_IDENTIFIER)
        if value is not None and len(value) < 2:
            raise DhcpDecodeError(f"option 61 has {len(value)} bytes, expected >= 2")
        return value

    def user_classes(self) -> tuple[bytes, ...]:
        """Option 77 as a tuple of classes (empty if absent).

        RFC 3004 §4 encodes length-prefixed items; iPXE sends the bare string `iPXE`
        (`src/net/udp/dhcp.c`). Data that does not tile exactly into non-empty items is one
        bare class.
        """
        value = self.options.get(Option.USER_CLASS)
        if value is None:
            return ()
        if not value:
            raise DhcpDecodeError("option 77 is empty")
        return _user_class_items(value)

    def client_architectures(self) -> tuple[int, ...]:
        """Option 93: the client's architecture types, uint16 each (RFC 4578 §2.1)."""
        value = self.options.get(Option.CLIENT_ARCHITECTURE)
        if value is None:
            return ()
        if not value or len(value) % 2:
            raise DhcpDecodeError(f"option 93 has {len(value)} bytes, expected 2n (n >= 1)")
        return struct.unpack(f"!{len(value) // 2}H", value)

    def network_interface(self) -> NetworkInterfaceId | None:
        """Option 94: interface type and UNDI version (RFC 4578 §2.2)."""
        value = self.options.get(Option.CLIENT_NETWORK_INTERFACE)
        if value is None:
            return None
        if len(value) != 3:
            raise DhcpDecodeError(f"option 94 has {len(value)} bytes, expected 3")
        return NetworkInterfaceId(value[0], value[1], value[2])

    def client_uuid(self) -> bytes | None:
        """Option 97: the 16-byte machine GUID; None if absent or sent empty.

        RFC 4578 §2.3 defines 17 bytes (type 0 + GUID); an empty option is accepted, as
        smee does (ROMs in the wild send it).
        """
        value = self.options.get(Option.CLIENT_MACHINE_ID)
        if not value:
            return None
        if len(value) != MACHINE_ID_BYTES:
            raise DhcpDecodeError(f"option 97 has {len(value)} bytes, expected 0 or 17")
        if value[0] != UUID_TYPE_GUID:
            raise DhcpDecodeError(f"option 97 has type {value[0]}, expected 0")
        return value[1:]

    def pxe_options(self) -> dict[int, bytes]:
        """Option 43 as PXE vendor sub-options (PXE 2.1 spec); empty if absent."""
        value = self.options.get(Option.VENDOR_SPECIFIC)
        return {} if value is None else _sub_options(value, "43")

    def pxe_boot_item(self) -> tuple[int, int] | None:
        """Sub-option 43.71: (boot server type, layer) of a boot server request."""
        value = self.pxe_options().get(PXE_BOOT_ITEM)
        if value is None:
            return None
        if len(value) != 4:
            raise DhcpDecodeError(f"option 43.71 has {len(value)} bytes, expected 4")
        server_type, layer = struct.unpack("!HH", value)
        return server_type, layer

    def wds_options(self) -> dict[int, bytes] | None:
        """Option 250 as WDSNBP sub-options; None if absent (not a WDS request)."""
        value = self.options.get(Option.WDS_NBP)
        if value is None:
            return None
        return _sub_options(value, "250")

    def ipxe_options(self) -> dict[int, bytes]:
        """Option 175 as iPXE encapsulated sub-options; empty if absent."""
        value = self.options.get(Option.IPXE_ENCAPSULATED)
        return {} if value is None else _sub_options(value, "175")

    def _address_option(self, code: int) -> bytes | None:
        value = self.options.get(code)
        if value is not None and len(value) != 4:
            raise DhcpDecodeError(f"option {code} has {len(value)} bytes, expected 4")
        return value


# --------------------------------------------------------------------------- decode


def decode_packet(data: bytes) -> DhcpPacket:
    """Parse one datagram; raise `DhcpDecodeError` for anything malformed."""
    if len(data) < HEADER_BYTES:
        raise DhcpDecodeError(f"truncated: {len(data)} bytes < {HEADER_BYTES}")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file, cookie) = HEADER.unpack_from(data)  # fmt: skip
    if cookie != MAGIC_COOKIE:
        raise DhcpDecodeError(f"bad magic cookie {cookie.hex()}")
    if op != BOOTREQUEST and op != BOOTREPLY:  # noqa: PLR1714 (faster than a tuple test)
        raise DhcpDecodeError(f"bad op {op}")
    if hlen > CHADDR_BYTES:
        raise DhcpDecodeError(f"hlen {hlen} > {CHADDR_BYTES}")
    options: dict[int, bytes] = {}
    _read_options(data, OPTIONS_OFFSET, len(data), options, "options")
    overload = options.get(Option.OVERLOAD)
    if overload is not None:
        fields = _overloaded_fields(overload)
        if fields & 1:  # RFC 2132 §9.3: 1 = file
            _read_options(data, FILE_OFFSET, FILE_OFFSET + FILE_BYTES, options, "file")
            file = b""
        if fields & 2:  # 2 = sname; file is read first (RFC 3396)
            _read_options(data, SNAME_OFFSET, SNAME_OFFSET + SNAME_BYTES, options, "sname")
            sname = b""
        options[Option.OVERLOAD] = overload  # a 52 inside file/sname does not count
    return DhcpPacket(
        op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr,
        chaddr[:hlen], _c_string(sname), _c_string(file), options,
    )  # fmt: skip


def _read_options(data: bytes, start: int, end: int, into: dict[int, bytes], where: str) -> None:
    """Append the TLV options of `data[start:end]` to `into`, concatenating repeats."""
    index = start
    while index < end:
        code = data[index]
        if code == 255:  # END (literals: this loop is the decoder's hot path)
            return
        if code == 0:  # PAD
            index += 1
            continue
        if index + 1 >= end:
            raise DhcpDecodeError(f"option {code} in {where} has no length octet")
        value_start = index + 2
        index = value_start + data[index + 1]
        if index > end:
            raise DhcpDecodeError(f"option {code} runs past the end of {where}")
        if code in into:
            into[code] += data[value_start:index]  # RFC 3396: concatenate in order
        else:
            into[code] = data[value_start:index]


def _overloaded_fields(value: bytes) -> int:
    if len(value) != 1 or not 1 <= value[0] <= 3:
        raise DhcpDecodeError(f"bad option overload value {value.hex()}")
    return value[0]


def _c_string(field: bytes) -> bytes:
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


def _user_class_items(value: bytes) -> tuple[bytes, ...]:
    items: list[bytes] = []
    index = 0
    while index < len(value):
        length = value[index]
        stop = index + 1 + length
        if length == 0 or stop > len(value):
            return (value,)  # not RFC 3004 framing: iPXE-style bare string
        items.append(value[index + 1 : stop])
        index = stop
    return tuple(items)


def _sub_options(value: bytes, where: str) -> dict[int, bytes]:
    """Encapsulated options (RFC 2132 §8.4 format): same TLV rules as the main field."""
    found: dict[int, bytes] = {}
    _read_options(value, 0, len(value), found, f"option {where}")
    return found


# --------------------------------------------------------------------------- encode


def encode_packet(packet: DhcpPacket) -> bytes:
    """Serialize `packet`: header, cookie, options in mapping order, END, padding to 300."""
    assert len(packet.chaddr) <= CHADDR_BYTES, packet.chaddr
    assert len(packet.sname) < SNAME_BYTES, packet.sname  # room for the NUL
    assert len(packet.file) < FILE_BYTES, packet.file
    assert len(packet.ciaddr) == len(packet.yiaddr) == 4, (packet.ciaddr, packet.yiaddr)
    assert len(packet.siaddr) == len(packet.giaddr) == 4, (packet.siaddr, packet.giaddr)
    parts = [
        HEADER.pack(
            packet.op, packet.htype, packet.hlen, packet.hops, packet.xid, packet.secs,
            packet.flags, packet.ciaddr, packet.yiaddr, packet.siaddr, packet.giaddr,
            packet.chaddr, packet.sname, packet.file, MAGIC_COOKIE,
        )
    ]  # fmt: skip
    for code, value in packet.options.items():
        assert 0 < code < Option.END, code
        if len(value) <= OPTION_VALUE_BYTES_MAX:
            parts.append(_OPTION_HEAD.pack(code, len(value)))
            parts.append(value)
        else:
            parts.append(encode_option(code, value))
    parts.append(b"\xff")
    data = b"".join(parts)
    return data if len(data) >= REPLY_BYTES_MIN else data.ljust(REPLY_BYTES_MIN, b"\x00")


def encode_option(code: int, value: bytes) -> bytes:
    """One option as TLV; values over 255 bytes become several instances (RFC 3396)."""
    assert 0 < code < Option.END, code
    if len(value) <= OPTION_VALUE_BYTES_MAX:
        return bytes((code, len(value))) + value
    pieces = range(0, len(value), OPTION_VALUE_BYTES_MAX)
    return b"".join(
        bytes((code, len(chunk))) + chunk
        for chunk in (value[start : start + OPTION_VALUE_BYTES_MAX] for start in pieces)
    )


def encode_sub_options(options: Mapping[int, bytes]) -> bytes:
    """Encapsulated sub-options (43, 175) followed by END."""
    assert all(len(value) <= OPTION_VALUE_BYTES_MAX for value in options.values())
    return b"".join(bytes((code, len(value))) + value for code, value in options.items()) + (
        b"\xff"
    )


def build_reply(
    request: DhcpPacket,
    options: Mapping[int, bytes],
    *,
    siaddr: bytes = ZERO_ADDRESS,
    sname: bytes = b"",
    file: bytes = b"",
    flags: int | None = None,
    ciaddr: bytes = ZERO_ADDRESS,
) -> bytes:
    """A BOOTREPLY to `request`: xid, htype, hlen, chaddr and giaddr copied; yiaddr zero.

    `flags` defaults to the request's flags. `options` are written in mapping order (put 53
    first, RFC 2131 §4.1 does not require it but every implementation does).
    """
    assert request.op == BOOTREQUEST, request.op
    reply = DhcpPacket(
        BOOTREPLY, request.htype, request.hlen, 0, request.xid, 0,
        request.flags if flags is None else flags, ciaddr, ZERO_ADDRESS, siaddr,
        request.giaddr, request.chaddr, sname, file, options,
    )  # fmt: skip
    return encode_packet(reply)


# --------------------------------------------------------------------------- addresses


def ipv4_text(address: bytes) -> str:
    """Four raw bytes as a dotted quad."""
    assert len(address) == 4, address
    return f"{address[0]}.{address[1]}.{address[2]}.{address[3]}"


@lru_cache(maxsize=256)
def ipv4_bytes(text: str) -> bytes:
    """A dotted quad as four raw bytes; `ValueError` if `text` is not one."""
    parts = text.split(".")
    if len(parts) != 4 or not all(
        part.isascii() and part.isdigit() and len(part) <= 3 for part in parts
    ):
        raise ValueError(f"not an IPv4 address: {text!r}")
    numbers = [int(part) for part in parts]
    if max(numbers) > 255:
        raise ValueError(f"not an IPv4 address: {text!r}")
    return bytes(numbers)
