"""Which quantized groups onnxruntime fuses into int8 kernels: predicted, then confirmed.

    report = fusion_report(onnx_model)          # a QDQ model (graphopt's or anyone's)
    print(report.format()); assert not report.mismatches

A *group* is one compute node of the QDQ model (Conv, Gemm, MatMul, Add, Concat, pooling...)
with the DequantizeLinear nodes feeding it and the QuantizeLinear nodes reading it.

Prediction follows onnxruntime's QDQ selectors (PITFALLS.md, "Quantization"): a Conv becomes
QLinearConv only when X, W (and B, as int32) come from DequantizeLinear, every reader of its
output is a QuantizeLinear and the output is no graph output; Add/Mul, Concat, average pooling
need every input dequantized and the output quantized; Gemm and MatMul with dequantized inputs
become QGemm / QLinearMatMul (MatMulIntegerToFloat with a float output); MaxPool, Reshape,
Transpose... between a DequantizeLinear and a QuantizeLinear with the same scale run on the int8
data. Every other compute node runs in float, with the reason.

Confirmation builds an onnxruntime session that writes its optimized model
(``SessionOptions.optimized_model_filepath``, level ORT_ENABLE_EXTENDED, where the QDQ fusions
happen and before the layout transforms rename nodes) and reads which op now writes each
group's output value.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

# compute op -> the fused op onnxruntime makes of it (with a quantized output)
FUSED = {
    "Conv": "QLinearConv", "MatMul": "QLinearMatMul",
    "Gemm": "QGemm", "Add": "QLinearAdd", "Mul": "QLinearMul", "Concat": "QLinearConcat",
    "AveragePool": "QLinearAveragePool", "GlobalAveragePool": "QLinearGlobalAveragePool",
    "Sigmoid": "QLinearSigmoid", "LeakyRelu": "QLinearLeakyRelu", "Softmax": "QLinearSoftmax",
}
# a float output is allowed for these (onnxruntime then writes float from the int8 product)
FLOAT_OUTPUT_FUSED = {"Gemm": "QGemm", "MatMul": "MatMulIntegerToFloat"}
# ops onnxruntime runs on the int8 data when a DQ feeds them and a Q with the same scale reads them
INT8_DATA_OPS = ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice",
                 "Gather", "Resize", "DepthToSpace", "SpaceToDepth")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# compute ops with an int8 kernel that onnxruntime's CPU provider still does not fuse from QDQ
NOT_FUSED = {
    "ConvTranspose": "onnxruntime's CPU provider does not fuse a QDQ ConvTranspose (measured "
                     "with 1.32, per-channel and per-tensor, grouped or not): it runs in float",
}


@dataclass
class FusionGroup:
    node: str                  # the compute node's name in the QDQ model
    op: str                    # its op type
    output: str                # the value the group writes: its quantize's output, if it has one
    predicted: str             # the op predicted to run it: "QLinearConv"..., "int8 MaxPool", or the op itself (float)
    reason: str = ""           # why it is predicted float
    confirmed: str | None = None   # the op that writes its output in onnxruntime's optimized model

    @property
    def predicted_int8(self) -> bool:
        return self.predicted != self.op

    @property
    def agrees(self) -> bool:
        return self.confirmed is None or _same_kind(self.predicted, self.confirmed, self.op)

    @property
    def in_int8(self) -> bool:
        """Runs in int8: predicted so, and confirmed (when confirmation ran)."""
        return self.predicted_int8 and self.agrees

    @property
    def float_reason(self) -> str:
        if self.reason:
            return self.reason
        return (f"predicted {self.predicted}, but onnxruntime's optimized model computes it "
                f"with {self.confirmed}: its selectors refused the group (with int8 activations "
                f"on x86, typically a quantize its int8->uint8 conversion skipped, leaving the "
                f"input and output types unequal)")

    def to_dict(self) -> dict:
        return {"node": self.node, "op": self.op, "predicted": self.predicted,
                "confirmed": self.confirmed, "int8": self.in_int8,
                "reason": "" if self.in_int8 else self.float_reason}


def _same_kind(predicted: str, confirmed: str, op: str) -> bool:
    if predicted.startswith("int8 "):
        return confirmed in (op, "QuantizeLinear", "DequantizeLinear") or confirmed.startswith(
            ("Nhwc", op))
    return predicted == confirmed


@dataclass
class FusionReport:
    groups: list[FusionGroup] = field(default_factory=list)
    confirmed: bool = False
    optimized_ops: dict[str, int] = field(default_factory=dict)

    @property
    def fused(self) -> list[FusionGroup]:
        return [g for g in self.groups if g.in_int8]

    @property
    def float_groups(self) -> list[FusionGroup]:
        return [g for g in self.groups if not g.in_int8]

    @property
    def mismatches(self) -> list[FusionGroup]:
        return [g for g in self.groups if not g.agrees]

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = defaultdict(int)
        for group in self.groups:
            found[group.predicted] += 1
        return dict(sorted(found.items()))

    def to_dict(self) -> dict:
        return {"confirmed": self.confirmed, "predicted": self.counts(),
                "fused": len(self.fused), "float": len(self.float_groups),
                "mismatches": [g.to_dict() for g in self.mismatches],
                "float_groups": [g.to_dict() for g in self.float_groups],
                "groups": [g.to_dict() for g in self.groups],
                "optimized_ops": self.optimized_ops}

    def format(self) -> str:
        lines = [f"{len(self.fused)} groups in int8, {len(self.float_groups)} in float, "
                 f"{len(self.mismatches)} predicted wrongly"
                 + (" (confirmed by onnxruntime's optimized model)" if self.confirmed else
                    " (predicted)")]
        lines += [f"  {op}: {n}" for op, n in self.counts().items()]
        for group in self.float_groups:
            lines.append(f"  float: {group.node} ({group.op}): {group.float_reason}")
        return "\n".join(lines)


def fusion_report(model: onnx.ModelProto | str | os.PathLike, confirm: bool = True
                  ) -> FusionReport:
    """Predict the int8 groups of QDQ ``model`` and, with ``confirm``, check them against
    onnxruntime's optimized model."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    report = FusionReport(predict(model))
    if confirm:
        optimized = optimized_model(model)
        producers = {out: node for node in optimized.graph.node for out in node.output}
        # a fused node keeps its target's name (onnxruntime may add a "_token_N" suffix); an
        # output value may be renamed (the int8 -> uint8 activation conversion does)
        by_name = {node.name.split("_token_")[0]: node for node in optimized.graph.node}
        report.optimized_ops = dict(sorted(_histogram(optimized).items()))
        for group in report.groups:
            node = producers.get(group.output) or by_name.get(group.node)
            group.confirmed = node.op_type if node is not None else "(removed)"
        report.confirmed = True
    return report


