"""`bert-finetune --task embedding`: any BERT folder -> a sentence-embedding model, trained
contrastively, written as a sentence-transformers folder (st_folder.py).

Data, by loss: `mnrl` (anchor, positive[, hard negative]) rows, optionally scored pairs cut at
--min-score; `cosent` scored pairs; `simcse` one text column. Batches for the in-batch-negative
losses never hold a text twice (a false negative otherwise); cosent's are grouped by length.
With --mini-batch-size the embeddings of a batch are computed mini batch by mini batch and the
loss's gradient reaches the model through a gradient cache (losses/cached_mnrl.py): the
negatives are the whole batch while memory follows the mini batch. Evaluated every epoch (and
--eval-every steps): Spearman of cosine on scored pairs, retrieval over the evaluation pairs;
the best checkpoint by the main metric is what OUT holds. OUT/last holds the state --resume
continues from; batches are a function of (seed, epoch) and dropout of (seed, step), so a
resumed run repeats the losses of an unbroken one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from .. import run_dir
from ..io import write_text_atomic
from ..optim import adamw
from ..precision import autocast, use_bf16
from ..tokenizer import load_tokenizer, save_tokenizer
from .classify import (
    MARKER,
    FinetuneConfig,
    FinetuneError,
    _lowercase,
    check_out,
    collate,
    epoch_batches,
)
from .data import TaskDataError, hold_out, numbers, read_columns
from .encoder import POOLINGS, SentenceEncoder, load_encoder
from .evaluation.retrieval import retrieval_report
from .evaluation.similarity import similarity_report
from .loop import LAST, REPORT, train_loop
from .losses import EmbeddingLoss
from .losses.cached_mnrl import cached_step
from .losses.cosent import CoSENTLoss
from .losses.matryoshka import MatryoshkaLoss
from .losses.mnrl import MultipleNegativesRankingLoss
from .losses.simcse import SimCSELoss
from .report import headline
from .st_folder import FILES, read_st_settings, save_st_folder

LOSSES = ("mnrl", "cosent", "simcse")
RUN = run_dir.RunKind(
    MARKER,
    frozenset(
        {
            LAST,
            REPORT,
            "metrics.jsonl",
            "report.png",
            "tokenizer.json",
            "vocab.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
            *FILES,
        }
    ),
    re.compile(r"^\..+\.tmp$"),  # atomic writes' temporaries
)


@dataclass
class EmbeddingData:
    columns: list[list[str]]  # training texts: 1 (simcse), 2 or 3 columns of equal length
    scores: np.ndarray | None  # (N,) float32, cosent's targets
    eval_a: list[str]
    eval_b: list[str] | None  # None: no pairs to evaluate on
    eval_scores: np.ndarray | None  # (M,) gold similarity of the evaluation pairs
    eval_positive: np.ndarray  # (M,) bool: the evaluation pairs that count as retrieval hits


def check_embedding_config(cfg: FinetuneConfig, hidden_size: int) -> None:
    if cfg.loss not in LOSSES:
        raise FinetuneError(f"--loss must be one of {', '.join(LOSSES)}")
    if cfg.loss == "simcse" and (cfg.text_b or cfg.text_neg):
        raise FinetuneError("--loss simcse trains on one text column (--text), not pairs")
    if cfg.loss != "simcse" and not cfg.text_b:
        raise FinetuneError(f"--loss {cfg.loss} needs pairs: --text-a and --text-b")
    if cfg.loss == "cosent" and cfg.label is None:
        raise FinetuneError("--loss cosent needs the pairs' scores (--label)")
    if cfg.text_neg and cfg.loss != "mnrl":
        raise FinetuneError("--text-neg (hard negatives) is for --loss mnrl")
    if cfg.pooling is not None and cfg.pooling not in POOLINGS:
        raise FinetuneError(f"--pooling must be one of {', '.join(POOLINGS)}")
    dims = cfg.matryoshka_dims
    if dims:
        if any(d < 1 for d in dims) or dims != sorted(set(dims), reverse=True):
            raise FinetuneError(f"--matryoshka-dims must be descending and distinct: {dims}")
        if dims[0] > hidden_size:
            raise FinetuneError(
                f"--matryoshka-dims {dims[0]} exceeds the model's hidden size {hidden_size}"
            )
    if cfg.mini_batch_size is not None and not 1 <= cfg.mini_batch_size <= cfg.batch_size:
        raise FinetuneError("--mini-batch-size must be between 1 and --batch-size")
    if cfg.scale <= 0:
        raise FinetuneError("--scale must be positive")


def load_embedding_data(cfg: FinetuneConfig) -> EmbeddingData:
    """Reads and checks both files; raises before anything is written."""
    train_path = Path(cfg.train)
    wanted = [c for c in (cfg.text_a, cfg.text_b, cfg.text_neg) if c is not None]
    with_label = cfg.label is not None and cfg.loss != "simcse"
    cells, lines = read_columns(
        train_path, [*wanted, *([cfg.label] if with_label else [])], cfg.delimiter, cfg.header
    )
    texts = cells[: len(wanted)]
    scores = numbers(cells[-1], lines, train_path) if with_label else None
    if cfg.eval is not None:
        eval_path = Path(cfg.eval)
        eval_columns = [
            cfg.eval_text_a or cfg.text_a,
            cfg.eval_text_b or cfg.text_b,
            cfg.eval_label or cfg.label,
        ]
        present = [c for c in eval_columns if c is not None]
        eval_cells, eval_lines = read_columns(eval_path, present, cfg.delimiter, cfg.header)
        eval_a = eval_cells[0]
        eval_b = eval_cells[1] if len(present) > 1 else None
        eval_scores = numbers(eval_cells[2], eval_lines, eval_path) if len(present) > 2 else None
    else:
        if cfg.loss == "simcse":
            raise FinetuneError(
                "--loss simcse needs --eval with scored pairs (--eval-text-a, --eval-text-b, "
                "--eval-label) to measure and keep the best checkpoint"
            )
        keep, held = hold_out(len(texts[0]), cfg.eval_fraction, cfg.seed)
        eval_a = [texts[0][i] for i in held]
        eval_b = [texts[1][i] for i in held]
        eval_scores = None if scores is None else scores[held]
        texts = [[column[i] for i in keep] for column in texts]
        scores = None if scores is None else scores[keep]
    if cfg.loss == "mnrl" and scores is not None and cfg.min_score is not None:
        kept = np.flatnonzero(scores >= cfg.min_score)
        texts = [[column[i] for i in kept] for column in texts]
        scores = None
    if cfg.loss == "mnrl":
        scores = None  # mnrl ranks; scores only select the pairs
    positive = np.ones(len(eval_a), dtype=bool)
    if eval_scores is not None and cfg.min_score is not None:
        positive = eval_scores >= cfg.min_score
    _check_columns(cfg, texts, train_path)
    return EmbeddingData(texts, scores, eval_a, eval_b, eval_scores, positive)


def _check_columns(cfg: FinetuneConfig, texts: list[list[str]], path: Path) -> None:
    rows = len(texts[0])
    if rows < cfg.batch_size:
        raise TaskDataError(
            f"{path}: {rows} training rows, fewer than one batch of --batch-size {cfg.batch_size}"
        )
    names = [cfg.text_a, cfg.text_b, cfg.text_neg]
    for column, name in zip(texts, names, strict=False):
        filled = {t for t in column if t.strip()}
        if not filled:
            raise TaskDataError(f"{path}: column {name!r} is empty")
        if len(filled) == 1 and rows > 1:
            raise TaskDataError(f"{path}: every row of column {name!r} is the same text")
    if cfg.loss in ("mnrl", "simcse"):
        distinct = len(set(texts[0]))
        if distinct < cfg.batch_size:
            raise TaskDataError(
                f"{path}: {distinct} distinct texts in column {cfg.text_a!r}, fewer than "
                f"--batch-size {cfg.batch_size}: a batch without repeats cannot be filled"
            )


def build_loss(cfg: FinetuneConfig) -> EmbeddingLoss:
    inner: EmbeddingLoss
    if cfg.loss == "cosent":
        inner = CoSENTLoss(cfg.scale)
    elif cfg.loss == "simcse":
        inner = SimCSELoss(cfg.scale)
    else:
        inner = MultipleNegativesRankingLoss(cfg.scale, cfg.symmetric)
    if cfg.matryoshka_dims:
        return MatryoshkaLoss(inner, cfg.matryoshka_dims)
    return inner


def no_duplicate_batches(
    rows: list[tuple[str, ...]],
    lengths: np.ndarray,
    batch_size: int,
    per_epoch: int,
    seed: int,
    epoch: int,
) -> list[np.ndarray]:
    """The epoch's batches, none holding the same text twice (in any column), as
    sentence-transformers' NoDuplicatesBatchSampler: a row that would repeat a text waits for
    a later batch. Rows are taken in epoch_batches' order (seeded, sorted by length within
    groups of batches, so a batch pads little) and the batches shuffled; `per_epoch` of them
    (the last ones may be short). A function of (seed, epoch) alone."""
    waiting = [int(i) for batch in epoch_batches(lengths, batch_size, seed, epoch) for i in batch]
    batches: list[np.ndarray] = []
    while waiting and len(batches) < per_epoch:
        batch: list[int] = []
        seen: set[str] = set()
        later: list[int] = []
        for index in waiting:
            texts = rows[index]
            if len(batch) < batch_size and not seen.intersection(texts):
                batch.append(index)
                seen.update(texts)
            else:
                later.append(index)
        batches.append(np.asarray(batch))
        waiting = later
    order = np.random.default_rng([seed, epoch, 1]).permutation(len(batches))
    return [batches[i] for i in order]


def encode_texts(tokenizer: Tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    tokenizer.enable_truncation(max_len)
    try:
        return [e.ids for e in tokenizer.encode_batch(texts)]
    finally:
        tokenizer.no_truncation()


def collate_ids(rows: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Single texts: classify.collate with every type id 0."""
    return collate([[(token, 0) for token in row] for row in rows], pad)


