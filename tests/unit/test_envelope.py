"""The authenticated envelope: HMAC over the header, epochs, and the anti-replay window."""

from __future__ import annotations

import hmac
import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, multiple, rule

from actors import codec, envelope
from actors.core import NODE_ID_BYTES_MAX
from actors.envelope import REPLAY_WINDOW, WireSecurity
from actors.errors import AuthenticationError, DecodeError
from actors.messages import Gossip, MemberUpdate, Nack, Ping

KEY = b"cluster-key-0123456789abcdef"
OTHER_KEY = b"another-key-0123456789abcdef"
PING = Ping(seq=7, target="n2")


def pair(epoch: int = 1) -> tuple[WireSecurity, WireSecurity]:
    """A sender "n1" and a receiver "n2" sharing the cluster key."""
    return WireSecurity("n1", KEY, epoch), WireSecurity("n2", KEY, 0)


def pack(value: object) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def authentic(header_fields: object, key: bytes = KEY) -> bytes:
    """An envelope around any header value, with a valid MAC: tests what comes after the MAC."""
    header = pack(header_fields)
    return pack([header, hmac.digest(key, header, "sha256")])


def refusal(receiver: WireSecurity, data: bytes) -> str | None:
    """None if `receiver` accepts `data`, else the `AuthenticationError` reason."""
    try:
        receiver.open(data)
    except AuthenticationError as error:
        return error.reason
    return None


# --------------------------------------------------------------------------- authentication


def test_seal_open_round_trip() -> None:
    """What one peer seals, another peer with the same key opens to sender and message."""
    sender, receiver = pair()
    assert receiver.open(sender.seal(PING)) == ("n1", PING)
    update = MemberUpdate(
        node_id="n3", incarnation=1, state="alive", site="s", subnet="10.0.0.0/24", host="h", port=1
    )
    gossip = Gossip(updates=(update,) * 3)
    assert receiver.open(sender.seal(gossip)) == ("n1", gossip)


def test_wrong_key_is_refused_as_bad_mac() -> None:
    """A peer without the cluster key can neither speak nor be heard."""
    outsider = WireSecurity("n1", OTHER_KEY, 1)
    _, receiver = pair()
    with pytest.raises(AuthenticationError) as raised:
        receiver.open(outsider.seal(PING))
    assert raised.value.reason == "bad_mac"


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_any_tampered_byte_is_refused(mask: int) -> None:
    """Flipping bits of any single byte of an envelope makes it fail to open."""
    sender, receiver = pair()
    sealed = sender.seal(Ping(seq=7, target="n2"))
    for index in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[index] ^= mask
        with pytest.raises((DecodeError, AuthenticationError)):
            receiver.open(bytes(tampered))
    assert receiver.open(sealed) == ("n1", Ping(seq=7, target="n2"))  # the original still opens


def test_rewritten_header_under_the_old_mac_is_refused() -> None:
    """A well-formed header with another sender, counter or body does not carry the old MAC."""
    sender, receiver = pair()
    header, mac = msgpack.unpackb(sender.seal(PING))
    version, sender_id, epoch, counter, body = msgpack.unpackb(header)
    other_body = codec.encode(Ping(seq=8, target="n2"))
    for fields in (
        [version, "n9", epoch, counter, body],
        [version, sender_id, epoch + 1, counter, body],
        [version, sender_id, epoch, counter + 1, body],
        [version, sender_id, epoch, counter, other_body],
    ):
        with pytest.raises(AuthenticationError) as raised:
            receiver.open(pack([pack(fields), mac]))
        assert raised.value.reason == "bad_mac"


def test_own_messages_are_refused() -> None:
    """A peer drops its own envelopes (looped back by multicast or a restarted twin)."""
    sender, _ = pair()
    sealed = sender.seal(PING)
    for me in (sender, WireSecurity("n1", KEY, 2)):
        with pytest.raises(AuthenticationError) as raised:
            me.open(sealed)
        assert raised.value.reason == "own_message"


