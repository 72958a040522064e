"""The TFTP read-transfer state machine, driven by hand and by a simulated lossy link.

No sockets and no clock: datagrams are plain bytes, time is a float the test advances, and a
small RFC 7440 client model (`ClientModel`) plays the other side.
"""

from __future__ import annotations

import heapq
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from actors.boot.tftp_packet import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
)
from actors.boot.tftp_transfer import (
    BLKSIZE_DEFAULT,
    DEFAULT_CONFIG,
    Negotiation,
    Outcome,
    ReadTransfer,
    TransferConfig,
    TransferState,
    admit_request,
    blksize_max_for_mtu,
    negotiate,
)

ACK = struct.Struct(">HH")


def ack(block: int, extra: bytes = b"") -> bytes:
    return ACK.pack(4, block & 0xFFFF) + extra


def content(size: int) -> bytes:
    """Deterministic file bytes whose blocks all differ (so a wrong offset shows)."""
    return bytes((index * 7 + index // 251) & 0xFF for index in range(size))


class FakeFile:
    """A `read(offset, length)` callable over bytes that records every read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.data[offset : offset + length]


def rrq(*options: tuple[str, str], filename: str = "f") -> ReadRequest:
    return ReadRequest(filename, "octet", tuple(options))


def state_of(transfer: ReadTransfer) -> TransferState:
    """The state, read through a call so mypy does not narrow it across transitions."""
    return transfer.state


def decoded(datagrams: list[bytes]) -> list[object]:
    return [decode(datagram) for datagram in datagrams]


def blocks_of(datagrams: list[bytes]) -> list[int]:
    packets = decoded(datagrams)
    assert all(isinstance(packet, Data) for packet in packets)
    return [packet.block for packet in packets if isinstance(packet, Data)]


# --------------------------------------------------------------------------- negotiation


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), Negotiation()),
        (
            (("blksize", "1432"), ("tsize", "0")),
            Negotiation(
                blksize=1432, tsize_sent=True, oack=(("blksize", "1432"), ("tsize", "5000"))
            ),
        ),
        # clamped to the configured maximum (1468 by default)
        ((("blksize", "65464"),), Negotiation(blksize=1468, oack=(("blksize", "1468"),))),
        ((("blksize", "99999"),), Negotiation(blksize=1468, oack=(("blksize", "1468"),))),
        ((("blksize", "8"),), Negotiation(blksize=8, oack=(("blksize", "8"),))),
        # invalid values are ignored (no OACK entry, defaults kept)
        ((("blksize", "7"),), Negotiation()),
        ((("blksize", "0"),), Negotiation()),
        ((("blksize", "-512"),), Negotiation()),
        ((("blksize", "1k"),), Negotiation()),
        ((("blksize", ""),), Negotiation()),
        ((("blksize", "\u00b2"),), Negotiation()),  # superscript two: isdigit() but not ASCII
        ((("blksize", "1" * 40),), Negotiation()),
        # timeout 1..255 s is echoed and used
        ((("timeout", "3"),), Negotiation(timeout_s=3.0, oack=(("timeout", "3"),))),
        ((("timeout", "0"),), Negotiation()),
        ((("timeout", "256"),), Negotiation()),
        # windowsize clamped to 64
        ((("windowsize", "4"),), Negotiation(windowsize=4, oack=(("windowsize", "4"),))),
        ((("windowsize", "65535"),), Negotiation(windowsize=64, oack=(("windowsize", "64"),))),
        ((("windowsize", "0"),), Negotiation()),
        # tsize: always the real size
        ((("tsize", "123"),), Negotiation(tsize_sent=True, oack=(("tsize", "5000"),))),
        ((("tsize", "x"),), Negotiation()),
        # msftwindow only with the magic value
        (
            (("windowsize", "4"), ("msftwindow", "31416")),
            Negotiation(
                windowsize=4, msftwindow=True, oack=(("windowsize", "4"), ("msftwindow", "27182"))
            ),
        ),
        ((("msftwindow", "1"),), Negotiation()),
        # unknown options are ignored; names keep the client's spelling and order
        ((("multicast", ""), ("rollover", "0")), Negotiation()),
        (
            (("TSIZE", "0"), ("BlkSize", "1024")),
            Negotiation(
                blksize=1024, tsize_sent=True, oack=(("TSIZE", "5000"), ("BlkSize", "1024"))
            ),
        ),
        # duplicates: the first one counts
        (
            (("blksize", "512"), ("BLKSIZE", "1024"), ("blksize", "65535")),
            Negotiation(blksize=512, oack=(("blksize", "512"),)),
        ),
        # an invalid first occurrence still shadows a valid duplicate
        ((("blksize", "x"), ("blksize", "1024")), Negotiation()),
    ],
)
def test_negotiate(options: tuple[tuple[str, str], ...], expected: Negotiation) -> None:
    """Each option is accepted, clamped or ignored as RFC 2347-2349 and 7440 allow."""
    assert negotiate(rrq(*options), 5000) == expected


def test_negotiate_with_custom_limits() -> None:
    """Loopback limits allow 65464-byte blocks; msftwindow can be turned off."""
    config = TransferConfig(blksize_max=65464, windowsize_max=8, msftwindow=False)
    request = rrq(("blksize", "65464"), ("windowsize", "16"), ("msftwindow", "31416"))
    result = negotiate(request, 0, config)
    assert (result.blksize, result.windowsize, result.msftwindow) == (65464, 8, False)
    assert result.oack == (("blksize", "65464"), ("windowsize", "8"))


def test_config_timeout_is_the_default_interval() -> None:
    """Without a timeout option the configured retransmission interval applies."""
    assert negotiate(rrq(), 0, TransferConfig(retransmit_timeout_s=0.25)).timeout_s == 0.25


@pytest.mark.parametrize(
    ("mtu", "ipv6", "expected"),
    [
        (1500, False, 1468),
        (1500, True, 1448),
        (9000, False, 8968),
        (65535, False, 65464),
        (20, False, 8),
        (1420, False, 1388),
    ],
)
def test_blksize_max_for_mtu(mtu: int, ipv6: bool, expected: int) -> None:
    """The largest unfragmented block: MTU minus IP, UDP and TFTP headers, within RFC 2348."""
    assert blksize_max_for_mtu(mtu, ipv6=ipv6) == expected


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (ReadRequest("pxelinux.0", "octet"), "pxelinux.0"),
        (ReadRequest("\\Boot\\x64\\wdsmgfw.efi", "octet"), "Boot/x64/wdsmgfw.efi"),
        (ReadRequest("menu.ipxe", "netascii"), "menu.ipxe"),
        (WriteRequest("x", "octet"), Error(ErrorCode.ACCESS_VIOLATION, "read-only server")),
        (ReadRequest("x", "mail"), Error(ErrorCode.ILLEGAL_OPERATION, "unsupported mode 'mail'")),
        (ReadRequest("x", ""), Error(ErrorCode.ILLEGAL_OPERATION, "unsupported mode ''")),
        (
            ReadRequest("../etc/passwd", "octet"),
            Error(ErrorCode.ACCESS_VIOLATION, "'..' or dots-only component"),
        ),
        (ReadRequest("", "octet"), Error(ErrorCode.ACCESS_VIOLATION, "empty filename")),
    ],
)
def test_admit_request(packet: ReadRequest | WriteRequest, expected: str | Error) -> None:
    """Writes, unknown modes and unsafe paths get the ERROR to send; the rest a path."""
    assert admit_request(packet) == expected


# --------------------------------------------------------------------------- lock-step


@pytest.mark.parametrize(
    "size",
    [0, 1, BLKSIZE_DEFAULT - 1, BLKSIZE_DEFAULT, BLKSIZE_DEFAULT + 1, 10 * BLKSIZE_DEFAULT + 3],
)
def test_lock_step_without_options(size: int) -> None:
    """With no option, DATA 1 comes at once, one block per ACK, the last one short (maybe 0)."""
    data = content(size)
    transfer = ReadTransfer(rrq(), size, FakeFile(data))
    received = bytearray()
    sent = transfer.start(0.0)
    now_s = 0.0
    while True:
        assert state_of(transfer) is TransferState.SENDING
        (packet,) = decoded(sent)
        assert isinstance(packet, Data)
        received += packet.payload
        now_s += 0.001
        sent = transfer.receive(ack(packet.block), now_s)
        if len(packet.payload) < BLKSIZE_DEFAULT:
            break
        assert len(packet.payload) == BLKSIZE_DEFAULT
    assert sent == []
    assert bytes(received) == data
    assert transfer.outcome is Outcome.COMPLETED
    assert state_of(transfer) is TransferState.FINISHED
    assert transfer.next_deadline_s is None
    assert transfer.blocks_acked == transfer.last_block == size // BLKSIZE_DEFAULT + 1
    assert transfer.retransmitted == transfer.duplicate_acks == 0


def test_oack_then_data() -> None:
    """Accepted options produce an OACK; ACK 0 starts DATA 1 at the negotiated blksize."""
    data = content(3000)
    transfer = ReadTransfer(rrq(("blksize", "1432"), ("tsize", "0")), 3000, FakeFile(data))
    (oack,) = transfer.start(10.0)
    assert oack == b"\x00\x06blksize\x001432\x00tsize\x003000\x00"
    assert state_of(transfer) is TransferState.NEGOTIATING
    assert transfer.next_deadline_s == 11.0
    assert blocks_of(transfer.receive(ack(0), 10.1)) == [1]
    assert state_of(transfer) is TransferState.SENDING
    assert transfer.next_deadline_s == pytest.approx(11.1)
    (second,) = transfer.receive(ack(1), 10.2)
    assert second == b"\x00\x03\x00\x02" + data[1432:2864]
    (third,) = transfer.receive(ack(2), 10.3)
    assert third == b"\x00\x03\x00\x03" + data[2864:]
    assert transfer.receive(ack(3), 10.4) == []
    assert transfer.outcome is Outcome.COMPLETED


def test_handle_takes_decoded_packets() -> None:
    """`handle(Ack(...))` drives the transfer exactly as the raw datagram does."""
    transfer = ReadTransfer(rrq(), 600, FakeFile(content(600)))
    transfer.start(0.0)
    assert blocks_of(transfer.handle(Ack(1), 0.1)) == [2]
    assert transfer.handle(Ack(2), 0.2) == []
    assert transfer.outcome is Outcome.COMPLETED


def test_lost_data_is_resent_on_timeout() -> None:
    """No ACK before the deadline: the same DATA datagram is sent again, not earlier."""
    transfer = ReadTransfer(rrq(), 2000, FakeFile(content(2000)))
    (first,) = transfer.start(0.0)
    assert transfer.on_timeout(0.999) == []
    assert transfer.on_timeout(1.0) == [first]
    assert transfer.next_deadline_s == 2.0
    assert transfer.retransmitted == 1
    assert blocks_of(transfer.receive(ack(1), 1.5)) == [2]


def test_lost_ack_and_duplicate_ack_do_not_double_sends() -> None:
    """Sorcerer's Apprentice (RFC 1123 §4.2.3.1): a duplicate ACK never triggers a resend."""
    transfer = ReadTransfer(rrq(), 5000, FakeFile(content(5000)))
    transfer.start(0.0)
    # The client's ACK 1 is lost; the server times out and resends DATA 1.
    assert blocks_of(transfer.on_timeout(1.0)) == [1]
    # The client acknowledges both copies of DATA 1: only the first ACK sends DATA 2.
    assert blocks_of(transfer.receive(ack(1), 1.1)) == [2]
    assert transfer.receive(ack(1), 1.2) == []
    assert transfer.duplicate_acks == 1
    assert blocks_of(transfer.receive(ack(2), 1.3)) == [3]
    # An old ACK, delayed in the network, changes nothing either.
    assert transfer.receive(ack(1), 1.4) == []
    assert transfer.duplicate_acks == 2


def test_ack_from_the_future_is_ignored() -> None:
    """An ACK for a block never sent is ignored (counted as a stray ACK)."""
    transfer = ReadTransfer(rrq(), 5000, FakeFile(content(5000)))
    transfer.start(0.0)
    assert transfer.receive(ack(7), 0.1) == []
    assert transfer.blocks_acked == 0
    assert transfer.duplicate_acks == 1


def test_ack_0_without_oack_is_ignored() -> None:
    """ACK 0 only acknowledges an OACK; without one it is stray."""
    transfer = ReadTransfer(rrq(), 5000, FakeFile(content(5000)))
    transfer.start(0.0)
    assert transfer.receive(ack(0), 0.1) == []
    assert transfer.state is TransferState.SENDING


def test_lost_oack_is_resent() -> None:
    """The OACK is retransmitted like a block until ACK 0 arrives."""
    transfer = ReadTransfer(rrq(("tsize", "0")), 10, FakeFile(content(10)))
    (oack,) = transfer.start(0.0)
    assert transfer.on_timeout(1.0) == [oack]
    assert blocks_of(transfer.receive(ack(0), 1.1)) == [1]


def test_timeout_option_sets_the_interval() -> None:
    """A negotiated `timeout` of 3 s arms deadlines 3 s after each send."""
    transfer = ReadTransfer(rrq(("timeout", "3")), 10, FakeFile(content(10)))
    transfer.start(5.0)
    assert transfer.next_deadline_s == 8.0
    assert transfer.on_timeout(7.9) == []


def test_retries_exhausted() -> None:
    """After `retries_max` resends without progress the transfer ends with ERROR 0."""
    config = TransferConfig(retries_max=3, retransmit_timeout_s=0.5)
    transfer = ReadTransfer(rrq(), 5000, FakeFile(content(5000)), config)
    (first,) = transfer.start(0.0)
    now_s = 0.0
    for _ in range(3):
        now_s += 0.5
        assert transfer.on_timeout(now_s) == [first]
    now_s += 0.5
    (final,) = transfer.on_timeout(now_s)
    assert decode(final) == Error(ErrorCode.NOT_DEFINED, "timed out")
    assert transfer.outcome is Outcome.TIMED_OUT
    assert transfer.next_deadline_s is None
    assert transfer.on_timeout(now_s + 10) == []
    assert transfer.receive(ack(1), now_s + 10) == []


def test_progress_resets_the_retry_count() -> None:
    """Retries count resends without progress: an ACK in between starts the count again."""
    config = TransferConfig(retries_max=1)
    transfer = ReadTransfer(rrq(), 5000, FakeFile(content(5000)), config)
    transfer.start(0.0)
    assert blocks_of(transfer.on_timeout(1.0)) == [1]
    assert blocks_of(transfer.receive(ack(1), 1.5)) == [2]
    assert blocks_of(transfer.on_timeout(2.5)) == [2]
    assert transfer.outcome is None


# --------------------------------------------------------------------------- endings


def test_uefi_tsize_probe_ends_quietly() -> None:
    """EDK II's probe: OACK with tsize, then ERROR 8: outcome PROBE, nothing sent, no timer."""
    request = decode(
        b"\x00\x01ipxe.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00"
    )
    assert isinstance(request, ReadRequest)
    transfer = ReadTransfer(request, 1_000_000, FakeFile(b""))
    (oack,) = transfer.start(0.0)
    assert decode(oack) == OptionAck(
        (("tsize", "1000000"), ("blksize", "1468"), ("windowsize", "4"))
    )
    assert transfer.receive(b"\x00\x05\x00\x08User aborted\x00", 0.01) == []
    assert transfer.outcome is Outcome.PROBE
    assert transfer.next_deadline_s is None
    assert transfer.client_error == Error(8, "User aborted")


def test_error_8_without_tsize_is_a_client_error() -> None:
    """ERROR 8 to an OACK without tsize is a real refusal, not the size probe."""
    transfer = ReadTransfer(rrq(("blksize", "1468")), 100, FakeFile(content(100)))
    transfer.start(0.0)
    assert transfer.handle(Error(8, "no"), 0.1) == []
    assert transfer.outcome is Outcome.CLIENT_ERROR


def test_client_error_mid_transfer() -> None:
    """A client ERROR ends the transfer; later datagrams are ignored."""
    transfer = ReadTransfer(rrq(), 5000, FakeFile(content(5000)))
    transfer.start(0.0)
    transfer.receive(ack(1), 0.1)
    assert transfer.receive(b"\x00\x05\x00\x00disk full\x00", 0.2) == []
    assert transfer.outcome is Outcome.CLIENT_ERROR
    assert transfer.client_error == Error(0, "disk full")
    assert transfer.receive(ack(2), 0.3) == []
    assert transfer.handle(Error(8, "again"), 0.4) == []
    assert transfer.client_error == Error(0, "disk full")


def test_read_failure_ends_with_an_error() -> None:
    """A reader returning a short block (file changed, I/O error) ends with ERROR 0."""
    transfer = ReadTransfer(rrq(), 5000, lambda offset, length: b"")
    (error,) = transfer.start(0.0)
    assert decode(error) == Error(0, "read error")
    assert transfer.outcome is Outcome.READ_FAILED
    windowed = ReadTransfer(rrq(("windowsize", "4")), 5000, lambda offset, length: b"x")
    windowed.start(0.0)
    (error,) = windowed.receive(ack(0), 0.1)
    assert windowed.outcome is Outcome.READ_FAILED


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x00",
        b"\x00\x09",
        b"\x00\x04\x00",
        b"\x00\x03\x00\x01data",
        b"\x00\x01f\x00octet\x00",
        b"\x00\x02f\x00octet\x00",
        b"\x00\x06blksize\x00512\x00",
        b"\x01\x04\x00\x01",
    ],
)
def test_unexpected_datagrams_are_ignored(datagram: bytes) -> None:
    """Malformed datagrams and packets a reader never sends change nothing and are counted."""
    transfer = ReadTransfer(rrq(), 5000, FakeFile(content(5000)))
    (first,) = transfer.start(0.0)
    assert transfer.receive(datagram, 0.1) == []
    assert transfer.ignored == 1
    assert transfer.on_timeout(1.0) == [first]


