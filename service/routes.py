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
import orjson
from pydantic import BaseModel

from .engine import Engine, InvalidInput, serialize_vector
from .errors import NotReady, TooLarge, clip
from .pooling import softmax
from .schemas import (
    ClassifyRequest,
    EmbedRequest,
    FillMaskCandidate,
    FillMaskRequest,
    NextSentenceOut,
    NextSentenceRequest,
    NextSentenceResponse,
    OpenAIEmbeddingRequest,
    TokenizeOut,
    TokenizeRequest,
    texts_of,
)
from .settings import Settings


def ready_engine(state: Any) -> Engine:
    """The engine, once the model is loaded and warm; `state` is the FastAPI app.state."""
    engine: Engine | None = getattr(state, "engine", None)
    if engine is None or not state.ready:
        raise NotReady("the model is not ready yet")
    return engine


def check_inputs(
    texts: list[str], settings: Settings, what: str = "inputs", count: int | None = None
) -> None:
    """max_inputs against `count` inputs (default: one per text; a pair is one input of two
    texts), max_input_chars against every text."""
    count = len(texts) if count is None else count
    if count > settings.max_inputs:
        raise TooLarge(f"{count} {what} exceed max_inputs {settings.max_inputs}")
    flat = what if count == len(texts) else "texts"  # pairs: name the text, not the pair
    for index, text in enumerate(texts):
        if len(text) > settings.max_input_chars:
            raise TooLarge(
                f"{flat}[{index}] has {len(text)} characters, over max_input_chars "
                f"{settings.max_input_chars}"
            )


def _model_dict(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_bytes(payload: Any) -> bytes:
    """orjson writes numpy vectors directly: no per-float Python objects, no re-validation of
    a response model (the models above still document the shapes in /docs)."""
    return orjson.dumps(payload, default=_model_dict, option=orjson.OPT_SERIALIZE_NUMPY)


async def embed_payload(body: EmbedRequest, engine: Engine, settings: Settings) -> dict[str, Any]:
    texts = texts_of(body.inputs)
    check_inputs(texts, settings)
    engine.check_dimensions(body.dimensions)
    pooling = body.pooling or engine.artifact.pooling
    normalize = engine.artifact.normalize if body.normalize is None else body.normalize
    if (body.long_inputs or settings.long_inputs) == "chunk":
        return await chunked_payload(body, texts, engine, settings, pooling, normalize)
    tokenized = engine.text.tokenize(texts, body.truncate, body.truncation_direction)
    if body.output != "sentence":
        check_token_vectors(sum(len(t.ids) for t in tokenized), settings)
    outputs = await engine.run(tokenized, "/embed")
    want_sentence = body.output in ("sentence", "both")
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
        if body.output in ("tokens", "both"):
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
    return embed_response(engine, data, sum(len(t.ids) for t in tokenized))


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
) -> dict[str, Any]:
    """/embed with long_inputs=chunk: texts of any length, in overlapping windows."""
    stride = chunk_stride(engine, settings, body.chunk_stride)
    want_tokens = body.output in ("tokens", "both")
    results = await engine.embed_long(
        texts,
        stride,
        settings.max_chunks,
        pooling,
        normalize,
        body.dimensions,
        want_tokens,
        "/embed",
    )
    if want_tokens:
        check_token_vectors(sum(len(r.tokens) for r in results), settings)
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
    tokenized = engine.text.tokenize(texts, truncate=False, remedy=remedy)
    for index, tokens in enumerate(tokenized):
        if not (tokens.ids == engine.mask_id).any():
            raise InvalidInput(f"inputs[{index}] has no [MASK] token")
    outputs = await engine.run(tokenized, "/fill-mask")
    results: list[Any] = []
    for item in outputs:
        per_mask = await engine.fill_mask(item, body.top_k, target_ids)
        positions = [int(p) for p in (item.tokenized.ids == engine.mask_id).nonzero()[0]]
        masks = []
        for position, candidates in zip(positions, per_mask, strict=True):
            masks.append(
                [
                    FillMaskCandidate(
                        score=score,
                        token=token,
                        token_str=engine.text.id_to_token(token),
                        sequence=_filled(engine, item.tokenized.ids, position, token),
                    )
                    for score, token in candidates
                ]
            )
        results.append(masks[0] if len(masks) == 1 else masks)
    return results[0] if isinstance(body.inputs, str) else results


def _filled(engine: Engine, ids: Any, position: int, token: int) -> str:
    filled = [int(i) for i in ids]
    filled[position] = token
    return engine.text.decode(filled)


async def next_sentence_payload(
    body: NextSentenceRequest, engine: Engine, settings: Settings
) -> NextSentenceResponse:
    check_inputs([t for pair in body.pairs for t in pair], settings, "pairs", len(body.pairs))
    engine.require("nsp")
    tokenized = engine.text.tokenize([(p[0], p[1]) for p in body.pairs], truncate=True)
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
    tokenized = engine.text.tokenize(pairs if pairs else inputs, truncate=True)
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
    if settings.long_inputs == "chunk":  # the server's default; OpenAI's body has no field
        results = await engine.embed_long(
            texts,
            chunk_stride(engine, settings, None),
            settings.max_chunks,
            engine.artifact.pooling,
            True,
            body.dimensions,
            False,
            "/v1/embeddings",
        )
        vectors = [r.sentence for r in results]
        count = sum(r.token_count for r in results)
    else:
        tokenized = engine.text.tokenize(texts, truncate=True)
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
        "model": body.model or engine.model_name,
        "usage": {"prompt_tokens": count, "total_tokens": count},
    }


async def tokenize_payload(
    body: TokenizeRequest, engine: Engine, settings: Settings
) -> list[TokenizeOut]:
    texts = texts_of(body.inputs)
    check_inputs(texts, settings)
    return [
        TokenizeOut(
            index=i,
            ids=[int(x) for x in t.ids],
            tokens=t.tokens,
            offsets=t.offsets,
            truncated=t.truncated,
        )
        for i, t in enumerate(engine.text.tokenize(texts, truncate=True))
    ]


# -- the POST routes: answered by service.hot_path, declared for /docs in route_docs.py ------
PayloadFn = Callable[[Any, Engine, Settings], Awaitable[Any]]
POST_ROUTES: dict[str, tuple[type[BaseModel], PayloadFn]] = {
    "/embed": (EmbedRequest, embed_payload),
    "/v1/embeddings": (OpenAIEmbeddingRequest, openai_payload),
    "/classify": (ClassifyRequest, classify_payload),
    "/fill-mask": (FillMaskRequest, fill_mask_payload),
    "/next-sentence": (NextSentenceRequest, next_sentence_payload),
    "/tokenize": (TokenizeRequest, tokenize_payload),
}
