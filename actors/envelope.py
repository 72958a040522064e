"""Authenticated envelope around every peer message: sender, epoch, counter, HMAC-SHA256.

Theory of operation
-------------------
Wire layout (msgpack)::

    envelope = [header: bin, mac: bin(32)]
    header   = [WIRE_VERSION, sender_id, epoch, counter, body: bin]   (packed bytes)
    mac      = HMAC-SHA256(cluster_key, header)                        (RFC 2104)
    body     = actors.codec.encode(message)

The MAC is checked over the raw header bytes before the header is parsed, so garbage and
forgeries cost one HMAC and no unpacking. A peer without the cluster key can neither join
nor speak.

Speed: the layout is plain msgpack, but the hot paths do not run msgpack over it. `seal`
joins bytes: the header's first three items (`WIRE_VERSION`, sender, epoch) never change in
one process life, so they are packed once; the outer array is `0x92`, the header as `bin 8`
or `bin 16`, then `0xc4 0x20` and the MAC, exactly the bytes `msgpack.packb` would write.
`open` slices that canonical outer form directly and falls back to a full, strict unpack for
any other encoding, so every input is accepted or refused exactly as by msgpack itself.

Replay protection follows the IPsec anti-replay window (RFC 4303 §3.4.3): each sender
numbers its envelopes 0, 1, 2, ... within an *epoch*, a number that grows every time the
sender process starts (the host derives it from the wall clock in the real world and from
the restart count in the simulator). The receiver keeps, per sender, the highest epoch seen,
the highest counter in it and a bitmap of the last `REPLAY_WINDOW` counters. It refuses an
older epoch, a counter below the window, and a counter already marked: so a captured
envelope can be delivered once at most, also after the sender restarts. Only authenticated
envelopes touch this state, so forgers cannot fill it.

Failures raise `AuthenticationError` (with a short `reason` for counters) or `DecodeError`;
the host drops and counts them.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

import msgpack

from actors import codec
from actors.core import NODE_ID_BYTES_MAX, NodeId
from actors.errors import AuthenticationError, DecodeError
from actors.messages import Message

MAC_BYTES: Final = 32  # HMAC-SHA256 output size (RFC 2104, FIPS 180-4)
REPLAY_WINDOW: Final = 64  # counters remembered per sender (RFC 4303 §3.4.3 default is 64)
ENVELOPE_OVERHEAD_BYTES_MAX: Final = 16 + NODE_ID_BYTES_MAX + 9 + 9 + 5 + MAC_BYTES + 5
"""Worst-case bytes the envelope adds around a body (array headers, id, two uint64, mac)."""
MAX_BODY_BYTES: Final = codec.MAX_DATAGRAM_BYTES - ENVELOPE_OVERHEAD_BYTES_MAX
"""The largest encoded message that still fits one datagram once sealed."""
CLUSTER_KEY_BYTES_MIN: Final = 16
TRACKED_SENDERS_MAX: Final = 100_000
"""Bound on replay state; the oldest-seen sender is forgotten first beyond this."""


@dataclass(slots=True)
class _ReplayWindow:
    epoch: int
    highest: int
    seen_bits: int  # bit i set: counter (highest - i) was accepted


class WireSecurity:
    """Seals outgoing messages and opens incoming envelopes for one peer."""

    def __init__(self, node_id: NodeId, cluster_key: bytes, epoch: int) -> None:
        assert len(node_id.encode()) <= NODE_ID_BYTES_MAX, "node id too long"
        assert len(cluster_key) >= CLUSTER_KEY_BYTES_MIN, "cluster key too short"
        assert epoch >= 0
        self.node_id = node_id
        # HMAC state after the key's inner and outer blocks, copied per envelope: cheaper than
        # keying a fresh HMAC each time (same result, RFC 2104).
        self._keyed_mac = hmac.new(cluster_key, digestmod=hashlib.sha256)
        self._epoch = epoch
        self._next_counter = 0
        self._windows: dict[NodeId, _ReplayWindow] = {}
        version_sender_epoch = msgpack.packb([codec.WIRE_VERSION, node_id, epoch])
        self._header_prefix: bytes = b"\x95" + version_sender_epoch[1:]  # fixarray 3 -> 5

    def seal(self, message: Message) -> bytes:
        """Encode `message` and wrap it in a fresh authenticated envelope."""
        body = codec.encode(message)
        assert len(body) <= MAX_BODY_BYTES, f"{message.TAG} body of {len(body)} bytes too big"
        counter = self._next_counter
        self._next_counter = counter + 1
        header = b"".join((self._header_prefix, _pack_uint(counter), _bin_prefix(len(body)), body))
        keyed = self._keyed_mac.copy()
        keyed.update(header)
        return b"".join((b"\x92", _bin_prefix(len(header)), header, _MAC_PREFIX, keyed.digest()))

    def open(self, data: bytes) -> tuple[NodeId, Message]:
        """Authenticate, check freshness and decode; raise on anything wrong."""
        header = self._authenticated_header(data)
        sender, epoch, counter, body = self._parse_header(header)
        if sender == self.node_id:
            raise AuthenticationError("own_message")
        message = codec.decode(body, max_bytes=MAX_BODY_BYTES)
        self._accept_fresh(sender, epoch, counter)
        return sender, message

    def forget(self, sender: NodeId) -> None:
        """Drop replay state of a sender that left for good (state is rebuilt on contact)."""
        self._windows.pop(sender, None)

    def _authenticated_header(self, data: bytes) -> bytes:
        size = len(data)
        if size > codec.MAX_DATAGRAM_BYTES:
            raise DecodeError(f"oversize envelope: {size} bytes")
        parts = _split_canonical(data, size)
        header, mac = parts if parts is not None else _split_any(data)
        keyed = self._keyed_mac.copy()
        keyed.update(header)
        if not hmac.compare_digest(keyed.digest(), mac):
            raise AuthenticationError("bad_mac")
        return header

    @staticmethod
    def _parse_header(header: bytes) -> tuple[NodeId, int, int, bytes]:
        fields = codec.unpack_plain(header)
        if not isinstance(fields, tuple) or len(fields) != 5:
            raise DecodeError("header is not [version, sender, epoch, counter, body]")
        version, sender, epoch, counter, body = fields
        if type(version) is not int or version != codec.WIRE_VERSION:  # refuse True and 1.0
            raise DecodeError(f"unsupported wire version {version!r}")
        if not isinstance(sender, str) or not 0 < len(sender.encode()) <= NODE_ID_BYTES_MAX:
            raise DecodeError("bad sender id")
        if not _is_uint(epoch) or not _is_uint(counter):
            raise DecodeError("bad epoch or counter")
        if not isinstance(body, bytes):
            raise DecodeError("body is not binary")
        return sender, epoch, counter, body

    def _accept_fresh(self, sender: NodeId, epoch: int, counter: int) -> None:
        window = self._windows.get(sender)
        if window is None or epoch > window.epoch:
            self._remember(sender, _ReplayWindow(epoch=epoch, highest=counter, seen_bits=1))
            return
        if epoch < window.epoch:
            raise AuthenticationError("stale_epoch")
        if counter > window.highest:
            shift = counter - window.highest
            # A jump past the window forgets it whole: shifting by up to 2**64 bits first
            # would allocate that many bits (MemoryError) just to mask them away.
            seen_bits = (window.seen_bits << shift) & _WINDOW_MASK if shift < REPLAY_WINDOW else 0
            window.seen_bits = seen_bits | 1
            window.highest = counter
            return
        offset = window.highest - counter
        if offset >= REPLAY_WINDOW or window.seen_bits >> offset & 1:
            raise AuthenticationError("replayed")
        window.seen_bits |= 1 << offset

    def _remember(self, sender: NodeId, window: _ReplayWindow) -> None:
        self._windows.pop(sender, None)
        if len(self._windows) >= TRACKED_SENDERS_MAX:
            oldest = next(iter(self._windows))
            del self._windows[oldest]
        self._windows[sender] = window


_WINDOW_MASK: Final = (1 << REPLAY_WINDOW) - 1
_MAC_PREFIX: Final = b"\xc4" + bytes([MAC_BYTES])  # msgpack bin 8 of 32 bytes
_BIN8_MAX: Final = 0xFF


def _pack_uint(value: int) -> bytes:
    """A non-negative int in msgpack's smallest encoding, as `msgpack.packb` writes it."""
    if value < 0x80:
        return bytes((value,))  # positive fixint
    if value <= 0xFF:
        return bytes((0xCC, value))
    if value <= 0xFFFF:
        return b"\xcd" + value.to_bytes(2, "big")
    if value <= 0xFFFF_FFFF:
        return b"\xce" + value.to_bytes(4, "big")
    return b"\xcf" + value.to_bytes(8, "big")