# --------------------------------------------------------------------------- windows


def test_window_of_four_with_a_lost_block() -> None:
    """RFC 7440: the client ACKs the last in-order block; the server resends from there."""
    size = 20 * 512 + 5
    data = content(size)
    file = FakeFile(data)
    transfer = ReadTransfer(rrq(("windowsize", "4")), size, file)
    transfer.start(0.0)
    window = transfer.receive(ack(0), 0.1)
    assert blocks_of(window) == [1, 2, 3, 4]
    # Block 3 is lost: the client got 1, 2 (and 4, out of order) and acknowledges 2.
    resent = transfer.receive(ack(2), 0.2)
    assert blocks_of(resent) == [3, 4, 5, 6]
    assert resent[0] is window[2]  # reused, not rebuilt
    assert resent[1] is window[3]
    assert transfer.retransmitted == 2
    assert file.reads.count((2 * 512, 512)) == 1
    # The window completes; a late duplicate ACK 2 is ignored.
    assert blocks_of(transfer.receive(ack(6), 0.3)) == [7, 8, 9, 10]
    assert transfer.receive(ack(2), 0.31) == []
    # A timeout resends the whole window in flight.
    assert blocks_of(transfer.on_timeout(1.3)) == [7, 8, 9, 10]


def test_window_is_cut_at_the_last_block() -> None:
    """The final window holds only the blocks that remain, ending with the short block."""
    size = 5 * 512
    transfer = ReadTransfer(rrq(("windowsize", "4")), size, FakeFile(content(size)))
    transfer.start(0.0)
    assert blocks_of(transfer.receive(ack(0), 0.1)) == [1, 2, 3, 4]
    last = transfer.receive(ack(4), 0.2)
    assert blocks_of(last) == [5, 6]
    assert len(decode(last[-1]).payload) == 0  # type: ignore[union-attr]
    assert transfer.receive(ack(6), 0.3) == []
    assert transfer.outcome is Outcome.COMPLETED


