"""`bert-export CHECKPOINT_DIR OUT_DIR`: a verified, optimized ONNX Runtime artifact.

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error or failed fp32 parity.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from export.variants import DEFAULT_QUANT, QUANT_CHOICES

    p = argparse.ArgumentParser(
        prog="bert-export",
        description="Export a BERT checkpoint (bertserve, Hugging Face or sentence-transformers "
        "folder) to ONNX variants checked against PyTorch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint or Hugging Face folder")
    p.add_argument("out", type=Path, help="artifact directory to write (replaced when whole)")
    p.add_argument(
        "--precision", default="fp32,int8", help="comma-separated variants: fp32, int8, fp16"
    )
    p.add_argument(
        "--quantization",
        default=DEFAULT_QUANT,
        choices=list(QUANT_CHOICES),
        help="int8 plan: auto searches which MatMuls stay fp32 (see bench/int8_quality.py)",
    )
    p.add_argument(
        "--pooling",
        choices=["mean", "cls", "pooler"],
        help="default sentence pooling (default: the folder's, else mean)",
    )
    p.add_argument("--max-seq-len", type=int, help="longest input the service accepts")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from export.pipeline import ExportOptions, ParityError, export_artifact, summary_table
    from export.source import SourceError

    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    options = ExportOptions(
        precisions, args.quantization, args.pooling, args.max_seq_len, args.progress
    )
    try:
        manifest = export_artifact(args.checkpoint, args.out, options)
    except (SourceError, ValueError) as exc:
        print(f"bert-export: error: {exc}", file=sys.stderr)
        return 2
    except ParityError as exc:
        print(f"bert-export: error: {exc}", file=sys.stderr)
        return 1
    print(summary_table(manifest, args.out))
    print(f"artifact written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
