"""Precision variants of the encoder: CPU-optimized fp32, dynamic int8, fused fp16.

fp32 (the CPU graph): the graph ONNX Runtime's own optimizer makes of the plain export at the
EXTENDED level (FusedMatMul for the scaled attention scores, BiasGelu, FusedGemm), saved so the
manifest can say which fusions took. On CPU it measured as fast as or faster than
onnxruntime.transformers' BERT fusions: its CPU Attention kernel loses to plain MatMul+Softmax
at embedding-length sequences (bench/export_speed.py, README figures).
int8: that graph with every projection's activations quantized per token row and its weights
per output column (rowwise_int8.py: a sentence's vector does not depend on its batch), the
MatMuls named in `keep_fp32` left in fp32; onnxruntime.quantization's dynamic quantization
(batch-dependent) remains as opt-in plans (see QUANT_PRESETS).
fp16 (the GPU graph): onnxruntime.transformers' fusions (Attention, SkipLayerNormalization,
BiasGelu, ...), converted with keep_io_types.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model

from .rowwise_int8 import rewrite_rowwise


def fusions_in(path: Path) -> dict[str, int]:
    """{fused operator: count} in a graph. Every fusion, ORT's or onnxruntime.transformers',
    produces a contrib (com.microsoft) operator: Attention, SkipLayerNormalization, BiasGelu,
    FusedMatMul, ..."""
    graph = onnx.load(str(path), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.domain == "com.microsoft":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def optimize_for_cpu(src: Path, dst: Path) -> dict[str, int]:
    """ONNX Runtime's EXTENDED graph optimizations, saved. EXTENDED and not ALL: ALL adds
    layout changes tied to this machine's instruction set, and the artifact must run on any
    x86/ARM CPU (ALL is still applied at load time). Returns the fusions that took."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return fusions_in(dst)


def fuse_transformers(src: Path, dst: Path, num_heads: int, hidden: int, fp16: bool) -> None:
    """onnxruntime.transformers' BERT fusions (opt_level 0: fusions only, so the graph stays
    portable between providers); with fp16, converted keeping fp32 inputs and outputs."""
    model = optimize_model(
        str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden, opt_level=0
    )
    if fp16:
        model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst))


PER_ROW = "per-row"  # one activation scale per token row: batch-invariant (rowwise_int8.py)
PER_TENSOR = "per-tensor"  # onnxruntime.quantization's dynamic: one scale per batch tensor


@dataclass(frozen=True)
class QuantPlan:
    """How activations and weights are scaled, and which MatMuls stay fp32 (regexes on node
    names)."""

    activations: str = PER_ROW
    per_channel: bool = True  # weights; always per channel with per-row activations
    keep_fp32: tuple[str, ...] = field(default_factory=tuple)

    @property
    def batch_invariant(self) -> bool:
        """A sentence's vector does not depend on the other sentences in its batch."""
        return self.activations == PER_ROW

    def describe(self) -> str:
        if self.activations == PER_ROW:
            scale = "per-row activations, per-channel weights"
        else:
            weights = "per-channel" if self.per_channel else "per-tensor"
            scale = f"dynamic per-batch activations, {weights} weights"
        kept = f", fp32: {' '.join(self.keep_fp32)}" if self.keep_fp32 else ""
        return f"{scale}{kept}"


# Fixed plans, compared with "auto" by bench/export_speed.py (see README figures). The
# dynamic-* plans are onnxruntime.quantization's dynamic quantization, whose vectors depend on
# the batch; the manifest and /info say so, and the service serves them only when asked.
QUANT_PRESETS: dict[str, QuantPlan] = {
    PER_ROW: QuantPlan(),
    "dynamic-per-tensor": QuantPlan(activations=PER_TENSOR, per_channel=False),
    "dynamic-per-channel": QuantPlan(activations=PER_TENSOR),
}
# per-row; only if that misses the targets, a sensitivity search for the fewest MatMuls to
# keep in fp32 (each one kept costs int8 some of its speed: bench/export_speed.py)
AUTO = "auto"
DYNAMIC_AUTO = "dynamic-auto"  # the same search over dynamic per-channel (batch-dependent)
DEFAULT_QUANT = AUTO
QUANT_CHOICES = (AUTO, *QUANT_PRESETS, DYNAMIC_AUTO)


