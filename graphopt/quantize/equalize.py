"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", section 4.1): ``equalize(graph) -> (graph, report)``.

    graph, _ = graphopt.rewrite(graph)                      # BatchNorm folded first
    graph, report = graphopt.quantize.equalize(graph)       # same float function
    cal = graphopt.quantize.calibrate(graph, data)          # calibrate the equalized graph

For two convolutions (or two FullyConnected) in a row, ``conv2(f(conv1(x)))`` with ``f`` the
identity, ReLU or ReLU then pooling (max, average, sum: all commute with a positive scale),
dividing output channel i of conv1 (its filter and bias) by s_i > 0 and multiplying input
channel i of conv2 by s_i changes nothing, because ReLU is positively homogeneous:
relu(y / s) = relu(y) / s. With s_i = sqrt(r1_i / r2_i), r1_i the largest |weight| of conv1's
filter i and r2_i the largest |weight| conv2 applies to channel i, both become sqrt(r1_i r2_i):
the channels that BatchNorm folding made large and small are evened out, in conv2's filters
(which int8 quantizes one scale per filter) and in the activation between them (one scale per
tensor). The rules are ``rules/equalize.toml`` (phase ``equalize``, opt-in); a pair fires again
while its scales are off by more than :data:`BALANCED` (a conv is in two pairs, so balancing
one unbalances the other a little: the engine's requeueing iterates to the fixed point, as
Nagel's iterative scheme does).

Not equalized: pairs through ReLU6/clip (clip(y / s, 0, 6) != clip(y, 0, 6) / s: the bound
would have to scale per channel, which clip cannot), through anything else non-homogeneous,
or where the intermediate is read by another node (a residual add: its other input would have
to scale too).

Equalization must run **before** calibration: it changes the intermediate activations, so a
calibration table of the graph before it does not fit the graph after it.
"""

from __future__ import annotations

import math

import numpy as np

from graphopt.ir.graph import Graph
from graphopt.rewrite.match import Ref
from graphopt.rewrite.registry import NoRewrite, register_function, register_guard
from graphopt.rewrite.report import Report

EQUALIZE_PHASE = "equalize"
BALANCED = 1.05   # a pair whose every scale is within [1/1.05, 1.05] is left as it is


def equalize(graph: Graph) -> tuple[Graph, Report]:
    """A copy of ``graph`` with every conv -> (ReLU) -> conv pair equalized (the rules of phase
    ``equalize``) and the rewrite report. The float function is unchanged (to float32 rounding;
    the rules' test vectors and ``tests/test_quantize_equalize.py`` check it against MXNet).
    ``relu`` ops (Gluon's F.relu) come back as Activation(act_type=relu), which the rules match."""
    from graphopt.quantize.rule_functions import relu_ops_as_activation
    from graphopt.rewrite.engine import rewrite
    return rewrite(relu_ops_as_activation(graph), phases=[EQUALIZE_PHASE])


@register_guard
def equalizable_pair(first: Ref, second: Ref) -> str | None:
    """Channel i of ``first``'s output is input channel i of ``second``: two Convolutions with
    their channels on axis 1 (layout absent, NCW, NCHW or NCDHW), or two FullyConnected (output
    feature i is column i). A Convolution feeding a FullyConnected is refused: the dense layer
    reads channel x position (flatten) or the last axis, not the channels."""
    if first.op != second.op:
        return f"{first.name} ({first.op}) feeds {second.name} ({second.op}): channels do not line up"
    for layer in (first, second):
        layout = layer.attr("layout") if layer.op == "Convolution" else None
        if layout not in (None, "None") and not str(layout).startswith("NC"):
            return f"{layer.name} has layout {layout}: channels are not on axis 1"
    return None


def filter_ranges(weight: np.ndarray) -> np.ndarray:
    """r1: the largest |value| of each filter (axis 0) of a Convolution weight (O, I/g, k...)
    or FullyConnected weight (out, in)."""
    return np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)


def input_channel_ranges(weight: np.ndarray, groups: int) -> np.ndarray:
    """r2: for each input channel c of a Convolution with ``groups`` groups, the largest |value|
    any of its filters applies to c (channel c is column c mod I/g of group c div I/g)."""
    out_channels, per_group = weight.shape[0], weight.shape[1]
    grouped = np.abs(weight).reshape(groups, out_channels // groups, per_group, -1)
    return grouped.max(axis=(1, 3)).reshape(groups * per_group)


def scale_input_channels(weight: np.ndarray, groups: int, scale: np.ndarray) -> np.ndarray:
    """``weight`` with input channel c multiplied by ``scale[c]`` (the grouping as above)."""
    out_channels, per_group = weight.shape[0], weight.shape[1]
    kernel = weight.shape[2:]
    grouped = weight.reshape((groups, out_channels // groups, per_group) + kernel)
    factors = scale.reshape((groups, 1, per_group) + (1,) * len(kernel)).astype(weight.dtype)
    return (grouped * factors).reshape(weight.shape)


@register_function(returns=("first_weight", "first_bias", "second_weight"))
def equalized_pair(first: Ref, first_weight: Ref, first_bias: Ref | None, second: Ref,
                   second_weight: Ref):
    """conv1's filters and bias divided by s, conv2's input channels multiplied by s,
    s_i = sqrt(r1_i / r2_i) (1 for a channel either side leaves at zero). Declines when every
    s_i is within :data:`BALANCED` of 1: the pair is balanced (the fixed point)."""
    w1, w2 = first_weight.value, second_weight.value
    groups = int(second.attr("num_group")) if second.op == "Convolution" else 1
    if w2.shape[1] * groups != w1.shape[0]:
        raise NoRewrite(f"{second.name} reads {w2.shape[1] * groups} channels, "
                        f"{first.name} makes {w1.shape[0]}")
    r1 = filter_ranges(w1).astype(np.float64)
    r2 = input_channel_ranges(w2, groups).astype(np.float64)
    alive = (r1 > 0) & (r2 > 0)
    scale = np.ones_like(r1)
    scale[alive] = np.sqrt(r1[alive] / r2[alive])
    if np.all(np.abs(np.log(scale)) <= math.log(BALANCED)):
        raise NoRewrite("already balanced: every channel scale within "
                        f"{BALANCED:g}x of 1")
    shaped = scale.reshape((-1,) + (1,) * (w1.ndim - 1))
    new_w1 = (w1 / shaped).astype(w1.dtype)
    bias = np.zeros(w1.shape[0], w1.dtype) if first_bias is None else first_bias.value
    new_b1 = (bias / scale).astype(bias.dtype)
    return new_w1, new_b1, scale_input_channels(w2, groups, scale)
