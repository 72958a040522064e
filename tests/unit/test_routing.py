"""Every wire message type has a receiving actor."""

from __future__ import annotations

from actors.messages import MESSAGE_TYPES
from actors.routing import MESSAGE_ROUTES


def test_every_message_type_is_routed() -> None:
    """A message type without a route would be dropped by every host as unrouted."""
    assert set(MESSAGE_TYPES) == set(MESSAGE_ROUTES)
