"""Scenario files (TOML) -> validated, frozen dataclasses. The format is in docs/scenarios.md.

Every error names the file, the line and the key, e.g.
`scenarios/x.toml:12: subnet[1].peers: expected a positive integer, got -3`. `tomllib` gives
no positions, so the line is found by scanning the text for the key inside its table (the
n-th `[[subnet]]`, `[network]`, ...); unknown keys are errors too.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from actors.bitfield import CHUNKS_MAX
from actors.discovery import DiscoveryKnobs
from actors.election import ElectionKnobs
from actors.package import CHUNK_BYTES_MAX, CHUNK_BYTES_MIN, parse_version
from actors.package import NAME_PATTERN as PACKAGE_NAME
from actors.replication import ReplicationKnobs
from sim import churn
from sim.knob_draws import KnobRange, KnobRangeError, check_ranges
from sim.network import LatencySpec, NetworkSpec
from sim.workload import (
    CHURN_MODELS,
    DOWN_ACTIONS,
    TRACE_FORMATS,
    TRACE_MAPPINGS,
    ChurnSpec,
    ReplaySpec,
    churn_events,
)

ACTIONS: Final = ("crash", "restart", "stop", "partition", "heal", "slow", "wan-down", "wan-up")
WAN_ACTIONS: Final = ("wan-down", "wan-up")
"""Actions on sites' WAN links: their targets are site names or `all`."""
FIRMWARES: Final = ("bios", "uefi", "ipxe")
NAME_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")
TARGET_RULE: Final = re.compile(
    r"^(random:(?P<count>[0-9]+)|all|(?P<leader>leader))(@(?P<subnet>[a-z0-9-]+))?$"
)
PEER_PORT: Final = 7946  # memberlist's default port; every simulated peer listens on it
ARRAY_SECTIONS: Final = ("subnet", "event", "boot", "churn", "site", "publish")
"""Sections written `[[name]]`: their errors always carry the index, `boot[0].at_s`."""

Knobs = TypeVar("Knobs", DiscoveryKnobs, ElectionKnobs, ReplicationKnobs)
MIB: Final = 1 << 20
KIB: Final = 1 << 10
MBIT_BYTES: Final = 1_000_000 / 8
"""Bytes per second in one Mbit/s."""
SITE_KNOB: Final = "wan_bytes_per_s"
"""The one `ReplicationKnobs` field `[replication]` does not take: each `[[site]]` sets it."""


class ScenarioError(Exception):
    """A scenario file is malformed; the message reads `file:line: key: problem`."""


@dataclass(frozen=True, slots=True)
class SubnetSpec:
    """One subnet: its peers are `<site>-<name>-<index:03d>` at consecutive addresses.

    Peer `index` has weight `weights[index]` (or `weight` when `weights` is empty) and holds
    the verified boot package unless it is one of the first `peers - eligible` peers; it is
    responder-eligible when it holds the package and its weight is above 0.
    """

    name: str
    cidr: str
    site: str
    peers: int
    weight: int
    weights: tuple[int, ...] = ()
    eligible: int | None = None
    """How many peers hold the verified boot package (the last ones); None: all of them."""

    def node_ids(self) -> list[str]:
        """The ids of this subnet's peers, in index order."""
        return [f"{self.site}-{self.name}-{index:03d}" for index in range(self.peers)]

    def host_of(self, index: int) -> str:
        """The IPv4 address of peer `index` (the network address + 1 + index)."""
        network = ipaddress.IPv4Network(self.cidr)
        return str(network.network_address + 1 + index)

    def client_host_of(self, index: int) -> str:
        """The IPv4 address of PXE client `index` (down from the broadcast address - 1)."""
        network = ipaddress.IPv4Network(self.cidr)
        return str(network.broadcast_address - 1 - index)

    def weight_of(self, index: int) -> int:
        """The election weight of peer `index`."""
        return self.weights[index] if self.weights else self.weight

    def has_content(self, index: int) -> bool:
        """Whether peer `index` holds the verified boot package."""
        return self.eligible is None or index >= self.peers - self.eligible

    def responder_eligible(self, index: int) -> bool:
        """Whether peer `index` may be elected the subnet's PXE responder."""
        return self.has_content(index) and self.weight_of(index) > 0


@dataclass(frozen=True, slots=True)
class BootSpec:
    """`count` PXE clients of `firmware` power on in `subnet` at `at_s` (+ up to `spread_s`).

    A machine whose network boot fails reboots and tries again up to `reboots` times
    (SeaBIOS `reboot-timeout`, a boot order listing the NIC again, a power cycle).
    """

    subnet: str
    at_s: float
    count: int
    firmware: str
    spread_s: float
    line: int
    reboots: int = 3


