"""Wire messages exchanged between peers: frozen dataclasses, one `TAG` each.

Rules (see `actors.codec` for the framing):
- fields use msgpack-native types only: int, float, str, bytes, bool, None, tuples of those,
  and the nested records declared here (`MemberUpdate`), which travel as arrays;
- a `TAG` is snake_case and never reused; a new message is a new tag (compatible);
- new fields get defaults so older peers' messages still decode.

Membership messages follow SWIM (Das, Gupta, Motivala, DSN 2002) with the Lifeguard
extensions (Dadgar et al., 2017, arXiv 1707.00788): `Ping`/`Ack` for direct probes,
`PingReq` for indirect probes through k helpers, `Nack` from a helper whose target stayed
silent (evidence that the helper itself is healthy), `Gossip` for disseminating updates, and
`Sync` for the full-state exchange when a peer joins through a seed or an mDNS sighting.

Replication advertises what a peer holds with `Have`, a segment of its BitTorrent-style
bitfield (BEP 3 `bitfield`, high bit first; `actors.bitfield`), and asks a peer's chunk
service for one chunk with `ChunkRequest` (over TCP, not UDP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every wire message; subclasses set a unique `TAG`."""

    TAG: ClassVar[str] = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberUpdate:
    """One member's state as gossiped: who, how recent (incarnation), what we believe."""

    node_id: str
    incarnation: int
    state: str
    site: str
    subnet: str
    host: str
    port: int
    weight: int = 0
    capabilities: tuple[str, ...] = ()
    reporter: str = ""
    """Who declared a suspicion (Lifeguard counts independent confirmations); else empty."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Message):
    """Direct probe: answer with `Ack(seq)`; carries piggybacked updates."""

    TAG: ClassVar[str] = "ping"
    seq: int
    target: str
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    """Answer to a `Ping` (or relayed answer to a `PingReq`) with the same `seq`."""

    TAG: ClassVar[str] = "ack"
    seq: int
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PingReq(Message):
    """Ask the receiver to probe `target` on our behalf and relay its `Ack(seq)`."""

    TAG: ClassVar[str] = "ping_req"
    seq: int
    target: str
    target_host: str
    target_port: int
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Nack(Message):
    """A helper's report that `target` of `PingReq(seq)` did not answer (Lifeguard)."""

    TAG: ClassVar[str] = "nack"
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Gossip(Message):
    """Membership updates pushed to a few random members every gossip interval."""

    TAG: ClassVar[str] = "gossip"
    updates: tuple[MemberUpdate, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sync(Message):
    """Full-state exchange (push-pull): the sender's view; `reply` asks for ours back."""

    TAG: ClassVar[str] = "sync"
    members: tuple[MemberUpdate, ...]
    reply: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease(Message):
    """Leadership of `scope` is held by `leader` with ballot `(term, leader)`; a heartbeat."""

    TAG: ClassVar[str] = "lease"
    scope: str
    term: int
    leader: str
    interval_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim(Message):
    """`candidate` intends to lead `scope` with ballot `(term, candidate)`."""

    TAG: ClassVar[str] = "claim"
    scope: str
    term: int
    candidate: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Resign(Message):
    """The leader of `scope` with ballot `(term, leader)` stepped down cleanly."""

    TAG: ClassVar[str] = "resign"
    scope: str
    term: int
    leader: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Have(Message):
    """Which chunks of `package_id` the sender holds, from chunk `first_chunk` on.

    `bitmap` is the segment of the sender's bitfield that starts at `first_chunk` (a
    multiple of `actors.bitfield.SEGMENT_CHUNKS`), at most `SEGMENT_BYTES` bytes, trailing
    zero bytes left out. `complete`: the sender holds the whole package verified (the bitmap
    is then empty). `reply`: the sender asks for the receiver's own `Have` in return.
    Checked by the replication actor, not here: a peer's values are counted and dropped.
    """

    TAG: ClassVar[str] = "have"
    package_id: str
    version: tuple[int, ...]
    site: str
    chunk_count: int
    first_chunk: int = 0
    bitmap: bytes = b""
    complete: bool = False
    reply: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkRequest(Message):
    """Ask a chunk service (`transport.chunk_service`, over TCP) for one chunk of a package.

    Never sent over UDP: it travels sealed in the envelope inside one TCP frame, so only
    cluster members are served; hosts route a stray one to replication, which drops it.
    """

    TAG: ClassVar[str] = "chunk_request"
    package_id: str
    path: str
    chunk_index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestRequest(Message):
    """Ask a chunk service (over TCP) for the signed manifest of `package_id`; an empty id
    asks for its newest complete package. Sealed like `ChunkRequest`: members only."""

    TAG: ClassVar[str] = "manifest_request"
    package_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedOffer(Message):
    """`peerpxe publish` tells an agent's chunk service (over TCP) that it serves a package
    from the chunk service on `port` of the connection's source address: the agent takes
    the manifest and the chunks from there, and the package spreads from it."""

    TAG: ClassVar[str] = "seed_offer"
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyVersion(Message):
    """The version of the signed policy the sender holds (0: none), sent by replication with
    its advertisements; a peer holding an older one fetches the newer over TCP."""

    TAG: ClassVar[str] = "policy_version"
    version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRequest(Message):
    """Ask a chunk service (over TCP) for the signed policy it holds. Sealed: members only."""

    TAG: ClassVar[str] = "policy_request"


MESSAGE_TYPES: tuple[type[Message], ...] = (
    Ping,
    Ack,
    PingReq,
    Nack,
    Gossip,
    Sync,
    Lease,
    Claim,
    Resign,
    Have,
    ChunkRequest,
    ManifestRequest,
    SeedOffer,
    PolicyVersion,
    PolicyRequest,
)
"""Every message class the codec accepts; a tag may appear only once."""

RECORD_TYPES: tuple[type, ...] = (MemberUpdate,)
"""Nested records that may appear inside message fields."""