def test_windowed_transfer_without_oack_ack_starts_at_block_1() -> None:
    """An ACK inside a window that is not its end is a partial ACK: resend after it."""
    size = 10 * 512
    transfer = ReadTransfer(rrq(("windowsize", "8")), size, FakeFile(content(size)))
    transfer.start(0.0)
    assert blocks_of(transfer.receive(ack(0), 0.1)) == list(range(1, 9))
    assert blocks_of(transfer.receive(ack(5), 0.2)) == [6, 7, 8, 9, 10, 11]


def test_msftwindow_variable_window() -> None:
    """bootmgr: msftwindow 31416 -> 27182; each ACK's extra byte sizes the next window."""
    request = decode(
        b"\x00\x01\\Boot\\x64\\boot.sdi\x00octet\x00tsize\x000\x00blksize\x001456\x00"
        b"windowsize\x004\x00msftwindow\x0031416\x00"
    )
    assert isinstance(request, ReadRequest)
    size = 200 * 1456
    transfer = ReadTransfer(request, size, FakeFile(content(size)))
    (oack,) = transfer.start(0.0)
    assert oack == (
        b"\x00\x06tsize\x00291200\x00blksize\x001456\x00windowsize\x004\x00msftwindow\x0027182\x00"
    )
    assert blocks_of(transfer.receive(ack(0, b"\x08"), 0.1)) == list(range(1, 9))
    assert transfer.window == 8
    assert blocks_of(transfer.receive(ack(8, b"\x02"), 0.2)) == [9, 10]
    assert blocks_of(transfer.handle(Ack(10, b"\xff"), 0.3)) == list(range(11, 75))
    assert transfer.window == 64  # capped at windowsize_max
    assert blocks_of(transfer.receive(ack(74, b"\x00"), 0.4)) == list(range(75, 139))


