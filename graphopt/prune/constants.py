"""Which channels of a channel group carry a constant, and which constant.

A filter that pruning zeroed does not make its channel vanish: the conv outputs its bias, the
BatchNorm after it turns that into ``beta - gamma * mean / sqrt(var + eps)``, the activation
into ``act(...)``, and that constant reaches the next layer. Deleting the channel is exact
only if the constant is folded into the next layer's bias (NNI #2130, #5095 got this wrong),
so :func:`channel_constants` follows the value of every channel through the group:

- a producer's channel is constant when its filter is all zero (its bias, or 0);
- a depthwise conv's channel is constant when its filter is zero, or when its input channel is
  constant and the conv pads nothing (or the constant is 0): zero padding of a constant
  channel is not constant at the borders;
- BatchNorm (eps, fix_gamma from the schema's defaults), elementwise ops (MXNet evaluates the
  op itself on one pixel per channel, so every activation and scalar op is MXNet's own), Concat /
  slices / Flatten / Reshape (index maps) keep a constant constant;
- pooling keeps it for max pooling, for average pooling without padding that enters the count
  (``count_include_pad`` with a pad, where a border average is not the constant) and for
  global pooling; nearest upsampling, resizing and edge/reflect padding keep it; 0 stays 0
  under any of them.

Values are float64 arrays over a tensor's channel positions, NaN where not constant.
"""

from __future__ import annotations

import math
import weakref

import mxnet as mx
import numpy as np

from graphopt.ir.graph import Graph, Tensor
from graphopt.mxnet_io.symbol_json import format_attrs
from graphopt.prune.coupling import (ChannelGroup, Producer, Through, bias_of, channel_cut,
                                     node_attr, pads_nothing, reduced_axes)

MULTIPLY_OPS = {"elemwise_mul", "broadcast_mul", "_mul_scalar"}


_ZERO_ROWS: dict[int, tuple[weakref.ref, np.ndarray]] = {}


def _rows_zero(array: np.ndarray) -> np.ndarray:
    """For each index of axis 0: is the whole slice zero. Remembered per array: parameters are
    read-only and an edit replaces them, and a drop asks again after each group (a VGG
    classifier weight is 100M values)."""
    key = id(array)
    known = _ZERO_ROWS.get(key)
    if known is not None and known[0]() is array:
        return known[1]
    result = ~np.any(array.reshape(array.shape[0], -1) != 0, axis=1)
    if not array.flags.writeable:
        if len(_ZERO_ROWS) > 4096:
            _ZERO_ROWS.clear()
        _ZERO_ROWS[key] = (weakref.ref(array), result)
    return result


def _bias(graph: Graph, name: str | None, size: int) -> np.ndarray:
    return np.zeros(size) if name is None else graph.params[name].astype(np.float64).reshape(-1)


def producer_constants(graph: Graph, producer: Producer) -> np.ndarray:
    """Output channel i is constant (its bias) when filter i is all zero."""
    weight = graph.params[producer.weight]
    if producer.op == "Deconvolution":
        groups = producer.num_group
        per_group_in = weight.shape[0] // groups
        blocks = [weight[j * per_group_in:(j + 1) * per_group_in] for j in range(groups)]
        zero = np.concatenate([_rows_zero(np.moveaxis(block, 1, 0)) for block in blocks])
    else:
        zero = _rows_zero(weight)
    bias = _bias(graph, bias_of(graph, producer.node), len(zero))
    return np.where(zero, bias, np.nan)


def _depthwise(graph: Graph, producer: Producer, data: np.ndarray) -> np.ndarray:
    """Output k filters input k // multiplier alone: its bias if its filter is zero; else
    ``c * sum(filter) + bias`` for a constant input c when no padding (or c == 0) makes the
    borders differ. A transposed depthwise conv spreads a constant unevenly unless c == 0."""
    weight = graph.params[producer.weight].astype(np.float64)
    if producer.op == "Deconvolution":   # (C_in, multiplier, ...) -> one filter per output
        weight = weight.reshape(-1, *weight.shape[2:])
    out_channels = weight.shape[0]
    multiplier = out_channels // len(data)
    bias = _bias(graph, bias_of(graph, producer.node), out_channels)
    incoming = np.repeat(data, multiplier)
    sums = weight.reshape(out_channels, -1).sum(axis=1)
    evenly = producer.op == "Convolution" and pads_nothing(graph, producer.node)
    usable = np.isfinite(incoming) & ((incoming == 0) | evenly)
    values = np.where(usable, np.nan_to_num(incoming) * sums + bias, np.nan)
    return np.where(_rows_zero(weight), bias, values)


def _batchnorm(graph: Graph, through: Through, data: np.ndarray) -> np.ndarray:
    gamma, beta, mean, var = (graph.params[name].astype(np.float64) for name, _ in through.params)
    if node_attr(graph, through.node, "fix_gamma"):
        gamma = np.ones_like(gamma)
    eps = float(node_attr(graph, through.node, "eps"))
    return (data - mean) / np.sqrt(var + eps) * gamma + beta


def _mxnet_function(op: str):
    return getattr(mx.nd, op, None) or getattr(mx.nd._internal, op)


