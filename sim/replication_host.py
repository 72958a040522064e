"""Replication in the simulated world: the origin, the peers' stores, publishing, figures.

Theory of operation
-------------------
The *origin* is a simulated server outside every site (`ORIGIN`, 192.0.2.1:8443, an RFC 5737
documentation address) with its own network port, so partitions can cut it off; it holds
every published package. Each peer has a simulated *store*: for each package, the chunks it
holds. The store survives crashes and restarts (a disk), but chunks in flight are lost.

Publishing (`[[publish]]`): at `at_s` the origin builds the package's manifest (files of
the given sizes; each chunk's content is a short token naming it, and the manifest lists the
SHA-256 of each token) and every running peer's replication actor hears `ManifestAccepted`
at once, then `ChunksHeld` from its store: the manifest itself spreads instantly in the sim
(in production it is a small signed document fetched like a policy). A peer that starts or
restarts hears `WanSourcesChanged((ORIGIN,))`, then, once a package is published, the same
two events, and `PackageComplete` if its store already holds every chunk.

`FetchChunk` (handed over by `SimNode` through `World.fetch_chunk`) becomes a transfer of
`sim.transfer_model` (bandwidth sharing, upload slots and their backlog), unless the source
is down or cut off (`ChunkFetchFailed` "source down" or "partitioned", noticed after
`FAILURE_NOTICED_S`), does not hold the chunk ("not_held", after `ANSWER_S`), or is busy
("busy", after `ANSWER_S`). When the transfer completes, the chunk is corrupted with
probability `corrupt_fraction` (one draw per transfer from `random.Random(f"xfer:{seed}")`),
and the store verifies it as the real one does: SHA-256 of what arrived against the
manifest. A match is stored (`ChunkStored`; `PackageComplete` too when that made the package
whole); a mismatch is refused (`ChunkRefused` "corrupt") and never stored.
`corrupt_chunks_accepted` counts stored chunks whose content was not the genuine one (0
unless verification is broken).

A peer whose store completes the current package becomes responder-eligible
(`on_complete`); its election and discovery do the rest (`actors.election`).

Figures (`figures()`), all simulated: WAN bytes per site (as they cross, so cut-off chunks
count their part), the most bytes in any 1 s window on each site's WAN link against the
downloader's cap, origin bytes, replication time per site and package (publish to the
first moment every running peer of the site holds the whole package), progress per site
(sampled every `PROGRESS_INTERVAL_S`: chunks held by running peers / (running peers x
chunks)), corrupt chunks refused and accepted, and LAN utilisation.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from actors.bitfield import Bitfield, ChunkRef, chunk_table
from actors.core import (
    ActorName,
    Address,
    ChunkFetchFailed,
    ChunkRefused,
    ChunksHeld,
    ChunkStored,
    Event,
    FetchChunk,
    FetchManifest,
    LeadershipChanged,
    ManifestAccepted,
    ManifestFetched,
    ManifestFetchFailed,
    MemberChanged,
    NodeId,
    PackageComplete,
    WanSourcesChanged,
)
from actors.package import FileEntry, Manifest, format_version
from actors.replication import BUSY, NOT_HELD
from sim.host import Scheduled, schedule
from sim.scenario import PublishSpec, ReplicationSpec, split_sizes
from sim.transfer_model import SOURCE_DOWN, Capacities, Transfer, TransferModel

if TYPE_CHECKING:
    from sim.host import SimNode
    from sim.world import World

ORIGIN: Final = Address("192.0.2.1", 8443)
"""The origin's chunk service (RFC 5737 TEST-NET-1: never a real host)."""
ORIGIN_SITE: Final = "origin"
FAILURE_NOTICED_S: Final = 1.0
"""How long a fetch from a dead or cut-off source takes to fail (a TCP reset or timeout)."""
ANSWER_S: Final = 0.001
"""How long a source takes to say it lacks a chunk (one LAN round trip)."""
PROGRESS_INTERVAL_S: Final = 1.0
WINDOW_S: Final = 1.0
"""The window of the WAN cap check."""
CORRUPT: Final = "corrupt"


