"""The shape every peerpxe actor shares: events in, commands out, time as an argument.

An actor is a plain object with two methods::

    start(now_s) -> list[Command]
    handle(event, now_s) -> list[Command]

It never blocks, reads no clock, opens no socket and draws randomness only from the
`random.Random` its host injects. The host (pykka threads in `transport/`, the SimPy clock
in `sim/`) turns real or simulated happenings into events and carries out the commands.

Timers are commands with an absolute deadline (`StartTimer(name, deadline_s)`); starting a
timer with a name that is already armed re-arms it. A fired timer comes back as
`TimerFired(name)`. Peer messages go out as `SendMessage(address, message)`; the host seals
them in the authenticated envelope (`actors.envelope`) and delivers what arrives, already
authenticated and decoded, as `MessageReceived`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from actors.boot.proxy_dhcp import ProxyPolicy
    from actors.messages import Message
    from actors.package import Manifest

NodeId = str
"""A peer's stable identity (printable, at most `NODE_ID_BYTES_MAX` bytes)."""

NODE_ID_BYTES_MAX = 64


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """Where a peer's message endpoint listens (IPv4 dotted quad or hostname, UDP port)."""

    host: str
    port: int


class ActorName(StrEnum):
    """The actors of one peer; `Tell` names its target with one of these."""

    #: membership and failure detection
    DISCOVERY = "discovery"
    #: responder and WAN-downloader election
    ELECTION = "election"
    #: boot package replication
    REPLICATION = "replication"
    #: ProxyDHCP, TFTP and HTTP serving
    BOOT = "boot"


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """What a member is: identity, place in the network, how to reach it, what it can do."""

    node_id: NodeId
    site: str
    subnet: str
    address: Address
    weight: int = 0
    capabilities: tuple[str, ...] = ()


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """An authenticated peer message arrived from `source` at `address`."""

    source: NodeId
    address: Address
    message: Message


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A timer started with `StartTimer(name, ...)` reached its deadline."""

    name: str


@dataclass(frozen=True, slots=True)
class PeerDiscovered:
    """Link-local discovery (mDNS) saw a peer's service record (TXT fields in `member`)."""

    member: MemberInfo
    wire_version: int


@dataclass(frozen=True, slots=True)
class PeerLost:
    """Link-local discovery saw a peer withdraw its service record (mDNS goodbye)."""

    node_id: NodeId


@dataclass(frozen=True, slots=True)
class SendFailed:
    """The host could not send to `address` (for example: network unreachable)."""

    address: Address
    reason: str


class MemberState(StrEnum):
    """What this peer believes about another member."""

    #: answering probes
    ALIVE = "alive"
    #: missed a direct and indirect probe; dead unless it refutes in time
    SUSPECT = "suspect"
    #: declared failed
    DEAD = "dead"
    #: left on purpose (clean shutdown)
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """Told by discovery to the other actors of its peer when a member's state changes."""

    member: MemberInfo
    state: MemberState
    incarnation: int


@dataclass(frozen=True, slots=True)
class LeadershipChanged:
    """Told by the election actor when this peer's standing in `scope` changes.

    `leading` is true while this peer holds the scope; `standby_rank` is its 1-based place in
    the line of succession (0 when it is neither leader nor standby).
    """

    scope: str
    capability: str
    leading: bool
    term: int
    leader: NodeId
    standby_rank: int = 0


@dataclass(frozen=True, slots=True)
class DhcpPacketReceived:
    """A datagram arrived on a ProxyDHCP port: `local` is our address and port (67 or 4011)."""

    payload: bytes
    source: Address
    local: Address


@dataclass(frozen=True, slots=True)
class ManifestAccepted:
    """The host verified `manifest` (signature, freshness) and staged it in its store."""

    manifest: Manifest


@dataclass(frozen=True, slots=True)
class ChunksHeld:
    """The store holds these chunks of `package_id` (`actors.bitfield`: bit i is chunk i).

    Told after `ManifestAccepted` and whenever the store's view changed other than by a
    fetch (for example a stored chunk found corrupt and dropped).
    """

    package_id: str
    bitmap: bytes


@dataclass(frozen=True, slots=True)
class ChunkStored:
    """`fetch` brought a chunk the store verified against the manifest and wrote durably."""

    fetch: FetchChunk


@dataclass(frozen=True, slots=True)
class ChunkRefused:
    """`fetch` brought data the store refused (wrong length or SHA-256): `reason` says why."""

    fetch: FetchChunk
    reason: str


@dataclass(frozen=True, slots=True)
class ChunkFetchFailed:
    """`fetch` brought no data: `reason` is `not_held` (the source lacks it) or another word."""

    fetch: FetchChunk
    reason: str


@dataclass(frozen=True, slots=True)
class PackageComplete:
    """The store assembled and verified every file of `package_id` and now serves it."""

    package_id: str


@dataclass(frozen=True, slots=True)
class WanSourcesChanged:
    """Where this site's downloader may fetch across the WAN: the origin first, then any
    peers of other sites that serve the whole package."""

    sources: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class EligibilityChanged:
    """Told to the election actor: this peer may (or may no longer) lead scopes whose
    leaders need `capability` (for example `responder` once the package is verified)."""

    capability: str
    eligible: bool


@dataclass(frozen=True, slots=True)
class CapabilitiesChanged:
    """Told to the discovery actor: this peer now advertises `capabilities` (for example
    `responder` once the package is verified); discovery gossips it under a new incarnation."""

    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ManifestFetched:
    """The host brought the signed manifest `command` asked for and `package_id` names it.

    When it was new to the store, the store's events (`ManifestAccepted`, `ChunksHeld`, and
    `PackageComplete` if nothing is missing) were told first; when the store already held
    it, only this is told.
    """

    command: FetchManifest
    package_id: str


