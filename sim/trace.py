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


class Trace:
    """Appends canonical records and maintains their running sha256."""

    __slots__ = ("_hash", "count", "records")

    def __init__(self, keep: bool = False) -> None:
        self._hash = hashlib.sha256()
        self.count = 0
        self.records: list[str] | None = [] if keep else None

    def record(self, time_s: float, node: str, kind: str, detail: str) -> None:
        """Append one record at simulated time `time_s`."""
        line = f"{round(time_s * 1_000_000)} {node} {kind} {detail}\n"
        self._hash.update(line.encode())
        self.count += 1
        if self.records is not None:
            self.records.append(line)

    def digest(self) -> str:
        """Hex sha256 of every record so far."""
        return self._hash.hexdigest()
