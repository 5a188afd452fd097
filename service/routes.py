"""Request checks and response shapes, one `*_payload` function per POST route. No model logic
lives here.

Every POST route is answered by service.hot_path, which reads and validates the body and calls
the route's payload function (`POST_ROUTES`). route_docs.py declares the same routes for /docs
only (request and response schemas, the error table): that router is never mounted, so there is
one path per route. The GET routes (/health, /ready, /metrics, /info) are in get_routes.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from pydantic import BaseModel

from .checks import check_inputs
from .engine import Engine, InvalidInput, serialize_vector
from .errors import TooLarge, clip
from .pooling import softmax
from .rerank import jina_rerank_payload, rerank_payload, similarity_payload
from .responses import off_loop, vector_bytes
from .schemas import (
    ClassifyRequest,
    EmbedRequest,
    FillMaskRequest,
    JinaRerankRequest,
    NextSentenceOut,
    NextSentenceRequest,
    NextSentenceResponse,
    OpenAIEmbeddingRequest,
    RerankRequest,
    SimilarityRequest,
    TokenizeRequest,
    texts_of,
)
from .settings import Settings
from .text import LongText


async def embed_payload(body: EmbedRequest, engine: Engine, settings: Settings) -> Any:
    texts = texts_of(body.inputs)
    check_inputs(texts, settings)
    engine.check_dimensions(body.dimensions)
    pooling = body.pooling or engine.artifact.pooling
    normalize = engine.artifact.normalize if body.normalize is None else body.normalize
    if (body.long_inputs or settings.long_inputs) == "chunk":
        return await chunked_payload(body, texts, engine, settings, pooling, normalize)
    want_sentence = body.output in ("sentence", "both")
    want_tokens = body.output in ("tokens", "both")
    tokenized = await engine.tokenize(
        texts, body.truncate, body.truncation_direction, with_tokens=want_tokens
    )
    tokens = sum(len(t.ids) for t in tokenized)
    if want_tokens:
        check_token_vectors(tokens, settings)
    estimate = embed_estimate(engine, body, len(texts), tokens if want_tokens else 0)
    engine.responses.reserve(estimate, EMBED_REMEDY)
    outputs = await engine.run(tokenized, "/embed")

    def build() -> dict[str, Any]:
        sentences = (
            engine.sentence_vectors(outputs, pooling, normalize, body.dimensions)
            if want_sentence
            else []
        )
        data = []
        for index, item in enumerate(outputs):
            row: dict[str, Any] = {"index": index}
            if want_sentence:
                row["embedding"] = serialize_vector(sentences[index], body.encoding_format)
            if want_tokens:
                vectors = engine.token_vectors(item, normalize, body.dimensions)
                row["tokens"] = [
                    token_row(int(tid), tok, span, vec, body.encoding_format)
                    for tid, tok, span, vec in zip(
                        item.tokenized.ids,
                        item.tokenized.tokens,
                        item.tokenized.offsets,
                        vectors,
                        strict=True,
                    )
                ]
            row["truncated"] = item.tokenized.truncated
            data.append(row)
        return embed_response(engine, data, tokens)

    return await engine.responses.write(await off_loop(estimate, build), estimate)


EMBED_REMEDY = 'ask for fewer inputs, "encoding_format": "base64", or "output": "sentence"'


def embed_estimate(engine: Engine, body: Any, sentences: int, token_vectors: int) -> int:
    """Bytes of an /embed answer: a row per sentence, a row per token vector asked for."""
    dimensions = body.dimensions or engine.artifact.hidden_size
    vector = vector_bytes(dimensions, body.encoding_format)
    return 200 + sentences * (vector + 40) + token_vectors * (vector + 80)


def check_token_vectors(count: int, settings: Settings) -> None:
    if count > settings.max_token_vectors:
        raise TooLarge(
            f"{count} token vectors exceed max_token_vectors {settings.max_token_vectors} "
            '(ask for fewer inputs, or "output": "sentence")'
        )


def token_row(
    token_id: int, token: str, span: tuple[int, int], vector: Any, encoding_format: str
) -> dict[str, Any]:
    return {
        "id": token_id,
        "token": token,
        "start": span[0],
        "end": span[1],
        "embedding": serialize_vector(vector, encoding_format),
    }


def embed_response(engine: Engine, data: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
    return {
        "model": engine.model_name,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def chunk_stride(engine: Engine, settings: Settings, asked: int | None) -> int:
    """Tokens between window starts: the request's, else the server's, else half a window;
    never more than a window, so that no token is skipped."""
    window = engine.artifact.max_seq_len - 2
    return min(asked or settings.chunk_stride or max(1, window // 2), window)


async def chunked_payload(
    body: EmbedRequest,
    texts: list[str],
    engine: Engine,
    settings: Settings,
    pooling: str,
    normalize: bool,
) -> Any:
    """/embed with long_inputs=chunk: texts of any length, in overlapping windows."""
    stride = chunk_stride(engine, settings, body.chunk_stride)
    want_tokens = body.output in ("tokens", "both")

    def limits(longs: list[LongText]) -> int:  # before the model runs
        token_vectors = sum(len(lt.encoding.ids) + 2 for lt in longs) if want_tokens else 0
        if want_tokens:
            check_token_vectors(token_vectors, settings)
        estimate = embed_estimate(engine, body, len(texts), token_vectors)
        engine.responses.reserve(estimate, EMBED_REMEDY)
        return estimate

    results = await engine.embed_long(
        texts,
        stride,
        settings.max_chunks,
        pooling,
        normalize,
        body.dimensions,
        want_tokens,
        "/embed",
        limits,
    )

    def build() -> dict[str, Any]:
        data = []
        for index, result in enumerate(results):
            row: dict[str, Any] = {"index": index}
            if body.output in ("sentence", "both"):
                row["embedding"] = serialize_vector(result.sentence, body.encoding_format)
            if want_tokens:
                row["tokens"] = [
                    token_row(tid, tok, span, vec, body.encoding_format)
                    for tid, tok, span, vec in result.tokens
                ]
            row["truncated"] = False
            row["chunks"] = result.windows
            data.append(row)
        return embed_response(engine, data, sum(r.token_count for r in results))

    estimate = embed_estimate(engine, body, len(texts), sum(len(r.tokens) for r in results))
    return await engine.responses.write(await off_loop(estimate, build), estimate)


async def fill_mask_payload(body: FillMaskRequest, engine: Engine, settings: Settings) -> Any:
    """The transformers fill-mask pipeline's shape: for one text with one [MASK], a list of
    candidates; with several masks, a list per mask; for a list of texts, a list of those."""
    texts = texts_of(body.inputs)
    check_inputs(texts, settings)
    engine.require("mlm")
    if body.top_k > settings.max_top_k:
        raise InvalidInput(f"top_k {body.top_k} exceeds max_top_k {settings.max_top_k}")
    target_ids = None
    if body.targets is not None:
        if not body.targets:
            raise InvalidInput("targets must not be an empty list")
        target_ids = []
        for target in body.targets:
            ids = engine.text.full.encode(target, add_special_tokens=False).ids
            if len(ids) != 1:
                raise InvalidInput(
                    f"target {clip(target)!r} is not a single token of the vocabulary"
                )
            target_ids.append(ids[0])
    remedy = "send a shorter text (fill-mask never truncates, so that no [MASK] is lost)"
    tokenized = await engine.tokenize(texts, truncate=False, remedy=remedy)
    masks = []
    for index, tokens in enumerate(tokenized):
        masks.append(int((tokens.ids == engine.mask_id).sum()))
        if not masks[-1]:
            raise InvalidInput(f"inputs[{index}] has no [MASK] token")
    # each candidate repeats its whole sequence, as the transformers pipeline does
    estimate = 100 + sum(
        count * body.top_k * (len(text) + 100) for count, text in zip(masks, texts, strict=True)
    )
    engine.responses.reserve(estimate, "ask for a smaller top_k, fewer [MASK]s or fewer inputs")
    outputs = await engine.run(tokenized, "/fill-mask")
    per_input = [await engine.fill_mask(item, body.top_k, target_ids) for item in outputs]

    def build() -> list[Any]:
        results: list[Any] = []
        for item, per_mask in zip(outputs, per_input, strict=True):
            ids = item.tokenized.ids
            positions = [int(p) for p in (ids == engine.mask_id).nonzero()[0]]
            candidates = [
                [
                    {
                        "score": score,
                        "token": token,
                        "token_str": engine.text.id_to_token(token),
                        "sequence": _filled(engine, ids, position, token),
                    }
                    for score, token in found
                ]
                for position, found in zip(positions, per_mask, strict=True)
            ]
            results.append(candidates[0] if len(candidates) == 1 else candidates)
        return results

    results = await off_loop(estimate, build)
    answer = results[0] if isinstance(body.inputs, str) else results
    return await engine.responses.write(answer, estimate)


def _filled(engine: Engine, ids: Any, position: int, token: int) -> str:
    filled = [int(i) for i in ids]
    filled[position] = token
    return engine.text.decode(filled)


async def next_sentence_payload(
    body: NextSentenceRequest, engine: Engine, settings: Settings
) -> NextSentenceResponse:
    check_inputs([t for pair in body.pairs for t in pair], settings, "pairs", len(body.pairs))
    engine.require("nsp")
    tokenized = await engine.tokenize([(p[0], p[1]) for p in body.pairs], truncate=True)
    engine.responses.reserve(100 + 40 * len(tokenized))
    outputs = await engine.run(tokenized, "/next-sentence")
    probabilities = await engine.next_sentence(outputs)
    return NextSentenceResponse(
        model=engine.model_name,
        data=[NextSentenceOut(index=i, is_next=p) for i, p in enumerate(probabilities)],
    )


async def classify_payload(
    body: ClassifyRequest, engine: Engine, settings: Settings
) -> dict[str, Any]:
    """A sequence classifier's labels per input, best first: the shape of transformers'
    text-classification pipeline inside `data[i].labels`; a regression model's `score`."""
    inputs: list[Any] = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
    pairs = [tuple(item) for item in inputs if not isinstance(item, str)]
    texts = [t for item in inputs for t in ([item] if isinstance(item, str) else item)]
    check_inputs(texts, settings, "inputs", len(inputs))
    engine.require("classifier")
    labels = engine.artifact.labels
    if body.top_k is not None and body.top_k > len(labels):
        raise InvalidInput(f"top_k {body.top_k} exceeds the model's {len(labels)} labels")
    tokenized = await engine.tokenize(pairs if pairs else inputs, truncate=True)
    shown = 1 if engine.artifact.regression else (body.top_k or len(labels))
    longest = max((len(label) for label in labels), default=0)
    engine.responses.reserve(100 + len(tokenized) * (60 + shown * (longest + 40)))
    outputs = await engine.run(tokenized, "/classify")
    logits = await engine.classify(outputs)  # (B, C)
    regression = engine.artifact.regression
    function = body.function_to_apply or ("none" if regression else "softmax")
    if function == "softmax":
        scores = softmax(logits)
    elif function == "sigmoid":
        scores = (1 / (1 + np.exp(-logits))).astype(np.float32)
    else:
        scores = logits
    data = []
    for index, (row, tokens) in enumerate(zip(scores, tokenized, strict=True)):
        item: dict[str, Any] = {"index": index}
        if regression:
            item["score"] = float(row[0])
        else:
            order = np.argsort(-row, kind="stable")[: body.top_k]
            item["labels"] = [{"label": labels[i], "score": float(row[i])} for i in order]
        item["truncated"] = tokens.truncated
        data.append(item)
    count = sum(len(t.ids) for t in tokenized)
    return {
        "model": engine.model_name,
        "data": data,
        "usage": {"prompt_tokens": count, "total_tokens": count},
    }


