"""The core between the HTTP edge and the batcher: tokenize, queue, wait, post-process.

Routes call `Engine`; `Engine` calls the tokenizer, the `Batcher` (the encoder, batched across
requests) and, for the heads, the backend: the MLM and NSP heads in the model thread, the
classifier head (a (B, H) x (H, C) product, microseconds) right here, since the hop to the
model thread and back cost /classify about a fifth of its throughput (0.52x -> 0.63x of raw
ONNX Runtime; ORT sessions may be run from several threads).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .artifact import Artifact
from .backend import Backend, Floats
from .batcher import Batcher, RequestState
from .metrics import ModelMetrics
from .pooling import l2_normalize, pool_one, softmax
from .responses import ResponseBudget, off_loop
from .text import TRUNCATE_OR_SHORTEN, LongText, TextTokenizer, Tokenized, Window

# requests with more characters than this are tokenized off the event loop (64 short
# sentences, ~2,400 characters, take ~1.6 ms there)
OFF_LOOP_CHARS = 2048


class MissingHead(Exception):
    """The loaded model cannot do what the route asks (424)."""


class InvalidInput(ValueError):
    """Well-formed but unusable input (422)."""


# what each optional part of the model is needed for, as the 424 says it
_MISSING = {
    "pooler": "pooling 'pooler' needs a model with a pooler; this one has none",
    "mlm": "this model has no MLM head, so /fill-mask is unavailable",
    "nsp": "this model has no next-sentence head",
    "classifier": "this model has no classifier head, so /classify is unavailable",
}


@dataclass
class SequenceOutput:
    tokenized: Tokenized
    hidden: Floats  # (n, H)
    pooled: Floats | None  # (H,)


@dataclass
class LongEmbedding:
    """A long text embedded window by window."""

    sentence: Floats  # (H',) the token-weighted mean of the window vectors
    tokens: list[tuple[int, str, tuple[int, int], Floats]]  # id, token, offsets, vector
    windows: int
    token_count: int  # tokens computed, overlaps counted again


def serialize_vector(vector: Floats, encoding_format: str) -> Floats | str:
    """float: the float32 array itself (orjson writes it); base64: little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return np.ascontiguousarray(vector, dtype=np.float32)


