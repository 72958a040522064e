"""On-disk store of signed boot packages: verified chunks in, verified trees out.

Theory of operation
-------------------
Layout under `root`::

    packages/<name>-<version>/manifest.signed   complete packages: the signed manifest
    packages/<name>-<version>/tree/...          ... and the verified files, served as is
    staging/<name>-<version>/manifest.signed    the one package being fetched
    staging/<name>-<version>/chunks/<sha256>    its verified chunks, named by their hash
    trash/                                      removals in progress (emptied on start)

States of a package, and what moves it::

    (none) --begin(signed)--> STAGED --write_chunk()*--> STAGED, all chunks present
           --complete()--> COMPLETE (served) --collect()--> (none)

- `begin` verifies the signed manifest with the publisher key (refusing rollback against the
  newest complete package of the same name), checks the quota and records the manifest. One
  package is staged at a time; staging another discards the first.
- `write_chunk` checks the chunk against the manifest **before** anything touches the disk
  (a refused chunk is counted, never written), then writes it crash-safely
  (`transport.durable`: temp file, fsync, rename, fsync the directory). Chunks are named by
  their SHA-256, so identical chunks are stored once.
- `complete` assembles each file from its chunks into `staging/<id>/tree`, re-verifying every
  chunk and the whole-file SHA-256, each file crash-safely again; then one directory rename
  moves the package to `packages/`. Nothing under `packages/` was ever partly written or
  unverified, so `served_root()` never exposes an unverified byte.
- On start the store rebuilds its state from disk: temporaries and the trash are deleted,
  every manifest is verified again (a package that fails goes to the trash), and the chunks
  present in `staging/` are found by name, so a restart resumes where it stopped: chunks
  already stored are never fetched again (`missing_chunks`).

Disk quota: a complete package counts its size; the staged one twice its size, because its
chunks and its assembled tree coexist until the final rename. `begin` refuses a package that
would not fit (`QuotaExceeded`).

"Newest" (`current`, `collect`) orders complete packages by the publisher's `created_s`,
then version, then name. The store is not thread-safe: one actor owns it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

from actors.errors import PackageError, PeerPxeError
from actors.package import FileEntry, Manifest, chunk_ok, refuse_rollback, verify_manifest
from transport.durable import (
    TEMP_PREFIX,
    fsync_directory,
    make_directory,
    remove_temporaries,
    remove_tree,
    write_atomic,
    write_atomic_parts,
)

MANIFEST_NAME: Final = "manifest.signed"
TREE_NAME: Final = "tree"
CHUNKS_NAME: Final = "chunks"
STAGING_FACTOR: Final = 2
"""A staged package needs this many times its size: chunks plus the assembled tree."""


class ContentStoreError(PeerPxeError):
    """The store cannot do what was asked (nothing staged, a manifest at odds with itself)."""


class QuotaExceeded(ContentStoreError):
    """A package would not fit in the store's disk quota."""


class ChunkWrite(StrEnum):
    """What `write_chunk` did with a chunk."""

    #: verified and stored durably
    STORED = "stored"
    #: already stored (same hash): nothing written
    DUPLICATE = "duplicate"
    #: refused: not a chunk of the staged package (see `ContentStore.refusals`)
    REFUSED = "refused"


class Refusal(StrEnum):
    """Counter names of `ContentStore.refusals`."""

    #: a chunk for a file the staged manifest does not list
    UNKNOWN_FILE = "unknown_file"
    #: a chunk index outside the file
    BAD_INDEX = "bad_index"
    #: a chunk whose length or SHA-256 differs from the manifest's
    BAD_HASH = "bad_hash"
    #: a stored chunk or served file that no longer matches its hash (found and dropped)
    CORRUPT_ON_DISK = "corrupt_on_disk"
    #: a package or staging directory whose manifest or files failed checks on start
    INVALID_PACKAGE = "invalid_package"
    #: a file in a chunk directory that is not a chunk of the staged manifest
    STRAY_FILE = "stray_file"


