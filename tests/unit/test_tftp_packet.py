"""The TFTP wire codec: pinned bytes from real clients, round trips, strict-but-lenient decoding.

Golden requests mirror what pxe-protocol-notes.md records for real firmware under QEMU (iPXE,
EDK II's tsize probe) and for Windows bootmgr (backslash path, `msftwindow`); scapy's TFTP
layers build and parse the same packets independently of our codec.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.tftp import (
    TFTP,
    TFTP_ACK,
    TFTP_DATA,
    TFTP_ERROR,
    TFTP_OACK,
    TFTP_RRQ,
    TFTP_WRQ,
    TFTP_Option,
    TFTP_Options,
)

from actors.boot.tftp_packet import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    Options,
    Packet,
    ReadRequest,
    TftpDecodeError,
    WriteRequest,
    decode,
    encode,
    encode_error,
    find_option,
)
from actors.errors import DecodeError

IPXE_RRQ = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001432\x00tsize\x000\x00"
EDK2_PROBE_RRQ = (
    b"\x00\x01ipxe.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00"
)
EDK2_RRQ = b"\x00\x01ipxe.efi\x00octet\x00blksize\x001468\x00windowsize\x004\x00"
BOOTMGR_RRQ = (
    b"\x00\x01\\Boot\\x64\\boot.sdi\x00octet\x00tsize\x000\x00blksize\x001456\x00"
    b"windowsize\x004\x00msftwindow\x0031416\x00"
)


def scapy_rrq(filename: bytes, options: list[tuple[bytes, bytes]]) -> bytes:
    option_layers = [TFTP_Option(oname=name, value=value) for name, value in options]
    return bytes(
        TFTP() / TFTP_RRQ(filename=filename, mode=b"octet") / TFTP_Options(options=option_layers)
    )


# --------------------------------------------------------------------------- golden packets


@pytest.mark.parametrize(
    ("wire", "packet"),
    [
        (
            IPXE_RRQ,
            ReadRequest("undionly.kpxe", "octet", (("blksize", "1432"), ("tsize", "0"))),
        ),
        (
            EDK2_PROBE_RRQ,
            ReadRequest(
                "ipxe.efi", "octet", (("tsize", "0"), ("blksize", "1468"), ("windowsize", "4"))
            ),
        ),
        (
            EDK2_RRQ,
            ReadRequest("ipxe.efi", "octet", (("blksize", "1468"), ("windowsize", "4"))),
        ),
        (
            BOOTMGR_RRQ,
            ReadRequest(
                "\\Boot\\x64\\boot.sdi",
                "octet",
                (
                    ("tsize", "0"),
                    ("blksize", "1456"),
                    ("windowsize", "4"),
                    ("msftwindow", "31416"),
                ),
            ),
        ),
        (b"\x00\x01pxelinux.0\x00octet\x00", ReadRequest("pxelinux.0", "octet")),
        (b"\x00\x02up.bin\x00octet\x00", WriteRequest("up.bin", "octet")),
        (b"\x00\x03\x00\x01abc", Data(1, b"abc")),
        (b"\x00\x03\xff\xff", Data(65535, b"")),
        (b"\x00\x04\x00\x00", Ack(0)),
        (b"\x00\x04\x12\x34\x08", Ack(0x1234, b"\x08")),
        (b"\x00\x05\x00\x01File not found\x00", Error(ErrorCode.FILE_NOT_FOUND, "File not found")),
        (b"\x00\x05\x00\x08User aborted\x00", Error(ErrorCode.OPTION_REFUSED, "User aborted")),
        (
            b"\x00\x06blksize\x001468\x00tsize\x0012345\x00",
            OptionAck((("blksize", "1468"), ("tsize", "12345"))),
        ),
        (b"\x00\x06", OptionAck(())),
    ],
    ids=[
        "ipxe-rrq",
        "edk2-probe-rrq",
        "edk2-rrq",
        "bootmgr-rrq",
        "plain-rrq",
        "wrq",
        "data",
        "data-empty",
        "ack-0",
        "ack-msftwindow",
        "error-1",
        "error-8",
        "oack",
        "oack-empty",
    ],
)
def test_golden_packets_decode_and_encode(wire: bytes, packet: Packet) -> None:
    """Each pinned datagram decodes to its packet, and the packet encodes to the same bytes."""
    assert decode(wire) == packet
    assert encode(packet) == wire


def test_scapy_built_requests_decode() -> None:
    """A read request built by scapy's TFTP layers decodes to the same filename and options."""
    wire = scapy_rrq(b"snponly.efi", [(b"blksize", b"1432"), (b"tsize", b"0")])
    assert decode(wire) == ReadRequest(
        "snponly.efi", "octet", (("blksize", "1432"), ("tsize", "0"))
    )
    assert wire == b"\x00\x01snponly.efi\x00octet\x00blksize\x001432\x00tsize\x000\x00"


