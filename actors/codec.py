"""msgpack framing of peer messages: `[WIRE_VERSION, TAG, {field: value}]`.

The only module that touches msgpack for peer messages. `encode` trusts its input (it comes
from our own code); `decode` trusts nothing: every failure, whatever its cause (bad msgpack,
wrong shape, unknown tag, unknown or missing field, wrong type, oversize input) is raised as
`DecodeError` and nothing else escapes.

Field types are checked against the dataclass annotations, compiled once per class into a
tuple of checkers, because dataclasses do not check types themselves and a peer could send
`Ping(seq="x")`. Nested records (`MemberUpdate`) travel as arrays in field order: smaller
than maps and just as strict, since the arity is checked. A record array may omit trailing
fields that have defaults, so a record that gains a defaulted field at its end still decodes
from older peers (the same rule as a message map missing a defaulted field).

Speed: every simulated message crosses encode and decode, so both are compiled per class at
import. Encode reads the fields with one `operator.attrgetter` per class and lets msgpack's
`default` hook turn records into arrays. Decode first compares the exact wire types of all
fields at once (`msgpack` yields exact `int`, `str`, `bytes`, `bool`, `float`, `tuple`, so
`type(v) is int` also refuses `bool`), converts only the fields that need it (records,
tuples), and falls back to the per-field checkers, which name the offending field, only when
that comparison fails. Records whose fields make it safe (`_memoizable`) are remembered by
their wire array, up to `RECORD_MEMO_MAX` per class: gossip and `Sync` carry the same few
member records over and over, and a hit costs one type comparison and one dict lookup. The
records are frozen, so sharing one instance between messages changes nothing.
"""

from __future__ import annotations

import dataclasses
import inspect
import operator
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack

from actors.errors import DecodeError
from actors.messages import MESSAGE_TYPES, RECORD_TYPES, Message

WIRE_VERSION: Final = 1
"""Bumped only on an incompatible framing change; advertised in the mDNS TXT record."""

MAX_DATAGRAM_BYTES: Final = 1400
"""One message must fit one UDP datagram under a 1500-byte Ethernet MTU (memberlist uses 1400)."""

RECORD_MEMO_MAX: Final = 4096
"""Built records remembered per record class (decoded gossip repeats the same few a lot)."""

Checker = Callable[[Any], Any]
"""Validates one decoded value and returns it converted (arrays to tuples or records)."""

FieldGetter = Callable[[Any], tuple[Any, ...]]
"""Reads the field values of one dataclass instance, in field order."""


def encode(message: Message) -> bytes:
    """Pack `message` as `[WIRE_VERSION, TAG, fields]`."""
    encoder = _ENCODERS.get(type(message)) or _compile_encoder(type(message))
    names, getter = encoder
    fields = dict(zip(names, getter(message), strict=True))
    data: bytes = msgpack.packb(
        [WIRE_VERSION, message.TAG, fields], use_bin_type=True, default=_record_to_wire
    )
    return data


def decode(data: bytes, max_bytes: int = MAX_DATAGRAM_BYTES) -> Message:
    """Unpack and validate one message; raise `DecodeError` for anything malformed."""
    if len(data) > max_bytes:
        raise DecodeError(f"oversize: {len(data)} > {max_bytes} bytes")
    frame = _unpack(data)
    if type(frame) is not tuple or len(frame) != 3:
        raise DecodeError("frame is not [version, tag, fields]")
    version, tag, fields = frame
    if type(version) is not int or version != WIRE_VERSION:
        raise DecodeError(f"unsupported wire version {version!r}")
    spec = _MESSAGE_SPECS.get(tag) if type(tag) is str else None
    if spec is None:
        raise DecodeError(f"unknown tag {tag!r}")
    if type(fields) is not dict:
        raise DecodeError(f"{tag}: fields are not a map")
    return typing.cast("Message", spec.build_from_map(fields))


