"""Chunk service: peers copy verified chunks from each other, and from the origin, over TCP.

Theory of operation
-------------------
Every peer runs a `ChunkServer` on the TCP port with the number of its UDP message port (a
`FetchChunk.source` is a peer's message address), and a `ChunkFetcher` that carries out the
replication actor's `FetchChunk` commands. A WAN source (`FetchChunk.wan`) is an origin: for
now simply a `ChunkServer` on the publishing machine holding the complete package, spoken
to with the same protocol (a later origin may be an HTTP server with range requests).

Wire protocol, one TCP connection, any number of request/reply pairs in turn (keep-alive)::

    frame   = length: uint32 big-endian, payload: `length` bytes
    request = frame(WireSecurity.seal(ChunkRequest(package_id, path, chunk_index)))
    reply   = frame(msgpack [status: str, data: bin])
              status "ok": data is the chunk; "not_held", "error" or "busy": data is empty

Two more requests share the connection and the envelope: `ManifestRequest(package_id)`
is answered "ok" with the signed manifest of that package (or of the newest complete one
for an empty id), "not_held" otherwise; `SeedOffer(port)` (from `peerpxe publish`, served
only when the server was given `on_seed`) is answered "ok" and reported as a seed at the
connection's source address and that port (the source address is the TCP peer's, never a
claim in the message); `PolicyRequest` is answered with the signed policy the server was
given (`policy`), "not_held" without one.

At most `uploads_max` chunk replies are written at once; a chunk request beyond them is
answered "busy" at once (the fetcher reports `ChunkFetchFailed(busy)`, the actor backs off
from that source and asks another holder), so a popular source serves a few transfers at
full speed instead of many too slowly to beat their timeouts.

A request payload is at most `REQUEST_BYTES_MAX` (one envelope); a reply payload at most the
chunk's size plus `REPLY_OVERHEAD_BYTES_MAX`. The server refuses, counts and closes the
connection on an oversize frame (`chunks.refused.oversize`), a request that fails the
envelope's MAC or freshness check (`chunks.refused.auth`) or that is not a `ChunkRequest`
(`chunks.refused.malformed`). So only cluster members get anything; the reply itself is not
sealed, because the fetcher verifies every chunk against the signed manifest before the
store writes it (content is checked, not secret: a LAN eavesdropper sees chunk bytes).

Freshness: the fetcher seals with its own `WireSecurity` whose sender id is
`chunk_sender_id(node_id)` (`<node_id>#chunks`) with the peer's epoch, never the UDP
endpoint's: the two sealers' `(sender, epoch, counter)` never collide, so a request replayed
to a UDP endpoint (or a datagram replayed to a chunk server) cannot burn a genuine counter,
and the fetcher's workers share one lock that is held only while sealing. The server opens
with a `WireSecurity` of the same id: it needs only authenticity and freshness (the replay
window is per sender, RFC 4303 §3.4.3), and its own-id check refuses a peer's requests to
itself. A request is fresh once per server: replayed to another server it is accepted once
there, which yields no more than an eavesdropper already saw.

Server: one thread, `selectors`, non-blocking sockets; at most `connections_max`
connections (one more is accepted and closed at once, `chunks.refused.busy`), each closed
after `idle_timeout_s` without traffic. A connection holds at most one reply being written:
while it is, nothing more is read from it, so a client that pipelines requests or stops
reading is held back by TCP flow control, not by server memory.

Fetcher (`transport.chunk_fetcher.ChunkFetcher`): `workers` threads take `FetchChunk`
commands from a bounded queue. Each connects (or reuses an idle connection to the same
source, retrying once afresh if the source had closed it), sends the request, reads the
reply before the fetch's deadline (`io_timeout_s_min`, or `io_timeout_s_per_mib` per MiB,
whichever is longer), has the store verify and write the chunk, and tells the replication
actor the outcome: `ChunkStored`, `ChunkRefused` (the store refused the bytes, or the reply
was malformed: the source is banned) or `ChunkFetchFailed` (`not_held`, `timeout`,
`refused`, ...). After the last missing chunk it completes the package and tells
`PackageComplete`.

The `ContentStore` is not thread-safe; `transport.shared_store.SharedStore` puts it behind
one lock shared by the server thread, the fetcher workers and the composition root. Disk
I/O happens under that lock (`complete()` assembles the whole package under it: serving
pauses meanwhile); network I/O never does. Events are told through `tell` (the replication
actor's pykka `tell()`): no actor method is ever called from these threads.
`transport.host.Peer.attach_chunks` wires a server, a fetcher and a store into a peer.
"""

from __future__ import annotations

import hashlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import msgpack

