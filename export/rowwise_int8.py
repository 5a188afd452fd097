"""Batch-invariant int8: every token row quantized with its own scale.

Dynamic quantization (onnxruntime.quantization's DynamicQuantizeMatMul) takes one activation
scale for the whole (batch x tokens) tensor, so a sentence's int8 vector moves with whatever
else is in its batch. Here each MatMul that reads a constant weight is rewritten as

    x (..., K) -> rows (M, K) -> s = max(|row|) / 127            (M, 1), one per token
    q = QuantizeLinear(rows, s, zero point 128, axis 0)          (M, K) uint8, one pass
    y = MatMulIntegerToFloat(q, W8, 1, w_scale, 128) * s         (M, N), VNNI u8s8 GEMM
    -> (..., N)

with W8 the weight quantized per output column (symmetric int8). Every step reads one row and
its own scale only, and the integer GEMM is exact, so a token's result does not depend on the
other rows in the batch. The quantization of an input is shared by the MatMuls that read it
(query, key and value read the same hidden states). Standard ONNX and com.microsoft operators
only, so the graph runs on any ONNX Runtime CPU build.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# A row whose largest magnitude is below this quantizes as zeros instead of dividing by zero.
MIN_SCALE = 1e-12


@dataclass(frozen=True)
class Rewritten:
    quantized: list[str]  # MatMul nodes now int8
    kept_fp32: list[str]  # MatMul nodes with a constant weight left in fp32 by request


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) float -> (K, N) int8 and (N,) float scales, symmetric per output column."""
    peak = np.abs(weight).max(axis=0)  # (N,)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    return quantized, scale


def rewrite_rowwise(src: Path, dst: Path, keep_fp32: tuple[str, ...] = ()) -> Rewritten:
    """Rewrites every MatMul of `src` whose second input is a 2-D float initializer (the
    projections; attention's activation x activation MatMuls stay fp32). Nodes whose name
    matches a regex in keep_fp32 are left alone."""
    model = onnx.load(str(src))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    patterns = [re.compile(p) for p in keep_fp32]

    def rewritable(node: onnx.NodeProto) -> bool:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            return False
        weight = weights[node.input[1]]
        return len(weight.dims) == 2 and weight.data_type == TensorProto.FLOAT

    targets = [n for n in graph.node if rewritable(n)]
    kept = [n for n in targets if any(p.search(n.name) for p in patterns)]
    chosen = [n for n in targets if n not in kept]
    by_input: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in chosen:
        by_input[node.input[0]].append(node)

    build = _Builder()
    replacements: dict[int, list[onnx.NodeProto]] = {}
    for group, (source, nodes) in enumerate(by_input.items()):
        k = weights[nodes[0].input[1]].dims[0]
        rows = build.quantize_rows(source, k, f"rowwise_int8/{group}")
        for index, node in enumerate(nodes):
            body = build.int8_matmul(node, rows, numpy_helper.to_array(weights[node.input[1]]))
            # the row quantization goes before the first MatMul of its group, in graph order
            replacements[id(node)] = (rows.nodes if index == 0 else []) + body
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        new_nodes.extend(replacements.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for node in graph.node for name in node.input}
    live = [init for init in graph.initializer if init.name in used]  # fp32 weights drop out
    del graph.initializer[:]
    graph.initializer.extend(live + build.initializers)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Rewritten([n.name for n in chosen], [n.name for n in kept])


@dataclass
class _Rows:
    nodes: list[onnx.NodeProto]  # (..., K) float -> q (M, K) uint8, scale (M, 1), lead shape
    q: str
    scale: str
    lead_shape: str  # the input's shape without its last dimension


@dataclass
class _Builder:
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def constant(self, name: str, value: np.ndarray) -> str:
        if name not in self._names:
            self._names.add(name)
            self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def quantize_rows(self, source: str, k: int, prefix: str) -> _Rows:
        def out(name: str) -> str:
            return f"{prefix}/{name}"

        k_only = self.constant(out("k"), np.array([k], dtype=np.int64))
        inv127 = self.constant("rowwise_int8/inv127", np.array(1 / 127, dtype=np.float32))
        floor = self.constant("rowwise_int8/min_scale", np.array(MIN_SCALE, dtype=np.float32))
        flat = self.constant("rowwise_int8/flat", np.array([-1], dtype=np.int64))
        zero_point = self.constant("rowwise_int8/zero_point_1d", np.array([128], dtype=np.uint8))
        node = helper.make_node
        nodes = [
            # (..., K) -> (M, K), M the product of the lead dimensions
            node("Shape", [source], [out("lead_shape")], name=out("Shape"), end=-1),
            node("ReduceProd", [out("lead_shape")], [out("m")], name=out("M"), keepdims=1),
            node("Concat", [out("m"), k_only], [out("rows_shape")], name=out("Concat"), axis=0),
            node("Reshape", [source, out("rows_shape")], [out("rows")], name=out("Rows")),
            # max |x| per row as max(max x, -min x): two reads, no (M, K) temporary
            node("ReduceMax", [out("rows")], [out("high")], name=out("Max"), axes=[-1]),
            node("ReduceMin", [out("rows")], [out("low")], name=out("Min"), axes=[-1]),
            node("Neg", [out("low")], [out("neg_low")], name=out("Neg")),
            node("Max", [out("high"), out("neg_low")], [out("peak")], name=out("Peak")),
            node("Mul", [out("peak"), inv127], [out("raw_scale")], name=out("Scale")),
            node("Max", [out("raw_scale"), floor], [out("scale")], name=out("Floor")),  # (M, 1)
            node("Reshape", [out("scale"), flat], [out("scale_1d")], name=out("Scale1d")),
            node("Expand", [zero_point, out("m")], [out("zero_points")], name=out("ZeroPoints")),
            node(
                "QuantizeLinear",
                [out("rows"), out("scale_1d"), out("zero_points")],
                [out("q")],
                name=out("Quantize"),
                axis=0,
            ),  # (M, K) uint8, round(x / s) + 128 saturated: one pass
        ]
        return _Rows(nodes, out("q"), out("scale"), out("lead_shape"))

    def int8_matmul(
        self, node: onnx.NodeProto, rows: _Rows, weight: np.ndarray
    ) -> list[onnx.NodeProto]:
        base = node.name or node.output[0]

        def out(name: str) -> str:
            return f"{base}/{name}"

        w8, w_scale = quantize_weight(weight)
        w8_name = self.constant(f"{node.input[1]}_int8", w8)
        scale_name = self.constant(f"{node.input[1]}_scale", w_scale)
        n_out = self.constant(out("n"), np.array([weight.shape[1]], dtype=np.int64))
        one = self.constant("rowwise_int8/one", np.array(1.0, dtype=np.float32))
        zero_point = self.constant("rowwise_int8/zero_point", np.array(128, dtype=np.uint8))
        return [
            helper.make_node(
                "MatMulIntegerToFloat",
                [rows.q, w8_name, one, scale_name, zero_point],
                [out("int8_out")],
                name=out("MatMulIntegerToFloat"),
                domain="com.microsoft",
            ),  # (M, N) = (q - 128) . W8 * w_scale
            helper.make_node(
                "Mul", [out("int8_out"), rows.scale], [out("rescaled")], name=out("RowScale")
            ),  # (M, N) * (M, 1)
            helper.make_node(
                "Concat", [rows.lead_shape, n_out], [out("out_shape")], name=out("OutShape"), axis=0
            ),
            helper.make_node(
                "Reshape", [out("rescaled"), out("out_shape")], [node.output[0]], name=out("Unrows")
            ),  # (..., N)
        ]
