"""msgpack framing of peer messages: `[WIRE_VERSION, TAG, {field: value}]`.

The only module that touches msgpack for peer messages. `encode` trusts its input (it comes
from our own code); `decode` trusts nothing: every failure, whatever its cause (bad msgpack,
wrong shape, unknown tag, unknown or missing field, wrong type, oversize input) is raised as
`DecodeError` and nothing else escapes.

Field types are checked against the dataclass annotations, compiled once per class into a
tuple of checkers, because dataclasses do not check types themselves and a peer could send
`Ping(seq="x")`. Nested records (`MemberUpdate`) travel as arrays in field order: smaller
than maps and just as strict, since the arity is checked.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Final

import msgpack

from actors.errors import DecodeError
from actors.messages import MESSAGE_TYPES, RECORD_TYPES, Message

WIRE_VERSION: Final = 1
"""Bumped only on an incompatible framing change; advertised in the mDNS TXT record."""

MAX_DATAGRAM_BYTES: Final = 1400
"""One message must fit one UDP datagram under a 1500-byte Ethernet MTU (memberlist uses 1400)."""

Checker = Callable[[Any], Any]
"""Validates one decoded value and returns it converted (arrays to tuples or records)."""


def encode(message: Message) -> bytes:
    """Pack `message` as `[WIRE_VERSION, TAG, fields]`."""
    fields = {f.name: _to_wire(getattr(message, f.name)) for f in dataclasses.fields(message)}
    data: bytes = msgpack.packb([WIRE_VERSION, message.TAG, fields], use_bin_type=True)
    return data


def decode(data: bytes, max_bytes: int = MAX_DATAGRAM_BYTES) -> Message:
    """Unpack and validate one message; raise `DecodeError` for anything malformed."""
    if len(data) > max_bytes:
        raise DecodeError(f"oversize: {len(data)} > {max_bytes} bytes")
    frame = _unpack(data)
    if not isinstance(frame, tuple) or len(frame) != 3:
        raise DecodeError("frame is not [version, tag, fields]")
    version, tag, fields = frame
    if version != WIRE_VERSION or isinstance(version, bool):
        raise DecodeError(f"unsupported wire version {version!r}")
    spec = _MESSAGE_SPECS.get(tag) if isinstance(tag, str) else None
    if spec is None:
        raise DecodeError(f"unknown tag {tag!r}")
    if not isinstance(fields, dict):
        raise DecodeError(f"{tag}: fields are not a map")
    return typing.cast("Message", spec.build_from_map(fields))


def unpack_plain(data: bytes) -> object:
    """Unpack msgpack with the codec's strict settings; raise `DecodeError` on any failure."""
    return _unpack(data)


def _unpack(data: bytes) -> object:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=False)
    except Exception as error:  # noqa: BLE001 - msgpack raises many types; all mean "malformed"
        raise DecodeError(f"bad msgpack: {type(error).__name__}") from error


def _to_wire(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [_to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, tuple):
        return [_to_wire(item) for item in value]
    return value


# --------------------------------------------------------------------------- type checking


@dataclasses.dataclass(frozen=True, slots=True)
class _ClassSpec:
    """Compiled field checkers of one message or record class."""

    cls: type
    names: tuple[str, ...]
    checkers: tuple[Checker, ...]
    required: frozenset[str]

    def build_from_map(self, fields: dict[Any, Any]) -> object:
        unknown = [name for name in fields if name not in self.names]
        if unknown:
            raise DecodeError(f"{self.cls.__name__}: unknown field {unknown[0]!r}")
        missing = [name for name in self.names if name in self.required and name not in fields]
        if missing:
            raise DecodeError(f"{self.cls.__name__}: missing field {missing[0]!r}")
        values = {
            name: check(fields[name])
            for name, check in zip(self.names, self.checkers, strict=True)
            if name in fields
        }
        return self._construct(values)

    def build_from_array(self, items: object) -> object:
        if not isinstance(items, tuple) or len(items) != len(self.names):
            raise DecodeError(f"{self.cls.__name__}: expected {len(self.names)} items")
        values = {
            name: check(item)
            for name, check, item in zip(self.names, self.checkers, items, strict=True)
        }
        return self._construct(values)

    def _construct(self, values: dict[str, Any]) -> object:
        try:
            return self.cls(**values)
        except (TypeError, ValueError, AssertionError) as error:
            raise DecodeError(f"{self.cls.__name__}: {error}") from error


def _check_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"expected int, got {type(value).__name__}")
    return value


def _check_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"expected float, got {type(value).__name__}")
    return float(value)


def _simple_checker(expected: type) -> Checker:
    def check(value: Any) -> Any:
        if not isinstance(value, expected):
            raise DecodeError(f"expected {expected.__name__}, got {type(value).__name__}")
        return value

    return check


def _tuple_checker(item_check: Checker) -> Checker:
    def check(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, tuple):
            raise DecodeError(f"expected array, got {type(value).__name__}")
        return tuple(item_check(item) for item in value)

    return check


def _optional_checker(inner: Checker) -> Checker:
    def check(value: Any) -> Any:
        return None if value is None else inner(value)

    return check


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
        return _tuple_checker(_checker_for(arguments[0]))
    if origin in (typing.Union, types.UnionType) and type(None) in arguments:
        (inner,) = [argument for argument in arguments if argument is not type(None)]
        return _optional_checker(_checker_for(inner))
    raise TypeError(f"no wire checker for annotation {annotation!r}")


def _compile(cls: type) -> _ClassSpec:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    required = frozenset(
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    return _ClassSpec(
        cls=cls,
        names=tuple(f.name for f in fields),
        checkers=tuple(_checker_for(hints[f.name]) for f in fields),
        required=required,
    )


def _register_records() -> None:
    # In declaration order, so a record may nest records declared before it.
    for record in RECORD_TYPES:
        _RECORD_SPECS[record] = _compile(record)


def _register_messages() -> dict[str, _ClassSpec]:
    specs: dict[str, _ClassSpec] = {}
    for cls in MESSAGE_TYPES:
        assert cls.TAG, f"{cls.__name__} has no TAG"
        assert cls.TAG not in specs, f"duplicate TAG {cls.TAG}"
        specs[cls.TAG] = _compile(cls)
    return specs


_RECORD_SPECS: dict[Any, _ClassSpec] = {}
_register_records()
_MESSAGE_SPECS: dict[str, _ClassSpec] = _register_messages()
