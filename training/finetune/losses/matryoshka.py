"""MatryoshkaLoss (sentence-transformers' name; Kusupati et al., 2022): the inner loss summed
over the embeddings cut to each of `dims` (e.g. 384, 256, 128, 64), so that a prefix of the
vector is itself a good embedding; the service's `dimensions` cuts vectors the same way."""

from __future__ import annotations

import torch

from . import EmbeddingLoss


class MatryoshkaLoss:
    def __init__(
        self, inner: EmbeddingLoss, dims: list[int], weights: list[float] | None = None
    ) -> None:
        self.inner = inner
        self.dims = dims
        self.weights = weights or [1.0] * len(dims)

    def __call__(self, columns: list[torch.Tensor], scores: torch.Tensor | None) -> torch.Tensor:
        total = columns[0].new_zeros(())
        for dim, weight in zip(self.dims, self.weights, strict=True):
            total = total + weight * self.inner([c[..., :dim] for c in columns], scores)
        return total
