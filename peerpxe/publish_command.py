"""`peerpxe publish`: hand a signed boot package to one agent, from where it spreads.

    peerpxe publish MANIFEST --dir DIR --to HOST:PORT --cluster-key FILE --pub FILE
        [--bind ADDR] [--timeout-s S]

The command checks the package first, as any agent would: the manifest's signature with
the publisher's public key, then every chunk of every file under DIR (a tampered or
missing file is refused here, not shipped). It copies the package into a temporary content
store (`transport.content_store`: verified chunks only) and serves it with a chunk service
(`transport.chunk_service`) on a free TCP port of `--bind` (default: the local address that
routes to the agent). Then it sends the agent a sealed `SeedOffer` naming that port (sealed
with the cluster key: an agent refuses offers from non-members); the agent fetches the
manifest, has its store verify it (signature, rollback, quota), and pulls the chunks, as it
does from any LAN peer. Its site peers copy from it over the LAN, and other sites'
downloaders across the WAN. The command waits until the agent holds the package complete
and verified (it asks the agent's chunk service for its newest complete manifest once a
second), prints what it served, and exits 0; the temporary store is removed.

Exit status: 0 when the agent holds the package; 1 when the package or the agent refused
(the reason is printed) or `--timeout-s` passed; 2 for a usage or input error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.core import Address
    from actors.package import Manifest
    from transport.chunk_service import ChunkServer

HELP = "hand a signed boot package to an agent, from where it spreads to every peer"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
POLL_S = 1.0
REQUEST_TIMEOUT_S = 5.0


class _PublishError(Exception):
    """A refusal or failure; the message is for the user."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `peerpxe publish`."""
    parser.add_argument("manifest", type=Path, help="the signed manifest (peerpxe package build)")
    parser.add_argument("--dir", required=True, type=Path, help="the package directory")
    parser.add_argument("--to", required=True, help="an agent's address, HOST:PORT (its port)")
    parser.add_argument("--cluster-key", required=True, type=Path, help="the cluster key file")
    parser.add_argument("--pub", required=True, type=Path, help="publisher public key file")
    parser.add_argument("--bind", help="address to serve the package from (default: routed)")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=600.0,
        help="give up when the agent does not hold the package by then (default: 600)",
    )


