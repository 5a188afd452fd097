"""CoSENTLoss (sentence-transformers' name; Su, 2022): for scored pairs, every pair with the
higher score must have the higher cosine: log(1 + sum over (i, j) with y_i < y_j of
exp(scale * (cos_i - cos_j))). Scores are used as they are (STS-B's 0-5): only their order
counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class CoSENTLoss:
    def __init__(self, scale: float = 20.0) -> None:
        self.scale = scale

    def __call__(self, columns: list[torch.Tensor], scores: torch.Tensor | None) -> torch.Tensor:
        assert scores is not None, "CoSENT needs scored pairs"
        cosine = F.cosine_similarity(columns[0], columns[1], dim=-1) * self.scale  # (B,)
        differences = cosine[:, None] - cosine[None, :]  # (B, B): cos_i - cos_j
        wrong_order = (scores[:, None] < scores[None, :]).to(differences.dtype)  # y_i < y_j
        differences = differences - (1 - wrong_order) * 1e12  # only the pairs that count
        zero = torch.zeros(1, dtype=differences.dtype, device=differences.device)  # the "1 +"
        return torch.logsumexp(torch.cat([zero, differences.flatten()]), dim=0)
