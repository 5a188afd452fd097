"""Request and response bodies of the HTTP API (the tables in README.md, "HTTP API")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


def _check_texts(value: str | list[str]) -> str | list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise ValueError("must not be an empty list")
    for index, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"text {index} is empty")
        if "\x00" in text:
            raise ValueError(f"text {index} contains a NUL character")
        _check_encodable(text, f"text {index}")
    return value


def _check_encodable(text: str, what: str) -> None:
    """JSON can spell a lone UTF-16 surrogate (\\ud800), which no tokenizer can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} has a lone surrogate (\\u{ord(text[exc.start]):04x}) at character "
            f"{exc.start}; send valid Unicode"
        ) from None


def _echoable(value: str | None, what: str) -> str | None:
    if value is not None:  # echoed back: it must be writable as JSON
        _check_encodable(value, what)
    return value


# A text or a list of texts, none empty and none with NUL characters.
Texts = Annotated[str | list[str], AfterValidator(_check_texts)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Request(_Strict):
    """A POST route's body: every route takes `model` (OpenAI's field)."""

    model: str | None = Field(
        None,
        max_length=256,
        description="the served model to use (GET /v1/models lists them; default: the first); "
        "a name not served is a 404",
    )

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return _echoable(value, "model")


class EmbedRequest(_Request):
    inputs: Texts = Field(description="a text or a list of texts")
    pooling: Literal["cls", "mean", "pooler"] | None = Field(
        None, description="sentence pooling (default: the artifact's)"
    )
    normalize: bool | None = Field(
        None,
        description="L2-normalize the vectors, sentence and token (default: the artifact's, "
        "as /info says)",
    )
    truncate: bool = Field(True, description="cut inputs over max_seq_len instead of 422")
    long_inputs: Literal["truncate", "chunk"] | None = Field(
        None,
        description="chunk: a text over max_seq_len is embedded in overlapping windows "
        "(sentence vector: their token-weighted mean; tokens: each from its most central "
        "window) instead of cut (default: the server's long_inputs)",
    )
    chunk_stride: int | None = Field(
        None, ge=1, description="tokens between window starts (default: the server's)"
    )
    truncation_direction: Literal["right", "left"] = "right"
    output: Literal["sentence", "tokens", "both"] = "sentence"
    dimensions: int | None = Field(None, ge=1, description="keep the first N dimensions")
    encoding_format: Literal["float", "base64"] = "float"


class TokenOut(BaseModel):
    id: int
    token: str
    start: int
    end: int
    embedding: list[float] | str


class EmbeddingOut(BaseModel):
    index: int
    embedding: list[float] | str | None = None
    tokens: list[TokenOut] | None = None
    truncated: bool
    chunks: int | None = Field(None, description="windows a chunked long text took")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbedResponse(BaseModel):
    model: str
    data: list[EmbeddingOut]
    usage: Usage


class FillMaskRequest(_Request):
    inputs: Texts = Field(description="text(s) with one or more [MASK] tokens")
    top_k: int = Field(5, ge=1, description="candidates per mask")
    targets: list[str] | None = Field(None, description="score only these tokens")

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[str] | None) -> list[str] | None:
        for index, target in enumerate(value or []):
            _check_encodable(target, f"target {index}")
        return value


class FillMaskCandidate(BaseModel):
    score: float
    token: int
    token_str: str
    sequence: str


def _check_pairs(value: list[list[str]], name: str) -> list[list[str]]:
    if not value:
        raise ValueError(f"{name} must not be an empty list")
    for index, pair in enumerate(value):
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"{name}[{index}] must be [first, second], got {len(pair)} texts")
        try:
            _check_texts(pair)
        except ValueError as exc:
            raise ValueError(f"{name}[{index}]: {exc}") from None
    return value


class NextSentenceRequest(_Request):
    pairs: list[list[str]] = Field(description="[first, second] pairs")

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, value: list[list[str]]) -> list[list[str]]:
        return _check_pairs(value, "pairs")


