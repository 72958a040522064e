"""The wire format of peer messages: round trip, strict decoding, pinned bytes.

Strategies are derived from the dataclass annotations, so a message type added to
`MESSAGE_TYPES` (or a field added to one) is covered without touching this file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from actors import codec
from actors.errors import DecodeError
from actors.messages import (
    MESSAGE_TYPES,
    RECORD_TYPES,
    Ack,
    Gossip,
    MemberUpdate,
    Message,
    Nack,
    Ping,
    PingReq,
    Sync,
)

# Sizes small enough that any generated message fits one datagram: the longest message is a
# few records of ~10 fields; 6 chars of up to 4 UTF-8 bytes and 3 items per array keep the
# worst case well under `MAX_DATAGRAM_BYTES`.
TEXT_CHARS_MAX = 6
ARRAY_ITEMS_MAX = 3

INT_MIN = -(2**63)  # msgpack int64 ... uint64
INT_MAX = 2**64 - 1


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    """A strategy of valid values for one field annotation (the codec's supported types)."""
    if annotation is int:
        return st.integers(min_value=INT_MIN, max_value=INT_MAX)
    if annotation is float:
        return st.floats(allow_nan=False)
    if annotation is str:
        return st.text(max_size=TEXT_CHARS_MAX)
    if annotation is bytes:
        return st.binary(max_size=TEXT_CHARS_MAX)
    if annotation is bool:
        return st.booleans()
    if annotation in RECORD_TYPES:
        return instances_of(annotation)
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is tuple and len(arguments) == 2 and arguments[1] is Ellipsis:
        items = st.lists(strategy_for(arguments[0]), max_size=ARRAY_ITEMS_MAX)
        return items.map(tuple)
    if origin in (typing.Union, types.UnionType) and type(None) in arguments:
        (inner,) = [argument for argument in arguments if argument is not type(None)]
        return st.none() | strategy_for(inner)
    raise AssertionError(f"test has no strategy for {annotation!r}: extend strategy_for")


def instances_of(cls: type) -> st.SearchStrategy[Any]:
    """Instances of a message or record class with every field drawn from its annotation."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls) if f.init}
    return st.builds(cls, **fields)


any_message: st.SearchStrategy[Message] = st.one_of([instances_of(cls) for cls in MESSAGE_TYPES])

UPDATE = MemberUpdate(
    node_id="n3",
    incarnation=4,
    state="alive",
    site="s1",
    subnet="10.0.0.0/24",
    host="10.0.0.3",
    port=7946,
    weight=2,
    capabilities=("pxe", "tftp"),
)


def wire_fields(message: Message) -> dict[str, Any]:
    """The `{field: value}` map of an encoded message, as a peer would see it."""
    frame = msgpack.unpackb(codec.encode(message), raw=False, use_list=True)
    fields: dict[str, Any] = frame[2]
    return fields


def pack(value: object) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def decode_or_decode_error(data: bytes) -> Message | None:
    """Decode `data`; a `DecodeError` is fine, any other exception fails the test."""
    try:
        return codec.decode(data)
    except DecodeError:
        return None


def assert_re_encodes(message: Message) -> None:
    """What decode accepted is a valid message: it encodes, and decodes to the same bytes."""
    encoded = codec.encode(message)
    assert codec.encode(codec.decode(encoded, max_bytes=len(encoded))) == encoded


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda cls: cls.TAG)
@given(data=st.data())
def test_every_message_type_round_trips(cls: type[Message], data: st.DataObject) -> None:
    """decode(encode(m)) == m for every registered message type and any valid field values."""
    message = data.draw(instances_of(cls))
    encoded = codec.encode(message)
    assert len(encoded) <= codec.MAX_DATAGRAM_BYTES
    decoded = codec.decode(encoded)
    assert type(decoded) is cls
    assert decoded == message
    assert hash(decoded) == hash(message)
    assert codec.encode(decoded) == encoded


@given(message=any_message)
def test_encoding_is_deterministic_and_tagged(message: Message) -> None:
    """Equal messages encode to equal bytes, framed as [WIRE_VERSION, TAG, map]."""
    rebuilt = dataclasses.replace(message)
    assert codec.encode(rebuilt) == codec.encode(message)
    frame = msgpack.unpackb(codec.encode(message), raw=False)
    assert frame[:2] == [codec.WIRE_VERSION, message.TAG]
    assert list(frame[2]) == [f.name for f in dataclasses.fields(message)]


def test_every_message_type_has_a_unique_tag() -> None:
    """Tags identify message types on the wire, so each is set and none is reused."""
    tags = [cls.TAG for cls in MESSAGE_TYPES]
    assert all(tags)
    assert len(set(tags)) == len(tags)


def test_float_field_accepts_an_integer_on_the_wire() -> None:
    """A float field sent as a msgpack int (as other encoders do for 1.0) decodes as float."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class Probe:
        x: float

    spec = codec._compile(Probe)
    decoded = spec.build_from_map({"x": 3})
    assert isinstance(decoded, Probe)
    assert decoded == Probe(x=3.0)
    assert type(decoded.x) is float
    with pytest.raises(DecodeError):
        spec.build_from_map({"x": True})


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SlottedProbe:
    """A record with `__post_init__` validation, built by the codec's slot fast path."""

    port: int
    name: str = "x"

    def __post_init__(self) -> None:
        assert 0 < self.port < 65536, "port out of range"
        if not self.name:
            raise ValueError("empty name")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlainProbe:
    """The same without slots: the codec must construct it through `__init__`."""

    port: int
    name: str = "x"

    def __post_init__(self) -> None:
        assert 0 < self.port < 65536, "port out of range"
        if not self.name:
            raise ValueError("empty name")


@pytest.mark.parametrize("cls", [SlottedProbe, PlainProbe], ids=["slotted", "plain"])
def test_post_init_validation_failure_is_a_decode_error(cls: type) -> None:
    """A `__post_init__` that rejects a value makes decoding fail with DecodeError only."""
    spec = codec._compile(cls)
    assert (spec.slot_setters is not None) == (cls is SlottedProbe)
    assert spec.build_from_map({"port": 80}) == cls(port=80)
    assert spec.build_from_array((80, "y")) == cls(port=80, name="y")
    with pytest.raises(DecodeError, match="range"):
        spec.build_from_map({"port": 0})  # defaults omitted: keyword construction
    with pytest.raises(DecodeError, match="range"):
        spec.build_from_map({"port": 0, "name": "y"})  # all fields: fast path when slotted
    with pytest.raises(DecodeError, match="empty"):
        spec.build_from_array((80, ""))
    with pytest.raises(DecodeError, match="range"):
        spec.build_from_array((0,))


def test_huge_message_is_refused_by_decode_unless_the_cap_is_raised() -> None:
    """decode refuses input over its byte cap before unpacking, and honours a raised cap."""
    message = Gossip(updates=(UPDATE,) * 40)
    encoded = codec.encode(message)
    assert len(encoded) > codec.MAX_DATAGRAM_BYTES
    with pytest.raises(DecodeError, match="oversize"):
        codec.decode(encoded)
    assert codec.decode(encoded, max_bytes=len(encoded)) == message


# --------------------------------------------------------------------------- golden bytes

GOLDEN: list[tuple[Message, str]] = [
    (
        Ping(seq=7, target="n2", updates=(UPDATE,)),
        "9301a470696e6783a373657107a6746172676574a26e32a775706461746573919a"
        "a26e3304a5616c697665a27331ab31302e302e302e302f3234a831302e302e302e33"
        "cd1f0a0292a3707865a474667470a0",
    ),
    (Nack(seq=300), "9301a46e61636b81a3736571cd012c"),
    (Ack(seq=-1), "9301a361636b82a3736571ffa77570646174657390"),
    (Sync(members=(), reply=True), "9301a473796e6382a76d656d6265727390a57265706c79c3"),
    (
        PingReq(seq=2**40, target="n9", target_host="10.1.2.3", target_port=65535),
        "9301a870696e675f72657185a3736571cf0000010000000000a6746172676574a26e39"
        "ab7461726765745f686f7374a831302e312e322e33ab7461726765745f706f7274cdffff"
        "a77570646174657390",
    ),
]


@pytest.mark.parametrize(("message", "golden_hex"), GOLDEN, ids=[m.TAG for m, _ in GOLDEN])
def test_golden_bytes(message: Message, golden_hex: str) -> None:
    """The exact bytes are pinned: a framing or field-order change must be deliberate."""
    assert codec.encode(message).hex() == golden_hex
    assert codec.decode(bytes.fromhex(golden_hex)) == message


def test_message_map_may_omit_defaulted_fields() -> None:
    """An older peer that does not know a defaulted field yet still gets through."""
    data = pack([1, "ping", {"seq": 7, "target": "n2"}])
    assert codec.decode(data) == Ping(seq=7, target="n2")


def test_record_array_may_omit_trailing_defaulted_fields() -> None:
    """A record array from an older peer, without the newest defaulted fields, still decodes."""
    required = [f.name for f in dataclasses.fields(MemberUpdate) if f.name != "reporter"]
    short = [getattr(UPDATE, name) for name in required[:7]]  # up to `port`, the last required
    data = pack([1, "gossip", {"updates": [short]}])
    decoded = codec.decode(data)
    assert isinstance(decoded, Gossip)
    assert decoded.updates[0] == dataclasses.replace(UPDATE, weight=0, capabilities=())
    with pytest.raises(DecodeError, match="items"):
        codec.decode(pack([1, "gossip", {"updates": [short[:6]]}]))


# --------------------------------------------------------------------------- strict decoding


def ping_fields(**changes: object) -> dict[str, object]:
    fields = wire_fields(Ping(seq=7, target="n2", updates=(UPDATE,)))
    fields.update(changes)
    return fields


def update_items(**changes: object) -> list[object]:
    return [changes.get(f.name, getattr(UPDATE, f.name)) for f in dataclasses.fields(UPDATE)]


MALFORMED: dict[str, object] = {
    "not_an_array": {"seq": 1},
    "array_of_two": [1, "nack"],
    "array_of_four": [1, "nack", {"seq": 1}, None],
    "version_0": [0, "nack", {"seq": 1}],
    "version_2": [2, "nack", {"seq": 1}],
    "version_true": [True, "nack", {"seq": 1}],
    "version_float": [1.0, "nack", {"seq": 1}],
    "version_str": ["1", "nack", {"seq": 1}],
    "unknown_tag": [1, "no_such_message", {}],
    "tag_not_str": [1, 5, {"seq": 1}],
    "tag_bytes": [1, b"nack", {"seq": 1}],
    "fields_array": [1, "nack", [1]],
    "fields_none": [1, "nack", None],
    "unknown_field": [1, "nack", {"seq": 1, "extra": 2}],
    "bytes_key_field": [1, "nack", {b"seq": 1}],
    "missing_field": [1, "nack", {}],
    "bool_for_int": [1, "nack", {"seq": True}],
    "float_for_int": [1, "nack", {"seq": 1.0}],
    "str_for_int": [1, "nack", {"seq": "1"}],
    "none_for_int": [1, "nack", {"seq": None}],
    "int_for_str": [1, "ping", ping_fields(target=5)],
    "bytes_for_str": [1, "ping", ping_fields(target=b"n2")],
    "int_for_bool": [1, "sync", {"members": [], "reply": 1}],
    "map_for_array": [1, "ping", ping_fields(updates={"a": 1})],
    "str_for_array": [1, "ping", ping_fields(updates="abc")],
    "record_as_map": [1, "ping", ping_fields(updates=[{"node_id": "n3"}])],
    "record_too_long": [1, "ping", ping_fields(updates=[[*update_items(), "x"]])],
    "record_too_short": [1, "ping", ping_fields(updates=[update_items()[:3]])],
    "record_empty": [1, "ping", ping_fields(updates=[[]])],
    "record_wrong_type": [1, "ping", ping_fields(updates=[update_items(port="7946")])],
    "record_bool_for_int": [1, "ping", ping_fields(updates=[update_items(incarnation=False)])],
    "nested_array_in_str_tuple": [
        1,
        "ping",
        ping_fields(updates=[update_items(capabilities=[["pxe"]])]),
    ],
    "int_in_str_tuple": [1, "ping", ping_fields(updates=[update_items(capabilities=["a", 1])])],
    "nested_records": [1, "ping", ping_fields(updates=[[update_items()]])],
}


@pytest.mark.parametrize("frame", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_frame_raises_decode_error(frame: object) -> None:
    """Every wrong shape or type of a well-formed msgpack value is refused as DecodeError."""
    with pytest.raises(DecodeError):
        codec.decode(pack(frame))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used
        b"\x93\x01",  # truncated
        pack([1, "nack", {"seq": 1}]) + b"\x00",  # extra data
        b"\x91" * 100_000,  # nesting deeper than the unpacker's stack
        b"\xd6\xff\x00\x00\x00\x00",  # timestamp extension
        pack([1, "nack", {"seq": msgpack.ExtType(5, b"x")}]),
        b"\x93\x01\xa4nack\x81\x01\x01",  # int map key: strict_map_key
        b"\x93\x01\xa4nack\x81\xa3seq\xcf" + b"\xff" * 7,  # truncated uint64
        b"\xa4\xff\xfe\xfd\xfc",  # invalid UTF-8 in a str
    ],
    ids=[
        "empty",
        "reserved_byte",
        "truncated",
        "extra_data",
        "deep_nesting",
        "timestamp",
        "ext_type",
        "int_key",
        "truncated_int",
        "bad_utf8",
    ],
)
def test_malformed_msgpack_raises_decode_error(data: bytes) -> None:
    """Bytes that are not one msgpack value of the right shape are refused as DecodeError."""
    with pytest.raises(DecodeError):
        codec.decode(data, max_bytes=len(data))


