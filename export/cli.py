"""`bert-export CHECKPOINT OUT_DIR`: a verified, optimized ONNX Runtime artifact.

CHECKPOINT is a folder (bertserve run, Hugging Face or sentence-transformers) or a Hugging Face
model id such as `sentence-transformers/all-MiniLM-L6-v2` (read from huggingface_hub's cache).

Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 internal error or
failed fp32 parity.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertserve.commands import DefaultsHelpFormatter, refuse_missing_extra, run_command

# export.variants.QUANT_CHOICES, spelled out so that --help works before the heavy imports
# (a test keeps the two equal)
QUANT_CHOICES = (
    "auto",
    "per-row",
    "dynamic-per-tensor",
    "dynamic-per-channel",
    "dynamic-auto",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bert-export",
        description="Export a BERT checkpoint (bertserve, Hugging Face or sentence-transformers "
        "folder, or a Hugging Face model id) to ONNX variants checked against PyTorch.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint folder or Hugging Face model id (org/name)")
    p.add_argument(
        "out",
        type=Path,
        help="artifact folder to write: new or empty (an existing artifact needs --overwrite)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous artifact at OUT (never a folder that holds anything else)",
    )
    p.add_argument(
        "--precision", default="fp32,int8", help="comma-separated variants: fp32, int8, fp16"
    )
    p.add_argument(
        "--quantization",
        default="auto",
        choices=list(QUANT_CHOICES),
        help=(
            "int8 plan: per-row scales every token row alone, so a sentence's vector does not "
            "depend on its batch; auto (default) is per-row, keeping the fewest MatMuls fp32 "
            "that the accuracy gate needs; dynamic-* are onnxruntime.quantization's dynamic "
            "plans, whose vectors depend on the batch (served only with --precision int8). "
            "Figures: bench/export_speed.py"
        ),
    )
    p.add_argument(
        "--pooling",
        choices=["mean", "cls", "pooler"],
        help="default sentence pooling (default: the folder's, else mean)",
    )
    p.add_argument("--max-seq-len", type=int, help="longest input the service accepts")
    p.add_argument("--name", help="model name in the manifest and /info (default: folder or id)")
    p.add_argument("--revision", help="branch, tag or commit of a Hugging Face model id")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if refuse_missing_extra("bert-export"):
        return 2
    if args.max_seq_len is not None and args.max_seq_len < 2:
        print("bert-export: error: --max-seq-len must be at least 2", file=sys.stderr)
        return 2
    from .destination import ExportPathError
    from .pipeline import ExportOptions, ParityError, export_artifact, summary_table
    from .source import SourceError, resolve_checkpoint

    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())

    def work() -> None:
        checkpoint, model_id = resolve_checkpoint(args.checkpoint, args.revision)
        options = ExportOptions(
            precisions,
            args.quantization,
            args.pooling,
            args.max_seq_len,
            args.progress,
            overwrite=args.overwrite,
            name=args.name or model_id,
        )
        manifest = export_artifact(checkpoint, args.out, options)
        print(summary_table(manifest, args.out))
        print(f"artifact written to {args.out}")

    return run_command(
        "bert-export",
        work,
        (SourceError, ExportPathError, ValueError),
        failed=(ParityError,),
        output=Path(args.out),
    )


if __name__ == "__main__":
    raise SystemExit(main())
