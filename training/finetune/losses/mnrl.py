"""MultipleNegativesRankingLoss (sentence-transformers' name): for (anchor, positive[, negative])
rows, each anchor's positive must outscore every other positive and negative in the batch
(in-batch negatives): cross-entropy over scaled cosine similarities. `symmetric` adds the
positives ranking the anchors (MultipleNegativesSymmetricRankingLoss) and averages the two.
A batch must not hold a text twice (a false negative): see batches.no_duplicate_batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cos_sim


class MultipleNegativesRankingLoss:
    def __init__(self, scale: float = 20.0, symmetric: bool = False) -> None:
        self.scale = scale
        self.symmetric = symmetric

    def __call__(self, columns: list[torch.Tensor], scores: torch.Tensor | None) -> torch.Tensor:
        anchors, candidates = columns[0], torch.cat(columns[1:])  # (B, H), (B * (k - 1), H)
        logits = cos_sim(anchors, candidates) * self.scale  # (B, B * (k - 1))
        target = torch.arange(len(anchors), device=anchors.device)  # anchor i -> positive i
        loss = F.cross_entropy(logits, target)
        if not self.symmetric:
            return loss
        backward = cos_sim(columns[1], anchors) * self.scale  # (B, B): positives rank anchors
        return (loss + F.cross_entropy(backward, target)) / 2