@dataclass(frozen=True, slots=True)
class TftpSpec:
    """The modelled boot-program download: its size and each peer's LAN bandwidth."""

    boot_file_bytes: int = 100_000
    bandwidth_mbit_s: float = 100.0

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """The serving peer's bandwidth, shared by its concurrent downloads."""
        return self.bandwidth_mbit_s * 1_000_000 / 8


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """A site's WAN link: its rate, and the cap its downloader's token bucket keeps."""

    name: str
    wan_mbit_s: float = 1000.0
    wan_cap_mbit_s: float = 100.0

    @property
    def wan_bytes_per_s(self) -> float:
        """The link's rate, shared by the site's concurrent WAN transfers."""
        return self.wan_mbit_s * MBIT_BYTES

    @property
    def wan_cap_bytes_per_s(self) -> float:
        """The downloader's token-bucket rate (`ReplicationKnobs.wan_bytes_per_s`)."""
        return self.wan_cap_mbit_s * MBIT_BYTES


@dataclass(frozen=True, slots=True)
class PublishSpec:
    """At `at_s` the origin publishes package `name` `version`: `size_bytes` in `files` files."""

    at_s: float
    name: str
    version: tuple[int, ...]
    size_bytes: int
    files: int
    line: int


@dataclass(frozen=True, slots=True)
class ReplicationSpec:
    """Boot package replication: chunking, bandwidths, corruption, knobs, sites, publishes."""

    chunk_bytes: int = 4 * MIB
    lan_mbit_s: float = 100.0
    origin_mbit_s: float = 10_000.0
    upload_slots: int = 4
    """Concurrent uploads a peer's chunk service accepts; more are refused as busy (the
    unchoked slots of BitTorrent, BEP 3, where 4 is the customary number)."""
    upload_backlog: int = 8
    """Requests a busy chunk service keeps waiting for a slot (first come, first served)."""
    corrupt_fraction: float = 0.0
    knobs: ReplicationKnobs = field(default_factory=ReplicationKnobs)
    sites: tuple[SiteSpec, ...] = ()
    publishes: tuple[PublishSpec, ...] = ()

    @property
    def lan_bytes_per_s(self) -> float:
        """Each peer's upload and (separately) download capacity."""
        return self.lan_mbit_s * MBIT_BYTES

    @property
    def origin_bytes_per_s(self) -> float:
        """The origin's upload capacity, shared by every downloader fetching from it."""
        return self.origin_mbit_s * MBIT_BYTES

    def site(self, name: str) -> SiteSpec:
        """The WAN link of site `name` (the defaults when no `[[site]]` names it)."""
        for site in self.sites:
            if site.name == name:
                return site
        return SiteSpec(name)


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One scheduled fault: at `at_s`, apply `action` to `targets` (ids or rules)."""

    at_s: float
    action: str
    targets: tuple[str, ...]
    delay_s: float
    line: int


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole scenario file, validated."""

    path: str
    name: str
    duration_s: float
    seed: int
    start_spread_s: float
    seed_nodes: tuple[str, ...]
    network: NetworkSpec
    slow_fraction: float
    slow_delay_s: float
    knobs: DiscoveryKnobs
    subnets: tuple[SubnetSpec, ...]
    events: tuple[EventSpec, ...]
    election: ElectionKnobs = field(default_factory=ElectionKnobs)
    boots: tuple[BootSpec, ...] = ()
    tftp: TftpSpec = field(default_factory=TftpSpec)
    churn: tuple[ChurnSpec, ...] = ()
    replay: ReplaySpec | None = None
    replication: ReplicationSpec | None = None
    """Set when the file has `[replication]`, `[[site]]` or `[[publish]]`: peers then also
    run the replication actor and the site's downloader election."""
    randomize: tuple[KnobRange, ...] = ()
    """`[randomize.SECTION] knob = [low, high]`: knobs drawn anew for each seed
    (`sim.knob_draws`)."""

    def sites(self) -> list[str]:
        """The sites of the subnets, in order of first appearance."""
        return list(dict.fromkeys(subnet.site for subnet in self.subnets))

    def node_ids(self) -> list[str]:
        """Every peer id, subnet by subnet."""
        return [node_id for subnet in self.subnets for node_id in subnet.node_ids()]

    def with_duration(self, duration_s: float) -> Scenario:
        """The same scenario cut (or stretched) to `duration_s`."""
        assert duration_s > 0
        return dataclasses.replace(self, duration_s=duration_s)


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    text = Path(path).read_text(encoding="utf-8")
    return parse(text, str(path))


