"""The default corpus that ships inside the package: English and Chinese public-domain text.

`bert-pretrain` without `--corpus` trains on it, so `make demo` gives a model that knows both
languages (the README's Chinese examples tokenize to characters, not [UNK]) on a machine with no
network. Sources and licenses: data/README.md beside this file.

  en: novels and stories from Project Gutenberg (shared/corpora/gutenberg-en, shard 03; authors
      still in copyright outside the US are left out)
  zh: 元曲 (Yuan dynasty qu) and 论语 from shared/corpora/chinese-poetry (classical, public domain)

Rebuild the files from ../shared/corpora with `python -m bertserve.training.demo_corpus`.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

DATA = Path(__file__).parent / "data"
FILES = ("demo-en.txt.gz", "demo-zh.txt.gz")
# in copyright in life+70 countries (shared/corpora/README.md): not shipped
_LEFT_OUT_AUTHORS = ("Wodehouse", "Christie", "Russell")
EN_BYTES = 3_000_000
EN_CHUNK = 40  # paragraphs per English document
ZH_FILES = ("yuanqu.txt", "lunyu.txt")


def available() -> bool:
    return all((DATA / name).is_file() for name in FILES)


def paths() -> list[Path]:
    return [DATA / name for name in FILES]


def _english(corpora: Path) -> str:
    rows = (corpora / "gutenberg-en" / "books.tsv").read_text(encoding="utf-8").splitlines()[1:]
    authors = [row.split("\t")[1] for row in rows if row.split("\t")[0] in ("3", "03")]
    books = (corpora / "gutenberg-en" / "gutenberg_en_03.txt").read_text(encoding="utf-8")
    kept, size = [], 0
    for author, book in zip(authors, books.split("\n\n"), strict=False):
        if any(name in author for name in _LEFT_OUT_AUTHORS) or size >= EN_BYTES:
            continue
        # a book is cut into documents of EN_CHUNK paragraphs, so held-out documents and NSP
        # negatives come from many places, as with the thousands of short Chinese pieces
        paragraphs = book.strip().splitlines()
        for start in range(0, len(paragraphs), EN_CHUNK):
            kept.append("\n".join(paragraphs[start : start + EN_CHUNK]))
        size += len(book.encode())
    return "\n\n".join(kept) + "\n"


def _chinese(corpora: Path) -> str:
    parts = [(corpora / "chinese-poetry" / name).read_text(encoding="utf-8") for name in ZH_FILES]
    return "\n\n".join(part.strip() for part in parts) + "\n"


def build(corpora: Path) -> None:
    DATA.mkdir(exist_ok=True)
    for name, text in (
        ("demo-en.txt.gz", _english(corpora)),
        ("demo-zh.txt.gz", _chinese(corpora)),
    ):
        # mtime=0: the same text gives the same bytes, so rebuilding does not dirty git
        with open(DATA / name, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(text.encode("utf-8"))
        print(f"{name}: {len(text):,} characters, {(DATA / name).stat().st_size:,} bytes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="rebuild the shipped demo corpus")
    parser.add_argument(
        "--from", dest="corpora", type=Path, default=Path("../shared/corpora"), help="corpora"
    )
    build(parser.parse_args().corpora)