class Engine:
    def __init__(
        self,
        artifact: Artifact,
        backend: Backend,
        batcher: Batcher,
        metrics: ModelMetrics,
        responses: ResponseBudget,
        name: str | None = None,
    ) -> None:
        """`name`: what requests call this model (default: the artifact's name)."""
        self.responses = responses
        self.artifact = artifact
        self.backend = backend
        self.batcher = batcher
        self.metrics = metrics
        self.text = TextTokenizer(artifact.tokenizer_json, artifact.max_seq_len)
        self.mask_id = artifact.special_tokens.get("[MASK]")
        self.model_name = name or artifact.name

    def require(self, part: str) -> None:
        """Raises MissingHead when the model lacks `part` (pooler, mlm, nsp, classifier):
        routes call it before any compute, the one check of each part."""
        backend = self.backend
        present = {
            "pooler": backend.has_pooler,
            "mlm": backend.has_mlm,
            "nsp": backend.has_nsp,
            "classifier": backend.has_classifier,
        }[part]
        if not present:
            raise MissingHead(_MISSING[part])

    async def tokenize(
        self,
        texts: list[str] | list[tuple[str, str]],
        truncate: bool = True,
        direction: str = "right",
        remedy: str = TRUNCATE_OR_SHORTEN,
        with_tokens: bool = False,
    ) -> list[Tokenized]:
        """The texts tokenized: on the event loop when they are short (most requests: a hop
        to a thread costs more), else on a worker thread, where encode_batch lets go of the
        GIL (200 x 19,900 characters took ~1 s and held /health for seconds on the loop).
        An overloaded queue is refused first, before the tokenizing is paid for.
        `with_tokens`: the answer shows token strings and offsets."""
        self.batcher.precheck(2 * len(texts))  # every text is at least [CLS] [SEP]
        chars = sum(len(t) if isinstance(t, str) else len(t[0]) + len(t[1]) for t in texts)
        if chars <= OFF_LOOP_CHARS:
            return self.text.tokenize(texts, truncate, direction, remedy)
        return await asyncio.to_thread(
            self.text.tokenize, texts, truncate, direction, remedy, True, with_tokens
        )

    async def run(
        self, tokenized: Sequence[Tokenized | Window], route: str
    ) -> list[SequenceOutput]:
        """Queues every sequence, waits for all; cancels the rest if the caller goes away."""
        state = RequestState()
        futures = self.batcher.submit([(t.ids, t.type_ids) for t in tokenized], state)
        self.metrics.tokens(route, sum(len(t.ids) for t in tokenized))
        try:
            results = await asyncio.gather(*futures)
        except BaseException:
            self.batcher.cancel(state)  # our still-queued sequences leave the queue now
            for future in futures:
                future.cancel()
            raise
        return [
            SequenceOutput(t, hidden, pooled)  # type: ignore[arg-type]
            for t, (hidden, pooled) in zip(tokenized, results, strict=True)
        ]

    async def embed_long(
        self,
        texts: list[str],
        stride: int,
        max_chunks: int,
        pooling: str,
        normalize: bool,
        dimensions: int | None,
        want_tokens: bool,
        route: str,
        before_run: Callable[[list[LongText]], int],
    ) -> list[LongEmbedding]:
        """Texts of any length: windows of max_seq_len tokens `stride` apart, run in the same
        batches as everything else. The sentence vector is the mean of the window vectors
        weighted by their token counts; each token's vector comes from the window where it
        sits most centrally. `before_run` sees the windows before any compute (the route's
        limits) and returns the answer's estimated bytes."""
        if pooling == "pooler":
            self.require("pooler")
        self.check_dimensions(dimensions)
        self.batcher.precheck(2 * len(texts))  # cheap: before any tokenizing
        if sum(len(t) for t in texts) > OFF_LOOP_CHARS:
            longs = await asyncio.to_thread(self.text.windows, texts, stride, max_chunks, True)
        else:
            longs = self.text.windows(texts, stride, max_chunks)
        estimate = before_run(longs)
        outputs = await self.run([w for lt in longs for w in lt.windows], route)

        def combine() -> list[LongEmbedding]:
            results, at = [], 0
            for long_text in longs:
                parts = outputs[at : at + len(long_text.windows)]
                at += len(long_text.windows)
                results.append(
                    self._combine(long_text, parts, pooling, normalize, dimensions, want_tokens)
                )
            return results

        return await off_loop(estimate, combine)

    def _combine(
        self,
        long_text: LongText,
        parts: list[SequenceOutput],
        pooling: str,
        normalize: bool,
        dimensions: int | None,
        want_tokens: bool,
    ) -> LongEmbedding:
        weights = np.array([len(w.ids) for w in long_text.windows], dtype=np.float32)  # (W,)
        window_vectors = np.stack(
            [
                pool_one(p.hidden, pooling, None if p.pooled is None else p.pooled[None])
                for p in parts
            ]
        )  # (W, H)
        mean = (weights[:, None] * window_vectors).sum(axis=0) / weights.sum()  # (H,)
        tokens: list[tuple[int, str, tuple[int, int], Floats]] = []
        if want_tokens:
            enc = long_text.encoding

            def finish(vector: Floats) -> Floats:
                return self._finish(vector, normalize, dimensions)

            tokens.append((long_text.cls_id, "[CLS]", (0, 0), finish(parts[0].hidden[0])))
            owner = long_text.owner()
            for position, (token_id, token, offsets) in enumerate(
                zip(enc.ids, enc.tokens, enc.offsets, strict=True)
            ):
                window = long_text.windows[owner[position]]
                row = parts[owner[position]].hidden[1 + position - window.start]
                tokens.append((token_id, token, (offsets[0], offsets[1]), finish(row)))
            tokens.append((long_text.sep_id, "[SEP]", (0, 0), finish(parts[-1].hidden[-1])))
        return LongEmbedding(
            self._finish(mean, normalize, dimensions),
            tokens,
            len(long_text.windows),
            int(weights.sum()),
        )

    # -- embeddings --------------------------------------------------------------------------
    def sentence_vectors(
        self,
        outputs: Sequence[SequenceOutput],
        pooling: str,
        normalize: bool,
        dimensions: int | None,
    ) -> list[Floats]:
        if pooling == "pooler":
            self.require("pooler")
        self.check_dimensions(dimensions)
        vectors = []
        for item in outputs:
            pooled = None if item.pooled is None else item.pooled[None]
            vector = pool_one(item.hidden, pooling, pooled)  # (H,)
            vectors.append(self._finish(vector, normalize, dimensions))
        return vectors

    def token_vectors(
        self, item: SequenceOutput, normalize: bool, dimensions: int | None
    ) -> list[Floats]:
        return [self._finish(row, normalize, dimensions) for row in item.hidden]

    def check_dimensions(self, dimensions: int | None) -> None:
        hidden = self.artifact.hidden_size
        if dimensions is not None and not 1 <= dimensions <= hidden:
            trained = self.artifact.matryoshka_dims
            raise InvalidInput(
                f"dimensions {dimensions} must be between 1 and the model's hidden size {hidden}"
                + (f" (trained for {', '.join(map(str, trained))})" if trained else "")
            )

    @staticmethod
    def _finish(vector: Floats, normalize: bool, dimensions: int | None) -> Floats:
        if dimensions is not None:
            vector = vector[:dimensions]
        return l2_normalize(vector[None])[0] if normalize else vector.astype(np.float32)

    # -- heads -------------------------------------------------------------------------------
    async def fill_mask(
        self, outputs: SequenceOutput, top_k: int, target_ids: list[int] | None
    ) -> list[list[tuple[float, int]]]:
        """Per [MASK] position: the top_k (probability, token id), MLM head at masks only.
        The route has called require("mlm"), as for each head below."""
        positions = np.flatnonzero(outputs.tokenized.ids == self.mask_id)
        logits = await self.batcher.run_in_model_thread(
            self.backend.mlm_logits, np.ascontiguousarray(outputs.hidden[positions])
        )  # (m, V)
        logits = logits[:, : self.text.vocab_size]
        probs = softmax(logits)
        results = []
        for row in probs:
            if target_ids is not None:
                candidates = np.array(target_ids)
                order = candidates[np.argsort(-row[candidates])][:top_k]
            else:
                order = np.argsort(-row)[:top_k]
            results.append([(float(row[i]), int(i)) for i in order])
        return results

    async def classify(self, outputs: Sequence[SequenceOutput]) -> Floats:
        """(B, C) logits of the sequence classifier, from each input's pooled [CLS]."""
        pooled = np.stack([e.pooled for e in outputs if e.pooled is not None])  # (B, H)
        return self.backend.classifier_logits(pooled)

    async def next_sentence(self, outputs: Sequence[SequenceOutput]) -> list[float]:
        pooled = np.stack([e.pooled for e in outputs if e.pooled is not None])  # (B, H)
        logits = await self.batcher.run_in_model_thread(self.backend.nsp_logits, pooled)  # (B, 2)
        return [float(p) for p in softmax(logits)[:, 0]]
