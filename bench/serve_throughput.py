"""Service throughput vs raw ONNX Runtime, side by side in one run on the same sentences.

1. raw ORT: the artifact's encoder on batches of 32 sentences sorted by length, run two ways on
   the CPU: one session on all --threads, and --threads one-thread sessions side by side (the
   ceiling, and each ratio's denominator, is the faster of the two);
2. bert-serve in its own process, loaded from another process by C concurrent clients sending
   one sentence per request, then 4 clients sending 32 sentences per request;
3. a no-batching FastAPI + ORT server (one session.run per request) under the same load;
4. with --infinity-model, infinity-emb's optimum engine under the same load.
Prints sentences/s, ratios to raw ORT, p50/p99 latency and the padding ratio from /metrics.
The load comes from wrk (apt-get install wrk) when present: a C load generator leaves the
2 cores to the server; the Python fallback (httpx) needs a core of its own and caps the rate.
Load generation and server processes live in bench/serve_load.py.

  python bench/serve_throughput.py --artifact runs/minilm --precision int8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve_load import (  # noqa: E402
    free_port,
    run_load,
    run_wrk,
    served,
    start,
    stop,
    wait_ready,
)

NAIVE_SERVER = """
import sys, numpy as np, onnxruntime as ort
from fastapi import FastAPI
from tokenizers import Tokenizer
from bertserve.service.pooling import l2_normalize, pool
encoder, tokenizer_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = ort.SessionOptions(); options.intra_op_num_threads = threads
session = ort.InferenceSession(encoder, options, providers=["CPUExecutionProvider"])
tokenizer = Tokenizer.from_file(tokenizer_path); tokenizer.enable_truncation(256)
app = FastAPI()
@app.get("/ready")
def ready(): return {}
@app.post("/embed")
def embed(body: dict):
    enc = tokenizer.encode(body["inputs"])
    ids = np.array([enc.ids], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids)}
    hidden = session.run(["last_hidden_state"], feed)[0]
    return {"embedding": l2_normalize(pool(hidden, feed["attention_mask"], "mean"))[0].tolist()}
