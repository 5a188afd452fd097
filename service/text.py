"""Tokenization for the routes: truncation in either direction, made visible, never silent."""

from __future__ import annotations

from collections.abc import Sequence

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
    response asks for them (most ask for a sentence vector only), or, for inputs tokenized on
    a worker thread, copied there when asked for and the encoding let go of there."""

    __slots__ = ("_offsets", "_tokens", "encoding", "ids", "truncated", "type_ids")

    def __init__(self, encoding: Encoding, truncated: bool, keep: str = "encoding") -> None:
        """`keep`: "encoding" (read lazily), "tokens" (copied now) or "ids"."""
        self.ids = np.asarray(encoding.ids, dtype=np.int64)  # (n,)
        self.type_ids = np.asarray(encoding.type_ids, dtype=np.int64)  # (n,)
        self.truncated = truncated
        self.encoding: Encoding | None = encoding if keep == "encoding" else None
        self._tokens: list[str] | None = list(encoding.tokens) if keep == "tokens" else None
        self._offsets: list[tuple[int, int]] | None = (
            [(start, end) for start, end in encoding.offsets] if keep == "tokens" else None
        )

    @property
    def tokens(self) -> list[str]:
        if self._tokens is not None:
            return self._tokens
        assert self.encoding is not None, "tokenized without its tokens"
        return list(self.encoding.tokens)

    @property
    def offsets(self) -> list[tuple[int, int]]:
        if self._offsets is not None:
            return self._offsets
        assert self.encoding is not None, "tokenized without its tokens"
        return [(start, end) for start, end in self.encoding.offsets]


class Window:
    """One window of a long text: [CLS] + content tokens [start, end) + [SEP], the shape of a
    Tokenized that the batcher needs (ids and type ids)."""

    __slots__ = ("end", "ids", "start", "truncated", "type_ids")

    def __init__(self, ids: np.ndarray, start: int, end: int) -> None:
        self.ids = ids  # (n,) int64
        self.type_ids = np.zeros_like(ids)
        self.start, self.end = start, end  # content token span in the whole text
        self.truncated = False


class LongText:
    """A text split into overlapping windows, with every token's id, string and offsets."""

    def __init__(self, encoding: Encoding, windows: list[Window], cls_id: int, sep_id: int):
        self.encoding = encoding  # the whole text, no special tokens
        self.windows = windows
        self.cls_id, self.sep_id = cls_id, sep_id

    def owner(self) -> np.ndarray:
        """(n,) for each content token, the window where it sits most centrally."""
        n = len(self.encoding.ids)
        best = np.full(n, -1.0)
        owner = np.zeros(n, dtype=np.int64)
        for w, window in enumerate(self.windows):
            positions = np.arange(window.start, window.end)
            margin = np.minimum(positions - window.start, window.end - 1 - positions)
            better = margin > best[window.start : window.end]
            owner[window.start : window.end][better] = w
            best[window.start : window.end][better] = margin[better]
        return owner


class TooManyWindows(ValueError):
    """A text that needs more windows than max_chunks (413)."""


# characters a prefix keeps per token the model reads: English averages ~4.5 a token, Chinese
# ~1; a word of more than 8 characters a token (URLs, digits) only means a second, whole pass
PREFIX_CHARS_PER_TOKEN = 8


