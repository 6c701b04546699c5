"""graphopt's quantize ops (``Custom`` with op_type ``graphopt_*``, see graphopt.quantize.ops)
-> ONNX QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear / MatMulInteger, one to one.

A per-tensor scale and zero point (shape (1,) in the IR, where MXNet has no 0-d arrays) are
written as ONNX scalars, which is what per-tensor means to QuantizeLinear; per-channel ones stay
1-D with the node's ``axis`` (opset >= 13, which graphopt's minimum opset already is). Other
``Custom`` ops (a user's Python op) have no ONNX form and are refused.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from graphopt.ir.graph import Node
from graphopt.onnx.context import ConvertContext, Unsupported, converter
from graphopt.ir.graph import Tensor
from graphopt.quantize.ops import DEQUANTIZE, DYNAMIC_QUANTIZE, MATMUL_INTEGER, QUANTIZE, node_axis


def _scale_and_zero_point(ctx: ConvertContext, node: Node, axis: int | None) -> list[str]:
    if axis is not None:
        return [ctx.input(node, 1), ctx.input(node, 2)]
    values = [ctx.param(node, slot) for slot in (1, 2)]
    if any(v is None for v in values):    # computed at run time (dynamic quantization): (1,)
        shape = ctx.int64s([], hint="scalar_shape")
        return [ctx.emit1("Reshape", [ctx.input(node, slot), shape]) for slot in (1, 2)]
    # one initializer per parameter, shared by the pair that reads it but by no other pair:
    # onnxruntime's int8 -> uint8 activation conversion rewrites a zero point in place and
    # skips a pair whose zero point another pair also reads (ctx.constant would share equal ones)
    names = []
    for slot, value in zip((1, 2), values):
        name = f"{ctx.source(node, slot).node}__scalar"
        if name not in ctx.initializers:
            ctx.initializers[name] = numpy_helper.from_array(np.asarray(value).reshape(()), name)
        names.append(name)
    return names


def _linear(ctx: ConvertContext, node: Node, op_type: str) -> None:
    axis = node_axis(node)
    rank = len(ctx.shape(node, 0) or ())
    if axis is not None:
        axis = axis % rank if rank else axis
    inputs = [ctx.input(node, 0), *_scale_and_zero_point(ctx, node, axis)]
    ctx.emit(op_type, inputs, [ctx.output(node)], axis=axis)


@converter("Custom")
def custom(ctx: ConvertContext, node: Node) -> None:
    op_type = node.attrs.get("op_type")
    if op_type == QUANTIZE:
        _linear(ctx, node, "QuantizeLinear")
    elif op_type == DEQUANTIZE:
        _linear(ctx, node, "DequantizeLinear")
    elif op_type == DYNAMIC_QUANTIZE:
        # ONNX's scale and zero point are scalars where the IR's are (1,): readers are given
        # the scalars (what onnxruntime's DynamicQuantizeMatMul fusion looks for); the (1,)
        # values are written too, under the IR's names
        outputs = [ctx.output(node, i) for i in range(3)]
        scalars = [ctx.fresh("scale"), ctx.fresh("zero_point")]
        ctx.emit("DynamicQuantizeLinear", [ctx.input(node, 0)], [outputs[0], *scalars])
        for index, scalar in enumerate(scalars, start=1):
            ctx.emit1("Reshape", [scalar, ctx.int64s([1])], outputs[index])
            ctx.alias(Tensor(node.name, index), scalar)
    elif op_type == MATMUL_INTEGER:
        zero_points = [ctx.input(node, 2), ctx.input(node, 3)]
        for i, slot in enumerate((2, 3)):
            value = ctx.param(node, slot)
            if value is not None and value.size == 1:
                zero_points[i] = ctx.constant(value.reshape(()), hint="zero_point")
        ctx.emit("MatMulInteger", [ctx.input(node, 0), ctx.input(node, 1), *zero_points],
                 [ctx.output(node)])
    else:
        raise Unsupported(f"Custom op {op_type!r} is a Python op with no ONNX form")
