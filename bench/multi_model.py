"""An embedder and a reranker in one bert-serve process vs two processes, side by side in one
run on the same cores, under the same mixed load: throughput and memory.

The load, for S seconds: wrk with C clients x 1 sentence on /embed (the embedder) and, at the
same time, wrk with C clients x 1 query x D documents on /v1/rerank (the cross-encoder).
Throughput counts sequences the model ran (sentences + documents) per second. Memory: each
server's resident set (VmRSS) after the load, and its peak (VmHWM). Layouts, alternating by
round:
  one process    bert-serve --model emb=A --model ce=B --threads T
  two processes  bert-serve --model emb=A --threads T  and  bert-serve --model ce=B --threads T
                 (each on all T threads, as two servers are run by default), and the same with
                 T/2 threads each (the cores split between them).
  one server, 2 workers   bert-serve --model emb=A --model ce=B --threads T --workers 2
                 (both models in each of two worker processes: two event loops, one port).
Models: all-MiniLM-L6-v2 (exported) and a cross-encoder of its shape (rerank_throughput's).

  python bench/multi_model.py --precision int8 [--seconds 15 --rounds 2 --json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.export_speed import cpu_description, minilm_dir, real_sentences  # noqa: E402
from bench.rerank_throughput import QUERY, minilm_cross_encoder  # noqa: E402
from bench.serve_load import (  # noqa: E402
    free_port,
    run_wrk,
    server_pids,
    start,
    stop,
    wait_ready,
)


def minilm_artifact(work: Path) -> Path:
    artifact = work / "minilm-artifact"
    if not (artifact / "manifest.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "bertserve.export", str(minilm_dir()), str(artifact),
             "--no-progress"],
            cwd=ROOT, check=True,
        )  # fmt: skip
    return artifact


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a server in KiB, summed over its processes (--workers' too)."""
    rss = peak = 0
    for one in server_pids(pid):
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{one}/status").read_text().splitlines()
        )
        rss += int(fields["VmRSS"].split()[0])
        peak += int(fields["VmHWM"].split()[0])
    return rss, peak


def serve(
    models: list[str], precision: str, threads: int, workers: int = 1
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    flags = [arg for model in models for arg in ("--model", model)]
    proc = start([
        sys.executable, "-m", "bertserve.service", *flags, "--port", str(port),
        "--precision", precision, "--threads", str(threads), "--log-level", "warning",
        "--workers", str(workers),
    ])  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return url, proc


def mixed_load(
    embed_url: str, rerank_url: str, work: Path, args: argparse.Namespace
) -> dict[str, dict[str, object]]:
    """Both wrk loads at once; each result as run_wrk gives it."""
    sentences = work / "multi-sentences.txt"
    documents = work / "multi-documents.txt"
    texts = real_sentences(1000)
    sentences.write_text("\n".join(texts))
    documents.write_text("\n".join(texts[::-1]))
    results: dict[str, dict[str, object]] = {}

    def embed() -> None:
        results["embed"] = run_wrk(embed_url, sentences, args.clients, 1, args.seconds,
                                   "/embed", "inputs", ', "model": "emb"')  # fmt: skip

    def rerank() -> None:
        extra = f', "model": "ce", "query": {json.dumps(QUERY)}'
        results["rerank"] = run_wrk(rerank_url, documents, args.clients, args.documents,
                                    args.seconds, "/v1/rerank", "documents", extra)  # fmt: skip

    loads = [threading.Thread(target=embed), threading.Thread(target=rerank)]
    for load in loads:
        load.start()
    for load in loads:
        load.join()
    return results


def layout(
    name: str,
    groups: list[list[str]],
    threads: int,
    work: Path,
    args: argparse.Namespace,
    workers: int = 1,
) -> dict[str, object]:
    servers = [serve(models, args.precision, threads, workers) for models in groups]
    try:
        urls = [url for url, _ in servers]
        loads = mixed_load(urls[0], urls[-1], work, args)
        memory = [memory_kib(proc.pid) for _, proc in servers]
    finally:
        for _, proc in servers:
            stop(proc)
    sentences = float(loads["embed"]["sentences_per_s"])  # type: ignore[arg-type]
    documents = float(loads["rerank"]["sentences_per_s"])  # type: ignore[arg-type]
    return {
        "layout": name,
        "embed_sentences_per_s": sentences,
        "rerank_documents_per_s": documents,
        "sequences_per_s": sentences + documents,
        "embed_p99_ms": loads["embed"]["p99_ms"],
        "rerank_p99_ms": loads["rerank"]["p99_ms"],
        "failures": float(loads["embed"]["failures"]) + float(loads["rerank"]["failures"]),  # type: ignore[arg-type]
        "rss_mib": sum(rss for rss, _ in memory) / 1024,
        "peak_rss_mib": sum(peak for _, peak in memory) / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--precision", default="int8")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--clients", type=int, default=16, help="per load")
    p.add_argument("--documents", type=int, default=20, help="per rerank request")
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "bertserve-bench"
    work.mkdir(parents=True, exist_ok=True)
    embedder, reranker = minilm_artifact(work), minilm_cross_encoder(work)
    emb, ce = f"emb={embedder}", f"ce={reranker}"
    print(
        f"machine: {cpu_description()}; {args.precision}, {args.threads} threads; loads at once: "
        f"{args.clients} clients x 1 sentence on /embed, {args.clients} clients x 1 query x "
        f"{args.documents} documents on /v1/rerank, {args.seconds:g} s",
        flush=True,
    )
    half = max(1, args.threads // 2)
    rounds = []
    for number in range(args.rounds):
        entries = [
            layout("one process", [[emb, ce]], args.threads, work, args),
            layout("two processes", [[emb], [ce]], args.threads, work, args),
            layout("two processes, cores split", [[emb], [ce]], half, work, args),
            layout("one server, 2 workers", [[emb, ce]], args.threads, work, args, workers=2),
        ]
        one = entries[0]
        for entry in entries:
            entry["throughput_vs_one_process"] = (
                float(entry["sequences_per_s"]) / float(one["sequences_per_s"])  # type: ignore[arg-type]
            )
            print(
                f"  round {number + 1}, {entry['layout']}: {entry['sequences_per_s']:.0f} "
                f"sequences/s ({entry['embed_sentences_per_s']:.0f} sentences + "
                f"{entry['rerank_documents_per_s']:.0f} documents; p99 {entry['embed_p99_ms']:.0f} "
                f"/ {entry['rerank_p99_ms']:.0f} ms; {entry['failures']:.0f} failures), "
                f"RSS {entry['rss_mib']:.0f} MiB (peak {entry['peak_rss_mib']:.0f}); one process "
                f"/ this: {1 / float(entry['throughput_vs_one_process']):.2f}x",  # type: ignore[arg-type]
                flush=True,
            )
        rounds.append(entries)
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_description(), "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