def unpack_plain(data: bytes) -> object:
    """Unpack msgpack with the codec's strict settings; raise `DecodeError` on any failure."""
    return _unpack(data)


def _unpack(data: bytes) -> object:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=False)
    except Exception as error:  # msgpack raises many types; all mean "malformed"
        raise DecodeError(f"bad msgpack: {type(error).__name__}") from error


# --------------------------------------------------------------------------- encoding


def _record_to_wire(value: object) -> tuple[Any, ...]:
    """msgpack `default` hook: a nested record becomes the array of its field values."""
    encoder = _RECORD_ENCODERS.get(type(value))
    if encoder is None:
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            raise TypeError(f"cannot encode {type(value).__name__}")
        encoder = _compile_encoder(type(value))
    return encoder[1](value)


def _compile_encoder(cls: type) -> tuple[tuple[str, ...], FieldGetter]:
    names = tuple(f.name for f in dataclasses.fields(cls))
    if len(names) == 1:
        single = operator.attrgetter(names[0])
        return names, lambda instance: (single(instance),)
    if not names:
        return names, lambda _instance: ()
    getter: FieldGetter = operator.attrgetter(*names)
    return names, getter


# --------------------------------------------------------------------------- type checking


class _NoFastPath:
    """Stands in the fast-path type tuple for a field msgpack never yields as one exact type."""


@dataclasses.dataclass(frozen=True, slots=True)
class _ClassSpec:
    """Compiled field checkers of one message or record class."""

    cls: type
    names: tuple[str, ...]
    checkers: tuple[Checker, ...]
    required: frozenset[str]
    wire_types: tuple[type, ...]
    """The exact type of each field's wire value when no conversion beyond `converters` is due."""
    converters: tuple[tuple[int, Checker], ...]
    """(index, checker) of the fields whose values still need checking after the type match."""
    items_min: int
    """Fewest array items a record accepts: up to and including its last required field."""
    slot_setters: tuple[Callable[[object, Any], None], ...] | None
    """Slot descriptors' setters in field order, when setting them is all `__init__` does."""
    post_init: Callable[[object], None] | None
    memo: dict[tuple[Any, ...], object] | None
    """Records already built, by their wire array, when equal arrays of the exact wire types
    can only mean equal values (see `_memoizable`); None for every other class."""

    def build_from_map(self, fields: dict[Any, Any]) -> object:
        try:
            items = tuple(map(fields.__getitem__, self.names))
        except KeyError:
            return self._build_partial_map(fields)
        if len(fields) != len(items):
            return self._build_partial_map(fields)  # raises: an unknown field
        return self._build_all(items)

    def build_from_array(self, items: object) -> object:
        if type(items) is not tuple or not self.items_min <= len(items) <= len(self.names):
            raise DecodeError(f"{self.cls.__name__}: expected {len(self.names)} items")
        memo = self.memo
        if memo is not None and tuple(map(type, items)) == self.wire_types:
            try:
                return memo[items]
            except KeyError:
                pass
            except TypeError:
                return self._build_all(items)  # raises: an unhashable (so invalid) item
            built = self._build_all(items)
            if len(memo) >= RECORD_MEMO_MAX:
                memo.clear()
            memo[items] = built
            return built
        if len(items) < len(self.names):
            names = self.names[: len(items)]
            checkers = self.checkers[: len(items)]
            checked = tuple(check(item) for check, item in zip(checkers, items, strict=True))
            return self._construct(names, checked)
        return self._build_all(items)

    def _build_partial_map(self, fields: dict[Any, Any]) -> object:
        unknown = [name for name in fields if name not in self.names]
        if unknown:
            raise DecodeError(f"{self.cls.__name__}: unknown field {unknown[0]!r}")
        missing = [name for name in self.names if name in self.required and name not in fields]
        if missing:
            raise DecodeError(f"{self.cls.__name__}: missing field {missing[0]!r}")
        present = [
            (name, check)
            for name, check in zip(self.names, self.checkers, strict=True)
            if name in fields
        ]
        names = tuple(name for name, _ in present)
        checked = tuple(check(fields[name]) for name, check in present)
        return self._construct(names, checked)

    def _build_all(self, items: tuple[Any, ...]) -> object:
        """Validate, convert and construct from the values of all fields, in field order."""
        values: Sequence[Any] = items
        if tuple(map(type, items)) != self.wire_types:
            values = [check(item) for check, item in zip(self.checkers, items, strict=True)]
        elif self.converters:
            values = list(items)
            for index, convert in self.converters:
                values[index] = convert(values[index])
        if self.slot_setters is None:
            return self._construct(self.names, values)
        # The slotted fast path of `_slot_setters`: what the dataclass `__init__` would do.
        instance: object = _new_object(self.cls)
        for setter, value in zip(self.slot_setters, values, strict=True):
            setter(instance, value)
        if self.post_init is not None:
            try:
                self.post_init(instance)
            except (TypeError, ValueError, AssertionError) as error:
                raise DecodeError(f"{self.cls.__name__}: {error}") from error
        return instance

    def _construct(self, names: tuple[str, ...], values: Sequence[Any]) -> object:
        try:
            return self.cls(**dict(zip(names, values, strict=True)))
        except (TypeError, ValueError, AssertionError) as error:
            raise DecodeError(f"{self.cls.__name__}: {error}") from error


