"""`bert-finetune`'s loop: any BERT folder + labelled rows -> a BertForSequenceClassification.

The standard recipe: pooled [CLS] -> dropout -> linear head, AdamW with linear warmup and linear
decay, cross-entropy (class-weighted with --class-weights) or MSE for regression. Evaluation at
every epoch end and every --eval-every steps; the best checkpoint by the headline metric
(task_report.headline) is what OUT holds, written file by file atomically. OUT/last holds the
latest state for --resume: the data order is a function of (seed, epoch) and dropout is
reseeded from (seed, step), so a resumed run repeats the losses of an unbroken one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from .. import checkpoint as ckpt
from .. import run_dir
from ..io import write_text_atomic
from ..optim import adamw
from ..precision import autocast, use_bf16
from ..tokenizer import load_tokenizer, save_tokenizer
from .classifier import REGRESSION, SINGLE_LABEL, BertForSequenceClassification, from_pretrained
from .data import (
    Columns,
    Examples,
    TaskDataError,
    class_ids,
    float_targets,
    hold_out,
    label_names,
    read_examples,
)
from .loop import LAST, REPORT, train_loop
from .report import classification_report, headline, regression_report

MARKER = "finetune_config.json"
RUN = run_dir.RunKind(  # what a bert-finetune run writes (run_dir.py keeps to it)
    MARKER,
    frozenset(
        {
            LAST,
            REPORT,
            "config.json",
            "model.safetensors",
            "metrics.jsonl",
            "report.png",
            "tokenizer.json",
            "vocab.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
        }
    ),
    re.compile(r"^.+\.tmp$"),  # atomic writes' temporaries
)


@dataclass
class FinetuneConfig:
    model: str  # the BERT folder to start from
    train: str
    out: str
    text_a: str  # column (name or 0-based index); the only text for single-text tasks
    label: str | None = None  # class or score; for embedding losses, the pair's score
    text_b: str | None = None  # the second text of a pair
    eval: str | None = None
    task: str = "classification"  # or "regression"
    labels: list[str] | None = None  # class order; default: sorted labels of the train file
    delimiter: str | None = None  # default: from the extension
    header: bool = True
    eval_fraction: float = 0.1  # held out of --train when no --eval is given
    epochs: float = 3.0
    time_budget_s: float | None = None
    lr: float = 2e-5
    batch_size: int = 32
    max_seq_len: int = 128
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    dropout: float | None = None  # the head's; default: the model's hidden dropout
    class_weights: list[float] | None = None  # per class, in label order
    eval_every: int | None = None  # steps, besides every epoch end
    bf16: str = "auto"  # autocast for training steps: on, off, auto (CPUs with native bf16)
    eval_precision: str = "auto"  # --task embedding: auto (as the training steps) or fp32
    seed: int = 0
    progress: bool = True
    # --task embedding (embedding.py)
    loss: str = "mnrl"  # mnrl, cosent or simcse
    text_neg: str | None = None  # mnrl: a hard negative column
    scale: float = 20.0  # mnrl, cosent, simcse: cosine similarity x scale
    symmetric: bool = False  # mnrl: positives rank anchors too
    min_score: float | None = None  # mnrl with --label: pairs scored below this are dropped
    matryoshka_dims: list[int] | None = None  # descending; the loss summed over cut vectors
    mini_batch_size: int | None = None  # gradient cache: memory follows this, not batch_size
    pooling: str | None = None  # mean or cls; default: the source folder's, else mean
    normalize: bool | None = None  # default: the source folder's, else off
    eval_text_a: str | None = None  # the evaluation file's columns, where they differ
    eval_text_b: str | None = None
    eval_label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


class FinetuneError(ValueError):
    """Settings or folders a fine-tuning run cannot start with."""


@dataclass
class Task:
    labels: list[str]
    problem_type: str
    train: Examples
    eval: Examples
    train_targets: np.ndarray  # (N,) int64 class ids or float32 scores
    eval_targets: np.ndarray
    weights: np.ndarray | None  # (C,) class weights


def load_task(cfg: FinetuneConfig) -> Task:
    """Reads and checks both files; raises TaskDataError before anything is written."""
    assert cfg.label is not None, "classification and regression need --label"
    columns = Columns(cfg.text_a, cfg.text_b, cfg.label)
    train_path = Path(cfg.train)
    train = read_examples(train_path, columns, cfg.delimiter, cfg.header)
    if cfg.eval is not None:
        eval_path = Path(cfg.eval)
        evaluation = read_examples(eval_path, columns, cfg.delimiter, cfg.header)
    else:
        eval_path = train_path
        keep, held = hold_out(len(train), cfg.eval_fraction, cfg.seed)
        train, evaluation = train.subset(keep), train.subset(held)
    if cfg.task == REGRESSION:
        return Task(
            [cfg.label if not cfg.label.isdigit() else "score"],
            REGRESSION,
            train,
            evaluation,
            float_targets(train, train_path),
            float_targets(evaluation, eval_path),
            None,
        )
    labels = label_names(train, cfg.labels, train_path)
    weights = None
    if cfg.class_weights is not None:
        if len(cfg.class_weights) != len(labels):
            raise TaskDataError(
                f"--class-weights has {len(cfg.class_weights)} values for {len(labels)} labels "
                f"({', '.join(labels)})"
            )
        weights = np.asarray(cfg.class_weights, dtype=np.float32)
    return Task(
        labels,
        SINGLE_LABEL,
        train,
        evaluation,
        class_ids(train, labels, train_path),
        class_ids(evaluation, labels, eval_path),
        weights,
    )


def check_out(out: Path, resume: bool, overwrite: bool, kind: run_dir.RunKind = RUN) -> None:
    """OUT is new or empty; a previous run there needs --resume or --overwrite, which removes
    only that run's files; a folder with anything else in it is refused (run_dir.py)."""
    if resume:
        if not (out / LAST / ckpt.STATE_FILE).is_file():
            raise FinetuneError(f"--resume: {out} holds no saved state ({LAST}/) to resume from")
        return
    run_dir.check_new_run(out, overwrite, kind)
    run_dir.clear_run(out, kind)


