"""Checkpoint -> serving artifact (Contract 3), built in a temporary directory and renamed into
place with the manifest written last, so a half-built artifact is never mistaken for one."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bertserve.commands import one_line
from bertserve.service.artifact import FORMAT_VERSION, MANIFEST, sha256_file
from bertserve.training.io import write_text_atomic

from . import graphs, parity, variants
from .destination import check_destination, install, staging_dir
from .source import Source, load_source


class ParityError(RuntimeError):
    """The fp32 graph does not reproduce PyTorch: the export is refused."""


@dataclass
class ExportOptions:
    precisions: tuple[str, ...] = ("fp32", "int8")
    quantization: str = variants.DEFAULT_QUANT
    pooling: str | None = None  # default: from sentence-transformers config, else mean
    max_seq_len: int | None = None
    progress: bool = True
    overwrite: bool = False  # replace an existing artifact (never anything else) at OUT
    name: str | None = None  # the model's name in the manifest and /info (default: the folder's)
    extra: dict[str, Any] = field(default_factory=dict)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import onnx
    import onnxruntime
    import torch

    try:
        ours = version("bertserve")
    except PackageNotFoundError:
        ours = "dev"
    return {
        "bertserve": ours,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def export_artifact(checkpoint: Path, out: Path, options: ExportOptions) -> dict[str, Any]:
    """Exports `checkpoint` (a folder) to the artifact folder `out`; see destination.py for
    what may be at `out` already."""
    out = Path(out)
    check_destination(out, [Path(checkpoint)], options.overwrite)
    source = load_source(checkpoint)
    if options.name is not None:
        source.name = options.name
    for precision in options.precisions:
        if precision not in parity.GATES:
            raise ValueError(f"unknown precision {precision!r}; choose from fp32, int8, fp16")
    if "fp32" not in options.precisions:
        options.precisions = ("fp32", *options.precisions)  # every variant derives from it
    if options.max_seq_len:
        if options.max_seq_len > source.config.max_position_embeddings:
            raise ValueError(
                f"--max-seq-len {options.max_seq_len} exceeds the model's "
                f"{source.config.max_position_embeddings} positions"
            )
        source.max_seq_len = options.max_seq_len
    pooling = options.pooling or source.pooling
    if pooling == "pooler" and not source.has_pooler:
        raise ValueError("--pooling pooler needs a model with a pooler")
    staged = staging_dir(out)
    try:
        manifest = _build(source, staged, options, pooling)
        install(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return manifest


def _build(source: Source, root: Path, options: ExportOptions, pooling: str) -> dict[str, Any]:
    cfg = source.config
    heads, hidden = cfg.num_attention_heads, cfg.hidden_size
    steps = (
        ["export encoder", "fuse fp32"]
        + [f"build {p}" for p in options.precisions if p != "fp32"]
        + ["export heads", "parity"]
    )
    bar = tqdm(total=len(steps), desc="export", unit="step", disable=not options.progress)

    def advance(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    raw = root / "encoder.raw.onnx"
    graphs.export_encoder(source.model, raw, with_pooler=source.has_pooler)
    advance("encoder exported")
    (root / "fp32").mkdir()
    entries: dict[str, dict[str, Any]] = {}
    fusions = variants.optimize_for_cpu(raw, root / "fp32" / "encoder.onnx")
    entries["fp32"] = {
        "precision": "fp32",
        "encoder": "fp32/encoder.onnx",
        "fusions": fusions,
        "batch_invariant": True,
    }
    advance("fp32 optimized")
    if "int8" in options.precisions:
        fp32_graph = root / "fp32" / "encoder.onnx"
        search_log: list[dict[str, Any]] = []
        if options.quantization in (variants.AUTO, variants.DYNAMIC_AUTO):
            activations = (
                variants.PER_ROW if options.quantization == variants.AUTO else variants.PER_TENSOR
            )
            if source.classifier is not None and source.problem_type == "regression":
                scorer = parity.regression_scorer(source, fp32_graph)
                measure = variants.REGRESSION_SEARCH
            else:
                scorer = parity.calibration_scorer(source, fp32_graph, pooling)
                measure = {}
            plan, search_log = variants.search_int8_plan(fp32_graph, scorer, activations, **measure)
        else:
            plan = variants.QUANT_PRESETS[options.quantization]
        (root / "int8").mkdir()
        int8_graph = root / "int8" / "encoder.onnx"
        kept = variants.quantize_int8(fp32_graph, int8_graph, plan)
        entries["int8"] = {
            "precision": "int8",
            "encoder": "int8/encoder.onnx",
            "fusions": variants.fusions_in(int8_graph),
            "batch_invariant": plan.batch_invariant,
            "quantization": {
                "preset": options.quantization,
                "plan": plan.describe(),
                "kept_fp32": kept,
                "search": search_log,
            },
        }
        advance("int8 quantized")
    if "fp16" in options.precisions:
        (root / "fp16").mkdir()
        fp16_graph = root / "fp16" / "encoder.onnx"
        variants.fuse_transformers(raw, fp16_graph, heads, hidden, fp16=True)
        entries["fp16"] = {
            "precision": "fp16",
            "encoder": "fp16/encoder.onnx",
            "fusions": variants.fusions_in(fp16_graph),
            "batch_invariant": True,  # no batch statistics; GPU kernels may differ in rounding
        }
        advance("fp16 converted")
    raw.unlink()
    mlm = nsp = classifier = None
    if source.has_mlm or source.has_nsp or source.classifier is not None:
        (root / "heads").mkdir()
    if source.has_mlm:
        graphs.export_mlm_head(source.model, root / "heads" / "mlm_head.onnx")
        mlm = "heads/mlm_head.onnx"
    if source.has_nsp and source.has_pooler:
        graphs.export_nsp_head(source.model, root / "heads" / "nsp_head.onnx")
        nsp = "heads/nsp_head.onnx"
    if source.classifier is not None:
        graphs.export_classifier_head(source.classifier, root / "heads" / "classifier.onnx")
        classifier = "heads/classifier.onnx"
    advance("heads exported")
    write_text_atomic(root / "tokenizer.json", source.tokenizer.to_str())

    ref = parity.reference(source)  # PyTorch runs once, whatever the number of variants
    mlm_session = parity.session(root / mlm) if mlm else None
    nsp_session = parity.session(root / nsp) if nsp else None
    classifier_session = parity.session(root / classifier) if classifier else None
    for name, entry in entries.items():
        entry["mlm_head"], entry["nsp_head"] = mlm, nsp
        if classifier:
            entry["classifier_head"] = classifier
        try:
            encoder = parity.session(root / entry["encoder"], gpu=name == "fp16")
            measured_on = encoder.get_providers()[0]
            figures = parity.measure(
                ref,
                encoder,
                mlm_session,
                nsp_session,
                pooling,
                source.has_pooler,
                classifier_session,
                source.problem_type == "regression",
            )
        except Exception as exc:  # e.g. fp16 kernels missing on this CPU provider
            if name == "fp32":
                raise
            entry["parity"] = {"error": f"not measured here: {one_line(exc, 200)}"}
            entry["rejected"] = True
            tqdm.write(
                f"warning: {name} parity could not be measured on CPU; marked rejected "
                f"(serve it with --precision {name} on a GPU after checking it there)"
            )
            continue
        missed = parity.failures(name, figures)
        gate = {**parity.GATES[name], **(parity.CLASSIFIER_GATES[name] if classifier else {})}
        entry["parity"] = {**figures, "provider": measured_on, "gate": gate, "passed": not missed}
        entry["rejected"] = bool(missed)
        if missed and name == "fp32":
            raise ParityError(f"fp32 ONNX does not match PyTorch: {'; '.join(missed)}")
        if missed:
            tqdm.write(f"warning: {name} variant rejected: {'; '.join(missed)}")
    advance("parity checked")
    bar.close()

    files = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
    specials = {
        t: source.tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    }
    manifest = {
        "format": FORMAT_VERSION,
        "name": source.name,
        "source": str(source.path.resolve()),
        "model": cfg.to_hf_dict(),
        "max_seq_len": source.max_seq_len,
        "special_tokens": specials,
        "lowercase": source.lowercase,
        "pooling": pooling,
        "normalize": source.normalize,
        "capabilities": {
            "embed": True,
            "pooler": source.has_pooler,
            "fill_mask": mlm is not None,
            "next_sentence": nsp is not None,
            "classify": classifier is not None,
        },
        "tokenizer": "tokenizer.json",
        **({"labels": source.labels, "problem_type": source.problem_type} if classifier else {}),
        **({"matryoshka_dims": source.matryoshka_dims} if source.matryoshka_dims else {}),
        **({"score_activation": source.score_activation} if source.score_activation else {}),
        "opset": graphs.OPSET,
        "files": files,
        "variants": entries,
        "versions": _versions(),
    }
    write_text_atomic(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def summary_table(manifest: dict[str, Any], root: Path) -> str:
    rows = ["variant  size MB  max|diff|   min cos    mean cos   top-1   status   fusions"]
    for name, entry in manifest["variants"].items():
        size = (root / entry["encoder"]).stat().st_size / 1e6
        p = entry.get("parity", {})
        if "error" in p:
            figures = f"{'-':>10} {'-':>10} {'-':>10} {'-':>6}"
        else:
            top1 = p.get("fill_mask_top1")
            figures = (
                f"{p['max_abs_diff']:10.2e} {p['min_cosine']:10.6f} {p['mean_cosine']:10.6f} "
                f"{(f'{top1:.3f}' if top1 is not None else '-'):>6}"
            )
        status = "REJECTED" if entry.get("rejected") else "ok"
        fusions = ",".join(f"{k}x{v}" for k, v in entry.get("fusions", {}).items())
        rows.append(f"{name:7s} {size:8.1f} {figures}  {status:8s} {fusions}")
    return "\n".join(rows)