def _check_int(value: Any) -> int:
    if type(value) is not int:
        raise DecodeError(f"expected int, got {type(value).__name__}")
    return value


def _check_float(value: Any) -> float:
    if type(value) is not float and type(value) is not int:
        raise DecodeError(f"expected float, got {type(value).__name__}")
    return float(value)


def _simple_checker(expected: type) -> Checker:
    def check(value: Any) -> Any:
        if type(value) is not expected:
            raise DecodeError(f"expected {expected.__name__}, got {type(value).__name__}")
        return value

    return check


def _tuple_checker(item_check: Checker) -> Checker:
    """Check an array whose items each need their own checker (and maybe conversion)."""

    def check(value: Any) -> tuple[Any, ...]:
        if type(value) is not tuple:
            raise DecodeError(f"expected array, got {type(value).__name__}")
        return tuple([item_check(item) for item in value])

    return check


def _plain_tuple_checker(item_type: type) -> Checker:
    """Check an array of plain values: exact item types, nothing to convert."""

    def check(value: Any) -> tuple[Any, ...]:
        if type(value) is not tuple:
            raise DecodeError(f"expected array, got {type(value).__name__}")
        for item in value:
            if type(item) is not item_type:
                raise DecodeError(f"expected {item_type.__name__}, got {type(item).__name__}")
        return value

    return check


def _optional_checker(inner: Checker) -> Checker:
    def check(value: Any) -> Any:
        return None if value is None else inner(value)

    return check


_PLAIN_TYPES: Final[tuple[type, ...]] = (int, str, bytes, bool)
"""Annotations whose wire values need only an exact type check (msgpack yields them as is)."""


def _checker_for(annotation: Any) -> Checker:
    if annotation is int:
        return _check_int
    if annotation is float:
        return _check_float
    if annotation in (str, bytes, bool):
        return _simple_checker(annotation)
    if annotation in _RECORD_SPECS:
        return _RECORD_SPECS[annotation].build_from_array
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is tuple and len(arguments) == 2 and arguments[1] is Ellipsis:
        if arguments[0] in _PLAIN_TYPES:
            return _plain_tuple_checker(arguments[0])
        return _tuple_checker(_checker_for(arguments[0]))
    if origin in (typing.Union, types.UnionType) and type(None) in arguments:
        (inner,) = [argument for argument in arguments if argument is not type(None)]
        return _optional_checker(_checker_for(inner))
    raise TypeError(f"no wire checker for annotation {annotation!r}")


