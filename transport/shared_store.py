"""A `ContentStore` shared by the chunk server, the fetcher workers and the composition root.

`ContentStore` is not thread-safe (one owner at a time), but the chunk service touches it
from several threads: the server thread reads chunks for peers, the fetcher's workers write
what they fetched and complete the package, the composition root stages a new manifest.
`SharedStore` holds one lock around each store call. The lock covers disk I/O only (reads,
fsynced writes, and `complete()`, which assembles every file: serving pauses for that long);
callers never hold it across network I/O. `store_chunk` reports its outcome, and the
completion it may cause, while holding it (a non-blocking pykka `tell`), so `ChunkStored`
events of concurrent workers always reach the actor before `PackageComplete`; the
inventory listener is called after the lock is released.

It also turns the store's answers into the events the replication actor expects
(`ManifestAccepted`, `ChunksHeld`, `ChunkStored`, `ChunkRefused`, `ChunkFetchFailed`,
`PackageComplete`), and keeps the staged package's missing chunks as a set of digests, so
noticing the last chunk costs O(1) per chunk instead of a scan of the manifest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from actors.bitfield import bitmap_from_missing
from actors.core import (
    ChunkFetchFailed,
    ChunkRefused,
    ChunksHeld,
    ChunkStored,
    Event,
    FetchChunk,
    ManifestAccepted,
    PackageComplete,
)
from actors.package import Manifest
from transport.content_store import ChunkWrite, ContentStore, ContentStoreError, Refusal

_LOG = logging.getLogger(__name__)

NOT_STAGED: Final = "not_staged"
"""`ChunkFetchFailed.reason` for a chunk of a package the store is not fetching (stale)."""


class SharedStore:
    """A `ContentStore` behind one lock, for the server thread, fetchers and composition root.

    `listener` (set with `set_listener`) hears `ChunksHeld` when the store's view of the
    staged package changed other than by a fetch (a stored chunk found corrupt and dropped).
    """

    def __init__(self, store: ContentStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._listener: Callable[[Event], None] | None = None
        self._on_complete: Callable[[], None] | None = None
        self._missing: dict[bytes, None] | None = None
        """Digests of staged chunks not stored yet; None: recompute from the store."""

    def set_listener(self, listener: Callable[[Event], None] | None) -> None:
        """Tell `listener` about inventory changes from now on."""
        self._listener = listener

    def set_completion_listener(self, listener: Callable[[], None] | None) -> None:
        """Call `listener` (non-blocking, any thread) whenever a package completes."""
        self._on_complete = listener

    def collect(self, keep: int) -> list[str]:
        """`ContentStore.collect`, under the lock: the ids of the packages removed."""
        with self._lock:
            return self._store.collect(keep)

    def stage(self, signed_manifest: bytes) -> list[Event]:
        """Begin (or resume) fetching a package; the events its replication actor must hear.

        Raises what `ContentStore.begin` raises (`PackageError`, `QuotaExceeded`).
        """
        with self._lock:
            manifest = self._store.begin(signed_manifest)
            self._missing = None
            bitmap = bitmap_from_missing(manifest, self._store.missing_chunks())
        events: list[Event] = [ManifestAccepted(manifest), ChunksHeld(manifest.package_id, bitmap)]
        return events + self.finish(manifest.package_id)

    def announce(self) -> list[Event]:
        """What a replication actor must hear at start: the package being fetched (resumed
        after a restart, with what is already on disk), else the newest complete one."""
        with self._lock:
            staged = self._store.staged()
            events: list[Event] = []
            if staged is not None:
                self._missing = None
                events = [ManifestAccepted(staged), self._inventory(staged)]
        if staged is None:
            return self.announce_current()
        return events + self.finish(staged.package_id)

    def served_root(self) -> Path | None:
        """`ContentStore.served_root`: the current verified package's tree."""
        with self._lock:
            return self._store.served_root()

    def announce_current(self) -> list[Event]:
        """What a replication actor must hear when the store already holds its package."""
        with self._lock:
            manifest = self._store.current()
        if manifest is None:
            return []
        bitmap = bitmap_from_missing(manifest, [])
        return [
            ManifestAccepted(manifest),
            ChunksHeld(manifest.package_id, bitmap),
            PackageComplete(manifest.package_id),
        ]

    def signed_manifest(self, package_id: str = "") -> bytes | None:
        """`ContentStore.signed_manifest`, under the lock (raises `OSError` if unreadable)."""
        with self._lock:
            return self._store.signed_manifest(package_id)

    def offer(self, signed_manifest: bytes) -> tuple[str, list[Event]]:
        """A manifest fetched from a peer: its package id, and the events of staging it
        (none when this store already holds that package, complete or staged).

        Raises what `stage` raises (`PackageError` with the reason, `QuotaExceeded`).
        """
        with self._lock:
            manifest = self._store.verify(signed_manifest)
            if self._store.holds(manifest.package_id):
                return manifest.package_id, []
        return manifest.package_id, self.stage(signed_manifest)

    def current(self) -> Manifest | None:
        """The newest complete, verified package."""
        with self._lock:
            return self._store.current()

    def missing_chunks(self) -> list[tuple[str, int]]:
        """`ContentStore.missing_chunks`, under the lock."""
        with self._lock:
            return self._store.missing_chunks()

    def expects(self, package_id: str) -> bool:
        """Whether a chunk of `package_id` would be stored (it is the staged package)."""
        with self._lock:
            staged = self._store.staged()
        return staged is not None and staged.package_id == package_id

    def read_chunk(self, package_id: str, path: str, index: int) -> bytes | None:
        """A verified chunk of the named complete or staged package, else None."""
        with self._lock:
            corrupt_before = self._store.refusals[Refusal.CORRUPT_ON_DISK]
            data = self._store.read_chunk(path, index, package_id)
            dropped = self._store.refusals[Refusal.CORRUPT_ON_DISK] > corrupt_before
            staged = self._store.staged()
            event = None
            if dropped and staged is not None and staged.package_id == package_id:
                self._missing = None
                event = self._inventory(staged)
        self._announce(event)
        return data

    def store_chunk(self, fetch: FetchChunk, data: bytes, report: Callable[[Event], None]) -> Event:
        """Have the store verify and write a fetched chunk; complete the package after its last.

        `report` hears the outcome (`ChunkStored`, `ChunkRefused`, `ChunkFetchFailed`), then
        `PackageComplete` or, if assembling found a stored chunk corrupt, `ChunksHeld`, all
        while the lock is held: so a `ChunkStored` always reaches the actor before the
        completion it led to, whichever worker completes. `report` must not block (a pykka
        `tell`). Returns the outcome; raises `OSError` (nothing reported) if writing failed.
        """
        with self._lock:
            outcome = self._write(fetch, data)
            report(outcome)
            if isinstance(outcome, ChunkStored):
                for event in self._finish_locked(fetch.package_id):
                    report(event)
        return outcome

    def finish(self, package_id: str) -> list[Event]:
        """Complete `package_id` if the store holds every chunk: `PackageComplete`, or the
        inventory again if assembling found a stored chunk corrupt."""
        with self._lock:
            return self._finish_locked(package_id)

    def _write(self, fetch: FetchChunk, data: bytes) -> Event:
        staged = self._store.staged()
        if staged is None or staged.package_id != fetch.package_id:
            current = self._store.current()
            if current is not None and current.package_id == fetch.package_id:
                return ChunkStored(fetch)  # already complete: the chunk is held
            return ChunkFetchFailed(fetch, NOT_STAGED)
        before = dict(self._store.refusals)
        outcome = self._store.write_chunk(fetch.path, fetch.chunk_index, data)
        if outcome is ChunkWrite.REFUSED:
            grown = [reason for reason, n in self._store.refusals.items() if n > before[reason]]
            return ChunkRefused(fetch, grown[0].value if grown else "refused")
        self._forget_missing(staged, fetch.path, fetch.chunk_index)
        return ChunkStored(fetch)

    def _finish_locked(self, package_id: str) -> list[Event]:
        staged = self._store.staged()
        if staged is None or staged.package_id != package_id:
            return []
        if self._missing is None:
            self._missing = self._missing_digests(staged)
        if self._missing or self._store.missing_chunks():
            return []
        try:
            completed = self._store.complete()
        except (OSError, ContentStoreError) as error:
            _LOG.error("completing package %s failed: %s", package_id, error)
            self._missing = None
            return []
        if completed:
            if self._on_complete is not None:
                self._on_complete()
            return [PackageComplete(package_id)]
        self._missing = None
        return [self._inventory(staged)]

    def _forget_missing(self, staged: Manifest, path: str, index: int) -> None:
        entry = staged.file(path)
        assert entry is not None, "write_chunk stored a chunk of a listed file"
        if self._missing is not None:
            self._missing.pop(entry.chunk_sha256[index], None)

    def _missing_digests(self, staged: Manifest) -> dict[bytes, None]:
        missing: dict[bytes, None] = {}
        for path, index in self._store.missing_chunks():
            entry = staged.file(path)
            assert entry is not None
            missing[entry.chunk_sha256[index]] = None
        return missing

    def _inventory(self, staged: Manifest) -> ChunksHeld:
        bitmap = bitmap_from_missing(staged, self._store.missing_chunks())
        return ChunksHeld(staged.package_id, bitmap)

    def _announce(self, event: Event | None) -> None:
        listener = self._listener
        if event is not None and listener is not None:
            listener(event)