class TextTokenizer:
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
        # a text cut at a space keeps the tokens before it only where words split at spaces
        self.cuttable = type(self.full.pre_tokenizer).__name__ == "BertPreTokenizer"
        self.prefix_chars = PREFIX_CHARS_PER_TOKEN * max_len

    def tokenize(
        self,
        texts: list[str] | list[tuple[str, str]],
        truncate: bool = True,
        direction: str = "right",
        remedy: str = TRUNCATE_OR_SHORTEN,
        off_loop: bool = False,
        with_tokens: bool = False,
    ) -> list[Tokenized]:
        """`remedy`: what the too-long error tells the client to do (routes without a
        truncate option say something else). `off_loop`, for callers on a worker thread:
        encode_batch even for one text, since it lets go of the GIL and `encode` does not, and
        no encoding is kept (only its tokens, `with_tokens`): freeing 200 encodings of
        19,900-character texts holds the GIL for 37 ms, 220 ms measured under load, and it
        would happen on the event loop when the request ends."""
        tokenizer = (self.left if direction == "left" else self.right) if truncate else self.full
        # cut right: a text far longer than the model reads is tokenized from its start only
        prefixes = self._prefixes(texts) if truncate and direction == "right" else {}
        whole: list[str | tuple[str, str]] = list(texts)
        inputs = [prefixes.get(i, t) for i, t in enumerate(whole)]
        encodings = self._encode(tokenizer, inputs, off_loop)
        cut_short = {i for i in prefixes if self._cut(encodings[i], prefixes[i], direction)}
        redo = [i for i in prefixes if i not in cut_short]  # a prefix short of max_len tokens
        for i, encoding in zip(
            redo, self._encode(tokenizer, [texts[i] for i in redo], off_loop), strict=True
        ):
            encodings[i] = encoding
        if not truncate:
            for index, enc in enumerate(encodings):
                if len(enc.ids) > self.max_len:
                    raise InputTooLong(index, len(enc.ids), self.max_len, remedy)
        keep = ("tokens" if with_tokens else "ids") if off_loop else "encoding"
        return [
            Tokenized(e, i in cut_short or (truncate and self._cut(e, text, direction)), keep)
            for i, (e, text) in enumerate(zip(encodings, texts, strict=True))
        ]

    @staticmethod
    def _encode(
        tokenizer: Tokenizer, texts: Sequence[str | tuple[str, str]], off_loop: bool
    ) -> list[Encoding]:
        if off_loop:
            return list(tokenizer.encode_batch(list(texts)))
        # never the shared pool of encode_batch on the loop: behind a long batch there, the
        # loop waited 1.1 s for 16 sentences (a one-text batch is slower than encode anyway)
        return [tokenizer.encode(t) if isinstance(t, str) else tokenizer.encode(*t) for t in texts]

    def _prefixes(self, texts: Sequence[str | tuple[str, str]]) -> dict[int, str]:
        """{index: the text up to its first space past prefix_chars} for texts much longer than
        max_len tokens: tokenizing 19,900 characters to keep 512 tokens made 7x the tokens
        needed (CPU, and memory the whole server paid for in page faults). Up to a space the
        prefix's tokens are the text's (words are split at spaces first, and the normalizer
        maps characters one by one); a prefix that turns out shorter than max_len tokens is
        tokenized again whole."""
        if not self.cuttable:
            return {}
        prefixes = {}
        for index, text in enumerate(texts):
            if isinstance(text, str) and len(text) > 2 * self.prefix_chars:
                space = text.find(" ", self.prefix_chars, 2 * self.prefix_chars)
                if space > 0:
                    prefixes[index] = text[:space]
        return prefixes

    def _cut(self, encoding: Encoding, text: object, direction: str) -> bool:
        """Whether truncation dropped tokens of `text`. `encoding.overflowing` says so, but
        builds an Encoding per overflowing window, holding the GIL: 37% of the server's GIL
        time under 200 x 19,900 characters. A kept token's offset says so too: what lies past
        it (before it, cut on the left) gives tokens iff it is not blank once normalized."""
        if len(encoding.ids) < self.max_len:
            return False
        if not isinstance(text, str):  # a pair: either side may have been cut
            return bool(encoding.overflowing)
        kept = [
            span
            for span, special in zip(encoding.offsets, encoding.special_tokens_mask, strict=True)
            if not special
        ]
        if not kept:
            return bool(encoding.overflowing)
        rest = text[: kept[0][0]] if direction == "left" else text[kept[-1][1] :]
        normalizer = self.full.normalizer
        for start in range(0, len(rest), 256):  # all at once: 2.3 ms a 20,000-char rest
            piece = rest[start : start + 256]
            if (normalizer.normalize_str(piece) if normalizer else piece).strip():
                return True
        return False

    def windows(
        self, texts: list[str], stride: int, max_chunks: int, off_loop: bool = False
    ) -> list[LongText]:
        """For each text, overlapping windows of max_len tokens ([CLS] ... [SEP]) covering it,
        each starting `stride` content tokens after the previous one, the last one ending at
        the text's end. `off_loop`: one encode_batch (it lets go of the GIL), else encode."""
        cls_id = self.full.token_to_id("[CLS]")
        sep_id = self.full.token_to_id("[SEP]")
        assert cls_id is not None and sep_id is not None
        span = self.max_len - 2
        longs = []
        encodings = (
            self.full.encode_batch(texts, add_special_tokens=False)
            if off_loop
            else [self.full.encode(t, add_special_tokens=False) for t in texts]
        )
        for index, encoding in enumerate(encodings):
            n = len(encoding.ids)
            last = max(n - span, 0)
            starts = [*range(0, last, stride), last]
            if len(starts) > max_chunks:
                raise TooManyWindows(
                    f"input {index} has {n} tokens: {len(starts)} windows of {self.max_len} at "
                    f"stride {stride}, over max_chunks {max_chunks}"
                )
            content = np.asarray(encoding.ids, dtype=np.int64)
            windows = []
            for start in starts:
                end = min(start + span, n)
                ids = np.concatenate([[cls_id], content[start:end], [sep_id]]).astype(np.int64)
                windows.append(Window(ids, start, end))
            longs.append(LongText(encoding, windows, cls_id, sep_id))
        return longs

    def token_id(self, token: str) -> int | None:
        return self.full.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        return self.full.id_to_token(token_id) or "[UNK]"

    def decode(self, ids: list[int]) -> str:
        return str(self.full.decode(ids, skip_special_tokens=True))
