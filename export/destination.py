"""Where `bert-export` may write, and how an artifact replaces a previous one.

Rules (each refusal is an `ExportPathError`, one line, exit 2, nothing written):
- OUT must not be the checkpoint or a folder above it, nor a symlink.
- An existing OUT is replaced only with `--overwrite`, and only when it is an artifact we wrote:
  its manifest parses and lists every file in the folder (so no file of the user's is deleted).
- The new artifact is built beside OUT under a hidden temporary name and renamed into place; a
  previous artifact is renamed aside first and deleted only once the new one is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from bertserve.commands import listing
from bertserve.service.artifact import MANIFEST
from bertserve.training.io import apply_umask


class ExportPathError(ValueError):
    """OUT is a place bert-export must not write."""


def _foreign_entries(folder: Path) -> list[str] | None:
    """None when `folder` is not an artifact; else the entries its manifest does not account
    for (empty: every file in it is ours)."""
    manifest_path = folder / MANIFEST
    if manifest_path.is_symlink() or not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    if "format" not in manifest or "variants" not in manifest:
        return None
    listed = {MANIFEST, *manifest["files"]}
    folders = {str(Path(name).parent) for name in listed} - {"."}
    foreign = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (relative in listed or (path.is_dir() and relative in folders)):
            foreign.append(relative)
    return foreign


def check_destination(out: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuses an OUT that would destroy an input or anything that is not a previous artifact."""
    real_out = out.resolve()
    for source in inputs:
        real_source = source.resolve()
        if real_out == real_source or real_out in real_source.parents:
            raise ExportPathError(
                f"{out} is the checkpoint {source} or a folder above it; choose another output"
            )
    if out.is_symlink():
        raise ExportPathError(f"{out} is a symbolic link; give the real folder or a new path")
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportPathError(f"{out} exists and is not a folder; choose another output")
    foreign = _foreign_entries(out)
    if foreign is None:
        if not any(out.iterdir()):
            return  # an empty folder (e.g. made by `mkdir` or a volume mount) is fine
        raise ExportPathError(
            f"{out} exists and is not a bertserve artifact; choose another output "
            "(nothing was written)"
        )
    if foreign:
        raise ExportPathError(
            f"{out} holds files its manifest does not list ({listing(foreign, 3)}); refusing to "
            "delete them"
        )
    if not overwrite:
        raise ExportPathError(f"{out} already holds an artifact; pass --overwrite to replace it")


def staging_dir(out: Path) -> Path:
    """A fresh hidden folder beside OUT (same file system, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    apply_umask(tmp, directory=True)
    return tmp


def install(staged: Path, out: Path) -> None:
    """Moves the finished artifact into place. An existing OUT (already checked to be an
    artifact of ours, or empty) is renamed aside, and put back if the second rename fails."""
    if not out.exists():
        staged.rename(out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    aside.rmdir()
    out.rename(aside)
    try:
        staged.rename(out)
    except BaseException:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)
