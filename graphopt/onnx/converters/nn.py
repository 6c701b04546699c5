"""nn converters: convolution, pooling, normalisation, activations, softmax, resampling, the
loss heads and the ops that are identities at inference.

MXNet's defaults come from the op schema through ``ctx.attr`` (PITFALLS.md: they differ from
ONNX's: BatchNorm ``eps=1e-3`` and ``fix_gamma=True``, Deconvolution ``no_bias=True``, Pooling
``count_include_pad=True``). Shapes come from MXNet's inference, and nothing here writes the
batch size into the model: reshapes that involve it read it with ``0`` or ``Shape``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from onnx import TensorProto

from graphopt.ir.graph import Node, Tensor
from graphopt.onnx.context import ConvertContext, Unsupported, converter, onnx_dtype
from graphopt.onnx.converters.tensor import (input_shape, normalize_axis, output_shape, reduce,
                                             unsqueeze)

CHANNELS_FIRST = (None, "NCW", "NCHW", "NCDHW")
CHANNELS_LAST = ("NWC", "NHWC", "NDHWC")


# --- helpers ----------------------------------------------------------------------------------

def _spatial(ctx: ConvertContext, node: Node, key: str, count: int, fill: int) -> list[int]:
    """A per-spatial-axis attribute (stride, pad, dilate ...): MXNet's empty default means
    ``fill`` on every axis."""
    value = ctx.attr(node, key)
    if not value:
        return [fill] * count
    if len(value) != count:
        raise Unsupported(f"{key}={tuple(value)} does not match a {count}-D kernel")
    return [int(v) for v in value]


def _channels_first(ctx: ConvertContext, node: Node) -> None:
    layout = ctx.attr(node, "layout")
    if layout not in CHANNELS_FIRST:
        raise Unsupported(f"layout {layout} is not supported: ONNX is channels-first "
                          f"(NCW/NCHW/NCDHW), and so are MXNet's CPU kernels of this op")


def _pooled_spatial(ctx: ConvertContext, node: Node, shape: Sequence[int]) -> tuple[int, ...]:
    """The spatial sizes in a Pooling input or output ``shape`` of the node's layout."""
    return tuple(shape[1:-1] if ctx.attr(node, "layout") in CHANNELS_LAST else shape[2:])


def _dtype(ctx: ConvertContext, node: Node, slot: int = 0) -> np.dtype:
    return np.dtype(ctx.dtype(node, slot) or "float32")


def _scalar(ctx: ConvertContext, node: Node, value: float, hint: str = "scalar") -> str:
    """A scalar constant in the dtype of the node's data input."""
    return ctx.constant(np.asarray(value, dtype=_dtype(ctx, node)), hint=hint)


def _only_first_output_used(ctx: ConvertContext, node: Node) -> None:
    """Some ops also output training-time values (the batch mean and variance of the
    normalisations, rrelu's mask); at inference nothing should read those: we do not compute
    them."""
    for index in range(1, node.num_outputs):
        tensor = Tensor(node.name, index)
        if ctx.graph.consumers(tensor) or ctx.graph.is_output(tensor):
            raise Unsupported(f"output {index} (a training-time output) is read; only output 0 "
                              f"is converted")


def _along_axis(ctx: ConvertContext, node: Node, slot: int, axis: int, rank: int) -> str:
    """Input ``slot`` (a per-channel vector) shaped to broadcast along ``axis`` of a rank-``rank``
    tensor: ``(C,)`` -> ``(C, 1, ..., 1)``. Parameters are reshaped here, other values in the
    graph."""
    trailing = rank - 1 - axis
    value = ctx.param(node, slot)
    if trailing == 0:
        return ctx.input(node, slot)
    if value is not None:
        return ctx.constant(value.reshape(value.shape + (1,) * trailing),
                            hint=f"{ctx.source(node, slot).node}_bcast")
    return unsqueeze(ctx, ctx.input(node, slot), list(range(1, trailing + 1)))


def _identity(ctx: ConvertContext, node: Node) -> None:
    ctx.emit1("Identity", [ctx.input(node, 0)], ctx.output(node))


# --- convolution ------------------------------------------------------------------------------

@converter("Convolution")
def convolution(ctx: ConvertContext, node: Node) -> None:
    _channels_first(ctx, node)
    kernel = list(ctx.attr(node, "kernel"))
    count = len(kernel)
    pad = _spatial(ctx, node, "pad", count, 0)
    inputs = [ctx.input(node, 0), ctx.input(node, 1)]
    if not ctx.attr(node, "no_bias"):
        inputs.append(ctx.input(node, 2))
    ctx.emit1("Conv", inputs, ctx.output(node), kernel_shape=kernel,
             strides=_spatial(ctx, node, "stride", count, 1),
             dilations=_spatial(ctx, node, "dilate", count, 1), pads=pad + pad,
             group=ctx.attr(node, "num_group"))