async def openai_payload(
    body: OpenAIEmbeddingRequest, engine: Engine, settings: Settings
) -> dict[str, Any]:
    texts = texts_of(body.input)
    check_inputs(texts, settings, "input")
    engine.check_dimensions(body.dimensions)
    estimate = 200 + len(texts) * (
        vector_bytes(body.dimensions or engine.artifact.hidden_size, body.encoding_format) + 60
    )
    if settings.long_inputs == "chunk":  # the server's default; OpenAI's body has no field

        def reserve(_: list[LongText]) -> int:
            engine.responses.reserve(estimate)
            return estimate

        results = await engine.embed_long(
            texts,
            chunk_stride(engine, settings, None),
            settings.max_chunks,
            engine.artifact.pooling,
            True,
            body.dimensions,
            False,
            "/v1/embeddings",
            reserve,
        )
        vectors = [r.sentence for r in results]
        count = sum(r.token_count for r in results)
    else:
        tokenized = await engine.tokenize(texts, truncate=True)
        engine.responses.reserve(estimate)
        outputs = await engine.run(tokenized, "/v1/embeddings")
        vectors = engine.sentence_vectors(outputs, engine.artifact.pooling, True, body.dimensions)
        count = sum(len(t.ids) for t in tokenized)
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": serialize_vector(v, body.encoding_format),
            }
            for i, v in enumerate(vectors)
        ],
        "model": engine.model_name,
        "usage": {"prompt_tokens": count, "total_tokens": count},
    }


