"""The TCP chunk service on loopback: authenticated requests, verified chunks, bad input refused.

A `ChunkServer` serves a `ContentStore` in `tmp_path`; clients are raw sockets (to send what
a real fetcher never would) or a `ChunkFetcher` writing into a second store.
"""

from __future__ import annotations

import hashlib
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from actors.bitfield import ChunkRef, chunk_table
from actors.core import (
    ActorName,
    Address,
    ChunkFetchFailed,
    ChunkRefused,
    ChunksHeld,
    ChunkStored,
    Event,
    FetchChunk,
    ManifestAccepted,
    MemberInfo,
    PackageComplete,
)
from actors.envelope import WireSecurity
from actors.messages import ChunkRequest, Message, Ping
from actors.package import Manifest, entry_from_bytes, sign_manifest
from actors.replication import Replication
from actors.signing import public_key
from tests.integration.standins import Recorder
from tests.integration.waiting import wait_until
from transport.chunk_fetcher import ChunkFetcher
from transport.chunk_service import (
    FRAME_HEADER_BYTES,
    REQUEST_BYTES_MAX,
    ChunkServer,
    ChunkServiceKnobs,
    chunk_sender_id,
    decode_reply,
    encode_reply,
    frame,
)
from transport.content_store import ContentStore, Refusal
from transport.host import Peer, PeerSettings
from transport.metrics import SharedCounters
from transport.shared_store import SharedStore

pytestmark = pytest.mark.integration

KEY = bytes(range(32, 64))
SECRET = bytes(range(32))
PUBLIC = public_key(SECRET)
CHUNK = 4096
QUOTA = 1 << 24
LOOPBACK = Address("127.0.0.1", 0)
SERVER_ID = chunk_sender_id("server")
FAST = ChunkServiceKnobs(
    connect_timeout_s=0.5, io_timeout_s_min=0.5, io_timeout_s_per_mib=0.5, workers=2
)
WAIT_S = 5.0