def _bin_prefix(size: int) -> bytes:
    """The msgpack `bin` header of a `size`-byte value, as `msgpack.packb` writes it."""
    if size <= _BIN8_MAX:
        return bytes((0xC4, size))
    assert size <= 0xFFFF, "envelope parts are far below 64 KiB"
    return b"\xc5" + size.to_bytes(2, "big")


def _split_canonical(data: bytes, size: int) -> tuple[bytes, bytes] | None:
    """(header, mac) of `[bin header, bin8 mac]` in msgpack's canonical form, else None."""
    if size < 4 + MAC_BYTES or data[0] != 0x92:
        return None
    marker = data[1]
    if marker == 0xC4:
        start = 3
        end = start + data[2]
    elif marker == 0xC5:
        start = 4
        end = start + int.from_bytes(data[2:4], "big")
    else:
        return None
    if size != end + 2 + MAC_BYTES or data[end : end + 2] != _MAC_PREFIX:
        return None
    return data[start:end], data[end + 2 :]


def _split_any(data: bytes) -> tuple[bytes, bytes]:
    """(header, mac) of any msgpack encoding of `[bin, bin]`; DecodeError otherwise."""
    outer = codec.unpack_plain(data)
    if not isinstance(outer, tuple) or len(outer) != 2:
        raise DecodeError("envelope is not [header, mac]")
    header, mac = outer
    if not isinstance(header, bytes) or not isinstance(mac, bytes):
        raise DecodeError("envelope fields are not binary")
    return header, mac


_UINT64_MAX: Final = (1 << 64) - 1


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _UINT64_MAX