from actors import codec
from actors.core import NODE_ID_BYTES_MAX, Address, NodeId
from actors.errors import AuthenticationError, DecodeError
from actors.messages import ChunkRequest, ManifestRequest, Message, PolicyRequest, SeedOffer
from actors.replication import BUSY, NOT_HELD
from actors.signing import DOCUMENT_BYTES_MAX
from transport.metrics import SharedCounters
from transport.shared_store import SharedStore

_LOG = logging.getLogger(__name__)

FRAME_HEADER_BYTES: Final = 4
"""Every frame starts with its payload length, big-endian (network byte order)."""
REQUEST_BYTES_MAX: Final = codec.MAX_DATAGRAM_BYTES
"""A request is one sealed envelope, which never exceeds one datagram's size."""
REPLY_OVERHEAD_BYTES_MAX: Final = 16
"""msgpack around the chunk: fixarray (1), status fixstr (<= 9), bin 32 header (5)."""
STATUS_OK: Final = "ok"
STATUS_NOT_HELD: Final = NOT_HELD
STATUS_ERROR: Final = "error"
STATUS_BUSY: Final = BUSY
"""Every upload slot is taken: ask someone else, or again later (the actor backs off)."""
STATUSES: Final = (STATUS_OK, STATUS_NOT_HELD, STATUS_ERROR, STATUS_BUSY)
CHUNK_SENDER_SUFFIX: Final = "#chunks"
RECEIVE_BYTES: Final = 256 * 1024
POLL_S: Final = 0.2
"""Selector timeout: how quickly the server notices `stop()` and idle connections."""
MIB: Final = 1 << 20
PORT_MAX: Final = 65535
MANIFEST_REPLY_BYTES_MAX: Final = DOCUMENT_BYTES_MAX + REPLY_OVERHEAD_BYTES_MAX
"""A manifest reply: one signed document (`actors.signing.DOCUMENT_BYTES_MAX`) in the reply."""


