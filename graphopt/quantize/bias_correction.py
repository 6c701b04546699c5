"""Bias correction of a quantized graph: fold the mean output shift that rounding the weights
causes back into each layer's int32 bias (Nagel et al. 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction", section 4.2, with the input means measured on the
calibration data rather than predicted from BatchNorm statistics).

    qgraph, report = graphopt.quantize.quantize(graph, calibration)
    qgraph, bias_report = graphopt.quantize.correct_bias(qgraph, graph, calibration_data)

Why: rounding a layer's weights W to Wq adds (Wq - W) x to its output. Its mean over the data,
(Wq - W) E[x], is not zero: inputs after a ReLU have a large positive mean, and the rounding
errors of one filter do not cancel over its input channels (a 1x1 conv has no spatial taps
whose errors could cancel, see ``qparams.round_keeping_kernel_sums``). The shift is the same
on every input, so it adds up coherently through the network. Measured with ``benchmarks/
bench_quantize.py``'s data (32 seeded normal images, weights only quantized, per channel):
resnet50_v1 33.3 dB -> 42.8 dB output SQNR with the shift removed.

What is subtracted, per layer and output channel: the mean over the calibration samples and
the output positions of ``layer(E[x], Wq - W)`` without bias, where E[x] is the mean input of
one sample (per channel *and* position). MXNet runs the layer itself on that mean input, so
zero padding at the borders, strides, groups and layouts are exactly those of the layer, and by
linearity the result is the mean of the weights' error on the data. The correction is rounded
to the bias's int32 grid (input scale x weight scale): the int8 graph keeps its structure, the
fused int8 kernels are unchanged.

Only layers that run in int8 are touched (an int8 weight and an int32 bias behind
DequantizeLinear); a quantized layer without a bias is reported, not given one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mxnet as mx
import numpy as np

from graphopt.ir.graph import Graph, Tensor, default_output_names
from graphopt.quantize.ops import dequantize_linear, is_dequantize, node_axis

CORRECTED_OPS = ("Convolution", "FullyConnected", "Deconvolution")
DEFAULT_BATCH_SIZE = 8   # samples per MXNet run: bounds the memory of the layers' inputs
INT32 = np.iinfo(np.int32)


@dataclass
class BiasCorrectionReport:
    """Per corrected layer the largest shift removed, in units of its bias's int32 step
    (0 means the rounding was already unbiased); per layer left alone, why."""
    corrected: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"corrected": dict(self.corrected), "skipped": dict(self.skipped),
                "samples": self.samples}


def correct_bias(qgraph: Graph, float_graph: Graph, data: Any, *, num_samples: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 means: tuple[dict[str, np.ndarray], int] | None = None
                 ) -> tuple[Graph, BiasCorrectionReport]:
    """A copy of ``qgraph`` (made by :func:`graphopt.quantize.quantize` from ``float_graph``)
    whose int8 layers' int32 biases no longer carry the mean error of their rounded weights on
    ``data`` (the calibration data, in any form :func:`graphopt.quantize.calibrate` takes; at
    most ``num_samples`` of it). ``float_graph`` gives the float weights and is run once over
    the data; neither graph is changed. ``means``: :func:`input_means` of ``float_graph`` over
    ``data`` for (at least) these layers, when the caller corrects many models of one float graph
    (the float fallback's steps) and runs it once."""
    report = BiasCorrectionReport()
    layers = _quantized_layers(qgraph, float_graph, report)
    if means is None or not set(layers) <= set(means[0]):
        means = input_means(float_graph, data, layers, batch_size, num_samples)
    means, report.samples = means
    new_graph = qgraph.copy()
    for layer, (weight_q, bias_q, bias_scale, float_weight) in layers.items():
        shift = mean_output_shift(_as_written(float_graph.node(layer)), means[layer],
                                   weight_q - float_weight)
        scale = bias_scale.astype(np.float64)
        steps = np.where(scale > 0, np.rint(shift / np.where(scale > 0, scale, 1.0)), 0.0)
        corrected = np.clip(qgraph.param(bias_q).astype(np.int64) - steps, INT32.min, INT32.max)
        new_graph.set_param(bias_q, corrected.astype(np.int32))
        report.corrected[layer] = float(np.abs(steps).max(initial=0.0))
    return new_graph, report


def input_means(graph: Graph, data: Any, layers, batch_size: int = DEFAULT_BATCH_SIZE,
                num_samples: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """``{layer: mean of its data input over the samples}`` (one sample's shape) and the
    number of samples, from one MXNet run of ``graph`` over ``data``."""
    from graphopt.quantize.data import input_batches
    from graphopt.runtime import MXNetModel
    tensors = {layer: _mxnet_name(graph, graph.inputs_of(layer)[0]) for layer in layers}
    wanted = sorted(set(tensors.values()))
    sums: dict[str, np.ndarray] = {}
    samples = 0
    if not wanted:
        return {}, 0
    model = MXNetModel.from_graph(graph)
    for batch in input_batches(graph, data, batch_size, num_samples):
        values = model.run(batch, outputs=wanted)
        for name, value in values.items():
            total = value.astype(np.float64).sum(axis=0)
            sums[name] = total if name not in sums else sums[name] + total
        samples += len(next(iter(batch.values())))
    return {layer: (sums[name] / samples).astype(np.float32)
            for layer, name in tensors.items()}, samples


def _mxnet_name(graph: Graph, tensor: Tensor) -> str:
    node = graph.node(tensor.node)
    return default_output_names(node.name, node.op, node.num_outputs)[tensor.index]


def _quantized_layers(qgraph: Graph, float_graph: Graph, report: BiasCorrectionReport
                      ) -> dict[str, tuple[np.ndarray, str, np.ndarray, np.ndarray]]:
    """``{layer: (dequantized int8 weight, int32 bias parameter, bias scale, float weight)}``
    for the layers of ``qgraph`` that run in int8 with a bias."""
    found = {}
    for node in qgraph.op_nodes():
        if node.op not in CORRECTED_OPS:
            continue
        inputs = qgraph.inputs_of(node.name)
        weight_node = qgraph.node(inputs[1].node) if len(inputs) > 1 else None
        if weight_node is None or not is_dequantize(weight_node):
            continue       # a float layer: nothing to correct, quantize()'s report says why
        if len(inputs) < 3 or not is_dequantize(qgraph.node(inputs[2].node)):
            report.skipped[node.name] = "no int32 bias to correct"
            continue
        if node.name not in float_graph or float_graph.node(node.name).op != node.op:
            report.skipped[node.name] = "no layer of that name in the float graph"
            continue
        float_weight_node = float_graph.inputs_of(node.name)[1].node
        if not float_graph.node(float_weight_node).is_variable \
                or float_weight_node not in float_graph.params:
            report.skipped[node.name] = "its float weight is not a parameter"
            continue
        weight_q = _dequantized_param(qgraph, weight_node.name)
        bias_node = inputs[2].node
        bias_inputs = qgraph.inputs_of(bias_node)
        bias_q = bias_inputs[0].node
        if bias_q not in qgraph.params or qgraph.params[bias_q].dtype != np.int32:
            report.skipped[node.name] = "its bias is not an int32 parameter"
            continue
        bias_scale = np.broadcast_to(qgraph.param(bias_inputs[1].node),
                                     qgraph.params[bias_q].shape)
        found[node.name] = (weight_q, bias_q, bias_scale, float_graph.param(float_weight_node))
    return found


def _dequantized_param(graph: Graph, dequantize: str) -> np.ndarray:
    q, scale, zero_point = (graph.param(t.node) for t in graph.inputs_of(dequantize)[:3])
    return dequantize_linear(q, scale, zero_point, node_axis(graph.node(dequantize)))


def _as_written(node):
    """``node`` with ``raw_attrs`` holding its current attributes as MXNet text: the loaded
    text is stale once a rewrite changed an attribute (a pruned conv's ``num_filter``)."""
    from dataclasses import replace
    from graphopt.mxnet_io.symbol_json import format_attrs
    return replace(node, raw_attrs=format_attrs(node))


def mean_output_shift(layer, mean_input: np.ndarray, weight_error: np.ndarray) -> np.ndarray:
    """Per output channel, the mean over positions of ``layer(mean_input, weight_error)``
    without bias, computed by MXNet's own op with the layer's attributes (``raw_attrs``: as
    MXNet text; see :func:`_as_written` for a node a rewrite changed)."""
    attrs = {key: value for key, value in layer.raw_attrs.items()
             if key != "no_bias" and not key.startswith("__")}
    operator = getattr(mx.nd, layer.op)
    output = operator(data=mx.nd.array(mean_input[None]), weight=mx.nd.array(weight_error),
                      no_bias=True, **attrs).asnumpy()
    channel_axis = _channel_axis(layer, output.ndim)
    others = tuple(axis for axis in range(output.ndim) if axis != channel_axis)
    return output.mean(axis=others, dtype=np.float64)


def _channel_axis(layer, rank: int) -> int:
    if layer.op == "FullyConnected":
        return rank - 1
    layout = str(layer.raw_attrs.get("layout", "None"))
    return rank - 1 if layout.startswith("N") and layout.endswith("C") else 1