def test_our_packets_parse_with_scapy() -> None:
    """scapy reads our OACK, DATA, ACK and ERROR the way we meant them."""
    oack = TFTP(encode(OptionAck((("blksize", "1468"), ("tsize", "99")))))
    assert oack.op == 6
    options = oack[TFTP_OACK][TFTP_Options].options
    assert [(o.oname, o.value) for o in options] == [(b"blksize", b"1468"), (b"tsize", b"99")]
    data = TFTP(encode(Data(7, b"payload")))
    assert (data[TFTP_DATA].block, bytes(data[TFTP_DATA].payload)) == (7, b"payload")
    assert TFTP(encode(Ack(65535)))[TFTP_ACK].block == 65535
    error = TFTP(encode_error(ErrorCode.ACCESS_VIOLATION, "nope"))[TFTP_ERROR]
    assert (error.errorcode, error.errormsg) == (2, b"nope")
    wrq = TFTP(encode(WriteRequest("x", "octet")))
    assert wrq[TFTP_WRQ].filename == b"x"


# --------------------------------------------------------------------------- leniency


@pytest.mark.parametrize(
    ("wire", "packet"),
    [
        # PXE ROMs may pad a short request with NULs.
        (
            b"\x00\x01a.0\x00octet\x00blksize\x00512\x00\x00\x00\x00",
            ReadRequest("a.0", "octet", (("blksize", "512"),)),
        ),
        # a dangling option name without value is ignored
        (
            b"\x00\x01a.0\x00octet\x00tsize\x000\x00blksize\x00",
            ReadRequest("a.0", "octet", (("tsize", "0"),)),
        ),
        # an unterminated trailing string is ignored
        (b"\x00\x01a.0\x00octet\x00blksize", ReadRequest("a.0", "octet", ())),
        # mode is case-insensitive and lowercased; option spelling is kept
        (
            b"\x00\x01a.0\x00OcTeT\x00BlkSize\x001024\x00",
            ReadRequest("a.0", "octet", (("BlkSize", "1024"),)),
        ),
        # an ERROR without its terminating NUL keeps its text
        (b"\x00\x05\x00\x00oops", Error(0, "oops")),
        # an ERROR with an unknown code decodes (the code is any 16-bit number)
        (b"\x00\x05\x01\x00x\x00", Error(256, "x")),
        # bytes after the ERROR message's NUL are ignored
        (b"\x00\x05\x00\x04bad\x00junk", Error(4, "bad")),
        # a filename that is not UTF-8 survives as lone surrogates (tftp_paths refuses it)
        (b"\x00\x01\xff.bin\x00octet\x00", ReadRequest("\udcff.bin", "octet")),
        # an empty filename decodes (tftp_paths refuses it)
        (b"\x00\x01\x00octet\x00", ReadRequest("", "octet")),
    ],
    ids=[
        "nul-padding",
        "dangling-name",
        "unterminated-tail",
        "case",
        "error-no-nul",
        "error-unknown-code",
        "error-trailing",
        "non-utf8-name",
        "empty-name",
    ],
)
def test_lenient_decoding(wire: bytes, packet: Packet) -> None:
    """Quirky but harmless datagrams decode to the packet a sensible server would see."""
    assert decode(wire) == packet


