"""TFTP wire codec: RRQ, WRQ, DATA, ACK, ERROR (RFC 1350) and OACK (RFC 2347).

`decode` trusts nothing: any malformed datagram raises `TftpDecodeError` and nothing else
escapes (pinned by a Hypothesis fuzz test). `encode` trusts its input (it comes from our own
code) and asserts the invariants the wire needs (no NUL inside strings, 16-bit numbers).

Leniency, chosen to boot odd firmware rather than to police it:
- options (RFC 2347) are `name NUL value NUL` pairs after the mode; option names compare
  case-insensitively (`find_option`) but keep the client's spelling, so the OACK can echo it
  byte for byte (a client that compares case-sensitively still recognises its own option);
- a request may end with NUL padding (some PXE ROMs pad short packets), an empty option name
  or a dangling name without value: parsing stops there and the rest is ignored;
- duplicate options are kept on the wire; `find_option` returns the first one;
- an ACK may carry trailing bytes (`Ack.extra`): Windows bootmgr's `msftwindow` extension
  appends one byte, the next window size, to every ACK;
- an ERROR whose message lacks its terminating NUL keeps the bytes up to the end.

Text: the filename and ERROR messages are UTF-8 with `surrogateescape`, so decoding never
fails on bytes and `actors.boot.tftp_paths` refuses the non-UTF-8 names (lone surrogates)
with a clear reason; mode, option names and values are Latin-1 (every byte maps to one
character, so they round-trip exactly); the mode is lowercased (RFC 1350 §5: "any
combination of upper and lower case").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from actors.errors import DecodeError

__all__ = [
    "BLOCK_NUMBER_MODULUS",
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "Opcode",
    "OptionAck",
    "Options",
    "Packet",
    "ReadRequest",
    "TftpDecodeError",
    "WriteRequest",
    "decode",
    "encode",
    "encode_error",
    "find_option",
]


class TftpDecodeError(DecodeError):
    """A datagram that is not a well-formed TFTP packet."""


class Opcode(IntEnum):
    """The first two bytes of every TFTP packet (RFC 1350 §5, RFC 2347 for OACK)."""

    #: read request
    READ_REQUEST = 1
    #: write request (this server is read-only and refuses them)
    WRITE_REQUEST = 2
    #: one block of file data
    DATA = 3
    #: acknowledgement of a block (0 acknowledges an OACK)
    ACK = 4
    #: error: ends the transfer
    ERROR = 5
    #: option acknowledgement (RFC 2347)
    OPTION_ACK = 6


class ErrorCode(IntEnum):
    """ERROR packet codes: RFC 1350 §5 (0-7) and RFC 2347 (8)."""

    #: not defined, see the error message
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TRANSFER_ID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    #: the client (or server) refuses the negotiated options; also the UEFI tsize probe's end
    OPTION_REFUSED = 8


BLOCK_NUMBER_MODULUS: Final = 1 << 16
"""Block numbers are 16-bit on the wire (RFC 1350 §5); the counter wraps past 65535."""

_HEADER: Final = struct.Struct(">HH")
"""opcode + block number (DATA, ACK) or opcode + error code (ERROR)."""

_OPCODE: Final = struct.Struct(">H")

Options = tuple[tuple[str, str], ...]
"""(name as sent, value) pairs in wire order; names compare case-insensitively."""


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """RRQ: the client wants `filename`; `mode` lowercased; RFC 2347 options as sent."""

    filename: str
    mode: str = "octet"
    options: Options = ()


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """WRQ: the client wants to store `filename` (always refused: the server is read-only)."""

    filename: str
    mode: str = "octet"
    options: Options = ()


@dataclass(frozen=True, slots=True)
class Data:
    """DATA: block `block` (16-bit wire number) of the file."""

    block: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """ACK of block `block`; `extra` holds trailing bytes (bootmgr's next window size)."""

    block: int
    extra: bytes = b""


@dataclass(frozen=True, slots=True)
class Error:
    """ERROR: `code` (an `ErrorCode` value, or any 16-bit number a peer sends) and text."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class OptionAck:
    """OACK: the options the server accepted, with the values it chose (RFC 2347)."""

    options: Options


Packet = ReadRequest | WriteRequest | Data | Ack | Error | OptionAck


def find_option(options: Options, name: str) -> str | None:
    """The value of the first option called `name` (case-insensitive), or None."""
    wanted = name.lower()
    for option_name, value in options:
        if option_name.lower() == wanted:
            return value
    return None


def decode(data: bytes) -> Packet:
    """Parse one datagram; raise `TftpDecodeError` for anything malformed."""
    if len(data) < _OPCODE.size:
        raise TftpDecodeError(f"truncated: {len(data)} bytes")
    (opcode,) = _OPCODE.unpack_from(data)
    if opcode in (Opcode.READ_REQUEST, Opcode.WRITE_REQUEST):
        return _decode_request(opcode, data)
    if opcode == Opcode.OPTION_ACK:
        return OptionAck(_decode_options(data[2:].split(b"\0")))
    if opcode not in (Opcode.DATA, Opcode.ACK, Opcode.ERROR):
        raise TftpDecodeError(f"unknown opcode {opcode}")
    if len(data) < _HEADER.size:
        raise TftpDecodeError(f"truncated {Opcode(opcode).name}: {len(data)} bytes")
    _, number = _HEADER.unpack_from(data)
    if opcode == Opcode.DATA:
        return Data(number, data[4:])
    if opcode == Opcode.ACK:
        return Ack(number, data[4:])
    text, _, _ = data[4:].partition(b"\0")
    return Error(number, text.decode("utf-8", "surrogateescape"))


def encode(packet: Packet) -> bytes:
    """Serialise `packet` (our own, so invariants are asserted, not checked)."""
    match packet:
        case ReadRequest(filename, mode, options):
            return _encode_request(Opcode.READ_REQUEST, filename, mode, options)
        case WriteRequest(filename, mode, options):
            return _encode_request(Opcode.WRITE_REQUEST, filename, mode, options)
        case Data(block, payload):
            assert 0 <= block < BLOCK_NUMBER_MODULUS
            return _HEADER.pack(Opcode.DATA, block) + payload
        case Ack(block, extra):
            assert 0 <= block < BLOCK_NUMBER_MODULUS
            return _HEADER.pack(Opcode.ACK, block) + extra
        case Error(code, message):
            return encode_error(code, message)
        case OptionAck(options):
            return _OPCODE.pack(Opcode.OPTION_ACK) + _encode_options(options)


def encode_error(code: int, message: str) -> bytes:
    """An ERROR packet; the message is UTF-8 and must not contain NUL."""
    assert 0 <= code < BLOCK_NUMBER_MODULUS
    assert "\0" not in message
    return _HEADER.pack(Opcode.ERROR, code) + message.encode("utf-8", "surrogateescape") + b"\0"


# --------------------------------------------------------------------------- helpers


def _decode_request(opcode: int, data: bytes) -> ReadRequest | WriteRequest:
    fields = data[2:].split(b"\0")
    # split() yields one more field than there are NULs: filename and mode need their NUL.
    if len(fields) < 3:
        raise TftpDecodeError("request without NUL-terminated filename and mode")
    filename = fields[0].decode("utf-8", "surrogateescape")
    mode = fields[1].decode("latin-1").lower()
    options = _decode_options(fields[2:])
    if opcode == Opcode.READ_REQUEST:
        return ReadRequest(filename, mode, options)
    return WriteRequest(filename, mode, options)


def _decode_options(fields: list[bytes]) -> Options:
    """Pairs from NUL-split fields; the last field follows the final NUL (unterminated)."""
    pairs: list[tuple[str, str]] = []
    terminated = len(fields) - 1
    for index in range(0, terminated - 1, 2):
        name = fields[index]
        if not name:
            break  # NUL padding, or an empty name: nothing meaningful follows
        pairs.append((name.decode("latin-1"), fields[index + 1].decode("latin-1")))
    return tuple(pairs)


def _encode_request(opcode: Opcode, filename: str, mode: str, options: Options) -> bytes:
    assert "\0" not in filename
    assert "\0" not in mode
    head = _OPCODE.pack(opcode) + filename.encode("utf-8", "surrogateescape") + b"\0"
    return head + mode.encode("latin-1") + b"\0" + _encode_options(options)


def _encode_options(options: Options) -> bytes:
    parts: list[bytes] = []
    for name, value in options:
        assert name
        assert "\0" not in name
        assert "\0" not in value
        parts.append(name.encode("latin-1") + b"\0" + value.encode("latin-1") + b"\0")
    return b"".join(parts)