"""


def padding_ratio(url: str) -> float:
    import httpx

    text = httpx.get(url + "/metrics").text

    def summed(name: str) -> float:  # over the per-model series
        return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)", text, re.M))

    total = summed("bertserve_batch_padding_ratio_sum")
    return total / max(summed("bertserve_batch_padding_ratio_count"), 1.0)


class RawOrt:
    """The ceiling: the artifact's encoder (and, given `head`, a head on its pooled output) on
    batches of 32 sentences sorted by length, in this process, two ways on the CPU: one session
    on all `threads`, and `threads` one-thread sessions side by side. Measured again before
    every served run, so each ratio compares neighbours in time (this VM's speed drifts by
    10-25% over minutes)."""

    def __init__(
        self,
        artifact: Path,
        precision: str,
        sentences: list[Any],
        threads: int,
        gpu: bool = False,
        head: Path | None = None,
    ):
        from bertserve.export.parity import session
        from bertserve.service.artifact import load_artifact
        from bertserve.service.text import TextTokenizer

        art = load_artifact(artifact)
        text = TextTokenizer(art.tokenizer_json, art.max_seq_len)
        encoder = art.variants[precision].encoder
        self.threads = threads
        # (encoder, head or None) sessions: one pair on all threads, then one-thread pairs, one
        # per thread, for the side-by-side way (CPU only)
        self.session = session(encoder, threads, gpu)
        self.head = session(head, threads, gpu) if head else None
        self.single_thread = [] if gpu else [
            (session(encoder, 1), session(head, 1) if head else None) for _ in range(threads)
        ]  # fmt: skip
        self.provider = self.session.get_providers()[0]
        # sentences, or (first, second) pairs (a cross-encoder's), sorted by length
        ordered = sorted(sentences, key=lambda s: len(s if isinstance(s, str) else "".join(s)))
        self.sentences = len(ordered)
        self.feeds = []
        for i in range(0, len(ordered), 32):
            toks = text.tokenize(ordered[i : i + 32])
            width = max(len(t.ids) for t in toks)
            ids = np.zeros((len(toks), width), np.int64)
            mask, types = np.zeros_like(ids), np.zeros_like(ids)
            for row, t in enumerate(toks):
                ids[row, : len(t.ids)] = t.ids
                types[row, : len(t.ids)] = t.type_ids
                mask[row, : len(t.ids)] = 1
            self.feeds.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        self._run(self.session, self.head, self.feeds[:1])

    @staticmethod
    def _run(encoder: Any, head: Any, feeds: list[dict[str, np.ndarray]]) -> None:
        for feed in feeds:
            if head is None:
                encoder.run(["last_hidden_state"], feed)
            else:
                head.run(None, {"pooled": encoder.run(["pooler_output"], feed)[0]})

    def measure(self, passes: int = 3) -> tuple[float, float]:
        """One session on all threads: (best sentences/s, CPU ms per sentence over all passes)."""
        best, cpu_start = 0.0, time.process_time()
        for _ in range(passes):
            start = time.perf_counter()
            self._run(self.session, self.head, self.feeds)
            best = max(best, self.sentences / (time.perf_counter() - start))
        cpu_ms = (time.process_time() - cpu_start) * 1000 / (passes * self.sentences)
        return best, cpu_ms

    def measure_side_by_side(self, passes: int = 3) -> tuple[float, float]:
        """The one-thread sessions, each running its share of the batches at the same time (how
        bert-serve's model workers run on the CPU): (best sentences/s, CPU ms per sentence over
        all passes); (0, 0) on a GPU."""
        from concurrent.futures import ThreadPoolExecutor

        if not self.single_thread:
            return 0.0, 0.0
        shares = [self.feeds[k :: self.threads] for k in range(self.threads)]
        best, cpu_start = 0.0, time.process_time()
        with ThreadPoolExecutor(self.threads) as pool:
            for _ in range(passes):
                start = time.perf_counter()
                encoders, heads = zip(*self.single_thread, strict=True)
                list(pool.map(self._run, encoders, heads, shares))
                best = max(best, self.sentences / (time.perf_counter() - start))
        cpu_ms = (time.process_time() - cpu_start) * 1000 / (passes * self.sentences)
        return best, cpu_ms

    def ceiling(self) -> float:
        """The faster of the two ways, sentences/s."""
        return max(self.measure()[0], self.measure_side_by_side()[0])


def run_infinity(
    args: argparse.Namespace, precision: str, raw: RawOrt, sentences_file: Path, ours: dict
) -> dict[str, object]:
    """infinity-emb's optimum (ONNX Runtime) engine on the same model and load. It reads the
    ONNX files at the root of the model folder: model.onnx (fp32) and model_quantized.onnx
    (int8, preferred on CPU unless told not to); README says how they were made."""
    port = free_port()
    # run from the model folder with model id ".": given an absolute path, 0.0.78 hands optimum
    # an absolute ONNX file name that optimum then fails to find among its relative listing
    cmd = [
        args.infinity_bin, "v2", "--model-id", ".", "--engine", "optimum",
        "--device", "cpu", "--port", str(port), "--batch-size", "32",
    ]  # fmt: skip
    if precision == "fp32":
        cmd.append("--onnx-do-not-prefer-quantized")
    cache = Path(tempfile.mkdtemp(prefix="infinity-cache-"))  # its optimized-graph cache is
    env = {  # keyed by model id only, so fp32 and int8 runs would share it
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "OMP_NUM_THREADS": str(args.threads),
    }
    proc = subprocess.Popen(
        cmd, cwd=args.infinity_model, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, "/health")
        raw_rate = raw.ceiling()
        extra = ', "model": "."'
        result = run_wrk(url, sentences_file, args.clients, 1, args.seconds, "/embeddings",
                         "input", extra)  # fmt: skip
    finally:
        stop(proc)
        shutil.rmtree(cache, ignore_errors=True)
    ratio = float(ours["ratio_single"]) * raw_rate / float(result["sentences_per_s"])
    print(
        f"  infinity-emb (optimum, {precision}), {args.clients} x 1: "
        f"{result['sentences_per_s']:.0f}/s (raw ORT just before: {raw_rate:.0f}/s), "
        f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms; bert-serve at its "
        f"median ratio to the same raw figure is {ratio:.2f}x infinity-emb"
    )
    return {**result, "raw_ort_before": raw_rate, "bert_serve_over_infinity": ratio}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--artifact", type=Path, help="bert-export output (default: export MiniLM)")
    p.add_argument("--precision", default="int8,fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="raw ORT and bert-serve on it"
    )
    p.add_argument(
        "--workers",
        default="1",
        help="bert-serve --workers, comma-separated to compare (e.g. 1,2), each side by side "
        "with raw ORT",
    )
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--sentences", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2, help="raw/served pairs per precision")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument(
        "--infinity-model",
        type=Path,
        help="compare with infinity-emb: a model folder with model.onnx and "
        "model_quantized.onnx at its root (see README)",
    )
    p.add_argument("--infinity-bin", default="infinity_emb", help="infinity-emb's CLI")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    from bench.export_speed import minilm_dir, real_sentences

    sentences = real_sentences(args.sentences)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "bertserve-bench"
    work.mkdir(parents=True, exist_ok=True)
    sentences_file = work / "sentences.txt"
    sentences_file.write_text("\n".join(sentences))
    artifact = args.artifact or work / "minilm-artifact"
    if not (artifact / "manifest.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bertserve.export",
                str(minilm_dir()),
                str(artifact),
                "--no-progress",
            ],
            cwd=ROOT,
            check=True,
        )
    results: dict[str, object] = {"threads": args.threads, "clients": args.clients}
    counts = [int(n) for n in args.workers.split(",")]
    runs = [(precision, n) for precision in args.precision.split(",") for n in counts]
    for precision, workers in runs:
        raw = RawOrt(artifact, precision, sentences, args.threads, args.device == "cuda")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start(
            [
                sys.executable,
                "-m",
                "bertserve.service",
                "--model",
                str(artifact),
                "--port",
                str(port),
                "--precision",
                precision,
                "--device",
                args.device,
                "--threads",
                str(args.threads),
                "--log-level",
                "warning",
                "--max-inputs",
                "64",
                "--workers",
                str(workers),
            ]
        )
        rounds = []
        side_by_side: list[float] = []  # raw ORT, one-thread sessions side by side
        one_session: list[float] = []  # raw ORT, one session on all threads
        try:
            wait_ready(url, proc)
            for _ in range(args.rounds):  # raw, then served, alternately
                raw_rate, raw_cpu = raw.measure()
                side_rate, side_cpu = raw.measure_side_by_side()
                side_by_side.append(side_rate)
                one_session.append(raw_rate)
                single = served(url, proc.pid, sentences_file, args.clients, 1, args.seconds)
                # the ceiling: the faster way of running raw ORT on these cores, and its CPU
                # cost (one session on 2 threads also counts its threads' spin-waiting)
                faster = (side_rate, side_cpu) if side_rate > raw_rate else (raw_rate, raw_cpu)
                rounds.append((*faster, single))
            raw_rate = raw.ceiling()
            batched = served(url, proc.pid, sentences_file, 4, 32, args.seconds)
            padding = padding_ratio(url)
        finally:
            stop(proc)
        ratios = [one["sentences_per_s"] / rate for rate, _, one in rounds]
        _, raw_cpu_last, single = rounds[-1]
        overhead = single["server_cpu_ms_per_sentence"] + single["load_cpu_ms_per_sentence"]
        entry = {
            "raw_ort_sentences_per_s": [r for r, _, _ in rounds],
            "raw_ort_one_session_sentences_per_s": one_session,
            "raw_ort_side_by_side_sentences_per_s": side_by_side,
            "raw_ort_cpu_ms_per_sentence": raw_cpu_last,
            "single_rounds": [one for _, _, one in rounds],
            "single": single,
            "batch32": batched,
            "padding_ratio": padding,
            "ratio_single_rounds": ratios,
            "ratio_single": float(np.median(ratios)),
            "ratio_batch32": batched["sentences_per_s"] / raw_rate,
            "provider": raw.provider,
            "workers": workers,
        }
        print(
            f"\n{precision} on {raw.provider}, {args.threads} threads, {workers} worker(s), "
            f"{args.clients} clients x 1 sentence:"
        )
        for i, (rate, _, one) in enumerate(rounds):
            if side_by_side[i]:  # 0 on a GPU: not measured
                print(
                    f"  round {i + 1}: raw ORT batch-32: one session on {args.threads} threads "
                    f"{one_session[i]:.0f}/s, {args.threads} one-thread sessions side by side "
                    f"{side_by_side[i]:.0f}/s; the faster is the ceiling"
                )
            print(
                f"  round {i + 1}: raw ORT batch-32 {rate:.0f}/s, bert-serve "
                f"{one['sentences_per_s']:.0f}/s = {ratios[i]:.2f}x, p50 {one['p50_ms']:.0f} ms, "
                f"p99 {one['p99_ms']:.0f} ms, {one['failures']:.0f} failures"
            )
        print(f"  median ratio {entry['ratio_single']:.2f}x")
        print(
            f"  CPU ms per sentence (last round): raw ORT {raw_cpu_last:.2f} (the faster way); "
            f"bert-serve "
            f"{single['server_cpu_ms_per_sentence']:.2f} (all its threads; its event loop "
            f"{single['event_loop_cpu_ms_per_sentence']:.2f}, so its model threads "
            f"{single['server_cpu_ms_per_sentence'] - single['event_loop_cpu_ms_per_sentence']:.2f}"
            f"); load generator "
            f"{single['load_cpu_ms_per_sentence']:.2f} -> with the {os.cpu_count()} cores "
            f"saturated, served/raw can be at most {raw_cpu_last / overhead:.2f}x"
        )
        print(
            f"4 clients x 32 sentences: raw {raw_rate:.0f}/s, bert-serve "
            f"{batched['sentences_per_s']:.0f}/s = {entry['ratio_batch32']:.2f}x raw, "
            f"p50 {batched['p50_ms']:.0f} ms, p99 {batched['p99_ms']:.0f} ms"
        )
        print(f"  mean padding ratio per batch: {padding:.3f}")
        naive_once = precision == "fp32" and workers == counts[0]
        if naive_once and not args.skip_naive and args.device == "cpu":
            from bertserve.service.artifact import load_artifact

            art = load_artifact(artifact)
            script = work / "naive_server.py"
            script.write_text(NAIVE_SERVER)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            sys_argv = [
                str(art.variants["fp32"].encoder),
                str(art.tokenizer_path),
                str(args.threads),
            ]
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"import sys; sys.argv=['x', *{sys_argv!r}]; "
                    f"exec(open({str(script)!r}).read()); import uvicorn; "
                    f"uvicorn.run(app, port={port}, log_level='warning')",
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                wait_ready(url, proc)
                naive = run_load(url, sentences_file, args.clients, 1, args.seconds)
            finally:
                stop(proc)
            entry["naive_no_batching"] = naive
            print(
                f"  no-batching FastAPI+ORT, {args.clients} clients x 1 sentence: "
                f"{naive['sentences_per_s']:.0f}/s, p50 {naive['p50_ms']:.0f} ms, "
                f"p99 {naive['p99_ms']:.0f} ms -> bert-serve is "
                f"{single['sentences_per_s'] / naive['sentences_per_s']:.2f}x"
            )
        if args.infinity_model:
            entry["infinity"] = run_infinity(args, precision, raw, sentences_file, entry)
        results[precision if len(counts) == 1 else f"{precision} workers {workers}"] = entry
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
