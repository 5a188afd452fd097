"""InformationRetrievalEvaluator (sentence-transformers' name), for (anchor, positive) data:
every anchor ranks all distinct positives of the evaluation set by cosine; its relevant
documents are the positives it was paired with. MRR@10, nDCG@10 (binary gains), recall@1 and
recall@10, averaged over anchors."""

from __future__ import annotations

import numpy as np

from . import unit_rows


def retrieval_report(anchors: list[str], positives: list[str], embed: object) -> dict[str, float]:
    """`embed(texts) -> (N, H)`."""
    corpus = sorted(set(positives))
    where = {text: i for i, text in enumerate(corpus)}
    queries = sorted(set(anchors))
    relevant: dict[str, set[int]] = {q: set() for q in queries}
    for anchor, positive in zip(anchors, positives, strict=True):
        relevant[anchor].add(where[positive])
    q = unit_rows(embed(queries))  # type: ignore[operator]
    c = unit_rows(embed(corpus))  # type: ignore[operator]
    k = min(10, len(corpus))
    mrr = ndcg = recall1 = recall10 = 0.0
    for start in range(0, len(queries), 256):  # (256, C) similarities at a time
        sims = q[start : start + 256] @ c.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # (b, k)
        for row, query in enumerate(queries[start : start + 256]):
            gold = relevant[query]
            hits = [int(doc) in gold for doc in top[row]]
            first = next((rank for rank, hit in enumerate(hits) if hit), None)
            mrr += 0.0 if first is None else 1.0 / (first + 1)
            dcg = sum(1.0 / np.log2(rank + 2) for rank, hit in enumerate(hits) if hit)
            ideal = sum(1.0 / np.log2(rank + 2) for rank in range(min(len(gold), k)))
            ndcg += dcg / ideal
            recall1 += float(hits[0]) / len(gold)
            recall10 += sum(hits) / len(gold)
    n = len(queries)
    return {
        "mrr@10": mrr / n,
        "ndcg@10": ndcg / n,
        "recall@1": recall1 / n,
        "recall@10": recall10 / n,
        "queries": n,
        "corpus": len(corpus),
    }
