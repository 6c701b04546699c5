"""Legacy and variant spellings of nn ops, lowered through the converter of the modern op.

Old checkpoints (the 2016-era model zoo, Inception-BN) use ``Convolution_v1``, ``Pooling_v1`` and
``BatchNorm_v1``; models trained on several GPUs keep ``_contrib_SyncBatchNorm``; oneDNN-fused
exports have ``_contrib_BatchNormWithReLU``. At inference each computes what its modern op computes
with the same attributes. The node is handed to the modern converter with every attribute
explicit, taking the defaults of the *variant's* own schema, so a default the two ops might not
share can never leak in from the modern op.
"""

from __future__ import annotations

import dataclasses

from graphopt.ir.graph import Node
from graphopt.onnx.context import CONVERTERS, ConvertContext, converter
from graphopt.schema import mxnet_schema

MODERN = {
    "Convolution_v1": "Convolution",
    "Pooling_v1": "Pooling",
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


@converter("Convolution_v1", "Pooling_v1", "BatchNorm_v1", "_contrib_SyncBatchNorm")
def legacy(ctx: ConvertContext, node: Node) -> None:
    CONVERTERS[MODERN[node.op]](ctx, as_modern(node))


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
