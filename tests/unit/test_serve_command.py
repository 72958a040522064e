"""`peerpxe serve` option checking and the ProxyPolicy it builds (no sockets opened)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from actors.boot.proxy_dhcp import ArchClass
from peerpxe import cli, serve_command
from transport.boot_server import BootSettings, boot_policy


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "root"
    (served / "efi").mkdir(parents=True)
    (served / "undionly.kpxe").write_bytes(b"bios")
    (served / "efi" / "ipxe.efi").write_bytes(b"efi")
    (served / "boot.ipxe").write_bytes(b"#!ipxe\n")
    (tmp_path / "outside.efi").write_bytes(b"no")
    (served / "link.efi").symlink_to(tmp_path / "outside.efi")
    return served


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["serve", *argv])


def test_serve_is_a_subcommand(root: Path) -> None:
    """`peerpxe serve` is wired into the command table."""
    args = parse("--interface", "lo", "--root", str(root), "--bios", "undionly.kpxe")
    assert args.run is serve_command.run


def test_settings_with_interface(root: Path) -> None:
    """Files are checked and kept root-relative; the server address is the interface's."""
    args = parse(
        "--interface", "lo", "--root", str(root), "--bios", "/undionly.kpxe",
        "--efi64", "efi/ipxe.efi", "--ipxe-script", "boot.ipxe", "--http-port", "8080",
    )  # fmt: skip
    settings = serve_command.settings_from_args(args)
    assert settings.server == "127.0.0.1"
    assert settings.bind == "127.0.0.1"
    assert settings.dhcp_interface == "lo"
    assert settings.bios_file == "undionly.kpxe"
    assert settings.efi64_file == "efi/ipxe.efi"
    assert settings.ipxe_script == "boot.ipxe"
    assert settings.documents == {}


def test_script_outside_root_is_served_from_memory(root: Path, tmp_path: Path) -> None:
    """An absolute --ipxe-script outside the root is read at start and served by name."""
    script = tmp_path / "menu.ipxe"
    script.write_bytes(b"#!ipxe\nshell\n")
    args = parse("--no-dhcp", "--root", str(root), "--ipxe-script", str(script))
    settings = serve_command.settings_from_args(args)
    assert settings.ipxe_script == "menu.ipxe"
    assert settings.documents == {"menu.ipxe": b"#!ipxe\nshell\n"}
    assert settings.dhcp_interface is None
    assert settings.bind == "0.0.0.0"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interface", "lo", "--bios", "missing.kpxe"], "no such file"),
        (["--interface", "lo", "--bios", "../outside.efi"], "--bios '../outside.efi'"),
        (["--interface", "lo", "--bios", "link.efi"], "outside --root"),
        (["--interface", "lo", "--bios", "efi"], "no such file"),
        (["--interface", "lo"], "at least one boot file"),
        (["--bios", "undionly.kpxe"], "--interface is required"),
        (["--interface", "ppx-nonexistent", "--bios", "undionly.kpxe"], "no such interface"),
        (["--no-dhcp", "--listen", "not-an-ip"], "not an IPv4 address"),
        (["--no-dhcp", "--http-port", "70000"], "not a port number"),
        (["--no-dhcp", "--ipxe-script", "nope.ipxe"], "no such file"),
    ],
)
def test_bad_options_exit_2(
    root: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every unusable option is one line on stderr and exit status 2, before any socket."""
    assert serve_command.run(parse("--root", str(root), *argv)) == 2
    error = capsys.readouterr().err
    assert error.startswith("peerpxe serve: ")
    assert message in error


def test_missing_root_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A root that is not a directory is refused."""
    assert serve_command.run(parse("--no-dhcp", "--root", str(tmp_path / "nope"))) == 2
    assert "not a directory" in capsys.readouterr().err


def test_boot_policy_per_firmware(root: Path) -> None:
    """BIOS, x64 and ARM64 UEFI (PXE and HTTP boot) get their file; iPXE the script URL."""
    settings = BootSettings(
        root=root, server="10.0.0.2", bind="10.0.0.2", dhcp_interface="eth0",
        bios_file="undionly.kpxe", efi64_file="efi/ipxe.efi", arm64_file="arm.efi",
        ipxe_script="boot scripts/boot.ipxe", http_port=8080,
    )  # fmt: skip
    policy = boot_policy(settings)
    assert dict(policy.boot_files) == {
        ArchClass.BIOS: "undionly.kpxe",
        ArchClass.EFI_X64: "efi/ipxe.efi",
        ArchClass.HTTP_X64: "efi/ipxe.efi",
        ArchClass.EFI_ARM64: "arm.efi",
        ArchClass.HTTP_ARM64: "arm.efi",
    }
    assert policy.ipxe_script_url == "http://10.0.0.2:8080/boot%20scripts/boot.ipxe"
    assert policy.http_boot_url_base == "http://10.0.0.2:8080/"
    assert policy.file_on_67 == frozenset({ArchClass.BIOS})