@dataclass(slots=True)
class Published:
    """A package the origin published: its manifest, when, and its chunk table."""

    manifest: Manifest
    at_s: float
    chunks: tuple[ChunkRef, ...]
    file_offsets: tuple[int, ...]

    def number(self, fetch: FetchChunk) -> int | None:
        """The chunk number `fetch` names, or None if the package has no such chunk."""
        files = self.manifest.files
        if not 0 <= fetch.file_index < len(files):
            return None
        if not 0 <= fetch.chunk_index < len(files[fetch.file_index].chunk_sha256):
            return None
        return self.file_offsets[fetch.file_index] + fetch.chunk_index


@dataclass(slots=True)
class SiteProgress:
    """How far the current package got in one site, kept up to date incrementally."""

    running: int = 0
    incomplete: int = 0
    """Running peers whose store lacks some chunk of the current package."""
    held_chunks: int = 0
    """Chunks of the current package held by running peers."""
    done_s: float | None = None
    samples: list[list[float]] = field(default_factory=list)


@dataclass(slots=True)
class ReplicationFigures:
    """What replication did in a run (see the module docstring); every figure is simulated."""

    wan_bytes_by_site: dict[str, int]
    wan_window_bytes_max_by_site: dict[str, int]
    wan_cap_exceeded: int
    published_bytes: int
    origin_bytes: int
    completions: int
    completed_bytes: int
    replication_s: list[float]
    replication_s_by_site: dict[str, float]
    """The current package's replication time in each site that it fully reached."""
    replication_unfinished: int
    progress_by_site: dict[str, list[list[float]]]
    corrupt_chunks_refused: int
    corrupt_chunks_accepted: int
    lan_utilisation: float | None
    chunk_transfers: int
    chunk_fetch_failures: int


