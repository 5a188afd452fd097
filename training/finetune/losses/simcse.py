"""Unsupervised SimCSE (Gao et al., 2021): each text is its own positive, the two embeddings
differing only by their dropout masks, the batch's other texts the negatives; with a
temperature of 0.05 that is MultipleNegativesRankingLoss at scale 20 on (text, text) rows,
which is how sentence-transformers trains it. The loop embeds the one text column twice, in
two forward passes."""

from __future__ import annotations

from .mnrl import MultipleNegativesRankingLoss


class SimCSELoss(MultipleNegativesRankingLoss):
    views = 2  # forward passes of the one text column per step

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__(scale=scale, symmetric=False)