def encode(tokenizer: Tokenizer, examples: Examples, max_len: int) -> list[list[int]]:
    """Token ids per example ([CLS] A [SEP] B [SEP]), type ids packed alongside: pairs are
    truncated longest-first, as transformers does."""
    tokenizer.enable_truncation(max_len, strategy="longest_first")
    try:
        encodings = tokenizer.encode_batch(examples.inputs())
    finally:
        tokenizer.no_truncation()
    return [list(zip(e.ids, e.type_ids, strict=True)) for e in encodings]  # type: ignore[misc]


def collate(rows: list[list[tuple[int, int]]], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor([t for t, _ in row])
        types[i, : len(row)] = torch.tensor([s for _, s in row])
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def loss_of(
    logits: torch.Tensor, targets: torch.Tensor, problem: str, weights: torch.Tensor | None
) -> torch.Tensor:
    if problem == REGRESSION:
        return F.mse_loss(logits.squeeze(-1), targets)
    return F.cross_entropy(logits, targets, weight=weights)


@torch.no_grad()
def predict(
    model: BertForSequenceClassification, rows: list[list[tuple[int, int]]], pad: int
) -> np.ndarray:
    """(N, C) logits, in batches of 64 sorted by length (less padding)."""
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = np.zeros((len(rows), model.classifier.out_features), dtype=np.float32)
    for start in range(0, len(order), 64):
        pick = order[start : start + 64]
        out[pick] = model(**collate([rows[i] for i in pick], pad)).numpy()
    model.train()
    return out


def report(task: Task, logits: np.ndarray) -> dict[str, Any]:
    if task.problem_type == REGRESSION:
        return regression_report(logits[:, 0], task.eval_targets)
    return classification_report(
        logits.argmax(axis=1), task.eval_targets, task.labels, task.weights
    )


GROUP = 50  # batches whose examples are sorted by length together (less padding)


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's batches: a seeded shuffle, cut into groups of GROUP batches whose examples
    are sorted by length (so a batch pads little), then the batches shuffled. A function of
    (seed, epoch) alone, which is what makes --resume exact."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    span = batch_size * GROUP
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        order[start : start + span] = chunk[np.argsort(lengths[chunk], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def finetune(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> Path:
    out = Path(cfg.out)
    task = load_task(cfg)
    source = Path(cfg.model)
    torch.manual_seed(cfg.seed)  # the fresh head's initial weights
    model, fresh = from_pretrained(source, task.labels, task.problem_type, cfg.dropout)
    tokenizer = load_tokenizer(source)
    lowercase = _lowercase(source)
    if cfg.max_seq_len > model.config.max_position_embeddings:
        raise FinetuneError(
            f"--max-seq-len {cfg.max_seq_len} exceeds the model's "
            f"{model.config.max_position_embeddings} positions"
        )
    pad = tokenizer.token_to_id("[PAD]") or 0
    check_out(out, resume, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_text_atomic(out / MARKER, cfg.to_json())
    print(
        f"task: {task.problem_type}, {len(task.train)} training and {len(task.eval)} evaluation "
        f"examples" + ("" if task.problem_type == REGRESSION else f", labels {task.labels}")
    )
    if fresh:
        print(f"initialized fresh: {', '.join(sorted({n.rsplit('.', 1)[0] for n in fresh}))}")
    train_rows = encode(tokenizer, task.train, cfg.max_seq_len)
    eval_rows = encode(tokenizer, task.eval, cfg.max_seq_len)

    optimizer = adamw(model, cfg.lr, cfg.weight_decay, eps=1e-8)  # transformers' defaults
    per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    targets = torch.from_numpy(task.train_targets)
    lengths = np.array([len(row) for row in train_rows])
    bf16 = use_bf16(cfg.bf16, torch.device("cpu"))
    print(f"precision: {'bf16 autocast' if bf16 else 'fp32'} for training steps; fp32 to evaluate")
    class_weights = None if task.weights is None else torch.from_numpy(task.weights)

    def train_step(pick: np.ndarray) -> dict[str, float]:
        batch = collate([train_rows[i] for i in pick], pad)
        with autocast(torch.device("cpu"), bf16):
            logits = model(**batch).float()  # (B, C)
        loss = loss_of(logits, targets[pick], task.problem_type, class_weights)
        loss.backward()
        figures = {"loss": float(loss.detach())}
        if task.problem_type != REGRESSION:
            figures["accuracy"] = float((logits.argmax(dim=1) == targets[pick]).float().mean())
        return figures

    def save_best() -> None:
        model.save(out)
        save_tokenizer(tokenizer, out, lowercase, cfg.max_seq_len)

    final = train_loop(
        cfg,
        out,
        model,
        optimizer,
        per_epoch,
        lambda epoch: epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch),
        train_step,
        lambda: report(task, predict(model, eval_rows, pad)),
        save_best,
        resume,
    )
    name, value = headline(final)
    print(f"best eval {name} {value:.4f} at step {final['step']}; model in {out}")
    return out


def _lowercase(source: Path) -> bool:
    config = source / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text(encoding="utf-8")).get("do_lower_case", True))
        except ValueError:
            pass
    return True
