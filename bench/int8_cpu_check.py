"""int8 vs fp32 encoder speed on whatever CPU this runs on, with random weights and token ids
(speed does not depend on either), so it needs no model download: for checking how the int8
gain moves with the CPU's instruction set (AVX2 vs AVX-512 VNNI vs AMX).

  python bench/int8_cpu_check.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.export_speed import cpu_description, gemm_ceiling, measure  # noqa: E402
from bertserve.export import graphs, parity, variants  # noqa: E402
from bertserve.training.config import BertConfig  # noqa: E402
from bertserve.training.model import BertForPreTraining  # noqa: E402

SHAPES = {  # (hidden, layers, heads, intermediate)
    "minilm-l6": (384, 6, 12, 1536),
    "bert-base": (768, 12, 12, 3072),
}


def batches(count: int, vocab: int) -> list[parity.Batch]:
    """Batches of 32 with STS-like lengths (8-40 tokens), sorted by length."""
    rng = np.random.default_rng(0)
    lengths = np.sort(rng.integers(8, 41, size=count))
    out = []
    for start in range(0, count, 32):
        group = lengths[start : start + 32]
        ids = np.zeros((len(group), int(group.max())), np.int64)
        mask = np.zeros_like(ids)
        for row, n in enumerate(group):
            ids[row, :n] = rng.integers(5, vocab, size=n)
            mask[row, :n] = 1
        out.append(
            parity.Batch(
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sentences", type=int, default=256)
    args = p.parse_args()
    print(f"cpu: {cpu_description()}, threads {args.threads}")
    for name, (hidden, layers, heads, inner) in SHAPES.items():
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=30522,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inner,
        )
        model = BertForPreTraining(config).eval()
        data = batches(args.sentences, config.vocab_size)
        with tempfile.TemporaryDirectory() as tmp:
            raw, fp32, int8 = (Path(tmp) / f"{n}.onnx" for n in ("raw", "fp32", "int8"))
            graphs.export_encoder(model, raw, with_pooler=True)
            variants.optimize_for_cpu(raw, fp32)
            variants.quantize_int8(fp32, int8, variants.QuantPlan())
            runs = {}
            for label, path in (("fp32", fp32), ("int8", int8)):
                sess = parity.session(path, args.threads)
                runs[label] = lambda b, s=sess: s.run(["last_hidden_state"], b.arrays)
            speed = measure(runs, data, repeats=3)
        rows = 32 * 24
        gemm = gemm_ceiling(
            [(hidden, hidden), (hidden, inner), (inner, hidden)], rows, args.threads
        )
        print(
            f"{name}: fp32 {speed['fp32']:.1f}/s, int8 {speed['int8']:.1f}/s = "
            f"{speed['int8'] / speed['fp32']:.2f}x; one MatMul int8/fp32: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in gemm.items())
        )


if __name__ == "__main__":
    main()
