"""The on-disk content store: verify before write, crash safety, resume, quota, collect."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from actors.bitfield import Bitfield
from actors.core import ChunksHeld, ManifestAccepted, PackageComplete
from actors.errors import PackageError, PackageRefusal
from actors.package import (
    CHUNK_BYTES_MIN,
    FileEntry,
    Manifest,
    entry_from_bytes,
    sign_manifest,
)
from actors.signing import public_key
from transport.content_store import (
    ChunkWrite,
    ContentStore,
    ContentStoreError,
    QuotaExceeded,
    Refusal,
)
from transport.durable import TEMP_PREFIX
from transport.shared_store import SharedStore

REPO = Path(__file__).resolve().parents[2]
SECRET = bytes(range(32))
PUBLIC = public_key(SECRET)
CHUNK = CHUNK_BYTES_MIN
QUOTA = 10 * 1024 * 1024


def content(seed: str, size_bytes: int) -> bytes:
    """Deterministic, non-repeating bytes (so no two chunks are equal by accident)."""
    blocks = (hashlib.sha256(f"{seed}:{n}".encode()).digest() for n in range(size_bytes // 32 + 1))
    return b"".join(blocks)[:size_bytes]


def package_files(version: int) -> dict[str, bytes]:
    return {
        "undionly.kpxe": content(f"bios{version}", 3 * CHUNK + 100),
        "efi/ipxe.efi": content(f"efi{version}", 2 * CHUNK),
        "boot/empty.cfg": b"",
    }


def make_package(
    version: int = 1, name: str = "winpe", files: dict[str, bytes] | None = None
) -> tuple[Manifest, bytes, dict[str, bytes]]:
    files = package_files(version) if files is None else files
    manifest = Manifest(
        name=name,
        version=(version,),
        created_s=1_700_000_000 + version,
        files=tuple(entry_from_bytes(path, data, CHUNK) for path, data in files.items()),
        boot_files={"bios": "undionly.kpxe"} if "undionly.kpxe" in files else {},
        chunk_bytes=CHUNK,
    )
    return manifest, sign_manifest(manifest, SECRET), files


def chunk(files: dict[str, bytes], path: str, index: int) -> bytes:
    return files[path][index * CHUNK : (index + 1) * CHUNK]


def fill(store: ContentStore, files: dict[str, bytes], skip: int = 0) -> None:
    for path, index in store.missing_chunks()[skip:]:
        assert store.write_chunk(path, index, chunk(files, path, index)) is ChunkWrite.STORED


def open_store(root: Path, quota_bytes: int = QUOTA) -> ContentStore:
    return ContentStore(root, quota_bytes, PUBLIC)


def install(store: ContentStore, version: int, name: str = "winpe") -> Manifest:
    manifest, signed, files = make_package(version, name)
    store.begin(signed)
    fill(store, files)
    assert store.complete()
    return manifest


def visible_files(root: Path) -> list[Path]:
    return sorted(path for path in (root / "packages").rglob("*") if path.is_file())


def assert_nothing_corrupt(root: Path) -> None:
    """No temporaries anywhere; every stored chunk's content hashes to its name."""
    assert not [path for path in root.rglob("*") if path.name.startswith(TEMP_PREFIX)]
    for path in (root / "staging").glob("*/chunks/*"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name


# --------------------------------------------------------------------------- the happy path


def test_fetch_assemble_and_serve(tmp_path: Path) -> None:
    """Chunks in any order make a complete package whose tree holds exactly the files."""
    store = open_store(tmp_path)
    manifest, signed, files = make_package()
    assert store.begin(signed) == manifest
    assert store.served_root() is None
    todo = store.missing_chunks()
    assert len(todo) == manifest.chunk_count == 6
    random.Random(4).shuffle(todo)
    for path, index in todo:
        assert visible_files(tmp_path) == []
        assert store.write_chunk(path, index, chunk(files, path, index)) is ChunkWrite.STORED
    assert store.missing_chunks() == []
    assert store.complete()
    assert store.current() == manifest
    assert store.staged() is None
    served = store.served_root()
    assert served == tmp_path / "packages" / "winpe-1" / "tree"
    for path, data in files.items():
        assert (served / path).read_bytes() == data
    assert not (tmp_path / "packages" / "winpe-1" / "chunks").exists()
    assert store.read_chunk("undionly.kpxe", 3) == files["undionly.kpxe"][3 * CHUNK :]
    assert store.read_chunk("efi/ipxe.efi", 2) is None
    assert store.read_chunk("nope", 0) is None


def test_complete_waits_for_missing_chunks(tmp_path: Path) -> None:
    """complete() is False, and nothing is visible, while a chunk is missing."""
    store = open_store(tmp_path)
    _, signed, files = make_package()
    store.begin(signed)
    fill(store, files, skip=1)
    assert len(store.missing_chunks()) == 1
    assert not store.complete()
    assert store.current() is None
    assert visible_files(tmp_path) == []


def test_staged_chunks_can_be_served_to_peers(tmp_path: Path) -> None:
    """Stored chunks of the staged package are readable by its id; missing ones are not."""
    store = open_store(tmp_path)
    manifest, signed, files = make_package()
    store.begin(signed)
    store.write_chunk("efi/ipxe.efi", 1, chunk(files, "efi/ipxe.efi", 1))
    assert store.read_chunk("efi/ipxe.efi", 1, manifest.package_id) == chunk(
        files, "efi/ipxe.efi", 1
    )
    assert store.read_chunk("efi/ipxe.efi", 0, manifest.package_id) is None
    assert store.read_chunk("efi/ipxe.efi", 1) is None  # no current package yet


def test_identical_chunks_are_stored_once(tmp_path: Path) -> None:
    """Two files with the same content share chunks: one write fills both."""
    same = content("same", CHUNK)
    _, signed, _ = make_package(files={"a.bin": same, "b.bin": same})
    store = open_store(tmp_path)
    store.begin(signed)
    assert store.write_chunk("a.bin", 0, same) is ChunkWrite.STORED
    assert store.write_chunk("b.bin", 0, same) is ChunkWrite.DUPLICATE
    assert store.missing_chunks() == []
    assert store.complete()
    assert (store.served_root() or tmp_path).joinpath("b.bin").read_bytes() == same


# --------------------------------------------------------------------------- refusals


def test_tampered_chunk_is_refused_counted_and_never_written(tmp_path: Path) -> None:
    """A chunk that differs from the manifest is refused before any byte reaches the disk."""
    store = open_store(tmp_path)
    _, signed, files = make_package()
    store.begin(signed)
    good = chunk(files, "undionly.kpxe", 0)
    tampered = bytes([good[0] ^ 0x80]) + good[1:]
    assert store.write_chunk("undionly.kpxe", 0, tampered) is ChunkWrite.REFUSED
    assert store.write_chunk("undionly.kpxe", 0, good[:-1]) is ChunkWrite.REFUSED
    assert store.write_chunk("undionly.kpxe", 9, good) is ChunkWrite.REFUSED
    assert store.write_chunk("../../etc/passwd", 0, good) is ChunkWrite.REFUSED
    assert store.refusals[Refusal.BAD_HASH] == 2
    assert store.refusals[Refusal.BAD_INDEX] == 1
    assert store.refusals[Refusal.UNKNOWN_FILE] == 1
    assert store.refused_chunks == 4
    assert list((tmp_path / "staging" / "winpe-1" / "chunks").iterdir()) == []
    assert ("undionly.kpxe", 0) in store.missing_chunks()
    assert store.write_chunk("undionly.kpxe", 0, good) is ChunkWrite.STORED
    assert store.write_chunk("undionly.kpxe", 0, good) is ChunkWrite.DUPLICATE
    assert store.refused_chunks == 4


def test_write_without_begin_is_an_error(tmp_path: Path) -> None:
    """Writing or completing with nothing staged is local misuse: ContentStoreError."""
    store = open_store(tmp_path)
    with pytest.raises(ContentStoreError, match="begin"):
        store.write_chunk("a", 0, b"x")
    with pytest.raises(ContentStoreError, match="begin"):
        store.complete()


def test_begin_refuses_bad_manifests(tmp_path: Path) -> None:
    """Unsigned, foreign-key and rolled-back manifests are refused and nothing is staged."""
    store = open_store(tmp_path)
    manifest, signed, _ = make_package(2)
    with pytest.raises(PackageError) as caught:
        store.begin(signed[:-1] + bytes([signed[-1] ^ 1]))
    assert caught.value.reason is PackageRefusal.BAD_SIGNATURE
    with pytest.raises(PackageError):
        store.begin(sign_manifest(manifest, bytes(32)))
    assert store.staged() is None
    install(store, 2)
    for version in (1, 2):
        with pytest.raises(PackageError) as caught:
            store.begin(make_package(version)[1])
        assert caught.value.reason is PackageRefusal.ROLLBACK
    assert store.staged() is None


def test_corrupted_stored_chunk_is_caught_at_assembly(tmp_path: Path) -> None:
    """A stored chunk altered on disk (same size) fails complete(), becomes missing again."""
    store = open_store(tmp_path)
    _, signed, files = make_package()
    store.begin(signed)
    fill(store, files)
    digest = hashlib.sha256(chunk(files, "efi/ipxe.efi", 1)).hexdigest()
    chunk_path = tmp_path / "staging" / "winpe-1" / "chunks" / digest
    chunk_path.write_bytes(bytes(CHUNK))
    assert not store.complete()
    assert store.refusals[Refusal.CORRUPT_ON_DISK] == 1
    assert store.missing_chunks() == [("efi/ipxe.efi", 1)]
    assert visible_files(tmp_path) == []
    assert not (tmp_path / "staging" / "winpe-1" / "tree").exists()
    fill(store, files)
    assert store.complete()


def test_altered_served_file_is_not_served_to_peers(tmp_path: Path) -> None:
    """read_chunk re-verifies: a tree file altered after publish yields None and a count."""
    store = open_store(tmp_path)
    install(store, 1)
    served = store.served_root()
    assert served is not None
    target = served / "efi" / "ipxe.efi"
    data = bytearray(target.read_bytes())
    data[5] ^= 1
    target.write_bytes(bytes(data))
    assert store.read_chunk("efi/ipxe.efi", 0) is None
    assert store.refusals[Refusal.CORRUPT_ON_DISK] == 1
    assert store.read_chunk("efi/ipxe.efi", 1) is not None


def test_manifest_whose_chunks_disagree_with_file_hash(tmp_path: Path) -> None:
    """A signed manifest with a wrong whole-file sha256 never publishes; it is discarded."""
    data = content("x", CHUNK + 5)
    good = entry_from_bytes("a.bin", data, CHUNK)
    bad = FileEntry(good.path, good.size_bytes, bytes(32), good.chunk_sha256)
    manifest = Manifest(name="p", version=(1,), created_s=1, files=(bad,), chunk_bytes=CHUNK)
    store = open_store(tmp_path)
    store.begin(sign_manifest(manifest, SECRET))
    fill(store, {"a.bin": data})
    with pytest.raises(ContentStoreError, match="inconsistent"):
        store.complete()
    assert store.staged() is None
    assert store.current() is None
    assert visible_files(tmp_path) == []


def test_invalid_package_on_disk_is_dropped_on_start(tmp_path: Path) -> None:
    """A complete package whose manifest or files were tampered with is not loaded."""
    store = open_store(tmp_path)
    install(store, 1, name="one")
    install(store, 1, name="two")
    manifest_path = tmp_path / "packages" / "one-1" / "manifest.signed"
    manifest_path.write_bytes(manifest_path.read_bytes()[:-1] + b"\x00")
    (tmp_path / "packages" / "two-1" / "tree" / "undionly.kpxe").write_bytes(b"short")
    reopened = open_store(tmp_path)
    assert reopened.current() is None
    assert reopened.refusals[Refusal.INVALID_PACKAGE] == 2
    assert list((tmp_path / "packages").iterdir()) == []


# --------------------------------------------------------------------------- crash and resume


def test_resume_after_restart_fetches_only_missing_chunks(tmp_path: Path) -> None:
    """A restarted store knows which chunks it has; only the others are missing."""
    store = open_store(tmp_path)
    manifest, signed, files = make_package()
    store.begin(signed)
    done = store.missing_chunks()[:4]
    for path, index in done:
        store.write_chunk(path, index, chunk(files, path, index))
    reopened = open_store(tmp_path)
    assert reopened.staged() == manifest
    remaining = reopened.missing_chunks()
    assert remaining == store.missing_chunks()
    assert len(remaining) == 2
    assert not set(done) & set(remaining)
    assert reopened.begin(signed) == manifest  # same manifest: resumed, not restarted
    assert reopened.missing_chunks() == remaining
    fill(reopened, files)
    assert reopened.complete()


def test_leftover_temporaries_and_truncated_chunks_are_removed(tmp_path: Path) -> None:
    """What a crash (or a bad disk) leaves in the chunk folder is cleaned on start."""
    store = open_store(tmp_path)
    _, signed, files = make_package()
    store.begin(signed)
    fill(store, files, skip=2)
    chunks = tmp_path / "staging" / "winpe-1" / "chunks"
    (chunks / f"{TEMP_PREFIX}abc").write_bytes(b"half a chunk")
    truncated = hashlib.sha256(chunk(files, "undionly.kpxe", 1)).hexdigest()
    (chunks / truncated).write_bytes(chunk(files, "undionly.kpxe", 1)[:100])
    (chunks / "stray.txt").write_bytes(b"?")
    reopened = open_store(tmp_path)
    assert reopened.refusals[Refusal.CORRUPT_ON_DISK] == 1
    assert reopened.refusals[Refusal.STRAY_FILE] == 1
    kept = [("undionly.kpxe", 0), ("undionly.kpxe", 2), ("undionly.kpxe", 3)]
    assert sorted(path.name for path in chunks.iterdir()) == sorted(
        hashlib.sha256(chunk(files, path, index)).hexdigest() for path, index in kept
    )
    assert reopened.missing_chunks() == [
        ("efi/ipxe.efi", 0),
        ("efi/ipxe.efi", 1),
        ("undionly.kpxe", 1),
    ]
    fill(reopened, files)
    assert reopened.complete()


CHILD = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.unit.test_content_store import chunk, make_package, open_store
import transport.durable as durable

root = Path(sys.argv[1])
action = sys.argv[2]
kill_at = int(sys.argv[3])
store = open_store(root)
manifest, signed, files = make_package()
store.begin(signed)
calls = 0
def crash_on(real):
    def wrapper(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return wrapper
if action == "write":
    durable.os.replace = crash_on(os.replace)
    for path, index in store.missing_chunks():
        store.write_chunk(path, index, chunk(files, path, index))
elif action == "assemble":
    for path, index in store.missing_chunks():
        store.write_chunk(path, index, chunk(files, path, index))
    durable.os.replace = crash_on(os.replace)
    store.complete()
elif action == "publish":
    for path, index in store.missing_chunks():
        store.write_chunk(path, index, chunk(files, path, index))
    os.rename = crash_on(os.rename)
    store.complete()
print("survived")
"""


def run_child(root: Path, action: str, kill_at: int) -> subprocess.CompletedProcess[str]:
    script = CHILD.format(repo=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", script, str(root), action, str(kill_at)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


@pytest.mark.parametrize("kill_at", [1, 3, 5])
def test_kill_between_chunk_write_and_rename(tmp_path: Path, kill_at: int) -> None:
    """SIGKILL after a chunk's data is written but before its rename: no corrupt chunk is
    visible, the half-written one is cleaned and fetched again, the rest are kept."""
    result = run_child(tmp_path, "write", kill_at)
    assert result.returncode == -signal.SIGKILL, result.stderr
    temporaries = list((tmp_path / "staging" / "winpe-1" / "chunks").glob(f"{TEMP_PREFIX}*"))
    assert len(temporaries) == 1  # the chunk being written when the process died
    store = open_store(tmp_path)
    assert_nothing_corrupt(tmp_path)
    assert len(store.missing_chunks()) == 6 - (kill_at - 1)
    assert visible_files(tmp_path) == []
    fill(store, make_package()[2])
    assert store.complete()
    assert store.read_chunk("undionly.kpxe", 0) == chunk(make_package()[2], "undionly.kpxe", 0)


@pytest.mark.parametrize("kill_at", [1, 2])
def test_kill_during_assembly_leaves_nothing_visible(tmp_path: Path, kill_at: int) -> None:
    """SIGKILL while files are assembled: nothing is served, the chunks are kept, and
    complete() after the restart assembles again without fetching anything."""
    result = run_child(tmp_path, "assemble", kill_at)
    assert result.returncode == -signal.SIGKILL, result.stderr
    store = open_store(tmp_path)
    assert_nothing_corrupt(tmp_path)
    assert store.current() is None
    assert store.served_root() is None
    assert store.missing_chunks() == []
    assert store.complete()
    files = make_package()[2]
    served = store.served_root()
    assert served is not None
    assert all((served / path).read_bytes() == data for path, data in files.items())


def test_kill_at_publish_rename_leaves_the_package_staged(tmp_path: Path) -> None:
    """SIGKILL just before the directory rename: the package is still staged and whole."""
    result = run_child(tmp_path, "publish", 1)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert (tmp_path / "staging" / "winpe-1" / "tree").is_dir()
    store = open_store(tmp_path)
    assert store.current() is None
    assert not (tmp_path / "staging" / "winpe-1" / "tree").exists()
    assert store.missing_chunks() == []
    assert store.complete()
    assert store.current() is not None


def test_kill_at_a_random_moment(tmp_path: Path) -> None:
    """A writer killed at an arbitrary point leaves only verified chunks and a resumable
    package (the kill lands wherever the child happens to be)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from tests.unit.test_content_store import chunk, make_package, open_store
        store = open_store(Path(sys.argv[1]))
        manifest, signed, files = make_package()
        while True:
            store.begin(signed)
            for path, index in store.missing_chunks():
                store.write_chunk(path, index, chunk(files, path, index))
                print("wrote", flush=True)
            store.begin(make_package(version=manifest.version[0] + 1)[1])
            store.begin(signed)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert child.stdout is not None
    for _ in range(9):
        assert child.stdout.readline() == "wrote\n"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    child.stdout.close()
    store = open_store(tmp_path)
    assert_nothing_corrupt(tmp_path)
    staged = store.staged()
    assert staged is not None
    version = staged.version[0]
    fill(store, make_package(version)[2])
    assert store.complete()


# --------------------------------------------------------------------------- quota, collect


def test_quota_refuses_a_package_that_does_not_fit(tmp_path: Path) -> None:
    """A staged package is charged twice its size; one byte short is refused clearly."""
    manifest, signed, _ = make_package()
    needed = 2 * manifest.total_bytes
    with pytest.raises(QuotaExceeded, match=f"needs {needed} bytes"):
        open_store(tmp_path / "small", needed - 1).begin(signed)
    store = open_store(tmp_path / "exact", needed)
    assert store.begin(signed) == manifest
    assert store.used_bytes == needed


def test_quota_counts_complete_packages(tmp_path: Path) -> None:
    """After one package, the next must fit beside it (its size once, the new one twice)."""
    first, _, _ = make_package(1)
    second, signed_second, _ = make_package(2)
    quota = first.total_bytes + 2 * second.total_bytes
    store = open_store(tmp_path, quota - 1)
    install(store, 1)
    assert store.used_bytes == first.total_bytes
    with pytest.raises(QuotaExceeded, match="collect old packages"):
        store.begin(signed_second)
    assert store.staged() is None
    store.quota_bytes = quota
    assert store.begin(signed_second) == second


def test_collect_keeps_the_newest(tmp_path: Path) -> None:
    """collect(keep) removes older complete packages; the current one is always kept."""
    store = open_store(tmp_path)
    for version in (1, 2, 3):
        install(store, version)
    assert [manifest.version for manifest in store.packages()] == [(3,), (2,), (1,)]
    assert store.collect(keep=2) == ["winpe-1"]
    assert store.collect(keep=1) == ["winpe-2"]
    assert store.collect(keep=1) == []
    assert sorted(path.name for path in (tmp_path / "packages").iterdir()) == ["winpe-3"]
    assert list((tmp_path / "trash").iterdir()) == []
    current = store.current()
    assert current is not None
    assert current.version == (3,)
    assert store.served_root() == tmp_path / "packages" / "winpe-3" / "tree"
    assert [manifest.version for manifest in open_store(tmp_path).packages()] == [(3,)]


def test_begin_another_package_discards_the_staged_one(tmp_path: Path) -> None:
    """Only one package is staged at a time; a different manifest replaces it."""
    store = open_store(tmp_path)
    _, first, files = make_package(1)
    store.begin(first)
    fill(store, files, skip=3)
    second, signed_second, _ = make_package(2)
    store.begin(signed_second)
    assert store.staged() == second
    assert len(store.missing_chunks()) == second.chunk_count
    assert sorted(path.name for path in (tmp_path / "staging").iterdir()) == ["winpe-2"]


# --------------------------------------------------------------------------- announcements


def test_a_restarted_agent_announces_the_staged_package_with_what_is_on_disk(
    tmp_path: Path,
) -> None:
    """`SharedStore.announce` after a restart mid-fetch: the staged manifest and exactly the
    chunks already stored (so none is fetched again); after completion, the package whole;
    a manifest it already holds is offered again without staging anything."""
    manifest, signed, files = make_package(4)
    first = open_store(tmp_path)
    first.begin(signed)
    missing = first.missing_chunks()
    for path, index in missing[:3]:
        first.write_chunk(path, index, chunk(files, path, index))
    restarted = SharedStore(open_store(tmp_path))  # a new process, the same disk
    accepted, held = restarted.announce()
    assert accepted == ManifestAccepted(manifest)
    assert isinstance(held, ChunksHeld)
    bits = Bitfield.from_bytes(manifest.chunk_count, held.bitmap)
    assert bits.count() == 3
    assert restarted.offer(signed) == (manifest.package_id, [])  # already staged
    store = open_store(tmp_path)
    fill(store, files)
    assert store.complete()
    events = SharedStore(open_store(tmp_path)).announce()
    assert events[0] == ManifestAccepted(manifest)
    assert events[-1] == PackageComplete(manifest.package_id)