def _deconvolution_padding(ctx: ConvertContext, node: Node, kernel, stride, dilate):
    """(pad, adj) as MXNet uses them; with ``target_shape`` MXNet derives both from it
    (deconvolution-inl.h ``InferPad``: total = stride*(in-1) + dilated kernel - target,
    pad = ceil(total/2), adj = total % 2)."""
    count = len(kernel)
    target = ctx.attr(node, "target_shape") or ()
    if not any(target):
        return _spatial(ctx, node, "pad", count, 0), _spatial(ctx, node, "adj", count, 0)
    spatial = input_shape(ctx, node, 0)[2:]
    pad, adj = [], []
    for size, k, s, d, t in zip(spatial, kernel, stride, dilate, target):
        total = s * (size - 1) + (k - 1) * d + 1 - t
        pad.append((total + 1) // 2)
        adj.append(total % 2)
    return pad, adj


@converter("Deconvolution")
def deconvolution(ctx: ConvertContext, node: Node) -> None:
    """ConvTranspose. MXNet crops ``pad`` on both sides and then adds ``adj`` at the end; we
    crop ``pad - adj`` at the end instead (the same values), and use ``output_padding`` only for
    what the crop cannot give back."""
    _channels_first(ctx, node)
    kernel = list(ctx.attr(node, "kernel"))
    count = len(kernel)
    stride = _spatial(ctx, node, "stride", count, 1)
    dilate = _spatial(ctx, node, "dilate", count, 1)
    pad, adj = _deconvolution_padding(ctx, node, kernel, stride, dilate)
    end = [max(p - a, 0) for p, a in zip(pad, adj)]
    output_padding = [max(a - p, 0) for p, a in zip(pad, adj)]
    inputs = [ctx.input(node, 0), ctx.input(node, 1)]
    if not ctx.attr(node, "no_bias"):
        inputs.append(ctx.input(node, 2))
    ctx.emit1("ConvTranspose", inputs, ctx.output(node), kernel_shape=kernel, strides=stride,
             dilations=dilate, pads=pad + end, group=ctx.attr(node, "num_group"),
             output_padding=output_padding if any(output_padding) else None)


@converter("FullyConnected")
def fully_connected(ctx: ConvertContext, node: Node) -> None:
    """``flatten=True``: all axes but 0 flattened, then Gemm. ``flatten=False``: applied to the
    last axis of any rank (MatMul with the transposed weight, plus the bias)."""
    data, weight = ctx.input(node, 0), ctx.input(node, 1)
    bias = [] if ctx.attr(node, "no_bias") else [ctx.input(node, 2)]
    rank = len(input_shape(ctx, node, 0))
    if rank == 2 or ctx.attr(node, "flatten"):
        if rank != 2:
            data = ctx.emit1("Flatten", [data], axis=1)
        ctx.emit1("Gemm", [data, weight, *bias], ctx.output(node), transB=1)
        return
    transposed = ctx.emit1("Transpose", [weight], perm=[1, 0])
    product = ctx.emit1("MatMul", [data, transposed], None if bias else ctx.output(node))
    if bias:
        ctx.emit1("Add", [product, bias[0]], ctx.output(node))


# --- normalisation ------------------------------------------------------------------------------

@converter("BatchNorm")
def batch_norm(ctx: ConvertContext, node: Node) -> None:
    """Inference BatchNorm with the moving statistics (``use_global_stats`` does not matter
    then). ``fix_gamma=True`` (MXNet's default) means gamma is 1 whatever is stored."""
    _only_first_output_used(ctx, node)
    rank = len(input_shape(ctx, node, 0))
    axis = normalize_axis(ctx.attr(node, "axis"), rank)
    if ctx.attr(node, "fix_gamma"):  # the stored gamma is not read: no initializer for it
        gamma = ctx.constant(np.ones(ctx.shape(node, 1), dtype=_dtype(ctx, node, 1)), hint="ones")
    else:
        gamma = ctx.input(node, 1)
    inputs = [gamma, ctx.input(node, 2), ctx.input(node, 3), ctx.input(node, 4)]
    epsilon = float(ctx.attr(node, "eps"))
    if axis == 1:
        ctx.emit1("BatchNormalization", [ctx.input(node, 0), *inputs], ctx.output(node),
                  epsilon=epsilon)
        return
    perm = [0, axis] + [a for a in range(1, rank) if a != axis]
    moved = ctx.emit1("Transpose", [ctx.input(node, 0)], perm=perm)
    normalised = ctx.emit1("BatchNormalization", [moved, *inputs], epsilon=epsilon)
    ctx.emit1("Transpose", [normalised], ctx.output(node), perm=list(np.argsort(perm)))


@converter("InstanceNorm")
def instance_norm(ctx: ConvertContext, node: Node) -> None:
    ctx.emit1("InstanceNormalization", ctx.inputs(node)[:3], ctx.output(node),
              epsilon=float(ctx.attr(node, "eps")))


@converter("LayerNorm")
def layer_norm(ctx: ConvertContext, node: Node) -> None:
    """Normalise over the one axis ``axis``. ONNX LayerNormalization (opset 17) normalises over
    every axis from ``axis`` on, so it is used only for the last axis; otherwise the formula."""
    _only_first_output_used(ctx, node)
    rank = len(input_shape(ctx, node, 0))
    axis = normalize_axis(ctx.attr(node, "axis"), rank)
    epsilon = float(ctx.attr(node, "eps"))
    if axis == rank - 1 and ctx.opset >= 17:
        ctx.emit1("LayerNormalization", ctx.inputs(node)[:3], ctx.output(node), axis=-1,
                  epsilon=epsilon)
        return
    data = ctx.input(node, 0)
    centred = ctx.emit1("Sub", [data, reduce(ctx, "ReduceMean", data, [axis], True)])
    variance = reduce(ctx, "ReduceMean", ctx.emit1("Mul", [centred, centred]), [axis], True)
    deviation = ctx.emit1("Sqrt", [ctx.emit1("Add", [variance, _scalar(ctx, node, epsilon)])])
    scaled = ctx.emit1("Mul", [ctx.emit1("Div", [centred, deviation]),
                               _along_axis(ctx, node, 1, axis, rank)])
    ctx.emit1("Add", [scaled, _along_axis(ctx, node, 2, axis, rank)], ctx.output(node))


@converter("GroupNorm")
def group_norm(ctx: ConvertContext, node: Node) -> None:
    """Normalise each group of channels: view (N, C, ...) as (N, G, rest) and instance-normalise.
    MXNet 1.9.1's gamma/beta are per group ``(G,)``; per-channel ``(C,)`` ones are applied after."""
    _only_first_output_used(ctx, node)
    shape = input_shape(ctx, node, 0)
    groups = int(ctx.attr(node, "num_groups"))
    dtype = _dtype(ctx, node)
    per_group = tuple(ctx.shape(node, 1)) == (groups,)
    scale, bias = ((ctx.input(node, 1), ctx.input(node, 2)) if per_group else
                   (ctx.constant(np.ones(groups, dtype), hint="ones"),
                    ctx.constant(np.zeros(groups, dtype), hint="zeros")))
    data = ctx.input(node, 0)
    grouped = ctx.emit1("Reshape", [data, ctx.int64s([0, groups, -1], hint="shape")])
    normalised = ctx.emit1("InstanceNormalization", [grouped, scale, bias],
                           epsilon=float(ctx.attr(node, "eps")))
    restored = ctx.emit1("Reshape", [normalised, ctx.emit1("Shape", [data])],
                         ctx.output(node) if per_group else None)
    if not per_group:
        scaled = ctx.emit1("Mul", [restored, _along_axis(ctx, node, 1, 1, len(shape))])
        ctx.emit1("Add", [scaled, _along_axis(ctx, node, 2, 1, len(shape))], ctx.output(node))


@converter("L2Normalization")
def l2_normalization(ctx: ConvertContext, node: Node) -> None:
    """x / sqrt(sum(x^2) + eps) over all axes but 0 (instance), axis 1 (channel) or axes 2..
    (spatial)."""
    rank = len(input_shape(ctx, node, 0))
    axes = {"instance": range(1, rank), "channel": [1], "spatial": range(2, rank)}[
        ctx.attr(node, "mode")]
    data = ctx.input(node, 0)
    squares = reduce(ctx, "ReduceSumSquare", data, list(axes), True)
    epsilon = _scalar(ctx, node, ctx.attr(node, "eps"))
    norm = ctx.emit1("Sqrt", [ctx.emit1("Add", [squares, epsilon])])
    ctx.emit1("Div", [data, norm], ctx.output(node))


@converter("LRN")
def lrn(ctx: ConvertContext, node: Node) -> None:
    """x / (knorm + alpha/nsize * sum of squares over nsize channels)^beta: ONNX's formula."""
    size = int(ctx.attr(node, "nsize"))
    if size % 2 == 0:
        raise Unsupported(f"nsize={size}: even windows are refused by onnxruntime and by MXNet's "
                          f"native kernel (only its oneDNN kernel accepts them)")
    ctx.emit1("LRN", [ctx.input(node, 0)], ctx.output(node), size=size,
              alpha=float(ctx.attr(node, "alpha")), beta=float(ctx.attr(node, "beta")),
              bias=float(ctx.attr(node, "knorm")))


# --- pooling ----------------------------------------------------------------------------------

class Window(NamedTuple):
    """Pooling windows: kernel, stride, symmetric pad, and the extra end padding that lowers
    the ``full`` convention."""
    kernel: list[int]
    stride: list[int]
    pad: list[int]
    extra: list[int]

    def ends(self) -> list[int]:
        return [p + e for p, e in zip(self.pad, self.extra)]

    def attrs(self) -> dict:
        """ONNX pooling attributes (floor rounding; all begins, then all ends)."""
        return {"kernel_shape": self.kernel, "strides": self.stride, "pads": self.pad + self.ends()}

    def fits_onnx(self) -> bool:
        """onnxruntime refuses pads as large as the kernel; MXNet's ``full`` convention reaches
        them when the stride exceeds the kernel, and its native kernels accept any pad."""
        return all(p < k and end < k for k, p, end in zip(self.kernel, self.pad, self.ends()))


def _window(ctx: ConvertContext, node: Node) -> Window:
    """The windows of a non-global Pooling. ``full`` (out = ceil((x+2p-k)/s)+1) becomes extra end
    padding with floor rounding, never ``ceil_mode``, which onnxruntime computes differently at
    some edges (PITFALLS.md)."""
    convention = ctx.attr(node, "pooling_convention")
    if convention == "same":
        raise Unsupported("pooling_convention='same' (MXNet 1.9.1 accepts it only for 1-D max "
                          "pooling, and its CPU shape inference fails on it)")
    kernel = [int(k) for k in ctx.attr(node, "kernel")]
    stride = _spatial(ctx, node, "stride", len(kernel), 1)
    pad = _spatial(ctx, node, "pad", len(kernel), 0)
    spatial = _pooled_spatial(ctx, node, input_shape(ctx, node, 0))
    extra = [(-(x + 2 * p - k)) % s if convention == "full" else 0
             for x, k, s, p in zip(spatial, kernel, stride, pad)]
    computed = tuple((x + 2 * p + e - k) // s + 1
                     for x, k, s, p, e in zip(spatial, kernel, stride, pad, extra))
    expected = _pooled_spatial(ctx, node, output_shape(ctx, node))
    if computed != expected:
        raise Unsupported(f"pooled size {computed} differs from MXNet's {expected}")
    return Window(kernel, stride, pad, extra)


def _global_window(ctx: ConvertContext, node: Node) -> Window:
    """``global_pool`` ignores kernel, stride and pad (the kernel may be absent)."""
    spatial = list(_pooled_spatial(ctx, node, input_shape(ctx, node, 0)))
    return Window(spatial, [1] * len(spatial), [0] * len(spatial), [0] * len(spatial))


def _pad_explicitly(ctx: ConvertContext, node: Node, data: str, window: Window,
                    fill: float) -> tuple[str, Window]:
    """``data`` padded with ``fill`` by a Pad node, and the same windows without padding."""
    leading = [0, 0]
    pads = ctx.int64s(leading + window.pad + leading + window.ends(), hint="pads")
    padded = ctx.emit1("Pad", [data, pads, _scalar(ctx, node, fill, "fill")])
    zeros = [0] * len(window.kernel)
    return padded, window._replace(pad=zeros, extra=zeros)


def _window_counts(size: int, kernel: int, stride: int, pad: int, count: int,
                   include_pad: bool) -> np.ndarray:
    """MXNet's divisors of average pooling along one axis (pool.h): each window clipped to the
    padded input, or to the input itself without ``count_include_pad``. An empty window sums
    to 0 and keeps MXNet's divisor: negative (output 0) or 0 (see :func:`_average_by_counts`)."""
    starts = np.arange(count) * stride - pad
    ends = np.minimum(starts + kernel, size + pad)
    if not include_pad:
        starts, ends = np.maximum(starts, 0), np.minimum(ends, size)
    return ends - starts


def _sum_pool(ctx: ConvertContext, node: Node, data: str, window: Window,
              output: str | None) -> str:
    """Sum over each window: an average that counts the (zero) padding, times the window size
    (with floor rounding every window lies inside the padded input, so the divisor is constant)."""
    average = ctx.emit1("AveragePool", [data], count_include_pad=1, **window.attrs())
    size = _scalar(ctx, node, float(np.prod(window.kernel)), "window")
    return ctx.emit1("Mul", [average, size], output)


def _average_pool(ctx: ConvertContext, node: Node, data: str, window: Window, output: str) -> None:
    """MXNet divides by the window clipped to the padded input (count_include_pad, the default)
    or to the input itself; the extra ``full`` padding never counts. So with both padding and
    extra padding, pad explicitly with zeros and let ONNX exclude only the extra part."""
    include = ctx.attr(node, "count_include_pad")
    include = True if include is None else bool(include)
    if not window.fits_onnx():
        _average_by_counts(ctx, node, data, window, include, output)
        return
    if include and any(window.extra) and any(window.pad):
        begin_end = [0, 0] + window.pad
        data = ctx.emit1("Pad", [data, ctx.int64s(begin_end + begin_end, hint="pads")])
        window = window._replace(pad=[0] * len(window.pad))
    counts_padding = include and not any(window.extra)
    ctx.emit1("AveragePool", [data], output, count_include_pad=int(counts_padding),
              **window.attrs())


def _average_by_counts(ctx: ConvertContext, node: Node, data: str, window: Window,
                       include_pad: bool, output: str) -> None:
    """Average pooling whose pads ONNX cannot take: the sum over zero-padded windows divided
    by MXNet's divisors, computed at export (the spatial sizes are static)."""
    spatial = _pooled_spatial(ctx, node, input_shape(ctx, node, 0))
    pooled = _pooled_spatial(ctx, node, output_shape(ctx, node))
    counts = np.ones((1, 1))
    for size, k, s, p, count in zip(spatial, window.kernel, window.stride, window.pad, pooled):
        counts = np.multiply.outer(counts, _window_counts(size, k, s, p, count, include_pad))
    if len(spatial) < 3:  # for a window of no input MXNet's 1-D/2-D kernels give 0, its 3-D 0/0
        counts[counts == 0] = 1
    padded, bare = _pad_explicitly(ctx, node, data, window, 0.0)
    total = _sum_pool(ctx, node, padded, bare, None)
    divisors = ctx.constant(counts.astype(_dtype(ctx, node)), hint="divisors")
    ctx.emit1("Div", [total, divisors], output)


def _lp_pool(ctx: ConvertContext, node: Node, data: str, window: Window, output: str) -> None:
    """MXNet's lp pooling: p=1 is the plain sum (no absolute value), p=2 the Euclidean norm,
    p=3 the signed cube root of the sum of cubes; ONNX LpPool takes absolute values."""
    power = ctx.attr(node, "p_value")
    if power == 2:
        ctx.emit1("LpPool", [data], output, p=2, **window.attrs())
    elif power == 1:
        _sum_pool(ctx, node, data, window, output)
    elif power == 3:
        cubes = ctx.emit1("Mul", [ctx.emit1("Mul", [data, data]), data])
        total = _sum_pool(ctx, node, cubes, window, None)
        root = ctx.emit1("Pow", [ctx.emit1("Abs", [total]), _scalar(ctx, node, 1.0 / 3.0)])
        ctx.emit1("Mul", [ctx.emit1("Sign", [total]), root], output)
    else:
        raise Unsupported(f"lp pooling with p_value={power} (MXNet supports 1, 2 and 3)")


@converter("Pooling")
def pooling(ctx: ConvertContext, node: Node) -> None:
    """Channels-last layouts (NWC, NHWC, NDHWC: MXNet's CPU pooling runs them, unlike its
    convolutions) are pooled channels-first between two Transposes."""
    data, output = ctx.input(node, 0), ctx.output(node)
    if ctx.attr(node, "layout") not in CHANNELS_LAST:
        _pool(ctx, node, data, output)
        return
    rank = len(input_shape(ctx, node, 0))
    data = ctx.emit1("Transpose", [data], perm=[0, rank - 1, *range(1, rank - 1)])
    pooled = ctx.fresh("pooled")
    _pool(ctx, node, data, pooled)
    ctx.emit1("Transpose", [pooled], output, perm=[0, *range(2, rank), 1])


def _pool(ctx: ConvertContext, node: Node, data: str, output: str) -> None:
    """Pooling of channels-first ``data``."""
    pool_type, is_global = ctx.attr(node, "pool_type"), ctx.attr(node, "global_pool")
    if is_global and pool_type in ("max", "avg"):
        ctx.emit1("GlobalMaxPool" if pool_type == "max" else "GlobalAveragePool", [data], output)
        return
    window = _global_window(ctx, node) if is_global else _window(ctx, node)
    if pool_type != "avg" and not window.fits_onnx():
        # MXNet's max over a window holding no input is the lowest float
        fill = np.finfo(_dtype(ctx, node)).min if pool_type == "max" else 0.0
        data, window = _pad_explicitly(ctx, node, data, window, fill)
    if pool_type == "max":
        ctx.emit1("MaxPool", [data], output, **window.attrs())
    elif pool_type == "avg":
        _average_pool(ctx, node, data, window, output)
    elif pool_type == "sum":
        _sum_pool(ctx, node, data, window, output)
    else:
        _lp_pool(ctx, node, data, window, output)


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
    """(out, size) averaging matrix of adaptive pooling: bin i spans
    [floor(i*size/out), ceil((i+1)*size/out))."""
    matrix = np.zeros((out, size), dtype=np.float64)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


@converter("_contrib_AdaptiveAvgPooling2D")
def adaptive_avg_pooling_2d(ctx: ConvertContext, node: Node) -> None:
    """An AveragePool when the output size divides the input's; otherwise the bins overlap or
    differ in size, and the average is two MatMuls with averaging matrices (rows, then columns)."""
    height, width = input_shape(ctx, node, 0)[2:]
    out_height, out_width = output_shape(ctx, node)[2:]
    data, output = ctx.input(node, 0), ctx.output(node)
    if height % out_height == 0 and width % out_width == 0:
        kernel = [height // out_height, width // out_width]
        ctx.emit1("AveragePool", [data], output, kernel_shape=kernel, strides=kernel)
        return
    dtype = _dtype(ctx, node)
    columns = ctx.constant(_adaptive_matrix(width, out_width).T.astype(dtype), hint="columns")
    rows = ctx.constant(_adaptive_matrix(height, out_height).astype(dtype), hint="rows")
    ctx.emit1("MatMul", [rows, ctx.emit1("MatMul", [data, columns])], output)


# --- activations --------------------------------------------------------------------------------

ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softrelu": "Softplus",
               "softsign": "Softsign"}


@converter("Activation")
def activation(ctx: ConvertContext, node: Node) -> None:
    ctx.emit1(ACTIVATIONS[ctx.attr(node, "act_type")], [ctx.input(node, 0)], ctx.output(node))


def _gelu(ctx: ConvertContext, node: Node, data: str, output: str) -> None:
    """The erf form 0.5 x (1 + erf(x / sqrt 2)), which is what MXNet computes."""
    erf = ctx.emit1("Erf", [ctx.emit1("Div", [data, _scalar(ctx, node, math.sqrt(2.0))])])
    half = ctx.emit1("Mul", [data, _scalar(ctx, node, 0.5)])
    ctx.emit1("Mul", [half, ctx.emit1("Add", [erf, _scalar(ctx, node, 1.0)])], output)


@converter("LeakyReLU")
def leaky_relu(ctx: ConvertContext, node: Node) -> None:
    """leaky, prelu (slope per channel, on axis 1), elu, selu, gelu, and rrelu, which at
    inference is leaky with the mean of its bounds."""
    kind = ctx.attr(node, "act_type")
    data, output = ctx.input(node, 0), ctx.output(node)
    slope = float(ctx.attr(node, "slope"))
    _only_first_output_used(ctx, node)  # rrelu's second output is its training-time mask
    if kind == "leaky":
        ctx.emit1("LeakyRelu", [data], output, alpha=slope)
    elif kind == "rrelu":
        middle = (float(ctx.attr(node, "lower_bound")) + float(ctx.attr(node, "upper_bound"))) / 2
        ctx.emit1("LeakyRelu", [data], output, alpha=middle)
    elif kind == "elu":
        ctx.emit1("Elu", [data], output, alpha=slope)
    elif kind == "selu":  # MXNet's constants are ONNX's defaults (to float precision)
        ctx.emit1("Selu", [data], output)
    elif kind == "gelu":
        _gelu(ctx, node, data, output)
    else:  # prelu: ONNX broadcasts the slope from the right; MXNet's (C,) slope is on axis 1
        rank = len(input_shape(ctx, node, 0))
        ctx.emit1("PRelu", [data, _along_axis(ctx, node, 1, 1, rank)], output)


# --- softmax ------------------------------------------------------------------------------------

def _length_mask(ctx: ConvertContext, node: Node, axis: int, rank: int) -> str:
    """True where the position along ``axis`` is below the ``length`` input (shaped like the
    data without ``axis``)."""
    size = input_shape(ctx, node, 0)[axis]
    positions = np.arange(size, dtype=np.int64).reshape((size,) + (1,) * (rank - 1 - axis))
    positions = ctx.constant(positions, hint="positions")
    length = ctx.emit1("Cast", [ctx.input(node, 1)], to=TensorProto.INT64)
    return ctx.emit1("Less", [positions, unsqueeze(ctx, length, [axis])])


@converter("softmax", "log_softmax", "softmin")
def softmax(ctx: ConvertContext, node: Node) -> None:
    """softmax(x / temperature) along ``axis`` (softmin: of -x); with ``use_length`` only the
    first ``length`` positions take part and the others are 0."""
    rank = len(input_shape(ctx, node, 0))
    axis = normalize_axis(ctx.attr(node, "axis"), rank)
    data = ctx.input(node, 0)
    if node.op == "softmin":
        data = ctx.emit1("Neg", [data])
    temperature = ctx.attr(node, "temperature")
    if temperature is not None and float(temperature) != 1.0:
        data = ctx.emit1("Div", [data, _scalar(ctx, node, float(temperature))])
    out_dtype = ctx.attr(node, "dtype")
    cast = out_dtype is not None and np.dtype(out_dtype) != _dtype(ctx, node)
    output = None if cast else ctx.output(node)
    op_type = "LogSoftmax" if node.op == "log_softmax" else "Softmax"
    if ctx.attr(node, "use_length", False):
        if node.op != "softmax":
            raise Unsupported(f"use_length for {node.op}")
        mask = _length_mask(ctx, node, axis, rank)
        masked = ctx.emit1("Where", [mask, data, _scalar(ctx, node, -np.inf, "minus_inf")])
        result = ctx.emit1("Softmax", [masked], axis=axis)
        result = ctx.emit1("Where", [mask, result, _scalar(ctx, node, 0.0, "zero")], output)
    else:
        result = ctx.emit1(op_type, [data], output, axis=axis)
    if cast:
        ctx.emit1("Cast", [result], ctx.output(node), to=onnx_dtype(out_dtype))


def _flattened_softmax(ctx: ConvertContext, node: Node) -> None:
    """Softmax over all axes but 0 at once: flatten to 2-D, softmax, restore the shape."""
    data = ctx.input(node, 0)
    if len(input_shape(ctx, node, 0)) == 2:
        ctx.emit1("Softmax", [data], ctx.output(node), axis=1)
        return
    flat = ctx.emit1("Softmax", [ctx.emit1("Flatten", [data], axis=1)], axis=1)
    ctx.emit1("Reshape", [flat, ctx.emit1("Shape", [data])], ctx.output(node))


@converter("SoftmaxOutput")
def softmax_output(ctx: ConvertContext, node: Node) -> None:
    """At inference: softmax over axis 1 of the input flattened to 2-D (MXNet's native and GPU
    kernels; its oneDNN CPU kernel takes the last axis instead when the input has more than 2
    axes); over axis 1 with ``multi_output``; over the last axis with ``preserve_shape``.
    The label is not read."""
    if ctx.attr(node, "preserve_shape"):
        ctx.emit1("Softmax", [ctx.input(node, 0)], ctx.output(node), axis=-1)
    elif ctx.attr(node, "multi_output"):
        ctx.emit1("Softmax", [ctx.input(node, 0)], ctx.output(node), axis=1)
    else:
        _flattened_softmax(ctx, node)


@converter("SoftmaxActivation")
def softmax_activation(ctx: ConvertContext, node: Node) -> None:
    """``instance``: over the last axis (MXNet views the input as 2-D, all leading axes
    merged); ``channel``: over axis 1 at each position."""
    axis = 1 if ctx.attr(node, "mode") == "channel" else -1
    ctx.emit1("Softmax", [ctx.input(node, 0)], ctx.output(node), axis=axis)


# --- identities at inference, the loss heads, Flatten, Embedding ----------------------------------

@converter("Dropout")
def dropout(ctx: ConvertContext, node: Node) -> None:
    """Identity at inference, unless ``mode='always'``, which drops at random at inference too."""
    if ctx.attr(node, "mode") == "always" and float(ctx.attr(node, "p")) > 0:
        raise Unsupported("mode='always' drops at random at inference too")
    _identity(ctx, node)


# The loss heads output their data input at inference (LogisticRegressionOutput its sigmoid);
# the label input is never read.
converter("BlockGrad", "_copy", "make_loss", "MakeLoss", "LinearRegressionOutput",
          "MAERegressionOutput", "SVMOutput")(_identity)


@converter("LogisticRegressionOutput")
def logistic_regression_output(ctx: ConvertContext, node: Node) -> None:
    ctx.emit1("Sigmoid", [ctx.input(node, 0)], ctx.output(node))


@converter("Flatten")
def flatten(ctx: ConvertContext, node: Node) -> None:
    ctx.emit1("Flatten", [ctx.input(node, 0)], ctx.output(node), axis=1)


@converter("Embedding")
def embedding(ctx: ConvertContext, node: Node) -> None:
    """Rows of the weight at the (float) indices, which MXNet clips into [0, input_dim)."""
    rows = ctx.shape(node, 1)[0]
    indices = ctx.emit1("Cast", [ctx.input(node, 0)], to=TensorProto.INT64)
    clipped = ctx.emit1("Clip", [indices, ctx.constant(np.int64(0), hint="first"),
                                 ctx.constant(np.int64(rows - 1), hint="last")])
    ctx.emit1("Gather", [ctx.input(node, 1), clipped], ctx.output(node), axis=0)


# --- resampling -----------------------------------------------------------------------------------

def _nearest(ctx: ConvertContext, node: Node, slot: int, factor: Sequence[float],
             output: str | None = None) -> str:
    """Nearest upsampling by integer factors: each pixel repeated (asymmetric + floor)."""
    scales = ctx.constant(np.asarray([1.0, 1.0, *factor], dtype=np.float32), hint="scales")
    return ctx.emit1("Resize", [ctx.input(node, slot), "", scales], output, mode="nearest",
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor")


@converter("UpSampling")
def upsampling(ctx: ConvertContext, node: Node) -> None:
    """``nearest``: every input brought to the output size and concatenated (or summed);
    ``bilinear``: MXNet's own lowering, a depthwise Deconvolution with the weight input
    (kernel 2s - s%2, stride s, pad ceil((s-1)/2))."""
    scale = int(ctx.attr(node, "scale"))
    if ctx.attr(node, "sample_type") == "bilinear":
        channels = input_shape(ctx, node, 0)[1]
        kernel = 2 * scale - scale % 2
        pad = math.ceil((scale - 1) / 2)
        ctx.emit1("ConvTranspose", [ctx.input(node, 0), ctx.input(node, 1)], ctx.output(node),
                  kernel_shape=[kernel, kernel], strides=[scale, scale], pads=[pad] * 4,
                  group=channels)
        return
    out_height, out_width = output_shape(ctx, node)[2:]
    count = ctx.num_inputs(node)
    resized = []
    for slot in range(count):
        height, width = input_shape(ctx, node, slot)[2:]
        output = ctx.output(node) if count == 1 else None
        factors = [out_height // height, out_width // width]
        resized.append(_nearest(ctx, node, slot, factors, output))
    if count > 1:
        if ctx.attr(node, "multi_input_mode") == "sum":
            ctx.emit1("Sum", resized, ctx.output(node))
        else:
            ctx.emit1("Concat", resized, ctx.output(node), axis=1)


@converter("_contrib_BilinearResize2D")
def bilinear_resize_2d(ctx: ConvertContext, node: Node) -> None:
    """Every ``mode`` (size, odd_scale, like, to_even_down ...) only decides the output size,
    which MXNet's inference already gives; the sampling is ONNX linear Resize with
    ``align_corners`` or, without it, ``pytorch_half_pixel`` (source = (dst + 0.5) * in/out - 0.5,
    clamped at 0; and 0 for an output of size 1, where MXNet's scale is 0: half_pixel would
    take the middle of the input), from the sizes."""
    data = ctx.input(node, 0)
    size = ctx.int64s(output_shape(ctx, node)[2:], hint="size")
    if ctx.opset >= 18:
        sizes, axes = size, [2, 3]
    else:  # sizes of every axis; batch and channels read at run time
        leading = ctx.emit1("Slice", [ctx.emit1("Shape", [data]), ctx.int64s([0], hint="start"),
                                      ctx.int64s([2], hint="end")])
        sizes, axes = ctx.emit1("Concat", [leading, size], axis=0), None
    mode = "align_corners" if ctx.attr(node, "align_corners") else "pytorch_half_pixel"
    ctx.emit1("Resize", [data, "", "", sizes], ctx.output(node), mode="linear",
              coordinate_transformation_mode=mode, axes=axes)


# --- recurrent layers -----------------------------------------------------------------------------

# Gate order of MXNet's fused weights -> ONNX's: LSTM i,f,c,o -> i,o,f,c; GRU r,z,n -> z,r,h.
RNN_GATES = {"lstm": ("LSTM", [0, 3, 1, 2]), "gru": ("GRU", [1, 0, 2]),
             "rnn_tanh": ("RNN", [0]), "rnn_relu": ("RNN", [0])}


def _static_value(ctx: ConvertContext, tensor: Tensor) -> np.ndarray | None:
    """The value of ``tensor`` when it is computed from parameters by reshapes and concats only
    (how Gluon feeds the fused RNN's flat parameter vector), else ``None``."""
    node = ctx.graph.node(tensor.node)
    if node.kind in ("param", "aux"):
        return ctx.graph.params[node.name]
    parts = [_static_value(ctx, t) for t in ctx.graph.inputs_of(node.name)]
    if not parts or any(p is None for p in parts):
        return None
    if node.op in ("Reshape", "reshape", "Flatten") and node.shape is not None:
        return parts[0].reshape(node.shape)
    if node.op in ("_rnn_param_concat", "Concat"):
        return np.concatenate(parts, axis=int(ctx.attr(node, "dim")))
    return None


def _rnn_blocks(layers: int, directions: int, inputs: int, hidden: int, gates: int
                ) -> tuple[list[list[list[tuple[int, int]]]], int]:
    """Where each matrix lies in MXNet's flat vector (every layer's and direction's i2h, h2h
    weight, then every i2h, h2h bias): per layer, per direction, [W, R, W bias, R bias] as
    (offset, columns) of a (gates * hidden, columns) block (a bias has 1 column); and the
    vector's length."""
    offset, blocks = 0, []
    for layer in range(layers):
        size = inputs if layer == 0 else hidden * directions
        per_direction = []
        for _ in range(directions):
            per_direction.append([(offset, size), (offset + gates * hidden * size, hidden)])
            offset += gates * hidden * (size + hidden)
        blocks.append(per_direction)
    for per_direction in blocks:
        for matrices in per_direction:
            matrices += [(offset, 1), (offset + gates * hidden, 1)]
            offset += 2 * gates * hidden
    return blocks, offset


class _StaticWeights:
    """The ONNX weights as initializers, computed now from a flat vector of parameters."""

    def __init__(self, ctx: ConvertContext, flat: np.ndarray, order: list[int], hidden: int):
        self.ctx, self.flat, self.order, self.hidden = ctx, flat.reshape(-1), order, hidden

    def block(self, offset: int, columns: int) -> np.ndarray:
        rows = len(self.order) * self.hidden
        matrix = self.flat[offset:offset + rows * columns].reshape(len(self.order), self.hidden,
                                                                     columns)
        return matrix[self.order].reshape(rows, columns)

    def layer(self, per_direction) -> tuple[str, str, str]:
        w = np.stack([self.block(*matrices[0]) for matrices in per_direction])
        r = np.stack([self.block(*matrices[1]) for matrices in per_direction])
        b = np.stack([np.concatenate([self.block(*m).reshape(-1) for m in matrices[2:]])
                      for matrices in per_direction])
        return (self.ctx.constant(w, hint="W"), self.ctx.constant(r, hint="R"),
                self.ctx.constant(b, hint="B"))


class _RuntimeWeights:
    """The ONNX weights sliced and gate-reordered in the graph from the flat vector's value
    (a graph input, as MXNet's own ONNX tests feed the fused RNN, or anything computed)."""

    def __init__(self, ctx: ConvertContext, flat: str, order: list[int], hidden: int):
        self.ctx, self.order, self.hidden = ctx, order, hidden
        self.flat = ctx.emit1("Reshape", [flat, ctx.int64s([-1], hint="shape")])

    def block(self, offset: int, columns: int) -> str:
        ctx, rows = self.ctx, len(self.order) * self.hidden
        piece = ctx.emit1("Slice", [self.flat, ctx.int64s([offset], hint="starts"),
                                    ctx.int64s([offset + rows * columns], hint="ends")])
        gates = ctx.emit1("Reshape", [piece, ctx.int64s([len(self.order), self.hidden, columns],
                                                         hint="shape")])
        ordered = ctx.emit1("Gather", [gates, ctx.int64s(self.order, hint="gates")], axis=0)
        return ctx.emit1("Reshape", [ordered, ctx.int64s([1, rows, columns], hint="shape")])

    def layer(self, per_direction) -> tuple[str, str, str]:
        ctx, rows = self.ctx, len(self.order) * self.hidden
        w, r, b = [], [], []
        for matrices in per_direction:
            w.append(self.block(*matrices[0]))
            r.append(self.block(*matrices[1]))
            biases = ctx.emit1("Concat", [self.block(*m) for m in matrices[2:]], axis=1)
            b.append(ctx.emit1("Reshape", [biases, ctx.int64s([1, 2 * rows], hint="shape")]))
        return tuple(parts[0] if len(parts) == 1 else ctx.emit1("Concat", parts, axis=0)
                     for parts in (w, r, b))


def _rnn_weights(ctx: ConvertContext, node: Node, mode: str, layers: int, directions: int,
                 hidden: int) -> list[tuple[str, str, str]]:
    """ONNX's per-layer W (D, G*H, in), R (D, G*H, H), B (D, 2*G*H) from MXNet's flat vector
    (input 1), gates reordered: initializers when the vector is computed from parameters by
    reshapes and concats (as Gluon feeds it), else slices of its value in the graph."""
    _op_type, order = RNN_GATES[mode]
    blocks, needed = _rnn_blocks(layers, directions, input_shape(ctx, node, 0)[2], hidden,
                                 len(order))
    size = int(np.prod(input_shape(ctx, node, 1)))
    if size != needed:
        raise Unsupported(f"the parameter vector has {size} values, but {layers} layer(s) of "
                          f"{mode} with state_size {hidden} need {needed}")
    flat = _static_value(ctx, ctx.source(node, 1))
    weights = (_StaticWeights(ctx, flat, order, hidden) if flat is not None
               else _RuntimeWeights(ctx, ctx.input(node, 1), order, hidden))
    return [weights.layer(per_direction) for per_direction in blocks]


# Fused-RNN attributes left out, with why. Both are cuDNN-only in MXNet 1.9.1: its CPU kernels
# ignore the clip and crash on a projection (measured), so no CPU run could check a lowering.
_CELL_CLIP = ("ONNX LSTM's clip bounds the gate inputs, MXNet's the cell state (and only on "
              "GPU: its CPU kernels ignore it)")
RNN_UNSUPPORTED = {
    "projection_size": "LSTM with a projection (LSTMP) has no ONNX LSTM form, and MXNet runs it "
                       "only on GPU",
    "lstm_state_clip_min": _CELL_CLIP,
    "lstm_state_clip_max": _CELL_CLIP,
}


def _rnn_unsupported(ctx: ConvertContext, node: Node) -> None:
    for key, reason in RNN_UNSUPPORTED.items():
        if ctx.attr(node, key) is not None:
            raise Unsupported(f"{key}={ctx.attr(node, key)}: {reason}")


@converter("RNN")
def rnn(ctx: ConvertContext, node: Node) -> None:
    """MXNet's fused RNN (layout TNC) as one ONNX LSTM/GRU/RNN per layer: weights regrouped
    and gate-reordered statically, GRU with ``linear_before_reset`` (MXNet's cuDNN-style GRU),
    layer outputs (T, D, N, H) merged back to (T, N, D*H); dropout ``p`` is off at inference.
    ``use_sequence_length`` is ONNX's ``sequence_lens``: MXNet's documented (cuDNN) semantics,
    outputs past a sequence's length 0 and the final states taken at its last step, the reverse
    direction starting there. (MXNet 1.9.1's CPU kernels ignore the lengths.)"""
    _rnn_unsupported(ctx, node)
    mode = ctx.attr(node, "mode")
    op_type, _order = RNN_GATES[mode]
    layers, hidden = int(ctx.attr(node, "num_layers")), int(ctx.attr(node, "state_size"))
    directions = 2 if ctx.attr(node, "bidirectional") else 1
    weights = _rnn_weights(ctx, node, mode, layers, directions, hidden)
    extra = {"linear_before_reset": 1} if mode == "gru" else {}
    if op_type == "RNN":
        extra = {"activations": ["Relu" if mode == "rnn_relu" else "Tanh"] * directions}
    states = [ctx.input(node, 2)] + ([ctx.input(node, 3)] if mode == "lstm" else [])
    lengths = ""
    if ctx.attr(node, "use_sequence_length"):  # the input after the states
        lengths = ctx.emit1("Cast", [ctx.input(node, 2 + len(states))], to=TensorProto.INT32)
    sequence, finals = ctx.input(node, 0), []
    for layer, (w, r, b) in enumerate(weights):
        rows = [ctx.int64s([layer * directions], hint="start"),
                ctx.int64s([(layer + 1) * directions], hint="end")]
        initial = [ctx.emit1("Slice", [state, *rows]) for state in states]
        onnx_inputs = [sequence, w, r, b, lengths, *initial]
        outputs = ctx.emit(op_type, onnx_inputs, 1 + len(states), hidden_size=hidden,
                           direction="bidirectional" if directions == 2 else "forward", **extra)
        merged = ctx.emit1("Transpose", [outputs[0]], perm=[0, 2, 1, 3])
        last = layer == len(weights) - 1
        sequence = ctx.emit1("Reshape", [merged, ctx.int64s([0, 0, -1], hint="shape")],
                             ctx.output(node) if last else None)
        finals.append(outputs[1:])
    for index in range(1, node.num_outputs):
        parts = [final[index - 1] for final in finals]
        if len(parts) == 1:
            ctx.emit1("Identity", parts, ctx.output(node, index))
        else:
            ctx.emit1("Concat", parts, ctx.output(node, index), axis=0)
