"""WordPiece tokenizer, trained or loaded with the `tokenizers` library.

BERT normalizer (clean text, CJK characters split one per token as bert-base-chinese does,
optional lowercasing and accent stripping), BERT pre-tokenizer, WordPiece with `##` pieces, and a
[CLS] A [SEP] B [SEP] post-processor. Special tokens come first: [PAD]=0 [UNK] [CLS] [SEP] [MASK].
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from .io import write_text_atomic

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> SpecialIds:
        ids = {}
        for token in SPECIAL_TOKENS:
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                raise ValueError(f"the tokenizer has no {token} token")
            ids[token.strip("[]").lower()] = token_id
        return cls(**ids)

    def as_dict(self) -> dict[str, int]:
        return {f"[{k.upper()}]": v for k, v in self.__dict__.items()}


def train_tokenizer(
    sentences: Iterable[str], vocab_size: int, lowercase: bool = True, min_frequency: int = 2
) -> Tokenizer:
    wordpiece = BertWordPieceTokenizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    wordpiece.train_from_iterator(
        sentences,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        limit_alphabet=20000,  # keep every CJK character that occurs; each is a whole token
        show_progress=False,
    )
    # The trainer's id order varies between runs (hash-map ties); WordPiece only needs the
    # set, so ids are re-assigned in a canonical order to make runs with one seed identical.
    learned = sorted(set(wordpiece.get_vocab()) - set(SPECIAL_TOKENS))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + learned)}
    return BertWordPieceTokenizer(
        vocab, clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )._tokenizer


def load_tokenizer(path: str | Path, lowercase: bool = True) -> Tokenizer:
    """A tokenizer.json, a vocab.txt, or a directory holding either."""
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (path / name).is_file():
                return load_tokenizer(path / name, lowercase)
        raise FileNotFoundError(f"{path} holds neither tokenizer.json nor vocab.txt")
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    if path.suffix == ".json":
        tokenizer = Tokenizer.from_file(str(path))
        # HF folders often save padding/truncation settings; callers decide those themselves
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer
    wordpiece = BertWordPieceTokenizer(
        str(path), clean_text=True, handle_chinese_chars=True, lowercase=lowercase
    )
    return wordpiece._tokenizer


def continuation_mask(tokenizer: Tokenizer) -> np.ndarray:
    """(V,) bool: True for '##' pieces, which continue the word before them."""
    mask = np.zeros(tokenizer.get_vocab_size(), dtype=bool)
    for token, token_id in tokenizer.get_vocab().items():
        if token.startswith("##"):
            mask[token_id] = True
    return mask


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, lowercase: bool, max_len: int) -> None:
    """tokenizer.json plus the files `transformers.AutoTokenizer` expects beside it."""
    write_text_atomic(out_dir / "tokenizer.json", tokenizer.to_str(pretty=True))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    write_text_atomic(out_dir / "vocab.txt", "".join(f"{token}\n" for token, _ in vocab))
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "tokenize_chinese_chars": True,
        "model_max_length": max_len,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    write_text_atomic(out_dir / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    special = {k: config[k] for k in config if k.endswith("_token")}
    write_text_atomic(out_dir / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")


__all__ = [
    "SPECIAL_TOKENS",
    "SpecialIds",
    "continuation_mask",
    "load_tokenizer",
    "save_tokenizer",
    "train_tokenizer",
]