@torch.no_grad()
def embed_texts(
    model: SentenceEncoder, tokenizer: Tokenizer, texts: list[str], max_len: int, pad: int
) -> np.ndarray:
    """(N, H) float32, in batches of 64 sorted by length; the model is left in train mode."""
    model.eval()
    rows = encode_texts(tokenizer, texts, max_len)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = np.zeros((len(rows), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), 64):
        pick = order[start : start + 64]
        out[pick] = model(**collate_ids([rows[i] for i in pick], pad)).numpy()
    model.train()
    return out


def evaluate(
    model: SentenceEncoder,
    tokenizer: Tokenizer,
    data: EmbeddingData,
    max_len: int,
    pad: int,
    bf16: bool = False,
) -> dict[str, Any]:
    """Every distinct evaluation text embedded once, for both evaluators (under bf16 autocast
    if asked; the vectors come out float32)."""
    texts = sorted(set(data.eval_a) | set(data.eval_b or []))
    with autocast(torch.device("cpu"), bf16):
        vectors = embed_texts(model, tokenizer, texts, max_len, pad)  # (U, H)
    where = {text: i for i, text in enumerate(texts)}

    def embed(batch: list[str]) -> np.ndarray:
        return vectors[[where[t] for t in batch]]

    figures: dict[str, Any] = {}
    if data.eval_b is not None and data.eval_scores is not None:
        figures.update(similarity_report(embed(data.eval_a), embed(data.eval_b), data.eval_scores))
    if data.eval_b is not None and data.eval_positive.any():
        pick = np.flatnonzero(data.eval_positive)
        anchors = [data.eval_a[i] for i in pick]
        positives = [data.eval_b[i] for i in pick]
        figures.update(retrieval_report(anchors, positives, embed))
    return figures