def _elementwise(graph: Graph, group: ChannelGroup, through: Through,
                 values: dict[Tensor, np.ndarray], channels: int) -> np.ndarray:
    """MXNet's own op on one pixel per channel; NaN where an input is not constant (a product
    with a constant 0 is 0 whatever the other factor)."""
    node = graph.node(through.node)
    out_rank = len(node.outputs[0].shape)
    multiply = node.op in MULTIPLY_OPS
    arrays, known, zero = [], np.ones(channels, bool), np.zeros(channels, bool)
    for tensor in graph.inputs_of(through.node):
        producer = graph.node(tensor.node)
        if tensor in values:
            value = values[tensor]
            known &= np.isfinite(value)
            zero |= value == 0
            rank = 2 if tensor in group.flat_tensors else out_rank
            arrays.append(np.nan_to_num(value).reshape((1, channels) + (1,) * (rank - 2)))
        elif producer.is_variable and producer.kind in ("param", "aux"):
            arrays.append(graph.params[tensor.node])
        else:
            known[:] = False
    otherwise = np.where(zero, 0.0, np.nan) if multiply else np.full(channels, np.nan)
    if not known.any():
        return otherwise
    if len(arrays) == 1 and (node.op == "relu" or (node.op == "Activation" and node_attr(
            graph, through.node, "act_type") == "relu")):   # the common case, without MXNet
        return np.where(known, np.maximum(arrays[0].reshape(-1), 0.0), otherwise)
    try:
        result = _mxnet_function(node.op)(*[mx.nd.array(a, dtype="float32") for a in arrays],
                                          **format_attrs(node))
        if isinstance(result, (list, tuple)):
            result = result[0]
        result = result.asnumpy().astype(np.float64).reshape(-1)
    except (mx.MXNetError, AttributeError, TypeError, ValueError):
        return otherwise
    if result.shape != (channels,):
        return otherwise
    return np.where(known, result, otherwise)


def _spatial(graph: Graph, through: Through, data: np.ndarray) -> np.ndarray:
    """A per-channel spatial op: which constants survive it (0 always does)."""
    node = through.node
    op = graph.node(node).op
    keeps = True
    if op == "Pooling":
        pool_type = node_attr(graph, node, "pool_type")
        if node_attr(graph, node, "global_pool"):
            keeps = pool_type in ("max", "avg")
        elif pool_type == "max":
            keeps = node_attr(graph, node, "pooling_convention") in ("valid", "full")
        elif pool_type == "avg":
            keeps = node_attr(graph, node, "pooling_convention") in ("valid", "full") and (
                not node_attr(graph, node, "count_include_pad") or pads_nothing(graph, node))
        else:   # sum, lp: a border window sums fewer pixels
            keeps = False
    elif op == "Pad":
        if node_attr(graph, node, "mode") == "constant":
            constant = float(node_attr(graph, node, "constant_value") or 0.0)
            return np.where(data == constant, data, np.nan)
    if keeps:
        return data
    return np.where(data == 0, 0.0, np.nan)


INDEX_OPS = ("Concat", "SliceChannel", "slice_axis", "slice", "Flatten", "Reshape", "squeeze",
             "expand_dims", "transpose", "SwapAxis")
SPATIAL_OPS = ("Pooling", "UpSampling", "_contrib_AdaptiveAvgPooling2D",
               "_contrib_BilinearResize2D", "Pad", "slice_like")


def _index_map(graph: Graph, through: Through, values: dict[Tensor, np.ndarray]) -> list:
    """The constants of an index op's outputs, position by position (never by channel: in
    ``concat(deconv(x), x)`` one channel carries two different constants)."""
    node = graph.node(through.node)
    inputs = graph.inputs_of(through.node)

    def value(tensor: Tensor) -> np.ndarray:
        if tensor in values:
            return values[tensor]
        return np.full(graph.tensor_type(tensor).shape[1], np.nan)   # outside the group
    if node.op == "Concat":
        return [np.concatenate([value(t) for t in inputs])]
    data = value(inputs[0])
    if node.op == "SliceChannel":
        parts = node.num_outputs
        size = len(data) // parts
        return [data[i * size:(i + 1) * size] for i in range(parts)]
    if node.op in ("slice_axis", "slice"):
        where = channel_cut(graph, node.name, len(data))
        return [data if where is None else data[where[0]:where[1]]]
    return [data]   # Flatten, Reshape, squeeze, expand_dims, transpose, SwapAxis


def channel_constants(graph: Graph, group: ChannelGroup) -> dict[Tensor, np.ndarray]:
    """The constant of every channel position of every tensor of ``group`` (NaN: not
    constant), computed with the graph's current parameters. Throughs are listed in
    topological order, so each op's inputs are known when it is reached."""
    values: dict[Tensor, np.ndarray] = {}
    depthwise = {p.node: p for p in group.producers if p.depthwise}
    for producer in group.producers:
        if not producer.depthwise:
            values[Tensor(producer.node, 0)] = producer_constants(graph, producer)
    for through in group.throughs:
        if not through.outputs:
            continue
        op = graph.node(through.node).op
        if op in INDEX_OPS:
            for tensor, result in zip(through.outputs, _index_map(graph, through, values)):
                values[tensor] = result
            continue
        output = through.outputs[0]
        data = values.get(through.inputs[0]) if through.inputs else None
        if data is None:
            data = np.full(len(group.channels_of(output)), np.nan)
        if through.node in depthwise:
            result = _depthwise(graph, depthwise[through.node], data)
        elif op == "BatchNorm":
            result = _batchnorm(graph, through, data)
        elif op in SPATIAL_OPS:
            result = _spatial(graph, through, data)
        elif op == "InstanceNorm":   # a constant channel normalises to 0: beta is left
            beta = graph.params[through.params[1][0]].astype(np.float64)
            result = np.where(np.isfinite(data), beta, np.nan)
        elif op in ("mean", "max", "min"):
            result = data
        elif op == "sum":   # of a constant over the reduced axes: the constant times their size
            shape = graph.tensor_type(through.inputs[0]).shape
            result = data * math.prod(shape[a] for a in reduced_axes(graph, through.node))
        else:
            result = _elementwise(graph, group, through, values, len(group.channels_of(output)))
        values[output] = result
    return values
