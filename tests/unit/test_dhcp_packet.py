"""The BOOTP/DHCPv4 codec: golden client packets, replies read by scapy, strictness, fuzzing.

Client packets are crafted with scapy (`tests/unit/pxe_clients.py`), so our decoder is checked
against an independent encoder, and our replies are dissected by scapy, an independent decoder.
"""

from __future__ import annotations

import contextlib
import struct
import timeit
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.boot.dhcp_packet import (
    BOOTREPLY,
    BOOTREQUEST,
    FILE_OFFSET,
    HEADER_BYTES,
    MAGIC_COOKIE,
    REPLY_BYTES_MIN,
    SNAME_OFFSET,
    ZERO_ADDRESS,
    DhcpDecodeError,
    DhcpPacket,
    MessageType,
    NetworkInterfaceId,
    build_reply,
    decode_packet,
    encode_option,
    encode_packet,
    encode_sub_options,
    ipv4_bytes,
    ipv4_text,
)
from actors.errors import DecodeError
from tests.unit import pxe_clients
from tests.unit.pxe_clients import (
    CLIENT_IP,
    CLIENT_MAC,
    CLIENT_UUID,
    EDK2_PARAMETERS,
    IPXE_PARAMETERS,
    MACHINE_ID,
    PXE_ROM_PARAMETERS,
    SERVER,
    XID,
    craft,
    scapy_reply,
)

MAC_BYTES = bytes.fromhex(CLIENT_MAC.replace(":", ""))


# --------------------------------------------------------------------------- golden requests


@dataclass(frozen=True)
class Golden:
    """What our decoder must read from one crafted firmware request."""

    build: Callable[[], bytes]
    message_type: MessageType
    vendor_class: bytes
    architectures: tuple[int, ...]
    interface: NetworkInterfaceId
    parameters: bytes
    option_order: tuple[int, ...]
    secs: int = 0
    flags: int = 0x8000
    ciaddr: bytes = ZERO_ADDRESS
    user_classes: tuple[bytes, ...] = ()
    ipxe_options: tuple[tuple[int, bytes], ...] = ()
    client_identifier: bytes | None = None


