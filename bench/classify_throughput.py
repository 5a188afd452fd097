"""POST /classify throughput vs raw ONNX Runtime on the same artifact, side by side in one run.

raw ORT: the artifact's encoder and classifier head on batches of 32 sentences sorted by
length, the faster of one session on all threads and one-thread sessions side by side (the
ceiling); served: bert-serve in its own process under C concurrent wrk clients
sending one sentence per request (wrk, apt-get install wrk). Rounds alternate raw and served.

  python bench/classify_throughput.py --artifact runs/sts-artifact --precision int8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.export_speed import cpu_description, real_sentences  # noqa: E402
from bench.serve_load import free_port, run_wrk, start, stop, wait_ready  # noqa: E402
from bench.serve_throughput import RawOrt  # noqa: E402


def raw_rate(artifact: Path, precision: str, sentences: list[str], threads: int) -> float:
    """Best sentences/s of encoder + classifier head, serve_throughput's RawOrt batches, the
    faster of one session on all threads and one-thread sessions side by side."""
    from bertserve.service.artifact import load_artifact

    head = load_artifact(artifact).variants[precision].classifier_head
    return RawOrt(artifact, precision, sentences, threads, head=head).ceiling()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--artifact", type=Path, required=True, help="bert-export of a classifier")
    p.add_argument("--precision", default="int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    sentences = real_sentences(1000)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "bertserve-bench"
    work.mkdir(parents=True, exist_ok=True)
    sentences_file = work / "classify-sentences.txt"
    sentences_file.write_text("\n".join(sentences))
    print(f"machine: {cpu_description()}; {args.threads} threads, {args.clients} clients x 1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start([
        sys.executable, "-m", "bertserve.service", "--model", str(args.artifact),
        "--port", str(port), "--precision", args.precision, "--threads", str(args.threads),
        "--log-level", "warning",
    ])  # fmt: skip
    rounds = []
    try:
        wait_ready(url, proc)
        for i in range(args.rounds):
            raw = raw_rate(args.artifact, args.precision, sentences, args.threads)
            served = run_wrk(url, sentences_file, args.clients, 1, args.seconds, "/classify")
            ratio = float(served["sentences_per_s"]) / raw  # type: ignore[arg-type]
            rounds.append({"raw_ort": raw, "served": served, "ratio": ratio})
            print(
                f"  round {i + 1}: raw ORT batch-32 {raw:.0f}/s, /classify "
                f"{served['sentences_per_s']:.0f}/s = {ratio:.2f}x, p50 {served['p50_ms']:.0f} "
                f"ms, p99 {served['p99_ms']:.0f} ms, {served['failures']:.0f} failures"
            )
    finally:
        stop(proc)
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2))


if __name__ == "__main__":
    main()
