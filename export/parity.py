"""The parity gate: every variant against the PyTorch model on the same real inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from bertserve.service.pooling import cosine, pool

from .parity_inputs import CALIBRATION, PAIRS, SENTENCES
from .source import Source

# (max abs diff of last_hidden_state, min cosine, mean cosine, fill-mask top-1 agreement)
GATES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_diff": 1e-4, "min_cosine": 0.99999},
    "fp16": {"min_cosine": 0.999},
    "int8": {"mean_cosine": 0.99, "min_cosine": 0.97, "fill_mask_top1": 0.95},
}
# a classifier's head, on top of its variant's gate: fp32 logits as PyTorch's; a quantized
# variant must keep the predicted class, or a regression score within 0.02
CLASSIFIER_GATES: dict[str, dict[str, float]] = {
    "fp32": {"classifier_max_abs_diff": 1e-4},
    "fp16": {"classifier_argmax_agreement": 0.99, "regression_max_abs_diff": 0.02},
    "int8": {"classifier_argmax_agreement": 0.99, "regression_max_abs_diff": 0.02},
}
DECISIVE_GAP = 0.1  # logits; see measure()
_AT_MOST = ("max_abs_diff", "classifier_max_abs_diff", "regression_max_abs_diff")


@dataclass
class Batch:
    arrays: dict[str, np.ndarray]  # input_ids, attention_mask, token_type_ids: (B, T) int64

    def torch(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in self.arrays.items()}


def encode(source: Source, texts: list[Any], max_len: int | None = None) -> Batch:
    """Tokenizes single texts or (a, b) pairs, truncates to max_len, pads to the longest."""
    tok = source.tokenizer
    max_len = max_len or source.max_seq_len
    tok.enable_truncation(max_len)
    try:
        encodings = tok.encode_batch(texts)
    finally:
        tok.no_truncation()
    width = max(len(e.ids) for e in encodings)
    pad = tok.token_to_id("[PAD]") or 0
    arrays = {
        "input_ids": np.full((len(texts), width), pad, dtype=np.int64),
        "attention_mask": np.zeros((len(texts), width), dtype=np.int64),
        "token_type_ids": np.zeros((len(texts), width), dtype=np.int64),
    }
    for row, e in enumerate(encodings):
        n = len(e.ids)
        arrays["input_ids"][row, :n] = e.ids
        arrays["attention_mask"][row, :n] = 1
        arrays["token_type_ids"][row, :n] = e.type_ids
    return Batch(arrays)


def representable(source: Source, text: str) -> bool:
    """False when over half of a text's tokens are [UNK]: an English-only vocabulary turns
    Chinese into runs of [UNK], which says nothing about the graph's fidelity."""
    enc = source.tokenizer.encode(text, add_special_tokens=False)
    unknown = sum(1 for token in enc.tokens if token == "[UNK]")
    return unknown * 2 <= len(enc.tokens)


def usable(source: Source, texts: list[Any]) -> list[Any]:
    """The texts the vocabulary can represent; all of them when it can represent none (a toy
    vocabulary), so that the gate always has inputs."""

    def ok(item: Any) -> bool:
        return all(representable(source, t) for t in ([item] if isinstance(item, str) else item))

    return [item for item in texts if ok(item)] or list(texts)


def parity_batches(source: Source) -> list[Batch]:
    """Padded batches of mixed lengths, one single-sentence batch, and the pairs, of the
    sentences this model's vocabulary can represent."""
    sentences = usable(source, SENTENCES)
    order = sorted(range(len(sentences)), key=lambda i: (i * 7) % len(sentences))
    mixed = [sentences[i] for i in order]
    batches = [encode(source, mixed[i : i + 6]) for i in range(0, len(mixed), 6)]
    batches.append(encode(source, [sentences[0]]))
    pairs = usable(source, PAIRS)
    if pairs:
        batches.append(encode(source, pairs))
    return batches