MALFORMED_HEADERS: dict[str, object] = {
    "four fields": [codec.WIRE_VERSION, "n1", 1, 0],
    "wire version 2": [2, "n1", 1, 0, codec.encode(PING)],
    "wire version True": [True, "n1", 1, 0, codec.encode(PING)],
    "wire version 1.0": [1.0, "n1", 1, 0, codec.encode(PING)],
    "empty sender": [codec.WIRE_VERSION, "", 1, 0, codec.encode(PING)],
    "bytes sender": [codec.WIRE_VERSION, b"n1", 1, 0, codec.encode(PING)],
    "sender too long": [codec.WIRE_VERSION, "x" * 65, 1, 0, codec.encode(PING)],
    "sender too many bytes": [codec.WIRE_VERSION, "é" * 33, 1, 0, codec.encode(PING)],
    "negative epoch": [codec.WIRE_VERSION, "n1", -1, 0, codec.encode(PING)],
    "bool counter": [codec.WIRE_VERSION, "n1", 1, True, codec.encode(PING)],
    "float epoch": [codec.WIRE_VERSION, "n1", 1.5, 0, codec.encode(PING)],
    "str body": [codec.WIRE_VERSION, "n1", 1, 0, "body"],
    "garbage body": [codec.WIRE_VERSION, "n1", 1, 0, b"\xc1"],
    "unknown tag": [codec.WIRE_VERSION, "n1", 1, 0, pack([1, "nope", {}])],
    "map header": {"sender": "n1"},
}


@pytest.mark.parametrize("fields", MALFORMED_HEADERS.values(), ids=list(MALFORMED_HEADERS))
def test_authentic_but_malformed_header_raises_decode_error(fields: object) -> None:
    """A MAC proves who sent it, not that it is well formed: the header is still checked."""
    assert len("é" * 33) <= NODE_ID_BYTES_MAX < len(("é" * 33).encode())
    _, receiver = pair()
    with pytest.raises(DecodeError):
        receiver.open(authentic(fields))


def test_oversize_envelope_is_refused_before_the_mac() -> None:
    """Input over one datagram is refused without hashing it."""
    _, receiver = pair()
    with pytest.raises(DecodeError, match="oversize"):
        receiver.open(authentic([1, "n1", 1, 0, b"x" * codec.MAX_DATAGRAM_BYTES]))


def test_seal_refuses_a_body_that_cannot_fit_one_datagram() -> None:
    """Sealing a too-big message is a local bug, caught by an assertion, not sent truncated."""
    sender, _ = pair()
    update = MemberUpdate(
        node_id="n3", incarnation=1, state="alive", site="s", subnet="10.0.0.0/24", host="h", port=1
    )
    with pytest.raises(AssertionError, match="too big"):
        sender.seal(Gossip(updates=(update,) * 60))


# --------------------------------------------------------------------------- replay window


def test_replayed_envelope_is_refused() -> None:
    """Each envelope opens once; a captured copy delivered again is refused."""
    sender, receiver = pair()
    sealed = sender.seal(PING)
    receiver.open(sealed)
    assert refusal(receiver, sealed) == "replayed"


def test_reordered_delivery_within_the_window_is_accepted_once_each() -> None:
    """Out-of-order delivery inside the window is fine; a second copy of any is not."""
    sender, receiver = pair()
    sealed = [sender.seal(Nack(seq=index)) for index in range(REPLAY_WINDOW)]
    order = list(range(REPLAY_WINDOW))
    random.Random("reorder").shuffle(order)
    for index in order:
        assert receiver.open(sealed[index]) == ("n1", Nack(seq=index))
    for index in order:
        assert refusal(receiver, sealed[index]) == "replayed"