CHUNK_REFUSALS: Final = (Refusal.UNKNOWN_FILE, Refusal.BAD_INDEX, Refusal.BAD_HASH)


@dataclass(slots=True)
class _Staged:
    manifest: Manifest
    signed: bytes
    directory: Path
    #: SHA-256 digests of the chunks stored under `directory/chunks`
    present: set[bytes] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Complete:
    manifest: Manifest
    directory: Path


class ContentStore:
    """Directory-backed package store: verify, persist, assemble, serve, collect."""

    def __init__(self, root: Path, quota_bytes: int, publisher_key: bytes) -> None:
        assert quota_bytes >= 0
        self.root = root
        self.quota_bytes = quota_bytes
        self.refusals: dict[Refusal, int] = dict.fromkeys(Refusal, 0)
        self._publisher_key = publisher_key
        self._packages = root / "packages"
        self._staging = root / "staging"
        self._trash = root / "trash"
        self._complete: dict[str, _Complete] = {}
        self._staged: _Staged | None = None
        self._open()

    # ----------------------------------------------------------------------- public API

    def begin(self, signed_manifest: bytes) -> Manifest:
        """Verify and record a package to fetch; resume it if it is already staged.

        Raises:
            PackageError: the manifest is refused (bad signature, rollback, ...).
            QuotaExceeded: the package does not fit.
        """
        staged = self._staged
        if staged is not None and staged.signed == signed_manifest:
            return staged.manifest
        manifest = verify_manifest(signed_manifest, self._publisher_key, None)
        refuse_rollback(manifest, self._newest(manifest.name))
        self._check_quota(manifest)
        if staged is not None:
            self._discard_staged()
        self._staged = self._stage(manifest, signed_manifest)
        return manifest

    def staged(self) -> Manifest | None:
        """The manifest of the package being fetched, if any."""
        return None if self._staged is None else self._staged.manifest

    def write_chunk(self, path: str, index: int, data: bytes) -> ChunkWrite:
        """Verify chunk `index` of file `path` of the staged package, then store it durably."""
        staged = self._require_staged()
        manifest = staged.manifest
        entry = manifest.file(path)
        if entry is None:
            return self._refuse(Refusal.UNKNOWN_FILE)
        if not 0 <= index < len(entry.chunk_sha256):
            return self._refuse(Refusal.BAD_INDEX)
        if not chunk_ok(manifest, path, index, data):
            return self._refuse(Refusal.BAD_HASH)
        digest = entry.chunk_sha256[index]
        if digest in staged.present:
            return ChunkWrite.DUPLICATE
        write_atomic(staged.directory / CHUNKS_NAME / digest.hex(), data)
        staged.present.add(digest)
        return ChunkWrite.STORED

    def missing_chunks(self) -> list[tuple[str, int]]:
        """(path, index) of every chunk of the staged package not stored yet, in order."""
        staged = self._staged
        if staged is None:
            return []
        return [
            (entry.path, index)
            for entry in staged.manifest.files
            for index, digest in enumerate(entry.chunk_sha256)
            if digest not in staged.present
        ]

    def complete(self) -> bool:
        """Assemble, verify and publish the staged package; False while chunks are missing."""
        staged = self._require_staged()
        if self.missing_chunks():
            return False
        tree = staged.directory / TREE_NAME
        remove_tree(tree)
        make_directory(tree)
        for entry in staged.manifest.files:
            if not self._assemble(staged, entry, tree):
                remove_tree(tree)
                return False
        self._publish(staged)
        return True

    def read_chunk(self, path: str, index: int, package_id: str | None = None) -> bytes | None:
        """Verified chunk `index` of `path` from `package_id` (default: current), else None.

        Complete packages and the staged one (for its stored chunks) can be read.
        """
        staged = self._staged
        if staged is not None and package_id == staged.manifest.package_id:
            return self._read_staged_chunk(staged, path, index)
        package = self._current_package() if package_id is None else self._complete.get(package_id)
        if package is None:
            return None
        return self._read_tree_chunk(package, path, index)

    def current(self) -> Manifest | None:
        """The newest complete, verified package."""
        package = self._current_package()
        return None if package is None else package.manifest

    def signed_manifest(self, package_id: str = "") -> bytes | None:
        """The signed manifest of complete package `package_id` (empty: the newest), or of
        the staged package when that is the one named; None when neither holds it."""
        staged = self._staged
        if package_id and staged is not None and staged.manifest.package_id == package_id:
            return staged.signed
        package = self._complete.get(package_id) if package_id else self._current_package()
        if package is None:
            return None
        return (package.directory / MANIFEST_NAME).read_bytes()

    def verify(self, signed_manifest: bytes) -> Manifest:
        """The manifest in `signed_manifest` if the publisher signed it (no rollback check);
        raises `PackageError` otherwise."""
        return verify_manifest(signed_manifest, self._publisher_key, None)

    def holds(self, package_id: str) -> bool:
        """Whether `package_id` is complete here or is the package being fetched."""
        staged = self._staged
        staged_id = None if staged is None else staged.manifest.package_id
        return package_id in self._complete or package_id == staged_id

    def served_root(self) -> Path | None:
        """The directory TFTP and HTTP serve: the current package's verified tree."""
        package = self._current_package()
        return None if package is None else package.directory / TREE_NAME

    def packages(self) -> list[Manifest]:
        """Every complete package, newest first."""
        return [package.manifest for package in self._by_age()]

    def collect(self, keep: int = 1) -> list[str]:
        """Remove all but the `keep` newest complete packages; return the removed ids."""
        assert keep >= 1, "the current package is never collected"
        removed = [package.manifest.package_id for package in self._by_age()[keep:]]
        for package_id in removed:
            self._move_to_trash(self._complete.pop(package_id).directory)
        if removed:
            fsync_directory(self._packages)
            self._empty_trash()
        return removed

    @property
    def used_bytes(self) -> int:
        """Bytes charged to the quota: complete packages, plus twice the staged one."""
        used = sum(package.manifest.total_bytes for package in self._complete.values())
        if self._staged is not None:
            used += STAGING_FACTOR * self._staged.manifest.total_bytes
        return used

    @property
    def refused_chunks(self) -> int:
        """Chunks refused by `write_chunk` (unknown file, bad index, bad hash)."""
        return sum(self.refusals[reason] for reason in CHUNK_REFUSALS)

    # ----------------------------------------------------------------------- writing

    def _refuse(self, reason: Refusal) -> ChunkWrite:
        self.refusals[reason] += 1
        return ChunkWrite.REFUSED

    def _require_staged(self) -> _Staged:
        if self._staged is None:
            raise ContentStoreError("no package is staged: call begin() first")
        return self._staged

    def _check_quota(self, manifest: Manifest) -> None:
        staged = self._staged
        used = self.used_bytes
        if staged is not None:
            used -= STAGING_FACTOR * staged.manifest.total_bytes
        needed = STAGING_FACTOR * manifest.total_bytes
        if used + needed > self.quota_bytes:
            raise QuotaExceeded(
                f"package {manifest.package_id} needs {needed} bytes while it is fetched"
                f" ({STAGING_FACTOR}x its {manifest.total_bytes} bytes); {self.quota_bytes - used}"
                f" of the {self.quota_bytes}-byte quota are free: collect old packages or"
                " raise the quota"
            )

    def _stage(self, manifest: Manifest, signed: bytes) -> _Staged:
        directory = self._staging / manifest.package_id
        remove_tree(directory)
        building = self._staging / f"{TEMP_PREFIX}{manifest.package_id}"
        remove_tree(building)
        make_directory(building / CHUNKS_NAME)
        write_atomic(building / MANIFEST_NAME, signed)
        building.rename(directory)
        fsync_directory(self._staging)
        return _Staged(manifest=manifest, signed=signed, directory=directory)

    def _discard_staged(self) -> None:
        assert self._staged is not None
        self._move_to_trash(self._staged.directory)
        self._staged = None
        fsync_directory(self._staging)
        self._empty_trash()

    def _assemble(self, staged: _Staged, entry: FileEntry, tree: Path) -> bool:
        """Write one file of the tree from its chunks; False if a stored chunk went bad."""
        target = tree / entry.path
        make_directory(target.parent)
        whole = hashlib.sha256()
        try:
            write_atomic_parts(target, self._verified_chunks(staged, entry, whole))
        except _CorruptChunkError:
            return False
        if whole.digest() != entry.sha256:
            self._discard_staged()
            raise ContentStoreError(
                f"manifest of {staged.manifest.package_id} is inconsistent: the chunks of"
                f" {entry.path!r} do not hash to its sha256; the package was discarded"
            )
        return True

    def _verified_chunks(
        self, staged: _Staged, entry: FileEntry, whole: hashlib._Hash
    ) -> Iterator[bytes]:
        for index, digest in enumerate(entry.chunk_sha256):
            chunk_path = staged.directory / CHUNKS_NAME / digest.hex()
            data = chunk_path.read_bytes()
            if not chunk_ok(staged.manifest, entry.path, index, data):
                self.refusals[Refusal.CORRUPT_ON_DISK] += 1
                chunk_path.unlink()
                staged.present.discard(digest)
                raise _CorruptChunkError(entry.path)
            whole.update(data)
            yield data

    def _publish(self, staged: _Staged) -> None:
        package_id = staged.manifest.package_id
        target = self._packages / package_id
        staged.directory.rename(target)
        fsync_directory(self._staging)
        fsync_directory(self._packages)
        self._staged = None
        self._complete[package_id] = _Complete(manifest=staged.manifest, directory=target)
        remove_tree(target / CHUNKS_NAME)

    # ----------------------------------------------------------------------- reading

    def _read_staged_chunk(self, staged: _Staged, path: str, index: int) -> bytes | None:
        entry = staged.manifest.file(path)
        if entry is None or not 0 <= index < len(entry.chunk_sha256):
            return None
        digest = entry.chunk_sha256[index]
        if digest not in staged.present:
            return None
        chunk_path = staged.directory / CHUNKS_NAME / digest.hex()
        data = chunk_path.read_bytes()
        if not chunk_ok(staged.manifest, path, index, data):
            self.refusals[Refusal.CORRUPT_ON_DISK] += 1
            chunk_path.unlink()
            staged.present.discard(digest)
            return None
        return data

    def _read_tree_chunk(self, package: _Complete, path: str, index: int) -> bytes | None:
        manifest = package.manifest
        entry = manifest.file(path)
        if entry is None or not 0 <= index < len(entry.chunk_sha256):
            return None
        try:
            with (package.directory / TREE_NAME / entry.path).open("rb") as handle:
                handle.seek(index * manifest.chunk_bytes)
                data = handle.read(manifest.chunk_length(entry, index))
        except FileNotFoundError:
            data = b""
        if not chunk_ok(manifest, path, index, data):
            self.refusals[Refusal.CORRUPT_ON_DISK] += 1
            return None
        return data

    def _current_package(self) -> _Complete | None:
        ordered = self._by_age()
        return ordered[0] if ordered else None

    def _by_age(self) -> list[_Complete]:
        """Complete packages, newest first."""
        packages = self._complete.values()
        return sorted(packages, key=lambda package: _newness(package.manifest), reverse=True)

    def _newest(self, name: str) -> Manifest | None:
        same_name = [
            package.manifest for package in self._by_age() if package.manifest.name == name
        ]
        return max(same_name, key=lambda manifest: manifest.version, default=None)

    # ----------------------------------------------------------------------- start-up

    def _open(self) -> None:
        for directory in (self._packages, self._staging, self._trash):
            make_directory(directory)
        self._empty_trash()
        remove_temporaries(self._packages)
        remove_temporaries(self._staging)
        for directory in sorted(self._packages.iterdir()):
            self._load_complete(directory)
        for directory in sorted(self._staging.iterdir()):
            self._load_staged(directory)

    def _load_complete(self, directory: Path) -> None:
        manifest = self._load_manifest(directory)
        if manifest is None or not self._tree_intact(manifest, directory / TREE_NAME):
            self._invalid(directory)
            return
        remove_tree(directory / CHUNKS_NAME)  # a crash between publish and chunk removal
        self._complete[manifest.package_id] = _Complete(manifest=manifest, directory=directory)

    def _load_staged(self, directory: Path) -> None:
        manifest = self._load_manifest(directory)
        newest = None if manifest is None else self._newest(manifest.name)
        if manifest is None or (newest is not None and manifest.version <= newest.version):
            self._invalid(directory)
            return
        previous = self._staged
        if previous is not None:
            if _newness(previous.manifest) >= _newness(manifest):
                self._invalid(directory)
                return
            self._invalid(previous.directory)
        signed = (directory / MANIFEST_NAME).read_bytes()
        staged = _Staged(manifest=manifest, signed=signed, directory=directory)
        remove_tree(directory / TREE_NAME)  # a crash during complete(): assembled again
        make_directory(directory / CHUNKS_NAME)
        staged.present = self._present_chunks(manifest, directory / CHUNKS_NAME)
        self._staged = staged

    def _load_manifest(self, directory: Path) -> Manifest | None:
        try:
            signed = (directory / MANIFEST_NAME).read_bytes()
            manifest = verify_manifest(signed, self._publisher_key, None)
        except (OSError, PackageError):
            return None
        return manifest if manifest.package_id == directory.name else None

    @staticmethod
    def _tree_intact(manifest: Manifest, tree: Path) -> bool:
        """Every file present as a regular file of the right size (hashes: at read time)."""
        for entry in manifest.files:
            path = tree / entry.path
            if path.is_symlink() or not path.is_file():
                return False
            if path.stat().st_size != entry.size_bytes:
                return False
        return True

    def _present_chunks(self, manifest: Manifest, chunks: Path) -> set[bytes]:
        lengths = {
            digest: manifest.chunk_length(entry, index)
            for entry in manifest.files
            for index, digest in enumerate(entry.chunk_sha256)
        }
        remove_temporaries(chunks)  # chunks a crash left half-written: fetched again
        present: set[bytes] = set()
        for path in sorted(chunks.iterdir()):
            digest = _digest_of_name(path.name)
            if digest is None or digest not in lengths or not path.is_file():
                self.refusals[Refusal.STRAY_FILE] += 1
                remove_tree(path)
            elif path.stat().st_size != lengths[digest]:
                self.refusals[Refusal.CORRUPT_ON_DISK] += 1
                path.unlink()
            else:
                present.add(digest)
        return present

    def _invalid(self, directory: Path) -> None:
        self.refusals[Refusal.INVALID_PACKAGE] += 1
        if self._staged is not None and self._staged.directory == directory:
            self._staged = None
        self._move_to_trash(directory)
        self._empty_trash()

    def _move_to_trash(self, directory: Path) -> None:
        slot = 0
        while (self._trash / f"{directory.name}.{slot}").exists():
            slot += 1
        directory.rename(self._trash / f"{directory.name}.{slot}")

    def _empty_trash(self) -> None:
        for entry in sorted(self._trash.iterdir()):
            remove_tree(entry)


class _CorruptChunkError(Exception):
    """A stored chunk no longer matches its hash (it was removed and marked missing)."""


def _newness(manifest: Manifest) -> tuple[int, tuple[int, ...], str]:
    """Greater is newer: later `created_s`, then higher version, then name (for ties)."""
    return (manifest.created_s, manifest.version, manifest.name)


def _digest_of_name(name: str) -> bytes | None:
    if len(name) != 64:
        return None
    try:
        return bytes.fromhex(name)
    except ValueError:
        return None
