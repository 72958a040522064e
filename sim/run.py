"""Run a scenario with a seed: build the world, schedule boots and faults, run, report.

`Simulation(scenario, seed)` builds everything (nodes are created, not yet started), so a
caller may add to the world before `run()`: tests inject forged nodes that way. Every peer
runs the real actors of `peerpxe agent`: discovery, election and boot (`peer_builder`).
Node boots are spread over `start_spread_s`; slow nodes are picked at time 0; each
`[[event]]` fires at its `at_s` with targets resolved at that moment from
`random.Random(f"faults:{seed}")` (`leader@subnet` names the subnet's current responder);
each `[[boot]]` powers on simulated PXE clients (`sim.boot_clients`).

Listeners: `Invariants` (membership), `MembershipMetrics` (detection), `LeadershipWatch`
(one responder per subnet and term, failover) and `BootClients` (boot success, duplicate
offers).

With replication (`[replication]`, `[[site]]`, `[[publish]]`), every peer also runs the
replication actor and the site's downloader election (`downloader` capability for weight >
0), and `ReplicationHost` (`sim.replication_host`) holds the origin and the stores, runs
each `[[publish]]` and the `wan-down`/`wan-up` events, and reports the replication figures.
A peer is responder-eligible when its subnet's `eligible` says it holds the (pre-existing)
boot package, or once its store completes a published package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from actors.boot.actor import Boot
from actors.boot.proxy_dhcp import ArchClass, ProxyPolicy
from actors.core import Actor, Address, MemberInfo
from actors.discovery import Discovery
from actors.election import DOWNLOADER_CAPABILITY, RESPONDER_CAPABILITY, Election
from actors.replication import Replication, ReplicationKnobs
from sim import knob_draws
from sim.boot_clients import BootClients, BootFigures
from sim.checkers import Invariants, Violation
from sim.host import ActorBuilder, Scheduled, SimNode, schedule
from sim.leadership import LeadershipFigures, LeadershipWatch, percentile
from sim.metrics import MembershipMetrics
from sim.replication_host import ReplicationFigures, ReplicationHost
from sim.scenario import (
    PEER_PORT,
    TARGET_RULE,
    EventSpec,
    ReplicationSpec,
    Scenario,
    ScenarioError,
)
from sim.timeline import Timeline
from sim.trace import Trace
from sim.workload import Action, Applier, initially_down, plan_actions
from sim.world import World


@dataclass(frozen=True, slots=True)
class SimResult:
    """What one run measured; `digest` identifies the run's whole trace."""

    scenario: str
    seed: int
    digest: str
    sim_time_s: float
    wall_time_s: float
    peers: int
    events: int
    messages: int
    message_bytes: int
    trace_records: int
    detect_s_p50: float | None
    detect_s_p99: float | None
    crashes: int
    detected: int
    undetected: int
    false_dead: int
    dead_ambiguous: int
    dropped: dict[str, int]
    network: dict[str, int]
    messages_per_peer_per_s: float
    violation_count: int
    failover_s_p50: float | None = None
    failover_s_p99: float | None = None
    failover_s_max: float | None = None
    failovers: int = 0
    failovers_unfinished: int = 0
    handover_s_max: float | None = None
    dual_leader_episodes: int = 0
    dual_leader_s_max: float = 0.0
    dual_offer_rate: float = 0.0
    dual_offers: int = 0
    steady_dual_offers: int = 0
    discovers: int = 0
    steady_discovers: int = 0
    boots_attempted: int = 0
    boots_succeeded: int = 0
    boots_failed: int = 0
    boots_failed_unservable: int = 0
    boot_attempts_failed: int = 0
    boots_unfinished: int = 0
    boot_s_p50: float | None = None
    boot_s_p99: float | None = None
    boot_failures: dict[str, int] = field(default_factory=dict)
    churn_applied: int = 0
    churn_skipped: int = 0
    wan_bytes_by_site: dict[str, int] = field(default_factory=dict)
    wan_bytes_ratio_max: float | None = None
    wan_window_bytes_max_by_site: dict[str, int] = field(default_factory=dict)
    wan_cap_exceeded: int = 0
    origin_offload: float | None = None
    replication_s_p50: float | None = None
    replication_s_p99: float | None = None
    replication_s_max: float | None = None
    replication_s_by_site: dict[str, float] = field(default_factory=dict)
    replication_unfinished: int = 0
    replication_progress_by_site: dict[str, list[list[float]]] = field(default_factory=dict)
    corrupt_chunks_refused: int = 0
    corrupt_chunks_accepted: int = 0
    lan_utilisation: float | None = None
    chunk_transfers: int = 0
    chunk_fetch_failures: int = 0
    packages_completed: int = 0
    knobs_drawn: dict[str, float] = field(default_factory=dict)
    """The `[randomize]` knob values this seed drew (empty without `[randomize]`)."""
    violations: tuple[Violation, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (violations as strings)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["violations"] = [str(violation) for violation in self.violations]
        return data


BOOT_FILES: Final = {
    ArchClass.BIOS: "undionly.kpxe",
    ArchClass.EFI_X64: "ipxe.efi",
    ArchClass.HTTP_X64: "ipxe.efi",
}
"""What the simulated responders hand out (the names of `peerpxe serve`'s usual files)."""


def discovery_builder(scenario: Scenario, seeds: tuple[Address, ...]) -> ActorBuilder:
    """Builds one `Discovery` per node life with the scenario's knobs and seed addresses."""

    def build(info: MemberInfo, rng: random.Random, life: int) -> list[Actor]:
        own = tuple(seed for seed in seeds if seed != info.address)
        return [Discovery(self_info=info, rng=rng, knobs=scenario.knobs, seeds=own)]

    return build


def peer_builder(
    scenario: Scenario,
    seeds: tuple[Address, ...],
    holds_package: Callable[[str], bool] | None = None,
) -> ActorBuilder:
    """Builds what `peerpxe agent` runs: discovery, election and boot (and replication when
    the scenario replicates), per node life.

    A peer is responder-eligible when its `MemberInfo` carries the `responder` capability
    (the scenario gives it to peers that hold the verified package and have weight > 0, and
    `holds_package(node_id)` to peers whose store holds the current published package).
    With replication, peers of weight > 0 also carry `downloader` and run the site's WAN
    downloader election.
    """
    replication = scenario.replication
    knobs_of = _site_knobs(scenario, replication)

    def build(info: MemberInfo, rng: random.Random, life: int) -> list[Actor]:
        own = tuple(seed for seed in seeds if seed != info.address)
        election_rng = random.Random(rng.getrandbits(64))
        if replication is not None:
            info = _with_capabilities(
                info, holds_package is not None and holds_package(info.node_id)
            )
        policy = ProxyPolicy(
            boot_files=BOOT_FILES,
            ipxe_script_url=f"http://{info.address.host}:8080/boot.ipxe",
            http_boot_url_base=f"http://{info.address.host}:8080/",
        )
        actors: list[Actor] = [
            Discovery(self_info=info, rng=rng, knobs=scenario.knobs, seeds=own),
            Election(
                info,
                election_rng,
                scenario.election,
                responder_eligible=RESPONDER_CAPABILITY in info.capabilities,
                downloader_eligible=DOWNLOADER_CAPABILITY in info.capabilities,
            ),
            Boot(info, policy, info.address.host),
        ]
        if replication is not None:
            replication_rng = random.Random(election_rng.getrandbits(64))
            actors.append(Replication(info, replication_rng, knobs_of[info.site]))
        return actors

    return build


def _site_knobs(
    scenario: Scenario, replication: ReplicationSpec | None
) -> dict[str, ReplicationKnobs]:
    """Each site's replication knobs: the scenario's, with the site's WAN cap."""
    if replication is None:
        return {}
    return {
        site: dataclasses.replace(
            replication.knobs, wan_bytes_per_s=replication.site(site).wan_cap_bytes_per_s
        )
        for site in scenario.sites()
    }


def _with_capabilities(info: MemberInfo, holds_package: bool) -> MemberInfo:
    """`info` advertising `downloader` (weight > 0) and `responder` if the package is held."""
    capabilities = list(info.capabilities)
    if holds_package and RESPONDER_CAPABILITY not in capabilities:
        capabilities.append(RESPONDER_CAPABILITY)
    if info.weight > 0 and DOWNLOADER_CAPABILITY not in capabilities:
        capabilities.append(DOWNLOADER_CAPABILITY)
    return dataclasses.replace(info, capabilities=tuple(capabilities))


class Simulation:
    """One scenario run with one seed."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int | None = None,
        build: ActorBuilder | None = None,
        keep_trace: bool = False,
    ) -> None:
        self.seed = scenario.seed if seed is None else seed
        try:
            self.scenario, self.knobs_drawn = knob_draws.draw(scenario, self.seed)
        except knob_draws.KnobRangeError as error:
            raise ScenarioError(f"{scenario.path}: randomize: {error}") from error
        scenario = self.scenario
        key = hashlib.sha256(f"cluster:{scenario.name}".encode()).digest()
        self.world = World(self.seed, scenario.network, key, Trace(keep=keep_trace))
        self.invariants = Invariants(self.world)
        self.metrics = MembershipMetrics(self.world)
        self.world.listeners += [self.invariants, self.metrics]
        self._rng = random.Random(f"faults:{self.seed}")
        self._subnet_of: dict[str, str] = {}
        self._eligible: dict[str, bool] = {}
        self.replication: ReplicationHost | None = None
        if scenario.replication is not None:
            self.replication = ReplicationHost(
                self.world, scenario.replication, scenario.sites(), self._package_complete
            )
            self.world.listeners.append(self.replication)
        self._create_nodes(build)
        self.leadership = LeadershipWatch(self.world, self.invariants, self.is_eligible)
        self.world.listeners.append(self.leadership)
        self.timeline = Timeline(self.world)
        self.world.listeners.append(self.timeline)
        self.boot_clients = BootClients(
            self.world, scenario.tftp, self.is_eligible, random.Random(f"boots:{self.seed}")
        )
        self.applier = Applier(self.world)
        self.planned: list[Action] = plan_actions(
            scenario.churn,
            scenario.replay,
            seed=self.seed,
            duration_s=scenario.duration_s,
            resolve=self._resolve_fixed,
            topology={
                node_id: (spec.site, spec.name)
                for spec in scenario.subnets
                for node_id in spec.node_ids()
            },
            cidrs={spec.name: spec.cidr for spec in scenario.subnets},
        )
        self._actions: dict[str, Callable[[EventSpec], None]] = {
            "crash": self._crash,
            "restart": self._restart,
            "stop": self._stop,
            "partition": self._partition,
            "heal": lambda _event: self.world.heal(),
            "slow": self._slow,
            "wan-down": lambda event: self._wan(event, up=False),
            "wan-up": lambda event: self._wan(event, up=True),
        }
        self._callbacks = (self._on_scheduled,)
        self.run_finished_wall_s = 0.0
        """`time.perf_counter()` when the simulated clock stopped (before the final checks)."""

    def at(self, time_s: float, action: Callable[[], None]) -> None:
        """Run `action` at simulated time `time_s` (used for boots, faults, tests)."""
        item = Scheduled(self._callbacks, 0, action, None)
        schedule(self.world.env, item, max(0.0, time_s - self.world.env.now))

    def run(self) -> SimResult:
        """Run to `duration_s`, check the end state, and report."""
        self._schedule_boots()
        for event in self.scenario.events:
            if event.at_s < self.scenario.duration_s:
                self.at(event.at_s, _bind(self._apply, event))
        if self.scenario.replication is not None and self.replication is not None:
            for publish in self.scenario.replication.publishes:
                if publish.at_s < self.scenario.duration_s:
                    self.at(publish.at_s, _bind(self.replication.publish, publish))
        started = time.perf_counter()
        self.world.env.run(until=self.scenario.duration_s)
        self.run_finished_wall_s = time.perf_counter()
        wall_time_s = self.run_finished_wall_s - started
        self.invariants.check_final()
        self.metrics.finish()
        return self._result(wall_time_s, self.leadership.finish(), self.boot_clients.finish())

    def is_eligible(self, node: SimNode) -> bool:
        """Whether `node` holds the verified boot package and may be elected responder."""
        return self._eligible.get(node.node_id, False)

    def _package_complete(self, node: SimNode) -> None:
        """`node`'s store completed a published package: it may now be elected responder."""
        if node.info.weight > 0:
            self._eligible[node.node_id] = True

    # ----------------------------------------------------------------------- setup

    def _create_nodes(self, build: ActorBuilder | None) -> None:
        seeds: list[Address] = []
        infos: list[MemberInfo] = []
        for subnet in self.scenario.subnets:
            for index, node_id in enumerate(subnet.node_ids()):
                address = Address(subnet.host_of(index), PEER_PORT)
                eligible = subnet.responder_eligible(index)
                capabilities: tuple[str, ...] = (RESPONDER_CAPABILITY,) if eligible else ()
                weight = subnet.weight_of(index)
                if self.scenario.replication is not None and weight > 0:
                    capabilities += (DOWNLOADER_CAPABILITY,)
                info = MemberInfo(node_id, subnet.site, subnet.cidr, address, weight, capabilities)
                infos.append(info)
                self._subnet_of[node_id] = subnet.name
                self._eligible[node_id] = eligible
                if node_id in self.scenario.seed_nodes:
                    seeds.append(address)
        holds = None if self.replication is None else self.replication.holds_current
        builder = build or peer_builder(self.scenario, tuple(seeds), holds)
        for info in infos:
            self.world.add_node(info, builder)

    def _schedule_boots(self) -> None:
        rng = self._rng
        members = list(self.world.members.values())
        slow_count = int(self.scenario.slow_fraction * len(members) + 0.5)
        for node in rng.sample(members, slow_count):
            self.world.set_slow(node, self.scenario.slow_delay_s)
        spread_s = self.scenario.start_spread_s
        off = initially_down(self.planned)
        for node in members:
            boot_s = rng.uniform(0.0, spread_s)
            if node.node_id not in off:
                self.at(boot_s, _bind(self.world.start, node))
        for action in self.planned:
            self.at(action.time_s, _bind(self.applier.apply, action))
        by_name = {subnet.name: subnet for subnet in self.scenario.subnets}
        for boot in self.scenario.boots:
            self.boot_clients.schedule(boot, by_name[boot.subnet])

    def _on_scheduled(self, item: Scheduled) -> None:
        item.first()

    # ----------------------------------------------------------------------- faults

    def _apply(self, event: EventSpec) -> None:
        self._actions[event.action](event)

    def _crash(self, event: EventSpec) -> None:
        for node in self._resolve(event, running=True):
            self.world.crash(node)

    def _stop(self, event: EventSpec) -> None:
        for node in self._resolve(event, running=True):
            self.world.stop(node)

    def _restart(self, event: EventSpec) -> None:
        for node in self._resolve(event, running=False):
            self.world.start(node)

    def _partition(self, event: EventSpec) -> None:
        nodes = self._resolve(event, running=True)
        if nodes:
            self.world.partition(nodes)

    def _wan(self, event: EventSpec, *, up: bool) -> None:
        assert self.replication is not None, "wan events need [replication]"
        sites = self.scenario.sites() if "all" in event.targets else list(event.targets)
        self.replication.set_wan(sites, up)

    def _slow(self, event: EventSpec) -> None:
        for node in self._resolve(event, running=True):
            self.world.set_slow(node, event.delay_s)

    def _resolve(self, event: EventSpec, running: bool) -> list[SimNode]:
        """The event's targets among members that are (or are not) running, in id order."""
        chosen: dict[str, SimNode] = {}
        for target in event.targets:
            for node in self._candidates(target, running):
                chosen.setdefault(node.node_id, node)
        return [chosen[node_id] for node_id in sorted(chosen)]

    def _candidates(self, target: str, running: bool) -> list[SimNode]:
        members = self.world.members
        if target in members:
            node = members[target]
            return [node] if node.running == running else []
        rule = TARGET_RULE.match(target)
        assert rule is not None, f"target {target!r} was validated"
        subnet = rule.group("subnet")
        if rule.group("leader"):
            return self._leaders(subnet, running)
        pool = [
            node
            for node in members.values()
            if node.running == running and subnet in (None, self._subnet_of[node.node_id])
        ]
        count = rule.group("count")
        if count is None:
            return pool
        return self._rng.sample(pool, min(int(count), len(pool)))

    def _resolve_fixed(self, target: str, rng: random.Random) -> list[str]:
        """A churn target's node ids, drawn once before the run (running or not)."""
        if target in self.world.members:
            return [target]
        rule = TARGET_RULE.match(target)
        assert rule is not None, f"target {target!r} was validated"
        subnet = rule.group("subnet")
        pool = [node_id for node_id in self.world.members
                if subnet in (None, self._subnet_of[node_id])]  # fmt: skip
        count = rule.group("count")
        return pool if count is None else rng.sample(pool, min(int(count), len(pool)))

    def _leaders(self, subnet: str | None, running: bool) -> list[SimNode]:
        """The current responders of `subnet` (every subnet when None)."""
        wanted = [s for s in self.scenario.subnets if subnet in (None, s.name)]
        members = self.world.members
        return [
            members[node_id]
            for spec in wanted
            for node_id in self.leadership.leaders_of(spec.cidr)
            if members[node_id].running == running
        ]

    # ----------------------------------------------------------------------- report

    def _result(
        self, wall_time_s: float, leadership: LeadershipFigures, boots: BootFigures
    ) -> SimResult:
        world = self.world
        metrics = self.metrics
        network = dict(world.network.counters.values)
        messages = network.get("sent", 0)
        member_seconds = metrics.member_seconds
        return SimResult(
            scenario=self.scenario.name,
            seed=self.seed,
            digest=world.trace.digest(),
            sim_time_s=world.env.now,
            wall_time_s=wall_time_s,
            peers=len(world.members),
            events=world.events,
            messages=messages,
            message_bytes=network.get("sent_bytes", 0),
            trace_records=world.trace.count,
            detect_s_p50=metrics.percentile_s(0.50),
            detect_s_p99=metrics.percentile_s(0.99),
            crashes=metrics.crashes,
            detected=len(metrics.detections_s),
            undetected=metrics.undetected,
            false_dead=metrics.false_dead,
            dead_ambiguous=metrics.dead_ambiguous,
            dropped=dict(world.dropped.values),
            network=network,
            messages_per_peer_per_s=messages / member_seconds if member_seconds else 0.0,
            violation_count=self.invariants.count,
            violations=tuple(self.invariants.violations),
            churn_applied=self.applier.applied,
            churn_skipped=self.applier.skipped,
            knobs_drawn=dict(self.knobs_drawn),
            **_leadership_figures(leadership),
            **_boot_figures(boots),
            **(_replication_figures(self.replication.figures()) if self.replication else {}),
        )


def run(
    scenario: Scenario, seed: int | None = None, build: ActorBuilder | None = None
) -> SimResult:
    """Run `scenario` once with `seed` (default: the scenario's own)."""
    return Simulation(scenario, seed, build).run()


def _leadership_figures(figures: LeadershipFigures) -> dict[str, Any]:
    failovers = figures.failover_s
    return {
        "failover_s_p50": percentile(failovers, 0.50),
        "failover_s_p99": percentile(failovers, 0.99),
        "failover_s_max": max(failovers, default=None),
        "failovers": len(failovers),
        "failovers_unfinished": figures.unfinished,
        "handover_s_max": max(figures.handover_s, default=None),
        "dual_leader_episodes": figures.dual_leader_episodes,
        "dual_leader_s_max": figures.dual_leader_s_max,
    }


def _boot_figures(figures: BootFigures) -> dict[str, Any]:
    return {
        "dual_offer_rate": figures.dual_offers / figures.discovers if figures.discovers else 0.0,
        "dual_offers": figures.dual_offers,
        "steady_dual_offers": figures.steady_dual_offers,
        "discovers": figures.discovers,
        "steady_discovers": figures.steady_discovers,
        "boots_attempted": figures.attempted,
        "boots_succeeded": figures.succeeded,
        "boots_failed": figures.failed,
        "boots_failed_unservable": figures.failed_unservable,
        "boot_attempts_failed": figures.failed_attempts,
        "boots_unfinished": figures.unfinished,
        "boot_s_p50": percentile(figures.boot_s, 0.50),
        "boot_s_p99": percentile(figures.boot_s, 0.99),
        "boot_failures": dict(sorted(figures.failures.items())),
    }


def _replication_figures(figures: ReplicationFigures) -> dict[str, Any]:
    published = figures.published_bytes
    wan = figures.wan_bytes_by_site
    offload = None
    if figures.completed_bytes:
        offload = 1.0 - figures.origin_bytes / figures.completed_bytes
    return {
        "wan_bytes_by_site": wan,
        "wan_bytes_ratio_max": max(wan.values()) / published if published and wan else None,
        "wan_window_bytes_max_by_site": figures.wan_window_bytes_max_by_site,
        "wan_cap_exceeded": figures.wan_cap_exceeded,
        "origin_offload": offload,
        "replication_s_p50": percentile(figures.replication_s, 0.50),
        "replication_s_p99": percentile(figures.replication_s, 0.99),
        "replication_s_max": max(figures.replication_s, default=None),
        "replication_s_by_site": figures.replication_s_by_site,
        "replication_unfinished": figures.replication_unfinished,
        "replication_progress_by_site": figures.progress_by_site,
        "corrupt_chunks_refused": figures.corrupt_chunks_refused,
        "corrupt_chunks_accepted": figures.corrupt_chunks_accepted,
        "lan_utilisation": figures.lan_utilisation,
        "chunk_transfers": figures.chunk_transfers,
        "chunk_fetch_failures": figures.chunk_fetch_failures,
        "packages_completed": figures.completions,
    }


def _bind(function: Callable[[Any], None], argument: object) -> Callable[[], None]:
    def call() -> None:
        function(argument)

    return call
