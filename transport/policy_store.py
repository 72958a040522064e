"""The agent's signed policy on disk: verified before it is written, written crash-safely.

`PolicyStore` holds the newest policy this agent accepted (`actors.policy`): `install`
verifies the publisher's signature and refuses a version not newer than the one held
(ROLLBACK: a captured old policy cannot be replayed), writes the signed bytes with
`transport.durable.write_atomic` (write, fsync, rename: a crash leaves the old file or the
new one, never a mix), then tells its listener, which applies the policy. At start it
reads the file back and verifies it again; a file that no longer verifies is logged and
ignored (not deleted: an operator may want to see it). Thread-safe: the chunk server reads
the signed bytes for peers while a fetcher worker installs a newer policy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from actors.errors import PackageError
from actors.policy import Policy, verify_policy
from transport.durable import write_atomic

_LOG = logging.getLogger(__name__)


class PolicyStore:
    """The newest verified signed policy, kept in `path`."""

    def __init__(self, path: Path, publisher_key: bytes) -> None:
        self.path = path
        self._publisher_key = publisher_key
        self._lock = threading.Lock()
        self._listener: Callable[[Policy], None] | None = None
        self._policy: Policy | None = None
        self._signed: bytes | None = None
        self._load()

    def set_listener(self, listener: Callable[[Policy], None] | None) -> None:
        """Call `listener` with each newly installed policy (outside the lock)."""
        self._listener = listener

    def current(self) -> Policy | None:
        """The policy held, if any."""
        with self._lock:
            return self._policy

    def signed(self) -> bytes | None:
        """Its signed bytes, to hand to peers."""
        with self._lock:
            return self._signed

    def install(self, signed: bytes) -> Policy:
        """Verify, store and apply `signed`; `PackageError` (with the reason) if refused,
        `OSError` if it cannot be written (the policy held does not change then)."""
        with self._lock:
            policy = verify_policy(signed, self._publisher_key, self._policy)
            write_atomic(self.path, signed)
            self._policy, self._signed = policy, signed
        listener = self._listener
        if listener is not None:
            listener(policy)
        return policy

    def _load(self) -> None:
        try:
            signed = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as error:
            _LOG.error("cannot read the stored policy %s: %s", self.path, error)
            return
        try:
            self._policy = verify_policy(signed, self._publisher_key, None)
        except PackageError as error:
            _LOG.error("the stored policy %s is refused and ignored: %s", self.path, error)
            return
        self._signed = signed
