"""CachedMultipleNegativesRankingLoss (sentence-transformers' name; Gao et al. 2021, "Scaling
Deep Contrastive Learning Batch Size under Memory Limited Setup"): the gradient cache. A batch's
embeddings are computed mini batch by mini batch without a graph; the loss and its gradient
with respect to the embeddings are computed on the whole batch; then each mini batch is run
again with a graph, under the random state of its first pass (the same dropout masks), and
its slice of the embedding gradient is pushed through it. The model's gradients equal those of
one pass over the whole batch, while memory holds one mini batch's activations. Any loss of
losses/ works this way (MNRL is the case it was made for: many in-batch negatives)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import EmbeddingLoss

Batch = dict[str, torch.Tensor]


def _rows(batch: Batch, start: int, stop: int) -> Batch:
    return {name: tensor[start:stop] for name, tensor in batch.items()}


def cached_step(
    embed: Callable[[Batch], torch.Tensor],
    columns: list[Batch],
    loss_fn: EmbeddingLoss,
    scores: torch.Tensor | None,
    mini_batch_size: int,
) -> float:
    """Accumulates the batch's gradients into the model's parameters; returns the loss."""
    states: list[list[torch.Tensor]] = []  # per column, per mini batch: the RNG state
    cached: list[torch.Tensor] = []
    with torch.no_grad():
        for column in columns:
            size = len(column["input_ids"])
            parts, column_states = [], []
            for start in range(0, size, mini_batch_size):
                column_states.append(torch.get_rng_state())
                parts.append(embed(_rows(column, start, start + mini_batch_size)))  # (m, H)
            states.append(column_states)
            cached.append(torch.cat(parts).requires_grad_(True))  # (B, H), a leaf
    with torch.enable_grad():
        loss = loss_fn(cached, scores)
        loss.backward()  # type: ignore[no-untyped-call]  # d loss / d embeddings, in .grad
    after = torch.get_rng_state()
    for column, column_states, embeddings in zip(columns, states, cached, strict=True):
        assert embeddings.grad is not None
        for part, state in enumerate(column_states):
            start = part * mini_batch_size
            torch.set_rng_state(state)  # the dropout masks of the first pass
            again = embed(_rows(column, start, start + mini_batch_size))  # (m, H), with a graph
            again.backward(embeddings.grad[start : start + mini_batch_size])  # type: ignore[no-untyped-call]
    torch.set_rng_state(after)
    return float(loss.detach())
