"""Which actor of a peer receives each wire message type: one table for every host.

Both hosts (`transport/` and `sim/`) deliver an authenticated message to the actor named
here. A new message type must be added, or hosts drop it as `unrouted`; the unit test
`tests/unit/test_routing.py` checks that every type in `MESSAGE_TYPES` has a route.
"""

from __future__ import annotations

from typing import Final

from actors.core import ActorName
from actors.messages import (
    Ack,
    ChunkRequest,
    Claim,
    Gossip,
    Have,
    Lease,
    ManifestRequest,
    Message,
    Nack,
    Ping,
    PingReq,
    PolicyRequest,
    PolicyVersion,
    Resign,
    SeedOffer,
    Sync,
)

MESSAGE_ROUTES: Final[dict[type[Message], ActorName]] = {
    Ping: ActorName.DISCOVERY,
    Ack: ActorName.DISCOVERY,
    PingReq: ActorName.DISCOVERY,
    Nack: ActorName.DISCOVERY,
    Gossip: ActorName.DISCOVERY,
    Sync: ActorName.DISCOVERY,
    Lease: ActorName.ELECTION,
    Claim: ActorName.ELECTION,
    Resign: ActorName.ELECTION,
    Have: ActorName.REPLICATION,
    ChunkRequest: ActorName.REPLICATION,  # TCP only: over UDP it is dropped as unexpected
    ManifestRequest: ActorName.REPLICATION,  # TCP only, likewise
    SeedOffer: ActorName.REPLICATION,  # TCP only, likewise
    PolicyVersion: ActorName.REPLICATION,
    PolicyRequest: ActorName.REPLICATION,  # TCP only, likewise
}