async def tokenize_payload(body: TokenizeRequest, engine: Engine, settings: Settings) -> Any:
    texts = texts_of(body.inputs)
    check_inputs(texts, settings)
    tokenized = await engine.tokenize(texts, truncate=True, with_tokens=True)
    count = sum(len(t.ids) for t in tokenized)
    estimate = 100 + 60 * len(tokenized) + 40 * count + 2 * sum(len(t) for t in texts)
    engine.responses.reserve(estimate)

    def build() -> list[dict[str, Any]]:
        return [
            {
                "index": i,
                "ids": t.ids,
                "tokens": t.tokens,
                "offsets": t.offsets,
                "truncated": t.truncated,
            }
            for i, t in enumerate(tokenized)
        ]

    return await engine.responses.write(await off_loop(estimate, build), estimate)


# -- the POST routes: answered by service.hot_path, declared for /docs in route_docs.py ------
PayloadFn = Callable[[Any, Engine, Settings], Awaitable[Any]]
POST_ROUTES: dict[str, tuple[type[BaseModel], PayloadFn]] = {
    "/embed": (EmbedRequest, embed_payload),
    "/v1/embeddings": (OpenAIEmbeddingRequest, openai_payload),
    "/classify": (ClassifyRequest, classify_payload),
    "/fill-mask": (FillMaskRequest, fill_mask_payload),
    "/next-sentence": (NextSentenceRequest, next_sentence_payload),
    "/tokenize": (TokenizeRequest, tokenize_payload),
    "/rerank": (RerankRequest, rerank_payload),
    "/v1/rerank": (JinaRerankRequest, jina_rerank_payload),
    "/similarity": (SimilarityRequest, similarity_payload),
}
# the setting that bounds each route's lists before validation (hot_path.check_sizes)
LIST_LIMITS = {path: "max_rerank_documents" for path in ("/rerank", "/v1/rerank", "/similarity")}