def content(seed: str, size_bytes: int) -> bytes:
    """Deterministic bytes with no two chunks alike."""
    blocks = (hashlib.sha256(f"{seed}:{n}".encode()).digest() for n in range(size_bytes // 32 + 1))
    return b"".join(blocks)[:size_bytes]


FILES = {
    "undionly.kpxe": content("bios", 3 * CHUNK + 100),
    "efi/ipxe.efi": content("efi", 2 * CHUNK),
}


def make_package() -> tuple[Manifest, bytes]:
    manifest = Manifest(
        name="winpe",
        version=(1,),
        created_s=1_700_000_000,
        files=tuple(entry_from_bytes(path, data, CHUNK) for path, data in FILES.items()),
        boot_files={"bios": "undionly.kpxe"},
        chunk_bytes=CHUNK,
    )
    return manifest, sign_manifest(manifest, SECRET)


MANIFEST, SIGNED = make_package()
CHUNKS = chunk_table(MANIFEST)


def chunk_data(ref: ChunkRef) -> bytes:
    return FILES[ref.path][ref.chunk_index * CHUNK : (ref.chunk_index + 1) * CHUNK]


def fill(store: ContentStore, refs: tuple[ChunkRef, ...] = CHUNKS) -> None:
    for ref in refs:
        store.write_chunk(ref.path, ref.chunk_index, chunk_data(ref))


def complete_store(root: Path) -> ContentStore:
    store = ContentStore(root, QUOTA, PUBLIC)
    store.begin(SIGNED)
    fill(store)
    assert store.complete()
    return store


def fetch_of(ref: ChunkRef, source: Address) -> FetchChunk:
    return FetchChunk(
        source=source,
        package_id=MANIFEST.package_id,
        file_index=ref.file_index,
        chunk_index=ref.chunk_index,
        path=ref.path,
        size_bytes=ref.size_bytes,
        wan=False,
    )


def request_of(ref: ChunkRef, package_id: str = MANIFEST.package_id) -> ChunkRequest:
    return ChunkRequest(package_id=package_id, path=ref.path, chunk_index=ref.chunk_index)


class Client:
    """A raw chunk-service client on one TCP connection."""

    def __init__(self, address: Address, sealer: WireSecurity) -> None:
        self.sealer = sealer
        self.sock = socket.create_connection((address.host, address.port), timeout=WAIT_S)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, message: Message) -> tuple[str, bytes]:
        self.send(frame(self.sealer.seal(message)))
        return decode_reply(self.read_frame())

    def read_frame(self) -> bytes:
        length = int.from_bytes(self.read_exactly(FRAME_HEADER_BYTES), "big")
        return self.read_exactly(length)

    def read_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            more = self.sock.recv(size - len(data))
            assert more, "server closed the connection"
            data += more
        return data

    def closed_by_server(self) -> bool:
        """True when the server closes the connection without sending anything."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@dataclass
class Service:
    """A running server over a complete store, with its counters; clients made on demand."""

    server: ChunkServer
    store: ContentStore
    counters: SharedCounters
    clients: list[Client] = field(default_factory=list)
    sealers: dict[tuple[str, bytes], WireSecurity] = field(default_factory=dict)
    """One sealer per identity: a second one would restart its counter (a replay)."""

    @property
    def address(self) -> Address:
        return self.server.address

    def client(self, key: bytes = KEY, sender: str = "client#chunks") -> Client:
        sealer = self.sealers.setdefault((sender, key), WireSecurity(sender, key, 1))
        made = Client(self.address, sealer)
        self.clients.append(made)
        return made


def start_service(store: ContentStore, knobs: ChunkServiceKnobs = FAST) -> Service:
    counters = SharedCounters()
    opener = WireSecurity(SERVER_ID, KEY, 1)
    server = ChunkServer(LOOPBACK, SharedStore(store), opener, counters=counters, knobs=knobs)
    server.start()
    return Service(server, store, counters)


@pytest.fixture
def services() -> Iterator[list[Service]]:
    made: list[Service] = []
    yield made
    for service in made:
        for client in service.clients:
            client.close()
        service.server.stop()


@pytest.fixture
def service(tmp_path: Path, services: list[Service]) -> Service:
    made = start_service(complete_store(tmp_path / "origin"))
    services.append(made)
    return made


class Inbox:
    """Collects what a fetcher tells, from its worker threads."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()

    def tell(self, event: Event) -> None:
        self.events.put(event)

    def take(self, count: int, timeout_s: float = WAIT_S) -> list[Event]:
        deadline_s = time.monotonic() + timeout_s
        return [
            self.events.get(timeout=max(deadline_s - time.monotonic(), 0.001)) for _ in range(count)
        ]


@dataclass
class Fetching:
    """A fetcher writing into an empty staged store."""

    fetcher: ChunkFetcher
    store: ContentStore
    shared: SharedStore
    inbox: Inbox
    counters: SharedCounters


@pytest.fixture
def fetching(tmp_path: Path) -> Iterator[Fetching]:
    store = ContentStore(tmp_path / "empty", QUOTA, PUBLIC)
    shared = SharedStore(store)
    staged = shared.stage(SIGNED)
    assert [type(event) for event in staged] == [ManifestAccepted, ChunksHeld]
    inbox = Inbox()
    counters = SharedCounters()
    sealer = WireSecurity(chunk_sender_id("fetcher"), KEY, 1)
    fetcher = ChunkFetcher(sealer, shared, inbox.tell, counters=counters, knobs=FAST, name="t")
    fetcher.start()
    yield Fetching(fetcher, store, shared, inbox, counters)
    fetcher.stop()


# --------------------------------------------------------------------------- serving


def test_every_chunk_is_served_byte_identical_on_one_connection(service: Service) -> None:
    """Each chunk comes back exactly as the manifest hashes it, all over one kept-alive link."""
    client = service.client()
    for ref in CHUNKS:
        status, data = client.ask(request_of(ref))
        assert status == "ok"
        assert data == chunk_data(ref)
        assert (
            hashlib.sha256(data).digest()
            == MANIFEST.files[ref.file_index].chunk_sha256[ref.chunk_index]
        )
    assert service.counters.get("chunks.served") == len(CHUNKS)
    assert service.counters.get("chunks.served_bytes") == MANIFEST.total_bytes
    assert service.counters.get("chunks.connections") == 1


def wrong_key(service: Service) -> Client:
    client = service.client(key=b"x" * 32)
    client.send(frame(client.sealer.seal(request_of(CHUNKS[0]))))
    return client


def replayed(service: Service) -> Client:
    honest = service.client()
    sealed = honest.sealer.seal(request_of(CHUNKS[0]))
    honest.send(frame(sealed))
    assert decode_reply(honest.read_frame())[0] == "ok"
    replay = service.client()
    replay.send(frame(sealed))
    return replay


def own_identity(service: Service) -> Client:
    client = service.client(sender=SERVER_ID)
    client.send(frame(client.sealer.seal(request_of(CHUNKS[0]))))
    return client


def oversize(service: Service) -> Client:
    client = service.client()
    client.send((REQUEST_BYTES_MAX + 1).to_bytes(FRAME_HEADER_BYTES, "big") + b"\x00" * 64)
    return client


def garbage(service: Service) -> Client:
    client = service.client()
    client.send(frame(b"\xc1 this is not an envelope"))
    return client


def not_a_request(service: Service) -> Client:
    client = service.client()
    client.send(frame(client.sealer.seal(Ping(seq=1, target="server"))))
    return client


@pytest.mark.parametrize(
    ("attack", "counter"),
    [
        (wrong_key, "chunks.refused.auth"),
        (replayed, "chunks.refused.auth"),
        (own_identity, "chunks.refused.auth"),
        (oversize, "chunks.refused.oversize"),
        (garbage, "chunks.refused.malformed"),
        (not_a_request, "chunks.refused.malformed"),
    ],
    ids=["wrong_key", "replayed", "own_identity", "oversize", "garbage", "not_a_request"],
)
def test_bad_requests_close_the_connection_and_are_counted(
    service: Service, attack: Callable[[Service], Client], counter: str
) -> None:
    """Refused input gets no reply, only a closed connection and a counter; others are served."""
    attacker = attack(service)
    assert attacker.closed_by_server()
    assert wait_until(lambda: service.counters.get(counter) == 1, timeout_s=WAIT_S)
    served_before = service.counters.get("chunks.served")
    assert service.client().ask(request_of(CHUNKS[1])) == ("ok", chunk_data(CHUNKS[1]))
    assert service.counters.get("chunks.served") == served_before + 1
    assert service.counters.get("chunks.server_errors") == 0


def test_a_chunk_the_store_lacks_is_not_held_and_the_connection_stays(service: Service) -> None:
    """Unknown package, unknown file and out-of-range index are `not_held`, not errors."""
    client = service.client()
    ref = CHUNKS[0]
    asks = [
        request_of(ref, package_id="winpe-2"),
        ChunkRequest(package_id=MANIFEST.package_id, path="../etc/passwd", chunk_index=0),
        ChunkRequest(package_id=MANIFEST.package_id, path=ref.path, chunk_index=10_000),
        ChunkRequest(package_id=MANIFEST.package_id, path=ref.path, chunk_index=-1),
    ]
    for ask in asks:
        assert client.ask(ask) == ("not_held", b"")
    assert client.ask(request_of(ref)) == ("ok", chunk_data(ref))
    assert service.counters.get("chunks.not_held") == len(asks)


def test_a_chunk_corrupted_on_disk_is_never_served(service: Service) -> None:
    """The store re-checks the hash on every read: a flipped byte makes the chunk not held."""
    tree_file = service.store.root / "packages" / MANIFEST.package_id / "tree" / "undionly.kpxe"
    data = bytearray(tree_file.read_bytes())
    data[CHUNK + 5] ^= 0xFF  # inside chunk 1 of the file
    tree_file.write_bytes(bytes(data))
    (corrupt,) = [ref for ref in CHUNKS if (ref.path, ref.chunk_index) == ("undionly.kpxe", 1)]
    (intact,) = [ref for ref in CHUNKS if (ref.path, ref.chunk_index) == ("undionly.kpxe", 0)]
    client = service.client()
    assert client.ask(request_of(corrupt)) == ("not_held", b"")
    assert service.store.refusals[Refusal.CORRUPT_ON_DISK] == 1
    assert client.ask(request_of(intact)) == ("ok", chunk_data(intact))


def test_connections_are_bounded_and_idle_ones_closed(
    tmp_path: Path, services: list[Service]
) -> None:
    """Beyond `connections_max` a connection is closed at once; idle ones after the timeout."""
    knobs = ChunkServiceKnobs(connections_max=2, idle_timeout_s=0.3)
    service = start_service(complete_store(tmp_path / "origin"), knobs)
    services.append(service)
    first, second = service.client(), service.client()
    assert first.ask(request_of(CHUNKS[0]))[0] == "ok"
    assert second.ask(request_of(CHUNKS[0]))[0] == "ok"
    assert service.client().closed_by_server()
    assert service.counters.get("chunks.refused.busy") == 1
    assert first.closed_by_server()
    assert second.closed_by_server()
    assert service.counters.get("chunks.idle_closed") == 2
    assert service.client().ask(request_of(CHUNKS[2])) == ("ok", chunk_data(CHUNKS[2]))


# --------------------------------------------------------------------------- fetching


def test_fetcher_fills_an_empty_store_and_completes_the_package(
    service: Service, fetching: Fetching
) -> None:
    """Every chunk is stored verified; the last one assembles the package, which then serves."""
    for ref in CHUNKS:
        fetching.fetcher.fetch(fetch_of(ref, service.address))
    events = fetching.inbox.take(len(CHUNKS) + 1)
    stored = [event for event in events if isinstance(event, ChunkStored)]
    assert len(stored) == len(CHUNKS)
    assert {event.fetch for event in stored} == {fetch_of(ref, service.address) for ref in CHUNKS}
    assert events[-1] == PackageComplete(MANIFEST.package_id)
    assert fetching.store.current() == MANIFEST
    root = fetching.store.served_root()
    assert root is not None
    for path, data in FILES.items():
        assert (root / path).read_bytes() == data
    assert service.counters.get("chunks.connections") <= FAST.workers  # connections reused


def test_an_idle_connection_closed_by_the_source_is_reopened(
    tmp_path: Path, services: list[Service], fetching: Fetching
) -> None:
    """A fetch on a reused connection the server closed for idleness retries on a fresh one."""
    service = start_service(
        complete_store(tmp_path / "origin"), ChunkServiceKnobs(idle_timeout_s=0.2)
    )
    services.append(service)
    fetching.fetcher.fetch(fetch_of(CHUNKS[0], service.address))
    assert isinstance(fetching.inbox.take(1)[0], ChunkStored)
    assert wait_until(lambda: service.counters.get("chunks.idle_closed") == 1, timeout_s=WAIT_S)
    fetching.fetcher.fetch(fetch_of(CHUNKS[1], service.address))
    assert isinstance(fetching.inbox.take(1)[0], ChunkStored)
    assert fetching.counters.get("chunks.fetch.reconnects") == 1
    assert service.counters.get("chunks.connections") == 2


def test_a_source_missing_the_chunk_answers_not_held(
    tmp_path: Path, services: list[Service], fetching: Fetching
) -> None:
    """A peer still fetching serves what it stored; for the rest the fetch fails `not_held`."""
    partial = ContentStore(tmp_path / "partial", QUOTA, PUBLIC)
    partial.begin(SIGNED)
    fill(partial, CHUNKS[:2])
    service = start_service(partial)
    services.append(service)
    fetching.fetcher.fetch(fetch_of(CHUNKS[0], service.address))
    assert fetching.inbox.take(1) == [ChunkStored(fetch_of(CHUNKS[0], service.address))]
    missing = fetch_of(CHUNKS[3], service.address)
    fetching.fetcher.fetch(missing)
    assert fetching.inbox.take(1) == [ChunkFetchFailed(missing, "not_held")]


class FakeSource:
    """A TCP source that reads one request frame and answers with `reply`, or stays silent."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = Address("127.0.0.1", self.listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        self.accepted.append(sock)
        header = sock.recv(FRAME_HEADER_BYTES, socket.MSG_WAITALL)
        sock.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)
        if self.reply is not None:
            sock.sendall(self.reply)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(WAIT_S)
        for sock in self.accepted:
            sock.close()


def flipped(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (encode_reply("ok", flipped(chunk_data(CHUNKS[0]))), "bad_hash"),
        (encode_reply("ok", chunk_data(CHUNKS[0])[:-1]), "bad_hash"),
        (frame(b"\xc1\xc1"), "malformed_reply"),
        ((1 << 30).to_bytes(FRAME_HEADER_BYTES, "big"), "malformed_reply"),
    ],
    ids=["flipped_byte", "short", "garbage", "oversize"],
)
def test_tampered_or_malformed_data_is_refused_and_never_stored(
    fetching: Fetching, reply: bytes, reason: str
) -> None:
    """The store verifies before writing: bad bytes are `ChunkRefused`, the chunk stays missing."""
    source = FakeSource(reply)
    try:
        fetch = fetch_of(CHUNKS[0], source.address)
        fetching.fetcher.fetch(fetch)
        (event,) = fetching.inbox.take(1)
    finally:
        source.close()
    assert isinstance(event, ChunkRefused)
    assert event.fetch == fetch
    assert event.reason.startswith(reason)
    assert len(fetching.store.missing_chunks()) == len(CHUNKS)
    assert fetching.store.refused_chunks == (1 if reason == "bad_hash" else 0)


def test_a_refused_connection_fails_the_fetch_at_once(fetching: Fetching) -> None:
    """Nothing listens on the port: `ChunkFetchFailed(refused)` without waiting for a timeout."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    fetch = fetch_of(CHUNKS[0], Address("127.0.0.1", port))
    started_s = time.monotonic()
    fetching.fetcher.fetch(fetch)
    assert fetching.inbox.take(1) == [ChunkFetchFailed(fetch, "refused")]
    assert time.monotonic() - started_s < FAST.io_timeout_s_min


def test_a_silent_source_fails_the_fetch_within_its_timeout(fetching: Fetching) -> None:
    """A source that accepts and never answers: `ChunkFetchFailed(timeout)` by the deadline."""
    source = FakeSource(None)
    try:
        fetch = fetch_of(CHUNKS[0], source.address)
        started_s = time.monotonic()
        fetching.fetcher.fetch(fetch)
        assert fetching.inbox.take(1) == [ChunkFetchFailed(fetch, "timeout")]
        elapsed_s = time.monotonic() - started_s
    finally:
        source.close()
    assert FAST.io_timeout_s_min * 0.9 <= elapsed_s < FAST.io_timeout_s_min + 1.0


def test_a_fetcher_with_the_wrong_key_gets_nothing(service: Service, fetching: Fetching) -> None:
    """The server closes on a bad MAC: the fetch fails `closed`, nothing is stored."""
    inbox = Inbox()
    sealer = WireSecurity(chunk_sender_id("mallory"), b"y" * 32, 1)
    counters = SharedCounters()
    intruder = ChunkFetcher(sealer, fetching.shared, inbox.tell, counters=counters, knobs=FAST)
    intruder.start()
    try:
        fetch = fetch_of(CHUNKS[0], service.address)
        intruder.fetch(fetch)
        assert inbox.take(1) == [ChunkFetchFailed(fetch, "closed")]
    finally:
        intruder.stop()
    assert service.counters.get("chunks.refused.auth") == 1
    assert len(fetching.store.missing_chunks()) == len(CHUNKS)


# --------------------------------------------------------------------------- the host


def make_peer(node_id: str) -> Peer:
    return Peer(PeerSettings(node_id=node_id, cluster_key=KEY, epoch=1, bind=LOOPBACK))


def test_fetch_chunk_without_a_fetcher_fails_back_to_the_actor() -> None:
    """A peer with no chunk service answers `FetchChunk` at once with `no_fetcher`."""
    peer = make_peer("bare")
    recorder = Recorder()
    peer.start([recorder])
    try:
        fetch = fetch_of(CHUNKS[0], Address("127.0.0.1", 9))
        peer.invoke(ActorName.ELECTION, lambda logic, now_s: [fetch])
        failed = ChunkFetchFailed(fetch, "no_fetcher")
        assert wait_until(lambda: failed in recorder.events, timeout_s=WAIT_S)
        assert peer.counters.get("chunks.no_fetcher") == 1
    finally:
        peer.stop()


def test_an_attached_chunk_service_listens_on_the_message_port(tmp_path: Path) -> None:
    """`attach_chunks` serves on TCP at the UDP endpoint's port number, with the peer's key."""
    peer = make_peer("holder")
    try:
        peer.attach_chunks(SharedStore(complete_store(tmp_path / "holder")), knobs=FAST)
        peer.start([])
        assert peer.chunk_server is not None
        assert peer.chunk_server.address == peer.address
        client = Client(peer.address, WireSecurity(chunk_sender_id("other"), KEY, 1))
        try:
            assert client.ask(request_of(CHUNKS[0])) == ("ok", chunk_data(CHUNKS[0]))
        finally:
            client.close()
    finally:
        peer.stop()


def test_a_chunk_request_over_udp_is_dropped_by_replication() -> None:
    """`ChunkRequest` belongs on TCP: arriving as a datagram it is counted, never served."""
    peer = make_peer("udp-target")
    info = MemberInfo("udp-target", "lab", "127.0.0.0/8", peer.address, weight=1)
    peer.start([Replication(info, random.Random("r"))])
    try:
        sealed = WireSecurity("sender", KEY, 1).seal(request_of(CHUNKS[0]))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(sealed, (peer.address.host, peer.address.port))
        assert wait_until(
            lambda: peer.counters.get("replication.dropped.unexpected_message") == 1,
            timeout_s=WAIT_S,
        )
    finally:
        peer.stop()


def test_a_source_whose_upload_slots_are_taken_answers_busy(
    tmp_path: Path, services: list[Service]
) -> None:
    """`uploads_max` replies at once: a client that asked for a large chunk and does not
    read holds a slot; the next request is answered "busy" at once (not queued behind it),
    and once the slow reply has been read, requests are served again."""
    big_chunk = 8 * 1024 * 1024
    data = content("big", big_chunk)
    manifest = Manifest(
        name="big",
        version=(1,),
        created_s=1_700_000_000,
        files=(entry_from_bytes("big.bin", data, big_chunk),),
        chunk_bytes=big_chunk,
    )
    store = ContentStore(tmp_path / "big", QUOTA, PUBLIC)
    store.begin(sign_manifest(manifest, SECRET))
    store.write_chunk("big.bin", 0, data)
    assert store.complete()
    service = start_service(store, replace(FAST, uploads_max=1))
    services.append(service)
    request = ChunkRequest(package_id=manifest.package_id, path="big.bin", chunk_index=0)
    slow = service.client(sender="slow#chunks")
    slow.send(frame(slow.sealer.seal(request)))  # asked, not reading: its reply stalls
    assert wait_until(lambda: service.counters.get("chunks.served") == 1, timeout_s=WAIT_S)
    other = service.client(sender="other#chunks")
    assert other.ask(request) == ("busy", b"")
    assert service.counters.get("chunks.busy") == 1
    status, served = decode_reply(slow.read_frame())
    assert (status, served == data) == ("ok", True)
    assert wait_until(lambda: other.ask(request)[0] == "ok", timeout_s=WAIT_S)
