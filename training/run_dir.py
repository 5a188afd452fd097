"""Which folders `bert-pretrain` and `bert-finetune` may write a run into, so they never delete
or overwrite a file they did not write.

A run folder is marked by its kind's config file (`train_config.json`, `finetune_config.json`),
written first. A new run goes into a folder that is absent or empty; a folder that holds a run
of that kind is continued with `--resume` or started over with `--overwrite`, which removes only
the run's own files; a folder with anything else in it is refused, naming what is there.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from bertserve.commands import listing


@dataclass(frozen=True)
class RunKind:
    """What one command's run folder holds: the marker written first, every name it writes."""

    marker: str
    files: frozenset[str]
    pattern: re.Pattern[str]  # other names it writes (checkpoints, atomic temporaries)

    def ours(self, name: str) -> bool:
        return name == self.marker or name in self.files or bool(self.pattern.match(name))


_TEMPORARY = r"\..+\.tmp"  # write_text_atomic's and the safetensors writer's temporaries
MARKER = "train_config.json"
PRETRAIN = RunKind(  # bert-pretrain
    MARKER,
    frozenset(
        {
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "metrics.jsonl",
            "training_curves.png",
            "corpus_digest.txt",
            "training_state.pt",
        }
    ),
    # checkpoint-N folders and their temporary and doomed twins
    re.compile(rf"^(checkpoint-\d+|\.checkpoint-\d+\..+|\.deleting-checkpoint-\d+|{_TEMPORARY})$"),
)


class RunDirError(ValueError):
    """A folder a run must not write into."""


def is_run(folder: Path, kind: RunKind = PRETRAIN) -> bool:
    return (folder / kind.marker).is_file()


def check_new_run(out: Path, overwrite: bool, kind: RunKind = PRETRAIN) -> None:
    """Refuses an `out` that a new run must not write into (nothing is changed here)."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a folder")
    if not out.exists():
        return
    names = [child.name for child in out.iterdir()]
    if not names:
        return
    foreign = [name for name in names if not kind.ours(name)]
    if not is_run(out, kind):
        raise RunDirError(
            f"--out {out} is not empty and is not a bertserve run (it holds "
            f"{listing(names)}); choose a new or empty folder"
        )
    if foreign:
        raise RunDirError(
            f"--out {out} holds a run and files that are not the run's ({listing(foreign)}); "
            "move them or choose another folder"
        )
    if not overwrite:
        raise RunDirError(
            f"--out {out} already holds a run; continue it with --resume {out}, or start over "
            "with --overwrite"
        )


def clear_run(out: Path, kind: RunKind = PRETRAIN) -> None:
    """Removes a previous run's own files (after `check_new_run(out, overwrite=True)`)."""
    if not out.is_dir():
        return
    for child in out.iterdir():
        if not kind.ours(child.name):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def run_of(checkpoint: Path) -> Path:
    """The run folder a resumable checkpoint belongs to: the folder above a checkpoint-N, or
    the checkpoint itself when it stands alone."""
    if re.match(r"^checkpoint-\d+$", checkpoint.name) and is_run(checkpoint.parent):
        return checkpoint.parent
    return checkpoint