def test_non_utf8_filename_encodes_back_to_its_bytes() -> None:
    """surrogateescape makes the filename round trip byte for byte."""
    wire = b"\x00\x01\xfe\xff\x00octet\x00"
    assert encode(decode(wire)) == wire


def test_find_option_is_case_insensitive_and_first_wins() -> None:
    """Option names compare case-insensitively; the first of duplicates is the one used."""
    options: Options = (("BLKSIZE", "1024"), ("blksize", "512"), ("tsize", "0"))
    assert find_option(options, "blksize") == "1024"
    assert find_option(options, "TSize") == "0"
    assert find_option(options, "windowsize") is None


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x00",
        b"\x00\x00",
        b"\x00\x07",
        b"\xff\xff\x00\x00",
        b"\x00\x01",
        b"\x00\x01name-without-nul",
        b"\x00\x01name\x00mode-without-nul",
        b"\x00\x03\x00",
        b"\x00\x04\x00",
        b"\x00\x05\x00",
    ],
    ids=[
        "empty",
        "one-byte",
        "opcode-0",
        "opcode-7",
        "opcode-ffff",
        "rrq-bare",
        "rrq-no-nul",
        "rrq-mode-no-nul",
        "data-short",
        "ack-short",
        "error-short",
    ],
)
def test_malformed_datagrams_raise_decode_error(wire: bytes) -> None:
    """Truncated packets and unknown opcodes raise TftpDecodeError, a DecodeError."""
    with pytest.raises(TftpDecodeError):
        decode(wire)
    assert issubclass(TftpDecodeError, DecodeError)


# --------------------------------------------------------------------------- Hypothesis

# No NUL inside strings (the wire's terminator); Latin-1 for mode and options.
LATIN1_TEXT = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=20)
OPTION_NAME = st.text(st.characters(min_codepoint=1, max_codepoint=255), min_size=1, max_size=12)
FILENAME = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=40)
# The decoder lowercases the mode, so only lowercase modes round trip.
MODE = LATIN1_TEXT.filter(lambda mode: mode == mode.lower())
OPTIONS = st.lists(st.tuples(OPTION_NAME, LATIN1_TEXT), max_size=6).map(tuple)
BLOCK = st.integers(0, 65535)

PACKETS: st.SearchStrategy[Packet] = st.one_of(
    st.builds(ReadRequest, FILENAME, MODE, OPTIONS),
    st.builds(WriteRequest, FILENAME, MODE, OPTIONS),
    st.builds(Data, BLOCK, st.binary(max_size=600)),
    st.builds(Ack, BLOCK, st.binary(max_size=3)),
    st.builds(Error, BLOCK, FILENAME),
    st.builds(OptionAck, OPTIONS),
)


@given(PACKETS)
def test_round_trip(packet: Packet) -> None:
    """Every packet we can build decodes back to itself."""
    assert decode(encode(packet)) == packet


@given(st.binary(max_size=700))
def test_fuzz_random_bytes(wire: bytes) -> None:
    """Arbitrary bytes either decode or raise TftpDecodeError; nothing else escapes."""
    with contextlib.suppress(TftpDecodeError):
        decode(wire)


@given(st.integers(0, 8), st.binary(max_size=300))
def test_fuzz_behind_valid_opcodes(opcode: int, body: bytes) -> None:
    """Bodies behind every real opcode decode or raise TftpDecodeError, nothing else."""
    try:
        packet = decode(opcode.to_bytes(2, "big") + body)
    except TftpDecodeError:
        return
    # What decodes must be encodable again (the server may echo or log it).
    encode(packet)


@given(
    st.lists(
        st.sampled_from([b"blksize", b"tsize", b"windowsize", b"msftwindow", b"timeout", b""])
        | st.binary(max_size=8),
        max_size=12,
    )
)
def test_fuzz_option_lists(fields: list[bytes]) -> None:
    """NUL-joined option soups (the CVE-2018-8476 trigger class) decode or raise only ours."""
    wire = b"\x00\x01f\x00octet\x00" + b"\x00".join(fields)
    try:
        packet = decode(wire)
    except TftpDecodeError:
        return
    assert isinstance(packet, ReadRequest)
    assert all(name for name, _ in packet.options)
