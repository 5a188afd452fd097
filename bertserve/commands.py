"""What the command lines share: the install extra each needs, checked before the heavy
imports (so a serve-only install answers `bert-pretrain` with one line naming the extra, not a
ModuleNotFoundError traceback), and one-line error messages."""

from __future__ import annotations

import argparse
import errno
import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_NO_SPACE = 4  # the disk (or quota) ran out while writing: free space and run again
LOW_SPACE_BYTES = 1 << 20  # a write that failed with less than this free is taken as ENOSPC

# command -> (extra, modules that extra installs and the command imports)
NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bert-pretrain": ("train", ("torch", "tokenizers", "safetensors", "numpy", "tqdm")),
    "bert-finetune": (
        "train",
        ("torch", "tokenizers", "safetensors", "numpy", "tqdm", "scipy", "matplotlib"),
    ),
    "bert-export": ("export", ("torch", "tokenizers", "safetensors", "onnx", "onnxruntime")),
}


def refuse_missing_extra(command: str) -> bool:
    """True, after one line on stderr naming the extra to install, when a module `command`
    needs is not importable; False when every one is."""
    extra, modules = NEEDS[command]
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"{command}: error: {command} needs the '{extra}' extra ({', '.join(missing)} not "
            f"installed): pip install 'bertserve[{extra}]'",
            file=sys.stderr,
        )
    return bool(missing)


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an error's message (torch's and ORT's run over several lines), cut to
    `limit` characters when given; the exception's type when it has no message."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None else line[:limit]


def last_line(exc: BaseException, default: str) -> str:
    """The last line of an error's message: torch's load_state_dict ends with the culprit."""
    lines = str(exc).strip().splitlines()
    return lines[-1].strip() if lines else default


def listing(names: list[str], shown: int = 4) -> str:
    """'a, b, c, d and 3 more': the names an error message lists, sorted, at most `shown`."""
    ordered = sorted(names)
    more = f" and {len(ordered) - shown} more" if len(ordered) > shown else ""
    return ", ".join(ordered[:shown]) + more


def no_space_left(exc: BaseException, output: Path | None) -> str | None:
    """The path a failed write ran out of space on, or None. ENOSPC (or EDQUOT) anywhere in
    the exception's chain; or, since some libraries lose errno (onnx: "INVALID_PROTOBUF:
    Protobuf serialization failed"; torch's zip writer: "unexpected pos"), any error while
    the output's filesystem has less than LOW_SPACE_BYTES free."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(seen.filename or output or "")
        seen = seen.__cause__ or seen.__context__
    if output is None:
        return None
    folder = Path(output).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    return str(output) if free < LOW_SPACE_BYTES else None


def run_command(
    command: str,
    work: Callable[[], object],
    bad_input: tuple[type[BaseException], ...],
    failed: tuple[type[BaseException], ...] = (),
    interrupted: str | None = None,
    output: Path | None = None,
) -> int:
    """Runs a command's work with the exit codes every command shares: 0 done; 2 for bad input
    and permission errors (one line on stderr); 1 for `failed` (e.g. a failed parity gate);
    4 when the disk under `output` is full (one line naming the path); 130 on Ctrl-C, saying
    `interrupted` (how to continue) when given."""
    try:
        work()
    except failed as exc:
        print(f"{command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(f"{command}: error: permission denied: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"{command}: interrupted; {interrupted}", file=sys.stderr)
        return 130
    except Exception as exc:
        path = no_space_left(exc, output)
        if path is not None:
            where = f" writing {path}" if path else ""
            print(f"{command}: error: no space left on device{where}", file=sys.stderr)
            return EXIT_NO_SPACE
        if isinstance(exc, bad_input):
            print(f"{command}: error: {one_line(exc)}", file=sys.stderr)
            return 2
        raise
    return 0


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to a flag's help only where it tells something: not for on/off
    flags ("default: False"), unset values ("default: None") or help that names its default."""

    def add_argument(self, action: argparse.Action) -> None:
        if action.help is None and self._tells(action):  # argparse would print no line at all
            action.help = "(default: %(default)s)"
        super().add_argument(action)

    @staticmethod
    def _tells(action: argparse.Action) -> bool:
        default = action.default
        return (
            default is not None
            and default is not argparse.SUPPRESS
            and not isinstance(default, bool)
        )

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not self._tells(action) or "default" in text:
            return text
        return super()._get_help_string(action)
