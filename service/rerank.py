"""/rerank (TEI's shape), /v1/rerank (Jina's and Cohere's, as vLLM serves it) and /similarity
(TEI's): one scorer behind all three.

A model with a one-logit classifier (a cross-encoder: `bert-finetune --task regression`, or a
sentence-transformers CrossEncoder) scores each `[CLS] query [SEP] document [SEP]` pair, its
logit through the model's activation (sigmoid unless the artifact says otherwise, as
CrossEncoder and TEI do; `raw_scores` keeps the logit). A model without a classifier reranks by
the cosine of the query's and each document's sentence vectors; a classifier of several labels
cannot rerank (424). There is no cap of 32 documents (TEI's): the documents are sequences like
any others to the batcher, bounded by max_rerank_documents and the token limits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import check_chars
from .engine import Engine, MissingHead
from .errors import TooLarge
from .schemas import JinaRerankRequest, RerankRequest, SimilarityRequest, texts_of
from .settings import Settings

RESULT_BYTES = 80  # one result's JSON without its text: index, score, the keys


@dataclass(frozen=True)
class Scores:
    values: list[float]  # one per document, in their order
    tokens: int  # what the model read


def check_documents(count: int, settings: Settings, what: str = "documents") -> None:
    if count > settings.max_rerank_documents:
        limit = settings.max_rerank_documents
        raise TooLarge(f"{count} {what} exceed max_rerank_documents {limit}")


def can_rerank(engine: Engine) -> bool:
    """A cross-encoder (one logit) scores pairs; a model without a classifier compares
    vectors; a classifier into several labels can do neither (424)."""
    return not engine.backend.has_classifier or len(engine.artifact.labels) == 1


async def relevance(
    query: str,
    documents: list[str],
    engine: Engine,
    settings: Settings,
    route: str,
    answer_bytes: int,
    truncate: bool = True,
    direction: str = "right",
    raw_scores: bool = False,
) -> Scores:
    """Each document's relevance to `query`: the cross-encoder's score of the pair, else the
    cosine of their sentence vectors. `answer_bytes` is held until the answer is sent."""
    check_documents(len(documents), settings)
    check_chars([query, *documents], settings, "texts")
    if not engine.backend.has_classifier:
        return await similarity(query, documents, engine, route, answer_bytes, truncate, direction)
    if not can_rerank(engine):
        raise MissingHead(
            f"this model classifies into {len(engine.artifact.labels)} labels; reranking needs "
            "a cross-encoder (one logit) or an embedding model"
        )
    pairs = [(query, document) for document in documents]
    tokenized = await engine.tokenize(pairs, truncate, direction)
    engine.responses.reserve(answer_bytes, "ask for fewer documents")
    outputs = await engine.run(tokenized, route)
    scores = (await engine.classify(outputs))[:, 0].astype(np.float64)  # (D,) logits
    if not raw_scores and engine.artifact.score_activation == "sigmoid":
        scores = 1 / (1 + np.exp(-scores))
    return Scores([float(s) for s in scores], sum(len(t.ids) for t in tokenized))


async def similarity(
    source: str,
    sentences: list[str],
    engine: Engine,
    route: str,
    answer_bytes: int,
    truncate: bool = True,
    direction: str = "right",
) -> Scores:
    """The cosine of each sentence's vector with the source's (the artifact's pooling)."""
    tokenized = await engine.tokenize([source, *sentences], truncate, direction)
    engine.responses.reserve(answer_bytes, "ask for fewer documents")
    outputs = await engine.run(tokenized, route)
    vectors = np.stack(engine.sentence_vectors(outputs, engine.artifact.pooling, True, None))
    cosines = vectors[1:] @ vectors[0]  # (D,)
    return Scores([float(c) for c in cosines], sum(len(t.ids) for t in tokenized))


def best_first(scores: list[float], top_n: int | None = None) -> list[int]:
    """Indexes by descending score; ties keep the documents' order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [int(i) for i in order[:top_n]]


def _answer_bytes(texts: list[str], with_text: bool) -> int:
    return 200 + len(texts) * RESULT_BYTES + (2 * sum(map(len, texts)) if with_text else 0)


async def rerank_payload(body: RerankRequest, engine: Engine, settings: Settings) -> Any:
    """TEI's /rerank: [{"index", "score", "text"?}], best first."""
    texts = texts_of(body.texts)
    scores = await relevance(
        body.query,
        texts,
        engine,
        settings,
        "/rerank",
        _answer_bytes(texts, body.return_text),
        body.truncate,
        body.truncation_direction,
        body.raw_scores,
    )
    results = []
    for index in best_first(scores.values):
        result: dict[str, Any] = {"index": index, "score": scores.values[index]}
        if body.return_text:
            result["text"] = texts[index]
        results.append(result)
    return results


async def jina_rerank_payload(
    body: JinaRerankRequest, engine: Engine, settings: Settings
) -> dict[str, Any]:
    """/v1/rerank: {"id", "model", "usage", "results": [{"index", "relevance_score",
    "document"?}]}, best first, the top_n best when asked."""
    texts = body.texts()
    answer_bytes = _answer_bytes(texts, body.return_documents)  # top_n or not: a bound
    scores = await relevance(body.query, texts, engine, settings, "/v1/rerank", answer_bytes)
    results = []
    for index in best_first(scores.values, body.top_n):
        result: dict[str, Any] = {"index": index, "relevance_score": scores.values[index]}
        if body.return_documents:
            result["document"] = {"text": texts[index]}
        results.append(result)
    return {
        "id": f"rerank-{uuid.uuid4().hex}",
        "model": engine.model_name,
        "usage": {"total_tokens": scores.tokens},
        "results": results,
    }


async def similarity_payload(
    body: SimilarityRequest, engine: Engine, settings: Settings
) -> list[float]:
    """TEI's /similarity: the cosine of each sentence with the source sentence, in order."""
    sentences = texts_of(body.inputs.sentences)
    check_documents(len(sentences), settings, "sentences")
    check_chars([body.inputs.source_sentence, *sentences], settings, "texts")
    scores = await similarity(
        body.inputs.source_sentence,
        sentences,
        engine,
        "/similarity",
        100 + 25 * len(sentences),
        body.truncate,
        body.truncation_direction,
    )
    return scores.values
