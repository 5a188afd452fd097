"""Tokenization for the routes: truncation in either direction, made visible, never silent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer


class InputTooLong(ValueError):
    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(
            f"input {index} has {tokens} tokens, over the model's max_seq_len {limit}; "
            "send truncate=true or a shorter input"
        )


@dataclass
class Tokenized:
    ids: np.ndarray  # (n,) int64
    type_ids: np.ndarray  # (n,) int64
    tokens: list[str]
    offsets: list[tuple[int, int]]
    truncated: bool


class TextEncoder:
    """Three copies of the tokenizer, because truncation settings live on the object."""

    def __init__(self, tokenizer_json: str, max_len: int) -> None:
        self.max_len = max_len
        self.full = Tokenizer.from_str(tokenizer_json)
        self.full.no_padding()
        self.full.no_truncation()
        self.right = Tokenizer.from_str(tokenizer_json)
        self.right.no_padding()
        self.right.enable_truncation(max_len, direction="right")
        self.left = Tokenizer.from_str(tokenizer_json)
        self.left.no_padding()
        self.left.enable_truncation(max_len, direction="left")
        self.vocab_size = self.full.get_vocab_size()

    def encode(
        self,
        texts: list[str] | list[tuple[str, str]],
        truncate: bool = True,
        direction: str = "right",
    ) -> list[Tokenized]:
        if not truncate:
            encodings = self.full.encode_batch(texts)
            for index, enc in enumerate(encodings):
                if len(enc.ids) > self.max_len:
                    raise InputTooLong(index, len(enc.ids), self.max_len)
        else:
            tokenizer = self.left if direction == "left" else self.right
            encodings = tokenizer.encode_batch(texts)
        return [self._wrap(e) for e in encodings]

    @staticmethod
    def _wrap(enc: Encoding) -> Tokenized:
        return Tokenized(
            np.asarray(enc.ids, dtype=np.int64),
            np.asarray(enc.type_ids, dtype=np.int64),
            list(enc.tokens),
            [tuple(o) for o in enc.offsets],  # type: ignore[misc]
            bool(enc.overflowing),
        )

    def token_id(self, token: str) -> int | None:
        return self.full.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        return self.full.id_to_token(token_id) or "[UNK]"

    def decode(self, ids: list[int]) -> str:
        return str(self.full.decode(ids, skip_special_tokens=True))
