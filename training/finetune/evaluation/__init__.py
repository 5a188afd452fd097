"""Evaluators of sentence embeddings, one file each, as sentence-transformers' (similarity.py:
EmbeddingSimilarityEvaluator; retrieval.py: InformationRetrievalEvaluator)."""

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """(N, H) rows scaled to length 1 (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
