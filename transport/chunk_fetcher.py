"""Chunk fetcher: carries out the replication actor's `FetchChunk` on a few worker threads.

See `transport.chunk_service` for the protocol. `ChunkFetcher.fetch` is called on the
replication actor's thread and only queues the command; `workers` threads take commands
from the bounded queue, each one at a time: take an idle connection to the source or
connect (`connect_timeout_s`), seal a `ChunkRequest` (under a lock held only while
sealing), send it, read the reply before the fetch's deadline, have the `SharedStore`
verify and write the chunk, and `tell` the outcome to the replication actor. A connection
that served a reply is kept for the next fetch from the same source (at most
`idle_connections_max` in all, the oldest closed first); one the source has closed in the
meantime is retried once on a fresh connection.

`FetchManifest` commands share the queue and the connections: the worker sends a
`ManifestRequest`, has the store verify the signed manifest and stage it
(`SharedStore.offer`: signature, rollback, quota), and tells the store's events, then
`ManifestFetched`; or `ManifestFetchFailed` (`refused` with the store's reason when the
manifest itself was refused).

`FetchPolicy` likewise: a `PolicyRequest`, then the policy installer (the agent's
`transport.policy_store.PolicyStore`: signature, rollback, write, apply) and
`PolicyInstalled`, or `PolicyFetchFailed`. A poll (`version` 0) that brings a policy no
newer than ours is not a refusal.

Outcomes: `ChunkStored` (then `PackageComplete` after the last chunk); `ChunkRefused` when
the store refused the bytes (length or SHA-256) or the reply was malformed or oversize (the
actor bans the source); `ChunkFetchFailed` with `not_held`, `error`, `timeout`, `refused`,
`closed`, `reset`, an errno name, `write_failed`, `not_staged` or `busy` (the actor backs
off from the source and retries elsewhere).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable

from actors.core import (
    Address,
    ChunkFetchFailed,
    ChunkRefused,
    ChunkStored,
    Event,
    FetchChunk,
    FetchManifest,
    FetchPolicy,
    ManifestFetched,
    ManifestFetchFailed,
    PolicyFetchFailed,
    PolicyInstalled,
)
from actors.errors import DecodeError, PackageError
from actors.messages import ChunkRequest, ManifestRequest, Message, PolicyRequest
from actors.replication import BUSY
from transport.chunk_service import (
    DEFAULT_KNOBS,
    FRAME_HEADER_BYTES,
    MANIFEST_REPLY_BYTES_MAX,
    MIB,
    REPLY_OVERHEAD_BYTES_MAX,
    STATUS_OK,
    ChunkServiceKnobs,
    EnvelopeSealer,
    decode_reply,
    frame,
)
from transport.content_store import ContentStoreError, QuotaExceeded
from transport.metrics import SharedCounters
from transport.shared_store import NOT_STAGED, SharedStore

_LOG = logging.getLogger(__name__)

FetchWork = FetchChunk | FetchManifest | FetchPolicy
"""What the workers carry out."""


def failure_of(command: FetchWork, reason: str) -> Event:
    """The event that says `command` failed for `reason` (not a refusal of its content)."""
    if isinstance(command, FetchManifest):
        return ManifestFetchFailed(command, reason)
    if isinstance(command, FetchPolicy):
        return PolicyFetchFailed(command, reason)
    return ChunkFetchFailed(command, reason)


class _IdleConnections:
    """Open connections to sources, kept for reuse; the oldest go first beyond the limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._idle: list[tuple[Address, socket.socket]] = []

    def take(self, source: Address) -> socket.socket | None:
        with self._lock:
            for position in range(len(self._idle) - 1, -1, -1):
                if self._idle[position][0] == source:
                    return self._idle.pop(position)[1]
        return None

    def give(self, source: Address, sock: socket.socket) -> None:
        with self._lock:
            self._idle.append((source, sock))
            evicted = self._idle[: max(len(self._idle) - self._limit, 0)]
            del self._idle[: len(evicted)]
        for _, old in evicted:
            old.close()

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, sock in idle:
            sock.close()


