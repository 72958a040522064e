"""A package directory on the publisher's disk: scan it into a manifest, or check it against one.

`scan_directory` walks the directory in sorted order and returns the files to package. It
refuses what a boot package cannot hold: symbolic links that lead outside the directory,
symbolic links to directories (a loop or a second name for the same files), FIFOs, devices
and sockets, and names the serving rules would refuse (`actors.package.check_package_path`).
A symbolic link to a file inside the directory is packaged as a regular file with the
target's content.

`build_manifest` hashes every file chunk by chunk (nothing larger than one chunk is held in
memory); `check_tree` re-reads a directory and lists every difference from a manifest.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from actors.package import (
    CHUNK_BYTES_DEFAULT,
    FileEntry,
    Manifest,
    Version,
    check_package_path,
    chunk_ok,
    entry_from_chunks,
)


class PackageDirectoryError(Exception):
    """The directory cannot be packaged as it is; the message names the file."""


@dataclass(frozen=True, slots=True)
class PackageFile:
    """One file to package: its path in the package and where its content is read from."""

    path: str
    source: Path


def scan_directory(directory: Path) -> list[PackageFile]:
    """Every file under `directory`, sorted by package path; refuse what cannot be packaged."""
    try:
        root = directory.resolve(strict=True)
    except OSError as error:
        raise PackageDirectoryError(f"{directory}: {error.strerror or error}") from None
    if not root.is_dir():
        raise PackageDirectoryError(f"{directory} is not a directory")
    found: list[PackageFile] = []
    for current, directories, names in os.walk(root, followlinks=False):
        directories.sort()
        for name in directories:
            _refuse_linked_directory(root, Path(current) / name)
        found.extend(_package_file(root, Path(current) / name) for name in sorted(names))
    return sorted(found, key=lambda item: item.path)


def build_manifest(
    files: list[PackageFile],
    *,
    name: str,
    version: Version,
    created_s: int,
    boot_files: Mapping[str, str],
    ipxe_script: str | None,
    chunk_bytes: int = CHUNK_BYTES_DEFAULT,
) -> Manifest:
    """Hash `files` into a manifest (raises `PackageError` MALFORMED for invalid fields)."""
    entries = [_hash_file(item, chunk_bytes) for item in files]
    return Manifest(
        name=name,
        version=version,
        created_s=created_s,
        files=tuple(entries),
        boot_files=dict(boot_files),
        ipxe_script=ipxe_script,
        chunk_bytes=chunk_bytes,
    )


def check_tree(manifest: Manifest, directory: Path) -> list[str]:
    """Every way the files under `directory` differ from `manifest` (empty: they match)."""
    root = directory.resolve()
    problems: list[str] = []
    for entry in manifest.files:
        problem = _file_problem(manifest, entry, root)
        if problem is not None:
            problems.append(f"{entry.path}: {problem}")
    return problems


def unlisted_files(manifest: Manifest, directory: Path) -> list[str]:
    """Paths of regular files under `directory` that `manifest` does not list."""
    root = directory.resolve()
    unlisted = []
    for current, _, names in os.walk(root):
        for name in names:
            path = (Path(current) / name).relative_to(root).as_posix()
            if manifest.file(path) is None:
                unlisted.append(path)
    return sorted(unlisted)


def publication_time_s() -> int:
    """`created_s` for a new manifest or policy: now, or `SOURCE_DATE_EPOCH` when set."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None:
        return int(time.time())
    if not epoch.isascii() or not epoch.isdigit():
        raise ValueError(f"SOURCE_DATE_EPOCH must be a whole number of seconds, got {epoch!r}")
    return int(epoch)


# --------------------------------------------------------------------------- helpers


def _refuse_linked_directory(root: Path, path: Path) -> None:
    if not path.is_symlink():
        return
    target = path.resolve()
    where = "outside the package directory" if not target.is_relative_to(root) else "a directory"
    raise PackageDirectoryError(
        f"{path} is a symbolic link to {where} ({target}); copy the files instead"
    )


def _package_file(root: Path, path: Path) -> PackageFile:
    relative = path.relative_to(root).as_posix()
    source = path
    if path.is_symlink():
        source = path.resolve()
        if not source.is_relative_to(root):
            raise PackageDirectoryError(
                f"{path} is a symbolic link outside the package directory ({source})"
            )
    if not source.is_file():
        raise PackageDirectoryError(f"{path} is not a regular file (or a link to one)")
    problem = check_package_path(relative)
    if problem is not None:
        raise PackageDirectoryError(f"{path}: cannot be served under this name: {problem}")
    return PackageFile(path=relative, source=source)


def _hash_file(item: PackageFile, chunk_bytes: int) -> FileEntry:
    try:
        with item.source.open("rb") as handle:
            return entry_from_chunks(item.path, _read_chunks(handle, chunk_bytes), chunk_bytes)
    except OSError as error:
        raise PackageDirectoryError(f"{item.source}: {error.strerror or error}") from None


def _read_chunks(handle: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    while chunk := handle.read(chunk_bytes):
        yield chunk


def _file_problem(manifest: Manifest, entry: FileEntry, root: Path) -> str | None:
    path = root / entry.path
    if not path.resolve().is_relative_to(root):
        return "a symbolic link leads outside the directory"
    if not path.is_file():
        return "missing (or not a regular file)"
    size_bytes = path.stat().st_size
    if size_bytes != entry.size_bytes:
        return f"size is {size_bytes} bytes, the manifest says {entry.size_bytes}"
    whole = hashlib.sha256()
    bad = []
    with path.open("rb") as handle:
        for index, chunk in enumerate(_read_chunks(handle, manifest.chunk_bytes)):
            whole.update(chunk)
            if not chunk_ok(manifest, entry.path, index, chunk):
                bad.append(index)
    if bad:
        shown = ", ".join(str(index) for index in bad[:10])
        return f"{len(bad)} chunk(s) do not match the manifest (index {shown})"
    if whole.digest() != entry.sha256:
        return "sha256 of the whole file does not match the manifest"
    return None
