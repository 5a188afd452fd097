"""POST /v1/rerank and /rerank throughput vs raw ONNX Runtime scoring the same pairs, side by
side in one run.

raw ORT: the artifact's encoder and classifier head on the (query, document) pairs in batches
of 32 sorted by length, the faster of one session on all threads and one-thread sessions side
by side (serve_throughput's RawOrt); served: bert-serve in its own process under C concurrent
wrk clients, each request 1 query x D documents (STS-B sentences). Rounds alternate raw and
served. Without --artifact, a cross-encoder of all-MiniLM-L6-v2's shape is made: its encoder
and pooler with a one-logit head drawn at random (the speed is the weights' shape, not their
values), exported with bert-export.

  python bench/rerank_throughput.py [--artifact runs/cross-encoder] --precision int8
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

from bench.export_speed import cpu_description, minilm_dir, real_sentences  # noqa: E402
from bench.serve_load import free_port, run_wrk, start, stop, wait_ready  # noqa: E402
from bench.serve_throughput import RawOrt  # noqa: E402

QUERY = "A man is playing a guitar."


def minilm_cross_encoder(work: Path) -> Path:
    """all-MiniLM-L6-v2 as a BertForSequenceClassification with one random logit, exported."""
    import torch
    from safetensors.torch import load_file, save_file

    artifact = work / "minilm-cross-encoder-artifact"
    if (artifact / "manifest.json").is_file():
        return artifact
    folder = work / "minilm-cross-encoder"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(minilm_dir(), folder)
    weights = load_file(folder / "model.safetensors")
    if not any(name.endswith("pooler.dense.weight") for name in weights):
        raise SystemExit("the MiniLM folder has no pooler: cannot make a cross-encoder of it")
    weights = {(n if n.startswith("bert.") else f"bert.{n}"): w for n, w in weights.items()}
    generator = torch.Generator().manual_seed(0)
    hidden = weights["bert.embeddings.word_embeddings.weight"].shape[1]
    weights["classifier.weight"] = torch.randn((1, hidden), generator=generator) * 0.02
    weights["classifier.bias"] = torch.zeros(1)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["BertForSequenceClassification"], num_labels=1,
                  id2label={"0": "score"}, label2id={"score": 0})  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("modules.json", "config_sentence_transformers.json"):  # not an embedder now
        (folder / name).unlink(missing_ok=True)
    subprocess.run(
        [sys.executable, "-m", "bertserve.export", str(folder), str(artifact), "--no-progress"],
        cwd=ROOT, check=True,
    )  # fmt: skip
    return artifact


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--artifact", type=Path, help="bert-export of a one-logit cross-encoder")
    p.add_argument("--precision", default="int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--documents", type=int, default=20, help="per request")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "bertserve-bench"
    work.mkdir(parents=True, exist_ok=True)
    artifact = args.artifact or minilm_cross_encoder(work)
    documents = real_sentences(1000)
    documents_file = work / "rerank-documents.txt"
    documents_file.write_text("\n".join(documents))
    from bertserve.service.artifact import load_artifact

    head = load_artifact(artifact).variants[args.precision].classifier_head
    raw = RawOrt(artifact, args.precision, [(QUERY, d) for d in documents], args.threads, head=head)
    print(
        f"machine: {cpu_description()}; {args.threads} threads, {args.clients} clients x 1 query "
        f"x {args.documents} documents, {args.precision}"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start([
        sys.executable, "-m", "bertserve.service", "--model", str(artifact),
        "--port", str(port), "--precision", args.precision, "--threads", str(args.threads),
        "--log-level", "warning",
    ])  # fmt: skip
    query = json.dumps(QUERY)
    rounds = []
    try:
        wait_ready(url, proc)
        for i in range(args.rounds):
            ceiling = raw.ceiling()
            entry: dict[str, object] = {"raw_ort_pairs_per_s": ceiling}
            line = f"  round {i + 1}: raw ORT {ceiling:.0f} pairs/s"
            for path, key in (("/v1/rerank", "documents"), ("/rerank", "texts")):
                served = run_wrk(url, documents_file, args.clients, args.documents,
                                 args.seconds, path, key, f', "query": {query}')  # fmt: skip
                rate = float(served["sentences_per_s"])  # type: ignore[arg-type]
                entry[path] = {**served, "ratio": rate / ceiling}
                line += (
                    f"; {path} {rate:.0f} documents/s = {rate / ceiling:.2f}x (p50 "
                    f"{served['p50_ms']:.0f} ms, p99 {served['p99_ms']:.0f} ms, "
                    f"{served['failures']:.0f} failures)"
                )
            rounds.append(entry)
            print(line, flush=True)
    finally:
        stop(proc)
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_description(), "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
