"""Canonical run trace: one line per record, hashed incrementally into a digest.

A record is `"<time_us> <node> <kind> <detail>\\n"`: simulated time rounded to whole
microseconds (never wall-clock time), the node id (or `-` for the world), a short kind
(`rx`, `drop`, `member`, `crash`, ...) and a free-form detail built only from deterministic
values. The sha256 of all records in order is the run's digest: the same scenario and seed
give the same digest in any process, whatever `PYTHONHASHSEED` is. Records are kept in
memory only when asked (`keep=True`), for `--trace` output and debugging.
"""

from __future__ import annotations

import hashlib

FLUSH_RECORDS = 2048
"""Records buffered before they are hashed: sha256 over their concatenation is the same
digest as record by record, for a fraction of the calls."""


class Trace:
    """Appends canonical records and maintains their running sha256."""

    __slots__ = ("_buffer", "_hash", "count", "records")

    def __init__(self, keep: bool = False) -> None:
        self._hash = hashlib.sha256()
        self._buffer: list[str] = []
        self.count = 0
        self.records: list[str] | None = [] if keep else None

    def record(self, time_s: float, node: str, kind: str, detail: str) -> None:
        """Append one record at simulated time `time_s`."""
        line = f"{round(time_s * 1_000_000)} {node} {kind} {detail}\n"
        buffer = self._buffer
        buffer.append(line)
        self.count += 1
        if self.records is not None:
            self.records.append(line)
        if len(buffer) >= FLUSH_RECORDS:
            self._flush()

    def digest(self) -> str:
        """Hex sha256 of every record so far."""
        self._flush()
        return self._hash.hexdigest()

    def _flush(self) -> None:
        self._hash.update("".join(self._buffer).encode())
        self._buffer.clear()
