"""A sentence encoder: BERT, then mean or [CLS] pooling (sentence-transformers' Transformer +
Pooling modules), the BertModel's own names so that a saved folder loads in transformers'
AutoModel and sentence-transformers alike. Normalization is not part of the forward pass: the
losses compare by cosine; it is written to the folder (a Normalize module) for the service."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import BertConfig
from ..model import BertModel
from .classifier import load_fitting, read_bert

POOLINGS = ("mean", "cls")


class SentenceEncoder(nn.Module):
    def __init__(self, cfg: BertConfig, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}")
        self.config = cfg
        self.pooling = pooling
        self.bert = BertModel(cfg)
        # whether bert.pooler holds trained weights: written to the folder only then (mean
        # and [CLS] pooling never use it, and a random pooler must not pass for a trained one)
        self.pooler_trained = True

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        """(B, T) int x3 -> (B, H) sentence embeddings, float32."""
        hidden, _ = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        hidden = hidden.float()
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask[..., None].to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, H)


def load_encoder(directory: Path, pooling: str) -> SentenceEncoder:
    """The encoder of any BERT folder (ours, transformers', sentence-transformers'); heads are
    dropped. A pooler the checkpoint lacks starts fresh: mean and [CLS] pooling never use it."""
    _, cfg, weights = read_bert(directory)
    model = SentenceEncoder(cfg, pooling)
    state = {k: v for k, v in weights.items() if k.startswith("bert.")}
    missing = load_fitting(model, state, directory, ("bert.pooler.",))
    model.pooler_trained = not missing
    return model