def test_counter_below_the_window_is_refused() -> None:
    """Counters more than REPLAY_WINDOW - 1 behind the highest are refused, even if unseen."""
    sender, receiver = pair()
    sealed = [sender.seal(Nack(seq=index)) for index in range(REPLAY_WINDOW + 2)]
    highest = REPLAY_WINDOW + 1
    receiver.open(sealed[highest])
    assert refusal(receiver, sealed[highest - REPLAY_WINDOW]) == "replayed"  # just below
    assert refusal(receiver, sealed[0]) == "replayed"
    assert refusal(receiver, sealed[highest - REPLAY_WINDOW + 1]) is None  # oldest inside


def test_counter_jump_far_past_the_window_is_cheap_and_resets_it() -> None:
    """A counter far ahead (up to 2**64 - 1) is accepted without growing the bitmap."""
    sender, receiver = pair()
    receiver.open(sender.seal(PING))
    far = 2**64 - 1
    assert refusal(receiver, authentic([1, "n1", 1, far, codec.encode(PING)])) is None
    assert refusal(receiver, authentic([1, "n1", 1, far, codec.encode(PING)])) == "replayed"
    assert refusal(receiver, authentic([1, "n1", 1, far - 1, codec.encode(PING)])) is None
    assert refusal(receiver, authentic([1, "n1", 1, 1, codec.encode(PING)])) == "replayed"


def test_older_epoch_is_refused_newer_epoch_resets_the_window() -> None:
    """After a sender restart (newer epoch) it counts from 0 again; the old epoch is dead."""
    old_sender, receiver = pair(epoch=5)
    old = [old_sender.seal(Nack(seq=index)) for index in range(3)]
    receiver.open(old[2])
    restarted = WireSecurity("n1", KEY, 6)
    fresh = [restarted.seal(Nack(seq=index)) for index in range(3)]
    assert refusal(receiver, fresh[0]) is None  # counter 0 < 2, but a new epoch
    assert refusal(receiver, old[0]) == "stale_epoch"  # unseen, but from the old epoch
    assert refusal(receiver, fresh[2]) is None
    assert refusal(receiver, fresh[1]) is None
    assert refusal(receiver, fresh[0]) == "replayed"
    older = WireSecurity("n1", KEY, 4)
    assert refusal(receiver, older.seal(PING)) == "stale_epoch"


def test_senders_have_independent_windows() -> None:
    """One sender's counters do not affect another's."""
    receiver = WireSecurity("rx", KEY, 0)
    first, second = WireSecurity("a", KEY, 1), WireSecurity("b", KEY, 1)
    for _ in range(REPLAY_WINDOW + 1):
        receiver.open(first.seal(PING))
    assert receiver.open(second.seal(PING)) == ("b", PING)


def test_forget_drops_replay_state_and_bound_evicts_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay state is bounded: `forget` and the tracked-senders cap drop a sender's window."""
    receiver = WireSecurity("rx", KEY, 0)
    senders = [WireSecurity(name, KEY, 1) for name in ("a", "b", "c", "d")]
    sealed = [sender.seal(PING) for sender in senders]
    monkeypatch.setattr(envelope, "TRACKED_SENDERS_MAX", 3)
    for data in sealed:
        receiver.open(data)
    assert refusal(receiver, sealed[0]) is None  # "a" was evicted: its window is new
    assert refusal(receiver, sealed[3]) == "replayed"
    receiver.forget("d")
    assert refusal(receiver, sealed[3]) is None


@settings(max_examples=60)
@given(
    count=st.integers(min_value=1, max_value=2 * REPLAY_WINDOW + 10),
    data=st.data(),
)
def test_any_delivery_order_accepts_each_envelope_at_most_once(
    count: int, data: st.DataObject
) -> None:
    """In any order, with duplicates, each envelope opens at most once, never below the window."""
    sender, receiver = pair()
    sealed = [sender.seal(Nack(seq=index)) for index in range(count)]
    deliveries = data.draw(st.lists(st.integers(min_value=0, max_value=count - 1), max_size=300))
    accepted: set[int] = set()
    highest = -1
    for index in deliveries:
        verdict = refusal(receiver, sealed[index])
        fresh = index not in accepted and index > highest - REPLAY_WINDOW
        assert (verdict is None) == fresh, (index, highest, verdict)
        if verdict is None:
            accepted.add(index)
            highest = max(highest, index)
        else:
            assert verdict == "replayed"


