"""`bert-pretrain`: raw text to a Hugging Face-compatible BERT checkpoint (MLM + NSP).

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from bertserve.commands import DefaultsHelpFormatter, refuse_missing_extra, run_command

from .config import PRESETS, TrainConfig, parse_duration

# model-shape flags -> BertConfig fields
_MODEL_FLAGS = {
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "heads": "num_attention_heads",
    "intermediate": "intermediate_size",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "max_position_embeddings": "max_position_embeddings",
}


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="bert-pretrain",
        description="Pretrain a BERT encoder with masked-LM + next-sentence prediction.",
        argument_default=argparse.SUPPRESS,  # only flags given on the command line are set
        formatter_class=DefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--corpus",
        nargs="+",
        metavar="PATH",
        help="files, directories (*.txt) or globs; one sentence per line, blank "
        "line between documents; .gz files too (default: the shipped English + Chinese "
        "demo corpus)",
    )
    data.add_argument("--out", help=f"run directory (default {d.out})")
    data.add_argument(
        "--tokenizer",
        "--vocab",
        dest="tokenizer",
        metavar="PATH",
        help="reuse a tokenizer.json or vocab.txt instead of training one",
    )
    data.add_argument("--vocab-size", type=int, help=f"WordPiece size to train ({d.vocab_size})")
    data.add_argument(
        "--no-lowercase",
        dest="lowercase",
        action="store_false",
        help="keep case (default: lowercase, as bert-base-uncased)",
    )
    data.add_argument("--max-seq-len", type=int, help=f"tokens per pair ({d.max_seq_len})")
    data.add_argument(
        "--long-seq-len",
        type=int,
        help="switch to this length for the last --long-fraction of the run (e.g. 128 then 512)",
    )
    data.add_argument(
        "--long-fraction",
        type=float,
        help=f"share of the run at --long-seq-len ({d.long_fraction})",
    )
    data.add_argument("--short-seq-prob", type=float, help=f"({d.short_seq_prob})")
    data.add_argument("--masked-lm-prob", type=float, help=f"({d.masked_lm_prob})")
    data.add_argument("--max-predictions", type=int, help=f"per sequence ({d.max_predictions})")
    data.add_argument(
        "--nsp",
        action=argparse.BooleanOptionalAction,
        help="next-sentence prediction on [CLS] A [SEP] B [SEP] pairs, as the original "
        f"(default: {'on' if d.nsp else 'off'}: RoBERTa-style full sentences, MLM loss only, "
        "which trained a better MLM at equal budget)",
    )
    data.add_argument(
        "--pack",
        action="store_true",
        help="with --no-nsp: pack text across sentence and document boundaries so every "
        "sequence is exactly --max-seq-len tokens (no padding)",
    )
    data.add_argument(
        "--static-masking",
        action="store_true",
        help="the same pair always gets the same mask (default: dynamic)",
    )
    data.add_argument("--whole-word-masking", action="store_true")
    data.add_argument("--eval-fraction", type=float, help=f"held-out documents ({d.eval_fraction})")
    data.add_argument("--eval-batches", type=int, help=f"({d.eval_batches})")

    model = p.add_argument_group("model")
    model.add_argument("--preset", choices=list(PRESETS), help=f"size ({d.preset})")
    model.add_argument("--layers", type=int)
    model.add_argument("--hidden", type=int)
    model.add_argument("--heads", type=int)
    model.add_argument("--intermediate", type=int)
    model.add_argument("--dropout", type=float)
    model.add_argument("--attention-dropout", type=float)
    model.add_argument("--max-position-embeddings", type=int)

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, help=f"pairs per micro-batch ({d.batch_size})")
    opt.add_argument("--grad-accum", type=int, help=f"micro-batches per step ({d.grad_accum})")
    opt.add_argument("--lr", type=float, help=f"peak learning rate ({d.lr})")
    opt.add_argument("--weight-decay", type=float, help=f"({d.weight_decay})")
    opt.add_argument(
        "--adam-betas",
        type=float,
        nargs=2,
        metavar=("BETA1", "BETA2"),
        help=f"AdamW's moment decay rates ({d.adam_betas[0]} {d.adam_betas[1]})",
    )
    opt.add_argument("--warmup-steps", type=int, help=f"({d.warmup_steps})")
    opt.add_argument(
        "--schedule",
        choices=["linear", "wsd"],
        help="learning rate after warmup: linear decay to 0, or warmup-stable-decay "
        f"({d.schedule})",
    )
    opt.add_argument(
        "--decay-fraction",
        type=float,
        help=f"wsd: share of the run spent decaying ({d.decay_fraction})",
    )
    opt.add_argument("--clip-norm", type=float, help=f"({d.clip_norm})")
    opt.add_argument("--max-steps", type=int)
    opt.add_argument("--time-budget", metavar="DURATION", help="wall clock, e.g. 90s, 10m, 2h")
    opt.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        help=f"torch.compile the model; auto: on CUDA ({d.compile})",
    )
    opt.add_argument(
        "--data-worker",
        choices=["auto", "on", "off"],
        help="build batches in a worker process, ahead of the loop (resume stays exact); "
        f"auto: on CUDA ({d.data_worker})",
    )
    opt.add_argument(
        "--bf16",
        choices=["auto", "on", "off"],
        help="bf16 autocast; auto: on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX) "
        f"({d.bf16})",
    )
    opt.add_argument("--device", choices=["auto", "cpu", "cuda"], help=f"({d.device})")
    opt.add_argument("--seed", type=int, help=f"({d.seed})")

    run = p.add_argument_group("run")
    run.add_argument("--log-every", type=int, help=f"steps ({d.log_every})")
    run.add_argument("--eval-every", type=int, help=f"steps ({d.eval_every})")
    run.add_argument("--save-every", type=int, help=f"steps ({d.save_every})")
    run.add_argument("--keep-checkpoints", type=int, help=f"({d.keep_checkpoints})")
    run.add_argument(
        "--resume",
        metavar="DIR",
        help="continue a run: its directory (latest checkpoint) or a checkpoint-N",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --out folder that holds a previous run (only its files go)",
    )
    run.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def config_from_args(
    args: dict[str, Any],
) -> tuple[TrainConfig, dict[str, Any], Path | None, list[str]]:
    """(config, model-shape overrides, checkpoint to resume or None, notes for the log).

    On --resume the saved train_config.json is the base and every flag given on the command line
    overrides it (the notes say which); the run is written where it was resumed from, unless
    --out names another folder. A given --max-steps or --time-budget replaces the saved stopping
    rule as a whole, so a spent time budget cannot silently cancel a new --max-steps."""
    from .checkpoint import CheckpointError, resolve_resume
    from .run_dir import run_of

    resume = Path(args.pop("resume")) if "resume" in args else None
    values: dict[str, Any] = {}
    saved: dict[str, Any] = {}
    if resume is not None:
        resume = resolve_resume(resume)
        try:
            saved = json.loads((resume / "train_config.json").read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{resume}/train_config.json is unreadable ({exc})") from exc
        values.update(saved)
        values["out"] = str(run_of(resume))
        if "max_steps" in args or "time_budget" in args:
            values["max_steps"] = values["time_budget_s"] = None
    model_overrides = {_MODEL_FLAGS[k]: args.pop(k) for k in list(args) if k in _MODEL_FLAGS}
    if resume is not None and model_overrides:
        raise ValueError("model-shape flags cannot change on --resume")
    if "time_budget" in args:
        values["time_budget_s"] = parse_duration(args.pop("time_budget"))
    values.update(args)
    if "adam_betas" in values:  # a list from argparse or train_config.json
        values["adam_betas"] = tuple(values["adam_betas"])
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in values.items() if k in names})
    if cfg.max_steps is None and cfg.time_budget_s is None:
        raise ValueError("give --max-steps or --time-budget (or both)")
    for name in ("batch_size", "grad_accum", "max_seq_len", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError("--max-steps must be at least 1")
    if cfg.max_seq_len < 8:
        raise ValueError("--max-seq-len must be at least 8")
    if not 0 < cfg.masked_lm_prob < 1:
        raise ValueError("--masked-lm-prob must be between 0 and 1")
    if cfg.pack and cfg.nsp:
        raise ValueError("--pack needs --no-nsp (a packed sequence has no sentence pair)")
    if cfg.long_seq_len is not None and cfg.long_seq_len <= cfg.max_seq_len:
        raise ValueError("--long-seq-len must be longer than --max-seq-len")
    if not 0 < cfg.long_fraction < 1:
        raise ValueError("--long-fraction must be between 0 and 1")
    if not all(0 <= beta < 1 for beta in cfg.adam_betas):
        raise ValueError("--adam-betas must be in [0, 1)")
    if not 0 < cfg.decay_fraction <= 1:
        raise ValueError("--decay-fraction must be in (0, 1]")
    notes = []
    if resume is not None:
        current = dataclasses.asdict(cfg)
        changed = [
            f"{name} {saved.get(name)!r} -> {current[name]!r}"
            for name in current
            if name != "out" and name in saved and _differs(saved[name], current[name])
        ]
        notes.append(f"resuming {resume}; writing to {cfg.out}")
        if changed:
            notes.append("overriding saved settings: " + ", ".join(changed))
    return cfg, model_overrides, resume, notes


def _differs(saved: Any, current: Any) -> bool:
    if isinstance(current, tuple):
        current = list(current)
    return bool(saved != current)


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    if refuse_missing_extra("bert-pretrain"):
        return 2
    from .checkpoint import CheckpointError
    from .corpus import CorpusError
    from .run_dir import RunDirError

    overwrite = bool(args.pop("overwrite", False))

    def work() -> None:
        cfg, overrides, resume, notes = config_from_args(args)
        for note in notes:
            print(note)
        from .trainer import train

        train(cfg, overrides, resume, overwrite)

    return run_command(
        "bert-pretrain",
        work,
        (CorpusError, CheckpointError, RunDirError, ValueError, FileNotFoundError),
        interrupted="resume with --resume RUN_DIR",
        output=Path(args.get("out") or args.get("resume") or TrainConfig().out),
    )


if __name__ == "__main__":
    raise SystemExit(main())
