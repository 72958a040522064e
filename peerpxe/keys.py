"""Key files of the publisher and the cluster: one hex line each, as `peerpxe keygen` writes.

- `publisher.key`: the Ed25519 secret key (32 bytes, RFC 8032 §5.1.5), mode 0600; only the
  machine that builds and signs packages and policies needs it.
- `publisher.pub`: its public key (32 bytes); every agent holds it to verify what it gets.
- `cluster.key`: 32 random bytes, the HMAC key of peer messages (`actors.envelope`), mode 0600.

Files hold hex text (whitespace around it ignored) or the raw bytes, as
`peerpxe.config.parse_key` reads them.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Final

from actors.signing import PUBLIC_KEY_BYTES, SECRET_KEY_BYTES
from peerpxe.config import parse_key

SECRET_FILE_MODE: Final = 0o600
PUBLIC_FILE_MODE: Final = 0o644
CLUSTER_KEY_BYTES: Final = 32


class KeyFileError(Exception):
    """A key file that cannot be used; the message names the file and says why."""


def load_secret_key(path: Path) -> tuple[bytes, list[str]]:
    """The publisher secret key in `path`, and warnings (a file others can read)."""
    key, mode = _read_key(path, SECRET_KEY_BYTES, "Ed25519 secret key")
    warnings = []
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o});"
            " run chmod 600"
        )
    return key, warnings


def load_public_key(path: Path) -> bytes:
    """The publisher public key in `path`."""
    key, _ = _read_key(path, PUBLIC_KEY_BYTES, "Ed25519 public key")
    return key


def _read_key(path: Path, size_bytes: int, what: str) -> tuple[bytes, int]:
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read: {error.strerror or error}") from None
    key = parse_key(data)
    if len(key) != size_bytes:
        raise KeyFileError(
            f"{path}: expected a {what} of {size_bytes} bytes ({2 * size_bytes} hex digits),"
            f" found {len(key)} bytes"
        )
    return key, mode