def test_oversize_is_refused_before_unpacking() -> None:
    """Input over the cap is refused even when it would decode."""
    data = pack([1, "ping", ping_fields(target="x" * codec.MAX_DATAGRAM_BYTES)])
    with pytest.raises(DecodeError, match="oversize"):
        codec.decode(data)


@given(data=st.binary(max_size=2000))
def test_garbage_bytes_raise_only_decode_error(data: bytes) -> None:
    """Random bytes either decode to a message or raise DecodeError, nothing else."""
    decoded = decode_or_decode_error(data)
    assert decoded is None or isinstance(decoded, MESSAGE_TYPES)


msgpack_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
"""Any msgpack-encodable value of a small size."""

field_names = st.sampled_from(
    sorted({f.name for cls in (*MESSAGE_TYPES, *RECORD_TYPES) for f in dataclasses.fields(cls)})
)
tags = st.sampled_from([cls.TAG for cls in MESSAGE_TYPES]) | st.text(max_size=8)


@given(
    version=st.just(codec.WIRE_VERSION) | msgpack_values,
    tag=tags,
    fields=st.dictionaries(field_names | st.text(max_size=8), msgpack_values, max_size=6),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_structured_garbage_raises_only_decode_error(
    version: object, tag: str, fields: dict[str, object]
) -> None:
    """Frames with real tags and field names but arbitrary values raise only DecodeError."""
    decoded = decode_or_decode_error(pack([version, tag, fields]))
    if decoded is not None:
        assert tag == decoded.TAG
        assert_re_encodes(decoded)


@given(message=any_message, name=st.data(), value=msgpack_values)
def test_one_mutated_field_is_refused_or_valid(
    message: Message, name: st.DataObject, value: object
) -> None:
    """One field of a valid message replaced by any value: DecodeError or a valid message."""
    fields = wire_fields(message)
    assume(fields)
    field = name.draw(st.sampled_from(sorted(fields)))
    fields[field] = value
    decoded = decode_or_decode_error(pack([codec.WIRE_VERSION, message.TAG, fields]))
    if decoded is not None:
        assert type(decoded) is type(message)
        assert_re_encodes(decoded)


@given(message=any_message, data=st.data())
def test_truncated_or_extended_encoding_is_refused(message: Message, data: st.DataObject) -> None:
    """A valid encoding cut short or followed by more bytes is a DecodeError."""
    encoded = codec.encode(message)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(DecodeError):
        codec.decode(encoded[:cut])
    with pytest.raises(DecodeError):
        codec.decode(encoded + data.draw(st.binary(min_size=1, max_size=4)))
