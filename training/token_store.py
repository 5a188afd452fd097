"""The corpus tokenized once into flat arrays read by memory map, cached by content hash.

Layout of a store directory:
  tokens.npy     (n_tokens,) int32   every sentence's token ids, back to back
  sentences.npy  (n_sent + 1,) int64 sentence s is tokens[sentences[s]:sentences[s + 1]]
  documents.npy  (n_doc + 1,) int64  document d is sentences documents[d]:documents[d + 1]
  meta.json      corpus digest, tokenizer digest and counts
The directory is built under a temporary name and renamed, so a cache hit is always whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from .corpus import Corpus, CorpusError, CorpusStats
from .io import apply_umask

_ENCODE_CHUNK = 4096  # sentences per encode_batch call


def default_cache_dir() -> Path:
    root = os.environ.get("BERTSERVE_CACHE") or Path.home() / ".cache" / "bertserve"
    return Path(root) / "token-stores"


@dataclass
class TokenStore:
    tokens: np.ndarray
    sentences: np.ndarray
    documents: np.ndarray
    meta: dict[str, object]

    @property
    def num_documents(self) -> int:
        return len(self.documents) - 1

    def sentence_range(self, doc: int) -> tuple[int, int]:
        return int(self.documents[doc]), int(self.documents[doc + 1])

    def sentence(self, index: int) -> np.ndarray:
        return self.tokens[self.sentences[index] : self.sentences[index + 1]]

    def sentence_length(self, index: int) -> int:
        return int(self.sentences[index + 1] - self.sentences[index])

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        return cls(
            np.load(path / "tokens.npy", mmap_mode="r"),
            np.load(path / "sentences.npy"),
            np.load(path / "documents.npy"),
            json.loads((path / "meta.json").read_text()),
        )


def build_or_load(
    corpus: Corpus, tokenizer: Tokenizer, cache_dir: Path | None = None, progress: bool = True
) -> tuple[TokenStore, bool]:
    """Returns (store, was_cached)."""
    cache_dir = cache_dir or default_cache_dir()
    tokenizer_digest = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
    key = hashlib.sha256(f"{corpus.digest}:{tokenizer_digest}".encode()).hexdigest()[:24]
    path = cache_dir / key
    if (path / "meta.json").is_file():
        return TokenStore.load(path), True
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
    apply_umask(tmp, directory=True)
    try:
        meta = _build(corpus, tokenizer, tmp, progress)
        meta.update(corpus_digest=corpus.digest, tokenizer_digest=tokenizer_digest)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same store first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenStore.load(path), False


def _build(corpus: Corpus, tokenizer: Tokenizer, out: Path, progress: bool) -> dict[str, object]:
    stats = CorpusStats()
    token_chunks: list[np.ndarray] = []
    sentence_lengths: list[int] = []
    document_sizes: list[int] = []
    pending: list[str] = []
    pending_docs: list[int] = []  # sentences per document, for documents in `pending`
    bar = tqdm(desc="tokenizing corpus", unit=" sent", disable=not progress, leave=False)

    def flush() -> None:
        encodings = tokenizer.encode_batch(pending, add_special_tokens=False)
        lengths = [len(e.ids) for e in encodings]
        flat = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32)
        token_chunks.append(flat)
        start = 0
        for size in pending_docs:
            kept = [n for n in lengths[start : start + size] if n > 0]  # empty after normalizing
            start += size
            if kept:
                sentence_lengths.extend(kept)
                document_sizes.append(len(kept))
        bar.update(len(pending))
        pending.clear()
        pending_docs.clear()

    for document in corpus.documents(stats):
        pending.extend(document)
        pending_docs.append(len(document))
        if len(pending) >= _ENCODE_CHUNK:
            flush()
    if pending:
        flush()
    bar.close()
    if not sentence_lengths:
        raise CorpusError(f"corpus {corpus.name} holds no text")
    tokens = np.concatenate(token_chunks) if token_chunks else np.zeros(0, np.int32)
    sentences = np.zeros(len(sentence_lengths) + 1, dtype=np.int64)
    np.cumsum(sentence_lengths, out=sentences[1:])
    documents = np.zeros(len(document_sizes) + 1, dtype=np.int64)
    np.cumsum(document_sizes, out=documents[1:])
    np.save(out / "tokens.npy", tokens)
    np.save(out / "sentences.npy", sentences)
    np.save(out / "documents.npy", documents)
    return {
        "files": stats.files,
        "documents": len(document_sizes),
        "sentences": len(sentence_lengths),
        "tokens": len(tokens),
        "bad_bytes": stats.bad_bytes,
        "bad_files": stats.bad_files[:20],
    }
