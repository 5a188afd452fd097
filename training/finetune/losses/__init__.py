"""Sentence-embedding losses, one file each, named and behaving as sentence-transformers'
(`mnrl` = MultipleNegativesRankingLoss, `cached_mnrl` = its gradient-cache form, `cosent` =
CoSENTLoss, `simcse` = MNRL on (text, text) under two dropout masks, `matryoshka` =
MatryoshkaLoss). A loss sees the embeddings of a batch's columns, not the model: how they were
computed (at once, or mini batch by mini batch with a gradient cache) is the loop's business.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# columns' embeddings, each (B, H), and the batch's scores (B,) or None -> scalar loss
EmbeddingLoss = Callable[[list[torch.Tensor], torch.Tensor | None], torch.Tensor]


def cos_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, H) x (M, H) -> (N, M) cosine similarities."""
    a = torch.nn.functional.normalize(a, p=2, dim=-1)
    b = torch.nn.functional.normalize(b, p=2, dim=-1)
    return a @ b.T