class ReplayWindowMachine(RuleBasedStateMachine):
    """One receiver; one sender that seals, restarts with newer epochs; any delivery order.

    The model keeps the accepted counters of the current epoch as a plain set, so it states
    the rule independently of the bitmap: accept a newer epoch, refuse an older one, refuse a
    counter seen before or at least REPLAY_WINDOW below the highest accepted one.
    """

    envelopes: Bundle[tuple[int, int, bytes]] = Bundle("envelopes")

    def __init__(self) -> None:
        super().__init__()
        self.receiver = WireSecurity("rx", KEY, 0)
        self.epoch = 1
        self.sender = WireSecurity("tx", KEY, self.epoch)
        self.counter = 0
        self.window_epoch = -1
        self.window_highest = -1
        self.window_seen: set[int] = set()
        self.ever_accepted: set[tuple[int, int]] = set()

    @rule(target=envelopes, count=st.integers(min_value=1, max_value=REPLAY_WINDOW + 8))
    def seal(self, count: int) -> Any:
        batch = []
        for _ in range(count):
            batch.append((self.epoch, self.counter, self.sender.seal(Nack(seq=self.counter))))
            self.counter += 1
        return multiple(*batch)

    @rule(jump=st.integers(min_value=1, max_value=3))
    def restart_sender(self, jump: int) -> None:
        self.epoch += jump
        self.sender = WireSecurity("tx", KEY, self.epoch)
        self.counter = 0

    @rule(item=envelopes)
    def deliver(self, item: tuple[int, int, bytes]) -> None:
        epoch, counter, data = item
        expected = self._model_verdict(epoch, counter)
        verdict = refusal(self.receiver, data)
        assert verdict == expected, (epoch, counter)
        if verdict is not None:
            return
        assert (epoch, counter) not in self.ever_accepted
        self.ever_accepted.add((epoch, counter))

    def _model_verdict(self, epoch: int, counter: int) -> str | None:
        if epoch > self.window_epoch:
            self.window_epoch, self.window_highest, self.window_seen = epoch, counter, {counter}
            return None
        if epoch < self.window_epoch:
            return "stale_epoch"
        if counter in self.window_seen or counter <= self.window_highest - REPLAY_WINDOW:
            return "replayed"
        self.window_seen.add(counter)
        self.window_highest = max(self.window_highest, counter)
        return None


ReplayWindowMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40)
test_replay_window_state_machine = ReplayWindowMachine.TestCase


# --------------------------------------------------------------------------- garbage


@given(data=st.binary(max_size=2000))
def test_garbage_bytes_raise_only_decode_or_authentication_error(data: bytes) -> None:
    """Random bytes never open and never raise anything but the two expected errors."""
    _, receiver = pair()
    with pytest.raises((DecodeError, AuthenticationError)):
        receiver.open(data)


header_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=70)
    | st.binary(max_size=70),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


@given(
    version=st.just(codec.WIRE_VERSION) | header_values,
    sender=st.sampled_from(["n1", "n2"]) | header_values,
    epoch=st.integers(min_value=0, max_value=3) | header_values,
    counter=st.integers(min_value=0, max_value=100) | header_values,
    body=st.sampled_from([codec.encode(PING), b""]) | st.binary(max_size=50) | header_values,
)
def test_authentic_structured_garbage_raises_only_expected_errors(
    version: object, sender: object, epoch: object, counter: object, body: object
) -> None:
    """Correctly MAC'd headers with arbitrary fields open or raise DecodeError/Authentication."""
    _, receiver = pair()
    data = authentic([version, sender, epoch, counter, body])
    try:
        source, message = receiver.open(data)
    except (DecodeError, AuthenticationError):
        return
    assert source == sender != "n2"
    assert codec.decode(codec.encode(message)) == message
