"""Masked-LM targets: which positions to predict and what the model sees there.

15% of the non-special tokens are chosen (stochastically rounded, so the rate is 15% on
average even for short sequences; at least 1, at most max_predictions). Of those:
  80% -> [MASK]
  10% -> a random non-special token
  10% -> left unchanged
[CLS], [SEP] and [PAD] are never chosen. With whole-word masking a word's '##' pieces are
chosen together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tokenizer import SpecialIds


@dataclass
class Masked:
    input_ids: np.ndarray  # (T,) what the model sees
    positions: np.ndarray  # (n,) sorted indices of the predicted positions
    labels: np.ndarray  # (n,) the original tokens there


class Masker:
    def __init__(
        self,
        specials: SpecialIds,
        vocab_size: int,
        masked_lm_prob: float = 0.15,
        max_predictions: int = 20,
        continuation: np.ndarray | None = None,  # (V,) bool, '##' pieces; enables whole-word
    ) -> None:
        self.mask_id = specials.mask
        self.never = np.array([specials.cls, specials.sep, specials.pad])
        all_special = np.array(
            [specials.pad, specials.unk, specials.cls, specials.sep, specials.mask]
        )
        self.random_pool = np.setdiff1d(np.arange(vocab_size), all_special)
        self.prob = masked_lm_prob
        self.max_predictions = max_predictions
        self.continuation = continuation

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> Masked:
        never = (tokens == self.never[0]) | (tokens == self.never[1]) | (tokens == self.never[2])
        candidates = np.flatnonzero(~never)
        expected = len(candidates) * self.prob
        count = int(expected) + int(rng.random() < expected - int(expected))
        count = min(max(1, count), self.max_predictions, len(candidates))
        if self.continuation is None:
            chosen = np.sort(rng.choice(candidates, size=count, replace=False))
        else:
            chosen = self._whole_words(tokens, candidates, count, rng)
        labels = tokens[chosen].copy()
        inputs = tokens.copy()
        roll = rng.random(len(chosen))
        inputs[chosen[roll < 0.8]] = self.mask_id  # 80%: [MASK]
        swap = chosen[(roll >= 0.8) & (roll < 0.9)]  # 10%: a random token
        inputs[swap] = rng.choice(self.random_pool, size=len(swap))
        # the remaining 10% keep their token, so the model cannot trust unmasked inputs blindly
        return Masked(inputs, chosen, labels)

    def _whole_words(
        self, tokens: np.ndarray, candidates: np.ndarray, count: int, rng: np.random.Generator
    ) -> np.ndarray:
        assert self.continuation is not None
        starts = ~self.continuation[tokens[candidates]]
        starts[0] = True
        # a candidate right after a special token also starts a word
        starts[1:] |= np.diff(candidates) > 1
        words = np.split(candidates, np.flatnonzero(starts)[1:])
        picked: list[np.ndarray] = []
        total = 0
        for index in rng.permutation(len(words)):
            word = words[index]
            if total + len(word) > count:
                continue  # as the original: skip words that would overshoot
            picked.append(word)
            total += len(word)
            if total >= count:
                break
        if not picked:  # every word is longer than the budget: take the shortest one's head
            picked = [min(words, key=len)[:count]]
        return np.sort(np.concatenate(picked))
