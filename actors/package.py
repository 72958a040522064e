"""Boot package manifests: what a package holds, its canonical bytes, signing, verification.

Theory of operation
-------------------
A boot package is a directory of files (`undionly.kpxe`, `ipxe.efi`, `boot.wim`, ...). Its
manifest names the package (`name`, `version`), says when the publisher built it
(`created_s`, Unix seconds), which file each firmware architecture boots (`boot_files`, plus
an optional `ipxe_script`), and lists every file with its size, SHA-256 and the SHA-256 of
each `chunk_bytes`-sized chunk, so a peer can verify every chunk it receives before it
stores it (DESIGN.md §4). The manifest is signed with the publisher's Ed25519 key
(`actors.signing`); agents refuse anything unsigned, tampered or not newer than what they
hold.

Life of a manifest, one arrow per function of this module::

    file chunks --entry_from_chunks--> FileEntry --Manifest(...)--> Manifest
    Manifest --sign_manifest(secret)--> signed bytes   (disk, network)
    signed bytes --verify_manifest(public, current)--> Manifest        accepted
                                                   `--> PackageError    refused, with reason

`verify_manifest` trusts nothing before the signature: framing, kind and signature first
(NOT_SIGNED, WRONG_KIND, BAD_SIGNATURE), then every field (MALFORMED), then freshness
(ROLLBACK: the version must be newer than `current`'s when the name is the same). A decoded
manifest must re-encode to exactly the signed body, so one manifest has one signed form.

Body layout (msgpack map; keys in this order, which is sorted)::

    {"boot_files": {arch: path}, "chunk_bytes": int, "created_s": int,
     "files": [[path, size_bytes, sha256: bin(32), [chunk_sha256: bin(32), ...]], ...],
     "format": 1, "ipxe_script": path | nil, "name": str, "version": [int, ...]}

Files are sorted by path. Paths are `/`-separated and relative: no `..`, no leading `/`, no
backslash, NUL or control characters, and nothing the TFTP path rules
(`actors.boot.tftp_paths`) would rewrite or refuse, so every listed file can be served as
named. A `Manifest` object is valid by construction: `__post_init__` refuses bad fields.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from actors.boot.tftp_paths import PathRefusal, validate_read_path
from actors.errors import PackageError, PackageRefusal
from actors.signing import open_document, pack_body, sign_document, unpack_body

KIND: Final = "manifest"
MANIFEST_FORMAT: Final = 1
CHUNK_BYTES_DEFAULT: Final = 1024 * 1024
CHUNK_BYTES_MIN: Final = 1024
CHUNK_BYTES_MAX: Final = 16 * 1024 * 1024
SHA256_BYTES: Final = 32  # FIPS 180-4 §6.2: SHA-256 digests are 256 bits
FILES_MAX: Final = 100_000
FILE_BYTES_MAX: Final = 1 << 40
VERSION_PARTS_MAX: Final = 8
VERSION_PART_MAX: Final = (1 << 32) - 1
CREATED_S_MAX: Final = (1 << 63) - 1
BOOT_ARCHES: Final = ("bios", "efi32", "efi64", "arm64")
"""Architecture keys of `boot_files` (DESIGN.md §3: option 93 values 0, 6, 7/9, 11)."""
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Package names: safe as one directory name, at most 64 characters."""

