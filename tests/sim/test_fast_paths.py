"""The simulator's hot paths in actors/ against slow reference models of the same contract.

They live with the sim tier because they exist for its speed: the broadcast queue against
"sort by sends, then by push order"; the envelope's hand-built framing against msgpack's own
packing; the codec's record memo against inputs that compare equal but are not valid alike.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import codec
from actors.envelope import WireSecurity
from actors.errors import DecodeError
from actors.gossip import BroadcastQueue
from actors.messages import Gossip, MemberUpdate, Nack

pytestmark = pytest.mark.sim

KEY = b"fast-path-key-0123456789"


def _update(node: int, incarnation: int) -> MemberUpdate:
    return MemberUpdate(
        node_id=f"n{node}", incarnation=incarnation, state="alive", site="s", subnet="x",
        host="h", port=1,
    )  # fmt: skip


@dataclass
class _Entry:
    update: MemberUpdate
    sent: int = 0


class _SortedQueue:
    """The queue's contract written the slow way: sort everything on every take."""

    def __init__(self) -> None:
        self.pending: dict[str, _Entry] = {}

    def push(self, update: MemberUpdate) -> None:
        self.pending.pop(update.node_id, None)
        self.pending[update.node_id] = _Entry(update)

    def take(self, count_max: int, limit: int) -> tuple[MemberUpdate, ...]:
        chosen = sorted(self.pending.values(), key=lambda entry: entry.sent)[: max(count_max, 0)]
        for entry in chosen:
            entry.sent += 1
            if entry.sent >= limit:
                del self.pending[entry.update.node_id]
        return tuple(entry.update for entry in chosen)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 12).map(str)),
        st.tuples(st.just("take"), st.integers(0, 8).map(str), st.integers(1, 6).map(str)),
    ),
    max_size=120,
)


@settings(max_examples=80)
@given(steps=operations)
def test_broadcast_queue_takes_exactly_what_sorting_would(steps: list[tuple[str, ...]]) -> None:
    """Least-sent first, oldest push first among equals, newest replaces, bounded sends."""
    queue, model = BroadcastQueue(), _SortedQueue()
    for index, step in enumerate(steps):
        if step[0] == "push":
            update = _update(int(step[1]), index)
            queue.push(update)
            model.push(update)
        else:
            count_max, limit = int(step[1]), int(step[2])
            assert queue.take(count_max, limit) == model.take(count_max, limit)
        assert len(queue) == len(model.pending)


@settings(max_examples=80)
@given(
    sender=st.text(min_size=1, max_size=20),
    epoch=st.integers(0, 2**64 - 1),
    counter=st.integers(0, 2**64 - 1),
    records=st.integers(0, 7),
    seq=st.integers(0, 2**64 - 1),
)
def test_sealed_bytes_are_msgpacks_own_layout(
    sender: str, epoch: int, counter: int, records: int, seq: int
) -> None:
    """`seal` writes the bytes `msgpack.packb` would for [[version, sender, epoch, ...], mac]."""
    security = WireSecurity(sender, KEY, epoch)
    security._next_counter = counter
    message = Gossip(updates=(_update(1, seq),) * records) if records else Nack(seq=seq)
    body = codec.encode(message)
    header = msgpack.packb([codec.WIRE_VERSION, sender, epoch, counter, body], use_bin_type=True)
    expected = msgpack.packb([header, hmac.digest(KEY, header, "sha256")], use_bin_type=True)
    sealed = security.seal(message)
    assert sealed == expected
    if sender != "rx":
        assert WireSecurity("rx", KEY, 0).open(sealed) == (sender, message)


def test_envelope_in_a_non_canonical_encoding_still_opens() -> None:
    """A header sent as bin 16 although it would fit bin 8 takes the strict general path."""
    sender, receiver = WireSecurity("n1", KEY, 1), WireSecurity("n2", KEY, 0)
    header, mac = msgpack.unpackb(sender.seal(Nack(seq=3)))
    assert len(header) < 256
    data = b"\x92\xc5" + len(header).to_bytes(2, "big") + header + b"\xc4\x20" + mac
    assert receiver.open(data) == ("n1", Nack(seq=3))


def _gossip_with(record: list[object]) -> bytes:
    data: bytes = msgpack.packb([1, "gossip", {"updates": [record]}], use_bin_type=True)
    return data


def test_record_memo_never_confuses_equal_values_of_other_types() -> None:
    """A remembered record is not handed out for `True`/`1.0` where an int was valid."""
    valid = ["n1", 1, "alive", "s", "x", "h", 1, 0, ["cap"], ""]
    first = codec.decode(_gossip_with(valid))
    assert codec.decode(_gossip_with(valid)) == first
    for position, impostor in ((1, True), (1, 1.0), (6, True), (8, [b"cap"])):
        bad = list(valid)
        bad[position] = impostor
        with pytest.raises(DecodeError):
            codec.decode(_gossip_with(bad))


def test_record_memo_refuses_an_unhashable_item_as_a_decode_error() -> None:
    """A map inside a record's string tuple cannot be looked up, and is refused as malformed."""
    record = ["n1", 1, "alive", "s", "x", "h", 1, 0, [{"a": 1}], ""]
    with pytest.raises(DecodeError):
        codec.decode(_gossip_with(record))
