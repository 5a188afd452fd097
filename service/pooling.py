"""Sentence embeddings from token states: [CLS], mean over real tokens, or the pooler output.

Shared by the service and by export's parity gate, so both compute embeddings one way.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

POOLINGS = ("mean", "cls", "pooler")

Floats = npt.NDArray[np.float32]


def pool(
    hidden: Floats,
    attention_mask: npt.NDArray[np.int64],
    pooling: str,
    pooler_output: Floats | None = None,
) -> Floats:
    """hidden: (B, T, H); attention_mask: (B, T) 1 for real tokens -> (B, H) float32."""
    if pooling == "cls":
        return hidden[:, 0].astype(np.float32)
    if pooling == "mean":
        weights = attention_mask[..., None].astype(np.float32)  # (B, T, 1)
        summed = (hidden.astype(np.float32) * weights).sum(axis=1)  # (B, H)
        mean: Floats = summed / np.maximum(weights.sum(axis=1), 1.0)
        return mean
    if pooling == "pooler":
        if pooler_output is None:
            raise ValueError("this model has no pooler output")
        return pooler_output.astype(np.float32)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


def pool_one(hidden: Floats, pooling: str, pooler_output: Floats | None = None) -> Floats:
    """`pool` for one unpadded sequence, hidden: (n, H) -> (H,), without building a mask."""
    if pooling == "mean":
        mean: Floats = hidden.astype(np.float32).sum(axis=0) / np.float32(max(len(hidden), 1))
        return mean
    if pooling == "cls":
        first: Floats = hidden[0].astype(np.float32)
        return first
    pooled: Floats = pool(hidden[None], np.ones((1, len(hidden)), np.int64), pooling, pooler_output)
    row: Floats = pooled[0]
    return row


def l2_normalize(vectors: Floats) -> Floats:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit: Floats = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def cosine(a: Floats, b: Floats) -> Floats:
    """Row-wise cosine similarity of (N, H) arrays."""
    similarity: Floats = (l2_normalize(a) * l2_normalize(b)).sum(axis=-1)
    return similarity


def softmax(logits: Floats) -> Floats:
    """(..., C) -> probabilities over the last axis, stable for large logits."""
    shifted: Floats = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities: Floats = shifted / shifted.sum(-1, keepdims=True)
    return probabilities