@dataclass(frozen=True, slots=True)
class ManifestFetchFailed:
    """No manifest came of `command`: `refused` when the store refused the manifest itself
    (bad signature, rollback, over quota; `reason` says which), else the source failed."""

    command: FetchManifest
    reason: str
    refused: bool = False


@dataclass(frozen=True, slots=True)
class SeedOffered:
    """A publisher (`peerpxe publish`) offers its package from the chunk service at `source`:
    this peer takes the manifest and the chunks from it, and the package spreads from here."""

    source: Address


@dataclass(frozen=True, slots=True)
class PolicyInstalled:
    """The host verified, stored and applied signed policy `version` (fetched by `command`,
    or found on disk at start when `command` is None); told to replication."""

    version: int
    command: FetchPolicy | None = None


@dataclass(frozen=True, slots=True)
class PolicyFetchFailed:
    """No policy came of `command`: `refused` when the policy itself was refused (bad
    signature, rollback, ...; `reason` says which), else the source failed."""

    command: FetchPolicy
    reason: str
    refused: bool = False


@dataclass(frozen=True, slots=True)
class BootPolicyChanged:
    """Told to the boot actor: answer with `policy` from now on (a new package's boot files,
    a new signed policy's MAC lists). `policy` is an `actors.boot.proxy_dhcp.ProxyPolicy`."""

    policy: ProxyPolicy


@dataclass(frozen=True, slots=True)
class ServePermission:
    """Told to the election actor: the signed policy lets this peer serve PXE (`allowed`) or
    not; a peer the policy excludes is never the responder, whatever it holds."""

    allowed: bool


Event = (
    MessageReceived
    | TimerFired
    | PeerDiscovered
    | PeerLost
    | SendFailed
    | MemberChanged
    | LeadershipChanged
    | DhcpPacketReceived
    | ManifestAccepted
    | ChunksHeld
    | ChunkStored
    | ChunkRefused
    | ChunkFetchFailed
    | PackageComplete
    | WanSourcesChanged
    | EligibilityChanged
    | CapabilitiesChanged
    | ManifestFetched
    | ManifestFetchFailed
    | SeedOffered
    | PolicyInstalled
    | PolicyFetchFailed
    | BootPolicyChanged
    | ServePermission
)


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Seal `message` in an authenticated envelope and send it to `address`."""

    address: Address
    message: Message


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Fire `TimerFired(name)` at the absolute host time `deadline_s` (re-arms if armed)."""

    name: str
    deadline_s: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Disarm the timer `name`; a fire already queued is discarded by the host."""

    name: str


@dataclass(frozen=True, slots=True)
class Tell:
    """Deliver `event` to the actor `target` of the same peer."""

    target: ActorName
    event: Event


class LogLevel(StrEnum):
    """Severity of a `Log` command."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Log:
    """Write one structured log line."""

    level: LogLevel
    text: str
    fields: tuple[tuple[str, str | int | float], ...] = ()


@dataclass(frozen=True, slots=True)
class CountMetric:
    """Add `amount` to the counter `name` (for example `dropped.replayed`)."""

    name: str
    amount: int = 1


@dataclass(frozen=True, slots=True)
class SendDhcpReply:
    """Send `payload` from `source` (port 67 or 4011) to `target` (may be a broadcast)."""

    payload: bytes
    source: Address
    target: Address


@dataclass(frozen=True, slots=True)
class FetchChunk:
    """Copy chunk `chunk_index` of file `file_index` (`path`) of `package_id` from `source`.

    The host transfers it (TCP, or a modelled transfer in the simulator), has the store
    verify and write it, and answers with `ChunkStored`, `ChunkRefused` or
    `ChunkFetchFailed` carrying this command. `source` is a peer's message address (its
    chunk service listens on the same host and port) or, when `wan` is true, a WAN source
    from `WanSourcesChanged`.
    """

    source: Address
    package_id: str
    file_index: int
    chunk_index: int
    path: str
    size_bytes: int
    wan: bool


@dataclass(frozen=True, slots=True)
class FetchManifest:
    """Ask the chunk service at `source` for the signed manifest of `package_id` (empty: its
    newest complete package), have the store verify and stage it, and answer with
    `ManifestFetched` or `ManifestFetchFailed`. `wan`: the source is a WAN source; `seed`:
    a publisher's seed (`SeedOffered`)."""

    source: Address
    package_id: str = ""
    wan: bool = False
    seed: bool = False


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Ask the chunk service at `source` for its signed policy (at least `version`), have
    the host verify, store and apply it, and answer with `PolicyInstalled` or
    `PolicyFetchFailed`."""

    source: Address
    version: int = 0


Command = (
    SendMessage
    | StartTimer
    | CancelTimer
    | Tell
    | Log
    | CountMetric
    | SendDhcpReply
    | FetchChunk
    | FetchManifest
    | FetchPolicy
)


# --------------------------------------------------------------------------- the actor shape


class Actor(Protocol):
    """What a host needs from an actor: a name, `start` and `handle`."""

    NAME: ClassVar[ActorName]

    def start(self, now_s: float) -> list[Command]:
        """Begin work at host time `now_s`; return the first commands (usually timers)."""
        ...

    def handle(self, event: Event, now_s: float) -> list[Command]:
        """React to `event` at host time `now_s`; never raises for remote input."""
        ...


@dataclass(slots=True)
class Counters:
    """Named counters, kept in insertion order so reports are deterministic."""

    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, amount: int = 1) -> None:
        """Add `amount` to counter `name`."""
        self.values[name] = self.values.get(name, 0) + amount

    def get(self, name: str) -> int:
        """The value of counter `name` (0 when never counted)."""
        return self.values.get(name, 0)