GOLDEN = {
    "bios-pxe-rom-discover": Golden(
        build=pxe_clients.bios_discover,
        message_type=MessageType.DISCOVER,
        vendor_class=b"PXEClient:Arch:00000:UNDI:002001",
        architectures=(0,),
        interface=NetworkInterfaceId(1, 2, 1),
        parameters=PXE_ROM_PARAMETERS,
        option_order=(53, 57, 55, 97, 94, 93, 60),
        secs=4,
    ),
    "ovmf-x64-discover": Golden(
        build=pxe_clients.ovmf_discover,
        message_type=MessageType.DISCOVER,
        vendor_class=b"PXEClient:Arch:00007:UNDI:003000",
        architectures=(7,),
        interface=NetworkInterfaceId(1, 3, 0),
        parameters=EDK2_PARAMETERS,
        option_order=(53, 57, 55, 97, 94, 93, 60),
    ),
    "ovmf-x64-request-4011": Golden(
        build=pxe_clients.ovmf_request_4011,
        message_type=MessageType.REQUEST,
        vendor_class=b"PXEClient:Arch:00007:UNDI:003000",
        architectures=(7,),
        interface=NetworkInterfaceId(1, 3, 0),
        parameters=EDK2_PARAMETERS,
        option_order=(53, 57, 55, 97, 94, 93, 60),
        flags=0,
        ciaddr=bytes([192, 0, 2, 100]),
    ),
    "ipxe-discover": Golden(
        build=pxe_clients.ipxe_discover,
        message_type=MessageType.DISCOVER,
        vendor_class=b"PXEClient:Arch:00000:UNDI:002001",
        architectures=(0,),
        interface=NetworkInterfaceId(1, 2, 1),
        parameters=IPXE_PARAMETERS,
        option_order=(53, 57, 93, 94, 60, 77, 55, 175, 61, 97),
        user_classes=(b"iPXE",),
        ipxe_options=(
            (0x13, b"\x01"),
            (0x11, b"\x01"),
            (0x18, b"\x01"),
            (0x24, b"\x01"),
            (0xEB, bytes([1, 21, 1])),
        ),
        client_identifier=b"\x01" + MAC_BYTES,
    ),
    "uefi-http-boot-discover": Golden(
        build=pxe_clients.http_boot_discover,
        message_type=MessageType.DISCOVER,
        vendor_class=b"HTTPClient:Arch:00016:UNDI:003000",
        architectures=(16,),
        interface=NetworkInterfaceId(1, 3, 0),
        parameters=EDK2_PARAMETERS,
        option_order=(53, 57, 55, 97, 94, 93, 60),
    ),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_request_header(name: str) -> None:
    """Every fixed header field of a crafted firmware request decodes to what scapy wrote."""
    golden = GOLDEN[name]
    packet = decode_packet(golden.build())
    assert packet.op == BOOTREQUEST
    assert (packet.htype, packet.hlen, packet.hops) == (1, 6, 0)
    assert packet.xid == XID
    assert packet.secs == golden.secs
    assert packet.flags == golden.flags
    assert packet.is_broadcast is bool(golden.flags)
    assert packet.ciaddr == golden.ciaddr
    assert packet.yiaddr == packet.siaddr == packet.giaddr == ZERO_ADDRESS
    assert packet.chaddr == MAC_BYTES
    assert packet.mac == CLIENT_MAC
    assert packet.sname == packet.file == b""


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_request_options(name: str) -> None:
    """Every option of a crafted firmware request decodes, raw and through its accessor."""
    golden = GOLDEN[name]
    packet = decode_packet(golden.build())
    assert tuple(packet.options) == golden.option_order
    assert packet.message_type() is golden.message_type
    assert packet.vendor_class() == golden.vendor_class
    assert packet.client_architectures() == golden.architectures
    assert packet.network_interface() == golden.interface
    assert packet.parameter_request_list() == tuple(golden.parameters)
    assert packet.client_uuid() == CLIENT_UUID
    assert packet.options[97] == MACHINE_ID
    assert packet.user_classes() == golden.user_classes
    assert tuple(packet.ipxe_options().items()) == golden.ipxe_options
    assert packet.client_identifier() == golden.client_identifier
    assert packet.server_identifier() is None
    assert packet.pxe_options() == {}
    assert packet.pxe_boot_item() is None
    assert int.from_bytes(packet.options[57], "big") in (1260, 1472)


# --------------------------------------------------------------------------- replies via scapy


def test_bios_offer_read_by_scapy() -> None:
    """A proxy offer built by `build_reply` reads back field by field in scapy."""
    request = decode_packet(pxe_clients.bios_discover())
    server = ipv4_bytes(SERVER)
    options = {53: b"\x02", 54: server, 60: b"PXEClient", 97: MACHINE_ID, 43: b"\x06\x01\x08\xff"}
    payload = build_reply(request, options, siaddr=server, file=b"undionly.kpxe", flags=0x8000)
    header, scapy_options = scapy_reply(payload)
    assert header == {
        "op": 2, "htype": 1, "hlen": 6, "hops": 0, "xid": XID, "secs": 0,
        "ciaddr": "0.0.0.0", "yiaddr": "0.0.0.0", "siaddr": SERVER, "giaddr": "0.0.0.0",
        "chaddr": MAC_BYTES, "sname": b"", "file": b"undionly.kpxe", "flags": 0x8000,
    }  # fmt: skip
    assert scapy_options == {
        "message-type": 2,
        "server_id": SERVER,
        "vendor_class_id": b"PXEClient",
        "pxe_client_machine_identifier": MACHINE_ID,
        "vendor_specific": b"\x06\x01\x08\xff",
    }
    assert len(payload) == REPLY_BYTES_MIN
    assert payload[HEADER_BYTES - 4 : HEADER_BYTES] == MAGIC_COOKIE


def test_ack_read_by_scapy_keeps_request_fields() -> None:
    """An ACK copies ciaddr, giaddr and flags as asked, and carries sname and file."""
    request = decode_packet(
        craft(pxe_clients.ovmf_options(7, 3), ciaddr=CLIENT_IP, flags=0, giaddr="198.51.100.1")
    )
    server = ipv4_bytes(SERVER)
    options = {53: b"\x05", 54: server, 60: b"PXEClient"}
    payload = build_reply(
        request,
        options,
        siaddr=server,
        sname=SERVER.encode(),
        file=b"ipxe.efi",
        ciaddr=request.ciaddr,
    )
    header, scapy_options = scapy_reply(payload)
    assert header["ciaddr"] == CLIENT_IP
    assert header["giaddr"] == "198.51.100.1"
    assert header["yiaddr"] == "0.0.0.0"
    assert header["flags"] == 0
    assert header["sname"] == SERVER.encode()
    assert header["file"] == b"ipxe.efi"
    assert scapy_options == {
        "message-type": 5,
        "server_id": SERVER,
        "vendor_class_id": b"PXEClient",
    }


def test_long_option_is_split_and_concatenated_back() -> None:
    """A 600-byte value leaves as three instances (255, 255, 90) and decodes as one (RFC 3396)."""
    value = bytes(range(256)) * 2 + bytes(88)
    encoded = encode_option(77, value)
    assert [encoded[0], encoded[1]] == [77, 255]
    assert [encoded[257], encoded[258]] == [77, 255]
    assert [encoded[514], encoded[515]] == [77, 90]
    assert len(encoded) == 600 + 6
    request = decode_packet(pxe_clients.ovmf_discover())
    payload = build_reply(request, {53: b"\x02", 77: value, 60: b"PXEClient"})
    assert decode_packet(payload).options[77] == value
    assert decode_packet(payload).options[60] == b"PXEClient"


def test_sub_options_encode_with_end() -> None:
    """Encapsulated options are TLVs followed by END, readable by our own sub-option parser."""
    encoded = encode_sub_options({6: b"\x08", 71: b"\x00\x00\x00\x00"})
    assert encoded == bytes([6, 1, 8, 71, 4, 0, 0, 0, 0, 255])
    options = pxe_clients.ovmf_options()
    options[43] = encoded
    packet = decode_packet(craft(options))
    assert packet.pxe_options() == {6: b"\x08", 71: bytes(4)}
    assert packet.pxe_boot_item() == (0, 0)


# --------------------------------------------------------------------------- framing rules


def raw_packet(options: bytes, *, sname: bytes = b"", file: bytes = b"", hlen: int = 6) -> bytes:
    """A request assembled by hand (for layouts scapy will not write, e.g. overloads)."""
    header = struct.pack("!BBBBIHH", 1, 1, hlen, 0, XID, 0, 0) + bytes(16)
    header += MAC_BYTES.ljust(16, b"\x00") + sname.ljust(64, b"\x00") + file.ljust(128, b"\x00")
    return header + MAGIC_COOKIE + options


def test_pad_is_skipped_and_end_stops() -> None:
    """PAD bytes between options are skipped; bytes after END are not read."""
    packet = decode_packet(raw_packet(b"\x00\x00\x35\x01\x01\x00\x3c\x01X\xff\x3c\x01Y\x99"))
    assert packet.options == {53: b"\x01", 60: b"X"}


def test_missing_end_is_accepted() -> None:
    """An options field that simply stops (no END) decodes, as most stacks allow."""
    assert decode_packet(raw_packet(b"\x35\x01\x03")).message_type() is MessageType.REQUEST


def test_no_options_at_all() -> None:
    """A bare 240-byte header with cookie is a packet without options."""
    packet = decode_packet(raw_packet(b""))
    assert packet.options == {}
    assert packet.message_type() is None


def test_repeated_option_instances_concatenate_in_order() -> None:
    """RFC 3396: instances of one code, even with other options between, are joined in order."""
    options = b"\x3c\x05PXECl\x35\x01\x01\x3c\x04ient\xff"
    assert decode_packet(raw_packet(options)).vendor_class() == b"PXEClient"


def test_overload_both_fields_concatenates_options_file_sname() -> None:
    """With 52 = 3, options continue in file then sname (RFC 3396), fields read empty."""
    options = b"\x34\x01\x03\x35\x01\x01\x3c\x03PXE\xff"
    file = b"\x3c\x03Cli\x5d\x02\x00\x07\xff"
    sname = b"\x3c\x03ent\x34\x01\x01\xff"  # a 52 outside the options field is not honoured
    packet = decode_packet(raw_packet(options, sname=sname, file=file))
    assert packet.vendor_class() == b"PXEClient"
    assert packet.client_architectures() == (7,)
    assert packet.options[52] == b"\x03"
    assert packet.file == packet.sname == b""


def test_overload_file_only_keeps_sname_string() -> None:
    """With 52 = 1 only `file` carries options; `sname` is still a string."""
    packet = decode_packet(
        raw_packet(b"\x34\x01\x01\xff", sname=b"boot-server", file=b"\x35\x01\x01\xff")
    )
    assert packet.message_type() is MessageType.DISCOVER
    assert packet.sname == b"boot-server"
    assert packet.file == b""


def test_overload_sname_only_keeps_file_string() -> None:
    """With 52 = 2 only `sname` carries options; `file` is still a string."""
    packet = decode_packet(
        raw_packet(b"\x34\x01\x02\xff", sname=b"\x35\x01\x08\xff", file=b"pxelinux.0")
    )
    assert packet.message_type() is MessageType.INFORM
    assert packet.file == b"pxelinux.0"


def test_unterminated_strings_are_taken_whole() -> None:
    """A 64-byte sname and 128-byte file without NUL decode to their full width."""
    packet = decode_packet(raw_packet(b"\xff", sname=b"s" * 64, file=b"f" * 128))
    assert packet.sname == b"s" * 64
    assert packet.file == b"f" * 128


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (raw_packet(b"")[:239], "truncated"),
        (b"", "truncated"),
        (raw_packet(b"")[:236] + b"\x63\x82\x53\x64", "bad magic cookie"),
        (b"\x03" + raw_packet(b"")[1:], "bad op 3"),
        (b"\x00" + raw_packet(b"")[1:], "bad op 0"),
        (raw_packet(b"", hlen=17), "hlen 17"),
        (raw_packet(b"\x35\x05\x01"), "runs past the end of options"),
        (raw_packet(b"\x35\x01\x01\x3c"), "no length octet"),
        (raw_packet(b"\x34\x01\x04\xff"), "bad option overload"),
        (raw_packet(b"\x34\x02\x01\x01\xff"), "bad option overload"),
        (raw_packet(b"\x34\x00\xff"), "bad option overload"),
        (raw_packet(b"\x34\x01\x01\xff", file=b"\x3c\xff"), "runs past the end of file"),
        (raw_packet(b"\x34\x01\x02\xff", sname=b"\x00" * 63 + b"\x3c"), "sname has no length"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_malformed_packets_raise_decode_error(data: bytes, message: str) -> None:
    """Each malformed layout raises `DhcpDecodeError` (a `DecodeError`) naming the problem."""
    with pytest.raises(DhcpDecodeError, match=message) as raised:
        decode_packet(data)
    assert isinstance(raised.value, DecodeError)


def accessor(name: str) -> Callable[[DhcpPacket], object]:
    return lambda packet: getattr(packet, name)()


@pytest.mark.parametrize(
    ("code", "value", "name", "message"),
    [
        (53, b"\x01\x01", "message_type", "option 53 has 2 bytes"),
        (53, b"", "message_type", "option 53 has 0 bytes"),
        (53, b"\x63", "message_type", "unknown DHCP message type 99"),
        (54, b"\xc0\x00\x02", "server_identifier", "option 54 has 3 bytes"),
        (61, b"\x01", "client_identifier", "option 61 has 1 bytes"),
        (77, b"", "user_classes", "option 77 is empty"),
        (93, b"\x00", "client_architectures", "option 93 has 1 bytes"),
        (93, b"", "client_architectures", "option 93 has 0 bytes"),
        (93, b"\x00\x07\x00", "client_architectures", "option 93 has 3 bytes"),
        (94, b"\x01\x02", "network_interface", "option 94 has 2 bytes"),
        (97, MACHINE_ID[:16], "client_uuid", "option 97 has 16 bytes"),
        (97, b"\x01" + CLIENT_UUID, "client_uuid", "option 97 has type 1"),
        (43, b"\x06\x05\x08", "pxe_options", "runs past the end of option 43"),
        (43, b"\x47\x02\x00\x00\xff", "pxe_boot_item", "option 43.71 has 2 bytes"),
        (175, b"\x13", "ipxe_options", "option 175 has no length octet"),
    ],
)
def test_malformed_options_raise_decode_error(
    code: int, value: bytes, name: str, message: str
) -> None:
    """A typed accessor refuses a malformed option with `DhcpDecodeError`, nothing else."""
    options = {53: b"\x01", code: value} if code != 53 else {code: value}
    packet = decode_packet(craft(options))
    with pytest.raises(DhcpDecodeError, match=message):
        accessor(name)(packet)


def test_absent_options_read_as_empty() -> None:
    """Accessors return None or empty for options the packet does not carry."""
    packet = decode_packet(raw_packet(b"\xff"))
    assert packet.server_identifier() is None
    assert packet.parameter_request_list() == ()
    assert packet.vendor_class() is None
    assert packet.client_identifier() is None
    assert packet.user_classes() == ()
    assert packet.client_architectures() == ()
    assert packet.network_interface() is None
    assert packet.client_uuid() is None
    assert packet.pxe_options() == {}
    assert packet.ipxe_options() == {}


def test_empty_machine_id_reads_as_no_uuid() -> None:
    """An empty option 97 (seen from some ROMs, accepted by smee) gives no UUID, no error."""
    packet = decode_packet(craft({53: b"\x01", 97: b""}))
    assert packet.client_uuid() is None
    assert packet.options[97] == b""


@pytest.mark.parametrize(
    ("value", "classes"),
    [
        (b"iPXE", (b"iPXE",)),  # iPXE: bare string
        (b"\x04iPXE", (b"iPXE",)),  # RFC 3004 framing, one item
        (b"\x04iPXE\x09peerpxe-1", (b"iPXE", b"peerpxe-1")),
        (b"\x04iPX", (b"\x04iPX",)),  # item runs past the end: bare
        (b"\x00abc", (b"\x00abc",)),  # zero-length item is not RFC 3004: bare
        (b"\x00\x03abc", (b"\x00\x03abc",)),  # tiles, but an empty item: bare
        (b"pixiecore", (b"pixiecore",)),
    ],
)
def test_user_class_accepts_both_forms(value: bytes, classes: tuple[bytes, ...]) -> None:
    """Option 77 reads RFC 3004 length-prefixed items, and iPXE's bare string as one class."""
    assert decode_packet(craft({53: b"\x01", 77: value})).user_classes() == classes


def test_several_architectures_read_in_order() -> None:
    """Option 93 may list several uint16 types (RFC 4578 §2.1)."""
    packet = decode_packet(craft({53: b"\x01", 93: b"\x00\x07\x00\x00\x00\x10"}))
    assert packet.client_architectures() == (7, 0, 16)


def test_relayed_request_keeps_giaddr_and_hops() -> None:
    """giaddr and hops of a relayed request decode as written."""
    packet = decode_packet(craft(pxe_clients.bios_pxe_rom_options(), giaddr="198.51.100.1", hops=1))
    assert packet.giaddr == bytes([198, 51, 100, 1])
    assert packet.hops == 1


def test_reply_requires_a_request() -> None:
    """Building a reply to a reply is a local bug (assertion), not remote input."""
    reply = decode_packet(craft({53: b"\x02"}, op=BOOTREPLY))
    with pytest.raises(AssertionError):
        build_reply(reply, {53: b"\x05"})


# --------------------------------------------------------------------------- addresses


def test_ipv4_conversions() -> None:
    """Dotted quads and 4-byte addresses convert both ways."""
    assert ipv4_bytes("192.0.2.10") == b"\xc0\x00\x02\x0a"
    assert ipv4_text(b"\xc0\x00\x02\x0a") == "192.0.2.10"
    assert ipv4_text(ipv4_bytes("255.255.255.255")) == "255.255.255.255"


@pytest.mark.parametrize("text", ["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "a.b.c.d", "1.2.3.٤"])
def test_ipv4_bytes_refuses_non_addresses(text: str) -> None:
    """Anything but four ASCII decimal octets <= 255 is a ValueError."""
    with pytest.raises(ValueError, match="not an IPv4 address"):
        ipv4_bytes(text)


# --------------------------------------------------------------------------- round trip, fuzz


def exercise(data: bytes) -> None:
    """Decode `data` and read every accessor; only `DhcpDecodeError` may escape each step."""
    try:
        packet = decode_packet(data)
    except DhcpDecodeError:
        return
    for name in (
        "message_type", "server_identifier", "parameter_request_list", "vendor_class",
        "client_identifier", "user_classes", "client_architectures", "network_interface",
        "client_uuid", "pxe_options", "pxe_boot_item", "ipxe_options",
    ):  # fmt: skip
        with contextlib.suppress(DhcpDecodeError):
            accessor(name)(packet)
    assert isinstance(packet.mac, str)
    assert isinstance(packet.is_broadcast, bool)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary bytes never raise anything but `DhcpDecodeError`."""
    exercise(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=3))
def test_fuzz_arbitrary_options_after_a_valid_header(options: bytes, overload: int) -> None:
    """Random option bytes (optionally overloaded into file/sname) never escape otherwise."""
    prefix = b"\x34\x01" + bytes((overload,)) if overload else b""
    noise = options[:192]
    exercise(raw_packet(prefix + options, sname=noise[:64], file=noise[64:]))


GOLDEN_BYTES = [golden.build() for golden in GOLDEN.values()]


@st.composite
def mutated_packets(draw: st.DrawFn) -> bytes:
    """A golden packet with random byte edits, truncation or insertion."""
    data = bytearray(draw(st.sampled_from(GOLDEN_BYTES)))
    edits = draw(
        st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=8)
    )
    for position, value in edits:
        data[position] = value
    cut = draw(st.integers(min_value=0, max_value=len(data)))
    inserted = draw(st.binary(max_size=8))
    mode = draw(st.sampled_from(["edit", "truncate", "insert"]))
    if mode == "truncate":
        return bytes(data[:cut])
    if mode == "insert":
        return bytes(data[:cut] + inserted + data[cut:])
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(mutated_packets())
def test_fuzz_mutated_golden_packets(data: bytes) -> None:
    """Valid firmware packets with random damage never raise anything but `DhcpDecodeError`."""
    exercise(data)


addresses = st.binary(min_size=4, max_size=4)
option_codes = st.integers(min_value=1, max_value=254).filter(lambda code: code != 52)


@st.composite
def packets(draw: st.DrawFn) -> DhcpPacket:
    """Any encodable packet (no overload option, strings without NUL)."""
    hlen = draw(st.integers(min_value=0, max_value=16))
    no_nul = st.binary(max_size=127).map(lambda value: value.replace(b"\x00", b""))
    return DhcpPacket(
        op=draw(st.sampled_from([BOOTREQUEST, BOOTREPLY])),
        htype=draw(st.integers(0, 255)),
        hlen=hlen,
        hops=draw(st.integers(0, 255)),
        xid=draw(st.integers(0, 2**32 - 1)),
        secs=draw(st.integers(0, 2**16 - 1)),
        flags=draw(st.integers(0, 2**16 - 1)),
        ciaddr=draw(addresses),
        yiaddr=draw(addresses),
        siaddr=draw(addresses),
        giaddr=draw(addresses),
        chaddr=draw(st.binary(min_size=hlen, max_size=hlen)),
        sname=draw(no_nul)[:63],
        file=draw(no_nul),
        options=draw(st.dictionaries(option_codes, st.binary(max_size=600), max_size=8)),
    )


@settings(max_examples=200, deadline=None)
@given(packets())
def test_round_trip(packet: DhcpPacket) -> None:
    """decode(encode(p)) == p for every encodable packet, long options included."""
    data = encode_packet(packet)
    assert len(data) >= REPLY_BYTES_MIN
    assert decode_packet(data) == packet


def test_field_offsets_match_rfc_2131() -> None:
    """sname starts at byte 44, file at 108, options after the cookie at 240 (RFC 2131 §2)."""
    data = raw_packet(b"\xff", sname=b"S", file=b"F")
    assert data[SNAME_OFFSET : SNAME_OFFSET + 1] == b"S"
    assert data[FILE_OFFSET : FILE_OFFSET + 1] == b"F"
    assert HEADER_BYTES == 240


# --------------------------------------------------------------------------- speed


def test_codec_speed_budget() -> None:
    """Decode and reply-building stay in the few-µs range (budget 10x the measured ~3 µs)."""
    data = pxe_clients.ovmf_discover()
    request = decode_packet(data)
    server = ipv4_bytes(SERVER)
    options = {53: b"\x02", 54: server, 60: b"PXEClient", 97: MACHINE_ID, 43: b"\x06\x01\x08\xff"}
    runs = 2000
    decode_s = min(timeit.repeat(lambda: decode_packet(data), number=runs, repeat=3)) / runs
    build_s = (
        min(
            timeit.repeat(
                lambda: build_reply(request, options, siaddr=server, file=b"undionly.kpxe"),
                number=runs,
                repeat=3,
            )
        )
        / runs
    )
    assert decode_s < 30e-6, decode_s
    assert build_s < 30e-6, build_s