def test_extra_ack_byte_ignored_without_msftwindow() -> None:
    """Without msftwindow negotiated, trailing ACK bytes do not change the window."""
    size = 50 * 512
    transfer = ReadTransfer(rrq(("windowsize", "2")), size, FakeFile(content(size)))
    transfer.start(0.0)
    assert blocks_of(transfer.receive(ack(0, b"\x10"), 0.1)) == [1, 2]
    assert transfer.window == 2


def test_window_shrink_keeps_later_acks_valid() -> None:
    """After msftwindow shrinks the window, an ACK for a block sent earlier still counts."""
    request = rrq(("windowsize", "8"), ("msftwindow", "31416"))
    size = 100 * 512
    transfer = ReadTransfer(request, size, FakeFile(content(size)))
    transfer.start(0.0)
    assert blocks_of(transfer.receive(ack(0), 0.1)) == list(range(1, 9))
    # Partial ACK with a smaller next window: resend 3 and 4 only.
    assert blocks_of(transfer.receive(ack(2, b"\x02"), 0.2)) == [3, 4]
    # The client had in fact received up to 8 (from the first window).
    assert blocks_of(transfer.receive(ack(8, b"\x02"), 0.3)) == [9, 10]


# --------------------------------------------------------------------------- rollover


def run_lossless(transfer: ReadTransfer, windowsize: int) -> bytes:
    """Drive `transfer` with a perfect RFC 7440 client; return the bytes received."""
    received = bytearray()
    outgoing = transfer.start(0.0)
    expected = 1
    now_s = 0.0
    while transfer.outcome is None:
        assert outgoing
        last_wire = 0
        for datagram in outgoing:
            packet = decode(datagram)
            if isinstance(packet, OptionAck):
                continue
            assert isinstance(packet, Data)
            assert packet.block == expected & 0xFFFF
            received += packet.payload
            expected += 1
            last_wire = packet.block
        now_s += 0.0001
        outgoing = transfer.receive(ack(last_wire), now_s)
    assert transfer.outcome is Outcome.COMPLETED
    assert windowsize >= 1
    return bytes(received)