def matmul_nodes(path: Path) -> list[str]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Attention", "Gemm")]


def quantize_int8(src: Path, dst: Path, plan: QuantPlan) -> list[str]:
    """int8 quantization of `src` (the fp32 CPU graph). Returns the nodes kept fp32."""
    if plan.activations == PER_ROW:
        return rewrite_rowwise(src, dst, plan.keep_fp32).kept_fp32
    patterns = [re.compile(p) for p in plan.keep_fp32]
    excluded = [n for n in matmul_nodes(src) if any(p.search(n) for p in patterns)]
    with tempfile.TemporaryDirectory() as tmp, quiet_root_logger():
        staged = Path(tmp) / "int8.onnx"
        quantize_dynamic(
            str(src),
            str(staged),
            weight_type=QuantType.QInt8,
            per_channel=plan.per_channel,
            nodes_to_exclude=excluded,
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        staged.replace(dst)
    return excluded


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization warns on the root logger about shape inference of contrib
    operators it does not know (FusedMatMul), which says nothing to our users."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def exact(node: str) -> str:
    return "^" + re.escape(node) + "$"


# (mean, min) cosine on the calibration sentences that the search keeps MatMuls in fp32 for.
# per-row: what kept all-MiniLM-L6-v2's STS-B Spearman within 0.002 of fp32's (7 of 36 kept,
# 1.58x fp32 where all 36 in int8 ran 1.87x; bench/export_speed.py); dynamic: the int8 gate
# (0.99 / 0.97) with a margin, as before per-row existed
SEARCH_TARGETS = {PER_ROW: (0.998, 0.99), PER_TENSOR: (0.992, 0.975)}
# the search for a regression head, on its score (parity.regression_scorer: 1 - |score - fp32
# score|): mean within 0.005 and max within 0.01, half the int8 gate's 0.02 since the parity
# inputs that judge differ; at most half the MatMuls in fp32 (keeping all it asked for passed a
# MiniLM STS cross-encoder with 2 of 42 left in int8: int8 in name only)
REGRESSION_SEARCH: dict[str, Any] = {
    "target_mean": 0.995,
    "target_min": 0.99,
    "max_kept_share": 0.5,
    "measure_name": "score_closeness",
}


def search_int8_plan(
    src: Path,
    score: Callable[[Path], tuple[float, float]],
    activations: str = PER_ROW,
    target_mean: float | None = None,
    target_min: float | None = None,
    max_kept_share: float = 0.25,
    measure_name: str = "cosine",
) -> tuple[QuantPlan, list[dict[str, object]]]:
    """Greedy sensitivity search. `score(path)` -> (mean, min) cosine of an int8 graph against
    fp32 on calibration sentences (or another closeness, higher is better, named in the log by
    `measure_name`). Each MatMul is tried alone in fp32; then the most helpful are kept, one at
    a time, until the targets (default: SEARCH_TARGETS[activations]) are met or max_kept_share
    of them are fp32. Returns the plan and the search log."""
    if target_mean is None or target_min is None:
        target_mean, target_min = SEARCH_TARGETS[activations]
    nodes = [n for n in matmul_nodes(src) if "pooler" not in n]
    log: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "trial.onnx"

        def measure(keep: tuple[str, ...]) -> tuple[float, float]:
            quantize_int8(src, trial, QuantPlan(activations=activations, keep_fp32=keep))
            return score(trial)

        base = measure(())
        log.append({"kept": [], f"mean_{measure_name}": base[0], f"min_{measure_name}": base[1]})
        if base[0] >= target_mean and base[1] >= target_min:
            return QuantPlan(activations=activations), log
        gains = sorted(((measure((exact(n),))[0], n) for n in nodes), reverse=True)
        kept: list[str] = []
        limit = max(1, int(len(nodes) * max_kept_share))
        for _, node in gains[:limit]:
            kept.append(exact(node))
            mean, low = measure(tuple(kept))
            log.append(
                {
                    "kept": [k.strip("^$").replace("\\", "") for k in kept],
                    f"mean_{measure_name}": mean,
                    f"min_{measure_name}": low,
                }
            )
            if mean >= target_mean and low >= target_min:
                break
    return QuantPlan(activations=activations, keep_fp32=tuple(kept)), log
