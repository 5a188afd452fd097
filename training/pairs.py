"""Training pairs built as google-research/bert's create_pretraining_data.py builds them.

Documents are walked in a shuffled order (a new order each epoch). Sentences are gathered into a
chunk until it reaches the target length (max_seq_len - 3, or with probability short_seq_prob a
shorter random length, drawn once per document). Segment A is the chunk's leading whole
sentences; B is the rest of the chunk (IsNext) or, with probability 0.5, sentences from a
different document (NotNext), in which case A's unused sentences are put back to start the next
chunk. The pair is truncated to fit, one token at a time from the longer side, front or back
at random.

One change from the original, for honesty of the NSP task: the original makes every
one-sentence chunk a NotNext pair, so only ~45% of its pairs are IsNext. Here the label is drawn
first, and a one-sentence IsNext chunk takes the document's next sentence as B (or, at a
document's end, is split inside the sentence), so IsNext is 50% as the paper says.

The generator's whole state (position, epoch, RNG) is a small dict, so resume is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .token_store import TokenStore
from .tokenizer import SpecialIds

IS_NEXT, NOT_NEXT = 0, 1  # transformers' next_sentence_label convention


@dataclass
class Instance:
    tokens: np.ndarray  # (T,) int: [CLS] A [SEP] B [SEP], or [CLS] A [SEP] without NSP
    segments: np.ndarray  # (T,) int: 0 for [CLS] A [SEP], 1 for B [SEP]
    nsp_label: int  # IS_NEXT, NOT_NEXT, or -1 when NSP is off


class PairGenerator:
    def __init__(
        self,
        store: TokenStore,
        documents: np.ndarray,
        specials: SpecialIds,
        max_seq_len: int,
        short_seq_prob: float,
        nsp: bool,
        seed: int,
        pack: bool = False,
    ) -> None:
        if pack and nsp:
            raise ValueError("--pack needs --no-nsp (a packed sequence has no sentence pair)")
        if nsp and len(documents) < 2:
            raise ValueError(
                "next-sentence prediction needs at least 2 documents (blank-line separated); "
                "add documents or pass --no-nsp"
            )
        self.store = store
        self.documents = np.asarray(documents, dtype=np.int64)
        self.specials = specials
        self.nsp = nsp
        self.pack = pack
        # [CLS] A [SEP] B [SEP] has three special tokens; [CLS] A [SEP] has two
        self.max_seq_len = max_seq_len
        self.max_tokens = max_seq_len - (3 if nsp else 2)
        self.short_seq_prob = short_seq_prob
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.doc_pos = 0  # index into this epoch's order
        self.sent_pos = 0  # next sentence of the current document, relative to its start
        self.tok_pos = 0  # packing only: next token of that sentence
        self.target = -1  # target length for the current document; -1 = draw at next use
        self._order = self._epoch_order()

    # -- state --------------------------------------------------------------------------------
    def set_max_seq_len(self, max_seq_len: int) -> None:
        """Longer (or shorter) sequences from here on; the position in the corpus is kept."""
        self.max_seq_len = max_seq_len
        self.max_tokens = max_seq_len - (3 if self.nsp else 2)

    def state_dict(self) -> dict[str, Any]:
        return {
            "max_seq_len": self.max_seq_len,
            "epoch": self.epoch,
            "doc_pos": self.doc_pos,
            "sent_pos": self.sent_pos,
            "target": self.target,
            "tok_pos": self.tok_pos,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.doc_pos = int(state["epoch"]), int(state["doc_pos"])
        self.sent_pos, self.target = int(state["sent_pos"]), int(state["target"])
        self.tok_pos = int(state.get("tok_pos", 0))
        self.set_max_seq_len(int(state.get("max_seq_len", self.max_seq_len)))
        self.rng.bit_generator.state = state["rng"]
        self._order = self._epoch_order()

    def _epoch_order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.documents)

    # -- generation ---------------------------------------------------------------------------
    def _concat(self, first: int, stop: int) -> np.ndarray:
        """Tokens of sentences [first, stop) (absolute indices) as one array."""
        sents = self.store.sentences
        return np.asarray(self.store.tokens[sents[first] : sents[stop]])

    def _advance_document(self) -> None:
        self.doc_pos += 1
        self.sent_pos = 0
        self.tok_pos = 0
        self.target = -1
        if self.doc_pos >= len(self._order):
            self.epoch += 1
            self.doc_pos = 0
            self._order = self._epoch_order()

    def _random_b(self, doc: int, target_b: int) -> np.ndarray:
        """Sentences from a random start in a document other than `doc`, up to target_b tokens."""
        others = self.documents[self.documents != doc]
        other = int(others[self.rng.integers(len(others))])
        first, stop = self.store.sentence_range(other)
        start = first + int(self.rng.integers(stop - first))
        end, length = start, 0
        while end < stop and length < target_b:
            length += self.store.sentence_length(end)
            end += 1
        return self._concat(start, end)

    def __next__(self) -> Instance:
        if self.pack:
            return self._packed()
        while True:
            doc = int(self._order[self.doc_pos])
            first, stop = self.store.sentence_range(doc)
            if self.target < 0:
                self.target = self.max_tokens
                if self.rng.random() < self.short_seq_prob:
                    self.target = int(self.rng.integers(2, self.max_tokens + 1))
            start = first + self.sent_pos
            end, length = start, 0  # chunk = sentences [start, end)
            while end < stop:
                length += self.store.sentence_length(end)
                end += 1
                if length >= self.target:
                    break
            if end > start:
                instance, next_sentence = self._make_instance(doc, start, end, stop)
                self.sent_pos = next_sentence - first
                if next_sentence >= stop:
                    self._advance_document()
                return instance
            self._advance_document()

    def __iter__(self) -> PairGenerator:
        return self

    def _packed(self) -> Instance:
        """MLM only, no padding: [CLS] text [SEP] of exactly max_seq_len tokens, the text running
        on across sentence and document boundaries with a [SEP] between documents (RoBERTa's
        FULL-SENTENCES packing). A sentence cut at the end continues the next sequence."""
        sp = self.specials
        pieces: list[np.ndarray] = [np.array([sp.cls])]
        need = self.max_tokens
        while need > 0:
            doc = int(self._order[self.doc_pos])
            first, stop = self.store.sentence_range(doc)
            sentence = first + self.sent_pos
            if sentence >= stop:
                self._advance_document()
                if len(pieces) > 1:
                    pieces.append(np.array([sp.sep]))
                    need -= 1
                continue
            rest = self.store.sentence(sentence)[self.tok_pos :]
            taken = np.asarray(rest[:need])
            pieces.append(taken)
            need -= len(taken)
            if len(taken) < len(rest):
                self.tok_pos += len(taken)
            else:
                self.sent_pos, self.tok_pos = self.sent_pos + 1, 0
        pieces.append(np.array([sp.sep]))
        seq = np.concatenate(pieces).astype(np.int64)
        return Instance(seq, np.zeros_like(seq), -1)

    def _make_instance(self, doc: int, start: int, end: int, stop: int) -> tuple[Instance, int]:
        """Chunk = sentences [start, end) of `doc`, whose sentences end at `stop`.
        Returns the instance and the first sentence the next chunk begins with."""
        sp = self.specials
        if not self.nsp:  # RoBERTa FULL-SENTENCES style: one segment, MLM only
            tokens = self._concat(start, end)[: self.max_tokens]
            seq = np.concatenate([[sp.cls], tokens, [sp.sep]])
            return Instance(seq, np.zeros_like(seq), -1), end
        n_sent = end - start
        a_end = start + (int(self.rng.integers(1, n_sent)) if n_sent >= 2 else 1)
        is_random = bool(self.rng.random() < 0.5)
        next_sentence = end
        a = self._concat(start, a_end)
        if not is_random and n_sent >= 2:
            b = self._concat(a_end, end)
        elif not is_random and end < stop:  # one-sentence chunk: its true next sentence is B
            b = self._concat(end, end + 1)
            next_sentence = end + 1
        elif not is_random and len(a) >= 2:  # last sentence of the document: split inside it
            cut = int(self.rng.integers(1, len(a)))
            a, b = a[:cut], a[cut:]
        else:
            is_random = True
            b = self._random_b(doc, max(1, self.target - len(a)))
            next_sentence = a_end  # put the unused sentences back for the next chunk
        a, b = self._truncate_pair(a, b)
        seq = np.concatenate([[sp.cls], a, [sp.sep], b, [sp.sep]])
        segments = np.zeros(len(seq), dtype=np.int64)
        segments[len(a) + 2 :] = 1
        return Instance(seq, segments, NOT_NEXT if is_random else IS_NEXT), next_sentence

    def _truncate_pair(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Trims the longer side, one token at a time from its front or back at random."""
        a_lo, a_hi, b_lo, b_hi = 0, len(a), 0, len(b)
        while (a_hi - a_lo) + (b_hi - b_lo) > self.max_tokens:
            front = self.rng.random() < 0.5
            if a_hi - a_lo > b_hi - b_lo:
                a_lo, a_hi = (a_lo + 1, a_hi) if front else (a_lo, a_hi - 1)
            else:
                b_lo, b_hi = (b_lo + 1, b_hi) if front else (b_lo, b_hi - 1)
        return a[a_lo:a_hi], b[b_lo:b_hi]
