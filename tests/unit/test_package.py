"""Boot package manifests: round trip, canonical bytes, signature, rollback, field checks."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.errors import PackageError, PackageRefusal
from actors.package import (
    CHUNK_BYTES_MIN,
    KIND,
    FileEntry,
    Manifest,
    chunk_ok,
    encode_manifest,
    entry_from_bytes,
    format_version,
    parse_version,
    sign_manifest,
    verify_manifest,
)
from actors.policy import Policy, sign_policy
from actors.signing import pack_body, public_key, sign_document

SECRET = bytes(range(32))
PUBLIC = public_key(SECRET)
OTHER_SECRET = bytes(range(1, 33))
CHUNK = CHUNK_BYTES_MIN
EFI_DATA = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(72))
"""2304 bytes without repeats: chunks of 1024, 1024 and 256 bytes, all different."""


def sample_manifest(version: tuple[int, ...] = (1, 0), name: str = "winpe") -> Manifest:
    files = (
        entry_from_bytes("undionly.kpxe", b"B" * 100, CHUNK),
        entry_from_bytes("efi/ipxe.efi", EFI_DATA, CHUNK),
        entry_from_bytes("empty.txt", b"", CHUNK),
    )
    return Manifest(
        name=name,
        version=version,
        created_s=1_700_000_000,
        files=files,
        boot_files={"efi64": "efi/ipxe.efi", "bios": "undionly.kpxe"},
        ipxe_script=None,
        chunk_bytes=CHUNK,
    )


def body_fields(manifest: Manifest) -> dict[str, Any]:
    fields: dict[str, Any] = msgpack.unpackb(encode_manifest(manifest), raw=False)
    return fields


def signed_fields(fields: dict[str, Any]) -> bytes:
    """Sign a hand-made body (bypassing `Manifest` construction) with the right key."""
    return sign_document(KIND, pack_body(fields), SECRET)


def refusal(signed: bytes, current: Manifest | None = None) -> PackageRefusal:
    with pytest.raises(PackageError) as caught:
        verify_manifest(signed, PUBLIC, current)
    return caught.value.reason


# --------------------------------------------------------------------------- strategies

COMPONENT = st.text(alphabet="abcxyzABC019_-.", min_size=1, max_size=8).filter(
    lambda text: text.strip(".") != ""
)
PATHS = st.lists(
    st.lists(COMPONENT, min_size=1, max_size=3).map("/".join), min_size=1, max_size=5
).filter(
    lambda paths: (
        len(set(paths)) == len(paths)
        and not any(other.startswith(path + "/") for path in paths for other in paths)
    )
)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    paths = draw(PATHS)
    files = tuple(
        entry_from_bytes(path, draw(st.binary(max_size=3 * CHUNK + 7)), CHUNK) for path in paths
    )
    arches = draw(st.lists(st.sampled_from(["bios", "efi32", "efi64", "arm64"]), unique=True))
    return Manifest(
        name=draw(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)),
        version=tuple(draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4))),
        created_s=draw(st.integers(0, 2**63 - 1)),
        files=files,
        boot_files={arch: draw(st.sampled_from(paths)) for arch in arches},
        ipxe_script=draw(st.none() | st.sampled_from(paths)),
        chunk_bytes=CHUNK,
    )


# --------------------------------------------------------------------------- round trip


@given(manifest=manifests())
@settings(max_examples=60, deadline=None)
def test_signed_manifest_round_trips(manifest: Manifest) -> None:
    """Signing then verifying gives back an equal manifest, with canonical bytes."""
    signed = sign_manifest(manifest, SECRET)
    assert verify_manifest(signed, PUBLIC, None) == manifest
    assert sign_manifest(verify_manifest(signed, PUBLIC, None), SECRET) == signed


def test_encoding_is_canonical_whatever_the_input_order() -> None:
    """File order and boot_files order given by the caller do not change the bytes."""
    manifest = sample_manifest()
    shuffled = Manifest(
        name=manifest.name,
        version=manifest.version,
        created_s=manifest.created_s,
        files=tuple(reversed(manifest.files)),
        boot_files=dict(reversed(list(manifest.boot_files.items()))),
        chunk_bytes=manifest.chunk_bytes,
    )
    assert encode_manifest(shuffled) == encode_manifest(manifest)
    assert [entry.path for entry in shuffled.files] == sorted(e.path for e in manifest.files)


def test_body_layout_is_pinned() -> None:
    """The body is a map with the documented keys, files as [path, size, sha256, chunks]."""
    fields = body_fields(sample_manifest())
    assert list(fields) == [
        "boot_files", "chunk_bytes", "created_s", "files", "format", "ipxe_script", "name",
        "version",
    ]  # fmt: skip
    assert fields["files"][0] == [
        "efi/ipxe.efi",
        2304,
        hashlib.sha256(EFI_DATA).digest(),
        [hashlib.sha256(EFI_DATA[i : i + CHUNK]).digest() for i in (0, 1024, 2048)],
    ]
    assert fields["format"] == 1
    assert fields["version"] == [1, 0]


# --------------------------------------------------------------------------- signature


def test_wrong_key_is_a_bad_signature() -> None:
    """A manifest signed by another key is refused as BAD_SIGNATURE."""
    signed = sign_manifest(sample_manifest(), OTHER_SECRET)
    assert refusal(signed) is PackageRefusal.BAD_SIGNATURE


@given(data=st.data())
@settings(max_examples=80, deadline=None)
def test_any_changed_byte_is_refused(data: st.DataObject) -> None:
    """Changing any one byte of a signed manifest makes it refused (never accepted)."""
    signed = bytearray(sign_manifest(sample_manifest(), SECRET))
    position = data.draw(st.integers(0, len(signed) - 1))
    signed[position] ^= data.draw(st.integers(1, 255))
    reason = refusal(bytes(signed))
    assert reason in {
        PackageRefusal.NOT_SIGNED,
        PackageRefusal.BAD_SIGNATURE,
        PackageRefusal.WRONG_KIND,
    }


def test_tampered_body_is_a_bad_signature() -> None:
    """A body changed after signing (a file's size doubled) fails the signature."""
    manifest = sample_manifest()
    good = sign_manifest(manifest, SECRET)
    frame = list(msgpack.unpackb(good, raw=False))
    fields = body_fields(manifest)
    fields["files"][1][1] = 200
    frame[3] = pack_body(fields)
    assert refusal(msgpack.packb(frame)) is PackageRefusal.BAD_SIGNATURE


def test_a_policy_is_not_a_manifest() -> None:
    """A validly signed policy offered as a manifest is refused as WRONG_KIND."""
    signed = sign_policy(Policy(version=1, created_s=0), SECRET)
    assert refusal(signed) is PackageRefusal.WRONG_KIND


@pytest.mark.parametrize(
    "signed",
    [
        b"",
        b"garbage",
        msgpack.packb({"name": "x"}),
        msgpack.packb(["peerpxe-signed", 1, "manifest", b"body"]),
        msgpack.packb(["peerpxe-signed", 2, "manifest", b"body", bytes(64)]),
        msgpack.packb(["peerpxe-signed", 1, "manifest", b"body", bytes(63)]),
        msgpack.packb(["other", 1, "manifest", b"body", bytes(64)]),
    ],
    ids=["empty", "text", "map", "no-signature", "format-2", "short-signature", "magic"],
)
def test_unsigned_input_is_not_signed(signed: bytes) -> None:
    """Bytes that are not a signed document are refused as NOT_SIGNED."""
    assert refusal(signed) is PackageRefusal.NOT_SIGNED


@given(data=st.binary(max_size=2000))
def test_garbage_raises_only_package_error(data: bytes) -> None:
    """Random bytes never crash verification: only PackageError escapes."""
    with pytest.raises(PackageError):
        verify_manifest(data, PUBLIC, None)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=40) | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=9),
    max_leaves=20,
)  # fmt: skip


