"""Shared fixtures: tiny tokenizers and models built in the test, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent
SHARED_CORPORA = REPO.parent / "shared" / "corpora"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["BERTSERVE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def english_tokenizer():
    from training.corpus import Corpus
    from training.tokenizer import train_tokenizer

    corpus = Corpus.open([str(DATA / "english.txt"), str(DATA / "chinese.txt")])
    return train_tokenizer(corpus.sentences(), vocab_size=4000)
