"""`bert-finetune`: any BERT folder + a labelled CSV/TSV/JSONL -> a BertForSequenceClassification
folder (Hugging Face layout) with its evaluation report; with `--task embedding`, a
sentence-embedding model trained contrastively, as a sentence-transformers folder.

Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 internal error.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from bertserve.commands import DefaultsHelpFormatter, refuse_missing_extra, run_command

from ..config import parse_duration


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bert-finetune",
        description=(
            "Fine-tune a BERT (a bert-pretrain run, or any Hugging Face or sentence-transformers "
            "BERT folder) for a sentence or sentence-pair task, or into a sentence-embedding "
            "model (--task embedding)."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--from", dest="model", help="BERT folder to start from")
    p.add_argument("--train", help="training rows: .csv, .tsv or .jsonl")
    p.add_argument("--eval", help="evaluation rows (default: --eval-fraction of --train)")
    p.add_argument("--out", required=True, help="folder for the fine-tuned model")
    cols = p.add_argument_group("columns (names, or 0-based indexes)")
    cols.add_argument("--text", help="the text of a single-text task")
    cols.add_argument("--text-a", help="the first text of a pair")
    cols.add_argument("--text-b", help="the second text of a pair")
    cols.add_argument("--label", help="the label (or score, for regression and cosent)")
    cols.add_argument("--text-neg", help="embedding, mnrl: a hard negative for each pair")
    cols.add_argument("--eval-text-a", help="the --eval file's first text, if named otherwise")
    cols.add_argument("--eval-text-b", help="the --eval file's second text")
    cols.add_argument("--eval-label", help="the --eval file's score")
    data = p.add_argument_group("data")
    data.add_argument(
        "--task", choices=["classification", "regression", "embedding"], default="classification"
    )
    data.add_argument("--labels", help="comma-separated class order (default: sorted)")
    data.add_argument(
        "--delimiter", help="tab, comma, semicolon, pipe or one character (default: extension)"
    )
    data.add_argument(
        "--no-header", dest="header", action="store_false", help="no header row: index columns"
    )
    data.add_argument("--eval-fraction", type=float, default=0.1)
    data.add_argument("--max-seq-len", type=int, default=128, help="pairs: longest-first cut")
    emb = p.add_argument_group("embedding (--task embedding)")
    emb.add_argument(
        "--loss",
        choices=["mnrl", "cosent", "simcse"],
        default="mnrl",
        help="mnrl: in-batch negatives on pairs; cosent: scored pairs; simcse: one text column",
    )
    emb.add_argument("--scale", type=float, default=20.0, help="cosine x scale (1/temperature)")
    emb.add_argument("--symmetric", action="store_true", help="mnrl: positives rank anchors too")
    emb.add_argument("--min-score", type=float, help="mnrl with --label: keep pairs scored >= this")
    emb.add_argument(
        "--matryoshka-dims", help="e.g. 384,256,128,64: the loss summed over cut embeddings"
    )
    emb.add_argument(
        "--mini-batch-size",
        type=int,
        help="gradient cache: --batch-size negatives, memory of this many (cached MNRL)",
    )
    emb.add_argument("--pooling", choices=["mean", "cls"], help="default: the source's, else mean")
    emb.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalize embeddings (default: the source's, else off)",
    )
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=float, default=3.0)
    opt.add_argument("--time-budget", metavar="DURATION", help="wall clock, e.g. 10m")
    opt.add_argument("--lr", type=float, default=2e-5)
    opt.add_argument("--batch-size", type=int, default=32)
    opt.add_argument("--warmup-fraction", type=float, default=0.1)
    opt.add_argument("--weight-decay", type=float, default=0.01)
    opt.add_argument("--dropout", type=float, help="the head's (default: the model's)")
    opt.add_argument(
        "--class-weights",
        help="comma-separated weights in label order: a weighted loss, and weighted accuracy "
        "chooses the best checkpoint",
    )
    opt.add_argument("--eval-every", type=int, help="steps, besides every epoch end")
    opt.add_argument(
        "--bf16",
        choices=["auto", "on", "off"],
        default="auto",
        help="bf16 autocast for training steps (auto: on CPUs with native bf16, and CUDA)",
    )
    opt.add_argument(
        "--eval-precision",
        choices=["auto", "fp32"],
        default="auto",
        help="--task embedding: precision of the evaluation's vectors (auto: bf16 autocast "
        "when the training steps use it; on all-MiniLM-L6-v2 STS-B dev Spearman within 0.0001 "
        "of fp32, 2.6x faster). Classification and regression evaluate in fp32",
    )
    opt.add_argument("--seed", type=int, default=0)
    run = p.add_argument_group("run")
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out (other flags: saved)"
    )
    run.add_argument("--overwrite", action="store_true", help="start over a previous run in --out")
    run.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def config_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .classify import FinetuneConfig

    if args.resume:
        saved = Path(args.out) / "finetune_config.json"
        if not saved.is_file():
            raise ValueError(f"--resume: {args.out} holds no bert-finetune run")
        values = json.loads(saved.read_text(encoding="utf-8"))
        values["progress"] = args.progress
        return FinetuneConfig(**values)
    needs_label = args.task != "embedding"
    absent = [flag for flag, value, needed in (("--from", args.model, True),
              ("--train", args.train, True), ("--label", args.label, needs_label))
              if needed and value is None]  # fmt: skip
    if absent:
        raise ValueError(f"{', '.join(absent)} required (or --resume --out DIR)")
    if bool(args.text) == bool(args.text_a):
        raise ValueError("give --text (single texts) or --text-a with --text-b (pairs)")
    if args.text_a and not args.text_b:
        raise ValueError("--text-a needs --text-b")
    if args.text_b and not args.text_a:
        raise ValueError("--text-b needs --text-a")
    for name in ("batch_size", "max_seq_len"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_seq_len < 4:
        raise ValueError("--max-seq-len must be at least 4")
    if args.epochs <= 0:
        raise ValueError("--epochs must be positive")
    if not 0 < args.eval_fraction < 1:
        raise ValueError("--eval-fraction must be between 0 and 1")
    if not 0 <= args.warmup_fraction < 1:
        raise ValueError("--warmup-fraction must be in [0, 1)")
    weights = _comma_list(args.class_weights, float, "--class-weights", "numbers")
    if weights is not None and any(w <= 0 for w in weights):
        raise ValueError("--class-weights must be positive")
    if args.task != "classification" and (weights or args.labels):
        raise ValueError("--labels and --class-weights are for classification")
    dims = _comma_list(args.matryoshka_dims, int, "--matryoshka-dims", "integers")
    embedding_only = {
        "--text-neg": args.text_neg,
        "--min-score": args.min_score,
        "--matryoshka-dims": dims,
        "--mini-batch-size": args.mini_batch_size,
        "--pooling": args.pooling,
        "--normalize": args.normalize,
    }
    given = [flag for flag, value in embedding_only.items() if value is not None]
    if args.task != "embedding" and given:
        raise ValueError(f"{', '.join(given)}: for --task embedding")
    # the flags named as the config's fields, then those that take parsing
    same = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig) if hasattr(args, f.name)}
    return FinetuneConfig(
        **{
            **same,
            "text_a": args.text or args.text_a,
            "labels": [x.strip() for x in args.labels.split(",")] if args.labels else None,
            "time_budget_s": parse_duration(args.time_budget) if args.time_budget else None,
            "class_weights": weights,
            "matryoshka_dims": dims,
        }
    )


def _comma_list(text: str | None, kind: type, flag: str, what: str) -> list[Any] | None:
    if not text:
        return None
    try:
        return [kind(item) for item in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated {what}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if refuse_missing_extra("bert-finetune"):
        return 2
    from ..checkpoint import CheckpointError
    from .classify import finetune
    from .embedding import finetune_embedding

    def run() -> object:
        cfg = config_from_args(args)
        train = finetune_embedding if cfg.task == "embedding" else finetune
        return train(cfg, resume=args.resume, overwrite=args.overwrite)

    return run_command(
        "bert-finetune",
        run,
        (CheckpointError, ValueError, FileNotFoundError),
        interrupted="continue with --resume",
        output=Path(args.out),
    )


if __name__ == "__main__":
    raise SystemExit(main())