class ReplicationHost:
    """The origin, the stores and publishing of one run; a world listener."""

    def __init__(
        self,
        world: World,
        spec: ReplicationSpec,
        sites: list[str],
        on_complete: Callable[[SimNode], None],
    ) -> None:
        self._world = world
        self._spec = spec
        self._on_complete = on_complete
        self._rng = random.Random(f"xfer:{world.seed}")
        world.network.attach(ORIGIN, ORIGIN_SITE, ORIGIN_SITE)
        capacities = Capacities(
            origin_bytes_per_s=spec.origin_bytes_per_s,
            peer_bytes_per_s=spec.lan_bytes_per_s,
            upload_slots=spec.upload_slots,
            upload_backlog=spec.upload_backlog,
        )
        self.model = TransferModel(
            world,
            ORIGIN,
            capacities,
            on_finished=self._on_finished,
            on_failed=self._on_failed,
        )
        for site in sites:
            self.model.add_site(site, spec.site(site).wan_bytes_per_s)
        self._sites: dict[str, SiteProgress] = {site: SiteProgress() for site in sites}
        self._stores: dict[NodeId, dict[str, Bitfield]] = {}
        self._live: dict[NodeId, SimNode] = {}
        self._published: list[Published] = []
        self._by_id: dict[str, Published] = {}
        self._replication_s: list[float] = []
        self._completions = 0
        self._completed_bytes = 0
        self.corrupt_refused = 0
        self.corrupt_accepted = 0
        self.fetch_failures = 0
        self.busy_refusals = 0
        self._tick_callbacks = (self._on_tick,)
        self._failure_callbacks = (self._on_failure_due,)
        world.chunk_service = self

    # ----------------------------------------------------------------------- inputs

    @property
    def current(self) -> Published | None:
        """The latest published package, if any."""
        return self._published[-1] if self._published else None

    def holds_current(self, node_id: NodeId) -> bool:
        """Whether `node_id`'s store holds every chunk of the current package."""
        current = self.current
        return current is not None and self._complete(node_id, current)

    def publish(self, spec: PublishSpec) -> None:
        """The origin publishes `spec`: every running peer hears of it at once."""
        now_s = self._world.env.now
        manifest = build_manifest(spec, self._spec.chunk_bytes)
        assert manifest.package_id not in self._by_id, f"{manifest.package_id} published twice"
        chunks = chunk_table(manifest)
        offsets = tuple(
            sum(len(entry.chunk_sha256) for entry in manifest.files[:index])
            for index in range(len(manifest.files))
        )
        published = Published(manifest, now_s, chunks, offsets)
        self._published.append(published)
        self._by_id[manifest.package_id] = published
        self._world.trace.record(now_s, "-", "publish", manifest.package_id)
        self._recount(published)
        for node in self._live.values():
            self._tell_package(node, published)
        self._sample(now_s)
        if len(self._published) == 1:  # the progress sampler runs from the first publish on
            self._schedule_tick(PROGRESS_INTERVAL_S)

    def fetch(self, node: SimNode, command: FetchChunk) -> None:
        """`node`'s replication actor asks for a chunk (`SimNode` hands it over)."""
        published = self._by_id.get(command.package_id)
        number = None if published is None else published.number(command)
        source = self._world.by_address.get(command.source)
        if command.source != ORIGIN and source is None:
            self._fail_later(node, command, "no route", FAILURE_NOTICED_S)
            return
        if source is not None and not source.running:
            self._fail_later(node, command, SOURCE_DOWN, FAILURE_NOTICED_S)
            return
        if number is None or (source is not None and not self._holds(source, command, number)):
            self._fail_later(node, command, NOT_HELD, ANSWER_S)
            return
        refusal = self.model.request(command, node, source)
        if refusal == BUSY:
            self.busy_refusals += 1
            self._fail_later(node, command, BUSY, ANSWER_S)
        elif refusal is not None:
            self._fail_later(node, command, refusal, FAILURE_NOTICED_S)

    def fetch_manifest(self, node: SimNode, command: FetchManifest) -> None:
        """`node`'s replication actor asks a source for a manifest. The manifest spreads
        instantly in the sim (`publish` and `_on_start` tell it to every running peer), so
        the answer, after `ANSWER_S`, only names the newest published package, or fails
        `not_held` before the first publish."""
        published = self.current
        answer: Event = (
            ManifestFetchFailed(command, NOT_HELD)
            if published is None
            else ManifestFetched(command, published.manifest.package_id)
        )
        node.deliver(ActorName.REPLICATION, answer, ANSWER_S)

    def set_wan(self, sites: list[str], up: bool) -> None:
        """Take the WAN links of `sites` down, or bring them back."""
        now_s = self._world.env.now
        for site in sites:
            self._world.trace.record(now_s, "-", "wan", f"{site} {'up' if up else 'down'}")
            self.model.set_link(site, up)

    # ----------------------------------------------------------------------- listener

    def member_changed(self, now_s: float, observer: SimNode, event: MemberChanged) -> None:
        """Membership is discovery's business."""

    def leadership_changed(self, now_s: float, node: SimNode, event: LeadershipChanged) -> None:
        """The downloader election needs nothing from the world."""

    def lifecycle(self, now_s: float, node: SimNode | None, what: str) -> None:
        """Starts get their store's view; crashes and stops cut transfers; partitions too."""
        if node is None or what.startswith("partition"):
            self.model.topology_changed()
        elif what in ("start", "restart"):
            self._on_start(node, now_s)
        elif what in ("crash", "stop"):
            self._on_down(node)

    # ----------------------------------------------------------------------- figures

    def figures(self) -> ReplicationFigures:
        """The run's replication figures (call once, at the end)."""
        now_s = self._world.env.now
        self._sample(now_s)
        published_bytes = sum(p.manifest.total_bytes for p in self._published)
        window = {site: self._window_bound(site) for site in self._sites}
        return ReplicationFigures(
            wan_bytes_by_site={s: round(self.model.wan_bytes(s)) for s in self._sites},
            wan_window_bytes_max_by_site={
                site: round(self.model.window_bytes_max(site, WINDOW_S, now_s))
                for site in self._sites
            },
            wan_cap_exceeded=sum(
                self.model.windows_over(site, WINDOW_S, bound, now_s)
                for site, bound in window.items()
            ),
            published_bytes=published_bytes,
            origin_bytes=round(self.model.origin_upload.moved_bytes),
            completions=self._completions,
            completed_bytes=self._completed_bytes,
            replication_s=list(self._replication_s),
            replication_s_by_site=self._replication_s_by_site(),
            replication_unfinished=self._unfinished(),
            progress_by_site={site: list(p.samples) for site, p in self._sites.items()},
            corrupt_chunks_refused=self.corrupt_refused,
            corrupt_chunks_accepted=self.corrupt_accepted,
            lan_utilisation=self._lan_utilisation(now_s),
            chunk_transfers=self.model.started,
            chunk_fetch_failures=self.fetch_failures,
        )

    def window_bound_bytes(self, site: str) -> float:
        """What `site`'s downloader may let across in one window: cap x window + burst."""
        return self._window_bound(site)

    # ----------------------------------------------------------------------- lifecycle

    def _on_start(self, node: SimNode, now_s: float) -> None:
        if ActorName.REPLICATION not in node.actors:
            return
        self._live[node.node_id] = node
        node.deliver(ActorName.REPLICATION, WanSourcesChanged((ORIGIN,)), 0.0)
        current = self.current
        if current is None:
            return
        progress = self._sites[node.info.site]
        progress.running += 1
        progress.held_chunks += self._held(node.node_id, current).count()
        if not self._complete(node.node_id, current):
            progress.incomplete += 1
        self._tell_package(node, current)

    def _on_down(self, node: SimNode) -> None:
        self.model.node_lost(node)
        if self._live.pop(node.node_id, None) is None:
            return
        current = self.current
        if current is None:
            return
        progress = self._sites[node.info.site]
        progress.running -= 1
        progress.held_chunks -= self._held(node.node_id, current).count()
        if not self._complete(node.node_id, current):
            progress.incomplete -= 1
            self._check_site(node.info.site, self._world.env.now)

    def _tell_package(self, node: SimNode, published: Published) -> None:
        held = self._held(node.node_id, published)
        package_id = published.manifest.package_id
        events: list[Event] = [
            ManifestAccepted(published.manifest),
            ChunksHeld(package_id, held.to_bytes()),
        ]
        if held.count() == held.size:
            events.append(PackageComplete(package_id))
        for event in events:
            node.deliver(ActorName.REPLICATION, event, 0.0)

    def _recount(self, published: Published) -> None:
        """Site progress from scratch for a newly published package."""
        for site, progress in self._sites.items():
            live = [node for node in self._live.values() if node.info.site == site]
            self._sites[site] = SiteProgress(
                running=len(live),
                incomplete=sum(1 for n in live if not self._complete(n.node_id, published)),
                held_chunks=sum(self._held(n.node_id, published).count() for n in live),
                samples=progress.samples,
            )

    # ----------------------------------------------------------------------- transfers

    def _on_finished(self, transfer: Transfer) -> None:
        command = transfer.command
        node = transfer.receiver
        published = self._by_id[command.package_id]
        number = published.number(command)
        assert number is not None
        ref = published.chunks[number]
        genuine = chunk_token(published.manifest, ref)
        arrived = genuine
        fraction = self._spec.corrupt_fraction
        if fraction and self._rng.random() < fraction:
            arrived = bytes([genuine[0] ^ 0xFF]) + genuine[1:]
        expected = published.manifest.files[ref.file_index].chunk_sha256[ref.chunk_index]
        if hashlib.sha256(arrived).digest() != expected:  # the store's verification
            self.corrupt_refused += 1
            node.deliver(ActorName.REPLICATION, ChunkRefused(command, CORRUPT), 0.0)
            return
        if arrived != genuine:
            self.corrupt_accepted += 1
        whole = self._store_chunk(node, published, number)
        node.deliver(ActorName.REPLICATION, ChunkStored(command), 0.0)
        if whole:
            node.deliver(ActorName.REPLICATION, PackageComplete(command.package_id), 0.0)

    def _store_chunk(self, node: SimNode, published: Published, number: int) -> bool:
        """Write chunk `number`; True if that made the package whole."""
        held = self._held(node.node_id, published)
        if not held.set(number):
            return False
        whole = held.count() == held.size
        if published is not self.current:
            return whole  # a late answer for an older package: no figures
        progress = self._sites[node.info.site]
        progress.held_chunks += 1
        if not whole:
            return False
        progress.incomplete -= 1
        self._completions += 1
        self._completed_bytes += published.manifest.total_bytes
        self._on_complete(node)
        self._check_site(node.info.site, self._world.env.now)
        return True

    def _on_failed(self, command: FetchChunk, receiver: SimNode, reason: str) -> None:
        if reason == BUSY:
            self.busy_refusals += 1
        delay_s = ANSWER_S if reason == BUSY else FAILURE_NOTICED_S
        self._fail_later(receiver, command, reason, delay_s)

    def _fail_later(self, node: SimNode, command: FetchChunk, reason: str, delay_s: float) -> None:
        self.fetch_failures += 1
        item = Scheduled(
            self._failure_callbacks, node.life, node, ChunkFetchFailed(command, reason)
        )
        schedule(self._world.env, item, delay_s)

    def _on_failure_due(self, item: Scheduled) -> None:
        node: SimNode = item.first
        if node.running and node.life == item.life:
            node.deliver(ActorName.REPLICATION, item.second, 0.0)

    def _holds(self, source: SimNode, command: FetchChunk, number: int) -> bool:
        held = self._stores.get(source.node_id, {}).get(command.package_id)
        return held is not None and number in held

    # ----------------------------------------------------------------------- bookkeeping

    def _held(self, node_id: NodeId, published: Published) -> Bitfield:
        store = self._stores.setdefault(node_id, {})
        package_id = published.manifest.package_id
        held = store.get(package_id)
        if held is None:
            held = store[package_id] = Bitfield(len(published.chunks))
        return held

    def _complete(self, node_id: NodeId, published: Published) -> bool:
        held = self._held(node_id, published)
        return held.count() == held.size

    def _check_site(self, site: str, now_s: float) -> None:
        progress = self._sites[site]
        current = self.current
        if current is None or progress.done_s is not None:
            return
        if progress.incomplete == 0 and progress.running > 0:
            progress.done_s = now_s
            self._replication_s.append(now_s - current.at_s)
            self._sample(now_s)

    def _replication_s_by_site(self) -> dict[str, float]:
        current = self.current
        if current is None:
            return {}
        return {
            site: progress.done_s - current.at_s
            for site, progress in self._sites.items()
            if progress.done_s is not None
        }

    def _unfinished(self) -> int:
        """Sites the current package has not yet fully reached (earlier packages' too)."""
        finished = len(self._replication_s)
        return len(self._published) * len(self._sites) - finished

    def _schedule_tick(self, delay_s: float) -> None:
        schedule(self._world.env, Scheduled(self._tick_callbacks, 0, None, None), delay_s)

    def _on_tick(self, item: Scheduled) -> None:
        self._sample(self._world.env.now)
        self._schedule_tick(PROGRESS_INTERVAL_S)

    def _sample(self, now_s: float) -> None:
        current = self.current
        if current is None:
            return
        chunks = len(current.chunks)
        for progress in self._sites.values():
            whole = progress.running * chunks
            fraction = progress.held_chunks / whole if whole else 0.0
            samples = progress.samples
            if samples and samples[-1][0] == now_s:
                samples[-1][1] = fraction
            elif not samples or samples[-1][1] != fraction:
                samples.append([now_s, fraction])

    def _window_bound(self, site: str) -> float:
        knobs = self._spec.knobs
        cap_bytes_per_s = self._spec.site(site).wan_cap_bytes_per_s
        burst_bytes = max(knobs.wan_burst_bytes, self._spec.chunk_bytes)
        return cap_bytes_per_s * WINDOW_S + burst_bytes

    def _lan_utilisation(self, now_s: float) -> float | None:
        """Mean over peers that received anything: bytes received / (busy time x cap)."""
        ratios = [
            pipe.moved_bytes / (pipe.busy_total_s(now_s) * pipe.capacity_bytes_per_s)
            for pipe in self.model.downloads.values()
            if pipe.busy_total_s(now_s) > 0
        ]
        return sum(ratios) / len(ratios) if ratios else None


def build_manifest(spec: PublishSpec, chunk_bytes: int) -> Manifest:
    """The manifest of a published package: `spec.files` files, chunk hashes of tokens."""
    name = f"{spec.name}-{format_version(spec.version)}"
    entries: list[FileEntry] = []
    for index, size_bytes in enumerate(split_sizes(spec.size_bytes, spec.files)):
        path = f"part-{index:03d}.bin"
        count = -(-size_bytes // chunk_bytes)
        digests = tuple(
            hashlib.sha256(_token(name, path, chunk)).digest() for chunk in range(count)
        )
        whole = hashlib.sha256(b"".join(digests)).digest()
        entries.append(FileEntry(path, size_bytes, whole, digests))
    return Manifest(
        name=spec.name,
        version=spec.version,
        created_s=int(spec.at_s),
        files=tuple(entries),
        chunk_bytes=chunk_bytes,
    )


def chunk_token(manifest: Manifest, ref: ChunkRef) -> bytes:
    """The simulated content of chunk `ref`: a token naming it (its hash is in the manifest)."""
    return _token(manifest.package_id, ref.path, ref.chunk_index)


def _token(package_id: str, path: str, chunk_index: int) -> bytes:
    return f"{package_id}/{path}#{chunk_index}".encode()
