"""Precision variants of the encoder: CPU-optimized fp32, dynamic int8, fused fp16.

fp32 (the CPU graph): the graph ONNX Runtime's own optimizer makes of the plain export at the
EXTENDED level (FusedMatMul for the scaled attention scores, BiasGelu, FusedGemm), saved so the
manifest can say which fusions took. On CPU it measured as fast as or faster than
onnxruntime.transformers' BERT fusions: its CPU Attention kernel loses to plain MatMul+Softmax
at embedding-length sequences (bench/export_speed.py, README figures).
int8: onnxruntime.quantization's dynamic quantization of that graph, per-channel, with the
MatMuls named in `keep_fp32` left in fp32 (see QUANT_PRESETS).
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

import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model


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


@dataclass(frozen=True)
class QuantPlan:
    """Which MatMuls stay fp32 (regexes on node names) and how weights are scaled."""

    per_channel: bool = True
    keep_fp32: tuple[str, ...] = field(default_factory=tuple)
    reduce_range: bool = False

    def describe(self) -> str:
        scale = "per-channel" if self.per_channel else "per-tensor"
        kept = f", fp32: {' '.join(self.keep_fp32)}" if self.keep_fp32 else ""
        return f"{scale}{kept}"


# Fixed plans, compared with "auto" by bench/export_speed.py (see README figures).
QUANT_PRESETS: dict[str, QuantPlan] = {
    "per-tensor": QuantPlan(per_channel=False),
    "per-channel": QuantPlan(per_channel=True),
    # projections that read outlier-heavy activations (after GELU, after attention) in fp32
    "keep-ffn-out": QuantPlan(per_channel=True, keep_fp32=(r"layer\.\d+/output/dense/MatMul$",)),
    "keep-outputs": QuantPlan(per_channel=True, keep_fp32=(r"/output/dense/MatMul$",)),
}
# per-channel; only if that misses the targets, a sensitivity search for the fewest MatMuls to
# keep in fp32 (each one kept costs ~15-20% of int8's speed: bench/export_speed.py)
AUTO = "auto"
DEFAULT_QUANT = AUTO
QUANT_CHOICES = (AUTO, *QUANT_PRESETS)


def matmul_nodes(path: Path) -> list[str]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Attention", "Gemm")]


def quantize_int8(src: Path, dst: Path, plan: QuantPlan) -> list[str]:
    """Dynamic int8 quantization of `src` (the fp32 CPU graph). Returns the nodes kept fp32."""
    patterns = [re.compile(p) for p in plan.keep_fp32]
    excluded = [n for n in matmul_nodes(src) if any(p.search(n) for p in patterns)]
    with tempfile.TemporaryDirectory() as tmp, quiet_root_logger():
        staged = Path(tmp) / "int8.onnx"
        quantize_dynamic(
            str(src),
            str(staged),
            weight_type=QuantType.QInt8,
            per_channel=plan.per_channel,
            reduce_range=plan.reduce_range,
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


def search_int8_plan(
    src: Path,
    score: Callable[[Path], tuple[float, float]],
    target_mean: float = 0.992,  # the int8 gate (0.99 / 0.97) with a margin, since the
    target_min: float = 0.975,  # gate judges other sentences than these calibration ones
    max_kept_share: float = 0.25,
) -> tuple[QuantPlan, list[dict[str, object]]]:
    """Greedy sensitivity search. `score(path)` -> (mean, min) cosine of an int8 graph against
    fp32 on calibration sentences. Each MatMul is tried alone in fp32; then the most helpful
    are kept, one at a time, until the targets are met or max_kept_share of them are fp32.
    Returns the plan and the search log."""
    nodes = [n for n in matmul_nodes(src) if "pooler" not in n]
    log: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "trial.onnx"

        def measure(keep: tuple[str, ...]) -> tuple[float, float]:
            quantize_int8(src, trial, QuantPlan(per_channel=True, keep_fp32=keep))
            return score(trial)

        base = measure(())
        log.append({"kept": [], "mean_cosine": base[0], "min_cosine": base[1]})
        if base[0] >= target_mean and base[1] >= target_min:
            return QuantPlan(per_channel=True), log
        gains = sorted(((measure((exact(n),))[0], n) for n in nodes), reverse=True)
        kept: list[str] = []
        limit = max(1, int(len(nodes) * max_kept_share))
        for _, node in gains[:limit]:
            kept.append(exact(node))
            mean, low = measure(tuple(kept))
            log.append(
                {
                    "kept": [k.strip("^$").replace("\\", "") for k in kept],
                    "mean_cosine": mean,
                    "min_cosine": low,
                }
            )
            if mean >= target_mean and low >= target_min:
                break
    return QuantPlan(per_channel=True, keep_fp32=tuple(kept)), log
