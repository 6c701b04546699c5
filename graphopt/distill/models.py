"""Teachers and Graph students as distillation needs them: loaded, with one input, and ending
in logits.

Knowledge distillation works on logits (the soft targets are softmax(logits / T)); a model
exported with its softmax head (``SoftmaxOutput``, ``softmax``...) outputs probabilities, and
softening those again would be the classic tutorial's mistake. :func:`logits_graph` reads the
logits from the input of such a head instead. A trained Graph student keeps its head: its new
weights go back into the graph as it was given (:mod:`graphopt.distill.trainable`).
"""

from __future__ import annotations

import os

from graphopt.errors import ShapeError
from graphopt.ir.graph import Graph

# ops that turn logits into (log-)probabilities over axis 1; their data input is the logits
SOFTMAX_HEADS = ("SoftmaxOutput", "Softmax", "softmax", "SoftmaxActivation", "log_softmax")

ModelSource = Graph | str | os.PathLike | tuple


def as_graph(model: ModelSource, role: str) -> Graph:
    """A :class:`Graph` from a Graph, a ``PREFIX``/``PREFIX-symbol.json`` path (params found
    beside it) or a ``(symbol_path, params_path)`` pair."""
    if isinstance(model, Graph):
        return model
    from graphopt.cli import resolve_model
    from graphopt.mxnet_io.load import load
    if isinstance(model, tuple) and len(model) == 2:
        return load(*model)
    if isinstance(model, (str, os.PathLike)):
        symbol, params = resolve_model(str(model))
        return load(symbol, params)
    raise TypeError(f"{role}: expected a graphopt Graph, a model path or a (symbol, params) pair, "
                    f"got {type(model).__name__}")


def single_input(graph: Graph, role: str) -> str:
    """The name of the graph's one input (distillation feeds one tensor to both models)."""
    names = graph.input_names
    if len(names) != 1:
        raise ShapeError(f"the {role} must have exactly one input to feed the data to; "
                         f"it has {names}", file=graph.source.get("symbol"))
    return names[0]


def logits_graph(graph: Graph, role: str) -> Graph:
    """``graph`` if its one output is logits; else a copy that outputs the input of its final
    softmax head. The graph given is never modified."""
    if len(graph.outputs) != 1:
        raise ShapeError(f"the {role} must have exactly one output (the class logits); it has "
                         f"{graph.output_names}", file=graph.source.get("symbol"))
    head = graph.node(graph.outputs[0].node)
    if head.op not in SOFTMAX_HEADS:
        return graph
    logits = graph.copy()
    logits.set_outputs([graph.inputs_of(head.name)[0]])
    logits.output_labels = []
    logits.erase_dead()
    return logits