def parse(text: str, path: str = "<scenario>") -> Scenario:
    """Validate scenario `text`; `path` is only used in error messages."""
    locate = _Locator(text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{path}: {error}") from error
    return _Reader(path, locate).scenario(data)


# --------------------------------------------------------------------------- line lookup


class _Locator:
    """Finds the line of `key` inside table `section` (n-th occurrence for arrays)."""

    _HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")

    def __init__(self, text: str) -> None:
        # (section, occurrence, header line, {key: line})
        self._tables: list[tuple[str, int, int, dict[str, int]]] = [("", 0, 1, {})]
        seen: dict[str, int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                name = header.group(1)
                occurrence = seen.get(name, 0)
                seen[name] = occurrence + 1
                self._tables.append((name, occurrence, number, {}))
                continue
            key = self._KEY.match(line)
            if key:
                self._tables[-1][3].setdefault(key.group(1), number)

    def __call__(self, section: str, occurrence: int = 0, key: str | None = None) -> int:
        for name, index, header_line, keys in self._tables:
            if name == section and index == occurrence:
                return keys.get(key, header_line) if key is not None else header_line
        return 1


# --------------------------------------------------------------------------- validation


class _Reader:
    """Reads one table at a time; every complaint carries file, line and key."""

    def __init__(self, path: str, locate: _Locator) -> None:
        self._path = path
        self._locate = locate

    def fail(self, section: str, occurrence: int, key: str | None, problem: str) -> ScenarioError:
        line = self._locate(section, occurrence, key)
        label = (
            section
            if occurrence == 0 and section not in ARRAY_SECTIONS
            else (f"{section}[{occurrence}]")
        )
        where = f"{label}.{key}" if key else label
        return ScenarioError(f"{self._path}:{line}: {where}: {problem}")

    def scenario(self, data: dict[str, Any]) -> Scenario:
        sections = ("scenario", "network", "discovery", "election", "subnet", "event", "boot")
        more = ("tftp", "churn", "replay", "replication", "site", "publish", "randomize")
        self._only(data, "", 0, (*sections, *more))
        head = _Table(self, "scenario", 0, self._table(data, "scenario", required=True))
        name = head.name("name")
        duration_s = head.number("duration_s", minimum=0.0, exclusive=True)
        seed = head.integer("seed", default=1, minimum=0)
        spread_s = head.number("start_spread_s", default=1.0, minimum=0.0)
        seed_nodes = head.strings("seed_nodes", default=())
        head.done()
        network, slow_fraction, slow_delay_s = self._network(self._table(data, "network"))
        knobs = self._knobs(self._table(data, "discovery"), "discovery", DiscoveryKnobs())
        election = self._knobs(self._table(data, "election"), "election", ElectionKnobs())
        subnets = self._subnets(data.get("subnet"))
        known = {node_id for subnet in subnets for node_id in subnet.node_ids()}
        for node_id in seed_nodes:
            if node_id not in known:
                raise self.fail("scenario", 0, "seed_nodes", f"unknown node id {node_id!r}")
        events = self._events(data.get("event", []), subnets, known, slow_delay_s)
        replication = self._replication(data, subnets)
        boots = self._boots(data.get("boot", []), subnets)
        tftp = self._tftp(self._table(data, "tftp"))
        churn_specs = self._churn(data.get("churn", []), subnets, known)
        replay = self._replay(data.get("replay"))
        randomize = self._randomize(self._table(data, "randomize"))
        return Scenario(
            path=self._path,
            name=name,
            duration_s=duration_s,
            seed=seed,
            start_spread_s=spread_s,
            seed_nodes=seed_nodes,
            network=network,
            slow_fraction=slow_fraction,
            slow_delay_s=slow_delay_s,
            knobs=knobs,
            subnets=subnets,
            events=events,
            election=election,
            boots=boots,
            tftp=tftp,
            churn=churn_specs,
            replay=replay,
            replication=replication,
            randomize=randomize,
        )

    def _randomize(self, raw: dict[str, Any]) -> tuple[KnobRange, ...]:
        """`[randomize.SECTION]` knob ranges, each checked against the knob's type and bounds."""
        for section, table in raw.items():
            if not isinstance(table, dict):
                raise self.fail("randomize", 0, section, "expected a table of knob = [low, high]")
            for key, bounds in table.items():
                try:
                    check_ranges({section: {key: bounds}})
                except KnobRangeError as error:
                    raise self.fail(f"randomize.{section}", 0, key, str(error)) from error
        return check_ranges(raw)

    def _table(self, data: dict[str, Any], name: str, required: bool = False) -> dict[str, Any]:
        table = data.get(name)
        if table is None and not required:
            return {}
        if not isinstance(table, dict):
            raise self.fail(name, 0, None, "expected a table [" + name + "]")
        return table

    def _only(self, data: dict[str, Any], section: str, index: int, keys: tuple[str, ...]) -> None:
        for key in data:
            if key not in keys:
                raise self.fail(section, index, key, f"unknown key (expected one of {keys})")

    def _network(self, data: dict[str, Any]) -> tuple[NetworkSpec, float, float]:
        table = _Table(self, "network", 0, data)
        lan = table.latency("latency", LatencySpec())
        wan = table.latency("wan_latency", NetworkSpec().wan)
        loss = table.number("loss", default=0.0, minimum=0.0, maximum=0.99)
        duplicate = table.number("duplicate", default=0.0, minimum=0.0, maximum=0.99)
        slow_fraction = table.number("slow_fraction", default=0.0, minimum=0.0, maximum=1.0)
        slow_delay_s = table.number("slow_delay_s", default=1.0, minimum=0.0)
        table.done()
        spec = NetworkSpec(lan=lan, wan=wan, loss=loss, duplicate=duplicate)
        return spec, slow_fraction, slow_delay_s

    def _knobs(self, data: dict[str, Any], section: str, defaults: Knobs) -> Knobs:
        """Overrides of a knobs dataclass's numeric fields; the knobs' own checks apply."""
        table = _Table(self, section, 0, data)
        knobs = self._knob_overrides(table, section, defaults, ())
        table.done()
        return knobs

    def _knob_overrides(
        self, table: _Table, section: str, defaults: Knobs, skip: tuple[str, ...]
    ) -> Knobs:
        """`defaults` with the numeric fields `table` sets (but those in `skip`)."""
        values: dict[str, Any] = {}
        for knob in dataclasses.fields(defaults):
            default = getattr(defaults, knob.name)
            if isinstance(default, bool) or knob.name in skip:
                continue
            if isinstance(default, int):
                values[knob.name] = table.integer(knob.name, default=default, minimum=0)
            elif isinstance(default, float):
                values[knob.name] = table.number(knob.name, default=default, minimum=0.0)
        try:
            return dataclasses.replace(defaults, **values)
        except (AssertionError, ValueError) as error:
            raise self.fail(section, 0, None, f"invalid knobs: {error}") from error

    def _subnets(self, raw: object) -> tuple[SubnetSpec, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail("subnet", 0, None, "expected at least one [[subnet]] table")
        subnets: list[SubnetSpec] = []
        for index, data in enumerate(raw):
            table = _Table(self, "subnet", index, data)
            peers = table.integer("peers", minimum=1)
            weights, kinds = table.weights("weights", peers), table.kinds("kinds", peers)
            if weights and kinds:
                raise self.fail("subnet", index, "kinds", "give weights or kinds, not both")
            subnet = SubnetSpec(
                name=table.name("name"),
                cidr=table.string("cidr"),
                site=table.name("site"),
                peers=peers,
                weight=table.integer("weight", default=50, minimum=0, maximum=100),
                weights=weights or kinds,
                eligible=table.count_or_fraction("eligible", peers),
            )
            table.done()
            self._check_subnet(subnet, index, subnets)
            subnets.append(subnet)
        return tuple(subnets)

    def _check_subnet(self, subnet: SubnetSpec, index: int, before: list[SubnetSpec]) -> None:
        try:
            network = ipaddress.IPv4Network(subnet.cidr)
        except ValueError as error:
            raise self.fail("subnet", index, "cidr", f"not an IPv4 network: {error}") from error
        if subnet.peers > network.num_addresses - 2:
            problem = f"{subnet.peers} peers do not fit in {subnet.cidr}"
            raise self.fail("subnet", index, "peers", problem)
        for other in before:
            if other.name == subnet.name:
                raise self.fail("subnet", index, "name", f"duplicate subnet {subnet.name!r}")
            if ipaddress.IPv4Network(other.cidr).overlaps(network):
                raise self.fail("subnet", index, "cidr", f"overlaps subnet {other.name!r}")

    def _events(
        self, raw: object, subnets: tuple[SubnetSpec, ...], known: set[str], slow_delay_s: float
    ) -> tuple[EventSpec, ...]:
        if not isinstance(raw, list):
            raise self.fail("event", 0, None, "expected [[event]] tables")
        subnet_names = [subnet.name for subnet in subnets]
        sites = list(dict.fromkeys(subnet.site for subnet in subnets))
        events: list[EventSpec] = []
        for index, data in enumerate(raw):
            table = _Table(self, "event", index, data)
            at_s = table.number("at_s", minimum=0.0)
            action = table.choice("action", ACTIONS)
            targets = table.strings("targets", default=())
            delay_s = table.number("delay_s", default=slow_delay_s, minimum=0.0)
            table.done()
            if action != "heal" and not targets:
                raise self.fail("event", index, "targets", f"{action} needs targets")
            for target in targets:
                if action in WAN_ACTIONS:
                    problem = _site_problem(target, sites)
                else:
                    problem = _target_problem(target, subnet_names, known, action)
                if problem:
                    raise self.fail("event", index, "targets", problem)
            line = self._locate("event", index)
            events.append(EventSpec(at_s, action, targets, delay_s, line))
        return tuple(sorted(events, key=lambda event: event.at_s))

    def _boots(self, raw: object, subnets: tuple[SubnetSpec, ...]) -> tuple[BootSpec, ...]:
        if not isinstance(raw, list):
            raise self.fail("boot", 0, None, "expected [[boot]] tables")
        by_name = {subnet.name: subnet for subnet in subnets}
        clients: dict[str, int] = {}
        boots: list[BootSpec] = []
        for index, data in enumerate(raw):
            table = _Table(self, "boot", index, data)
            subnet = table.choice("subnet", tuple(by_name))
            boot = BootSpec(
                subnet=subnet,
                at_s=table.number("at_s", minimum=0.0),
                count=table.integer("count", default=1, minimum=1),
                firmware=table.choice("firmware", FIRMWARES, default="bios"),
                spread_s=table.number("spread_s", default=0.0, minimum=0.0),
                line=self._locate("boot", index),
                reboots=table.integer("reboots", default=3, minimum=0, maximum=10),
            )
            table.done()
            clients[subnet] = clients.get(subnet, 0) + boot.count
            spec = by_name[subnet]
            room = ipaddress.IPv4Network(spec.cidr).num_addresses - 2 - spec.peers
            if clients[subnet] > room:
                problem = (
                    f"{clients[subnet]} clients and {spec.peers} peers do not fit in {spec.cidr}"
                )
                raise self.fail("boot", index, "count", problem)
            boots.append(boot)
        return tuple(boots)

    def _churn(
        self, raw: object, subnets: tuple[SubnetSpec, ...], known: set[str]
    ) -> tuple[ChurnSpec, ...]:
        if not isinstance(raw, list):
            raise self.fail("churn", 0, None, "expected [[churn]] tables")
        names = [subnet.name for subnet in subnets]
        specs: list[ChurnSpec] = []
        for index, data in enumerate(raw):
            table = _Table(self, "churn", index, data)
            model = table.choice("model", CHURN_MODELS)
            targets = table.strings("targets", default=())
            if not targets:
                raise self.fail("churn", index, "targets", "expected at least one target")
            for target in targets:
                problem = _target_problem(target, names, known, "churn")
                if problem or target.startswith("leader"):
                    problem = problem or f"{target!r}: churn targets are fixed peers, not roles"
                    raise self.fail("churn", index, "targets", problem)
            params = {key: table.raw(key) for key in CHURN_KEYS[model] if table.has(key)}
            table.done()
            self._check_churn(index, model, params)
            specs.append(ChurnSpec(model, targets, params, self._locate("churn", index)))
        return tuple(specs)

    def _check_churn(self, index: int, model: str, params: dict[str, Any]) -> None:
        """Build the model's parameters once, so a bad value fails here, with its line."""
        for key in CHURN_REQUIRED[model]:
            if key not in params:
                raise self.fail("churn", index, key, "missing required key")
        for key, value in params.items():
            try:
                _check_churn_value(key, value)
            except (ValueError, TypeError, KeyError) as error:
                raise self.fail("churn", index, key, str(error).strip("'")) from error
        try:
            churn_events(ChurnSpec(model, (), params, 0), ["probe"], 1.0, random.Random(0))
        except (ValueError, TypeError, AssertionError) as error:
            raise self.fail("churn", index, None, f"invalid {model}: {error}") from error

    def _replay(self, raw: object) -> ReplaySpec | None:
        if raw is None:
            return None
        table = _Table(self, "replay", 0, raw)
        trace = Path(table.string("trace"))
        if not trace.is_absolute():
            trace = Path(self._path).parent / trace
        suffix = trace.name.rsplit(".", 1)[-1]
        guessed = {"avt": "avt", "tsv": "fta", "fta": "fta", "jsonl": "jsonl"}.get(suffix)
        trace_format = table.choice("format", TRACE_FORMATS, default=guessed or _Table._MISSING)
        spec = ReplaySpec(
            trace=trace,
            format=trace_format,
            mapping=table.choice("mapping", TRACE_MAPPINGS, default="round-robin"),
            down=table.choice("down", DOWN_ACTIONS, default="crash"),
            cut_start_s=table.optional_number("cut_start_s"),
            cut_end_s=table.optional_number("cut_end_s"),
            loop_period_s=table.optional_number("loop_period_s"),
            allow_fold=table.boolean("allow_fold", default=False),
        )
        table.done()
        if not trace.is_file():
            raise self.fail("replay", 0, "trace", f"no such trace file: {trace}")
        return spec

    def _replication(
        self, data: dict[str, Any], subnets: tuple[SubnetSpec, ...]
    ) -> ReplicationSpec | None:
        """`[replication]`, `[[site]]` and `[[publish]]`; None when the file has none."""
        if not any(key in data for key in ("replication", "site", "publish")):
            return None
        table = _Table(self, "replication", 0, self._table(data, "replication"))
        defaults = ReplicationSpec()
        chunk_kib = table.integer(
            "chunk_kib",
            default=defaults.chunk_bytes // KIB,
            minimum=CHUNK_BYTES_MIN // KIB,
            maximum=CHUNK_BYTES_MAX // KIB,
        )
        lan = table.number("lan_mbit_s", default=defaults.lan_mbit_s, exclusive=True)
        origin = table.number("origin_mbit_s", default=defaults.origin_mbit_s, exclusive=True)
        slots = table.integer("upload_slots", default=defaults.upload_slots, minimum=1)
        backlog = table.integer("upload_backlog", default=defaults.upload_backlog, minimum=0)
        corrupt = table.number("corrupt_fraction", default=0.0, maximum=0.5)
        if table.has(SITE_KNOB):
            raise table.fail(SITE_KNOB, "the WAN cap is per site: set wan_cap_mbit_s in [[site]]")
        knobs = self._knob_overrides(table, "replication", ReplicationKnobs(), (SITE_KNOB,))
        table.done()
        chunk_bytes = chunk_kib * KIB
        return ReplicationSpec(
            chunk_bytes=chunk_bytes,
            lan_mbit_s=lan,
            origin_mbit_s=origin,
            upload_slots=slots,
            upload_backlog=backlog,
            corrupt_fraction=corrupt,
            knobs=knobs,
            sites=self._sites(data.get("site", []), subnets),
            publishes=self._publishes(data.get("publish", []), chunk_bytes),
        )

    def _sites(self, raw: object, subnets: tuple[SubnetSpec, ...]) -> tuple[SiteSpec, ...]:
        if not isinstance(raw, list):
            raise self.fail("site", 0, None, "expected [[site]] tables")
        names = tuple(dict.fromkeys(subnet.site for subnet in subnets))
        sites: list[SiteSpec] = []
        for index, data in enumerate(raw):
            table = _Table(self, "site", index, data)
            defaults = SiteSpec("")
            site = SiteSpec(
                name=table.choice("name", names),
                wan_mbit_s=table.number("wan_mbit_s", default=defaults.wan_mbit_s, exclusive=True),
                wan_cap_mbit_s=table.number(
                    "wan_cap_mbit_s", default=defaults.wan_cap_mbit_s, exclusive=True
                ),
            )
            table.done()
            if any(other.name == site.name for other in sites):
                raise self.fail("site", index, "name", f"duplicate site {site.name!r}")
            sites.append(site)
        return tuple(sites)

    def _publishes(self, raw: object, chunk_bytes: int) -> tuple[PublishSpec, ...]:
        if not isinstance(raw, list):
            raise self.fail("publish", 0, None, "expected [[publish]] tables")
        publishes: list[PublishSpec] = []
        for index, data in enumerate(raw):
            table = _Table(self, "publish", index, data)
            at_s = table.number("at_s", minimum=0.0)
            name = table.string("name")
            if not PACKAGE_NAME.fullmatch(name):
                raise table.fail("name", f"expected a package name [A-Za-z0-9._-], got {name!r}")
            text = table.string("version")
            try:
                version = parse_version(text)
            except ValueError as error:
                raise table.fail("version", str(error)) from error
            size_bytes = int(table.number("size_mib", exclusive=True) * MIB)
            files = table.integer("files", default=1, minimum=1, maximum=1000)
            table.done()
            if size_bytes < files:
                raise table.fail("files", f"{files} files do not fit in {size_bytes} bytes")
            chunks = sum(-(-size // chunk_bytes) for size in split_sizes(size_bytes, files))
            if chunks > CHUNKS_MAX:
                problem = f"{chunks} chunks (more than {CHUNKS_MAX}): raise [replication] chunk_kib"
                raise table.fail("size_mib", problem)
            line = self._locate("publish", index)
            publishes.append(PublishSpec(at_s, name, version, size_bytes, files, line))
        return tuple(sorted(publishes, key=lambda publish: publish.at_s))

    def _tftp(self, data: dict[str, Any]) -> TftpSpec:
        table = _Table(self, "tftp", 0, data)
        defaults = TftpSpec()
        size = table.integer("boot_file_bytes", default=defaults.boot_file_bytes, minimum=1)
        bandwidth = table.number(
            "bandwidth_mbit_s", default=defaults.bandwidth_mbit_s, minimum=0.0, exclusive=True
        )
        table.done()
        return TftpSpec(boot_file_bytes=size, bandwidth_mbit_s=bandwidth)


KIND_WEIGHTS: Final = {"server": 90, "desktop": 60, "laptop": 40, "wifi": 20, "vpn": 10, "never": 0}
"""Election weight by machine kind: server > desktop > laptop > Wi-Fi > VPN; 0 never leads
(1E Nomad's P2PElectionWeight ranks them the same way, pxe-protocol-notes.md §8)."""
CHURN_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "sessions": ("session", "down", "clean", "random_phase", "start_s"),
    "office-day": ("on_at_s", "off_at_s", "jitter_s", "overnight_fraction", "day_s"),
    "power-cut": ("at_s", "down"),
    "switch-failure": ("at_s", "down_s", "side"),
    "swizzle-clog": ("start_s", "interval_s", "hold_s", "count", "mode", "delay_s"),
}
"""The parameters each `[[churn]]` model takes (`docs/scenarios.md`)."""
CHURN_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "sessions": ("session", "down"),
    "office-day": ("on_at_s", "off_at_s"),
    "power-cut": ("at_s", "down"),
    "switch-failure": ("at_s", "down_s"),
    "swizzle-clog": ("start_s", "interval_s"),
}


def _check_churn_value(key: str, value: object) -> None:
    """Types of churn parameters: distributions are tables, flags booleans, the rest numbers."""
    if key in ("session", "down"):
        if not isinstance(value, dict):
            raise ValueError(f"expected a distribution table like {{ kind = 'exponential', "
                             f"mean_s = 60 }}, got {value!r}")  # fmt: skip
        churn.distribution(value)
    elif key in ("clean", "random_phase"):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
    elif key == "mode":
        if value not in ("partition", "slow"):
            raise ValueError(f"expected 'partition' or 'slow', got {value!r}")
    elif key == "side":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
    elif key == "count":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"expected a positive integer, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"expected a number >= 0, got {value!r}")


def split_sizes(size_bytes: int, files: int) -> list[int]:
    """`size_bytes` split into `files` file sizes, as equal as can be (the first ones larger)."""
    assert 1 <= files <= size_bytes
    base, extra = divmod(size_bytes, files)
    return [base + (1 if index < extra else 0) for index in range(files)]


def _site_problem(target: str, sites: list[str]) -> str | None:
    if target == "all" or target in sites:
        return None
    return f"{target!r}: expected a site name ({', '.join(sites)}) or 'all'"


def _target_problem(
    target: str, subnet_names: list[str], known: set[str], action: str
) -> str | None:
    if target in known:
        return None
    rule = TARGET_RULE.match(target)
    if rule is None:
        return (
            f"{target!r} is neither a node id nor a rule like 'random:3@subnet-a', 'all' or "
            "'leader@subnet-a'"
        )
    subnet = rule.group("subnet")
    if subnet is not None and subnet not in subnet_names:
        return f"{target!r}: unknown subnet {subnet!r}"
    if rule.group("leader") and action == "restart":
        return f"{target!r}: a leader is running; restart picks among stopped peers"
    return None


class _Table:
    """Typed getters over one TOML table; `done()` rejects keys nobody asked for."""

    _MISSING: Final = object()

    def __init__(self, reader: _Reader, section: str, index: int, data: object) -> None:
        if not isinstance(data, dict):
            raise reader.fail(section, index, None, "expected a table")
        self._reader = reader
        self._section = section
        self._index = index
        self._data: dict[str, Any] = data
        self._read: list[str] = []

    def _get(self, key: str, default: object) -> object:
        self._read.append(key)
        if key in self._data:
            return self._data[key]
        if default is _Table._MISSING:
            raise self._fail(key, "missing required key")
        return default

    def _fail(self, key: str, problem: str) -> ScenarioError:
        return self._reader.fail(self._section, self._index, key, problem)

    def fail(self, key: str, problem: str) -> ScenarioError:
        """An error about `key` of this table, with its file and line."""
        return self._fail(key, problem)

    def done(self) -> None:
        for key in self._data:
            if key not in self._read:
                raise self._fail(key, f"unknown key (expected one of {tuple(self._read)})")

    def string(self, key: str, default: object = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, f"expected a string, got {value!r}")
        return value

    def name(self, key: str) -> str:
        value = self.string(key)
        if not NAME_PATTERN.match(value):
            raise self._fail(key, f"expected a short lowercase name [a-z0-9-], got {value!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: object = _MISSING) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self._fail(key, f"expected one of {choices}, got {value!r}")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, default)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def kinds(self, key: str, peers: int) -> tuple[int, ...]:
        """Per-peer weights from machine kinds, `{ server = 2, desktop = 10, wifi = 1 }`
        (peers get them in `KIND_WEIGHTS` order, servers first); absent: ()."""
        value = self._get(key, {})
        if not isinstance(value, dict):
            raise self._fail(key, f"expected a table of kind = count, got {value!r}")
        weights: list[int] = []
        for kind in value:
            count = value[kind]
            if kind not in KIND_WEIGHTS:
                raise self._fail(
                    key, f"unknown kind {kind!r} (expected one of {tuple(KIND_WEIGHTS)})"
                )
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise self._fail(key, f"{kind}: expected a count >= 0, got {count!r}")
        for kind, weight in KIND_WEIGHTS.items():
            weights += [weight] * value.get(kind, 0)
        if value and len(weights) != peers:
            raise self._fail(key, f"the kinds add up to {len(weights)} peers, not {peers}")
        return tuple(weights)

    def has(self, key: str) -> bool:
        """Whether the table sets `key` (marks it as read)."""
        self._read.append(key)
        return key in self._data

    def raw(self, key: str) -> object:
        """The value of `key` as TOML gave it (the caller checks it)."""
        return self._get(key, _Table._MISSING)

    def optional_number(self, key: str) -> float | None:
        """A number >= 0, or None when absent."""
        if not self.has(key):
            return None
        return self.number(key, minimum=0.0)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, f"expected true or false, got {value!r}")
        return value

    def weights(self, key: str, peers: int) -> tuple[int, ...]:
        """Per-peer election weights, one per peer, each 0 ... 100; absent: ()."""
        value = self._get(key, ())
        ok = isinstance(value, list | tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 100 for v in value
        )
        if not ok:
            raise self._fail(key, f"expected a list of integers 0 ... 100, got {value!r}")
        assert isinstance(value, list | tuple)
        if value and len(value) != peers:
            raise self._fail(key, f"expected {peers} weights (one per peer), got {len(value)}")
        return tuple(value)

    def count_or_fraction(self, key: str, total: int) -> int | None:
        """An integer count 0 ... `total`, or a fraction 0.0 ... 1.0 of `total` (rounded half
        up); absent: None."""
        value = self._get(key, None)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= total:
            return value
        if isinstance(value, float) and 0.0 <= value <= 1.0:
            return int(value * total + 0.5)
        problem = f"expected a count 0 ... {total} or a fraction 0.0 ... 1.0, got {value!r}"
        raise self._fail(key, problem)

    def integer(
        self, key: str, default: object = _MISSING, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self._get(key, default)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        if not ok or (maximum is not None and value > maximum):  # type: ignore[operator]
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            bound = f" and <= {maximum}" if maximum is not None else ""
            raise self._fail(key, f"expected {kind}{bound}, got {value!r}")
        assert isinstance(value, int)
        return value

    def number(
        self,
        key: str,
        default: object = _MISSING,
        minimum: float = 0.0,
        maximum: float | None = None,
        exclusive: bool = False,
    ) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, f"expected a number, got {value!r}")
        low_ok = value > minimum if exclusive else value >= minimum
        if not low_ok or (maximum is not None and value > maximum):
            relation = ">" if exclusive else ">="
            bound = f" and <= {maximum}" if maximum is not None else ""
            raise self._fail(key, f"expected a number {relation} {minimum}{bound}, got {value!r}")
        return float(value)

    def latency(self, key: str, default: LatencySpec) -> LatencySpec:
        value = self._get(key, None)
        if value is None:
            return default
        if not isinstance(value, dict):
            raise self._fail(key, f"expected an inline table {{ kind = ... }}, got {value!r}")
        kind = value.get("kind", "lognormal")
        expected = {"lognormal": ("median_ms", "sigma"), "uniform": ("base_ms", "jitter_ms")}
        if kind not in expected:
            raise self._fail(key, f"kind: expected 'lognormal' or 'uniform', got {kind!r}")
        fields = expected[kind]
        for name, amount in value.items():
            if name != "kind" and name not in fields:
                raise self._fail(key, f"unknown field {name!r} for kind {kind!r} ({fields})")
            if name != "kind" and (isinstance(amount, bool) or not isinstance(amount, int | float)):
                raise self._fail(key, f"{name}: expected a number, got {amount!r}")
            if name != "kind" and (amount < 0 or (name == "median_ms" and amount <= 0)):
                raise self._fail(key, f"{name}: expected a positive number, got {amount!r}")
        if kind == "lognormal":
            return LatencySpec(
                kind="lognormal",
                median_s=float(value.get("median_ms", 0.3)) / 1000,
                sigma=float(value.get("sigma", 0.5)),
            )
        return LatencySpec(
            kind="uniform",
            base_s=float(value.get("base_ms", 0.2)) / 1000,
            jitter_s=float(value.get("jitter_ms", 0.2)) / 1000,
        )