class _SourceClosedError(ConnectionError):
    """The source closed the connection before its reply was complete."""


class ChunkFetcher:
    """Carries out `FetchChunk` on a few worker threads; tells the outcome to `tell`."""

    def __init__(
        self,
        sealer: EnvelopeSealer,
        store: SharedStore,
        tell: Callable[[Event], None],
        *,
        counters: SharedCounters,
        knobs: ChunkServiceKnobs = DEFAULT_KNOBS,
        name: str = "",
        policy_installer: Callable[[bytes], int] | None = None,
    ) -> None:
        self._sealer = sealer
        self._policy_installer = policy_installer
        """Verifies, stores and applies a signed policy; its version, or `PackageError`."""
        self._seal_lock = threading.Lock()
        self._store = store
        self._tell = tell
        self._counters = counters
        self.knobs = knobs
        self._queue: queue.Queue[FetchChunk | FetchManifest | FetchPolicy | None] = queue.Queue(
            knobs.queue_max
        )
        self._idle = _IdleConnections(knobs.idle_connections_max)
        self._active: dict[int, socket.socket] = {}
        self._active_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"peerpxe-fetch-{name}-{n}", daemon=True)
            for n in range(knobs.workers)
        ]

    def start(self) -> None:
        """Start the workers."""
        for thread in self._threads:
            thread.start()

    def fetch(self, command: FetchWork) -> None:
        """Queue `command` (never blocks); a full queue fails it at once as `busy`."""
        if self._stopping.is_set():
            self._counters.add("chunks.fetch_after_stop")
            return
        try:
            self._queue.put_nowait(command)
        except queue.Full:
            self._counters.add("chunks.fetch_queue_full")
            self._tell(failure_of(command, BUSY))

    def stop(self) -> None:
        """Drop queued fetches, abort those in flight, stop the workers, close connections."""
        self._stopping.set()
        self._drain()
        with self._active_lock:
            active = list(self._active.values())
        for sock in active:
            _shutdown(sock)
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(self.knobs.connect_timeout_s + 1.0)
        self._idle.close_all()

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _work(self) -> None:
        while True:
            command = self._queue.get()
            if command is None or self._stopping.is_set():
                return
            for event in self._run(command):
                self._tell(event)

    def _run(self, fetch: FetchWork) -> list[Event]:
        """Fetch, verify and store one chunk, manifest or policy; the events that report it."""
        if isinstance(fetch, FetchManifest):
            return self._run_manifest(fetch)
        if isinstance(fetch, FetchPolicy):
            return self._run_policy(fetch)
        if not self._store.expects(fetch.package_id):
            return [ChunkFetchFailed(fetch, NOT_STAGED)]
        deadline_s = time.monotonic() + self._timeout_s(fetch.size_bytes, wan=fetch.wan)
        request = ChunkRequest(
            package_id=fetch.package_id, path=fetch.path, chunk_index=fetch.chunk_index
        )
        reply_max = fetch.size_bytes + REPLY_OVERHEAD_BYTES_MAX
        try:
            status, data = self._exchange(fetch.source, request, reply_max, deadline_s)
        except DecodeError as error:
            self._counters.add("chunks.fetch.malformed_reply")
            return [ChunkRefused(fetch, f"malformed_reply: {error}")]
        except OSError as error:
            reason = _failure_reason(error)
            self._counters.add(f"chunks.fetch.{reason}")
            return [ChunkFetchFailed(fetch, reason)]
        if status != STATUS_OK:
            self._counters.add(f"chunks.fetch.{status}")
            return [ChunkFetchFailed(fetch, status)]
        return self._keep(fetch, data)

    def _run_manifest(self, command: FetchManifest) -> list[Event]:
        """Fetch a signed manifest and have the store verify and stage it."""
        deadline_s = time.monotonic() + self.knobs.io_timeout_s_min
        request = ManifestRequest(package_id=command.package_id)
        try:
            status, data = self._exchange(
                command.source, request, MANIFEST_REPLY_BYTES_MAX, deadline_s
            )
        except DecodeError:
            self._counters.add("chunks.manifest.malformed_reply")
            return [ManifestFetchFailed(command, "malformed_reply")]
        except OSError as error:
            reason = _failure_reason(error)
            self._counters.add(f"chunks.manifest.{reason}")
            return [ManifestFetchFailed(command, reason)]
        if status != STATUS_OK:
            self._counters.add(f"chunks.manifest.{status}")
            return [ManifestFetchFailed(command, status)]
        return self._stage(command, data)

    def _run_policy(self, command: FetchPolicy) -> list[Event]:
        """Fetch the source's signed policy and have the policy store install it."""
        installer = self._policy_installer
        if installer is None:
            return [PolicyFetchFailed(command, "no_policy_store")]
        deadline_s = time.monotonic() + self.knobs.io_timeout_s_min
        try:
            status, data = self._exchange(
                command.source, PolicyRequest(), MANIFEST_REPLY_BYTES_MAX, deadline_s
            )
        except DecodeError:
            self._counters.add("chunks.policy.malformed_reply")
            return [PolicyFetchFailed(command, "malformed_reply")]
        except OSError as error:
            reason = _failure_reason(error)
            self._counters.add(f"chunks.policy.{reason}")
            return [PolicyFetchFailed(command, reason)]
        if status != STATUS_OK:
            self._counters.add(f"chunks.policy.{status}")
            return [PolicyFetchFailed(command, status)]
        try:
            version = installer(data)
        except PackageError as error:
            reason = error.reason.value
            if reason != "rollback" or command.version:  # asked for a newer one: say so
                self._counters.add(f"chunks.policy.refused.{reason}")
                _LOG.warning("policy from %s refused: %s", command.source.host, error)
            return [PolicyFetchFailed(command, reason, refused=bool(command.version))]
        except OSError as error:
            self._counters.add("chunks.policy.write_failed")
            _LOG.error("storing a policy failed: %s", error)
            return [PolicyFetchFailed(command, "write_failed")]
        self._counters.add("chunks.policy.installed")
        return [PolicyInstalled(version, command)]

    def _stage(self, command: FetchManifest, signed: bytes) -> list[Event]:
        try:
            package_id, events = self._store.offer(signed)
        except PackageError as error:
            self._counters.add(f"chunks.manifest.refused.{error.reason.value}")
            _LOG.warning("manifest from %s refused: %s", command.source.host, error)
            return [ManifestFetchFailed(command, error.reason.value, refused=True)]
        except QuotaExceeded as error:
            self._counters.add("chunks.manifest.refused.quota")
            _LOG.warning("manifest from %s refused: %s", command.source.host, error)
            return [ManifestFetchFailed(command, "quota", refused=True)]
        except (OSError, ContentStoreError) as error:
            self._counters.add("chunks.manifest.stage_failed")
            _LOG.error("staging a manifest failed: %s", error)
            return [ManifestFetchFailed(command, "stage_failed")]
        self._counters.add("chunks.manifest.fetched")
        return [*events, ManifestFetched(command, package_id)]

    def _keep(self, fetch: FetchChunk, data: bytes) -> list[Event]:
        """Store `data`; the store reports the outcome itself (ordered before completion)."""
        try:
            outcome = self._store.store_chunk(fetch, data, self._tell)
        except OSError as error:
            _LOG.warning("storing chunk %s#%d failed: %s", fetch.path, fetch.chunk_index, error)
            self._counters.add("chunks.write_failed")
            return [ChunkFetchFailed(fetch, "write_failed")]
        if isinstance(outcome, ChunkStored):
            self._counters.add("chunks.fetch.stored")
            self._counters.add("chunks.fetch.stored_bytes", len(data))
        elif isinstance(outcome, ChunkRefused):
            self._counters.add("chunks.fetch.store_refused")
        else:
            self._counters.add(f"chunks.fetch.{NOT_STAGED}")
        return []

    def _timeout_s(self, size_bytes: int, *, wan: bool) -> float:
        knobs = self.knobs
        per_mib_s = knobs.wan_io_timeout_s_per_mib if wan else knobs.io_timeout_s_per_mib
        return max(knobs.io_timeout_s_min, size_bytes / MIB * per_mib_s)

    def _exchange(
        self, source: Address, request: Message, reply_max: int, deadline_s: float
    ) -> tuple[str, bytes]:
        """One request and its reply, on an idle connection to the source or a new one."""
        sock = self._idle.take(source)
        if sock is not None:
            try:
                return self._round_trip(sock, source, request, reply_max, deadline_s)
            except ConnectionError:  # the source closed the idle connection: once afresh
                self._counters.add("chunks.fetch.reconnects")
        sock = self._connect(source, deadline_s)
        return self._round_trip(sock, source, request, reply_max, deadline_s)

    def _connect(self, source: Address, deadline_s: float) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._track(sock)
        try:
            sock.settimeout(min(self.knobs.connect_timeout_s, _remaining_s(deadline_s)))
            sock.connect((source.host, source.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            self._untrack(sock)
            sock.close()
            raise
        return sock

    def _round_trip(
        self,
        sock: socket.socket,
        source: Address,
        request: Message,
        reply_max: int,
        deadline_s: float,
    ) -> tuple[str, bytes]:
        """Send the request, read the reply; the connection is kept for reuse if all went well."""
        self._track(sock)
        try:
            with self._seal_lock:
                sealed = self._sealer.seal(request)
            sock.settimeout(_remaining_s(deadline_s))
            sock.sendall(frame(sealed))
            reply = _read_frame(sock, reply_max, deadline_s)
            status, data = decode_reply(reply)
        except BaseException:
            self._untrack(sock)
            sock.close()
            raise
        self._untrack(sock)
        if self._stopping.is_set():
            sock.close()
        else:
            self._idle.give(source, sock)
        return status, data

    def _track(self, sock: socket.socket) -> None:
        with self._active_lock:
            self._active[id(sock)] = sock

    def _untrack(self, sock: socket.socket) -> None:
        with self._active_lock:
            self._active.pop(id(sock), None)


def _read_frame(sock: socket.socket, payload_bytes_max: int, deadline_s: float) -> bytes:
    """One frame's payload; `DecodeError` if it announces more than `payload_bytes_max`."""
    header = _read_exactly(sock, FRAME_HEADER_BYTES, deadline_s)
    length = int.from_bytes(header, "big")
    if length > payload_bytes_max:
        raise DecodeError(f"{length}-byte reply, at most {payload_bytes_max} expected")
    return _read_exactly(sock, length, deadline_s)


def _read_exactly(sock: socket.socket, size: int, deadline_s: float) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        sock.settimeout(_remaining_s(deadline_s))
        count = sock.recv_into(view[received:])
        if count == 0:
            raise _SourceClosedError("closed")
        received += count
    return bytes(buffer)


def _remaining_s(deadline_s: float) -> float:
    remaining_s = deadline_s - time.monotonic()
    if remaining_s <= 0:
        raise TimeoutError("fetch deadline passed")
    return remaining_s


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected (yet): the connect timeout ends it
        sock.shutdown(socket.SHUT_RDWR)


def _failure_reason(error: OSError) -> str:
    """A short counter-friendly word for why a fetch brought nothing."""
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, _SourceClosedError):
        return "closed"
    if isinstance(error, ConnectionResetError):
        return "reset"
    if error.errno is not None and error.errno in errno.errorcode:
        return errno.errorcode[error.errno]
    return type(error).__name__


def request_once(
    source: Address, sealer: EnvelopeSealer, request: Message, reply_max: int, timeout_s: float
) -> tuple[str, bytes]:
    """One sealed request to the chunk service at `source` and its reply, on a connection of
    its own (for tools such as `peerpxe publish`). Raises `OSError` or `DecodeError`."""
    deadline_s = time.monotonic() + timeout_s
    with socket.create_connection((source.host, source.port), timeout=timeout_s) as sock:
        sock.sendall(frame(sealer.seal(request)))
        return decode_reply(_read_frame(sock, reply_max, deadline_s))