@given(value=msgpack_values)
@settings(deadline=None)
def test_signed_garbage_raises_only_package_error(value: object) -> None:
    """Any authentic but arbitrary body is refused as MALFORMED, never a crash."""
    signed = sign_document(KIND, pack_body(value), SECRET)
    assert refusal(signed) is PackageRefusal.MALFORMED


@given(key=st.sampled_from(sorted(body_fields(sample_manifest()))), value=msgpack_values)
@settings(deadline=None)
def test_signed_manifest_with_one_bad_field_raises_only_package_error(
    key: str, value: object
) -> None:
    """Replacing one field of a valid body by any value is refused or still valid."""
    fields = body_fields(sample_manifest())
    fields[key] = value
    reason = None
    try:
        verify_manifest(signed_fields(fields), PUBLIC, None)
    except PackageError as error:
        reason = error.reason
    assert reason in {None, PackageRefusal.MALFORMED}


def test_bad_public_key_length_is_bad_key() -> None:
    """A public key of the wrong length is refused with BAD_KEY, not a crypto exception."""
    with pytest.raises(PackageError) as caught:
        verify_manifest(sign_manifest(sample_manifest(), SECRET), PUBLIC[:31], None)
    assert caught.value.reason is PackageRefusal.BAD_KEY


# --------------------------------------------------------------------------- rollback