@pytest.mark.parametrize("windowsize", [1, 64])
def test_block_number_rollover(windowsize: int) -> None:
    """Past block 65535 the wire number wraps to 0 and ACKs keep matching (70,001 blocks)."""
    size = 8 * 70_000 + 3
    data = content(size)
    options = [("blksize", "8")] + ([("windowsize", str(windowsize))] if windowsize > 1 else [])
    transfer = ReadTransfer(rrq(*options), size, FakeFile(data))
    assert transfer.last_block == 70_001
    assert run_lossless(transfer, windowsize) == data


def test_rollover_wire_numbers() -> None:
    """Blocks 65535, 65536, 65537 go out as 65535, 0, 1; ACK 0 after the wrap is progress."""
    size = 8 * 65_540
    transfer = ReadTransfer(rrq(("blksize", "8")), size, lambda offset, length: b"\xaa" * length)
    transfer.start(0.0)
    transfer.receive(ack(0), 0.0)
    for block in range(1, 65_534):
        transfer.receive(ack(block), 0.0)
    assert blocks_of(transfer.receive(ack(65_534), 0.0)) == [65_535]
    assert blocks_of(transfer.receive(ack(65_535), 0.0)) == [0]
    assert blocks_of(transfer.receive(ack(0), 0.0)) == [1]
    assert transfer.blocks_acked == 65_536
    # A stale ACK 65535 (from before the wrap) is a duplicate, not progress.
    assert transfer.receive(ack(65_535), 0.0) == []


