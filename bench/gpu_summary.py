"""Collects bench/gpu_check.sh's outputs into one gpu-<date>.json (and prints it).

python bench/gpu_summary.py OUT_DIR [PRESET] [SERVED_PRECISION]
"""

from __future__ import annotations

import datetime
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PEAK_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, as in bench/train_throughput.py


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"missing": f"{path.name}: {exc}"}


def end_to_end(run: Path) -> dict[str, Any]:
    """Steady-state tokens/s of bert-pretrain: the median of its log windows after the first
    two (the first holds torch.compile and the worker's start)."""
    from bertserve.training.config import BertConfig
    from bertserve.training.model import flops_per_token

    try:
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        cfg = BertConfig.load(run / "config.json")
    except (OSError, ValueError) as exc:
        return {"missing": f"{run}: {exc}"}
    rates = [r["tokens_per_s"] for r in lines if r.get("split") == "train"][2:]
    if not rates:
        return {"missing": "fewer than 3 log windows"}
    rate = statistics.median(rates)
    flops = flops_per_token(cfg, 128)
    return {
        "tokens_per_s": rate,
        "windows": rates,
        "mfu": rate * flops / (PEAK_BF16_TFLOPS * 1e12),
        "vocab_size": cfg.vocab_size,
        "last_loss": lines[-1].get("loss") or lines[-1].get("mlm_loss"),
    }


def main() -> None:
    out = Path(sys.argv[1])
    preset_name = sys.argv[2] if len(sys.argv) > 2 else "base"
    served = sys.argv[3] if len(sys.argv) > 3 else "fp16"
    serve = _json(out / "serve.json")
    manifest = _json(Path("/tmp/gpu-base-art/manifest.json"))
    variants = manifest.get("variants", {}) if isinstance(manifest, dict) else {}
    fp16 = variants.get("fp16", {})
    summary = {
        "date": datetime.date.today().isoformat(),
        "environment": (out / "env.txt").read_text().strip().splitlines()
        if (out / "env.txt").is_file()
        else [],
        "peak_bf16_tflops": PEAK_BF16_TFLOPS,
        "model_only_seq128": _json(out / "model-128.json"),
        "model_only_seq512": _json(out / "model-512.json"),
        "preset": preset_name,
        "end_to_end_seq128": end_to_end(Path("/tmp/gpu-run")),
        "end_to_end_seq128_no_dropout": end_to_end(Path("/tmp/gpu-run-no-dropout")),
        "fp16_parity": fp16.get("parity"),
        "fp16_rejected": fp16.get("rejected"),
        # one entry per worker count ("fp16 workers 4"), or the precision alone for one count
        f"serving_{served}": {k: v for k, v in serve.items() if k.startswith(served)} or serve,
    }
    model = summary["model_only_seq128"]
    e2e = summary["end_to_end_seq128"]
    if "ours+compile_tokens_per_s" in model and "tokens_per_s" in e2e:
        e2e["over_model_only_compiled"] = e2e["tokens_per_s"] / model["ours+compile_tokens_per_s"]
    target = out / f"gpu-{summary['date']}.json"
    target.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
