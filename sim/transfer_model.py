"""Chunk transfers of the replication actors: bandwidth shared on uploads, downloads and WAN
links, and the bytes crossing each site's WAN link metered.

Theory of operation
-------------------
A transfer moves one chunk (`FetchChunk.size_bytes`) from a source (a peer, or the origin)
to a receiver through two or three *pipes*, each a capacity shared by the transfers through
it: the source's upload, the receiver's download, and, when source and receiver are not in
the same site, the receiver's site WAN link. Each peer's upload and download capacities are
separate (full duplex); the origin's upload is a pipe of its own.

Sharing approximates max-min fairness, the allocation TCP flows sharing bottlenecks tend
to and progressive filling computes: whenever a transfer starts or ends, the transfers
through the pipes concerned, and those sharing a pipe with them (two hops), get new rates by
progressive filling over the capacity the other transfers of their pipes leave (their rates
are kept). So no pipe ever carries more than its capacity, each transfer of the pipes
concerned gets at least the smallest of its equal shares, `min(capacity / transfers)` over
its pipes (the rule this model used before), and the share a transfer held back elsewhere
cannot use goes to the others instead of standing idle (a link with demand is used, as with
TCP). Rates further away are brought up to date when
something changes near them. On `scenarios/replication-site.toml` (seed 1) the equal-share
rule alone gave `lan_utilisation` 0.73, this 0.78, and exact max-min over every transfer at
every change 0.80 at 3.5x the wall time.

Each transfer's remaining bytes are brought up to date only when its rate changes; its
finish time goes on the model's own heap (stale entries are skipped by a version number)
and one scheduled wake-up on the SimPy clock, at the earliest finish, completes what is due.
No SimPy process runs per transfer.

A peer's chunk service serves at most `upload_slots` transfers at once and keeps up to
`upload_backlog` more requests waiting, first come first served (a server's workers and its
accept queue; BitTorrent's unchoked slots, BEP 3); a request beyond that is refused as
`busy`. So a chunk that only one peer holds yet is not pulled from that one peer by the
whole site at once, each at a trickle: the first few get it fast and serve the rest. The
origin has no such limit (only its own upload capacity).

Failures: a request to or from a node that is down, or across a partition or a WAN link
that is down, is refused; a transfer in flight or a waiting request fails when its source
crashes or stops, or a partition or a WAN outage separates the two ends; one whose receiver
goes down just ends (nobody is left to tell). The caller decides what the receiver hears,
and when.

WAN metering: for each site, the sum of the rates of the transfers crossing its WAN link is
recorded at every change, a step function of time. `window_bytes_max(site, window_s)` is the
most bytes that crossed in any window of that length (a sliding window: the maximum of a
difference of a piecewise-linear function is reached with one end of the window on a
change, so only those windows are measured), and `windows_over` counts those windows that
carried more than a bound. Bytes are counted as they cross, so a chunk cut off halfway
counts half.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from actors.replication import BUSY
from sim.host import Scheduled, schedule

if TYPE_CHECKING:
    from actors.core import Address, FetchChunk
    from sim.host import SimNode
    from sim.world import World

DUE_TOLERANCE_S: Final = 1e-9
"""A finish within this of the wake-up time is due (float residue of the arithmetic)."""
SOURCE_DOWN: Final = "source down"
PARTITIONED: Final = "partitioned"
_FLOOR_BYTES_PER_S: Final = 1e-3
"""The least rate a transfer gets (float residue could leave a pipe's last share at 0)."""


@dataclass(slots=True, eq=False)
class Pipe:
    """A capacity shared equally by the transfers through it."""

    capacity_bytes_per_s: float
    transfers: dict[int, Transfer] = field(default_factory=dict)
    moved_bytes: float = 0.0
    """Bytes that went through, completed or cut off."""
    busy_s: float = 0.0
    """Time with at least one transfer in it (closed intervals only; see `busy_total_s`)."""
    busy_since_s: float = 0.0

    def add(self, transfer: Transfer, now_s: float) -> None:
        """`transfer` starts using this pipe."""
        if not self.transfers:
            self.busy_since_s = now_s
        self.transfers[transfer.serial] = transfer

    def remove(self, transfer: Transfer, now_s: float) -> None:
        """`transfer` stops using this pipe."""
        del self.transfers[transfer.serial]
        if not self.transfers:
            self.busy_s += now_s - self.busy_since_s

    def busy_total_s(self, now_s: float) -> float:
        """Time with at least one transfer in it, up to `now_s`."""
        return self.busy_s + (now_s - self.busy_since_s if self.transfers else 0.0)


@dataclass(slots=True, eq=False)
class Transfer:
    """One chunk on its way from `source` (None: the origin) to `receiver`."""

    serial: int
    command: FetchChunk
    receiver: SimNode
    source: SimNode | None
    pipes: tuple[Pipe, ...]
    wan_site: str | None
    """The site whose WAN link it crosses, if any."""
    remaining_bytes: float
    updated_s: float
    rate_bytes_per_s: float = 0.0
    finish_s: float = math.inf
    version: int = 0


@dataclass(frozen=True, slots=True)
class Request:
    """A fetch waiting for one of its source's upload slots."""

    command: FetchChunk
    receiver: SimNode
    receiver_life: int
    source: SimNode


@dataclass(slots=True)
class WanLink:
    """A site's WAN link: its pipe, whether it is up, and its metered rate over time."""

    pipe: Pipe
    up: bool = True
    changes_s: list[float] = field(default_factory=lambda: [0.0])
    rates_bytes_per_s: list[float] = field(default_factory=lambda: [0.0])

    def record(self, now_s: float) -> None:
        """Note the link's current total rate, from `now_s` on."""
        rate = sum(transfer.rate_bytes_per_s for transfer in self.pipe.transfers.values())
        if rate == self.rates_bytes_per_s[-1]:
            return
        if self.changes_s[-1] == now_s:
            self.rates_bytes_per_s[-1] = rate
            return
        self.changes_s.append(now_s)
        self.rates_bytes_per_s.append(rate)


FinishedCallback = Callable[[Transfer], None]
FailedCallback = Callable[["FetchChunk", "SimNode", str], None]
"""(the fetch, its receiver, why it failed)"""


@dataclass(frozen=True, slots=True)
class Capacities:
    """Bandwidths and slots of the model (bytes per second)."""

    origin_bytes_per_s: float
    peer_bytes_per_s: float
    upload_slots: int
    upload_backlog: int
    least_served_first: bool = True

    def __post_init__(self) -> None:
        assert self.origin_bytes_per_s > 0
        assert self.peer_bytes_per_s > 0
        assert self.upload_slots >= 1
        assert self.upload_backlog >= 0


class TransferModel:
    """Every chunk transfer of a run (see the module docstring)."""

    def __init__(
        self,
        world: World,
        origin: Address,
        capacities: Capacities,
        *,
        on_finished: FinishedCallback,
        on_failed: FailedCallback,
    ) -> None:
        self._world = world
        self._origin = origin
        self._capacities = capacities
        self._on_finished = on_finished
        self._on_failed = on_failed
        self.origin_upload = Pipe(capacities.origin_bytes_per_s)
        self._waiting: dict[str, dict[int, Request]] = {}
        """Requests waiting for an upload slot, by source, oldest first."""
        self._served: dict[str, dict[tuple[str, int, int], int]] = {}
        """How many times each peer started uploading each chunk."""
        self.uploads: dict[str, Pipe] = {}
        self.downloads: dict[str, Pipe] = {}
        self.links: dict[str, WanLink] = {}
        self._transfers: dict[int, Transfer] = {}
        self._heap: list[tuple[float, int, int]] = []
        self._serial = 0
        self._wake_at_s = math.inf
        self._wake_generation = 0
        self._wake_callbacks = (self._on_wake,)
        self.started = 0

    # ----------------------------------------------------------------------- inputs

    def add_site(self, site: str, link_bytes_per_s: float) -> None:
        """Give `site` a WAN link of `link_bytes_per_s`."""
        assert link_bytes_per_s > 0
        assert site not in self.links
        self.links[site] = WanLink(Pipe(link_bytes_per_s))

    def problem(self, receiver: SimNode, source: SimNode | None) -> str | None:
        """Why a transfer from `source` (None: the origin) to `receiver` cannot run now."""
        assert receiver.running
        if source is not None and not source.running:
            return SOURCE_DOWN
        if not self._reachable(receiver, source):
            return PARTITIONED
        return None

    def request(self, command: FetchChunk, receiver: SimNode, source: SimNode | None) -> str | None:
        """Start moving `command`'s chunk, or queue it for a slot; else say why not."""
        problem = self.problem(receiver, source)
        if problem is not None:
            return problem
        if source is not None and self.uploading(source) >= self._capacities.upload_slots:
            return self._wait(Request(command, receiver, receiver.life, source))
        self._start(command, receiver, source)
        return None

    def _wait(self, request: Request) -> str | None:
        """Queue `request` for a slot of its source; `BUSY` if the backlog stays full."""
        waiting = self._waiting.setdefault(request.source.node_id, {})
        if len(waiting) >= self._capacities.upload_backlog:
            if not self._capacities.least_served_first or not waiting:
                return BUSY
            worst = max(waiting, key=lambda serial: (self._served_count(waiting[serial]), serial))
            if self._served_count(waiting[worst]) <= self._served_count(request):
                return BUSY
            evicted = waiting.pop(worst)  # a copy it served more often yields its place
            self._on_failed(evicted.command, evicted.receiver, BUSY)
        self._serial += 1
        waiting[self._serial] = request
        return None

    def _served_count(self, request: Request) -> int:
        served = self._served.get(request.source.node_id, {})
        return served.get(_chunk_key(request.command), 0)

    def _next_waiting(self, waiting: dict[int, Request]) -> int:
        """The waiting request to serve next: oldest, or least served then oldest."""
        if not self._capacities.least_served_first:
            return next(iter(waiting))
        return min(waiting, key=lambda serial: (self._served_count(waiting[serial]), serial))

    def _start(self, command: FetchChunk, receiver: SimNode, source: SimNode | None) -> Transfer:
        now_s = self._world.env.now
        self._serial += 1
        self.started += 1
        wan_site = self._crossing(receiver, source)
        if source is not None:
            served = self._served.setdefault(source.node_id, {})
            key = _chunk_key(command)
            served[key] = served.get(key, 0) + 1
        pipes = [self._upload(source), self._pipe(self.downloads, receiver)]
        if wan_site is not None:
            pipes.append(self.links[wan_site].pipe)
        transfer = Transfer(
            serial=self._serial,
            command=command,
            receiver=receiver,
            source=source,
            pipes=tuple(pipes),
            wan_site=wan_site,
            remaining_bytes=float(command.size_bytes),
            updated_s=now_s,
        )
        self._transfers[transfer.serial] = transfer
        for pipe in transfer.pipes:
            pipe.add(transfer, now_s)
        self._refresh(transfer.pipes, now_s)
        return transfer

    def node_lost(self, node: SimNode) -> None:
        """`node` crashed or stopped: its downloads end, its uploads and waiting requests
        fail, and its requests waiting elsewhere are dropped."""
        now_s = self._world.env.now
        failed = list(self._waiting.pop(node.node_id, {}).values())
        for waiting in self._waiting.values():
            for serial in [k for k, r in waiting.items() if r.receiver is node]:
                del waiting[serial]
        gone = [t for t in self._transfers.values() if node in (t.receiver, t.source)]
        self._remove_all(gone, now_s)
        for transfer in gone:
            if transfer.receiver is not node:
                self._on_failed(transfer.command, transfer.receiver, SOURCE_DOWN)
        for request in failed:
            self._on_failed(request.command, request.receiver, SOURCE_DOWN)
        self._serve([t.source for t in gone if t.source is not node])

    def set_link(self, site: str, up: bool) -> None:
        """Take `site`'s WAN link down or bring it back."""
        self.links[site].up = up
        self.topology_changed()

    def topology_changed(self) -> None:
        """A partition, a heal or a WAN outage: transfers and requests whose ends are cut off
        fail."""
        now_s = self._world.env.now
        cut = [
            transfer
            for transfer in self._transfers.values()
            if not self._reachable(transfer.receiver, transfer.source)
        ]
        self._remove_all(cut, now_s)
        for transfer in cut:
            self._on_failed(transfer.command, transfer.receiver, PARTITIONED)
        for waiting in self._waiting.values():
            for serial, request in list(waiting.items()):
                if not self._reachable(request.receiver, request.source):
                    del waiting[serial]
                    self._on_failed(request.command, request.receiver, PARTITIONED)
        self._serve([transfer.source for transfer in cut])

    # ----------------------------------------------------------------------- figures

    def uploading(self, source: SimNode) -> int:
        """Transfers `source` is serving now."""
        pipe = self.uploads.get(source.node_id)
        return 0 if pipe is None else len(pipe.transfers)

    def in_flight(self) -> int:
        """Transfers under way."""
        return len(self._transfers)

    def queued(self) -> int:
        """Requests waiting for an upload slot."""
        return sum(len(waiting) for waiting in self._waiting.values())

    def window_bytes_max(self, site: str, window_s: float, end_s: float) -> float:
        """The most bytes that crossed `site`'s WAN link in any `window_s` up to `end_s`."""
        return max(self._window_bytes(site, window_s, end_s), default=0.0)

    def windows_over(self, site: str, window_s: float, bound_bytes: float, end_s: float) -> int:
        """How many measured windows (see the module docstring) carried over `bound_bytes`."""
        return sum(
            1 for amount in self._window_bytes(site, window_s, end_s) if amount > bound_bytes
        )

    def wan_bytes(self, site: str) -> float:
        """Bytes that crossed `site`'s WAN link so far (completed or cut off)."""
        return self.links[site].pipe.moved_bytes

    # ----------------------------------------------------------------------- sharing

    def _refresh(self, pipes: tuple[Pipe, ...], now_s: float) -> None:
        """New rates around `pipes` after a transfer started or ended there (see the module
        docstring: progressive filling over the transfers of `pipes` and their neighbours)."""
        near: dict[int, Transfer] = {}
        for pipe in pipes:
            near.update(pipe.transfers)
        affected = dict(near)
        for transfer in near.values():
            for pipe in transfer.pipes:
                affected.update(pipe.transfers)
        rates = _fill(affected)
        dirty: dict[str, None] = {}
        for transfer in affected.values():
            rate = rates[transfer.serial]
            if rate == transfer.rate_bytes_per_s:
                continue
            self._settle(transfer, now_s)
            transfer.rate_bytes_per_s = rate
            transfer.finish_s = now_s + transfer.remaining_bytes / rate
            transfer.version += 1
            heapq.heappush(self._heap, (transfer.finish_s, transfer.serial, transfer.version))
            if transfer.wan_site is not None:
                dirty[transfer.wan_site] = None
        for site in dirty:
            self.links[site].record(now_s)
        self._arm()

    def _settle(self, transfer: Transfer, now_s: float) -> None:
        """Move `transfer`'s bytes up to `now_s` at its current rate."""
        moved = min(
            transfer.remaining_bytes, transfer.rate_bytes_per_s * (now_s - transfer.updated_s)
        )
        self._move(transfer, moved)
        transfer.updated_s = now_s

    def _move(self, transfer: Transfer, moved_bytes: float) -> None:
        transfer.remaining_bytes -= moved_bytes
        for pipe in transfer.pipes:
            pipe.moved_bytes += moved_bytes

    def _remove_all(self, transfers: list[Transfer], now_s: float) -> None:
        """Take `transfers` out (cut off: their bytes so far count), then share again."""
        touched: dict[int, Pipe] = {}
        sites: dict[str, None] = {}
        for transfer in transfers:
            self._settle(transfer, now_s)
            self._detach(transfer, now_s)
            for pipe in transfer.pipes:
                touched[id(pipe)] = pipe
            if transfer.wan_site is not None:
                sites[transfer.wan_site] = None
        self._refresh(tuple(touched.values()), now_s)
        for site in sites:
            self.links[site].record(now_s)

    def _detach(self, transfer: Transfer, now_s: float) -> None:
        del self._transfers[transfer.serial]
        for pipe in transfer.pipes:
            pipe.remove(transfer, now_s)
        transfer.version += 1  # its heap entry is stale from now on
        transfer.rate_bytes_per_s = 0.0

    # ----------------------------------------------------------------------- completion

    def _arm(self) -> None:
        """Make sure a wake-up is scheduled at the earliest finish."""
        heap = self._heap
        while heap and not self._current(heap[0]):
            heapq.heappop(heap)
        if not heap or heap[0][0] >= self._wake_at_s:
            return
        now_s = self._world.env.now
        self._wake_at_s = heap[0][0]
        self._wake_generation += 1
        item = Scheduled(self._wake_callbacks, self._wake_generation, None, None)
        schedule(self._world.env, item, max(0.0, self._wake_at_s - now_s))

    def _current(self, entry: tuple[float, int, int]) -> bool:
        transfer = self._transfers.get(entry[1])
        return transfer is not None and transfer.version == entry[2]

    def _on_wake(self, item: Scheduled) -> None:
        if item.life == self._wake_generation:
            self._wake_at_s = math.inf
        now_s = self._world.env.now
        heap = self._heap
        done: list[Transfer] = []
        while heap and heap[0][0] <= now_s + DUE_TOLERANCE_S:
            entry = heapq.heappop(heap)
            if self._current(entry):
                done.append(self._transfers[entry[1]])
        touched: dict[int, Pipe] = {}
        for transfer in done:
            self._move(transfer, transfer.remaining_bytes)
            self._detach(transfer, now_s)
            for pipe in transfer.pipes:
                touched[id(pipe)] = pipe
        self._refresh(tuple(touched.values()), now_s)
        for transfer in done:
            if transfer.wan_site is not None:
                self.links[transfer.wan_site].record(now_s)
        self._serve([transfer.source for transfer in done])
        for transfer in done:
            self._on_finished(transfer)

    def _serve(self, sources: list[SimNode | None]) -> None:
        """Start waiting requests of `sources` whose upload slots freed up."""
        slots = self._capacities.upload_slots
        for source in dict.fromkeys(sources):
            if source is None:
                continue
            waiting = self._waiting.get(source.node_id)
            while waiting and self.uploading(source) < slots:
                request = waiting.pop(self._next_waiting(waiting))
                receiver = request.receiver
                if not receiver.running or receiver.life != request.receiver_life:
                    continue
                problem = self.problem(receiver, source)
                if problem is not None:
                    self._on_failed(request.command, receiver, problem)
                    continue
                self._start(request.command, receiver, source)

    # ----------------------------------------------------------------------- helpers

    def _upload(self, source: SimNode | None) -> Pipe:
        return self.origin_upload if source is None else self._pipe(self.uploads, source)

    def _pipe(self, pipes: dict[str, Pipe], node: SimNode) -> Pipe:
        pipe = pipes.get(node.node_id)
        if pipe is None:
            pipe = pipes[node.node_id] = Pipe(self._capacities.peer_bytes_per_s)
        return pipe

    def _crossing(self, receiver: SimNode, source: SimNode | None) -> str | None:
        if source is not None and source.info.site == receiver.info.site:
            return None
        return receiver.info.site

    def _reachable(self, receiver: SimNode, source: SimNode | None) -> bool:
        network = self._world.network
        address = self._origin if source is None else source.address
        if not network.reachable(receiver.address, address):
            return False
        site = self._crossing(receiver, source)
        return site is None or self.links[site].up

    def _window_bytes(self, site: str, window_s: float, end_s: float) -> list[float]:
        """Bytes in each window of `window_s` that starts or ends on a rate change."""
        link = self.links[site]
        times_s = [*link.changes_s, end_s]
        rates = link.rates_bytes_per_s
        cumulative = [0.0]
        for index, rate in enumerate(rates):
            cumulative.append(cumulative[-1] + rate * (times_s[index + 1] - times_s[index]))

        def crossed(at_s: float) -> float:
            at_s = min(max(at_s, times_s[0]), end_s)
            index = min(bisect.bisect_right(times_s, at_s) - 1, len(rates) - 1)
            return cumulative[index] + rates[index] * (at_s - times_s[index])

        amounts: list[float] = []
        for change_s in link.changes_s:
            amounts.append(crossed(change_s + window_s) - crossed(change_s))
            amounts.append(crossed(change_s) - crossed(change_s - window_s))
        return amounts


def _fill(affected: dict[int, Transfer]) -> dict[int, float]:
    """Rates of `affected` by progressive filling: each pipe offers what the transfers not in
    `affected` leave of its capacity; the pipe with the smallest equal share of what it
    offers fixes its unfixed transfers at that share, which is taken from their other pipes;
    repeat (max-min fairness within `affected`; Bertsekas and Gallager, Data Networks, §6.5)."""
    index: dict[int, int] = {}
    left: list[float] = []
    members: list[list[Transfer]] = []
    for transfer in affected.values():
        for pipe in transfer.pipes:
            if id(pipe) in index:
                continue
            index[id(pipe)] = len(left)
            used = 0.0
            mine: list[Transfer] = []
            for other in pipe.transfers.values():
                if other.serial in affected:
                    mine.append(other)
                else:
                    used += other.rate_bytes_per_s
            left.append(max(0.0, pipe.capacity_bytes_per_s - used))
            members.append(mine)
    unfixed = [len(mine) for mine in members]
    heap = [(left[number] / unfixed[number], number) for number in range(len(left))]
    heapq.heapify(heap)  # ties by pipe number: first seen first, never by memory address
    fixed = [False] * len(left)
    rates: dict[int, float] = {}
    while heap:
        share, number = heapq.heappop(heap)
        if fixed[number] or not unfixed[number] or share != left[number] / unfixed[number]:
            continue  # fixed already, nothing left to fix, or a stale entry
        fixed[number] = True
        for transfer in members[number]:
            if transfer.serial in rates:
                continue
            rates[transfer.serial] = max(share, _FLOOR_BYTES_PER_S)
            for pipe in transfer.pipes:
                shared = index[id(pipe)]
                left[shared] = max(0.0, left[shared] - share)
                unfixed[shared] -= 1
                if not fixed[shared] and unfixed[shared]:
                    heapq.heappush(heap, (left[shared] / unfixed[shared], shared))
    return rates


def _chunk_key(command: FetchChunk) -> tuple[str, int, int]:
    return (command.package_id, command.file_index, command.chunk_index)