def _histogram(model: onnx.ModelProto) -> dict[str, int]:
    found: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        found[node.op_type] += 1
    return found


def optimized_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's graph after its extended optimizations (the QDQ fusions)."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory(prefix="graphopt-fusion-") as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


# --- prediction ---------------------------------------------------------------------------------

class _Model:
    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.readers[name].append(node)
        self.outputs = {o.name for o in model.graph.output}
        self.constants = {t.name: t for t in model.graph.initializer}

    def dequantized(self, value: str) -> onnx.NodeProto | None:
        """The DequantizeLinear writing ``value``, seen through Transposes that cancel (which
        onnxruntime removes before fusing: a FullyConnected's transposed int8 weight)."""
        node = self.producer.get(value)
        if node is not None and node.op_type == "Transpose":
            source, perm = self.through_transposes(node)
            if _is_identity(perm):
                node = self.producer.get(source)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def through_transposes(self, node: onnx.NodeProto) -> tuple[str, list[int]]:
        """The value a chain of Transposes ending at ``node`` starts from, and their composed perm."""
        perm = None
        while node is not None and node.op_type == "Transpose":
            own = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if own is None:   # reversed axes of a rank this model does not say: not followed
                return node.input[0], None
            perm = own if perm is None else [own[i] for i in perm]
            value = node.input[0]
            node = self.producer.get(value)
        return value, perm

    def cancelled(self, node: onnx.NodeProto) -> bool:
        """``node`` is one of two Transposes in a row that compose to the identity."""
        if node.op_type != "Transpose":
            return False
        readers = self.readers.get(node.output[0], [])
        if len(readers) == 1 and readers[0].op_type == "Transpose":
            return _is_identity(self.through_transposes(readers[0])[1])
        producer = self.producer.get(node.input[0])
        return producer is not None and producer.op_type == "Transpose" and \
            _is_identity(self.through_transposes(node)[1])

    def value(self, name: str) -> np.ndarray | None:
        if name in self.constants:
            return numpy_helper.to_array(self.constants[name])
        return None

    def dtype(self, name: str) -> int | None:
        tensor = self.constants.get(name)
        return tensor.data_type if tensor is not None else None


def _is_identity(perm: list[int] | None) -> bool:
    return perm is not None and perm == list(range(len(perm)))


