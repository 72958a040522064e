"""One TFTP read transfer as a pure state machine: datagrams in, datagrams out, time as input.

Theory of operation
-------------------
The host receives an RRQ on port 69, decodes it (`tftp_packet.decode`), admits it
(`admit_request`: read-only, mode, path confinement), opens the file itself (ERROR 1 if it is
missing; symlink checks are the host's too), then creates one `ReadTransfer` per request with
the file size and a `read(offset, length) -> bytes` callable, and serves it from a fresh
port (the transfer ID, RFC 1350 §4). The host drops or answers (ERROR 5) datagrams from any
other source port itself; the transfer only sees its own client's datagrams. A repeated RRQ
(the client lost our first answer) reaches port 69 again: the host should recognise it by
the client's address and port rather than start a second transfer.

Every method returns the datagrams to send to the client, ready-made `bytes`, in order:

    start(now_s)              -> OACK, or the first window of DATA when no option was accepted
    receive(datagram, now_s)  -> the next window (hot path: ACKs are parsed inline)
    handle(packet, now_s)     -> the same for an already decoded packet
    on_timeout(now_s)         -> retransmission, or a final ERROR after `retries_max` attempts

`next_deadline_s` is the absolute time at which the host must call `on_timeout` (None once
finished); one thread can keep a heap of (deadline, transfer) for thousands of transfers and
re-check the property when an entry pops (aioquic `get_timer` style). `outcome` is None while
the transfer runs and says how it ended afterwards.

States:
    NEGOTIATING   OACK sent, waiting for ACK 0 (the OACK counts as block 0)
    SENDING       a window of DATA blocks is in flight, waiting for an ACK
    FINISHED      `outcome` is set; every further input returns []

Option negotiation (RFC 2347) is a pure function, `negotiate`: unknown or invalid options are
ignored, accepted ones are echoed with the client's spelling in the client's order; when none
is accepted the transfer starts with DATA 1 as in RFC 1350. `blksize` (RFC 2348, 8..65464)
is clamped to `TransferConfig.blksize_max` (1468 = 1500-byte Ethernet MTU - 20 IPv4 - 8 UDP -
4 TFTP; `blksize_max_for_mtu`); `tsize` (RFC 2349) is answered with the real size; `timeout`
(RFC 2349, 1..255 s) becomes the retransmission interval; `windowsize` (RFC 7440) is clamped
to `windowsize_max` (64: tftpd-hpa fails above it and throughput levels out there);
`msftwindow=31416` (Windows bootmgr, WDS "variable window extension") is answered `27182`,
after which the one extra byte every ACK carries is the size of the next window.

Windows and ACKs (RFC 7440 §4). Blocks are numbered from 1 without bound internally and sent
as `block mod 65536`: past 65535 the wire number wraps to 0 (RFC 1350 does not say; 0 is
tftpd-hpa's default and what PyPXE and py3tftp do; the unofficial `rollover` option, which
lets a client ask for 1, is ignored). An ACK's wire number is mapped to the most recent
sent block with that number (`_highest_sent - ((highest_sent - wire) mod 65536)`); the window
is far smaller than 65536, so this is unambiguous. An ACK for a block above the last
acknowledged one starts a new window right after it: after a complete window that is the
next window; after a partial one (the client saw a gap and acknowledged the last block it got
in order) the blocks after it are resent (from the cache of the in-flight window) followed by
new ones. An ACK for a block already acknowledged (a duplicate, or old and delayed) is
ignored: resending on it would double every packet from then on, the Sorcerer's Apprentice
bug (RFC 1123 §4.2.3.1); the timer alone repairs losses of ACKs.

Known limitation: recovery is go-back-N as RFC 7440 describes it. A windowed client that
also ACKs every duplicate DATA it receives (not what RFC 7440 asks) turns each duplicated or
reordered datagram into a partial ACK and a resend of the rest of the window; transfers
still complete, at 2-8x the datagrams on a link that duplicates and reorders 10 % of them
(measured with the client model in the tests). Lock-step transfers are immune.

Timers: every send arms `now_s + timeout_s`. At the deadline the whole in-flight window (or
the OACK) is sent again, up to `retries_max` times without progress; then the transfer ends
`TIMED_OUT` with an ERROR 0 to the client. A new ACK resets the retry count.

Endings: the ACK of the last block (shorter than `blksize`, possibly empty: a file whose
size is a multiple of `blksize` ends with an empty block) -> COMPLETED. ERROR 8 in reply to an
OACK that carried `tsize` -> PROBE: the UEFI size probe (EDK II `PxeBcTftpGetFileSize`) that
asks the size, aborts, and re-requests at once; an expected ending, not an error. Any other
ERROR from the client -> CLIENT_ERROR (`client_error` keeps it). A `read` that returns a
block of the wrong length (the file changed or could not be read) -> READ_FAILED with an
ERROR 0 to the client. Malformed datagrams and packets a reading client never sends (DATA,
RRQ, WRQ, OACK) are counted in `ignored` and change nothing.

Speed: the host's per-packet budget at ~45,000 packets/s is ~20 µs including two system
calls, so the hot path (`receive` of an in-order ACK) parses the 4-byte ACK inline, builds
one DATA datagram as `precompiled header + read(...)`, keeps the window's datagrams for
retransmission instead of rebuilding them, and allocates little else (the returned list).
In lock-step the ACK of the block just sent, when a full block follows, takes
`_next_lockstep`: the same effect as `_on_ack` + `_send_window` in one call (~1.1 µs per
packet instead of ~1.5 µs); a Hypothesis test checks it answers every ACK sequence exactly
as the general path.
`tests/unit/test_tftp_transfer.py::test_per_packet_cost_64_mib` measures it.

Mode: `netascii` is served as `octet`, byte for byte. No boot firmware asks for netascii; the
few human clients that default to it (BSD-style `tftp`) only ever fetch text files here,
whose lines the client converts itself, and converting on the server would also change the
`tsize` answer. `mail` (obsolete) and unknown modes are refused with ERROR 4.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from actors.boot.tftp_packet import (
    Ack,
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
)
from actors.boot.tftp_paths import PathRefusal, validate_read_path

__all__ = [
    "BLKSIZE_DEFAULT",
    "BLKSIZE_MAX",
    "BLKSIZE_MIN",
    "DEFAULT_CONFIG",
    "MSFTWINDOW_CLIENT",
    "MSFTWINDOW_SERVER",
    "Negotiation",
    "Outcome",
    "ReadTransfer",
    "Reader",
    "TransferConfig",
    "TransferState",
    "admit_request",
    "blksize_max_for_mtu",
    "negotiate",
]

BLKSIZE_DEFAULT: Final = 512  # RFC 1350 §2
BLKSIZE_MIN: Final = 8  # RFC 2348
BLKSIZE_MAX: Final = 65464  # RFC 2348 §2
TIMEOUT_S_MIN: Final = 1  # RFC 2349
TIMEOUT_S_MAX: Final = 255  # RFC 2349
WINDOWSIZE_MAX: Final = 65535  # RFC 7440 §3
MSFTWINDOW_CLIENT: Final = "31416"  # Windows bootmgr's request value (pi)
MSFTWINDOW_SERVER: Final = "27182"  # what a WDS server answers (e)
SERVED_MODES: Final = ("octet", "netascii")  # netascii is served as octet (module docstring)

_IPV4_UDP_TFTP_HEADERS_BYTES: Final = 20 + 8 + 4
_IPV6_UDP_TFTP_HEADERS_BYTES: Final = 40 + 8 + 4
_NUMBER_DIGITS_MAX: Final = 10

_DATA_HEADER: Final = struct.Struct(">HH")
_DATA_OPCODE: Final = 3
_ACK_OPCODE: Final = 4
_WIRE_MASK: Final = 0xFFFF

Reader = Callable[[int, int], bytes]
"""`read(offset, length)`: the file's bytes at `offset`, exactly `length` of them unless the
file ends first. A reader that cannot read returns fewer bytes (b"") instead of raising."""


def blksize_max_for_mtu(mtu_bytes: int, *, ipv6: bool = False) -> int:
    """The largest `blksize` whose DATA datagram fits one unfragmented packet of `mtu_bytes`."""
    headers = _IPV6_UDP_TFTP_HEADERS_BYTES if ipv6 else _IPV4_UDP_TFTP_HEADERS_BYTES
    return max(BLKSIZE_MIN, min(BLKSIZE_MAX, mtu_bytes - headers))


@dataclass(frozen=True, slots=True)
class TransferConfig:
    """Server-side limits and timing for read transfers."""

    #: largest blksize granted (1468: Ethernet MTU 1500; up to 65464 on loopback)
    blksize_max: int = 1468
    #: largest windowsize granted (RFC 7440), also the cap for msftwindow's per-ACK window
    windowsize_max: int = 64
    #: retransmission interval when the client sends no `timeout` option
    retransmit_timeout_s: float = 1.0
    #: retransmissions without progress before giving up
    retries_max: int = 5
    #: answer Windows bootmgr's `msftwindow` (variable window) option
    msftwindow: bool = True

    def __post_init__(self) -> None:
        assert BLKSIZE_MIN <= self.blksize_max <= BLKSIZE_MAX
        assert 1 <= self.windowsize_max <= WINDOWSIZE_MAX
        assert self.retransmit_timeout_s > 0
        assert self.retries_max >= 0


DEFAULT_CONFIG: Final = TransferConfig()


@dataclass(frozen=True, slots=True)
class Negotiation:
    """The parameters of one transfer and the OACK options (empty: no OACK, plain RFC 1350)."""

    blksize: int = BLKSIZE_DEFAULT
    windowsize: int = 1
    timeout_s: float = DEFAULT_CONFIG.retransmit_timeout_s
    tsize_sent: bool = False
    msftwindow: bool = False
    oack: Options = ()


class TransferState(Enum):
    """Where a read transfer stands (module docstring)."""

    #: OACK sent, waiting for ACK 0
    NEGOTIATING = "negotiating"
    #: DATA in flight, waiting for an ACK
    SENDING = "sending"
    #: ended; `outcome` says how
    FINISHED = "finished"


class Outcome(Enum):
    """How a read transfer ended."""

    #: the client acknowledged the last block
    COMPLETED = "completed"
    #: the client answered the OACK with ERROR 8: the UEFI tsize probe (expected)
    PROBE = "probe"
    #: the client sent an ERROR (`client_error`)
    CLIENT_ERROR = "client_error"
    #: `retries_max` retransmissions without progress
    TIMED_OUT = "timed_out"
    #: `read` returned a block of the wrong length
    READ_FAILED = "read_failed"


_SENDING: Final = TransferState.SENDING
_pack_data_header: Final = _DATA_HEADER.pack


def admit_request(packet: ReadRequest | WriteRequest) -> str | Error:
    """The root-relative path to serve for a request, or the ERROR to answer it with."""
    if isinstance(packet, WriteRequest):
        return Error(ErrorCode.ACCESS_VIOLATION, "read-only server")
    if packet.mode not in SERVED_MODES:
        return Error(ErrorCode.ILLEGAL_OPERATION, f"unsupported mode {packet.mode[:16]!r}")
    path = validate_read_path(packet.filename)
    if isinstance(path, PathRefusal):
        return Error(ErrorCode.ACCESS_VIOLATION, path.value)
    return path


def negotiate(
    request: ReadRequest, size_bytes: int, config: TransferConfig = DEFAULT_CONFIG
) -> Negotiation:
    """Accept, clamp or ignore each RFC 2347 option of `request` (first of duplicates wins)."""
    assert size_bytes >= 0
    blksize, windowsize, timeout_s = BLKSIZE_DEFAULT, 1, config.retransmit_timeout_s
    tsize_sent = msftwindow = False
    replies: list[tuple[str, str]] = []
    seen: dict[str, None] = {}
    for name, value in request.options:
        key = name.lower()
        if key in seen:
            continue
        seen[key] = None
        number = _parse_number(value)
        if key == "blksize" and number is not None and number >= BLKSIZE_MIN:
            blksize = min(number, config.blksize_max)
            replies.append((name, str(blksize)))
        elif key == "tsize" and number is not None:
            tsize_sent = True
            replies.append((name, str(size_bytes)))
        elif key == "timeout" and number is not None and TIMEOUT_S_MIN <= number <= TIMEOUT_S_MAX:
            timeout_s = float(number)
            replies.append((name, str(number)))
        elif key == "windowsize" and number is not None and number >= 1:
            windowsize = min(number, config.windowsize_max)
            replies.append((name, str(windowsize)))
        elif key == "msftwindow" and config.msftwindow and value == MSFTWINDOW_CLIENT:
            msftwindow = True
            replies.append((name, MSFTWINDOW_SERVER))
    return Negotiation(blksize, windowsize, timeout_s, tsize_sent, msftwindow, tuple(replies))


def _parse_number(value: str) -> int | None:
    """A decimal option value (ASCII digits only, bounded length), or None."""
    if value.isascii() and value.isdigit() and len(value) <= _NUMBER_DIGITS_MAX:
        return int(value)
    return None


class ReadTransfer:
    """Serve one file to one client over TFTP (module docstring: theory of operation)."""

    __slots__ = (
        "_acked",
        "_blksize",
        "_deadline_s",
        "_full_blocks",
        "_highest_sent",
        "_in_flight",
        "_in_flight_first",
        "_last_block",
        "_last_block_bytes",
        "_lockstep",
        "_msftwindow",
        "_read",
        "_retries",
        "_retries_max",
        "_state",
        "_timeout_s",
        "_window",
        "_windowsize_max",
        "client_error",
        "duplicate_acks",
        "ignored",
        "negotiation",
        "outcome",
        "retransmitted",
        "size_bytes",
    )

    def __init__(
        self,
        request: ReadRequest,
        size_bytes: int,
        read: Reader,
        config: TransferConfig = DEFAULT_CONFIG,
    ) -> None:
        assert size_bytes >= 0
        assert request.mode in SERVED_MODES
        self.negotiation = negotiate(request, size_bytes, config)
        self.size_bytes = size_bytes
        self.outcome: Outcome | None = None
        self.client_error: Error | None = None
        self.duplicate_acks = 0
        self.ignored = 0
        self.retransmitted = 0
        self._read = read
        self._blksize = self.negotiation.blksize
        self._window = self.negotiation.windowsize
        self._windowsize_max = config.windowsize_max
        self._msftwindow = self.negotiation.msftwindow
        self._timeout_s = self.negotiation.timeout_s
        self._retries_max = config.retries_max
        self._last_block = size_bytes // self._blksize + 1
        self._last_block_bytes = size_bytes - (self._last_block - 1) * self._blksize
        self._full_blocks = self._last_block - 1  # blocks 1.._full_blocks carry blksize bytes
        #: one block per ACK for the whole transfer: `receive` may take `_next_lockstep`
        self._lockstep = self._window == 1 and not self._msftwindow
        self._state = TransferState.NEGOTIATING
        self._acked = -1  # highest acknowledged block; -1: not even the OACK (block 0)
        self._highest_sent = -1
        self._in_flight: list[bytes] = []  # the last window sent (the OACK is block 0)
        self._in_flight_first = 0  # block number of _in_flight[0]
        self._retries = 0
        self._deadline_s: float | None = None

    @property
    def state(self) -> TransferState:
        """NEGOTIATING, SENDING or FINISHED."""
        return self._state

    @property
    def next_deadline_s(self) -> float | None:
        """When the host must call `on_timeout` (absolute host seconds); None once finished."""
        return self._deadline_s

    @property
    def blocks_acked(self) -> int:
        """Blocks the client has acknowledged so far (0 before the first DATA ACK)."""
        return max(0, self._acked)

    @property
    def last_block(self) -> int:
        """The number (unwrapped) of the final, short block."""
        return self._last_block

    @property
    def window(self) -> int:
        """The current window size in blocks."""
        return self._window

    def start(self, now_s: float) -> list[bytes]:
        """The first datagrams: the OACK, or the first DATA window when no option was taken."""
        assert self._highest_sent == -1
        if self.negotiation.oack:
            oack = encode(OptionAck(self.negotiation.oack))
            self._highest_sent = 0
            self._in_flight = [oack]
            self._in_flight_first = 0
            self._deadline_s = now_s + self._timeout_s
            return [oack]
        self._acked = 0
        self._state = TransferState.SENDING
        return self._send_window(1, now_s)

    def receive(self, datagram: bytes, now_s: float) -> list[bytes]:
        """Handle one datagram from the client; malformed ones are counted and dropped."""
        if len(datagram) >= 4 and datagram[1] == _ACK_OPCODE and datagram[0] == 0:
            wire_block = (datagram[2] << 8) | datagram[3]
            if self._lockstep:
                sent = self._highest_sent
                if wire_block == sent & _WIRE_MASK and self._acked < sent < self._full_blocks:
                    return self._next_lockstep(sent, now_s)
            hint = datagram[4] if len(datagram) > 4 else 0
            return self._on_ack(wire_block, hint, now_s)
        try:
            packet = decode(datagram)
        except TftpDecodeError:
            self.ignored += 1
            return []
        return self.handle(packet, now_s)

    def handle(self, packet: Packet, now_s: float) -> list[bytes]:
        """Handle one decoded packet from the client."""
        match packet:
            case Ack(block, extra):
                return self._on_ack(block, extra[0] if extra else 0, now_s)
            case Error():
                return self._on_error(packet)
            case _:
                self.ignored += 1
                return []

    def on_timeout(self, now_s: float) -> list[bytes]:
        """Retransmit the in-flight window (or OACK) if the deadline passed; maybe give up."""
        if self._deadline_s is None or now_s < self._deadline_s:
            return []
        if self._retries >= self._retries_max:
            self._finish(Outcome.TIMED_OUT)
            return [encode_error(ErrorCode.NOT_DEFINED, "timed out")]
        self._retries += 1
        self.retransmitted += len(self._in_flight)
        self._deadline_s = now_s + self._timeout_s
        return list(self._in_flight)

    # ----------------------------------------------------------------------- handlers

    def _next_lockstep(self, acked: int, now_s: float) -> list[bytes]:
        """The hot path, `_on_ack` + `_send_window` for the common case only: lock-step, the
        ACK of the block just sent, and the next block is a full one (not the last)."""
        self._acked = acked
        self._retries = 0
        self._state = _SENDING
        blksize = self._blksize
        payload = self._read(acked * blksize, blksize)
        if len(payload) != blksize:
            return self._read_failed()
        block = acked + 1
        packets = [_pack_data_header(_DATA_OPCODE, block & _WIRE_MASK) + payload]
        self._in_flight = packets
        self._in_flight_first = block
        self._highest_sent = block
        self._deadline_s = now_s + self._timeout_s
        return packets

    def _on_ack(self, wire_block: int, window_hint: int, now_s: float) -> list[bytes]:
        if self._deadline_s is None:  # finished (or not started): nothing is expected
            return []
        highest = self._highest_sent
        block = highest - ((highest - wire_block) & _WIRE_MASK)
        if block <= self._acked:
            self.duplicate_acks += 1
            return []
        self._acked = block
        self._retries = 0
        if self._msftwindow and window_hint:
            self._window = min(window_hint, self._windowsize_max)
        if block == self._last_block:
            self._finish(Outcome.COMPLETED)
            return []
        self._state = TransferState.SENDING
        return self._send_window(block + 1, now_s)

    def _on_error(self, error: Error) -> list[bytes]:
        if self._state is TransferState.FINISHED:
            return []
        probe = (
            self._state is TransferState.NEGOTIATING
            and error.code == ErrorCode.OPTION_REFUSED
            and self.negotiation.tsize_sent
        )
        self.client_error = error
        self._finish(Outcome.PROBE if probe else Outcome.CLIENT_ERROR)
        return []

    # ----------------------------------------------------------------------- sending

    def _send_window(self, first: int, now_s: float) -> list[bytes]:
        """Send blocks `first`... (first == _acked + 1), reusing datagrams already built."""
        last = min(first + self._window - 1, self._last_block)
        if last == first:  # lock-step (or the final block): the common case, kept short
            packet = self._data(first)
            if packet is None:
                return self._read_failed()
            packets = [packet]
        else:
            packets = self._build_window(first, last)
            if not packets:
                return self._read_failed()
        self._in_flight = packets
        self._in_flight_first = first
        if last > self._highest_sent:  # noqa: PLR1730 (hot path: cheaper than max())
            self._highest_sent = last
        self._deadline_s = now_s + self._timeout_s
        return packets

    def _build_window(self, first: int, last: int) -> list[bytes]:
        """Datagrams for blocks first..last, reusing the previous window's; [] on a bad read."""
        reuse_from = first - self._in_flight_first
        packets = self._in_flight[reuse_from : reuse_from + last - first + 1] if reuse_from else []
        self.retransmitted += len(packets)
        for block in range(first + len(packets), last + 1):
            packet = self._data(block)
            if packet is None:
                return []
            packets.append(packet)
        return packets

    def _data(self, block: int) -> bytes | None:
        """The DATA datagram for `block`, or None if the reader returned the wrong length."""
        expected = self._blksize if block < self._last_block else self._last_block_bytes
        payload = self._read((block - 1) * self._blksize, expected)
        if len(payload) != expected:
            return None
        return _pack_data_header(_DATA_OPCODE, block & _WIRE_MASK) + payload

    def _read_failed(self) -> list[bytes]:
        self._finish(Outcome.READ_FAILED)
        return [encode_error(ErrorCode.NOT_DEFINED, "read error")]

    def _finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self._state = TransferState.FINISHED
        self._deadline_s = None
        self._lockstep = False
        self._in_flight = []