# --------------------------------------------------------------------------- lossy link


CLIENT_TIMEOUT_S = 0.15
"""The client model re-sends its last ACK after this long without progress."""


@dataclass
class ClientModel:
    """A reader as real firmware behaves. Lock-step (RFC 1350): ACK every DATA, duplicates
    included. Windowed (RFC 7440 §4): ACK each complete window and the final block; on a gap
    ACK the last block held in order, once until progress; ignore old duplicates; re-send
    the last ACK on its own timeout. Once done it re-ACKs the final block whenever it returns.
    `eager` makes a windowed client ACK every duplicate too (a badly behaved client)."""

    blksize: int
    windowsize: int
    eager: bool = False
    received: bytearray = field(default_factory=bytearray)
    expected: int = 1
    in_window: int = 0
    done: bool = False
    gap_acked: bool = False
    deadline_s: float | None = None

    def on_datagram(self, datagram: bytes, now_s: float) -> list[bytes]:
        packet = decode(datagram)
        if isinstance(packet, OptionAck):
            return [] if self.expected > 1 else self._ack(now_s)
        assert isinstance(packet, Data)
        if self.done:
            return [ack(self.expected - 1)]
        offset = (packet.block - self.expected) & 0xFFFF
        if offset == 0:
            return self._in_order(packet, now_s)
        old = offset >= 0x8000
        if self.windowsize == 1 or (old and self.eager) or (not old and not self.gap_acked):
            self.gap_acked = not old
            self.in_window = 0
            return self._ack(now_s)
        return []

    def on_timeout(self, now_s: float) -> list[bytes]:
        self.in_window = 0
        return self._ack(now_s)

    def _in_order(self, packet: Data, now_s: float) -> list[bytes]:
        self.received += packet.payload
        self.expected += 1
        self.in_window += 1
        self.gap_acked = False
        if len(packet.payload) < self.blksize:
            self.done = True
            self.deadline_s = None
            return [ack(packet.block)]
        if self.in_window >= self.windowsize:
            self.in_window = 0
            return self._ack(now_s)
        return []

    def _ack(self, now_s: float) -> list[bytes]:
        self.deadline_s = now_s + CLIENT_TIMEOUT_S
        return [ack(self.expected - 1)]


