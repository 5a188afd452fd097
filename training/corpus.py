"""Contract 1: the corpus, one sentence per line and a blank line between documents.

Files (plain or .gz) are read as UTF-8 with bad bytes replaced and counted, never fatal. With no
paths the default corpus that ships inside the package is used (English and Chinese public-domain
text, demo_corpus.py), so the pipeline runs on a fresh offline machine.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import demo_corpus


class CorpusError(ValueError):
    """A corpus that cannot be used: missing paths, no files, or no text."""


@dataclass
class CorpusStats:
    files: int = 0
    documents: int = 0
    sentences: int = 0
    bad_bytes: int = 0  # bytes that were not valid UTF-8, replaced with U+FFFD
    bad_files: list[str] = field(default_factory=list)


_bad_bytes = 0


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    global _bad_bytes
    assert isinstance(err, UnicodeDecodeError)
    _bad_bytes += err.end - err.start
    return "\ufffd", err.end


codecs.register_error("bertserve_count", _count_and_replace)


def resolve_paths(specs: Sequence[str]) -> list[Path]:
    """Files, directories (every *.txt below, sorted) or glob patterns -> a sorted file list."""
    files: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise CorpusError(f"corpus directory {spec} holds no *.txt files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif any(ch in spec for ch in "*?["):
            matched = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not matched:
                raise CorpusError(f"corpus pattern {spec} matches no files")
            files.extend(matched)
        else:
            raise CorpusError(f"corpus path {spec} does not exist")
    return list(dict.fromkeys(files))  # drop repeats, keep order


# A longer line is cut (at a space where there is one) into sentences of at most this many
# characters, read piece by piece, so memory per line is bounded: a 50 MB line without a newline
# is 5,000 sentences, not one string handed to the tokenizer. A pair holds 512 tokens at most.
MAX_SENTENCE_CHARS = 10_000


def read_lines(handle: TextIO) -> Iterator[tuple[str, bool]]:
    """(text, complete) for each line of `handle`; a line longer than MAX_SENTENCE_CHARS comes as
    several pieces, all but the last with complete=False."""
    carry = ""
    while True:
        piece = handle.readline(MAX_SENTENCE_CHARS - len(carry))
        if not piece:
            if carry:
                yield carry, True
            return
        text = carry + piece
        if text.endswith("\n") or len(text) < MAX_SENTENCE_CHARS:
            carry = ""
            yield text, True
            continue
        cut = text.rfind(" ", MAX_SENTENCE_CHARS // 2)
        cut = cut if cut > 0 else len(text)
        yield text[:cut], False
        carry = text[cut:]


def split_documents(lines: Iterable[tuple[str, bool]]) -> Iterator[list[str]]:
    """Blank lines separate documents; every other line (or piece of a long one) is a sentence."""
    document: list[str] = []
    for line, complete in lines:
        line = line.strip()
        if line:
            document.append(line)
        elif document and complete:
            yield document
            document = []
    if document:
        yield document


def file_documents(path: Path, stats: CorpusStats) -> Iterator[list[str]]:
    """The documents of one file, streamed; invalid UTF-8 is replaced and counted."""
    global _bad_bytes
    before = _bad_bytes
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="bertserve_count", newline=None) as handle:
        yield from split_documents(read_lines(handle))
    if _bad_bytes > before:
        stats.bad_bytes += _bad_bytes - before
        stats.bad_files.append(str(path))
    stats.files += 1


@dataclass
class Corpus:
    """The resolved corpus: where the text comes from and a hash of all of it."""

    paths: list[Path]
    digest: str
    is_default: bool = False

    @classmethod
    def open(cls, specs: Sequence[str]) -> Corpus:
        """The files `specs` name, or with none the shipped demo corpus (demo_corpus.py)."""
        paths = resolve_paths(specs) if specs else demo_corpus.paths()
        hasher = hashlib.sha256()
        for path in paths:
            hasher.update(path.name.encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(block)
        return cls(paths, hasher.hexdigest(), is_default=not specs)

    @property
    def name(self) -> str:
        if self.is_default:
            return "default (the shipped English + Chinese demo corpus)"
        return f"{len(self.paths)} file(s) from {self.paths[0].parent}"

    def documents(self, stats: CorpusStats) -> Iterator[list[str]]:
        for path in self.paths:
            for document in file_documents(path, stats):
                stats.documents += 1
                stats.sentences += len(document)
                yield document

    def check_documents(self, needed: int) -> None:
        """Reads only as far as `needed` documents, so that a corpus that cannot be used is
        refused before minutes of tokenizer training and tokenizing."""
        found = 0
        for _ in self.documents(CorpusStats()):
            found += 1
            if found >= needed:
                return
        if found == 0:
            raise CorpusError(f"corpus {self.name} holds no text")
        raise CorpusError(
            f"next-sentence prediction needs at least {needed} documents (separated by a blank "
            f"line); corpus {self.name} holds {found}: add documents or pass --no-nsp"
        )

    def sentences(self) -> Iterator[str]:
        stats = CorpusStats()
        for document in self.documents(stats):
            yield from document
