"""The HTTP front end's capacity alone: bert-serve with `--workers 1` vs `2` (or any list) on a
model that costs almost nothing (one layer of width 32, MiniLM's tokenizer), so what is measured
is HTTP, JSON, validation, tokenizing and the batcher, per worker process. Side by side in one
run, alternating, with wrk as the load (apt-get install wrk):

  python bench/front_end.py --workers 1,2 --clients 32 --seconds 15 --rounds 2

Prints requests/s per worker count, the ratio to the first count, the CPU per request of the
event loops (each worker's main thread) and of the whole server, and the CPU flags.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.export_speed import cpu_description  # noqa: E402
from bench.serve_load import free_port, served, start, stop, wait_ready  # noqa: E402


def tiny_artifact(work: Path) -> Path:
    """A one-layer BERT of width 32 with MiniLM's tokenizer, exported by bert-export."""
    artifact = work / "tiny-artifact"
    if (artifact / "manifest.json").is_file():
        return artifact
    import torch
    from transformers import BertConfig, BertModel

    from bench.export_speed import minilm_dir

    source = work / "tiny-hf"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(source)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm_dir() / name).is_file():
            shutil.copy(minilm_dir() / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "bertserve.export", str(source), str(artifact), "--no-progress"],
        cwd=ROOT,
        check=True,
    )
    return artifact


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--threads", type=int, default=0, help="bert-serve --threads (0: all cores)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("front_end.py needs wrk (apt-get install wrk): a Python load "
                         "generator would take the cores it measures")  # fmt: skip

    from bench.export_speed import real_sentences

    work = Path(os.environ.get("TMPDIR", "/tmp")) / "bertserve-bench"
    work.mkdir(parents=True, exist_ok=True)
    artifact = tiny_artifact(work)
    sentences = work / "front-end-sentences.txt"
    sentences.write_text("\n".join(real_sentences(1000)))
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[str, list[dict[str, object]]] = {str(n): [] for n in counts}
    print(f"CPU: {f'{cpu_description()}; {os.cpu_count()} cores'}")
    for round_index in range(args.rounds):
        for count in counts:
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
                    "--workers",
                    str(count),
                    "--threads",
                    str(args.threads),
                    "--log-level",
                    "warning",
                    "--precision",
                    "fp32",
                ]
            )
            try:
                wait_ready(url, proc)
                figures = served(url, proc.pid, sentences, args.clients, 1, args.seconds)
            finally:
                stop(proc)
            results[str(count)].append(figures)
            print(
                f"round {round_index + 1}, {count} worker(s): "
                f"{figures['sentences_per_s']:.0f} requests/s, p50 {figures['p50_ms']:.1f} ms, "
                f"p99 {figures['p99_ms']:.1f} ms; CPU ms per request: event loops "
                f"{figures['event_loop_cpu_ms_per_sentence']:.3f}, whole server "
                f"{figures['server_cpu_ms_per_sentence']:.3f}, wrk "
                f"{figures['load_cpu_ms_per_sentence']:.3f}; {figures['failures']:.0f} failures",
                flush=True,
            )
    base = counts[0]
    print(f"\n{args.clients} clients x 1 sentence, requests/s (median of {args.rounds} rounds):")
    medians = {}
    for count in counts:
        rates = sorted(float(f["sentences_per_s"]) for f in results[str(count)])
        medians[count] = rates[len(rates) // 2]
    for count in counts:
        print(f"  {count} worker(s): {medians[count]:.0f}/s = {medians[count] / medians[base]:.2f}x"
              f" of {base}")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps(
                {"cpu": f"{cpu_description()}; {os.cpu_count()} cores", "runs": results}, indent=2
            )
        )


if __name__ == "__main__":
    main()
