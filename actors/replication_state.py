"""The bookkeeping records of the replication actor (`actors.replication`): plain state.

`Target` is the package being fetched: its chunk table, what this peer holds, which site
peers hold each chunk (`holders`, and their number, `availability`), and the random tie-break
order of rarest first.
`Peer` is a live site peer with its bitfield; `Source` is where a fetch goes (a peer's
chunk service or a WAN source) with its load and backoff; `Fetch` is one fetch in flight.
The pure choices of the planner (`pick_holder`, `pick_wan_source`) live here too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from actors.bitfield import SEGMENT_BYTES, SEGMENT_CHUNKS, Bitfield, ChunkRef, chunk_table
from actors.core import Address, FetchChunk, NodeId
from actors.messages import Have
from actors.package import Manifest


@dataclass(slots=True)
class Source:
    """Where chunks come from: a site peer (LAN) or a WAN source; its load and backoff."""

    address: Address
    wan: bool
    fetching: int = 0
    unusable_until_s: float = -math.inf
    """Backing off (failure, timeout) or banned (bad data) until then."""
    retired: bool = False
    """Its peer left or it is no longer a WAN source: its backoff no longer wakes anyone."""


@dataclass(slots=True)
class Peer:
    """A live peer of this site and what it advertised for the current target."""

    node_id: NodeId
    source: Source
    rank: float
    """Random tie-break between equally loaded holders, drawn once from the actor's RNG."""
    held: Bitfield | None = None
    """None until its first `Have` for the current target."""
    replied_s: float = -math.inf


@dataclass(frozen=True, slots=True)
class Fetch:
    """One `FetchChunk` in flight and the timer that bounds it."""

    command: FetchChunk
    source: Source
    timer: str