def predict(model: onnx.ModelProto) -> list[FusionGroup]:
    """The groups of ``model`` and what onnxruntime's QDQ selectors will make of each."""
    m = _Model(model)
    groups = []
    for node in m.nodes:
        if node.op_type == "MatMulInteger":
            groups.append(_dynamic_group(m, node))
            continue
        if node.op_type in QDQ_OPS or node.op_type in ("Identity", "Constant", "Shape") \
                or m.cancelled(node):
            continue
        if not any(m.dequantized(v) for v in node.input if v):
            continue   # nothing quantized reaches it: not a quantized group
        if _removed_before_quantize(m, node):
            continue   # onnxruntime deletes it: no group of its own
        predicted, reason = _predict_node(m, node)
        readers = m.readers.get(node.output[0], [])
        quantizes = [r for r in readers if r.op_type == "QuantizeLinear"]
        # a fused group writes its quantize's output; a float one still writes its own
        fused = predicted != node.op_type
        output = quantizes[0].output[0] if fused and quantizes and len(quantizes) == len(readers) \
            else node.output[0]
        groups.append(FusionGroup(node.name, node.op_type, output, predicted, reason))
    return groups


def _dynamic_group(m: _Model, node: onnx.NodeProto) -> FusionGroup:
    """MatMulInteger -> Cast -> Mul (-> Add): onnxruntime's MatMulIntegerToFloat, and with a
    DynamicQuantizeLinear feeding it, DynamicQuantizeMatMul (both int8 GEMMs)."""
    chain, value = [], node.output[0]
    for op in ("Cast", "Mul", "Add"):
        readers = m.readers.get(value, [])
        if len(readers) != 1 or readers[0].op_type != op:
            break
        chain.append(op)
        value = readers[0].output[0]
    if chain[:2] != ["Cast", "Mul"]:
        return FusionGroup(node.name, node.op_type, node.output[0], "MatMulInteger", "",)
    source = m.producer.get(node.input[0])
    dynamic = source is not None and source.op_type == "DynamicQuantizeLinear"
    return FusionGroup(node.name, node.op_type, value,
                       "DynamicQuantizeMatMul" if dynamic else "MatMulIntegerToFloat")


def _predict_node(m: _Model, node: onnx.NodeProto) -> tuple[str, str]:
    op = node.op_type
    inputs = [v for v in node.input if v]
    undequantized = [v for v in inputs if not m.dequantized(v)]
    readers = m.readers.get(node.output[0], [])
    quantized_output = bool(readers) and all(r.op_type == "QuantizeLinear" for r in readers) \
        and node.output[0] not in m.outputs
    if op in INT8_DATA_OPS:
        if undequantized[:1]:
            return op, "its input is not dequantized"
        if not quantized_output:
            return op, "its output is not quantized"
        if not _same_qparams(m, m.dequantized(inputs[0]), readers[0]):
            return op, "the quantize after it has another scale or zero point than the dequantize before"
        return f"int8 {op}", ""
    if op in NOT_FUSED:
        return op, NOT_FUSED[op]
    if op not in FUSED:
        return op, f"onnxruntime has no int8 kernel for {op}"
    if op in ("Conv", "Gemm") and len(inputs) > 2:
        bias = m.dequantized(inputs[2])
        if bias is None:
            return op, "its bias is float (it must be int32 behind a DequantizeLinear)"
        if m.dtype(bias.input[0]) not in (None, onnx.TensorProto.INT32):
            return op, "its bias is not int32"
        inputs = inputs[:2]
        undequantized = [v for v in inputs if not m.dequantized(v)]
    if undequantized:
        return op, f"input {undequantized[0]!r} is float (no DequantizeLinear before it)"
    if not quantized_output:
        if op in FLOAT_OUTPUT_FUSED:
            return FLOAT_OUTPUT_FUSED[op], ""
        if node.output[0] in m.outputs:
            return op, "its output is a graph output"
        floats = [r.op_type for r in readers if r.op_type != "QuantizeLinear"]
        return op, f"its output is also read in float (by {', '.join(sorted(set(floats)))})"
    return FUSED[op], ""


def _removed_before_quantize(m: _Model, node: onnx.NodeProto) -> bool:
    """A Relu whose only reader is a QuantizeLinear with its zero point at the grid's floor:
    onnxruntime's ReluQuantFusion deletes it (the quantize clamps negatives to 0 already).
    graphopt leaves one when the ReLU's input has other readers (a residual branch)."""
    if node.op_type != "Relu" or node.output[0] in m.outputs:
        return False
    readers = m.readers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or len(readers[0].input) < 3:
        return False
    zero_point = m.value(readers[0].input[2])
    if zero_point is None or zero_point.size != 1:
        return False
    return int(zero_point.reshape(-1)[0]) == int(np.iinfo(zero_point.dtype).min)


def _same_qparams(m: _Model, dequantize: onnx.NodeProto, quantize: onnx.NodeProto) -> bool:
    for a, b in zip(dequantize.input[1:], quantize.input[1:]):
        if a == b:
            continue
        va, vb = m.value(a), m.value(b)
        if va is None or vb is None or va.shape != vb.shape or not np.array_equal(va, vb):
            return False
    return True
