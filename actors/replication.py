"""Replication actor: bring the current boot package to this peer, chunk by chunk.

Theory of operation
-------------------
Inputs: the target package (`ManifestAccepted`, a manifest the host verified and staged),
what the store holds (`ChunksHeld`, at start and whenever the store's view changes),
membership (`MemberChanged` from discovery), this peer's standing in the `site:<name>` scope
(`LeadershipChanged` from election, capability `downloader`), where the WAN is
(`WanSourcesChanged`), other peers' `Have` advertisements, the outcome of each fetch
(`ChunkStored`, `ChunkRefused`, `ChunkFetchFailed`), the store's verdict on the assembled
package (`PackageComplete`) and timers. Outputs: `FetchChunk` for the host to carry out,
`Have` messages, a `Tell` to election, logs and counters.

Chunks are numbered in manifest order (`actors.bitfield`); a peer's holdings are a BEP 3
bitfield. Peers of this site advertise theirs with `Have` (one message per 4096 chunks, or
one `complete` message) to `have_fanout` site peers, round-robin, every `have_interval_s`,
and again at most `have_debounce_s` after a change; a chunk stored while fewer than
`have_rare_holders` site peers are known to hold it (the WAN downloader's new chunks, and
their first copies) is news that cannot wait: it is advertised to `have_fanout` peers at
once, so the few first holders are asked for it within a round trip, not a debounce, and
a chunk reaches the whole site in a few transfer times; a peer seen alive for the first time
gets ours at once with `reply=True` (a request for its own), and a `Have` from a site peer
discovery has not reported yet is taken and answered. Only ALIVE and SUSPECT peers of this
site count; a dead or departed one's chunks leave the counts, its fetches are retried
elsewhere, and its late `Have`s are dropped until discovery sees it alive again.

Fetch planning runs after every input, while fewer than `fetches_max` fetches are in flight:

1. LAN, every peer: among the chunks this peer lacks, not in flight, held by at least one
   site peer, take the rarest first, by how many site peers hold each (Cohen, "Incentives
   build robustness in BitTorrent", 2003, §3.2 "Rarest First": replicate what is rare
   before the peers holding it leave); ties go by a random permutation of chunk numbers
   drawn once per package from the injected `random.Random` (BEP 3's random piece order),
   so equally rare chunks spread over the site instead of everyone asking for the same. The
   source is a holder with fewer than `fetches_per_source_max` fetches from us, not backing
   off, preferring holders not yet tried for that chunk, then the least loaded, then a
   per-peer random rank.
2. WAN, the site's elected downloader only: chunks that no site peer holds come from a WAN
   source (the origin, or peers of other sites), at most `wan_fetches_max` at once, and only
   when the site's token bucket (`actors.token_bucket`, `wan_bytes_per_s`, burst
   `wan_burst_bytes`) holds the chunk's bytes; otherwise a timer wakes the planner when it
   will. A new downloader starts with an empty bucket and waits `wan_settle_s` after asking
   every site peer for its `Have` (`reply=True`), so chunks already in the site, for example
   those a dead downloader handed out, come over the LAN, never twice across the WAN.

A fetch ends with the store's answer or a timeout (`fetch_timeout_s_min`, or
`..._per_mib` per MiB, whichever is longer). A timeout or failure makes the source back off
for `source_backoff_s` and the chunk is retried on another source; a `busy` answer (the
source's upload slots and backlog are full: it is alive and frees a place within a few
chunk transfers) only for `busy_backoff_s`; a refusal (bad data)
bans the source for `source_ban_s`; `not_held` clears that bit of the source's bitfield. A
late `ChunkStored` still counts: the store verified the chunk.

When every chunk is held the host assembles and verifies the package; its
`PackageComplete` makes this peer advertise `complete=True` and tell election it may now be
the subnet's responder (`EligibilityChanged`; unless built with `tells_eligibility=False`:
the real agent tells election itself once its boot servers serve the new tree). Remote
garbage and stale host answers are counted (`replication.dropped.*`) and dropped; nothing a
peer sends can raise.

Manifests spread the same way, as signed documents the host fetches (`FetchManifest`) and
the store verifies (signature, rollback, quota) before anything is staged: a `Have` from a
site peer for a newer package than the target (or when there is none) makes this peer fetch
that manifest from that peer; the site's downloader asks its WAN sources, round-robin, for
their newest manifest every `manifest_poll_s` and as soon as it is elected; a publisher's
`SeedOffered` (`peerpxe publish`) makes this peer fetch the seed's manifest and count the
seed as a LAN holder of every chunk, so the package enters the site through this peer and
spreads from it. At most `MANIFEST_FETCHES_MAX` manifest fetches are out at once (one per
source), each bounded by `manifest_fetch_timeout_s`; a manifest the store refused is not
fetched again from `Have`s for `manifest_retry_s` (counted and logged with the reason). A
`Have` for an older package is answered with ours, so a peer that is behind asks us.

The signed policy spreads alongside: every advertisement round also sends the policy
version this peer holds (`PolicyVersion`, when it holds one); a peer that hears of a newer
version fetches the policy from that peer (`FetchPolicy`: the host verifies signature and
rollback, stores and applies it, then says `PolicyInstalled`), and pushes the new version to
`have_fanout` peers at once, so a policy reaches a site in a few gossip rounds; one that
hears of an older version answers with its own. The downloader's WAN poll and a publisher's
seed are asked for their policy too. One policy fetch is out at a time.

Nothing is fetched before the store has said what it holds (`ChunksHeld`), so chunks on
disk are never fetched again after a restart. A new `ManifestAccepted` replaces the target:
fetches in flight are forgotten and their answers dropped as stale.

Invariants: at most `fetches_max` fetches in flight, at most `fetches_per_source_max` per
source, at most `wan_fetches_max` WAN; a WAN fetch is issued only by the downloader, only
for a chunk no site peer is known to hold, only once its bytes are spent from the bucket.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from typing import ClassVar, Final

from actors.bitfield import CHUNKS_MAX, Bitfield, ChunkRef
from actors.core import (
    ActorName,
    Address,
    BootPolicyChanged,
    CancelTimer,
    CapabilitiesChanged,
    ChunkFetchFailed,
    ChunkRefused,
    ChunksHeld,
    ChunkStored,
    Command,
    CountMetric,
    DhcpPacketReceived,
    EligibilityChanged,
    Event,
    FetchChunk,
    FetchManifest,
    FetchPolicy,
    LeadershipChanged,
    Log,
    LogLevel,
    ManifestAccepted,
    ManifestFetched,
    ManifestFetchFailed,
    MemberChanged,
    MemberInfo,
    MemberState,
    MessageReceived,
    NodeId,
    PackageComplete,
    PeerDiscovered,
    PeerLost,
    PolicyFetchFailed,
    PolicyInstalled,
    SeedOffered,
    SendFailed,
    SendMessage,
    ServePermission,
    StartTimer,
    Tell,
    TimerFired,
    WanSourcesChanged,
)
from actors.election import DOWNLOADER_CAPABILITY, RESPONDER_CAPABILITY
from actors.messages import Have, Message, PolicyVersion
from actors.package import Manifest
from actors.replication_state import (
    Fetch,
    Peer,
    Source,
    Target,
    pick_holder,
    pick_wan_source,
)
from actors.token_bucket import TokenBucket

MIB: Final = 1 << 20
NOT_HELD: Final = "not_held"
"""`ChunkFetchFailed.reason` when the source does not hold the chunk (anything else: backoff)."""
BUSY: Final = "busy"
"""`ChunkFetchFailed.reason` when the source's upload slots and backlog are full (a shorter
backoff, `busy_backoff_s`)."""
WAN_SOURCES_MAX: Final = 64
_NO_TRIES: Final[dict[Address, None]] = {}
"""No source tried yet for a chunk (shared and read only: never written to)."""
DEPARTED_MAX: Final = 4096
"""Dead or departed peers remembered, so their late `Have`s are not taken as news."""

_HAVE_TIMER: Final = "have"
_HAVE_SOON_TIMER: Final = "have_soon"
_WAN_TOKENS_TIMER: Final = "wan_tokens"
_WAN_SETTLE_TIMER: Final = "wan_settle"
_WAKE_TIMER: Final = "wake"
_MANIFEST_POLL_TIMER: Final = "manifest_poll"
_MANIFEST_PREFIX: Final = "manifest:"
_POLICY_TIMER: Final = "policy_fetch"
MANIFEST_FETCHES_MAX: Final = 2
"""Manifest fetches in flight at once (a seed's offer may come while a poll is out)."""
REFUSED_MANIFESTS_MAX: Final = 64
SEED_PREFIX: Final = "seed:"
_FETCH_PREFIX: Final = "fetch:"
_USABLE_STATES: Final = (MemberState.ALIVE, MemberState.SUSPECT)

StoreEvent = (
    ManifestAccepted | ChunksHeld | ChunkStored | ChunkRefused | ChunkFetchFailed | PackageComplete
)
"""What the host says about the package and its store."""
DocumentEvent = (
    SeedOffered | ManifestFetched | ManifestFetchFailed | PolicyInstalled | PolicyFetchFailed
)
"""Seeds, and what came of fetching signed documents (manifests, the policy)."""


@dataclass(frozen=True, slots=True)
class ReplicationKnobs:
    """Concurrency, timeouts, WAN cap and advertisement pacing (Kraken-like defaults)."""

    fetches_max: int = 16
    fetches_per_source_max: int = 4
    """Kraken pipelines 3 piece requests per connection; BEP 3 clients commonly keep 5."""
    wan_fetches_max: int = 4
    fetch_timeout_s_min: float = 4.0
    """Kraken's piece-request timeout is max(4 s, 4 s per MB)."""
    fetch_timeout_s_per_mib: float = 4.0
    wan_fetch_timeout_s_per_mib: float = 10.0
    wan_bytes_per_s: float = 12_500_000.0
    """The site's WAN cap (100 Mbit/s); the downloader never starts more than it allows."""
    wan_burst_bytes: int = 2 * MIB
    """Bucket depth; raised to the package's largest chunk if that is larger."""
    have_interval_s: float = 5.0
    have_debounce_s: float = 0.5
    have_fanout: int = 8
    have_rare_holders: int = 4
    """A chunk stored while fewer site peers than this are known to hold it is news: it is
    advertised to `have_fanout` peers at once, not after `have_debounce_s` (0: never)."""
    wan_settle_s: float = 1.0
    source_backoff_s: float = 2.0
    busy_backoff_s: float = 1.0
    """A source that answered `busy` (its upload slots and backlog are full: alive, and
    free again within a few chunk transfers) is skipped this long."""
    source_ban_s: float = 30.0
    """Kraken blacklists a misbehaving connection for 30 s."""
    peers_max: int = 4096
    manifest_poll_s: float = 10.0
    """How often the site's downloader asks a WAN source for its newest manifest."""
    manifest_fetch_timeout_s: float = 10.0
    manifest_retry_s: float = 30.0
    """A refused manifest is not fetched again from Haves for this long."""

    def __post_init__(self) -> None:
        """Knobs come from config files and sweeps: refuse bad ones with a reason."""
        checks = (
            (self.fetches_max >= 1, f"fetches_max must be >= 1, got {self.fetches_max}"),
            (self.fetches_per_source_max >= 1,
             f"fetches_per_source_max must be >= 1, got {self.fetches_per_source_max}"),
            (self.wan_fetches_max >= 0,
             f"wan_fetches_max must be >= 0, got {self.wan_fetches_max}"),
            (self.fetch_timeout_s_min > 0,
             f"fetch_timeout_s_min must be > 0, got {self.fetch_timeout_s_min}"),
            (self.wan_bytes_per_s > 0, f"wan_bytes_per_s must be > 0, got {self.wan_bytes_per_s}"),
            (self.wan_burst_bytes > 0, f"wan_burst_bytes must be > 0, got {self.wan_burst_bytes}"),
            (0 < self.have_debounce_s <= self.have_interval_s,
             f"need 0 < have_debounce_s ({self.have_debounce_s}) <= "
             f"have_interval_s ({self.have_interval_s})"),
            (self.have_fanout >= 1, f"have_fanout must be >= 1, got {self.have_fanout}"),
            (self.have_rare_holders >= 0,
             f"have_rare_holders must be >= 0, got {self.have_rare_holders}"),
            (self.busy_backoff_s >= 0, f"busy_backoff_s must be >= 0, got {self.busy_backoff_s}"),
            (self.peers_max >= 1, f"peers_max must be >= 1, got {self.peers_max}"),
            (self.manifest_poll_s > 0,
             f"manifest_poll_s must be > 0, got {self.manifest_poll_s}"),
            (self.manifest_fetch_timeout_s > 0,
             f"manifest_fetch_timeout_s must be > 0, got {self.manifest_fetch_timeout_s}"),
        )  # fmt: skip
        for ok, problem in checks:
            if not ok:
                raise ValueError(problem)


class Replication:
    """The replication actor of one peer (see the module docstring)."""

    NAME: ClassVar[ActorName] = ActorName.REPLICATION

    def __init__(
        self,
        self_info: MemberInfo,
        rng: random.Random,
        knobs: ReplicationKnobs = ReplicationKnobs(),
        wan_sources: tuple[Address, ...] = (),
        *,
        tells_eligibility: bool = True,
    ) -> None:
        self.self_info = self_info
        self._tells_eligibility = tells_eligibility
        """Tell election we may lead once the package is complete (the simulator); the real
        agent says so itself, once its boot servers serve the package's verified tree."""
        self.knobs = knobs
        self._rng = rng
        self._site_scope = f"site:{self_info.site}"
        self._target: Target | None = None
        self._peers: dict[NodeId, Peer] = {}
        self._at_address: dict[Address, Peer] = {}
        """`_peers` by address (a fetch's answer names its source by address)."""
        self._departed: dict[NodeId, None] = {}
        self._wan: dict[Address, Source] = {}
        self._fetches: dict[int, Fetch] = {}
        self._fetch_timers: dict[str, int] = {}
        self._tried: dict[int, dict[Address, None]] = {}
        self._fetch_serial = 0
        self._downloader = False
        self._wan_ready_s = math.inf
        self._bucket = TokenBucket(knobs.wan_bytes_per_s, float(knobs.wan_burst_bytes))
        self._have_order: list[NodeId] = []
        self._have_sent_s = -math.inf
        self._have_soon_armed = False
        self._wake_at_s = math.inf
        self._backoffs: list[tuple[float, int, Source]] = []
        """Every backoff ever set, as a heap of (until, serial, source); stale ones are
        skipped lazily, so the first live one is the next wake-up."""
        self._backoff_serial = 0
        self._manifest_fetches: dict[Address, FetchManifest] = {}
        self._refused_manifests: dict[str, float] = {}
        """Package ids whose manifest the store refused, until when they are not retried."""
        self._seeds: dict[Address, tuple[Peer, str]] = {}
        """Publishers' seeds (`SeedOffered`): a pseudo-peer each, and the package it holds."""
        self._wan_poll_index = 0
        self.policy_version = 0
        """The signed policy this peer holds (0: none), as the host says (`PolicyInstalled`)."""
        self._policy_fetch: FetchPolicy | None = None
        self._refused_policies: dict[int, float] = {}
        self._set_wan_sources(wan_sources)

    # ------------------------------------------------------------------ public API

    def start(self, now_s: float) -> list[Command]:
        """Arm the periodic advertisement and manifest poll; the host tells the target next."""
        return [
            StartTimer(_HAVE_TIMER, now_s + self.knobs.have_interval_s),
            StartTimer(_MANIFEST_POLL_TIMER, now_s + self.knobs.manifest_poll_s),
        ]

    def handle(self, event: Event, now_s: float) -> list[Command]:
        """React to one event, then start what fetches are due; never raises for remote input."""
        commands = self._dispatch(event, now_s)
        commands.extend(self._plan(now_s))
        return commands

    def progress(self) -> tuple[int, int]:
        """(chunks held, chunks in the package); (0, 0) without a target."""
        target = self._target
        if target is None:
            return (0, 0)
        return (target.held.count(), target.size)

    def target_package(self) -> str:
        """The id of the package this peer is bringing (or holds), "" without one."""
        return "" if self._target is None else self._target.manifest.package_id

    @property
    def downloader(self) -> bool:
        """Whether this peer is its site's elected WAN downloader."""
        return self._downloader

    def fetching(self) -> list[FetchChunk]:
        """The fetches in flight, oldest first."""
        return [fetch.command for fetch in self._fetches.values()]

    def availability(self, number: int) -> int:
        """How many live site peers are known to hold chunk `number` of the target."""
        assert self._target is not None
        return self._target.availability[number]

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, event: Event, now_s: float) -> list[Command]:
        match event:
            case MessageReceived(source, address, message):
                return self._on_message(source, address, message, now_s)
            case TimerFired(name):
                return self._on_timer(name, now_s)
            case MemberChanged(member, state, _incarnation):
                return self._on_member(member, state, now_s)
            case LeadershipChanged():
                return self._on_leadership(event, now_s)
            case WanSourcesChanged(sources):
                self._set_wan_sources(sources)
                return []
            case SendFailed():
                return [CountMetric("replication.send_failed")]
            case (
                SeedOffered()
                | ManifestFetched()
                | ManifestFetchFailed()
                | PolicyInstalled()
                | PolicyFetchFailed()
            ):
                return self._on_document_event(event, now_s)
            case (
                PeerDiscovered()
                | PeerLost()
                | DhcpPacketReceived()
                | EligibilityChanged()
                | CapabilitiesChanged()
                | BootPolicyChanged()
                | ServePermission()
            ):
                return []
            case (
                ManifestAccepted()
                | ChunksHeld()
                | ChunkStored()
                | ChunkRefused()
                | ChunkFetchFailed()
                | PackageComplete()
            ):
                return self._on_store_event(event, now_s)

    def _on_document_event(self, event: DocumentEvent, now_s: float) -> list[Command]:
        """Seeds, and the outcome of manifest and policy fetches."""
        match event:
            case SeedOffered(source):
                return self._on_seed_offered(source, now_s)
            case ManifestFetched(command, package_id):
                return self._on_manifest_fetched(command, package_id)
            case ManifestFetchFailed(command, reason, refused):
                return self._on_manifest_fetch_failed(command, reason, refused, now_s)
            case PolicyInstalled(version, command):
                return self._on_policy_installed(version, command)
            case PolicyFetchFailed(command, reason, refused):
                return self._on_policy_fetch_failed(command, reason, refused, now_s)

    def _on_store_event(self, event: StoreEvent, now_s: float) -> list[Command]:
        match event:
            case ManifestAccepted(manifest):
                return self._on_manifest(manifest, now_s)
            case ChunksHeld(package_id, bitmap):
                return self._on_chunks_held(package_id, bitmap, now_s)
            case ChunkStored(fetch):
                return self._on_chunk_stored(fetch, now_s)
            case ChunkRefused(fetch, reason):
                return self._on_chunk_refused(fetch, reason, now_s)
            case ChunkFetchFailed(fetch, reason):
                return self._on_fetch_failed(fetch, reason, now_s)
            case PackageComplete(package_id):
                return self._on_package_complete(package_id, now_s)

    # ------------------------------------------------------------------ package and store

    def _on_manifest(self, manifest: Manifest, now_s: float) -> list[Command]:
        current = self._target
        if current is not None and current.manifest.package_id == manifest.package_id:
            return []
        commands = self._drop_target()
        fields = (("package", manifest.package_id), ("chunks", manifest.chunk_count))
        if manifest.chunk_count > CHUNKS_MAX:
            commands.append(Log(LogLevel.ERROR, f"package has over {CHUNKS_MAX} chunks", fields))
            commands.append(CountMetric("replication.dropped.package_too_large"))
            return commands
        self._target = Target.of(manifest, self._rng)
        largest = max((ref.size_bytes for ref in self._target.chunks), default=0)
        capacity_bytes = float(max(self.knobs.wan_burst_bytes, largest))
        self._bucket = TokenBucket(self.knobs.wan_bytes_per_s, capacity_bytes)
        self._bucket.empty(now_s)  # never more than the cap, whatever the switch
        for seed, package_id in self._seeds.values():
            self._apply_seed(seed, package_id)
        commands.append(Log(LogLevel.INFO, "replication target", fields))
        return commands

    def _drop_target(self) -> list[Command]:
        """Forget the package being fetched: fetches, attempts, peers' bitfields."""
        commands: list[Command] = [CancelTimer(fetch.timer) for fetch in self._fetches.values()]
        self._target = None
        self._fetches.clear()
        self._fetch_timers.clear()
        self._tried.clear()
        for peer in self._peers.values():
            peer.held = None
        for seed, _package_id in self._seeds.values():
            seed.held = None
        for source in self._all_sources():
            source.fetching = 0
        return commands

    def _on_chunks_held(self, package_id: str, bitmap: bytes, now_s: float) -> list[Command]:
        target = self._target
        if target is None or package_id != target.manifest.package_id:
            return [CountMetric("replication.dropped.stale_inventory")]
        if len(bitmap) > (target.size + 7) // 8:
            return [CountMetric("replication.dropped.malformed_inventory")]
        if target.complete:
            return [CountMetric("replication.dropped.inventory_after_complete")]
        first_time = not target.inventory_known
        target.set_held(Bitfield.from_bytes(target.size, bitmap))
        commands = self._held_changed(now_s)
        if first_time:
            for peer in self._next_recipients(self.knobs.have_fanout):
                commands.extend(self._send_have(peer, reply=True))
        return commands

    def _on_package_complete(self, package_id: str, now_s: float) -> list[Command]:
        target = self._target
        if target is None or package_id != target.manifest.package_id:
            return [CountMetric("replication.dropped.stale_completion")]
        if target.complete:
            return []
        target.complete = True
        target.set_held(Bitfield.full(target.size))
        fields = (("package", package_id), ("chunks", target.size), ("at_s", now_s))
        commands: list[Command] = [
            Log(LogLevel.INFO, "package complete and verified", fields),
            CountMetric("replication.packages_completed"),
        ]
        if self._tells_eligibility:
            eligible = EligibilityChanged(RESPONDER_CAPABILITY, eligible=True)
            commands.append(Tell(ActorName.ELECTION, eligible))
        commands.extend(self._held_changed(now_s))
        self._have_sent_s = now_s
        for peer in self._next_recipients(self.knobs.have_fanout):
            commands.extend(self._send_have(peer, reply=False))
        return commands

    def _held_changed(self, now_s: float) -> list[Command]:
        """After our holdings changed: progress log and a debounced advertisement."""
        target = self._target
        assert target is not None
        commands = self._progress_log(target)
        if not self._have_soon_armed:
            self._have_soon_armed = True
            due_s = max(now_s, self._have_sent_s + self.knobs.have_debounce_s)
            commands.append(StartTimer(_HAVE_SOON_TIMER, due_s))
        return commands

    def _progress_log(self, target: Target) -> list[Command]:
        held = target.held.count()
        decile = held * 10 // target.size if target.size else 10
        if decile <= target.logged_decile:
            target.logged_decile = decile
            return []
        target.logged_decile = decile
        fields = (
            ("package", target.manifest.package_id),
            ("percent", decile * 10),
            ("held", held),
            ("total", target.size),
        )
        return [Log(LogLevel.INFO, "replication progress", fields)]

    # ------------------------------------------------------------------ fetch results

    def _on_chunk_stored(self, fetch: FetchChunk, now_s: float) -> list[Command]:
        number = self._number_of(fetch)
        if number is None:
            return [CountMetric("replication.dropped.stale_result")]
        target = self._target
        assert target is not None
        commands = self._finish(number, fetch)
        self._tried.pop(number, None)
        if not target.hold(number):
            commands.append(CountMetric("replication.duplicate_chunks"))
            return commands
        kind = "wan" if fetch.wan else "lan"
        commands.append(CountMetric(f"replication.chunks_fetched.{kind}"))
        commands.append(CountMetric(f"replication.bytes.{kind}", fetch.size_bytes))
        if target.availability[number] < self.knobs.have_rare_holders:
            commands.extend(self._announce_rare())
        commands.extend(self._held_changed(now_s))
        return commands

    def _announce_rare(self) -> list[Command]:
        """We just stored a chunk few site peers hold: tell `have_fanout` of them now, so
        that it spreads from us too instead of waiting out the debounce (the chunks the
        downloader brings across the WAN are the rarest of all)."""
        commands: list[Command] = [CountMetric("replication.have_rare")]
        for peer in self._next_recipients(self.knobs.have_fanout):
            commands.extend(self._send_have(peer, reply=False))
        return commands

    def _on_chunk_refused(self, fetch: FetchChunk, reason: str, now_s: float) -> list[Command]:
        number = self._number_of(fetch)
        if number is None:
            return [CountMetric("replication.dropped.stale_result")]
        commands = self._finish(number, fetch)
        self._tried.setdefault(number, {})[fetch.source] = None
        source = self._source_at(fetch.source, wan=fetch.wan)
        if source is not None:
            self._back_off(source, now_s + self.knobs.source_ban_s)
        fields = (("source", f"{fetch.source.host}:{fetch.source.port}"), ("reason", reason))
        commands.append(CountMetric("replication.chunks_refused"))
        commands.append(Log(LogLevel.WARNING, "chunk refused; source banned", fields))
        return commands

    def _on_fetch_failed(self, fetch: FetchChunk, reason: str, now_s: float) -> list[Command]:
        number = self._number_of(fetch)
        if number is None:
            return [CountMetric("replication.dropped.stale_result")]
        commands = self._finish(number, fetch)
        self._tried.setdefault(number, {})[fetch.source] = None
        commands.append(CountMetric("replication.fetch_failed"))
        if reason == NOT_HELD and not fetch.wan:
            self._forget_holding(fetch.source, number)
            return commands
        source = self._source_at(fetch.source, wan=fetch.wan)
        if source is not None:
            knobs = self.knobs
            backoff_s = knobs.busy_backoff_s if reason == BUSY else knobs.source_backoff_s
            self._back_off(source, max(source.unusable_until_s, now_s + backoff_s))
        return commands

    def _on_fetch_timeout(self, name: str, now_s: float) -> list[Command]:
        number = self._fetch_timers.pop(name, None)
        if number is None:
            return [CountMetric("replication.dropped.unknown_timer")]
        fetch = self._fetches.pop(number)
        fetch.source.fetching -= 1
        until_s = max(fetch.source.unusable_until_s, now_s + self.knobs.source_backoff_s)
        self._back_off(fetch.source, until_s)
        self._tried.setdefault(number, {})[fetch.command.source] = None
        return [CountMetric("replication.fetch_timeouts")]

    def _number_of(self, fetch: FetchChunk) -> int | None:
        """The chunk number `fetch` names in the current target, or None if it names none."""
        target = self._target
        if target is None or fetch.package_id != target.manifest.package_id:
            return None
        return target.number(fetch.file_index, fetch.chunk_index)

    def _finish(self, number: int, fetch: FetchChunk) -> list[Command]:
        """Close the fetch of `number` if `fetch` is the one in flight (not a late answer)."""
        current = self._fetches.get(number)
        if current is None or current.command != fetch:
            return []
        del self._fetches[number]
        del self._fetch_timers[current.timer]
        current.source.fetching -= 1
        return [CancelTimer(current.timer)]

    def _forget_holding(self, address: Address, number: int) -> None:
        """The peer at `address` said it lacks chunk `number`: stop counting it as a holder."""
        target = self._target
        assert target is not None
        peer = self._at_address.get(address)
        held = None if peer is None else peer.held
        if peer is not None and held is not None and held.clear(number):
            target.drop_holder(peer, number)

    # ------------------------------------------------------------------ membership, roles

    def _on_member(self, member: MemberInfo, state: MemberState, now_s: float) -> list[Command]:
        if member.node_id == self.self_info.node_id or member.site != self.self_info.site:
            return []
        peer = self._peers.get(member.node_id)
        if state not in _USABLE_STATES:
            if peer is None:
                return []
            return self._remove_peer(peer)
        self._departed.pop(member.node_id, None)
        if peer is not None:
            self._move_peer(peer, member.address)
            return []
        peer = self._add_peer(member.node_id, member.address)
        if peer is None:
            return [CountMetric("replication.dropped.too_many_peers")]
        return self._send_have(peer, reply=True)

    def _add_peer(self, node_id: NodeId, address: Address) -> Peer | None:
        if len(self._peers) >= self.knobs.peers_max:
            return None
        peer = Peer(node_id=node_id, source=Source(address, wan=False), rank=self._rng.random())
        self._peers[node_id] = peer
        self._at_address[address] = peer
        return peer

    def _move_peer(self, peer: Peer, address: Address) -> None:
        """`peer` is now reached at `address` (a restart on another port, say)."""
        if address == peer.source.address:
            return
        if self._at_address.get(peer.source.address) is peer:
            del self._at_address[peer.source.address]
        peer.source.address = address
        self._at_address[address] = peer

    def _remove_peer(self, peer: Peer) -> list[Command]:
        """A peer died or left: its chunks are gone from the site; retry its fetches."""
        del self._peers[peer.node_id]
        if self._at_address.get(peer.source.address) is peer:
            del self._at_address[peer.source.address]
        peer.source.retired = True
        self._departed[peer.node_id] = None
        if len(self._departed) > DEPARTED_MAX:
            del self._departed[next(iter(self._departed))]
        target = self._target
        if target is not None and peer.held is not None:
            for number in peer.held.numbers():
                target.drop_holder(peer, number)
        commands: list[Command] = []
        for number, fetch in list(self._fetches.items()):
            if fetch.source is peer.source:
                commands.extend(self._finish(number, fetch.command))
                self._tried.setdefault(number, {})[fetch.command.source] = None
        return commands

    def _on_leadership(self, event: LeadershipChanged, now_s: float) -> list[Command]:
        if event.scope != self._site_scope or event.capability != DOWNLOADER_CAPABILITY:
            return []
        if event.leading == self._downloader:
            return []
        self._downloader = event.leading
        fields = (("scope", event.scope), ("term", event.term), ("at_s", now_s))
        if not event.leading:
            self._wan_ready_s = math.inf
            return [Log(LogLevel.INFO, "no longer the site's WAN downloader", fields)]
        self._bucket.empty(now_s)
        self._wan_ready_s = now_s + self.knobs.wan_settle_s
        commands: list[Command] = [
            Log(LogLevel.INFO, "site WAN downloader", fields),
            StartTimer(_WAN_SETTLE_TIMER, self._wan_ready_s),
        ]
        for peer in list(self._peers.values()):  # everyone: what is in the site decides
            commands.extend(self._send_have(peer, reply=True))
        commands.extend(self._poll_wan(now_s))
        return commands

    def _set_wan_sources(self, sources: tuple[Address, ...]) -> None:
        kept: dict[Address, Source] = {}
        for address in sources[:WAN_SOURCES_MAX]:
            kept[address] = self._wan.get(address) or Source(address, wan=True)
        for address, source in self._wan.items():
            if address not in kept:
                source.retired = True
        self._wan = kept

    def _source_at(self, address: Address, *, wan: bool) -> Source | None:
        if wan:
            return self._wan.get(address)
        peer = self._at_address.get(address)
        if peer is not None:
            return peer.source
        seed = self._seeds.get(address)
        return None if seed is None else seed[0].source

    def _all_sources(self) -> list[Source]:
        seeds = [seed.source for seed, _package_id in self._seeds.values()]
        return [peer.source for peer in self._peers.values()] + list(self._wan.values()) + seeds

    # ------------------------------------------------------------------ advertisements

    def _on_message(
        self, source: NodeId, address: Address, message: Message, now_s: float
    ) -> list[Command]:
        if isinstance(message, PolicyVersion):
            return self._on_policy_version(address, message.version, now_s)
        if not isinstance(message, Have):
            return [CountMetric("replication.dropped.unexpected_message")]
        problem = self._have_problem(source, message)
        if problem in ("no_target", "other_package"):
            return self._on_other_package(message, address, problem, now_s)
        if problem is not None:
            return [CountMetric(f"replication.dropped.have_{problem}")]
        peer = self._peers.get(source)
        stranger = peer is None
        if peer is None:
            peer = self._add_peer(source, address)  # its discovery record is on its way
            if peer is None:
                return [CountMetric("replication.dropped.too_many_peers")]
        target = self._target
        assert target is not None
        target.apply_have(peer, message)
        answer = message.reply or stranger  # a stranger may not know us either
        if answer and now_s - peer.replied_s >= self.knobs.have_debounce_s:
            peer.replied_s = now_s
            return self._send_have(peer, reply=False)
        return []

    def _have_problem(self, source: NodeId, have: Have) -> str | None:
        """Why `have` must be dropped (a counter suffix), or None when it is usable."""
        if source == self.self_info.node_id:
            return "from_self"
        if have.site != self.self_info.site:
            return "other_site"
        if source in self._departed:
            return "from_departed"
        target = self._target
        if target is None:
            return "no_target"
        return target.have_problem(have)

    def _send_have(self, peer: Peer, *, reply: bool) -> list[Command]:
        target = self._target
        if target is None:
            return []
        haves = target.have_messages(self.self_info.site, reply=reply)
        return [SendMessage(peer.source.address, have) for have in haves]

    def _next_recipients(self, count: int) -> list[Peer]:
        """Up to `count` distinct peers, round-robin over a shuffled order (SWIM-style)."""
        wanted = min(count, len(self._peers))
        chosen: dict[NodeId, Peer] = {}
        for _ in range(2 * len(self._peers) + 1):
            if len(chosen) >= wanted:
                break
            if not self._have_order:
                self._have_order = list(self._peers)
                self._rng.shuffle(self._have_order)
            peer = self._peers.get(self._have_order.pop())
            if peer is not None:
                chosen[peer.node_id] = peer
        return list(chosen.values())

    def _advertise(self, now_s: float) -> list[Command]:
        self._have_sent_s = now_s
        commands: list[Command] = []
        for peer in self._next_recipients(self.knobs.have_fanout):
            commands.extend(self._send_have(peer, reply=False))
            commands.extend(self._send_policy_version(peer.source.address))
        return commands

    # ------------------------------------------------------------------ policy

    def _send_policy_version(self, address: Address) -> list[Command]:
        if self.policy_version <= 0:
            return []
        return [SendMessage(address, PolicyVersion(version=self.policy_version))]

    def _on_policy_version(self, address: Address, version: int, now_s: float) -> list[Command]:
        """A peer's policy version: fetch a newer policy from it; tell one that is behind."""
        if version < self.policy_version:
            return self._send_policy_version(address)
        if version == self.policy_version:
            return []
        if self._refused_policies.get(version, -math.inf) > now_s:
            return [CountMetric("replication.policy_refused_recently")]
        return self._fetch_policy(FetchPolicy(address, version), now_s)

    def _fetch_policy(self, command: FetchPolicy, now_s: float) -> list[Command]:
        if self._policy_fetch is not None:
            return []
        self._policy_fetch = command
        due_s = now_s + self.knobs.manifest_fetch_timeout_s
        return [
            command,
            StartTimer(_POLICY_TIMER, due_s),
            CountMetric("replication.policy_fetches"),
        ]

    def _on_policy_installed(self, version: int, command: FetchPolicy | None) -> list[Command]:
        commands: list[Command] = []
        if command is not None and command == self._policy_fetch:
            self._policy_fetch = None
            commands.append(CancelTimer(_POLICY_TIMER))
        if version <= self.policy_version:
            return commands
        self.policy_version = version
        commands.append(Log(LogLevel.INFO, "policy installed", (("version", version),)))
        for peer in self._next_recipients(self.knobs.have_fanout):  # spread it at once
            commands.extend(self._send_policy_version(peer.source.address))
        return commands

    def _on_policy_fetch_failed(
        self, command: FetchPolicy, reason: str, refused: bool, now_s: float
    ) -> list[Command]:
        if command != self._policy_fetch:
            return [CountMetric("replication.dropped.stale_policy_result")]
        self._policy_fetch = None
        commands: list[Command] = [CancelTimer(_POLICY_TIMER)]
        if not refused:
            return [*commands, CountMetric("replication.policy_fetch_failed")]
        if command.version:
            self._refused_policies[command.version] = now_s + self.knobs.manifest_retry_s
            if len(self._refused_policies) > REFUSED_MANIFESTS_MAX:
                del self._refused_policies[next(iter(self._refused_policies))]
        fields = (("source", f"{command.source.host}:{command.source.port}"),)
        return [
            *commands,
            CountMetric(f"replication.policies_refused.{reason}"),
            Log(LogLevel.WARNING, f"policy refused: {reason}", fields),
        ]

    # ------------------------------------------------------------------ manifests

    def _on_other_package(
        self, have: Have, address: Address, problem: str, now_s: float
    ) -> list[Command]:
        """A site peer advertises another package: fetch its manifest if that one is newer;
        if it is older, tell the peer what we hold so that it asks us."""
        commands: list[Command] = [CountMetric(f"replication.dropped.have_{problem}")]
        target = self._target
        if target is not None and have.version < target.manifest.version:
            return commands + self._answer_behind(address, now_s)
        if target is not None and have.version == target.manifest.version:
            return commands  # another package of the same version: not news
        if self._refused_manifests.get(have.package_id, -math.inf) > now_s:
            return commands
        commands.extend(self._fetch_manifest(FetchManifest(address, have.package_id), now_s))
        return commands

    def _answer_behind(self, address: Address, now_s: float) -> list[Command]:
        peer = self._at_address.get(address)
        if peer is None or now_s - peer.replied_s < self.knobs.have_debounce_s:
            return []
        peer.replied_s = now_s
        return self._send_have(peer, reply=False)

    def _poll_wan(self, now_s: float) -> list[Command]:
        """The downloader asks the next WAN source (round-robin) for its newest manifest."""
        if not self._downloader or not self._wan:
            return []
        sources = list(self._wan)
        source = sources[self._wan_poll_index % len(sources)]
        self._wan_poll_index += 1
        commands = self._fetch_manifest(FetchManifest(source, wan=True), now_s)
        commands.extend(self._fetch_policy(FetchPolicy(source), now_s))
        return commands

    def _fetch_manifest(self, command: FetchManifest, now_s: float) -> list[Command]:
        """Issue `command` unless one to its source is out, or too many are (seeds go first)."""
        fetches = self._manifest_fetches
        if command.source in fetches:
            return []
        if len(fetches) >= MANIFEST_FETCHES_MAX and not command.seed:
            return [CountMetric("replication.manifest_fetches_deferred")]
        fetches[command.source] = command
        due_s = now_s + self.knobs.manifest_fetch_timeout_s
        return [
            command,
            StartTimer(_manifest_timer(command.source), due_s),
            CountMetric("replication.manifest_fetches"),
        ]

    def _on_seed_offered(self, source: Address, now_s: float) -> list[Command]:
        """A publisher's seed: fetch its manifest, then count it as a holder of every chunk."""
        old = self._seeds.pop(source, None)
        if old is not None:
            self._forget_seed(old[0])
        name = f"{SEED_PREFIX}{source.host}:{source.port}"
        seed = Peer(node_id=name, source=Source(source, wan=False), rank=self._rng.random())
        self._seeds[source] = (seed, "")
        fields = (("source", f"{source.host}:{source.port}"),)
        commands: list[Command] = [
            Log(LogLevel.INFO, "publisher seed offered", fields),
            CountMetric("replication.seeds_offered"),
        ]
        commands.extend(self._fetch_manifest(FetchManifest(source, seed=True), now_s))
        commands.extend(self._fetch_policy(FetchPolicy(source), now_s))
        return commands

    def _apply_seed(self, seed: Peer, package_id: str) -> None:
        """Count `seed` as holding everything if it holds the target."""
        target = self._target
        if target is None or target.manifest.package_id != package_id or seed.held is not None:
            return
        manifest = target.manifest
        have = Have(
            package_id=package_id,
            version=manifest.version,
            site=self.self_info.site,
            chunk_count=target.size,
            complete=True,
        )
        target.apply_have(seed, have)

    def _forget_seed(self, seed: Peer) -> None:
        target = self._target
        if target is not None and seed.held is not None:
            for number in seed.held.numbers():
                target.drop_holder(seed, number)
        seed.held = None
        seed.source.retired = True

    def _on_manifest_fetched(self, command: FetchManifest, package_id: str) -> list[Command]:
        if self._manifest_fetches.get(command.source) != command:
            return [CountMetric("replication.dropped.stale_manifest_result")]
        del self._manifest_fetches[command.source]
        seed = self._seeds.get(command.source) if command.seed else None
        if seed is not None:
            self._seeds[command.source] = (seed[0], package_id)
            self._apply_seed(seed[0], package_id)
        return [CancelTimer(_manifest_timer(command.source))]

    def _on_manifest_fetch_failed(
        self, command: FetchManifest, reason: str, refused: bool, now_s: float
    ) -> list[Command]:
        if self._manifest_fetches.get(command.source) != command:
            return [CountMetric("replication.dropped.stale_manifest_result")]
        del self._manifest_fetches[command.source]
        commands: list[Command] = [CancelTimer(_manifest_timer(command.source))]
        if not refused:
            return [*commands, CountMetric("replication.manifest_fetch_failed")]
        if command.package_id:
            self._refused_manifests[command.package_id] = now_s + self.knobs.manifest_retry_s
            if len(self._refused_manifests) > REFUSED_MANIFESTS_MAX:
                del self._refused_manifests[next(iter(self._refused_manifests))]
        source = f"{command.source.host}:{command.source.port}"
        fields = (("source", source), ("package", command.package_id or "newest"))
        return [
            *commands,
            CountMetric(f"replication.manifests_refused.{reason}"),
            Log(LogLevel.WARNING, f"manifest refused: {reason}", fields),
        ]

    def _on_manifest_timeout(self, name: str) -> list[Command]:
        for address in list(self._manifest_fetches):
            if _manifest_timer(address) == name:
                del self._manifest_fetches[address]
                return [CountMetric("replication.manifest_fetch_timeouts")]
        return [CountMetric("replication.dropped.unknown_timer")]

    # ------------------------------------------------------------------ timers

    def _on_timer(self, name: str, now_s: float) -> list[Command]:
        if name == _HAVE_TIMER:
            commands = self._advertise(now_s)
            commands.append(StartTimer(_HAVE_TIMER, now_s + self.knobs.have_interval_s))
            return commands
        if name == _HAVE_SOON_TIMER:
            self._have_soon_armed = False
            return self._advertise(now_s)
        if name == _WAKE_TIMER:
            self._wake_at_s = math.inf
            return []
        if name in (_WAN_TOKENS_TIMER, _WAN_SETTLE_TIMER):
            return []  # the planner runs after every event
        if name == _MANIFEST_POLL_TIMER:
            commands = self._poll_wan(now_s)
            commands.append(StartTimer(_MANIFEST_POLL_TIMER, now_s + self.knobs.manifest_poll_s))
            return commands
        if name == _POLICY_TIMER:
            self._policy_fetch = None
            return [CountMetric("replication.policy_fetch_timeouts")]
        if name.startswith(_FETCH_PREFIX):
            return self._on_fetch_timeout(name, now_s)
        if name.startswith(_MANIFEST_PREFIX):
            return self._on_manifest_timeout(name)
        return [CountMetric("replication.dropped.unknown_timer")]

    # ------------------------------------------------------------------ planning

    def _plan(self, now_s: float) -> list[Command]:
        target = self._target
        if target is None or not target.inventory_known or target.complete:
            return []
        fetches = self._fetches
        free = self.knobs.fetches_max - len(fetches)
        if free <= 0:
            return []
        missing = target.missing
        waiting = len(missing) - sum(1 for number in fetches if number in missing)
        if not waiting:  # every missing chunk is in flight
            return []
        in_flight_before = len(fetches)
        commands = self._plan_lan(target, free, now_s)
        free = self.knobs.fetches_max - len(fetches)
        if free > 0 and self._downloader and now_s >= self._wan_ready_s:
            commands.extend(self._plan_wan(target, free, now_s))
        issued = len(fetches) - in_flight_before
        if issued < waiting and len(fetches) < self.knobs.fetches_max:
            commands.extend(self._arm_wake(now_s))  # a chunk waits: maybe for a backoff to end
        return commands

    def _plan_lan(self, target: Target, free: int, now_s: float) -> list[Command]:
        """Rarest first among chunks some site peer holds (Cohen 2003 §3.2)."""
        per_source_max = self.knobs.fetches_per_source_max
        fetches, tried, holders = self._fetches, self._tried, target.holders
        commands: list[Command] = []
        for number in target.rarest():  # cached: Haves for held chunks leave it be
            if free <= 0:
                break
            if number in fetches:
                continue
            # only these can serve it: O(holders)
            chosen = pick_holder(
                holders[number].values(), tried.get(number, _NO_TRIES), per_source_max, now_s
            )
            if chosen is None:
                continue
            commands.extend(self._issue(target, number, chosen.source, now_s))
            free -= 1
        return commands

    def _plan_wan(self, target: Target, free: int, now_s: float) -> list[Command]:
        """The downloader's WAN fetches: chunks no site peer holds, within the token bucket."""
        wan_in_flight = sum(1 for fetch in self._fetches.values() if fetch.source.wan)
        budget = min(free, self.knobs.wan_fetches_max - wan_in_flight)
        commands: list[Command] = []
        for number in target.missing:  # by rank; `_issue` leaves `missing` be
            if budget <= 0:
                break
            if target.availability[number] > 0 or number in self._fetches:
                continue
            source = pick_wan_source(
                list(self._wan.values()),
                self._tried.get(number, _NO_TRIES),
                self.knobs.fetches_per_source_max,
                now_s,
            )
            if source is None:
                break
            size_bytes = target.chunks[number].size_bytes
            if not self._bucket.try_take(size_bytes, now_s):
                ready_s = self._bucket.ready_at_s(size_bytes, now_s)
                commands.append(StartTimer(_WAN_TOKENS_TIMER, ready_s))
                break
            commands.extend(self._issue(target, number, source, now_s))
            budget -= 1
        return commands

    def _issue(self, target: Target, number: int, source: Source, now_s: float) -> list[Command]:
        ref: ChunkRef = target.chunks[number]
        command = FetchChunk(
            source=source.address,
            package_id=target.manifest.package_id,
            file_index=ref.file_index,
            chunk_index=ref.chunk_index,
            path=ref.path,
            size_bytes=ref.size_bytes,
            wan=source.wan,
        )
        self._fetch_serial += 1
        timer = f"{_FETCH_PREFIX}{self._fetch_serial}"
        self._fetches[number] = Fetch(command=command, source=source, timer=timer)
        self._fetch_timers[timer] = number
        source.fetching += 1
        return [command, StartTimer(timer, now_s + self._timeout_s(ref.size_bytes, source.wan))]

    def _timeout_s(self, size_bytes: int, wan: bool) -> float:
        knobs = self.knobs
        per_mib_s = knobs.wan_fetch_timeout_s_per_mib if wan else knobs.fetch_timeout_s_per_mib
        return max(knobs.fetch_timeout_s_min, size_bytes / MIB * per_mib_s)

    def _back_off(self, source: Source, until_s: float) -> None:
        """`source` may not be asked again before `until_s`."""
        source.unusable_until_s = until_s
        self._backoff_serial += 1
        heapq.heappush(self._backoffs, (until_s, self._backoff_serial, source))

    def _arm_wake(self, now_s: float) -> list[Command]:
        """Wake the planner when the first backing-off source may be asked again."""
        backoffs = self._backoffs
        while backoffs:
            until_s, _, source = backoffs[0]
            if until_s > now_s and until_s == source.unusable_until_s and not source.retired:
                break
            heapq.heappop(backoffs)  # over, superseded, or its source is gone
        if not backoffs:
            return []
        wake_s = backoffs[0][0]
        if self._wake_at_s <= wake_s and self._wake_at_s > now_s:
            return []
        self._wake_at_s = wake_s
        return [StartTimer(_WAKE_TIMER, wake_s)]


def _manifest_timer(source: Address) -> str:
    return f"{_MANIFEST_PREFIX}{source.host}:{source.port}"