def main_metric(figures: dict[str, Any]) -> tuple[str, float]:
    """Spearman of cosine where the evaluation pairs are scored, else nDCG@10."""
    try:
        return headline(figures)
    except KeyError:
        raise FinetuneError("the evaluation data has no pairs to measure the model on") from None


def source_defaults(source: Path) -> tuple[str, bool]:
    """(pooling, normalize) of a sentence-transformers folder; (mean, False) otherwise."""
    try:
        pooling, normalize, _, _ = read_st_settings(source)
    except ValueError as exc:
        raise FinetuneError(str(exc)) from exc
    return pooling or "mean", normalize


def finetune_embedding(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> Path:
    out = Path(cfg.out)
    source = Path(cfg.model)
    default_pooling, default_normalize = source_defaults(source)
    pooling = cfg.pooling or default_pooling
    normalize = default_normalize if cfg.normalize is None else cfg.normalize
    torch.manual_seed(cfg.seed)
    model = load_encoder(source, pooling)
    check_embedding_config(cfg, model.config.hidden_size)
    if cfg.max_seq_len > model.config.max_position_embeddings:
        raise FinetuneError(
            f"--max-seq-len {cfg.max_seq_len} exceeds the model's "
            f"{model.config.max_position_embeddings} positions"
        )
    data = load_embedding_data(cfg)
    tokenizer = load_tokenizer(source)
    lowercase = _lowercase(source)
    pad = tokenizer.token_to_id("[PAD]") or 0
    check_out(out, resume, overwrite, RUN)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_text_atomic(out / MARKER, cfg.to_json())
    rows = len(data.columns[0])
    print(
        f"task: embedding, loss {cfg.loss}"
        + (f" x Matryoshka {cfg.matryoshka_dims}" if cfg.matryoshka_dims else "")
        + f", {rows} training rows, {len(data.eval_a)} evaluation rows; pooling {pooling}"
        + (", normalized" if normalize else "")
    )
    encoded = [encode_texts(tokenizer, column, cfg.max_seq_len) for column in data.columns]
    views = 2 if cfg.loss == "simcse" else 1  # simcse: the one column, two dropout masks
    loss_fn = build_loss(cfg)
    scores = None if data.scores is None else torch.from_numpy(data.scores)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, eps=1e-8)
    per_epoch = math.ceil(rows / cfg.batch_size)
    bf16 = use_bf16(cfg.bf16, torch.device("cpu"))
    cached = cfg.mini_batch_size is not None and cfg.mini_batch_size < cfg.batch_size
    # evaluation follows the training steps' autocast unless asked for fp32: it was a third
    # of a short run's time, and its Spearman moved by 1e-4 (all-MiniLM-L6-v2, STS-B dev)
    eval_bf16 = bf16 and cfg.eval_precision == "auto"
    print(
        f"precision: {'bf16 autocast' if bf16 else 'fp32'} for training steps; "
        f"{'bf16 autocast' if eval_bf16 else 'fp32'} to evaluate"
        + (f"; gradient cache, mini batches of {cfg.mini_batch_size}" if cached else "")
    )
    text_rows = list(zip(*data.columns, strict=True))
    lengths = np.array([max(len(c[i]) for c in encoded) for i in range(rows)])  # longest column
    training = {"loss": cfg.loss, "scale": cfg.scale, "matryoshka_dims": cfg.matryoshka_dims}

    def batches_of(epoch: int) -> list[np.ndarray]:
        if cfg.loss == "cosent":
            return epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)
        return no_duplicate_batches(text_rows, lengths, cfg.batch_size, per_epoch, cfg.seed, epoch)

    def embed_batch(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(torch.device("cpu"), bf16):
            return model(**batch)  # type: ignore[no-any-return]  # (b, H) float32

    def train_step(pick: np.ndarray) -> dict[str, float]:
        columns = [  # per view of each column: (b, T) ids, mask, types
            collate_ids([column[i] for i in pick], pad) for column in encoded for _ in range(views)
        ]
        batch_scores = None if scores is None else scores[pick]
        if cached:
            assert cfg.mini_batch_size is not None
            value = cached_step(embed_batch, columns, loss_fn, batch_scores, cfg.mini_batch_size)
            return {"loss": value}
        loss = loss_fn([embed_batch(c) for c in columns], batch_scores)
        loss.backward()  # type: ignore[no-untyped-call]
        return {"loss": float(loss.detach())}

    def save_best() -> None:
        save_st_folder(model, out, normalize, cfg.max_seq_len, lowercase, training)
        save_tokenizer(tokenizer, out, lowercase, cfg.max_seq_len)

    final = train_loop(
        cfg,
        out,
        model,
        optimizer,
        per_epoch,
        batches_of,
        train_step,
        lambda: evaluate(model, tokenizer, data, cfg.max_seq_len, pad, eval_bf16),
        save_best,
        resume,
    )
    name = final["metric"]
    print(f"best eval {name} {final[name]:.4f} at step {final['step']}; sentence-transformers "
          f"folder in {out}")  # fmt: skip
    return out