@dataclass(frozen=True, slots=True)
class ChunkServiceKnobs:
    """Limits and timeouts of the chunk server and fetcher."""

    connections_max: int = 64
    uploads_max: int = 4
    """Chunk replies being written at once; a request beyond them is answered "busy" at once
    (BitTorrent's four unchoked upload slots, BEP 3; the simulator's `upload_slots`). Without
    it, 64 peers pulling 4 MiB chunks from one downloader at 100 Mbit/s would each take ~21 s,
    past every fetch timeout: bandwidth spent on transfers that are then thrown away."""
    idle_timeout_s: float = 30.0
    connect_timeout_s: float = 2.0
    io_timeout_s_min: float = 3.0
    """Under the replication actor's `fetch_timeout_s_min` (and the per-MiB figures under its
    own), so the fetcher reports a stalled fetch before the actor's timer gives up on it."""
    io_timeout_s_per_mib: float = 3.0
    wan_io_timeout_s_per_mib: float = 8.0
    workers: int = 16
    """Fetches carried out at once: the replication actor's `fetches_max`, so a fetch it
    counts as in flight is on the wire, not waiting in this queue for its timeout."""
    queue_max: int = 256
    idle_connections_max: int = 32
    """Idle client connections kept for reuse, over all sources."""

    def __post_init__(self) -> None:
        """Refuse knobs that cannot work, with a reason."""
        for name in ("connections_max", "uploads_max", "workers", "queue_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("idle_timeout_s", "connect_timeout_s", "io_timeout_s_min"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.workers > self.queue_max:
            raise ValueError(f"workers ({self.workers}) must be <= queue_max ({self.queue_max})")


DEFAULT_KNOBS: Final = ChunkServiceKnobs()


class EnvelopeOpener(Protocol):
    """Opens sealed envelopes (`actors.envelope.WireSecurity`): MAC, freshness, decode."""

    def open(self, data: bytes) -> tuple[NodeId, Message]:
        """Raise `AuthenticationError` or `DecodeError` unless `data` is authentic and fresh."""
        ...


class EnvelopeSealer(Protocol):
    """Seals messages in envelopes (`actors.envelope.WireSecurity`)."""

    def seal(self, message: Message) -> bytes:
        """A fresh authenticated envelope holding `message`."""
        ...


def chunk_sender_id(node_id: NodeId) -> NodeId:
    """The sender id a peer's fetcher seals with: never the UDP endpoint's (module docstring).

    Ids too long for the suffix are shortened to a SHA-256 prefix, so every id fits.
    """
    sender = node_id + CHUNK_SENDER_SUFFIX
    if len(sender.encode()) <= NODE_ID_BYTES_MAX:
        return sender
    return hashlib.sha256(node_id.encode()).hexdigest()[:32] + CHUNK_SENDER_SUFFIX


def frame(payload: bytes) -> bytes:
    """`payload` with its 4-byte big-endian length in front."""
    return len(payload).to_bytes(FRAME_HEADER_BYTES, "big") + payload


def encode_reply(status: str, data: bytes = b"") -> bytes:
    """A framed reply `[status, data]`."""
    assert status in STATUSES
    packed: bytes = msgpack.packb([status, data], use_bin_type=True)
    return frame(packed)


def decode_reply(payload: bytes) -> tuple[str, bytes]:
    """`(status, data)` of a reply payload; `DecodeError` unless well formed."""
    value = codec.unpack_plain(payload)
    if not isinstance(value, tuple) or len(value) != 2:
        raise DecodeError("reply is not [status, data]")
    status, data = value
    if status not in STATUSES or not isinstance(data, bytes):
        raise DecodeError(f"bad reply status {status!r} or data")
    if status != STATUS_OK and data:
        raise DecodeError(f"a {status} reply carries data")
    return status, data


# --------------------------------------------------------------------------- the server


@dataclass(slots=True)
class _Connection:
    sock: socket.socket
    peer: Address
    active_s: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: memoryview = field(default_factory=lambda: memoryview(b""))


class ChunkServer:
    """Serves verified chunks to cluster members over TCP, on one selector thread."""

    def __init__(
        self,
        bind: Address,
        store: SharedStore,
        opener: EnvelopeOpener,
        *,
        counters: SharedCounters,
        knobs: ChunkServiceKnobs = DEFAULT_KNOBS,
        on_seed: Callable[[Address], None] | None = None,
        policy: Callable[[], bytes | None] | None = None,
    ) -> None:
        self._store = store
        self._opener = opener
        self._on_seed = on_seed
        self._policy = policy
        self._counters = counters
        self.knobs = knobs
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((bind.host, bind.port))
            self._listener.listen(knobs.connections_max)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        host, port = self._listener.getsockname()
        self.address = Address(host, port)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._connections: dict[int, _Connection] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._serve_loop, name=f"peerpxe-chunks-{port}", daemon=True
        )

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close every socket (returns within `POLL_S`)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        for connection in list(self._connections.values()):
            self._close(connection)
        self._selector.close()
        self._listener.close()

    def _serve_loop(self) -> None:
        while not self._stopping.is_set():
            for key, mask in self._selector.select(POLL_S):
                if key.data is None:
                    self._accept()
                else:
                    self._on_ready(key.data, mask)
            self._close_idle(time.monotonic())

    def _accept(self) -> None:
        try:
            sock, (host, port) = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._counters.add("chunks.accept_errors")
            _LOG.warning("chunk server accept failed: %s", error)
            return
        if len(self._connections) >= self.knobs.connections_max:
            self._counters.add("chunks.refused.busy")
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(sock, Address(host, port), time.monotonic())
        self._connections[sock.fileno()] = connection
        self._selector.register(sock, selectors.EVENT_READ, connection)
        self._counters.add("chunks.connections")

    def _on_ready(self, connection: _Connection, mask: int) -> None:
        try:
            open_ = True
            if mask & selectors.EVENT_WRITE:
                self._flush(connection)
            if mask & selectors.EVENT_READ:
                open_ = self._receive(connection)
            open_ = open_ and self._advance(connection)
        except OSError as error:
            _LOG.debug("chunk connection %s failed: %s", connection.peer, error)
            open_ = False
        except Exception:  # noqa: BLE001 - a bug must not stop serving everyone else
            _LOG.exception("chunk server bug serving %s", connection.peer)
            self._counters.add("chunks.server_errors")
            open_ = False
        if open_:
            self._watch(connection)
        else:
            self._close(connection)

    def _receive(self, connection: _Connection) -> bool:
        """Read what arrived; False when the client closed."""
        try:
            data = connection.sock.recv(RECEIVE_BYTES)
        except (BlockingIOError, InterruptedError):
            return True
        if not data:
            return False
        connection.inbox += data
        connection.active_s = time.monotonic()
        return True

    def _advance(self, connection: _Connection) -> bool:
        """Answer buffered requests while no reply is being written; False to close."""
        inbox = connection.inbox
        while not connection.outbox and len(inbox) >= FRAME_HEADER_BYTES:
            length = int.from_bytes(inbox[:FRAME_HEADER_BYTES], "big")
            if length > REQUEST_BYTES_MAX:
                return self._refuse("oversize", f"{length}-byte frame", connection)
            end = FRAME_HEADER_BYTES + length
            if len(inbox) < end:
                return True
            payload = bytes(inbox[FRAME_HEADER_BYTES:end])
            del inbox[:end]
            reply = self._answer(payload, connection)
            if reply is None:
                return False
            connection.outbox = memoryview(reply)
            self._flush(connection)
        return True

    def _answer(self, payload: bytes, connection: _Connection) -> bytes | None:
        """The framed reply to one request frame; None (connection closed) if refused."""
        try:
            _sender, message = self._opener.open(payload)
        except AuthenticationError as error:
            self._refuse("auth", error.reason, connection)
            return None
        except DecodeError as error:
            self._refuse("malformed", str(error), connection)
            return None
        if isinstance(message, ChunkRequest):
            return self._serve(message)
        if isinstance(message, ManifestRequest):
            return self._serve_manifest(message.package_id)
        if isinstance(message, PolicyRequest):
            return self._serve_policy()
        if isinstance(message, SeedOffer) and self._on_seed is not None:
            return self._take_seed(message.port, connection)
        self._refuse("malformed", f"unexpected {message.TAG}", connection)
        return None

    def _serve_manifest(self, package_id: str) -> bytes:
        try:
            signed = self._store.signed_manifest(package_id)
        except OSError as error:
            _LOG.warning("manifest read failed: %s", error)
            self._counters.add("chunks.read_errors")
            return encode_reply(STATUS_ERROR)
        if signed is None:
            self._counters.add("chunks.manifest_not_held")
            return encode_reply(STATUS_NOT_HELD)
        self._counters.add("chunks.manifests_served")
        return encode_reply(STATUS_OK, signed)

    def _serve_policy(self) -> bytes:
        signed = self._policy() if self._policy is not None else None
        if signed is None:
            self._counters.add("chunks.policy_not_held")
            return encode_reply(STATUS_NOT_HELD)
        self._counters.add("chunks.policies_served")
        return encode_reply(STATUS_OK, signed)

    def _take_seed(self, port: int, connection: _Connection) -> bytes | None:
        """A publisher offers its seed on `port` of the connection's own source address."""
        if not 0 < port <= PORT_MAX:
            self._refuse("malformed", f"seed port {port}", connection)
            return None
        assert self._on_seed is not None
        self._counters.add("chunks.seeds_offered")
        _LOG.info("publisher seed offered from %s:%d", connection.peer.host, port)
        self._on_seed(Address(connection.peer.host, port))
        return encode_reply(STATUS_OK)

    def _serve(self, request: ChunkRequest) -> bytes:
        if self._uploading() >= self.knobs.uploads_max:
            self._counters.add("chunks.busy")
            return encode_reply(STATUS_BUSY)
        try:
            data = self._store.read_chunk(request.package_id, request.path, request.chunk_index)
        except OSError as error:
            _LOG.warning("chunk read failed: %s", error)
            self._counters.add("chunks.read_errors")
            return encode_reply(STATUS_ERROR)
        if data is None:
            self._counters.add("chunks.not_held")
            return encode_reply(STATUS_NOT_HELD)
        self._counters.add("chunks.served")
        self._counters.add("chunks.served_bytes", len(data))
        return encode_reply(STATUS_OK, data)

    def _uploading(self) -> int:
        """Replies still being written (each connection writes at most one)."""
        return sum(1 for connection in self._connections.values() if connection.outbox)

    def _flush(self, connection: _Connection) -> None:
        if not connection.outbox:
            return
        try:
            sent = connection.sock.send(connection.outbox)
        except (BlockingIOError, InterruptedError):
            return
        connection.outbox = connection.outbox[sent:]
        connection.active_s = time.monotonic()

    def _watch(self, connection: _Connection) -> None:
        events = selectors.EVENT_WRITE if connection.outbox else selectors.EVENT_READ
        if self._selector.get_key(connection.sock).events != events:
            self._selector.modify(connection.sock, events, connection)

    def _refuse(self, kind: str, detail: str, connection: _Connection) -> bool:
        self._counters.add(f"chunks.refused.{kind}")
        _LOG.info("chunk request from %s refused (%s): %s", connection.peer, kind, detail)
        return False

    def _close_idle(self, now_s: float) -> None:
        deadline_s = now_s - self.knobs.idle_timeout_s
        for connection in list(self._connections.values()):
            if connection.active_s < deadline_s:
                self._counters.add("chunks.idle_closed")
                self._close(connection)

    def _close(self, connection: _Connection) -> None:
        fileno = connection.sock.fileno()
        if fileno < 0 or self._connections.pop(fileno, None) is None:
            return
        self._selector.unregister(connection.sock)
        connection.sock.close()
