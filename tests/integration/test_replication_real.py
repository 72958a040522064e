"""Replication for real: three peers on loopback bring a signed package from an origin.

Each peer is a `transport.host.Peer` with discovery, election and replication actors, real
UDP between them, a `ContentStore` in `tmp_path` and the TCP chunk service
(`Peer.attach_chunks`). The origin is a bare `ChunkServer` over a store holding the complete
package (8 files, 40 chunks of 64 KiB, signed with a throw-away Ed25519 key). Knobs are
shortened so the whole run takes a few seconds.

What must hold: every peer ends with the complete, verified package; the origin served
each chunk exactly once (the site's elected downloader fetched across the "WAN", the two
others from LAN peers); a peer with the wrong cluster key gets nothing from anyone.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from actors.bitfield import chunk_table
from actors.core import ActorName, Address, FetchChunk, MemberInfo, MemberState
from actors.discovery import Discovery, DiscoveryKnobs
from actors.election import DOWNLOADER_CAPABILITY, Election, ElectionKnobs
from actors.envelope import WireSecurity
from actors.package import Manifest, entry_from_bytes, sign_manifest
from actors.replication import Replication, ReplicationKnobs
from actors.signing import public_key
from tests.integration.waiting import wait_until
from transport.chunk_service import ChunkServer, ChunkServiceKnobs, chunk_sender_id
from transport.content_store import ContentStore
from transport.host import Peer, PeerSettings
from transport.metrics import SharedCounters
from transport.shared_store import SharedStore

pytestmark = pytest.mark.integration

KEY = bytes(range(64, 96))
WRONG_KEY = bytes(range(96, 128))
SECRET = bytes(SigningKey.generate())
PUBLIC = public_key(SECRET)
CHUNK = 64 * 1024
FILES_COUNT = 8
CHUNKS_PER_FILE = 5
QUOTA = 1 << 26
SITE = "lab"
LOOPBACK = "127.0.0.1"
DISCOVERY = DiscoveryKnobs(
    probe_interval_s=0.1,
    probe_timeout_s=0.05,
    gossip_interval_s=0.05,
    suspicion_timeout_s_min=0.5,
    suspicion_timeout_s_max=1.0,
    push_pull_interval_s=5.0,
)
ELECTION = ElectionKnobs(
    heartbeat_interval_s=0.1,
    lease_timeout_s=0.5,
    claim_wait_s=0.06,
    claim_stagger_s=0.12,
    startup_grace_s=0.5,
)
REPLICATION = ReplicationKnobs(
    have_interval_s=0.5, have_debounce_s=0.05, wan_settle_s=0.3, source_backoff_s=0.5
)
CHUNKS = ChunkServiceKnobs(connect_timeout_s=1.0, io_timeout_s_min=2.0)
WEIGHTS = {"a": 30, "b": 20, "c": 10}


def content(seed: str, size_bytes: int) -> bytes:
    blocks = (hashlib.sha256(f"{seed}:{n}".encode()).digest() for n in range(size_bytes // 32 + 1))
    return b"".join(blocks)[:size_bytes]


FILES = {
    f"boot/file{n}.bin": content(f"file{n}", CHUNKS_PER_FILE * CHUNK) for n in range(FILES_COUNT)
}
MANIFEST = Manifest(
    name="winpe",
    version=(3,),
    created_s=1_700_000_000,
    files=tuple(entry_from_bytes(path, data, CHUNK) for path, data in FILES.items()),
    chunk_bytes=CHUNK,
)
SIGNED = sign_manifest(MANIFEST, SECRET)


class CountingStore(SharedStore):
    """A shared store that counts every chunk it hands out, by (path, index)."""

    def __init__(self, store: ContentStore) -> None:
        super().__init__(store)
        self._reads_lock = threading.Lock()
        self._reads: dict[tuple[str, int], int] = {}

    def read_chunk(self, package_id: str, path: str, index: int) -> bytes | None:
        data = super().read_chunk(package_id, path, index)
        if data is not None:
            with self._reads_lock:
                self._reads[(path, index)] = self._reads.get((path, index), 0) + 1
        return data

    def reads(self) -> dict[tuple[str, int], int]:
        with self._reads_lock:
            return dict(self._reads)


def origin_store(root: Path) -> CountingStore:
    store = ContentStore(root, QUOTA, PUBLIC)
    store.begin(SIGNED)
    for ref in chunk_table(MANIFEST):
        offset = ref.chunk_index * CHUNK
        store.write_chunk(ref.path, ref.chunk_index, FILES[ref.path][offset : offset + CHUNK])
    assert store.complete()
    return CountingStore(store)


@dataclass
class Node:
    """One running peer and its store."""

    peer: Peer
    store: SharedStore
    content: ContentStore


class Site:
    """An origin and peers on loopback; everything is stopped at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.origin_counters = SharedCounters()
        self.origin_store = origin_store(root / "origin")
        opener = WireSecurity(chunk_sender_id("origin"), KEY, 1)
        self.origin = ChunkServer(
            Address(LOOPBACK, 0), self.origin_store, opener, counters=self.origin_counters
        )
        self.origin.start()
        self.nodes: dict[str, Node] = {}

    def start(self, node_id: str, seeds: tuple[Address, ...] = (), key: bytes = KEY) -> Node:
        peer = Peer(PeerSettings(node_id, key, epoch=1, bind=Address(LOOPBACK, 0)))
        content_store = ContentStore(self.root / node_id, QUOTA, PUBLIC)
        store = SharedStore(content_store)
        peer.attach_chunks(store, knobs=CHUNKS)
        info = MemberInfo(
            node_id,
            SITE,
            "127.0.0.0/8",
            peer.address,
            weight=WEIGHTS.get(node_id, 5),
            capabilities=(DOWNLOADER_CAPABILITY,),
        )
        peer.start(
            [
                Discovery(info, random.Random(f"d:{node_id}"), DISCOVERY, seeds),
                Election(info, random.Random(f"e:{node_id}"), ELECTION, downloader_eligible=True),
                Replication(
                    info, random.Random(f"r:{node_id}"), REPLICATION, (self.origin.address,)
                ),
            ]
        )
        node = Node(peer, store, content_store)
        self.nodes[node_id] = node
        return node

    def publish(self, node_id: str) -> None:
        """What the composition root does with a verified manifest: stage it, tell replication."""
        node = self.nodes[node_id]
        for event in node.store.stage(SIGNED):
            node.peer.tell(ActorName.REPLICATION, event)

    def members(self, node_id: str) -> dict[str, MemberState]:
        views = self.nodes[node_id].peer.inspect(ActorName.DISCOVERY, lambda d: d.members())
        assert isinstance(views, list)
        return {view.member.node_id: view.state for view in views}

    def downloader_of(self, node_id: str) -> str:
        leader = self.nodes[node_id].peer.inspect(
            ActorName.ELECTION, lambda election: election.downloader.leader
        )
        assert isinstance(leader, str)
        return leader

    def is_downloader(self, node_id: str) -> bool:
        flag = self.nodes[node_id].peer.inspect(ActorName.REPLICATION, lambda r: r.downloader)
        assert isinstance(flag, bool)
        return flag

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node.peer.stop()
        self.origin.stop()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path)
    yield made
    made.stop_all()


