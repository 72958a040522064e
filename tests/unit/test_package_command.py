"""`peerpxe keygen`, `peerpxe package build|verify` and `peerpxe policy build|verify`."""

from __future__ import annotations

import stat
from pathlib import Path

import msgpack
import pytest

from actors import package
from actors.errors import PackageError, PackageRefusal
from actors.package import verify_manifest
from actors.policy import policy_allows_client, policy_allows_serving, verify_policy
from actors.signing import public_key
from peerpxe import cli, package_command
from peerpxe.config import ConfigError
from peerpxe.keys import load_public_key, load_secret_key
from peerpxe.policy_file import load_policy

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_POLICY = REPO / "docs" / "policy.toml.example"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "keys"
    assert run(capsys, "keygen", "--out", str(directory))[0] == 0
    return directory


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    (root / "efi").mkdir(parents=True)
    (root / "undionly.kpxe").write_bytes(b"bios" * 1000)
    (root / "efi" / "ipxe.efi").write_bytes(bytes(range(256)) * 5000)
    (root / "boot.ipxe").write_bytes(b"#!ipxe\nchain http://x/boot\n")
    return root


def build(
    capsys: pytest.CaptureFixture[str], tree: Path, keys: Path, *extra: str
) -> tuple[int, str, str]:
    return run(
        capsys, "package", "build", str(tree), "--key", str(keys / "publisher.key"),
        "--name", "winpe", "--version", "1.2", *extra,
    )  # fmt: skip


def verify(
    capsys: pytest.CaptureFixture[str], manifest: Path, keys: Path, *extra: str
) -> tuple[int, str, str]:
    return run(
        capsys, "package", "verify", str(manifest), "--pub", str(keys / "publisher.pub"), *extra
    )


# --------------------------------------------------------------------------- keygen


def test_keygen_writes_the_three_keys_with_modes(keys: Path) -> None:
    """Secret files are 0600, the public key matches the secret one, the cluster key is 32 bytes."""
    assert stat.S_IMODE((keys / "publisher.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "cluster.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "publisher.pub").stat().st_mode) == 0o644
    secret, warnings = load_secret_key(keys / "publisher.key")
    assert warnings == []
    assert load_public_key(keys / "publisher.pub") == public_key(secret)
    assert len(bytes.fromhex((keys / "cluster.key").read_text())) == 32
    assert (keys / "cluster.key").read_text() != (keys / "publisher.key").read_text()


