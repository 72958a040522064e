"""Errors raised inside actors/; remote garbage never escapes an actor's `handle()`."""


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
