"""`bert-finetune`: any BERT folder + a labelled CSV/TSV/JSONL -> a BertForSequenceClassification
folder (Hugging Face layout) with its evaluation report.

Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 internal error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bertserve.commands import DefaultsHelpFormatter, refuse_missing_extra, run_command

from .config import parse_duration


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bert-finetune",
        description=(
            "Fine-tune a BERT (a bert-pretrain run, or any Hugging Face or sentence-transformers "
            "BERT folder) for a sentence or sentence-pair task."
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
    cols.add_argument("--label", help="the label (or score, for regression)")
    data = p.add_argument_group("data")
    data.add_argument("--task", choices=["classification", "regression"], default="classification")
    data.add_argument("--labels", help="comma-separated class order (default: sorted)")
    data.add_argument(
        "--delimiter", help="tab, comma, semicolon, pipe or one character (default: extension)"
    )
    data.add_argument(
        "--no-header", dest="header", action="store_false", help="no header row: index columns"
    )
    data.add_argument("--eval-fraction", type=float, default=0.1)
    data.add_argument("--max-seq-len", type=int, default=128, help="pairs: longest-first cut")
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
    opt.add_argument("--seed", type=int, default=0)
    run = p.add_argument_group("run")
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out (other flags: saved)"
    )
    run.add_argument("--overwrite", action="store_true", help="start over a previous run in --out")
    run.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def config_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .finetune import FinetuneConfig

    if args.resume:
        saved = Path(args.out) / "finetune_config.json"
        if not saved.is_file():
            raise ValueError(f"--resume: {args.out} holds no bert-finetune run")
        values = json.loads(saved.read_text(encoding="utf-8"))
        values["progress"] = args.progress
        return FinetuneConfig(**values)
    absent = [flag for flag, value in (("--from", args.model), ("--train", args.train),
              ("--label", args.label)) if value is None]  # fmt: skip
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
    weights = None
    if args.class_weights:
        try:
            weights = [float(w) for w in args.class_weights.split(",")]
        except ValueError:
            raise ValueError("--class-weights must be comma-separated numbers") from None
        if any(w <= 0 for w in weights):
            raise ValueError("--class-weights must be positive")
    if args.task == "regression" and (weights or args.labels):
        raise ValueError("--labels and --class-weights are for classification")
    return FinetuneConfig(
        model=args.model,
        train=args.train,
        out=args.out,
        text_a=args.text or args.text_a,
        text_b=args.text_b,
        label=args.label,
        eval=args.eval,
        task=args.task,
        labels=[x.strip() for x in args.labels.split(",")] if args.labels else None,
        delimiter=args.delimiter,
        header=args.header,
        eval_fraction=args.eval_fraction,
        epochs=args.epochs,
        time_budget_s=parse_duration(args.time_budget) if args.time_budget else None,
        lr=args.lr,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        warmup_fraction=args.warmup_fraction,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        class_weights=weights,
        eval_every=args.eval_every,
        bf16=args.bf16,
        seed=args.seed,
        progress=args.progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if refuse_missing_extra("bert-finetune"):
        return 2
    from .checkpoint import CheckpointError
    from .finetune import finetune

    return run_command(
        "bert-finetune",
        lambda: finetune(config_from_args(args), resume=args.resume, overwrite=args.overwrite),
        (CheckpointError, ValueError, FileNotFoundError),
        interrupted="continue with --resume",
        output=Path(args.out),
    )


if __name__ == "__main__":
    raise SystemExit(main())
