"""Legacy and variant spellings of nn ops, lowered through the converter of the modern op.

Old checkpoints (the 2016-era model zoo, Inception-BN) use ``Convolution_v1``, ``Pooling_v1`` and
``BatchNorm_v1``; models trained on several GPUs keep ``_contrib_SyncBatchNorm``; oneDNN-fused
exports have ``_contrib_BatchNormWithReLU``. At inference each, except ``Pooling_v1``, computes
what its modern op computes with the same attributes. The node is handed to the modern converter
with every attribute explicit, taking the defaults of the *variant's* own schema, so a default
the two ops might not share can never leak in from the modern op.

``Pooling_v1`` is not the modern Pooling: it pads with zeros for every pool type (a max can
be 0 at a padded border), and its windows are clipped to the padded input, an average always
dividing by the full kernel size. It has its own lowering.
"""

from __future__ import annotations

import dataclasses

from graphopt.ir.graph import Node
from graphopt.onnx.context import CONVERTERS, ConvertContext, Unsupported, converter
from graphopt.onnx.converters.tensor import input_shape, output_shape, typed
from graphopt.schema import mxnet_schema

MODERN = {
    "Convolution_v1": "Convolution",
    "BatchNorm_v1": "BatchNorm",
    "_contrib_SyncBatchNorm": "BatchNorm",
    "_contrib_BatchNormWithReLU": "BatchNorm",
}


def as_modern(node: Node) -> Node:
    """A view of ``node`` as its modern op, with the variant's defaults made explicit (attributes
    the modern op does not have, such as SyncBatchNorm's ``key``, are dropped)."""
    variant, modern = mxnet_schema()[node.op], mxnet_schema()[MODERN[node.op]]
    attrs = {name: spec.default for name, spec in variant.attrs.items()
             if spec.has_default and name in modern.attrs}
    attrs.update({k: v for k, v in node.attrs.items() if k in modern.attrs})
    return dataclasses.replace(node, op=MODERN[node.op], attrs=attrs)


@converter("Convolution_v1", "BatchNorm_v1", "_contrib_SyncBatchNorm")
def legacy(ctx: ConvertContext, node: Node) -> None:
    CONVERTERS[MODERN[node.op]](ctx, as_modern(node))


@converter("Pooling_v1")
def pooling_v1(ctx: ConvertContext, node: Node) -> None:
    """MXNet computes ``pool(zero_pad(x, pad), kernel, stride)`` over windows clipped to the
    padded input (``pooling_convention="full"`` adds windows running past its end), and divides
    an average by ``kernel_h * kernel_w``. In ONNX: an explicit zero Pad, then MaxPool with the
    overhang as (ignored) end padding, or AveragePool over the overhang padded with zeros too
    (times the kernel size for ``sum``)."""
    kind, dtype, output = ctx.attr(node, "pool_type"), ctx.dtype(node, 0), ctx.output(node)
    kernel, stride, pad, overhang = _window_v1(ctx, node)
    zeros_after = list(pad) if kind == "max" else [p + o for p, o in zip(pad, overhang)]
    data = ctx.input(node, 0)
    if any(pad) or any(zeros_after):
        data = ctx.emit1("Pad", [data, ctx.int64s([0, 0, *pad, 0, 0, *zeros_after], hint="pads"),
                                 typed(ctx, 0, dtype)], mode="constant")
    window = {"kernel_shape": list(kernel), "strides": list(stride)}
    if kind == "max":
        ctx.emit1("MaxPool", [data], output, pads=[0, 0, *overhang], **window)
    elif kind == "avg":
        ctx.emit1("AveragePool", [data], output, **window)
    else:
        average = ctx.emit1("AveragePool", [data], **window)
        ctx.emit1("Mul", [average, typed(ctx, kernel[0] * kernel[1], dtype)], output)


def _window_v1(ctx: ConvertContext, node: Node) -> tuple[tuple, tuple, tuple, list[int]]:
    """(kernel, stride, pad, overhang): ``overhang`` is how far the last window runs past the
    padded input. ``global_pool`` ignores kernel, stride and pad, as MXNet does."""
    shape = input_shape(ctx, node, 0)
    if len(shape) != 4:
        raise Unsupported("Pooling_v1 runs 2-D (NCHW) pooling only")
    if ctx.attr(node, "global_pool"):
        kernel, stride, pad = shape[2:], (1, 1), (0, 0)
    else:
        kernel = ctx.attr(node, "kernel")
        stride, pad = ctx.attr(node, "stride") or (1, 1), ctx.attr(node, "pad") or (0, 0)
    padded = [size + 2 * p for size, p in zip(shape[2:], pad)]
    overhang = [max(0, (out - 1) * s + k - size)
                for out, s, k, size in zip(output_shape(ctx, node)[2:], stride, kernel, padded)]
    return kernel, stride, pad, overhang


@converter("_contrib_BatchNormWithReLU")
def batch_norm_with_relu(ctx: ConvertContext, node: Node) -> None:
    """BatchNorm followed by ReLU in one node (what oneDNN fusion writes)."""
    normalised = ctx.fresh("batchnorm")
    modern = as_modern(node)
    renamed = _OutputRenamed(ctx, node, normalised)
    CONVERTERS["BatchNorm"](renamed, modern)
    ctx.emit1("Relu", [normalised], ctx.output(node))


class _OutputRenamed:
    """The context, except that ``output(node)`` is another name: lets a converter's result be
    post-processed (here: BatchNorm, then ReLU) without copying the converter."""

    def __init__(self, ctx: ConvertContext, node: Node, name: str):
        self._ctx, self._node, self._name = ctx, node, name

    def output(self, node: Node, index: int = 0) -> str:
        return self._name if node.name == self._node.name and index == 0 else self._ctx.output(node, index)

    def __getattr__(self, attribute):
        return getattr(self._ctx, attribute)