class ClassifyRequest(_Request):
    inputs: str | list[str] | list[list[str]] = Field(
        description="a text, a list of texts, or a list of [first, second] pairs"
    )
    top_k: int | None = Field(1, ge=1, description="labels per input, best first; null: all")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None, description="default: softmax for classes, none for a regression score"
    )

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: str | list[str] | list[list[str]]) -> str | list[str] | list[list[str]]:
        if isinstance(value, str) or not value or isinstance(value[0], str):
            if not isinstance(value, str) and any(not isinstance(v, str) for v in value):
                raise ValueError("inputs mixes texts and pairs")
            return _check_texts(value)  # type: ignore[arg-type]
        return _check_pairs(value, "inputs")


class ClassLabel(BaseModel):
    label: str
    score: float


class ClassifyOut(BaseModel):
    index: int
    labels: list[ClassLabel] | None = Field(None, description="classification, best first")
    score: float | None = Field(None, description="regression")
    truncated: bool


class ClassifyResponse(BaseModel):
    model: str
    data: list[ClassifyOut]
    usage: Usage


class NextSentenceOut(BaseModel):
    index: int
    is_next: float


class NextSentenceResponse(BaseModel):
    model: str
    data: list[NextSentenceOut]


class OpenAIEmbeddingRequest(_Request):
    model_config = ConfigDict(extra="ignore", strict=True)  # OpenAI clients send `user` etc.
    input: Texts
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: Usage


class TokenizeRequest(_Request):
    inputs: Texts


class TokenizeOut(BaseModel):
    index: int
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    truncated: bool


def _check_text(value: str) -> str:
    _check_texts(value)
    return value


# one text: not empty, no NUL, valid Unicode
Text = Annotated[str, AfterValidator(_check_text)]


class RerankRequest(_Request):
    """TEI's /rerank."""

    query: Text
    texts: Texts = Field(description="the documents to order by relevance to the query")
    raw_scores: bool = Field(False, description="a cross-encoder's logits, not its activation")
    return_text: bool = Field(False, description="each result carries its document")
    truncate: bool = Field(True, description="cut pairs over max_seq_len instead of 422")
    truncation_direction: Literal["right", "left"] = "right"


class RerankOut(BaseModel):
    index: int
    score: float
    text: str | None = None


class Document(_Strict):
    text: str


class JinaRerankRequest(_Request):
    """/v1/rerank: Jina's and Cohere's shape, as vLLM serves it."""

    model_config = ConfigDict(extra="ignore", strict=True)  # clients send rank_fields etc.
    query: Text
    documents: list[str | Document] = Field(
        min_length=1, description="texts, or objects with a text field"
    )
    top_n: int | None = Field(None, ge=1, description="the best N only (default: all)")
    return_documents: bool = Field(True, description="each result carries its document")

    @field_validator("documents")
    @classmethod
    def _documents(cls, value: list[str | Document]) -> list[str | Document]:
        for index, document in enumerate(value):
            text = document if isinstance(document, str) else document.text
            try:
                _check_text(text)
            except ValueError as exc:
                raise ValueError(f"document {index}: {exc}") from None
        return value

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class JinaRerankResult(BaseModel):
    index: int
    relevance_score: float
    document: Document | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class JinaRerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[JinaRerankResult]


class SimilarityInputs(_Strict):
    source_sentence: Text
    sentences: Texts


class SimilarityRequest(_Request):
    """TEI's /similarity: the cosine of each sentence with the source sentence."""

    inputs: SimilarityInputs
    truncate: bool = Field(True, description="cut inputs over max_seq_len instead of 422")
    truncation_direction: Literal["right", "left"] = "right"


def texts_of(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class ErrorDetail(BaseModel):
    type: str = Field(description="e.g. validation_error, too_large, overloaded")
    message: str = Field(description="what was wrong, naming the limit")


class ErrorResponse(BaseModel):
    """Every error the API answers, whatever its status."""

    error: ErrorDetail