def start_site(site: Site) -> list[str]:
    """Start a, b, c; wait until all see each other and agree on one WAN downloader."""
    first = site.start("a")
    site.start("b", seeds=(first.peer.address,))
    site.start("c", seeds=(first.peer.address,))
    names = ["a", "b", "c"]

    def settled() -> bool:
        alive = all(
            site.members(observer).get(other) == MemberState.ALIVE
            for observer in names
            for other in names
            if other != observer
        )
        leaders = {site.downloader_of(name) for name in names}
        return alive and len(leaders) == 1 and leaders != {""}

    assert wait_until(settled, timeout_s=10.0), [site.members(name) for name in names]
    downloader = site.downloader_of("a")
    assert wait_until(lambda: site.is_downloader(downloader), timeout_s=2.0)
    assert [name for name in names if site.is_downloader(name)] == [downloader]
    return names


def test_every_peer_gets_the_package_and_the_origin_serves_each_chunk_once(site: Site) -> None:
    """The downloader pulls each chunk once from the origin; the others copy it over the LAN."""
    names = start_site(site)
    downloader = site.downloader_of(names[0])
    for name in names:
        site.publish(name)

    def all_complete() -> bool:
        return all(site.nodes[name].store.current() == MANIFEST for name in names)

    assert wait_until(all_complete, timeout_s=20.0), {
        name: len(site.nodes[name].store.missing_chunks()) for name in names
    }
    for name in names:
        root = site.nodes[name].content.served_root()
        assert root is not None
        assert all((root / path).read_bytes() == data for path, data in FILES.items())
    reads = site.origin_store.reads()
    expected = {(ref.path, ref.chunk_index): 1 for ref in chunk_table(MANIFEST)}
    assert reads == expected
    assert len(expected) == FILES_COUNT * CHUNKS_PER_FILE
    for name in names:
        counters = site.nodes[name].peer.counters
        wan = counters.get("replication.chunks_fetched.wan")
        lan = counters.get("replication.chunks_fetched.lan")
        assert (wan, lan) == ((40, 0) if name == downloader else (0, 40)), name
        assert counters.get("chunks.refused.auth") == 0
        assert counters.get("chunks.server_errors") == 0
    served_lan = sum(site.nodes[name].peer.counters.get("chunks.served") for name in names)
    assert served_lan == 2 * 40


def test_a_peer_with_the_wrong_cluster_key_gets_nothing(site: Site) -> None:
    """An intruder is refused by the origin and by peers alike; its store stays empty."""
    names = start_site(site)
    intruder = site.start("mallory", seeds=(site.nodes["a"].peer.address,), key=WRONG_KEY)
    for name in [*names, "mallory"]:
        site.publish(name)
    assert wait_until(
        lambda: all(site.nodes[name].store.current() == MANIFEST for name in names),
        timeout_s=20.0,
    )
    assert wait_until(lambda: site.origin_counters.get("chunks.refused.auth") >= 1, timeout_s=5.0)
    holder = site.nodes["a"].peer
    ref = chunk_table(MANIFEST)[0]
    fetch = FetchChunk(
        source=holder.address,
        package_id=MANIFEST.package_id,
        file_index=ref.file_index,
        chunk_index=ref.chunk_index,
        path=ref.path,
        size_bytes=ref.size_bytes,
        wan=False,
    )
    assert intruder.peer.chunk_fetcher is not None
    intruder.peer.chunk_fetcher.fetch(fetch)  # straight at a LAN peer, past discovery
    assert wait_until(lambda: holder.counters.get("chunks.refused.auth") >= 1, timeout_s=5.0)
    assert intruder.store.current() is None
    assert len(intruder.store.missing_chunks()) == len(chunk_table(MANIFEST))
    assert intruder.peer.counters.get("replication.chunks_fetched.wan") == 0
    assert "mallory" not in site.members("a")
    assert site.origin_store.reads() == {(r.path, r.chunk_index): 1 for r in chunk_table(MANIFEST)}