@pytest.mark.parametrize(
    ("current", "candidate", "refused"),
    [
        ((1, 0), (1, 0), True),
        ((1, 1), (1, 0), True),
        ((2,), (1, 9, 9), True),
        ((1, 9), (1, 10), False),
        ((1, 0), (1, 0, 1), False),
        ((1, 0), (2,), False),
    ],
)
def test_rollback_is_refused_for_the_same_name(
    current: tuple[int, ...], candidate: tuple[int, ...], refused: bool
) -> None:
    """A version not newer than the current one of the same name is ROLLBACK."""
    signed = sign_manifest(sample_manifest(candidate), SECRET)
    held = sample_manifest(current)
    if refused:
        assert refusal(signed, held) is PackageRefusal.ROLLBACK
    else:
        assert verify_manifest(signed, PUBLIC, held).version == candidate


def test_another_name_is_not_a_rollback() -> None:
    """An older version of a different package is accepted."""
    signed = sign_manifest(sample_manifest((1,), name="linux"), SECRET)
    assert verify_manifest(signed, PUBLIC, sample_manifest((5,))).name == "linux"


# --------------------------------------------------------------------------- malformed


def entries_with(path: str = "a", size_bytes: int = 10, chunks: int = 1) -> dict[str, Any]:
    fields = body_fields(sample_manifest())
    fields["files"] = [[path, size_bytes, bytes(32), [bytes(32)] * chunks]]
    fields["boot_files"] = {}
    return fields


ONE_BYTE_FILE = ["a", 1, bytes(32), [bytes(32)]]
BAD_PATHS = [
    "../etc/passwd",
    "a/../../b",
    "..",
    "/etc/passwd",
    "boot\\bcd",
    "a\x00b",
    "",
    "a//b",
    "./a",
    "a/",
    "C:evil",
    "a/\x07b",
    "....",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_unsafe_paths_are_malformed(path: str) -> None:
    """A path with `..`, absolute, backslash, NUL or a non-normal form is MALFORMED."""
    assert refusal(signed_fields(entries_with(path=path))) is PackageRefusal.MALFORMED
    entry = FileEntry(path, 10, bytes(32), (bytes(32),))
    with pytest.raises(PackageError):
        Manifest(name="x", version=(1,), created_s=0, files=(entry,), chunk_bytes=CHUNK)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"files": [["a", -1, bytes(32), []]]}, "bad size"),
        ({"files": [["a", 10, bytes(32), []]]}, "expected 1"),
        ({"files": [["a", 2 * CHUNK + 1, bytes(32), [bytes(32)] * 2]]}, "expected 3"),
        ({"files": [["a", 0, bytes(32), [bytes(32)]]]}, "expected 0"),
        ({"files": [["a", 10, bytes(31), [bytes(32)]]]}, "sha256"),
        ({"files": [["a", 10, bytes(32), [bytes(33)]]]}, "chunk"),
        ({"files": [ONE_BYTE_FILE, ONE_BYTE_FILE]}, "twice"),
        ({"files": [ONE_BYTE_FILE, ["a/b", *ONE_BYTE_FILE[1:]]]}, "inside"),
        ({"files": [["a", True, bytes(32), [bytes(32)]]]}, "integer"),
        ({"boot_files": {"bios": "missing.kpxe"}}, "not in the package"),
        ({"boot_files": {"sparc": "a"}}, "unknown boot architecture"),
        ({"ipxe_script": "missing.ipxe"}, "not in the package"),
        ({"name": "../x"}, "name"),
        ({"name": ""}, "name"),
        ({"version": []}, "version"),
        ({"version": [-1]}, "version"),
        ({"version": [1, "2"]}, "version"),
        ({"created_s": -5}, "created_s"),
        ({"chunk_bytes": 0}, "chunk_bytes"),
        ({"chunk_bytes": 1 << 30}, "chunk_bytes"),
        ({"format": 2}, "format"),
    ],
)  # fmt: skip
def test_bad_fields_are_malformed(change: dict[str, Any], detail: str) -> None:
    """Each invalid field is refused as MALFORMED, with a detail that names it."""
    fields = entries_with()
    fields["files"] = [["a", 10, bytes(32), [bytes(32)]]]
    fields.update(change)
    with pytest.raises(PackageError) as caught:
        verify_manifest(signed_fields(fields), PUBLIC, None)
    assert caught.value.reason is PackageRefusal.MALFORMED
    assert detail in caught.value.detail