@dataclass(slots=True)
class Target:
    """The package being fetched: chunks, holdings, availability in the site."""

    manifest: Manifest
    chunks: tuple[ChunkRef, ...]
    file_offsets: tuple[int, ...]
    """Chunk number of each file's first chunk."""
    rank: list[int]
    """A random permutation of chunk numbers: rarest first breaks ties by it."""
    order: list[int]
    """The chunk numbers sorted by `rank`."""
    held: Bitfield
    availability: list[int] = field(default_factory=list)
    holders: list[dict[NodeId, Peer]] = field(default_factory=list)
    """The site peers known to hold each chunk (`availability` counts them)."""
    missing: dict[int, None] = field(default_factory=dict)
    """Chunk numbers not held, as an ordered set in `order` (never a `set`: iteration order
    is behaviour), so the planner walks only what is missing, by rank."""
    rarest_cache: list[int] | None = field(default=None, repr=False)
    """The missing chunks some site peer holds, rarest first (`rarest`); None when stale.
    Dropped whenever `missing` or a missing chunk's `availability` changes."""
    inventory_known: bool = False
    """The store said what it holds (`ChunksHeld`): until then nothing is fetched."""
    complete: bool = False
    logged_decile: int = 0

    @classmethod
    def of(cls, manifest: Manifest, rng: random.Random) -> Target:
        """A fresh target for `manifest`, holding nothing known yet."""
        chunks = chunk_table(manifest)
        offsets: list[int] = []
        for entry in manifest.files:
            offsets.append(
                offsets[-1] + len(manifest.files[len(offsets) - 1].chunk_sha256) if offsets else 0
            )
            del entry
        order = list(range(len(chunks)))
        rng.shuffle(order)
        rank = [0] * len(chunks)
        for position, number in enumerate(order):
            rank[number] = position
        return cls(
            manifest=manifest,
            chunks=chunks,
            file_offsets=tuple(offsets),
            rank=rank,
            order=order,
            held=Bitfield(len(chunks)),
            availability=[0] * len(chunks),
            holders=[{} for _ in chunks],
        )

    @property
    def size(self) -> int:
        """Chunks in the package."""
        return len(self.chunks)

    def number(self, file_index: int, chunk_index: int) -> int | None:
        """The chunk number of chunk `chunk_index` of file `file_index`, if there is one."""
        if not 0 <= file_index < len(self.file_offsets):
            return None
        chunk_count = len(self.manifest.files[file_index].chunk_sha256)
        if not 0 <= chunk_index < chunk_count:
            return None
        return self.file_offsets[file_index] + chunk_index

    def set_held(self, held: Bitfield) -> None:
        """Take the store's word for what is held."""
        assert held.size == self.size
        self.held = held
        self.missing = {number: None for number in self.order if number not in held}
        self.rarest_cache = None
        self.inventory_known = True

    def hold(self, number: int) -> bool:
        """Record chunk `number` as held; True if it was missing."""
        if not self.held.set(number):
            return False
        self.missing.pop(number, None)
        self.rarest_cache = None
        return True

    def rarest(self) -> list[int]:
        """The missing chunks some site peer holds, rarest first by `availability`, ties by
        `rank` (the order of `missing`); kept until `missing` or their availability changes.
        The caller must not modify the list."""
        cached = self.rarest_cache
        if cached is None:
            availability = self.availability
            cached = [number for number in self.missing if availability[number] > 0]
            cached.sort(key=availability.__getitem__)  # stable: the random rank breaks ties
            self.rarest_cache = cached
        return cached

    def have_messages(self, site: str, *, reply: bool) -> list[Have]:
        """Our holdings as `Have`s: one `complete` message, or one per bitfield segment."""
        if not self.inventory_known:
            return []
        firsts = (0,) if self.complete else range(0, max(self.size, 1), SEGMENT_CHUNKS)
        return [
            Have(
                package_id=self.manifest.package_id,
                version=self.manifest.version,
                site=site,
                chunk_count=self.size,
                first_chunk=first,
                bitmap=b"" if self.complete else self.held.segment(first),
                complete=self.complete,
                reply=reply,
            )
            for first in firsts
        ]

    def have_problem(self, have: Have) -> str | None:
        """Why a site peer's `have` cannot apply to this target (a counter suffix), or None."""
        if have.package_id != self.manifest.package_id:
            return "other_package"
        if have.version != self.manifest.version or have.chunk_count != self.size:
            return "malformed"
        if not _segment_ok(have, self.size):
            return "malformed"
        return None

    def apply_have(self, peer: Peer, have: Have) -> None:
        """Take a checked `have` as `peer`'s holdings and update the availability counts."""
        if peer.held is None:
            peer.held = Bitfield(self.size)
        if have.complete:
            changes = peer.held.fill()
        else:
            changes = peer.held.write_segment(have.first_chunk, have.bitmap)
        for number, now_set in changes:
            if now_set:
                self.add_holder(peer, number)
            else:
                self.drop_holder(peer, number)

    def add_holder(self, peer: Peer, number: int) -> None:
        """`peer` now holds chunk `number` (its bitfield says so already)."""
        self.availability[number] += 1
        self.holders[number][peer.node_id] = peer
        if number in self.missing:
            self.rarest_cache = None

    def drop_holder(self, peer: Peer, number: int) -> None:
        """`peer` no longer counts as a holder of chunk `number`."""
        self.availability[number] -= 1
        del self.holders[number][peer.node_id]
        if number in self.missing:
            self.rarest_cache = None


def pick_holder(
    holders: Iterable[Peer], tried: dict[Address, None], per_source_max: int, now_s: float
) -> Peer | None:
    """The holder to ask: one with room and not backing off; untried first, then least
    loaded, then by rank."""
    best: Peer | None = None
    best_key = (True, 0, 0.0)
    for peer in holders:
        source = peer.source
        if source.fetching >= per_source_max or source.unusable_until_s > now_s:
            continue
        key = (source.address in tried, source.fetching, peer.rank)
        if best is None or key < best_key:
            best, best_key = peer, key
    return best


def pick_wan_source(
    sources: list[Source], tried: dict[Address, None], per_source_max: int, now_s: float
) -> Source | None:
    """The first WAN source with room and not backing off, untried ones first (origin leads)."""
    ready = [
        source
        for source in sources
        if source.fetching < per_source_max and source.unusable_until_s <= now_s
    ]
    untried = [source for source in ready if source.address not in tried]
    choices = untried or ready
    return choices[0] if choices else None


def _segment_ok(have: Have, size: int) -> bool:
    """The segment starts on a boundary inside the package and is at most one segment long."""
    first = have.first_chunk
    if first < 0 or first % SEGMENT_CHUNKS or len(have.bitmap) > SEGMENT_BYTES:
        return False
    if have.complete:
        return first == 0 and not have.bitmap
    return first < size or first == size == 0
