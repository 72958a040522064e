"""Errors raised inside actors/; remote garbage never escapes an actor's `handle()`."""

from enum import StrEnum


class PeerPxeError(Exception):
    """Base of every peerpxe error."""


class DecodeError(PeerPxeError):
    """A peer sent bytes that are not a well-formed message."""


class AuthenticationError(PeerPxeError):
    """An envelope failed authentication: bad MAC, unknown sender format, or a replay."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        #: short counter-friendly reason, e.g. "bad_mac", "replayed", "stale_epoch"
        self.reason = reason


class ProtocolViolation(PeerPxeError):
    """A well-formed message that breaks the protocol (e.g. an ack for a probe never sent)."""


class PackageRefusal(StrEnum):
    """Why a signed document (boot package manifest or policy) is refused."""

    #: not a signed peerpxe document at all: garbage, truncated, no signature
    NOT_SIGNED = "not_signed"
    #: a signed document of another kind (a policy offered as a manifest, or the reverse)
    WRONG_KIND = "wrong_kind"
    #: the signature does not verify: tampered bytes, or signed by another key
    BAD_SIGNATURE = "bad_signature"
    #: authentic, but not newer than the document already held
    ROLLBACK = "rollback"
    #: authentic, but a field is invalid (unsafe path, negative size, wrong chunk count, ...)
    MALFORMED = "malformed"
    #: the publisher key itself is unusable (wrong length)
    BAD_KEY = "bad_key"


class PackageError(PeerPxeError):
    """A signed manifest or policy that must be refused; `reason` says why, for counters."""

    def __init__(self, reason: PackageRefusal, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