def test_missing_or_extra_keys_are_malformed() -> None:
    """A body without a key, or with an unknown one, is MALFORMED."""
    fields = body_fields(sample_manifest())
    del fields["created_s"]
    assert refusal(signed_fields(fields)) is PackageRefusal.MALFORMED
    fields = body_fields(sample_manifest())
    fields["zzz"] = 1
    assert refusal(signed_fields(fields)) is PackageRefusal.MALFORMED


def test_non_canonical_body_is_malformed() -> None:
    """The same fields in another encoding (unsorted files) are refused as MALFORMED."""
    fields = body_fields(sample_manifest())
    fields["files"] = list(reversed(fields["files"]))
    with pytest.raises(PackageError) as caught:
        verify_manifest(signed_fields(fields), PUBLIC, None)
    assert caught.value.reason is PackageRefusal.MALFORMED
    assert "canonical" in caught.value.detail


def test_non_minimal_integer_encoding_is_malformed() -> None:
    """An integer written in a longer msgpack form than needed breaks canonical form."""
    body = encode_manifest(sample_manifest())
    marker = msgpack.packb("chunk_bytes") + msgpack.packb(CHUNK)
    assert marker in body
    longer = msgpack.packb("chunk_bytes") + b"\xce" + CHUNK.to_bytes(4, "big")
    signed = sign_document(KIND, body.replace(marker, longer), SECRET)
    assert refusal(signed) is PackageRefusal.MALFORMED


# --------------------------------------------------------------------------- chunks


def test_chunk_ok_accepts_exactly_the_listed_chunks() -> None:
    """Every real chunk passes; a flipped, truncated, misplaced or unknown one fails."""
    manifest = sample_manifest()
    chunks = [EFI_DATA[0:1024], EFI_DATA[1024:2048], EFI_DATA[2048:]]
    for index, chunk in enumerate(chunks):
        assert chunk_ok(manifest, "efi/ipxe.efi", index, chunk)
    flipped = bytes([chunks[0][0] ^ 1]) + chunks[0][1:]
    assert not chunk_ok(manifest, "efi/ipxe.efi", 0, flipped)
    assert not chunk_ok(manifest, "efi/ipxe.efi", 0, chunks[0][:-1])
    assert not chunk_ok(manifest, "efi/ipxe.efi", 1, chunks[0])
    assert not chunk_ok(manifest, "efi/ipxe.efi", 3, b"")
    assert not chunk_ok(manifest, "efi/ipxe.efi", -1, chunks[2])
    assert not chunk_ok(manifest, "other.efi", 0, chunks[0])
    assert not chunk_ok(manifest, "empty.txt", 0, b"")


def test_entry_from_bytes_counts_chunks() -> None:
    """Chunk count is ceil(size / chunk_bytes); an empty file has none."""
    assert len(entry_from_bytes("a", b"", CHUNK).chunk_sha256) == 0
    assert len(entry_from_bytes("a", b"x" * CHUNK, CHUNK).chunk_sha256) == 1
    assert len(entry_from_bytes("a", b"x" * (CHUNK + 1), CHUNK).chunk_sha256) == 2
    assert entry_from_bytes("a", b"abc").sha256 == hashlib.sha256(b"abc").digest()


def test_package_id_and_totals() -> None:
    """The id is name-version; totals add up over files."""
    manifest = sample_manifest((1, 2, 3))
    assert manifest.package_id == "winpe-1.2.3"
    assert manifest.total_bytes == 100 + 2304
    assert manifest.chunk_count == 1 + 3


@pytest.mark.parametrize(
    ("text", "version"), [("7", (7,)), ("1.2.3", (1, 2, 3)), ("0.10", (0, 10))]
)
def test_parse_version(text: str, version: tuple[int, ...]) -> None:
    """Dotted decimal versions parse to tuples and format back."""
    assert parse_version(text) == version
    assert format_version(version) == text


@pytest.mark.parametrize("text", ["", "1.", ".1", "a", "1.-2", "01", "1.2.3.4.5.6.7.8.9", "²"])
def test_parse_version_refuses(text: str) -> None:
    """Anything but dotted decimals without leading zeros is refused."""
    with pytest.raises(ValueError, match="version"):
        parse_version(text)
