"""Post-training static quantization to a QDQ graph: ``quantize(graph, calibration) -> (graph, report)``.

    cal = graphopt.quantize.calibrate(graph, data, method="entropy")
    qgraph, report = graphopt.quantize.quantize(graph, cal, activations="uint8", per_channel=True,
                                                exclude=["fc1", "Pooling"], exclude_first_last=False)
    graphopt.to_onnx(qgraph, "model-int8.onnx", opset=17)    # QuantizeLinear/DequantizeLinear

The quantize/dequantize pairs are inserted by the rules of ``rules/quantize.toml`` (phase
``quantize``) through the rule engine; this module resolves the exclusions, hands the settings
to the rules as the rewrite context and says which layers stayed in float and why. The pair
itself is a ``Custom`` op with ONNX's semantics (see :mod:`graphopt.quantize.ops`), so the
returned graph still runs in MXNet (as a float simulation of the int8 model) and converts 1:1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from graphopt.errors import GraphError
from graphopt.ir.graph import Graph, Tensor, default_output_names
from graphopt.quantize.ops import custom_op_type
from graphopt.quantize.qparams import ACTIVATION_TYPES, cpu_needs_reduced_range
from graphopt.quantize.rule_functions import QUANTIZABLE_OPS, WEIGHTED_OPS, QuantizeOptions
from graphopt.rewrite.engine import rewrite
from graphopt.rewrite.registry import register_context_factory
from graphopt.rewrite.report import Report

QUANTIZE_RULES_PHASE = "quantize"


@dataclass
class QuantizeReport:
    """What :func:`quantize` did: the layers now in int8, those left in float with the reason,
    and the rewrite report of the rules (``rewrite.format_report(report.rewrite)``)."""
    activations: str
    per_channel: bool
    quantized: list[str] = field(default_factory=list)
    float_layers: dict[str, str] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    rewrite: Report | None = None
    reduce_range: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"activations": self.activations, "per_channel": self.per_channel,
                "reduce_range": self.reduce_range,
                "quantized": list(self.quantized), "float_layers": dict(self.float_layers),
                "excluded": list(self.excluded)}


def quantize(graph: Graph, calibration: Any, *, activations: str = "uint8",
             per_channel: bool = True, exclude: Iterable[str] = (),
             exclude_first_last: bool = False, reduce_range: bool | None = None
             ) -> tuple[Graph, QuantizeReport]:
    """A copy of ``graph`` with quantize/dequantize pairs around every layer that can run in
    int8 (Convolution, FullyConnected, Deconvolution, add, Concat, pooling, batch_dot and the
    interleaved attention matmuls), and the :class:`QuantizeReport`.

    ``calibration``: the table of :func:`graphopt.quantize.calibrate` (anything with
    ``.range(tensor_name, symmetric=...) -> (lo, hi)`` and ``.names``), by MXNet tensor name.
    ``activations``: ``"uint8"`` asymmetric or ``"int8"`` symmetric (see
    :mod:`graphopt.quantize.qparams`). ``exclude``: node names or op types kept in float.
    ``exclude_first_last``: also keep in float the first weighted layers (reading the graph
    inputs) and the last (writing the outputs). Weights are symmetric int8, per output channel
    with ``per_channel`` (else per tensor), biases int32. ``reduce_range``: 7-bit weights, for
    x86 CPUs without VNNI whose uint8 x int8 products saturate int16 (``None``: if the CPU
    quantizing is one; pass a bool to target another machine). The input graph is not changed.
    """
    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {ACTIVATION_TYPES}, not {activations!r}")
    excluded = resolve_exclusions(graph, exclude, exclude_first_last)
    if reduce_range is None:
        reduce_range = cpu_needs_reduced_range()
    settings = QuantizeOptions(calibration, activations, per_channel, frozenset(excluded),
                               reduce_range=reduce_range)
    new_graph, rewrite_report = rewrite(graph, phases=[QUANTIZE_RULES_PHASE],
                                        context={"quantize": settings})
    report = QuantizeReport(activations, per_channel, excluded=sorted(excluded),
                            rewrite=rewrite_report, reduce_range=reduce_range)
    _fill_layers(report, new_graph, rewrite_report)
    return new_graph, report


def quantize_dynamic(graph: Graph, *, per_channel: bool = True, exclude: Iterable[str] = (),
                     reduce_range: bool | None = None) -> tuple[Graph, QuantizeReport]:
    """A copy of ``graph`` whose FullyConnected layers (``flatten=False`` on any rank, or 2-D
    inputs: a transformer's projections and feed-forward layers) multiply int8 weights with their
    input quantized at run time (``rules/quantize_dynamic.toml``): no calibration. onnxruntime runs
    each as its int8 ``DynamicQuantizeMatMul``. ``exclude``: node names or op types kept in float.
    The report's ``activations`` is ``"dynamic uint8"``; ``reduce_range`` as for :func:`quantize`."""
    excluded = resolve_exclusions(graph, exclude, False)
    if reduce_range is None:
        reduce_range = cpu_needs_reduced_range()
    settings = QuantizeOptions(None, "uint8", per_channel, frozenset(excluded), mode="dynamic",
                               reduce_range=reduce_range)
    new_graph, rewrite_report = rewrite(graph, phases=[QUANTIZE_RULES_PHASE],
                                        context={"quantize": settings})
    report = QuantizeReport("dynamic uint8", per_channel, excluded=sorted(excluded),
                            rewrite=rewrite_report, reduce_range=reduce_range)
    remaining = {node.name for node in new_graph.op_nodes()}
    reasons = {a.anchor: a.detail.split(": ", 1)[-1] for a in rewrite_report.attempts
               if a.op == "FullyConnected" and a.outcome in ("guard", "declined", "rejected")}
    for node in graph.op_nodes():
        if node.op == "FullyConnected":
            if node.name in remaining:
                report.float_layers[node.name] = reasons.get(node.name, "not quantized")
            else:
                report.quantized.append(node.name)
    return new_graph, report


def resolve_exclusions(graph: Graph, exclude: Iterable[str], first_last: bool) -> set[str]:
    """Node names kept in float: those named, those of the op types named, and with
    ``first_last`` the first and last weighted layers. A name that is neither a node nor an op
    of the graph is refused (a typo would otherwise quantize what the user meant to keep)."""
    if isinstance(exclude, str):
        exclude = [exclude]
    ops = {node.op: [] for node in graph.op_nodes()}
    for node in graph.op_nodes():
        ops[node.op].append(node.name)
    excluded: set[str] = set()
    for item in exclude:
        if item in graph and not graph.node(item).is_variable:
            excluded.add(item)
        elif item in ops:
            excluded.update(ops[item])
        else:
            layers = [n.name for n in graph.op_nodes() if n.op in QUANTIZABLE_OPS][:12]
            raise GraphError(f"--exclude {item!r} names no node and no op of the graph; its "
                             f"quantizable layers include {layers}", node=item)
    if first_last:
        excluded |= first_and_last_layers(graph)
    return excluded


def first_and_last_layers(graph: Graph) -> set[str]:
    """The weighted layers reached from a graph input, and those reaching a graph output,
    without passing through another weighted layer."""
    def walk(starts: list[str], step) -> set[str]:
        found, seen, stack = set(), set(), list(starts)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            node = graph.node(name)
            if node.op in WEIGHTED_OPS and name not in starts:
                found.add(name)
                continue
            stack.extend(step(name))
        return found

    first = walk(graph.input_names, lambda n: list(graph.nx.succ[n]))
    outputs = [t.node for t in graph.outputs]
    last = {n for n in outputs if graph.node(n).op in WEIGHTED_OPS}
    last |= walk(outputs, lambda n: [p for p in graph.nx.pred[n]
                                     if not graph.node(p).is_variable])
    return first | last


def _fill_layers(report: QuantizeReport, graph: Graph, rewrite_report: Report) -> None:
    """Which quantizable layers run in int8 (every activation input dequantized, the output
    quantized), and why each of the others stayed float (the first guard that refused it)."""
    reasons: dict[str, str] = {}
    for attempt in rewrite_report.attempts:
        if attempt.outcome in ("guard", "declined", "rejected") and attempt.anchor not in reasons \
                and attempt.op in QUANTIZABLE_OPS and "quantize_layer" in attempt.detail:
            reasons[attempt.anchor] = attempt.detail.split(": ", 1)[-1]
    for node in graph.op_nodes():
        if node.op not in QUANTIZABLE_OPS:
            continue
        if graph.is_output(node.name):
            report.float_layers[node.name] = "its output is a graph output, which stays float"
        elif _runs_quantized(graph, node.name):
            report.quantized.append(node.name)
        else:
            report.float_layers[node.name] = reasons.get(node.name, "not every input or output "
                                                                    "is quantized")


def _runs_quantized(graph: Graph, name: str) -> bool:
    inputs = graph.inputs_of(name)
    readers = graph.consumers(name)
    return (any(custom_op_type(graph.node(t.node)) == "graphopt_dequantize_linear" for t in inputs)
            and bool(readers) and all(custom_op_type(graph.node(c)) == "graphopt_quantize_linear"
                                      for c, _slot in readers))


# --- the test vectors' calibration -------------------------------------------------------------

class ObservedRanges:
    """Min-max ranges of every tensor over given inputs: the calibration of the rules' test
    vectors (the real one is :func:`graphopt.quantize.calibrate`)."""

    def __init__(self, ranges: dict[str, tuple[float, float]]):
        self.ranges = ranges

    @property
    def names(self) -> set[str]:
        return set(self.ranges)

    def range(self, name: str, symmetric: bool = False) -> tuple[float, float]:
        lo, hi = self.ranges[name]
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if symmetric and lo < 0:
            peak = max(-lo, hi)
            return -peak, peak
        return lo, hi

    @classmethod
    def observe(cls, graph: Graph, inputs: dict[str, np.ndarray]) -> "ObservedRanges":
        from graphopt.runtime import MXNetModel
        model = MXNetModel.from_graph(graph)
        values = model.run(inputs, outputs="all")
        # MXNet names an output after its node; the IR keeps the name of the tensor a node
        # now computes (a conv with a BatchNorm folded in writes ``bn_output``)
        ir_names = {default_output_names(node.name, node.op, node.num_outputs)[i]:
                    graph.tensor_name(Tensor(node.name, i))
                    for node in graph.op_nodes() for i in range(node.num_outputs)}
        values = {ir_names.get(name, name): value for name, value in values.items()}
        values.update(inputs)
        return cls({name: (float(v.min()), float(v.max())) for name, v in values.items()
                    if np.issubdtype(v.dtype, np.floating)})


@register_context_factory("quantize")
def _vector_settings(graph: Graph, inputs: dict[str, np.ndarray], setting: Any) -> QuantizeOptions:
    """``context = { quantize = "uint8" }`` or ``{ quantize = { activations = "int8",
    per_channel = false, exclude = ["conv"] } }`` in a test vector."""
    setting = {"activations": setting} if isinstance(setting, str) else dict(setting)
    return QuantizeOptions(ObservedRanges.observe(graph, inputs),
                           setting.get("activations", "uint8"), setting.get("per_channel", True),
                           frozenset(setting.get("exclude", ())), setting.get("mode", "static"),
                           setting.get("reduce_range", False))
