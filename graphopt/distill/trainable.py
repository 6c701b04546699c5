"""A graphopt Graph as a trainable Gluon block, and its trained weights back as a Graph.

A Graph student (a pruned model, say) is trained as an ``mx.gluon.SymbolBlock`` built from the
graph's own MXNet symbol (``graphopt.mxnet_io.infer.to_symbol``): every ``param`` variable
becomes a trainable Parameter and every ``aux`` variable (BatchNorm's moving mean and variance)
a Parameter without gradient that BatchNorm updates itself in training mode. The structure is
the graph's, so pruned channels stay pruned. After training, the weights are set on a copy of
the graph as it was given (its softmax head, if any, included), which ``save_mxnet`` writes.
"""

from __future__ import annotations

import warnings

import mxnet as mx
import numpy as np
from mxnet import gluon

from graphopt.distill.models import ModelSource, as_graph, logits_graph, single_input
from graphopt.ir.graph import Graph
from graphopt.mxnet_io.infer import to_symbol


class GraphStudent:
    """``GraphStudent(graph).block`` trains; ``.trained_graph()`` is the graph with its weights."""

    def __init__(self, model: ModelSource):
        self.graph: Graph = as_graph(model, "student")
        self.input_name = single_input(self.graph, "student")
        logits = logits_graph(self.graph, "student")
        with warnings.catch_warnings():  # "cannot decide type for data": it is float32 data
            warnings.simplefilter("ignore")
            self.block = gluon.SymbolBlock(to_symbol(logits), [mx.sym.var(self.input_name)])
        self.block.collect_params().load_dict(
            {name: mx.nd.array(value, dtype=value.dtype) for name, value in logits.params.items()},
            ctx=mx.cpu())

    def trained_graph(self) -> Graph:
        """A copy of the given graph holding the block's current weights and statistics."""
        graph = self.graph.copy()
        for name, parameter in self.block.collect_params().items():
            dtype = graph.params[name].dtype
            graph.set_param(name, parameter.data().asnumpy().astype(dtype, copy=False))
        return graph


def block_to_graph(block: gluon.HybridBlock, input_shape: tuple[int, ...], name: str) -> Graph:
    """A Gluon student as a Graph (exported the way users export, then loaded)."""
    from graphopt.mxnet_io.block import from_block
    return from_block(block, inputs={"data": (1, *input_shape)}, name=name)


def snapshot(block: gluon.Block) -> dict[str, np.ndarray]:
    """Copies of every parameter and running statistic of ``block`` (a checkpoint in memory)."""
    return {name: parameter.data().asnumpy().copy()
            for name, parameter in block.collect_params().items()}


def restore(block: gluon.Block, values: dict[str, np.ndarray]) -> None:
    for name, parameter in block.collect_params().items():
        parameter.set_data(mx.nd.array(values[name], dtype=values[name].dtype))