Version = tuple[int, ...]
"""A package version: compared as a tuple, written `1.2.3`."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a package: its relative path, size, SHA-256 and per-chunk SHA-256."""

    path: str
    size_bytes: int
    sha256: bytes
    chunk_sha256: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Manifest:
    """A boot package's signed description; construction refuses invalid fields."""

    name: str
    version: Version
    created_s: int
    files: tuple[FileEntry, ...]
    boot_files: dict[str, str] = field(default_factory=dict)
    ipxe_script: str | None = None
    chunk_bytes: int = CHUNK_BYTES_DEFAULT
    _by_path: dict[str, FileEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        files = tuple(sorted(self.files, key=lambda entry: entry.path))
        object.__setattr__(self, "files", files)
        object.__setattr__(self, "boot_files", dict(sorted(self.boot_files.items())))
        object.__setattr__(self, "_by_path", {entry.path: entry for entry in files})
        _check_manifest(self)

    @property
    def package_id(self) -> str:
        """`<name>-<version>`: unique per package version, safe as a directory name."""
        return f"{self.name}-{format_version(self.version)}"

    @property
    def total_bytes(self) -> int:
        """Sum of the sizes of every file."""
        return sum(entry.size_bytes for entry in self.files)

    @property
    def chunk_count(self) -> int:
        """Number of chunks over all files."""
        return sum(len(entry.chunk_sha256) for entry in self.files)

    def file(self, path: str) -> FileEntry | None:
        """The entry for `path`, or None if the package has no such file."""
        return self._by_path.get(path)

    def chunk_length(self, entry: FileEntry, index: int) -> int:
        """Bytes in chunk `index` of `entry` (the last chunk may be short)."""
        assert 0 <= index < len(entry.chunk_sha256)
        return min(self.chunk_bytes, entry.size_bytes - index * self.chunk_bytes)


def parse_version(text: str) -> Version:
    """`"1.2.3"` -> `(1, 2, 3)`; `ValueError` for anything else."""
    parts = text.split(".")
    if not 0 < len(parts) <= VERSION_PARTS_MAX or not all(_is_decimal(part) for part in parts):
        raise ValueError(f"expected a version like 7 or 1.2.3, got {text!r}")
    version = tuple(int(part) for part in parts)
    if max(version) > VERSION_PART_MAX:
        raise ValueError(f"version parts must be at most {VERSION_PART_MAX}, got {text!r}")
    return version


def format_version(version: Version) -> str:
    """`(1, 2, 3)` -> `"1.2.3"`."""
    return ".".join(str(part) for part in version)


def entry_from_chunks(path: str, chunks: Iterable[bytes], chunk_bytes: int) -> FileEntry:
    """Hash a file given as consecutive chunks (each `chunk_bytes` long but the last)."""
    whole = hashlib.sha256()
    hashes: list[bytes] = []
    size_bytes = 0
    short_seen = False
    for chunk in chunks:
        assert not short_seen, "only the last chunk may be short"
        assert 0 < len(chunk) <= chunk_bytes
        short_seen = len(chunk) < chunk_bytes
        whole.update(chunk)
        hashes.append(hashlib.sha256(chunk).digest())
        size_bytes += len(chunk)
    return FileEntry(path, size_bytes, whole.digest(), tuple(hashes))


def entry_from_bytes(path: str, data: bytes, chunk_bytes: int = CHUNK_BYTES_DEFAULT) -> FileEntry:
    """Hash a file held in memory."""
    chunks = (data[offset : offset + chunk_bytes] for offset in range(0, len(data), chunk_bytes))
    return entry_from_chunks(path, chunks, chunk_bytes)


def chunk_ok(manifest: Manifest, path: str, index: int, data: bytes) -> bool:
    """True when `data` is exactly chunk `index` of file `path` of `manifest`."""
    entry = manifest.file(path)
    if entry is None or not 0 <= index < len(entry.chunk_sha256):
        return False
    if len(data) != manifest.chunk_length(entry, index):
        return False
    return hashlib.sha256(data).digest() == entry.chunk_sha256[index]


def encode_manifest(manifest: Manifest) -> bytes:
    """The canonical body bytes of `manifest` (what is signed)."""
    return pack_body(
        {
            "boot_files": manifest.boot_files,
            "chunk_bytes": manifest.chunk_bytes,
            "created_s": manifest.created_s,
            "files": [
                [entry.path, entry.size_bytes, entry.sha256, list(entry.chunk_sha256)]
                for entry in manifest.files
            ],
            "format": MANIFEST_FORMAT,
            "ipxe_script": manifest.ipxe_script,
            "name": manifest.name,
            "version": list(manifest.version),
        }
    )


def sign_manifest(manifest: Manifest, secret_key: bytes) -> bytes:
    """The signed form of `manifest`, ready to publish."""
    return sign_document(KIND, encode_manifest(manifest), secret_key)


def verify_manifest(
    signed_bytes: bytes, publisher_public_key: bytes, current: Manifest | None
) -> Manifest:
    """The manifest in `signed_bytes` if authentic, valid and newer than `current`.

    Raises:
        PackageError: with `reason` NOT_SIGNED, WRONG_KIND, BAD_SIGNATURE, MALFORMED,
            ROLLBACK or BAD_KEY; nothing else escapes, whatever the bytes.
    """
    manifest = decode_manifest(open_document(KIND, signed_bytes, publisher_public_key))
    refuse_rollback(manifest, current)
    return manifest


def refuse_rollback(manifest: Manifest, current: Manifest | None) -> None:
    """ROLLBACK unless `manifest` is newer than `current` or names another package."""
    if current is None or current.name != manifest.name:
        return
    if manifest.version <= current.version:
        raise PackageError(
            PackageRefusal.ROLLBACK, f"{manifest.package_id} is not newer than {current.package_id}"
        )


_MANIFEST_KEYS: Final = (
    "boot_files",
    "chunk_bytes",
    "created_s",
    "files",
    "format",
    "ipxe_script",
    "name",
    "version",
)


def decode_manifest(body: bytes) -> Manifest:
    """Decode an authentic manifest body; MALFORMED unless valid and in canonical form."""
    fields = unpack_body(body)
    expected = _MANIFEST_KEYS
    if tuple(fields) != expected:
        raise _malformed(f"manifest keys are {sorted(fields)}, expected {list(expected)}")
    if _integer(fields["format"], "format") != MANIFEST_FORMAT:
        raise _malformed(f"unsupported manifest format {fields['format']!r}")
    manifest = Manifest(
        name=_text(fields["name"], "name"),
        version=tuple(_integer(part, "version") for part in _items(fields["version"], "version")),
        created_s=_integer(fields["created_s"], "created_s"),
        files=tuple(_file_entry(item) for item in _items(fields["files"], "files")),
        boot_files=_boot_files(fields["boot_files"]),
        ipxe_script=None
        if fields["ipxe_script"] is None
        else _text(fields["ipxe_script"], "ipxe_script"),
        chunk_bytes=_integer(fields["chunk_bytes"], "chunk_bytes"),
    )
    if encode_manifest(manifest) != body:
        raise _malformed("manifest is not in canonical form")
    return manifest


def check_package_path(path: str) -> str | None:
    """Why `path` may not name a file of a package, or None when it may."""
    if not path:
        return "empty path"
    if "\x00" in path:
        return "NUL in path"
    if "\\" in path:
        return "backslash in path"
    if path.startswith("/"):
        return "absolute path"
    if any(component.strip(". ") == "" for component in path.split("/") if component):
        return "'..' or dots-only component"
    normalised = validate_read_path(path)
    if isinstance(normalised, PathRefusal):
        return normalised.value
    if normalised != path:
        return f"path is not in normal form (served as {normalised!r})"
    return None


# --------------------------------------------------------------------------- validation


def _check_manifest(manifest: Manifest) -> None:
    if not NAME_PATTERN.fullmatch(manifest.name):
        raise _malformed(f"bad package name {manifest.name!r}")
    _check_version(manifest.version)
    if not _is_int(manifest.created_s) or not 0 <= manifest.created_s <= CREATED_S_MAX:
        raise _malformed(f"created_s out of range: {manifest.created_s!r}")
    if not _is_int(manifest.chunk_bytes):
        raise _malformed(f"chunk_bytes is not an integer: {manifest.chunk_bytes!r}")
    if not CHUNK_BYTES_MIN <= manifest.chunk_bytes <= CHUNK_BYTES_MAX:
        raise _malformed(f"chunk_bytes out of range: {manifest.chunk_bytes}")
    if len(manifest.files) > FILES_MAX:
        raise _malformed(f"more than {FILES_MAX} files")
    for entry in manifest.files:
        _check_entry(entry, manifest.chunk_bytes)
    _check_paths_distinct(manifest)
    _check_boot_files(manifest)


def _check_version(version: Version) -> None:
    if not 0 < len(version) <= VERSION_PARTS_MAX:
        raise _malformed(f"version must have 1 to {VERSION_PARTS_MAX} parts: {version!r}")
    if not all(_is_int(part) and 0 <= part <= VERSION_PART_MAX for part in version):
        raise _malformed(f"version parts must be integers 0..{VERSION_PART_MAX}: {version!r}")


def _check_entry(entry: FileEntry, chunk_bytes: int) -> None:
    problem = check_package_path(entry.path)
    if problem is not None:
        raise _malformed(f"file {entry.path!r}: {problem}")
    if not _is_int(entry.size_bytes) or not 0 <= entry.size_bytes <= FILE_BYTES_MAX:
        raise _malformed(f"file {entry.path!r}: bad size {entry.size_bytes!r}")
    if not _is_digest(entry.sha256):
        raise _malformed(f"file {entry.path!r}: sha256 is not {SHA256_BYTES} bytes")
    expected_chunks = -(-entry.size_bytes // chunk_bytes)
    if len(entry.chunk_sha256) != expected_chunks:
        raise _malformed(
            f"file {entry.path!r}: {len(entry.chunk_sha256)} chunk hashes for"
            f" {entry.size_bytes} bytes, expected {expected_chunks}"
        )
    if not all(_is_digest(digest) for digest in entry.chunk_sha256):
        raise _malformed(f"file {entry.path!r}: a chunk hash is not {SHA256_BYTES} bytes")


def _check_paths_distinct(manifest: Manifest) -> None:
    if len(manifest._by_path) != len(manifest.files):
        raise _malformed("a path is listed twice")
    for entry in manifest.files:
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in manifest._by_path:
                raise _malformed(f"file {entry.path!r} is inside another listed file")


def _check_boot_files(manifest: Manifest) -> None:
    for arch, path in manifest.boot_files.items():
        if arch not in BOOT_ARCHES:
            raise _malformed(f"unknown boot architecture {arch!r} (known: {BOOT_ARCHES})")
        if manifest.file(path) is None:
            raise _malformed(f"boot file for {arch} ({path!r}) is not in the package")
    script = manifest.ipxe_script
    if script is not None and manifest.file(script) is None:
        raise _malformed(f"ipxe_script {script!r} is not in the package")


# --------------------------------------------------------------------------- decoding helpers


def _malformed(detail: str) -> PackageError:
    return PackageError(PackageRefusal.MALFORMED, detail)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_decimal(text: str) -> bool:
    return text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0"))


def _is_digest(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == SHA256_BYTES


def _integer(value: object, name: str) -> int:
    if not _is_int(value):
        raise _malformed(f"{name}: expected an integer, got {type(value).__name__}")
    assert isinstance(value, int)
    return value


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise _malformed(f"{name}: expected a string, got {type(value).__name__}")
    return value


def _items(value: object, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise _malformed(f"{name}: expected an array, got {type(value).__name__}")
    return value


def _digest(value: object, name: str) -> bytes:
    if not _is_digest(value):
        raise _malformed(f"{name}: expected {SHA256_BYTES} bytes")
    assert isinstance(value, bytes)
    return value


def _file_entry(item: object) -> FileEntry:
    fields = _items(item, "files[]")
    if len(fields) != 4:
        raise _malformed("a file is not [path, size_bytes, sha256, chunk_sha256]")
    path = _text(fields[0], "file path")
    return FileEntry(
        path=path,
        size_bytes=_integer(fields[1], f"{path}: size_bytes"),
        sha256=_digest(fields[2], f"{path}: sha256"),
        chunk_sha256=tuple(_digest(digest, f"{path}: chunk") for digest in _items(fields[3], path)),
    )


def _boot_files(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _malformed("boot_files: expected a map")
    return {
        _text(arch, "boot_files key"): _text(path, f"boot_files.{arch}")
        for arch, path in value.items()
    }
