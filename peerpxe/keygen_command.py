"""`peerpxe keygen --out DIR [--force]`: a publisher key pair and a cluster key.

Writes `DIR/publisher.key` (Ed25519 secret, mode 0600), `DIR/publisher.pub` (its public
key) and `DIR/cluster.key` (32 random bytes, mode 0600), each one line of hex. Existing files
are never overwritten without `--force`, so a publisher key cannot be lost by a slip.

Exit status: 0 on success, 2 when a file exists (without `--force`) or cannot be written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "create a publisher signing key pair and a cluster key"

EXIT_OK = 0
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `peerpxe keygen`."""
    parser.add_argument("--out", required=True, type=Path, help="directory for the key files")
    parser.add_argument("--force", action="store_true", help="overwrite existing key files")


def run(args: argparse.Namespace) -> int:
    """Generate the keys and write them; refuse to overwrite unless --force."""
    from actors.signing import SECRET_KEY_BYTES, public_key
    from peerpxe.keys import CLUSTER_KEY_BYTES, PUBLIC_FILE_MODE, SECRET_FILE_MODE
    from transport.durable import make_directory, write_atomic

    out: Path = args.out
    secret = os.urandom(SECRET_KEY_BYTES)
    files = {
        "publisher.key": (secret, SECRET_FILE_MODE),
        "publisher.pub": (public_key(secret), PUBLIC_FILE_MODE),
        "cluster.key": (os.urandom(CLUSTER_KEY_BYTES), SECRET_FILE_MODE),
    }
    existing = [name for name in files if (out / name).exists()]
    if existing and not args.force:
        print(
            f"peerpxe keygen: {', '.join(str(out / name) for name in existing)} already exist;"
            " use --force to replace them (packages signed with the old key stop verifying)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        make_directory(out)
        for name, (key, mode) in files.items():
            write_atomic(out / name, key.hex().encode() + b"\n", mode)
    except OSError as error:
        print(f"peerpxe keygen: cannot write to {out}: {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    for name in files:
        print(f"wrote {out / name}")
    print("keep publisher.key on the publishing machine only; give agents publisher.pub")
    return EXIT_OK
