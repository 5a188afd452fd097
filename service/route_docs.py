"""What /docs shows beyond the mounted routes: the error table every route declares, and the POST
routes with their request and response schemas.

service.hot_path answers every POST route (routes.POST_ROUTES); this router is never mounted,
only given to the OpenAPI generator (app.py), so no request can reach these functions.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .schemas import (
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    FillMaskCandidate,
    FillMaskRequest,
    JinaRerankRequest,
    JinaRerankResponse,
    NextSentenceRequest,
    NextSentenceResponse,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    RerankOut,
    RerankRequest,
    SimilarityRequest,
    TokenizeOut,
    TokenizeRequest,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "malformed JSON or bad UTF-8"),
        (401, "missing or wrong API key"),
        (408, "the body did not arrive within body_timeout_s"),
        (404, "the request names a model this server does not serve"),
        (413, "body, inputs, characters or tokens over a limit"),
        (422, "an invalid field"),
        (424, "the model lacks the head this route needs"),
        (429, "overloaded; Retry-After says when to retry"),
        (500, "model error (that batch only)"),
        (503, "not ready, or shutting down"),
        (504, "the request's deadline passed"),
    )
}
documented = APIRouter(responses=ERRORS)


@documented.post("/embed", response_model=EmbedResponse, response_model_exclude_none=True)
async def embed(body: EmbedRequest) -> None:
    """Sentence and token embeddings."""


@documented.post("/v1/embeddings", response_model=OpenAIEmbeddingResponse)
async def openai_embeddings(body: OpenAIEmbeddingRequest) -> None:
    """OpenAI's embeddings API."""


@documented.post("/classify", response_model=ClassifyResponse, response_model_exclude_none=True)
async def classify(body: ClassifyRequest) -> None:
    """A sequence classifier's labels (or a regression score) per text or text pair."""


@documented.post(
    "/fill-mask",
    responses={
        200: {
            "model": list[FillMaskCandidate] | list[list[FillMaskCandidate]],
            "description": "candidates per mask (a list per mask, and per input for a list)",
        }
    },
)
async def fill_mask(body: FillMaskRequest) -> None:
    """The transformers fill-mask pipeline's shape: for one text with one [MASK], a list of
    candidates; with several masks, a list per mask; for a list of texts, a list of those."""


@documented.post("/next-sentence", response_model=NextSentenceResponse)
async def next_sentence(body: NextSentenceRequest) -> None:
    """The probability that each pair's second text follows the first."""


@documented.post("/tokenize", response_model=list[TokenizeOut])
async def tokenize(body: TokenizeRequest) -> None:
    """Token ids, tokens and character offsets, as the model sees them."""


@documented.post("/rerank", response_model=list[RerankOut], response_model_exclude_none=True)
async def rerank(body: RerankRequest) -> None:
    """TEI's rerank: the texts by relevance to the query, best first (a cross-encoder's
    score, or the cosine of an embedding model's vectors)."""


@documented.post("/v1/rerank", response_model=JinaRerankResponse, response_model_exclude_none=True)
async def jina_rerank(body: JinaRerankRequest) -> None:
    """Jina's and Cohere's rerank API, as vLLM serves it: the documents by relevance, best
    first, the top_n best when asked."""


@documented.post("/similarity", response_model=list[float])
async def similarity(body: SimilarityRequest) -> None:
    """TEI's similarity: the cosine of each sentence with the source sentence, in order."""
