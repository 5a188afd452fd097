"""Evaluators of sentence embeddings, one file each, as sentence-transformers' (similarity.py:
EmbeddingSimilarityEvaluator; retrieval.py: InformationRetrievalEvaluator)."""