def session(path: Any, threads: int = 2, gpu: bool = False) -> ort.InferenceSession:
    """A CPU session, or with `gpu` one on ONNX Runtime's CUDA provider when this onnxruntime
    has it (fp16's gate is then checked where fp16 is served)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if gpu and GPU_PROVIDER in ort.get_available_providers():
        providers.insert(0, GPU_PROVIDER)
    return ort.InferenceSession(str(path), options, providers=providers)


GPU_PROVIDER = "CUDAExecutionProvider"


def _masked_copy(batch: Batch, mask_id: int, special: set[int]) -> tuple[Batch, np.ndarray]:
    """Every 6th real non-special token replaced by [MASK]; returns flat positions."""
    ids = batch.arrays["input_ids"].copy()
    positions = []
    for row in range(ids.shape[0]):
        cols = [
            c
            for c in range(ids.shape[1])
            if batch.arrays["attention_mask"][row, c] and int(ids[row, c]) not in special
        ]
        for c in cols[1::6] or cols[:1]:
            ids[row, c] = mask_id
            positions.append(row * ids.shape[1] + c)
    return Batch({**batch.arrays, "input_ids": ids}), np.array(positions, dtype=np.int64)


@dataclass
class ReferenceBatch:
    batch: Batch
    hidden: np.ndarray  # (B, T, H) PyTorch last_hidden_state
    pooled: np.ndarray  # (B, H) PyTorch pooler output
    nsp_logits: np.ndarray | None  # (B, 2)
    class_logits: np.ndarray | None  # (B, C) the sequence classifier's
    masked: Batch | None  # the batch with every 6th real token replaced by [MASK]
    mask_positions: np.ndarray | None  # (n,) flat positions of those masks
    mlm_top1: np.ndarray | None  # (n,) PyTorch's top-1 token at each mask


@dataclass
class Reference:
    """PyTorch's outputs on the parity inputs, computed once and shared by every variant."""

    batches: list[ReferenceBatch]
    skipped: int  # parity sentences left out as unrepresentable in this vocabulary


