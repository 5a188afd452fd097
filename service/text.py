"""Tokenization for the routes: truncation in either direction, made visible, never silent."""

from __future__ import annotations

import numpy as np
from tokenizers import Encoding, Tokenizer

TRUNCATE_OR_SHORTEN = "send truncate=true or a shorter input"


class InputTooLong(ValueError):
    def __init__(self, index: int, tokens: int, limit: int, remedy: str) -> None:
        super().__init__(
            f"input {index} has {tokens} tokens, over the model's max_seq_len {limit}; {remedy}"
        )


class Tokenized:
    """One tokenized input. Token strings and offsets are read from the encoding only when a
    response asks for them (most ask for a sentence vector only)."""

    __slots__ = ("encoding", "ids", "truncated", "type_ids")

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        self.ids = np.asarray(encoding.ids, dtype=np.int64)  # (n,)
        self.type_ids = np.asarray(encoding.type_ids, dtype=np.int64)  # (n,)
        self.truncated = bool(encoding.overflowing)

    @property
    def tokens(self) -> list[str]:
        return list(self.encoding.tokens)

    @property
    def offsets(self) -> list[tuple[int, int]]:
        return [(start, end) for start, end in self.encoding.offsets]


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
        remedy: str = TRUNCATE_OR_SHORTEN,
    ) -> list[Tokenized]:
        """`remedy`: what the too-long error tells the client to do (routes without a
        truncate option say something else)."""
        tokenizer = (self.left if direction == "left" else self.right) if truncate else self.full
        if len(texts) == 1:  # encode_batch hands even one text to its thread pool
            first = texts[0]
            if isinstance(first, str):
                encodings = [tokenizer.encode(first)]
            else:
                encodings = [tokenizer.encode(first[0], first[1])]
        else:
            encodings = tokenizer.encode_batch(texts)
        if not truncate:
            for index, enc in enumerate(encodings):
                if len(enc.ids) > self.max_len:
                    raise InputTooLong(index, len(enc.ids), self.max_len, remedy)
        return [Tokenized(e) for e in encodings]

    def token_id(self, token: str) -> int | None:
        return self.full.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        return self.full.id_to_token(token_id) or "[UNK]"

    def decode(self, ids: list[int]) -> str:
        return str(self.full.decode(ids, skip_special_tokens=True))
