"""Which chunks of a package a peer holds: a BEP 3 bitfield, and how a manifest numbers chunks.

A package's chunks are numbered in manifest order: the files sorted by path (as `Manifest`
keeps them), then each file's chunks in order. Chunk `i` is bit `i` of the bitfield as in BEP 3's
`bitfield` message: the first byte holds chunks 0-7 from its high bit to its low bit, the
next byte 8-15, and so on; spare bits after the last chunk are zero.

On the wire a bitfield travels in segments of `SEGMENT_CHUNKS` chunks (`SEGMENT_BYTES`
bytes), each one `Have` message, so the largest package (`CHUNKS_MAX` chunks) fits in
`CHUNKS_MAX // SEGMENT_CHUNKS` datagrams; trailing zero bytes of a segment are left out (a
peer that holds nothing sends an empty segment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from actors.package import Manifest

SEGMENT_BYTES: Final = 512
"""Bitfield bytes per `Have`: with a 64-character package name, a long version and site name
a `Have` stays under the envelope's body budget (`actors.envelope.MAX_BODY_BYTES`)."""
SEGMENT_CHUNKS: Final = SEGMENT_BYTES * 8
CHUNKS_MAX: Final = 1 << 16
"""Largest package replicated, in chunks (1 TiB at the 16 MiB chunk maximum): 8 KiB of
bitfield per peer, 16 `Have` segments."""

_POPCOUNT: Final = tuple(bin(value).count("1") for value in range(256))


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """Where chunk number `number` of a package lives: file, index in the file, length."""

    number: int
    file_index: int
    chunk_index: int
    path: str
    size_bytes: int


def chunk_table(manifest: Manifest) -> tuple[ChunkRef, ...]:
    """Every chunk of `manifest`, numbered in manifest order."""
    table: list[ChunkRef] = []
    for file_index, entry in enumerate(manifest.files):
        for chunk_index in range(len(entry.chunk_sha256)):
            size_bytes = manifest.chunk_length(entry, chunk_index)
            table.append(ChunkRef(len(table), file_index, chunk_index, entry.path, size_bytes))
    return tuple(table)


def bitmap_from_missing(manifest: Manifest, missing: list[tuple[str, int]]) -> bytes:
    """The bitfield of the chunks held, from the store's `missing_chunks()` (path, index)."""
    absent = dict.fromkeys(missing)
    held = Bitfield(manifest.chunk_count)
    for ref in chunk_table(manifest):
        if (ref.path, ref.chunk_index) not in absent:
            held.set(ref.number)
    return held.to_bytes()


class Bitfield:
    """A fixed number of bits, high bit first (BEP 3); spare bits stay zero."""

    __slots__ = ("_bits", "_count", "size")

    def __init__(self, size: int) -> None:
        assert 0 <= size <= CHUNKS_MAX
        self.size = size
        self._bits = bytearray((size + 7) // 8)
        self._count = 0

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> Bitfield:
        """A bitfield of `size` bits from `data` (shorter: zero-filled; spare bits ignored)."""
        bitfield = cls(size)
        bitfield._write(0, data, len(bitfield._bits))
        return bitfield

    @classmethod
    def full(cls, size: int) -> Bitfield:
        """Every bit set."""
        bitfield = cls(size)
        bitfield.fill()
        return bitfield

    def __contains__(self, number: int) -> bool:
        """Whether bit `number` is set."""
        return bool(self._bits[number >> 3] & (0x80 >> (number & 7)))

    def count(self) -> int:
        """How many bits are set."""
        return self._count

    def set(self, number: int) -> bool:
        """Set bit `number`; True if it was clear."""
        assert 0 <= number < self.size
        mask = 0x80 >> (number & 7)
        if self._bits[number >> 3] & mask:
            return False
        self._bits[number >> 3] |= mask
        self._count += 1
        return True

    def clear(self, number: int) -> bool:
        """Clear bit `number`; True if it was set."""
        assert 0 <= number < self.size
        mask = 0x80 >> (number & 7)
        if not self._bits[number >> 3] & mask:
            return False
        self._bits[number >> 3] &= ~mask & 0xFF
        self._count -= 1
        return True

    def fill(self) -> list[tuple[int, bool]]:
        """Set every bit; return the changes as `write_segment` does."""
        return self._write(0, b"\xff" * len(self._bits), len(self._bits))

    def numbers(self) -> list[int]:
        """The set bits, ascending."""
        found: list[int] = []
        for offset, byte in enumerate(self._bits):
            if byte:
                base = offset * 8
                found.extend(base + bit for bit in range(8) if byte & (0x80 >> bit))
        return found

    def to_bytes(self) -> bytes:
        """The whole bitfield, `ceil(size / 8)` bytes."""
        return bytes(self._bits)

    def segment(self, first: int) -> bytes:
        """The `SEGMENT_BYTES` bytes from bit `first` on, without trailing zero bytes."""
        assert first % SEGMENT_CHUNKS == 0
        start = first // 8
        return bytes(self._bits[start : start + SEGMENT_BYTES]).rstrip(b"\x00")

    def write_segment(self, first: int, data: bytes) -> list[tuple[int, bool]]:
        """Replace the segment from bit `first` with `data` (zero-filled); return the changes.

        Each change is `(number, now_set)`. Bits past `size` are ignored, so they stay zero.
        """
        assert first % SEGMENT_CHUNKS == 0
        return self._write(first // 8, data, SEGMENT_BYTES)

    def _write(self, start: int, data: bytes, span_bytes: int) -> list[tuple[int, bool]]:
        """Replace `span_bytes` bytes from byte `start` (capped at the end) with `data`."""
        length = max(min(span_bytes, len(self._bits) - start), 0)
        incoming = bytearray(data[:length].ljust(length, b"\x00"))
        if length and start + length == len(self._bits):
            incoming[-1] &= self._last_byte_mask()
        if self._bits[start : start + length] == incoming:
            return []  # the common case: a periodic advertisement that changes nothing
        changes: list[tuple[int, bool]] = []
        for offset, new in enumerate(incoming):
            old = self._bits[start + offset]
            if old != new:
                changes.extend(self._byte_changes((start + offset) * 8, old, new))
                self._count += _POPCOUNT[new] - _POPCOUNT[old]
        self._bits[start : start + length] = incoming
        return changes

    def _last_byte_mask(self) -> int:
        spare = len(self._bits) * 8 - self.size
        return (0xFF << spare) & 0xFF

    @staticmethod
    def _byte_changes(base: int, old: int, new: int) -> list[tuple[int, bool]]:
        flipped = old ^ new
        return [
            (base + bit, bool(new & (0x80 >> bit))) for bit in range(8) if flipped & (0x80 >> bit)
        ]