def test_keygen_refuses_to_overwrite_without_force(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second keygen fails and changes nothing; with --force it writes new keys."""
    before = (keys / "publisher.key").read_bytes()
    code, _, err = run(capsys, "keygen", "--out", str(keys))
    assert code == 2
    assert "already exist" in err
    assert "--force" in err
    assert (keys / "publisher.key").read_bytes() == before
    assert run(capsys, "keygen", "--out", str(keys), "--force")[0] == 0
    assert (keys / "publisher.key").read_bytes() != before


def test_secret_key_readable_by_others_warns(keys: Path) -> None:
    """A publisher key file with group or other access is loaded with a warning."""
    (keys / "publisher.key").chmod(0o644)
    _, warnings = load_secret_key(keys / "publisher.key")
    assert warnings
    assert "chmod 600" in warnings[0]


# --------------------------------------------------------------------------- package build / verify


def test_build_then_verify_with_dir(
    tree: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default output is DIR/../N-V.manifest; it verifies, files and chunks included."""
    code, out, _ = build(capsys, tree, keys, "--bios", "undionly.kpxe", "--efi64", "/efi/ipxe.efi",
                         "--ipxe-script", "boot.ipxe")  # fmt: skip
    assert code == 0, out
    manifest_path = tree.parent / "winpe-1.2.manifest"
    assert str(manifest_path) in out
    manifest = verify_manifest(
        manifest_path.read_bytes(), load_public_key(keys / "publisher.pub"), None
    )
    assert [entry.path for entry in manifest.files] == [
        "boot.ipxe",
        "efi/ipxe.efi",
        "undionly.kpxe",
    ]
    assert manifest.boot_files == {"bios": "undionly.kpxe", "efi64": "efi/ipxe.efi"}
    assert manifest.ipxe_script == "boot.ipxe"
    assert manifest.chunk_count == 1 + 2 + 1
    code, out, _ = verify(capsys, manifest_path, keys, "--dir", str(tree))
    assert code == 0, out
    assert "signature ok" in out
    assert "all 3 files and 4 chunks match" in out


def test_verify_reports_a_changed_file(
    tree: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One changed byte in a large file fails `verify --dir` naming the file and the chunk."""
    build(capsys, tree, keys)
    data = bytearray((tree / "efi" / "ipxe.efi").read_bytes())
    data[1024 * 1024 + 3] ^= 1
    (tree / "efi" / "ipxe.efi").write_bytes(bytes(data))
    (tree / "boot.ipxe").unlink()
    code, out, _ = verify(capsys, tree.parent / "winpe-1.2.manifest", keys, "--dir", str(tree))
    assert code == 1
    assert "FAILED efi/ipxe.efi: 1 chunk(s) do not match the manifest (index 1)" in out
    assert "FAILED boot.ipxe: missing" in out
    assert "REFUSED: 2 of 3 files differ" in out


def test_verify_refuses_tampered_or_foreign_manifests(
    tree: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A changed manifest byte or another publisher's key gives exit 1 and the reason."""
    build(capsys, tree, keys)
    manifest_path = tree.parent / "winpe-1.2.manifest"
    frame = list(msgpack.unpackb(manifest_path.read_bytes(), raw=False))
    frame[3] = frame[3].replace(b"winpe", b"wxnpe")
    tampered = tmp_path / "tampered.manifest"
    tampered.write_bytes(msgpack.packb(frame))
    code, out, _ = verify(capsys, tampered, keys)
    assert code == 1
    assert "REFUSED (bad_signature)" in out
    other = tmp_path / "other"
    run(capsys, "keygen", "--out", str(other))
    code, out, _ = verify(capsys, manifest_path, other)
    assert code == 1
    assert "bad_signature" in out
    garbage = tmp_path / "garbage.manifest"
    garbage.write_bytes(b"not a manifest")
    assert "REFUSED (not_signed)" in verify(capsys, garbage, keys)[1]


def test_build_is_reproducible_with_source_date_epoch(
    tree: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Same files, key and SOURCE_DATE_EPOCH give the same signed bytes (Ed25519 is
    deterministic, RFC 8032 §5.1.6)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    build(capsys, tree, keys, "--out", str(tmp_path / "a.manifest"))
    build(capsys, tree, keys, "--out", str(tmp_path / "b.manifest"))
    assert (tmp_path / "a.manifest").read_bytes() == (tmp_path / "b.manifest").read_bytes()
    manifest = verify_manifest(
        (tmp_path / "a.manifest").read_bytes(), load_public_key(keys / "publisher.pub"), None
    )
    assert manifest.created_s == 1_700_000_000


def test_symlink_out_of_the_directory_is_refused(
    tree: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A link leading outside DIR stops the build (exit 2) and writes nothing."""
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (tree / "leak.txt").symlink_to(tmp_path / "secret.txt")
    code, _, err = build(capsys, tree, keys)
    assert code == 2
    assert "leak.txt is a symbolic link outside the package directory" in err
    assert not (tree.parent / "winpe-1.2.manifest").exists()


def test_symlinked_directory_is_refused(
    tree: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A link to a directory (outside or inside) is refused rather than followed."""
    (tree / "again").symlink_to(tree / "efi")
    code, _, err = build(capsys, tree, keys)
    assert code == 2
    assert "again is a symbolic link to a directory" in err


def test_symlink_to_a_file_inside_is_packaged_as_a_file(
    tree: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A link to a file inside DIR is packaged with the target's content."""
    (tree / "pxelinux.0").symlink_to(tree / "undionly.kpxe")
    assert build(capsys, tree, keys)[0] == 0
    manifest = verify_manifest(
        (tree.parent / "winpe-1.2.manifest").read_bytes(),
        load_public_key(keys / "publisher.pub"),
        None,
    )
    entry = manifest.file("pxelinux.0")
    assert entry is not None
    assert entry.size_bytes == 4000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--bios", "missing.kpxe"), "--bios missing.kpxe: not a file of the package directory"),
        (("--ipxe-script", "nope.ipxe"), "--ipxe-script nope.ipxe: not a file"),
        (("--chunk-bytes", "10"), "chunk_bytes out of range"),
    ],
)
def test_build_option_errors(
    tree: Path, keys: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    """Bad options are usage errors (exit 2) with a message naming the option."""
    code, _, err = build(capsys, tree, keys, *extra)
    assert code == 2
    assert message in err


def test_bad_version_and_bad_key(
    tree: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version that is not dotted decimals, or a key of the wrong size, is exit 2."""
    code, _, err = run(capsys, "package", "build", str(tree), "--key", str(keys / "publisher.key"),
                       "--name", "winpe", "--version", "1.x")  # fmt: skip
    assert code == 2
    assert "--version" in err
    code, _, err = run(capsys, "package", "build", str(tree), "--key", str(keys / "cluster.key"),
                       "--name", "bad name", "--version", "1")  # fmt: skip
    assert code == 2
    assert "bad package name" in err


def test_file_name_the_server_would_refuse_is_refused(
    tree: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file whose name the TFTP rules refuse (':' here) cannot be packaged."""
    (tree / "C:boot").write_bytes(b"x")
    code, _, err = build(capsys, tree, keys)
    assert code == 2
    assert "cannot be served under this name" in err


def test_boot_arch_options_match_the_manifest_keys() -> None:
    """The command's --ARCH options are exactly the manifest's architecture keys."""
    assert package_command.BOOT_ARCHES == package.BOOT_ARCHES


# --------------------------------------------------------------------------- policy


def test_example_policy_builds_and_verifies(
    keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/policy.toml.example signs, verifies, and means what its comments say."""
    out = tmp_path / "policy.signed"
    code, stdout, err = run(capsys, "policy", "build", str(EXAMPLE_POLICY), "--key",
                            str(keys / "publisher.key"), "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert "policy version 1" in stdout
    policy = verify_policy(out.read_bytes(), load_public_key(keys / "publisher.pub"), None)
    assert policy.mac_deny == ("52:54:00:66:66:66",)
    assert policy.boot_files == {"efi64": "ipxe-snponly.efi"}
    assert not policy_allows_serving(policy, "hq", "10.1.0.0/24", "pxe-1", ("laptop",))
    assert policy_allows_serving(policy, "hq", "10.1.0.0/24", "PXE-1", ())
    assert policy_allows_serving(policy, "branch", "10.20.5.0/24", "desk", ())
    assert not policy_allows_serving(policy, "branch", "10.30.5.0/24", "desk", ())
    assert not policy_allows_client(policy, "52:54:00:66:66:66")
    assert policy_allows_client(policy, "52:54:00:00:00:01")
    code, stdout, _ = run(
        capsys, "policy", "verify", str(out), "--pub", str(keys / "publisher.pub")
    )
    assert code == 0
    assert "rule 2: serve when site hq and hostname pxe-*" in stdout


def test_policy_verify_refuses_another_key(
    keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A policy signed by another publisher is refused with exit 1."""
    out = tmp_path / "policy.signed"
    run(capsys, "policy", "build", str(EXAMPLE_POLICY), "--key", str(keys / "publisher.key"),
        "--out", str(out))  # fmt: skip
    run(capsys, "keygen", "--out", str(tmp_path / "other"))
    code, stdout, _ = run(capsys, "policy", "verify", str(out), "--pub",
                          str(tmp_path / "other" / "publisher.pub"))  # fmt: skip
    assert code == 1
    assert "bad_signature" in stdout


RULES = """\
version = 2

[serve]
default = true

[[serve.rule]]
site = "hq"
serve = true

[[serve.rule]]
subnet = "{subnet}"
serve = false
"""


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        (RULES.format(subnet="10.1.0.1/16"), 11, "serve.rule[2].subnet", "expected a network"),
        (RULES.format(subnet="10.1.0.0/16") + "[clients]\ndeny = [\"xx\"]\n", 14, "clients.deny",
         "expected MAC addresses"),
        (RULES.format(subnet="10.1.0.0/16").replace('site = "hq"', 'sight = "hq"'), 7,
         "serve.rule[1].sight", "unknown key"),
        (RULES.format(subnet="10.1.0.0/16").replace("serve = false", ""), 10, "serve.rule[2]",
         "missing key serve"),
        ("[serve]\ndefault = true\n", None, "version", "missing"),
        ("version = 0\n", 1, "version", "integer >= 1"),
        ("version = 1\n[boot_files]\nefi64 = \"../x.efi\"\n", 3, "boot_files.efi64", "inside"),
        ("version = 1\n[boot_files]\nsparc = \"x\"\n", 3, "boot_files.sparc", "unknown key"),
        ("version = 1\n[colour]\n", 2, "colour", "unknown key"),
        ("version = 1\n[serve]\ndefault = \"yes\"\n", 3, "serve.default", "true or false"),
        ("version = 1\n[[serve.rule]]\nserve = true\n", 2, "serve.rule[1]", "at least one"),
    ],
)  # fmt: skip
def test_policy_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int | None, key: str, message: str
) -> None:
    """Every TOML policy error names the file, the line and the key."""
    source = tmp_path / "policy.toml"
    source.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_policy(source, 0)
    assert caught.value.line == line
    assert caught.value.key == key
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{source}:{line}: {key}:" if line else f"{source}: {key}:")


def test_policy_syntax_error_keeps_the_position(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A TOML syntax error is exit 2 with the file and line."""
    source = tmp_path / "policy.toml"
    source.write_text("version = 1\n[serve\n")
    code, _, err = run(capsys, "policy", "build", str(source), "--key", str(keys / "publisher.key"),
                       "--out", str(tmp_path / "p.signed"))  # fmt: skip
    assert code == 2
    assert f"{source}:2: syntax error" in err
    assert not (tmp_path / "p.signed").exists()


def test_policy_build_is_a_rollback_guard_end_to_end(
    keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An agent holding version 2 refuses a newly signed version 1 (ROLLBACK)."""
    public = load_public_key(keys / "publisher.pub")
    signed = {}
    for version in (1, 2):
        source = tmp_path / f"v{version}.toml"
        source.write_text(f"version = {version}\n")
        run(capsys, "policy", "build", str(source), "--key", str(keys / "publisher.key"),
            "--out", str(tmp_path / f"v{version}.signed"))  # fmt: skip
        signed[version] = (tmp_path / f"v{version}.signed").read_bytes()
    held = verify_policy(signed[2], public, None)
    with pytest.raises(PackageError) as caught:
        verify_policy(signed[1], public, held)
    assert caught.value.reason is PackageRefusal.ROLLBACK
