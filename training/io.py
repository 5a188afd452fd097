"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Files and folders end with the permissions the user's umask gives (0644 / 0755 by default), not
the 0600 / 0700 that `tempfile` creates with, so an artifact can be read by a container's
non-root user or another account."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def apply_umask(path: Path, directory: bool = False) -> None:
    """Gives `path` the mode a plain open()/mkdir() would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Calls `write(tmp_path)` then renames tmp_path onto `path` (same directory, so same disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        apply_umask(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def trim_log(path: Path, keep_through_step: int | None) -> None:
    """A metrics.jsonl before a run appends to it: cut back to the lines up to the resumed
    step (a killed run logged steps it will now repeat), or removed for a fresh run."""
    if keep_through_step is None:
        path.unlink(missing_ok=True)
    elif path.is_file():
        kept = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= keep_through_step
        ]
        write_text_atomic(path, "".join(line + "\n" for line in kept))
