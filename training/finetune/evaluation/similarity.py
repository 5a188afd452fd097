"""EmbeddingSimilarityEvaluator (sentence-transformers' name): Spearman and Pearson correlation
of the pairs' cosine similarity with their gold scores, STS-B's headline figure."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr

from . import unit_rows


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, H) x (N, H) -> (N,) cosine of row i of a with row i of b."""
    return np.einsum("nh,nh->n", unit_rows(a), unit_rows(b))


def similarity_report(a: np.ndarray, b: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    cosine = cosine_rows(a, b)
    if np.ptp(scores) == 0 or np.ptp(cosine) == 0:  # a correlation is undefined
        return {"spearman_cosine": 0.0, "pearson_cosine": 0.0, "pairs": len(scores)}
    return {
        "spearman_cosine": float(spearmanr(cosine, scores).statistic),
        "pearson_cosine": float(pearsonr(cosine, scores).statistic),
        "pairs": len(scores),
    }
