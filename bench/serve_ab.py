"""Two versions of bert-serve under the same load, alternately: did a change to the serving path
cost throughput? Each round starts the server from one checkout, runs wrk (C clients x 1
sentence) for S seconds, and reads /metrics for the mean batch size and model time per call, so
a change in speed can be told from a change in how batches formed, and CPU time per sentence:
the server's (model threads included) and its event loop thread's alone, the per-request work a
serving-path change is about. All of them drift with the VM (the same code against itself in
3-second rounds: 1.17x, event loop 0.30 vs 0.24 ms): use 12-second rounds and several of them.

  git worktree add /tmp/before HEAD~1
  python bench/serve_ab.py --artifact runs/minilm /tmp/before . --rounds 2
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.export_speed import cpu_description, real_sentences
from bench.serve_load import free_port, served, stop, wait_ready


def _metric(text: str, name: str) -> float:
    """A metric summed over its series (per-model labels, or none in older trees)."""
    found = re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)", text, re.M)
    return sum(float(value) for value in found) if found else float("nan")


def one_round(tree: Path, args: argparse.Namespace, sentences: Path) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "bertserve.service", "--model", str(args.artifact.resolve()),
        "--port", str(port), "--precision", args.precision, "--threads", str(args.threads),
        "--log-level", "warning", "--max-inputs", "64",
    ]  # fmt: skip
    # run from the checkout: its bertserve/ folder comes first on sys.path, so its code serves
    proc = subprocess.Popen(cmd, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(url, proc)
        load = served(url, proc.pid, sentences, args.clients, 1, args.seconds)
        text = httpx.get(f"{url}/metrics").text
    finally:
        stop(proc)
    calls = _metric(text, "bertserve_batch_size_count")
    return {
        "sentences_per_s": float(load["sentences_per_s"]),
        "p50_ms": float(load["p50_ms"]),
        "cpu_ms": float(load["server_cpu_ms_per_sentence"]),  # type: ignore[arg-type]
        "loop_ms": float(load["event_loop_cpu_ms_per_sentence"]),  # type: ignore[arg-type]
        "mean_batch": _metric(text, "bertserve_batch_size_sum") / calls,
        "model_ms_per_call": 1000
        * _metric(text, "bertserve_inference_duration_seconds_sum")
        / _metric(text, "bertserve_inference_duration_seconds_count"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("before", type=Path, help="checkout of the version to compare against")
    p.add_argument("after", type=Path, help="checkout of the changed version")
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--precision", default="int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=12)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    sentences = Path("/tmp/bertserve-ab-sentences.txt")
    sentences.write_text("\n".join(real_sentences(1000)))
    print(f"{cpu_description()}; {args.precision}, {args.clients} clients x 1 sentence")
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}  # one_round's rows
    for _ in range(args.rounds):
        for name, tree in (("before", args.before), ("after", args.after)):
            got = one_round(tree, args, sentences)
            runs[name].append(got)
            print(
                f"  {name:6s} {got['sentences_per_s']:7.0f} sent/s  p50 {got['p50_ms']:4.0f} ms  "
                f"mean batch {got['mean_batch']:5.2f}  "
                f"model {got['model_ms_per_call']:5.2f} ms/call  "
                f"CPU ms/sentence: server {got['cpu_ms']:.3f}, event loop {got['loop_ms']:.3f}"
            )

    def total(name: str, key: str) -> float:
        return sum(row[key] for row in runs[name])

    ratio = total("after", "sentences_per_s") / total("before", "sentences_per_s")
    print(f"after / before: {ratio:.3f}x (sum over {args.rounds} alternating rounds)")
    # the event loop's CPU per sentence is the per-request work; the server's includes the
    # model threads
    for label, key in (("server", "cpu_ms"), ("event loop", "loop_ms")):
        before, after = (total(name, key) / args.rounds for name in ("before", "after"))
        print(
            f"{label} CPU ms per sentence, mean: before {before:.3f}, after {after:.3f} "
            f"({after - before:+.3f})"
        )


if __name__ == "__main__":
    main()
