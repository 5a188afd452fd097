"""A full disk while a command writes: one line naming the path and "no space left on device",
exit 4 (bertserve.commands.EXIT_NO_SPACE), and nothing half-written left behind. The disk is a
small tmpfs mounted for the test (root only; skipped with the reason elsewhere)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bertserve.commands import EXIT_NO_SPACE
from tests.conftest import DATA


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB filesystem of its own (tmpfs), removed after the test."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _one_line(capfd: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.startswith(".") or "tmp" in p.name)


def test_bert_export_onto_a_full_disk(small_disk, trained_checkpoint, capfd):
    from bertserve.export.cli import main as export_main

    status = export_main([str(trained_checkpoint), str(small_disk / "art"), "--no-progress"])
    line = _one_line(capfd)
    assert status == EXIT_NO_SPACE, line
    assert "no space left on device" in line and str(small_disk) in line, line
    assert list(small_disk.iterdir()) == [], "a half-written artifact was left"


def test_bert_pretrain_checkpoint_onto_a_full_disk(small_disk, capfd):
    from bertserve.training.cli import main as pretrain_main

    shutil.copy(DATA / "english.txt", small_disk.parent / "corpus.txt")
    argv = [
        "--corpus", str(small_disk.parent / "corpus.txt"), "--out", str(small_disk / "run"),
        "--preset", "tiny", "--vocab-size", "2000", "--max-steps", "4", "--save-every", "2",
        "--eval-every", "0", "--batch-size", "4", "--max-seq-len", "32", "--no-progress",
    ]  # fmt: skip
    status = pretrain_main(argv)
    err = capfd.readouterr()
    lines = [line for line in err.err.splitlines() if line.strip()]
    assert status == EXIT_NO_SPACE, err.err[-2000:]
    assert "no space left on device" in lines[-1] and str(small_disk) in lines[-1], lines
    assert not any("Traceback" in line for line in lines)
    assert _leftovers(small_disk) == [], "temporary files were left"
