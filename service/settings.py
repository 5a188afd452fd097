"""Every setting of the service, defined once: a default, a description, and an environment
variable (BERTSERVE_<NAME>). `bert-serve --help` and the README table are generated from it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MAX_WORKERS = 64  # processes; past the cores of any machine we serve from


class Settings(BaseSettings):
    # env_prefix_target "all": the aliases are read with the prefix too (BERTSERVE_MODELS)
    model_config = SettingsConfigDict(
        env_prefix="BERTSERVE_", extra="ignore", env_prefix_target="all", validate_by_name=True
    )

    model: Annotated[list[str], NoDecode] = Field(
        ["model"],
        validation_alias=AliasChoices("model", "models"),
        description="artifact directory written by bert-export; NAME=DIR serves it as NAME "
        "(repeat the flag, or comma-separate BERTSERVE_MODELS, to serve several: the first is "
        "the default)",
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when onnxruntime-gpu sees a GPU, else CPU"
    )
    precision: Literal["fp32", "int8", "fp16"] | None = Field(
        None, description="variant to serve (default: fp16 on CUDA, int8 on CPU, else fp32)"
    )
    workers: int | Literal["auto"] = Field(
        1,
        description="server processes on the one port, each with its own event loop, batcher "
        "and sessions; threads and model_workers are divided among them (auto: 1 on the CPU, "
        "where the model takes the cores; 4 on CUDA, where one event loop leaves the GPU idle)",
    )
    threads: int = Field(
        0, ge=0, description="ONNX Runtime threads in all, of every worker (0: all cores)"
    )
    model_workers: int = Field(
        0,
        ge=0,
        description="model calls run at once, each on threads/model_workers ONNX Runtime "
        "threads (0: one per core on the CPU, 1 on CUDA)",
    )
    max_batch_tokens: int = Field(
        8192,
        ge=1,
        description="padded tokens per model call (batch size x longest sequence; a call's "
        "memory grows with it times the sequence length: ~0.4 GiB at 8192 x 512 for MiniLM)",
    )
    max_batch_size: int = Field(64, ge=1, description="sequences per model call")
    max_wait_ms: float = Field(
        2.0, ge=0, description="how long the first queued sequence waits for company"
    )
    max_padding_ratio: float = Field(
        0.2,
        ge=0,
        le=1,
        description="split a batch into model calls that pad at most this "
        "share of their tokens (1: never split)",
    )
    max_queued_tokens: int = Field(
        262144,
        ge=1,
        description="tokens waiting in the queue before new requests get 429 (a request over "
        "it alone: 413)",
    )
    max_inputs: int = Field(256, ge=1, description="inputs (or pairs) per request")
    max_rerank_documents: int = Field(
        1000,
        ge=1,
        description="documents per /rerank or /v1/rerank request, and sentences per "
        "/similarity (split into model calls like any inputs)",
    )
    max_input_chars: int = Field(20000, ge=1, description="characters per input")
    max_body_bytes: int = Field(4_000_000, ge=1, description="request body size")
    max_body_bytes_in_flight: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="bytes of all request bodies being read or answered at once (429 past "
        "it; bounds the server's memory with max_response_bytes_in_flight)",
    )
    max_top_k: int = Field(100, ge=1, description="largest top_k for /fill-mask")
    long_inputs: Literal["truncate", "chunk"] = Field(
        "truncate",
        description="default for texts over max_seq_len: cut them (truncate), or embed them "
        "in overlapping windows (chunk)",
    )
    chunk_stride: int | None = Field(
        None, ge=1, description="tokens between window starts (default: half a window)"
    )
    max_chunks: int = Field(64, ge=1, description="windows one long text may take")
    max_token_vectors: int = Field(
        16384,
        ge=1,
        description="token vectors one /embed response may hold (output tokens or both; "
        "bounds the response size)",
    )
    max_response_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="bytes one answer may take (413 over it, estimated before the work; "
        'base64 vectors take 40 percent of "float")',
    )
    max_response_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="bytes of all answers being built or sent at once (429 past it; "
        "bounds the server's memory)",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="a sequence still queued after this long is dropped (504)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="seconds a client may take to send its body (408 after)"
    )
    max_header_bytes: int = Field(
        16384, ge=1024, description="request line and headers together (431 over it)"
    )
    max_headers: int = Field(100, ge=8, description="headers per request (431 over it)")
    header_timeout_s: float = Field(
        10.0, gt=0, description="seconds a client may take to send its headers (408 after)"
    )
    api_key: str | None = Field(
        None,
        description="when set, requests need 'Authorization: Bearer <key>', once (/health, "
        "/ready, /metrics stay open; /docs and /openapi.json need it)",
    )
    warmup: bool = Field(True, description="run one batch through the model before /ready")
    log_level: str = Field("info", description="uvicorn log level")
    access_log: bool = Field(
        False, description="log a line per request (off: it costs the event loop per request)"
    )

    @field_validator("model", mode="before")
    @classmethod
    def _models(cls, value: Any) -> list[str]:
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        specs = [str(item).strip() for item in items if str(item).strip()]
        if not specs:
            raise ValueError("name at least one artifact directory")
        return specs

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> int | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            count = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number of processes or auto, not {value!r}") from None
        if not 1 <= count <= MAX_WORKERS:
            raise ValueError(f"must be between 1 and {MAX_WORKERS}")
        return count

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, key: str | None) -> str | None:
        # an empty key would silently turn authentication off; unset means no key
        if key is not None and not key.strip():
            raise ValueError("must not be empty (leave it unset to serve without a key)")
        return key
