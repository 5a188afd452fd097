"""Contract 1: the corpus, one sentence per line and a blank line between documents.

Files are read as UTF-8 with bad bytes replaced and counted, never fatal. With no paths the
embedded default corpus is used: the topic help that ships with every CPython
(`pydoc_data.topics`), so the pipeline runs on a fresh offline machine.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO


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
    with open(path, encoding="utf-8", errors="bertserve_count", newline=None) as handle:
        yield from split_documents(read_lines(handle))
    if _bad_bytes > before:
        stats.bad_bytes += _bad_bytes - before
        stats.bad_files.append(str(path))
    stats.files += 1


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def default_corpus_text() -> str:
    """pydoc's topic help reshaped into Contract 1: a topic is a document, a sentence a line."""
    from pydoc_data.topics import topics

    documents = []
    for name in sorted(topics):
        sentences = []
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            lines = paragraph.splitlines()
            if lines and all(line.startswith("   ") for line in lines):
                continue  # indented code or grammar block, not prose
            flat = " ".join(line.strip() for line in lines).strip()
            sentences.extend(s for s in _SENTENCE_END.split(flat) if len(s.split()) >= 3)
        if len(sentences) >= 2:
            documents.append("\n".join(sentences))
    return "\n\n".join(documents) + "\n"


@dataclass
class Corpus:
    """The resolved corpus: where the text comes from and a hash of all of it."""

    paths: list[Path]  # empty: the embedded default corpus
    digest: str

    @classmethod
    def open(cls, specs: Sequence[str]) -> Corpus:
        paths = resolve_paths(specs) if specs else []
        hasher = hashlib.sha256()
        if paths:
            for path in paths:
                hasher.update(path.name.encode() + b"\0")
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        hasher.update(block)
        else:
            hasher.update(default_corpus_text().encode())
        return cls(paths, hasher.hexdigest())

    @property
    def name(self) -> str:
        if not self.paths:
            return "default (pydoc_data.topics)"
        return f"{len(self.paths)} file(s) from {self.paths[0].parent}"

    def documents(self, stats: CorpusStats) -> Iterator[list[str]]:
        if self.paths:
            sources: Iterable[Iterator[list[str]]] = (
                file_documents(path, stats) for path in self.paths
            )
        else:
            stats.files = 1
            sources = [split_documents(read_lines(io.StringIO(default_corpus_text())))]
        for documents in sources:
            for document in documents:
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
