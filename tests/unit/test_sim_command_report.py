"""`peerpxe sim`'s helpers for reports: the progress bar's decision to show, the git commit."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest
from rich.console import Console

from peerpxe.sim_command import SimProgress, git_commit


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def progress(clock: FakeClock) -> tuple[SimProgress, io.StringIO]:
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=100)
    return SimProgress(100.0, console, clock=clock), output


def test_a_fast_run_never_shows_a_bar() -> None:
    """1 s of wall time for half the run: expected 2 s in all, under the 3 s threshold."""
    clock = FakeClock()
    bar, output = progress(clock)
    clock.now_s += 1.0
    bar.tick(50.0)
    bar.close()
    assert not bar.is_shown()
    assert output.getvalue() == ""


def test_a_slow_run_shows_the_bar_and_removes_it_at_the_end() -> None:
    """1 s of wall time for a tenth of the run: expected 10 s, so the bar shows."""
    clock = FakeClock()
    bar, output = progress(clock)
    clock.now_s += 0.1
    bar.tick(1.0)
    assert not bar.is_shown(), "too early to judge"
    clock.now_s += 0.9
    bar.tick(10.0)
    assert bar.is_shown()
    assert "10/100 simulated s" in output.getvalue()
    clock.now_s += 1.0
    bar.tick(20.0)
    assert "20/100 simulated s" in output.getvalue()
    bar.close()
    assert "100/100 simulated s" in output.getvalue()


def test_refreshes_are_throttled() -> None:
    """Ticks closer than the refresh interval in wall time do not redraw."""
    clock = FakeClock()
    bar, output = progress(clock)
    clock.now_s += 1.0
    bar.tick(10.0)
    clock.now_s += 0.01
    bar.tick(11.0)
    assert "11/100" not in output.getvalue()
    bar.close()


def test_git_commit_is_a_full_hash_or_unknown() -> None:
    """In a checkout: HEAD's hash; anywhere else: "unknown"."""
    commit = git_commit()
    assert commit == "unknown" or (len(commit) in (40, 64) and int(commit, 16) >= 0)


def test_git_commit_without_git_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    """No git on PATH: "unknown", no exception."""
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert git_commit() == "unknown"


def test_git_commit_outside_a_checkout_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    """`git rev-parse` failing (not a repository) gives "unknown"."""

    def failing_run(*_args: object, **_kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 128, stdout="", stderr="fatal: not a git repo")

    monkeypatch.setattr(subprocess, "run", failing_run)
    assert git_commit() == "unknown"


def test_git_commit_that_times_out_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung git (network filesystem) gives "unknown" after the timeout."""

    def hanging_run(*_args: object, **_kwargs: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired("git", 10.0)

    monkeypatch.setattr(subprocess, "run", hanging_run)
    assert git_commit() == "unknown"