@torch.no_grad()
def reference(source: Source) -> Reference:
    model = source.model
    specials = {source.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
    mask_id = source.tokenizer.token_to_id("[MASK]")
    out = []
    for batch in parity_batches(source):
        hidden, pooled = model.bert(**batch.torch())
        nsp = model.cls.seq_relationship(pooled).numpy() if source.has_nsp else None
        classes = source.classifier(pooled).numpy() if source.classifier is not None else None
        masked = positions = top1 = None
        if source.has_mlm and mask_id is not None:
            masked, positions = _masked_copy(batch, mask_id, specials)
            masked_hidden, _ = model.bert(**masked.torch())
            rows = masked_hidden.reshape(-1, masked_hidden.shape[-1])[positions]
            top1 = model.cls.predictions(rows).argmax(-1).numpy()
        out.append(
            ReferenceBatch(
                batch, hidden.numpy(), pooled.numpy(), nsp, classes, masked, positions, top1
            )
        )
    return Reference(out, len(SENTENCES) - len(usable(source, SENTENCES)))


def measure(
    ref: Reference,
    encoder: Any,
    mlm_head: Any | None,
    nsp_head: Any | None,
    pooling: str,
    has_pooler: bool,
    classifier_head: Any | None = None,
    regression: bool = False,
) -> dict[str, float]:
    """Runs one variant's sessions on the parity inputs and compares with `ref`."""
    max_diff = pooler_diff = nsp_diff = class_diff = 0.0
    agree = compared = 0
    cosines: list[np.ndarray] = []
    top1_hits = top1_total = 0
    for item in ref.batches:
        arrays = item.batch.arrays
        outs = encoder.run(None, arrays)
        hidden = outs[0].astype(np.float32)
        real = arrays["attention_mask"].astype(bool)
        max_diff = max(max_diff, float(np.abs(hidden[real] - item.hidden[real]).max()))
        pooled = outs[1] if len(outs) > 1 else None
        ours = pool(hidden, arrays["attention_mask"], pooling, pooled)
        theirs = pool(item.hidden, arrays["attention_mask"], pooling, item.pooled)
        cosines.append(cosine(ours, theirs))
        if pooled is not None and has_pooler:
            pooler_diff = max(pooler_diff, float(np.abs(pooled - item.pooled).max()))
        if nsp_head is not None and pooled is not None and item.nsp_logits is not None:
            logits = nsp_head.run(None, {"pooled": pooled.astype(np.float32)})[0]
            nsp_diff = max(nsp_diff, float(np.abs(logits - item.nsp_logits).max()))
        if classifier_head is not None and pooled is not None and item.class_logits is not None:
            logits = classifier_head.run(None, {"pooled": pooled.astype(np.float32)})[0]
            class_diff = max(class_diff, float(np.abs(logits - item.class_logits).max()))
            # the class is compared where PyTorch's decision is clear: on an input where its
            # top two logits tie to within DECISIVE_GAP, any rounding may flip the argmax
            top2 = np.sort(item.class_logits, axis=-1)[:, -2:]
            decisive = (top2[:, 1] - top2[:, 0]) >= DECISIVE_GAP if top2.shape[1] == 2 else None
            same = logits.argmax(-1) == item.class_logits.argmax(-1)
            if decisive is not None:
                same = same[decisive]
            agree += int(same.sum())
            compared += len(same)
        if mlm_head is not None and item.masked is not None and item.mlm_top1 is not None:
            h = encoder.run(["last_hidden_state"], item.masked.arrays)[0].astype(np.float32)
            rows = h.reshape(-1, h.shape[-1])[item.mask_positions]
            logits = mlm_head.run(None, {"hidden": rows})[0]
            top1_hits += int((logits.argmax(-1) == item.mlm_top1).sum())
            top1_total += len(item.mlm_top1)
    all_cos = np.concatenate(cosines)
    result: dict[str, float] = {
        "max_abs_diff": max_diff,
        "min_cosine": float(all_cos.min()),
        "mean_cosine": float(all_cos.mean()),
        "sentences": len(all_cos),
        "skipped_unrepresentable": ref.skipped,
    }
    if has_pooler:
        result["pooler_max_abs_diff"] = pooler_diff
    if nsp_head is not None:
        result["nsp_max_abs_diff"] = nsp_diff
    if mlm_head is not None and top1_total:
        result["fill_mask_top1"] = top1_hits / top1_total
    if classifier_head is not None:
        result["classifier_max_abs_diff"] = class_diff
        if regression:
            result["regression_max_abs_diff"] = class_diff
        elif compared:
            result["classifier_argmax_agreement"] = agree / compared
            result["classifier_decisive_inputs"] = compared
    return result


def failures(precision: str, figures: dict[str, float]) -> list[str]:
    """The gate's verdict: a list of the figures that miss their bound (empty = pass)."""
    missed = []
    gates = {**GATES.get(precision, {}), **CLASSIFIER_GATES.get(precision, {})}
    for key, bound in gates.items():
        if key not in figures:
            continue
        value = figures[key]
        at_most = key in _AT_MOST
        if not (value <= bound if at_most else value >= bound):
            missed.append(f"{key} {value:.6g} (needs {'<=' if at_most else '>='} {bound})")
    return missed


def _closeness_scorer(
    batches: list[Batch],
    fp32_graph: Any,
    output: Callable[[ort.InferenceSession, Batch], np.ndarray],
    closeness: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> Callable[[Any], tuple[float, float]]:
    """A function graph -> (mean, min) closeness of its `output` to the fp32 graph's on
    `batches` (higher is better)."""
    reference = session(fp32_graph)
    expected = [output(reference, b) for b in batches]

    def score(path: Any) -> tuple[float, float]:
        sess = session(path)
        close = np.concatenate(
            [closeness(output(sess, b), e) for b, e in zip(batches, expected, strict=True)]
        )
        return float(close.mean()), float(close.min())

    return score


def calibration_scorer(
    source: Source, fp32_graph: Any, pooling: str
) -> Callable[[Any], tuple[float, float]]:
    """A function int8 graph -> (mean, min) sentence cosine against the fp32 graph on the
    calibration sentences (kept apart from the parity sentences that judge the result)."""
    texts = usable(source, CALIBRATION)
    batches = [encode(source, texts[i : i + 9]) for i in range(0, len(texts), 9)]

    def embed(sess: ort.InferenceSession, batch: Batch) -> np.ndarray:
        outs = sess.run(None, batch.arrays)
        return pool(
            outs[0], batch.arrays["attention_mask"], pooling, outs[1] if len(outs) > 1 else None
        )

    return _closeness_scorer(batches, fp32_graph, embed, cosine)


def regression_scorer(source: Source, fp32_graph: Any) -> Callable[[Any], tuple[float, float]]:
    """For a regression head: a function int8 graph -> (mean, min) of 1 - |score - fp32 score|
    on pairs of calibration sentences. A head amplifies the pooled vector's error (a MiniLM STS
    cross-encoder whose sentence vectors met the cosine targets was 0.17 off in score), so the
    search must look at the score itself."""
    assert source.classifier is not None
    weight = source.classifier.weight.detach().numpy().T  # (H, 1)
    bias = source.classifier.bias.detach().numpy()  # (1,)
    texts = usable(source, CALIBRATION)
    pairs = list(zip(texts[::2], texts[1::2], strict=False))
    batches = [encode(source, pairs[i : i + 9]) for i in range(0, len(pairs), 9)]

    def scores(sess: ort.InferenceSession, batch: Batch) -> np.ndarray:
        pooled = sess.run(["pooler_output"], batch.arrays)[0]  # (B, H)
        return (pooled @ weight + bias)[:, 0]  # (B,)

    return _closeness_scorer(batches, fp32_graph, scores, lambda a, b: 1.0 - np.abs(a - b))
