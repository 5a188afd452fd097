"""Chinese pair tasks from a model we pretrain ourselves, against two baselines, one run.

1. bert-pretrain on ../shared/corpora/zhwiki (mini, MLM only, --pretrain-budget of wall clock),
   or --pretrained DIR to reuse a run.
2. bert-finetune on WSDM 2019 fake-news pairs (the 2,000-row sample: title1_zh, title2_zh ->
   agreed / disagreed / unrelated, the competition's class weights 1/15, 1/5, 1/16) and on
   ATEC 2018 question pairs (same meaning 1 / 0; --atec-rows of them), each split 80/20 with a
   fixed seed, the 20% unseen by training and by checkpoint selection (which uses 10% of the
   80%), for --finetune-budget each.
3. Baselines on the same splits: the majority class, and TF-IDF character 1-3-grams of each
   text (plus their elementwise product, the overlap) into logistic regression (scikit-learn).

Accuracy, macro-F1 and (WSDM) weighted accuracy on the 20%. Needs scikit-learn.

  python bench/finetune_chinese.py --pretrain-budget 10m --finetune-budget 4m
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT.parent / "shared" / "corpora"
sys.path.insert(0, str(ROOT))

from bertserve.training.finetune.report import classification_report  # noqa: E402

WSDM_LABELS = ["agreed", "disagreed", "unrelated"]
WSDM_WEIGHTS = [1 / 15, 1 / 5, 1 / 16]


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def wsdm_rows() -> list[tuple[str, str, str]]:
    with open(CORPORA / "wsdm-fakenews" / "train-small.csv", encoding="utf-8") as handle:
        return [(r["title1_zh"], r["title2_zh"], r["label"]) for r in csv.DictReader(handle)]


def atec_rows(limit: int) -> list[tuple[str, str, str]]:
    with open(CORPORA / "atec" / "atec_nlp_sim_train.tsv", encoding="utf-8") as handle:
        rows = [
            (r[1], r[2], r[3]) for r in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]
    return rows[:limit]


def split(rows: list, seed: int = 0) -> tuple[list, list]:
    order = np.random.default_rng(seed).permutation(len(rows))
    cut = int(len(rows) * 0.8)
    return [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]


def write(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "label"])
        writer.writerows(rows)
    return path


def figures(predicted: list[str], test: list[tuple[str, str, str]], labels: list[str],
            weights: list[float] | None) -> dict[str, float]:  # fmt: skip
    index = {name: i for i, name in enumerate(labels)}
    report = classification_report(
        np.array([index[p] for p in predicted]),
        np.array([index[y] for *_, y in test]),
        labels,
        None if weights is None else np.array(weights),
    )
    keys = ("accuracy", "macro_f1", "weighted_accuracy")
    return {k: round(report[k], 4) for k in keys if k in report}


def tfidf_baseline(train: list, test: list) -> list[str]:
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    vectorizer.fit([t for a, b, _ in train for t in (a, b)])

    def features(rows: list):  # type: ignore[no-untyped-def]
        a = vectorizer.transform([r[0] for r in rows])
        b = vectorizer.transform([r[1] for r in rows])
        return hstack([a, b, a.multiply(b)]).tocsr()

    model = LogisticRegression(max_iter=2000, C=4.0)
    model.fit(features(train), [y for *_, y in train])
    return list(model.predict(features(test)))


def ours(model: Path, train: list, test: list, labels: list[str], weights: list[float] | None,
         work: Path, args: argparse.Namespace) -> tuple[list[str], float]:  # fmt: skip
    from bertserve.training.finetune.classifier import load_classifier
    from bertserve.training.finetune.classify import encode, predict
    from bertserve.training.finetune.data import Examples
    from bertserve.training.tokenizer import load_tokenizer

    train_file = write(work / "train.csv", train)
    cmd = [
        sys.executable, "-m", "bertserve.training.finetune.cli", "--no-progress",
        "--from", str(model), "--train", str(train_file), "--out", str(work / "model"),
        "--text-a", "a", "--text-b", "b", "--label", "label", "--labels", ",".join(labels),
        "--epochs", "20", "--time-budget", args.finetune_budget, "--lr", str(args.lr),
        "--batch-size", "32", "--max-seq-len", "96", "--eval-every", "100",
    ]  # fmt: skip
    if weights:
        cmd += ["--class-weights", ",".join(f"{w:.6f}" for w in weights)]
    start = time.perf_counter()
    run(cmd)
    seconds = time.perf_counter() - start
    out = work / "model"
    examples = Examples([a for a, _, _ in test], [b for _, b, _ in test], ["x"] * len(test), [])
    logits = predict(load_classifier(out), encode(load_tokenizer(out), examples, 96), 0)
    return [labels[i] for i in logits.argmax(axis=1)], seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pretrained", type=Path, help="a bert-pretrain run to start from")
    p.add_argument("--pretrain-budget", default="10m")
    p.add_argument("--finetune-budget", default="4m")
    p.add_argument("--atec-rows", type=int, default=10000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.pretrained
        if model is None:
            model = work / "zh"
            run([
                sys.executable, "-m", "bertserve.training", "--no-progress",
                "--corpus", str(CORPORA / "zhwiki"), "--out", str(model), "--preset", "mini",
                "--vocab-size", "8000", "--max-seq-len", "128", "--lr", "5e-4",
                "--warmup-steps", "100", "--time-budget", args.pretrain_budget,
                "--eval-fraction", "0.02", "--eval-every", "0", "--save-every", "0",
            ])  # fmt: skip
        metrics = [json.loads(x) for x in (model / "metrics.jsonl").read_text().splitlines()]
        held = [r for r in metrics if r.get("split") == "eval"]
        pretrain_note = f"{model.name}: " + (
            f"held-out MLM accuracy {held[-1]['mlm_acc']:.3f}" if held else "no eval"
        )
        print(f"pretrained model {pretrain_note}", flush=True)
        tasks = {
            "WSDM (2,000-row sample)": (wsdm_rows(), WSDM_LABELS, WSDM_WEIGHTS),
            f"ATEC (first {args.atec_rows} pairs)": (atec_rows(args.atec_rows), ["0", "1"], None),
        }
        for task, (rows, labels, weights) in tasks.items():
            train, test = split(rows)
            majority = max(labels, key=[y for *_, y in train].count)
            task_dir = work / task.split()[0]
            task_dir.mkdir()
            predicted, seconds = ours(model, train, test, labels, weights, task_dir, args)
            results[task] = {
                "majority class": figures([majority] * len(test), test, labels, weights),
                "TF-IDF char 1-3-grams + LR": figures(
                    tfidf_baseline(train, test), test, labels, weights
                ),
                f"ours (zh mini, fine-tuned {seconds:.0f} s)": figures(
                    predicted, test, labels, weights
                ),
            }
            print(f"\n{task}: {len(train)} train / {len(test)} test")
            for name, values in results[task].items():
                print(f"  {name:36s} " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
    if args.json:
        args.json.write_text(json.dumps({"pretrained": pretrain_note, **results}, indent=2))


if __name__ == "__main__":
    main()
