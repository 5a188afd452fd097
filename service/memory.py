"""The most memory a server can take under its settings, so that a container limit can be set
from the limits rather than found by an OOM kill (deploy/kubernetes.yaml is checked against it
by a test). Each term is bounded by one setting:

  loaded model        measured at start (weights, graphs, tokenizer; MiniLM int8: ~190 MiB)
  model calls         model_workers x one call's activations, at max_batch_tokens of the
                      longest sequences; freed memory goes back to the OS after long calls (heap.py)
  queued outputs      max_queued_tokens hidden states waiting for their requests (float32)
  request bodies      max_body_bytes_in_flight, x3: the bytes, the parsed strings, the lists
  answers             max_response_bytes_in_flight, x2: the vectors and their JSON pieces
  (with --workers N: every term but the model calls once per worker process)

One call's activations were measured with ORT 1.32 on MiniLM-L6 (12 heads, hidden 384), peak
RSS over a warm session (int8 and fp32 alike, ORT's arena off and buffers over 4 MiB mapped on
their own, as backend.py and heap.py set them): (32, 512) 816 MiB, (64, 256) 432, (128, 128)
312, (8, 512) 204 (with ORT's arena: 1,012, 620, 436, 252). `call_bytes` is above each (by
5-20%), never below: per token, the attention scores of every head (1.8 copies) and seven
hidden-sized buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .settings import Settings

MIB = 1024 * 1024


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_heads: int
    max_seq_len: int
    loaded_bytes: int  # RSS once loaded and warmed up


# all-MiniLM-L6-v2 as bert-export writes it (int8 on the CPU), the README's served model
MINILM = ModelShape(hidden_size=384, num_heads=12, max_seq_len=512, loaded_bytes=200 * MIB)


def call_bytes(tokens: int, seq_len: int, model: ModelShape) -> int:
    """Peak activation bytes of one encoder call of `tokens` padded tokens of `seq_len`."""
    return int(tokens * 4 * (1.8 * model.num_heads * seq_len + 7 * model.hidden_size))


def worst_case_bytes(settings: Settings, model: ModelShape, cores: int) -> dict[str, int]:
    """Each term's bound in bytes and their `total`; `cores` gives the default model_workers.
    With --workers N every process loads the model and holds its own queue and in-flight
    budgets (N x those terms); the model calls are a total, divided among them. `auto` counts
    as CUDA's count, the larger."""
    from .workers import AUTO_CUDA

    processes = settings.workers if isinstance(settings.workers, int) else AUTO_CUDA
    workers = max(settings.model_workers or cores, processes)  # at least one call each
    longest = min(model.max_seq_len, settings.max_batch_tokens)
    terms = {
        "loaded model": processes * model.loaded_bytes,
        "model calls": workers * call_bytes(settings.max_batch_tokens, longest, model),
        "queued outputs": processes * settings.max_queued_tokens * model.hidden_size * 4,
        "request bodies": processes * 3 * settings.max_body_bytes_in_flight,
        "answers": processes * 2 * settings.max_response_bytes_in_flight,
    }
    terms["total"] = sum(terms.values())
    return terms