LINK_DELAY_S = 0.005
"""One-way delay of the simulated link; a reordered datagram waits up to twice as long."""


def simulate(
    transfer: ReadTransfer,
    client: ClientModel,
    seed: int,
    *,
    loss: float,
    duplicate: float,
    reorder: float = 0.0,
) -> int:
    """Run both ends over a link that drops, duplicates and reorders; return DATA/OACK sent."""
    rng = random.Random(f"tftp-link:{seed}")
    queue: list[tuple[float, int, str, bytes]] = []
    sequence = 0
    sent = 0

    def delay_s() -> float:
        late = rng.uniform(0, 2 * LINK_DELAY_S) if rng.random() < reorder else 0.0
        return LINK_DELAY_S + late

    def transmit(now_s: float, target: str, datagrams: list[bytes]) -> None:
        nonlocal sequence, sent
        for datagram in datagrams:
            sent += target == "client"
            copies = 0 if rng.random() < loss else 1 + (rng.random() < duplicate)
            for _ in range(copies):
                sequence += 1
                heapq.heappush(queue, (now_s + delay_s(), sequence, target, datagram))

    transmit(0.0, "client", transfer.start(0.0))
    steps = 0
    while transfer.outcome is None:
        steps += 1
        assert steps < 50_000, "the transfer neither completes nor gives up"
        server_deadline_s = transfer.next_deadline_s
        assert server_deadline_s is not None
        client_deadline_s = client.deadline_s or float("inf")
        if queue and queue[0][0] <= min(server_deadline_s, client_deadline_s):
            now_s, _, target, datagram = heapq.heappop(queue)
            if target == "client":
                transmit(now_s, "server", client.on_datagram(datagram, now_s))
            else:
                transmit(now_s, "client", transfer.receive(datagram, now_s))
        elif client_deadline_s < server_deadline_s:
            transmit(client_deadline_s, "server", client.on_timeout(client_deadline_s))
        else:
            transmit(server_deadline_s, "client", transfer.on_timeout(server_deadline_s))
    return sent


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 40 * 64),
    blksize=st.sampled_from([8, 64, 512]),
    windowsize=st.sampled_from([1, 2, 4, 16]),
    loss=st.sampled_from([0.0, 0.05, 0.2]),
    duplicate=st.sampled_from([0.0, 0.1, 0.5]),
    reorder=st.sampled_from([0.0, 0.1]),
    eager=st.booleans(),
)
def test_lossy_link_delivers_the_file(
    *,
    eager: bool,
    seed: int,
    size: int,
    blksize: int,
    windowsize: int,
    loss: float,
    duplicate: float,
    reorder: float,
) -> None:
    """Over a link with loss, duplication and reordering, the client gets the exact file
    (also a client that ACKs every duplicate block, which costs resends but still ends)."""
    data = content(size)
    options = (("blksize", str(blksize)), ("windowsize", str(windowsize)))
    config = TransferConfig(retries_max=40, retransmit_timeout_s=0.1)
    transfer = ReadTransfer(rrq(*options), size, FakeFile(data), config)
    client = ClientModel(blksize, windowsize, eager)
    simulate(transfer, client, seed, loss=loss, duplicate=duplicate, reorder=reorder)
    assert transfer.outcome is Outcome.COMPLETED
    assert client.done
    assert bytes(client.received) == data


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(0, 200 * 64))
def test_duplicated_acks_never_multiply_lock_step_sends(seed: int, size: int) -> None:
    """No loss but heavy duplication: in lock-step every block goes out exactly once."""
    data = content(size)
    transfer = ReadTransfer(rrq(("blksize", "64")), size, FakeFile(data))
    client = ClientModel(64, 1)
    sent = simulate(transfer, client, seed, loss=0.0, duplicate=0.5, reorder=0.2)
    assert bytes(client.received) == data
    assert sent == transfer.last_block + 1  # the OACK plus each block once
    assert transfer.retransmitted == 0