def _wire_type_for(annotation: Any) -> tuple[type, bool]:
    """The exact wire type of a field's value, and whether it needs its checker after all."""
    if annotation in _PLAIN_TYPES or annotation is float:
        return annotation, False  # an int sent for a float takes the slow path, which converts
    if annotation in _RECORD_SPECS or typing.get_origin(annotation) is tuple:
        return tuple, True
    return _NoFastPath, True


def _compile(cls: type) -> _ClassSpec:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    required = [
        f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        for f in fields
    ]
    checkers = tuple(_checker_for(hints[f.name]) for f in fields)
    wire = [_wire_type_for(hints[f.name]) for f in fields]
    return _ClassSpec(
        cls=cls,
        names=tuple(f.name for f in fields),
        checkers=checkers,
        required=frozenset(f.name for f, needed in zip(fields, required, strict=True) if needed),
        wire_types=tuple(wire_type for wire_type, _ in wire),
        converters=tuple(
            (index, checkers[index]) for index, (_, convert) in enumerate(wire) if convert
        ),
        items_min=max((index + 1 for index, needed in enumerate(required) if needed), default=0),
        slot_setters=_slot_setters(cls, fields),
        post_init=getattr(cls, "__post_init__", None),
        memo={} if _memoizable([hints[f.name] for f in fields]) else None,
    )


def _memoizable(annotations: list[Any]) -> bool:
    """Whether equal wire arrays of the exact wire types always hold equal, valid-alike values.

    True for fields of `int`, `str`, `bytes`, `bool` and tuples of `str` or `bytes`: once the
    top-level types match exactly, `==` cannot confuse `True` with `1` or `1.0` (the
    top-level types are exact), and a `str` or `bytes` item equals only its own kind. Floats
    (`-0.0 == 0.0`), tuples of ints and nested records are left out.
    """
    for annotation in annotations:
        if annotation in _PLAIN_TYPES:
            continue
        arguments = typing.get_args(annotation)
        if typing.get_origin(annotation) is tuple and arguments in ((str, ...), (bytes, ...)):
            continue
        return False
    return True


def _slot_setters(
    cls: type, fields: list[dataclasses.Field[Any]]
) -> tuple[Callable[[object, Any], None], ...] | None:
    """The slot setters of `cls` in field order, if `__init__` does no more than set them.

    A frozen dataclass's `__init__` pays one `object.__setattr__` per field, reached through
    keyword arguments; writing the slot descriptors directly (then calling `__post_init__`) is
    about twice as fast. Only for slotted classes whose every field is an `__init__` field.
    """
    if len(fields) != len(dataclasses.fields(cls)):
        return None
    setters = []
    for f in fields:
        descriptor = inspect.getattr_static(cls, f.name, None)
        if not isinstance(descriptor, types.MemberDescriptorType):
            return None
        setters.append(descriptor.__set__)
    return tuple(setters)


def _register_records() -> None:
    # In declaration order, so a record may nest records declared before it.
    for record in RECORD_TYPES:
        _RECORD_SPECS[record] = _compile(record)
        _RECORD_ENCODERS[record] = _compile_encoder(record)


def _register_messages() -> dict[str, _ClassSpec]:
    specs: dict[str, _ClassSpec] = {}
    for cls in MESSAGE_TYPES:
        assert cls.TAG, f"{cls.__name__} has no TAG"
        assert cls.TAG not in specs, f"duplicate TAG {cls.TAG}"
        specs[cls.TAG] = _compile(cls)
        _ENCODERS[cls] = _compile_encoder(cls)
    return specs


_new_object: Final = object.__new__
_RECORD_SPECS: dict[Any, _ClassSpec] = {}
_RECORD_ENCODERS: dict[type, tuple[tuple[str, ...], FieldGetter]] = {}
_ENCODERS: dict[type, tuple[tuple[str, ...], FieldGetter]] = {}
_register_records()
_MESSAGE_SPECS: dict[str, _ClassSpec] = _register_messages()
