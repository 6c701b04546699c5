"""Ops whose outputs depend only on the *shapes* of their inputs, never on their values.

SSD's ``_contrib_MultiBoxPrior`` computes its anchor boxes from the feature map's height and
width; ``_linspace`` from its attributes alone. ONNX has no such ops, but with the shapes static
their outputs are constants: MXNet itself computes them at export time (so the anchors are
MXNet's to the bit) and they become initializers. When the batch axis is dynamic, the op is run
at a second batch size as well, and an output that changes with it is refused, with the reason.
"""

from __future__ import annotations

import json

import mxnet as mx
import numpy as np

from graphopt.ir.graph import Node
from graphopt.mxnet_io.symbol_json import MXNET_VERSION, format_attrs
from graphopt.onnx.context import ConvertContext, Unsupported, converter

SHAPE_ONLY_OPS = ("_contrib_MultiBoxPrior", "_linspace")


def evaluate_in_mxnet(node: Node, input_shapes: list[tuple[int, ...]],
                      input_dtypes: list[str], num_outputs: int) -> list[np.ndarray]:
    """Run the single op ``node`` in MXNet on zeros of ``input_shapes``."""
    variables = [{"op": "null", "name": f"input{i}", "inputs": []} for i in range(len(input_shapes))]
    op_node = {"op": node.op, "name": node.name, "attrs": format_attrs(node),
               "inputs": [[i, 0, 0] for i in range(len(input_shapes))]}
    position = len(variables)
    symbol = mx.sym.load_json(json.dumps({
        "nodes": variables + [op_node], "arg_nodes": list(range(len(variables))),
        "heads": [[position, k, 0] for k in range(num_outputs)],
        "attrs": {"mxnet_version": ["int", MXNET_VERSION]}}))  # (else MXNet "upgrades" it)
    feeds = {f"input{i}": mx.nd.zeros(shape, dtype=dtype)
             for i, (shape, dtype) in enumerate(zip(input_shapes, input_dtypes))}
    executor = symbol.bind(mx.cpu(), feeds, grad_req="null")
    return [output.asnumpy() for output in executor.forward(is_train=False)]


@converter(*SHAPE_ONLY_OPS)
def shape_only(ctx: ConvertContext, node: Node) -> None:
    count = ctx.num_inputs(node)
    shapes = [ctx.shape(node, slot) for slot in range(count)]
    dtypes = [ctx.dtype(node, slot) for slot in range(count)]
    if any(shape is None for shape in shapes):
        raise Unsupported("its output is computed from input shapes, which are unknown")
    outputs = evaluate_in_mxnet(node, shapes, dtypes, node.num_outputs)
    if ctx.dynamic_batch and shapes:
        other = [(2 * s[0],) + tuple(s[1:]) if s else s for s in shapes]
        again = evaluate_in_mxnet(node, other, dtypes, node.num_outputs)
        if any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(outputs, again)):
            raise Unsupported("its output changes with the batch size; export with "
                              "dynamic_batch=False")
    for index, value in enumerate(outputs):
        constant = ctx.constant(value, hint="value")
        ctx.emit1("Identity", [constant], ctx.output(node, index))