def run(args: argparse.Namespace) -> int:
    """Check, serve, offer, wait."""
    from peerpxe.config import parse_address

    try:
        target = parse_address(args.to)
    except ValueError as error:
        print(f"peerpxe publish: --to: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not args.timeout_s > 0:
        print("peerpxe publish: --timeout-s must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        cluster_key, public = read_keys(args.cluster_key, args.pub)
        signed = _read(args.manifest)
    except PublishInputError as error:
        print(f"peerpxe publish: {error}", file=sys.stderr)
        return EXIT_USAGE
    workspace = Path(tempfile.mkdtemp(prefix="peerpxe-publish-"))
    try:
        return _publish(
            args,
            target=target,
            cluster_key=cluster_key,
            public=public,
            signed=signed,
            workspace=workspace,
        )
    except _PublishError as error:
        print(f"peerpxe publish: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


class PublishInputError(Exception):
    """A bad option or unreadable input."""


def read_keys(cluster_key_file: Path, public_file: Path) -> tuple[bytes, bytes]:
    """The cluster key and the publisher's public key; `PublishInputError` if unusable."""
    from actors.envelope import CLUSTER_KEY_BYTES_MIN
    from peerpxe.config import parse_key
    from peerpxe.keys import KeyFileError, load_public_key

    try:
        public = load_public_key(public_file)
    except KeyFileError as error:
        raise PublishInputError(str(error)) from None
    key = parse_key(_read(cluster_key_file))
    if len(key) < CLUSTER_KEY_BYTES_MIN:
        raise PublishInputError(f"{cluster_key_file}: a {len(key)}-byte cluster key is too short")
    return key, public


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise PublishInputError(f"cannot read {path}: {error.strerror or error}") from None


def _publish(
    args: argparse.Namespace,
    *,
    target: Address,
    cluster_key: bytes,
    public: bytes,
    signed: bytes,
    workspace: Path,
) -> int:
    from transport.shared_store import SharedStore

    store, manifest = _load_package(signed, args.dir, workspace, public)

    def held(sealer: Any) -> bool:
        return _agent_holds(target, sealer, manifest, public)

    def offered(server: ChunkServer) -> None:
        print(
            f"offered {manifest.package_id} ({manifest.total_bytes} bytes, "
            f"{manifest.chunk_count} chunks) to {target.host}:{target.port} from "
            f"{server.address.host}:{server.address.port}"
        )

    def waiting(counters: Any) -> str:
        served = counters.snapshot().get("chunks.served", 0)
        return f"served {served} of {manifest.chunk_count} chunks"

    session = SeedSession(target, cluster_key, args.bind, SharedStore(store))
    served = session.run(held, offered=offered, waiting=waiting, timeout_s=args.timeout_s)
    if served is None:
        raise _PublishError(
            f"{target.host}:{target.port} did not hold {manifest.package_id} within"
            f" {args.timeout_s} s"
        )
    print(
        f"published {manifest.package_id}: {target.host}:{target.port} holds it complete and "
        f"verified; served {served.get('chunks.served', 0)} chunks, "
        f"{served.get('chunks.served_bytes', 0)} bytes"
    )
    return EXIT_OK


class SeedSession:
    """Serve from a temporary chunk service, offer it to one agent, wait until `held`.

    Shared by `peerpxe publish` (a package) and `peerpxe policy publish` (a policy)."""

    def __init__(
        self,
        target: Address,
        cluster_key: bytes,
        bind: str | None,
        store: Any,
        policy: bytes | None = None,
    ) -> None:
        self.target = target
        self.cluster_key = cluster_key
        self.bind = bind
        self.store = store
        self.policy = policy

    def run(
        self,
        held: Any,
        *,
        offered: Any,
        waiting: Any,
        timeout_s: float,
    ) -> dict[str, int] | None:
        """The seed's counters once `held(sealer)` is true; None if `timeout_s` passed."""
        from actors.core import Address
        from actors.envelope import WireSecurity
        from transport.chunk_service import ChunkServer, chunk_sender_id
        from transport.metrics import SharedCounters

        identity = chunk_sender_id(f"publish-{socket.gethostname()}-{os.getpid()}")
        epoch = time.time_ns() // 1000
        counters = SharedCounters()
        policy = self.policy
        server = ChunkServer(
            Address(self.bind or _routed_address(self.target), 0),
            self.store,
            WireSecurity(identity, self.cluster_key, epoch),
            counters=counters,
            policy=None if policy is None else lambda: policy,
        )
        server.start()
        try:
            sealer = WireSecurity(identity, self.cluster_key, epoch)
            _offer(self.target, sealer, server)
            offered(server)
            deadline_s = time.monotonic() + timeout_s
            while time.monotonic() < deadline_s:
                if held(sealer):
                    return counters.snapshot()
                print(f"  waiting: {waiting(counters)}", flush=True)
                time.sleep(POLL_S)
            return None
        finally:
            server.stop()


def _load_package(signed: bytes, directory: Path, workspace: Path, public: bytes) -> Any:
    """A temporary store holding the package, every chunk verified; the manifest."""
    from actors.errors import PackageError
    from transport.content_store import ChunkWrite, ContentStore, ContentStoreError

    store = ContentStore(workspace, 1 << 62, public)
    try:
        manifest: Manifest = store.begin(signed)
    except (PackageError, ContentStoreError) as error:
        raise _PublishError(f"manifest refused: {error}") from None
    for entry in manifest.files:
        path = directory / entry.path
        try:
            with path.open("rb") as handle:
                for index in range(len(entry.chunk_sha256)):
                    data = handle.read(manifest.chunk_length(entry, index))
                    if store.write_chunk(entry.path, index, data) is ChunkWrite.REFUSED:
                        raise _PublishError(f"{path}: chunk {index} does not match the manifest")
        except OSError as error:
            raise _PublishError(f"cannot read {path}: {error.strerror or error}") from None
    if not store.complete():
        raise _PublishError(f"{directory} does not hold the whole package")
    return store, manifest


def _routed_address(target: Address) -> str:
    """The local address the kernel would use to reach `target` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((target.host, target.port))
        except OSError as error:
            raise _PublishError(f"no route to {target.host}: {error.strerror or error}") from None
        host: str = probe.getsockname()[0]
        return host


def _offer(target: Address, sealer: Any, server: ChunkServer) -> None:
    from actors.errors import DecodeError
    from actors.messages import SeedOffer
    from transport.chunk_fetcher import request_once
    from transport.chunk_service import REPLY_OVERHEAD_BYTES_MAX, STATUS_OK

    try:
        status, _ = request_once(
            target,
            sealer,
            SeedOffer(port=server.address.port),
            REPLY_OVERHEAD_BYTES_MAX,
            REQUEST_TIMEOUT_S,
        )
    except (OSError, DecodeError) as error:
        raise _PublishError(
            f"the agent at {target.host}:{target.port} did not take the offer: {error}"
            " (wrong cluster key, or not an agent with [replication] enabled)"
        ) from None
    if status != STATUS_OK:
        raise _PublishError(f"the agent answered {status!r} to the offer")


def _agent_holds(target: Address, sealer: Any, manifest: Manifest, public: bytes) -> bool:
    """Whether the agent's newest complete package is `manifest`."""
    from actors.errors import DecodeError
    from actors.messages import ManifestRequest
    from transport.chunk_fetcher import request_once
    from transport.chunk_service import MANIFEST_REPLY_BYTES_MAX, STATUS_OK

    try:
        status, signed = request_once(
            target, sealer, ManifestRequest(), MANIFEST_REPLY_BYTES_MAX, REQUEST_TIMEOUT_S
        )
    except (OSError, DecodeError):
        return False
    return status == STATUS_OK and _names(signed, manifest, public)


def _names(signed: bytes, manifest: Manifest, public: bytes) -> bool:
    """Whether the agent's newest complete manifest is `manifest` (signature checked)."""
    from actors.errors import PackageError
    from actors.package import verify_manifest

    try:
        return verify_manifest(signed, public, None).package_id == manifest.package_id
    except PackageError:
        return False