# --------------------------------------------------------------------------- speed


def test_per_packet_cost_64_mib(record_property: Callable[[str, object], None]) -> None:
    """A full 64 MiB lock-step transfer at blksize 1468 runs in-process far above 45k pkt/s."""
    size = 64 * 1024 * 1024
    chunk = content(1468)
    acks = [ack(block) for block in range(65536)]
    transfer = ReadTransfer(
        rrq(("blksize", "1468"), ("tsize", "0")), size, lambda offset, length: chunk[:length]
    )
    receive = transfer.receive
    outgoing = transfer.start(0.0)
    packets = 0
    started = time.perf_counter()
    while outgoing:
        datagram = outgoing[0]
        packets += 1
        outgoing = receive(acks[(datagram[2] << 8) | datagram[3] if datagram[1] == 3 else 0], 0.0)
    elapsed_s = time.perf_counter() - started
    assert transfer.outcome is Outcome.COMPLETED
    assert packets == size // 1468 + 2  # OACK + blocks (the last one short)
    rate = packets / elapsed_s
    record_property("tftp_packets_per_s", round(rate))
    print(f"\nTFTP transfer logic: {rate:,.0f} packets/s, {1e6 / rate:.2f} us/packet")
    # The real server must sustain ~45k packets/s including two system calls per packet;
    # the logic alone must leave most of the budget to them.
    assert rate > 100_000


def test_default_config_is_sane() -> None:
    """The defaults match the notes: 1468-byte blocks, windows up to 64, 1 s x 5 retries."""
    assert (DEFAULT_CONFIG.blksize_max, DEFAULT_CONFIG.windowsize_max) == (1468, 64)
    assert (DEFAULT_CONFIG.retransmit_timeout_s, DEFAULT_CONFIG.retries_max) == (1.0, 5)
    assert DEFAULT_CONFIG.msftwindow
    assert encode(Ack(1)) == ack(1)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 40 * 64),
    blksize=st.sampled_from([8, 64, 512]),
    steps=st.lists(
        st.one_of(
            st.sampled_from(["next", "next", "next", "timeout", "timeout", "previous"]),
            st.integers(-1, 45),
        ),
        max_size=150,
    ),
)
@example(size=2000, blksize=64, steps=["timeout"] * 3 + ["next"] + ["timeout"] * 4)
def test_lockstep_fast_path_equals_the_general_path(
    size: int, blksize: int, steps: list[str | int]
) -> None:
    """`receive`'s lock-step shortcut answers every sequence (the ACK of the block just
    sent, duplicates, old and future blocks, a short datagram, timeouts, the end) exactly
    as the general path does."""
    data = content(size)

    def reader(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    request = rrq(("blksize", str(blksize)), ("tsize", "0"))
    fast, general = ReadTransfer(request, size, reader), ReadTransfer(request, size, reader)
    general._lockstep = False  # the reference: the shortcut turned off
    now_s = 0.0
    assert fast.start(now_s) == general.start(now_s)
    sent = 0
    for step in steps:
        now_s += 0.25
        if step == "timeout":
            now_s += 1.0
            assert fast.on_timeout(now_s) == general.on_timeout(now_s)
            continue
        block = {"next": sent, "previous": sent - 1}.get(str(step), step)
        assert isinstance(block, int)
        datagram = ack(block % 65536) if block >= 0 else b"\x00\x04\x00"
        answer = fast.receive(datagram, now_s)
        assert answer == general.receive(datagram, now_s)
        if answer and answer[-1][:2] == b"\x00\x03":
            sent = struct.unpack_from(">H", answer[-1], 2)[0]
        assert (fast.outcome, fast.next_deadline_s) == (general.outcome, general.next_deadline_s)
        assert (fast.blocks_acked, fast.retransmitted) == (
            general.blocks_acked,
            general.retransmitted,
        )
