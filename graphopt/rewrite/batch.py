"""The shapes a tensor takes at other batch sizes, for rewrites that must hold at every batch.

A model is loaded at one batch size, but it is run (and exported with a dynamic batch) at
others. A rewrite justified by the loaded shapes alone can be wrong at another batch: a
``Reshape(x, shape=(6, -1))`` of a ``(6, 4)`` tensor gives its input back at batch 6, but turns
the ``(3, 4)`` of batch 3 into ``(6, 2)``. Which axes follow the batch is MXNet's to say: its
shape inference is run once more over the whole graph with axis 0 of every input doubled (as
the ONNX export does for a dynamic batch), and an axis that changed follows the batch.
"""

from __future__ import annotations

import weakref

from graphopt.ir.graph import Graph, Tensor

# per graph: tensor -> (its shape when the analysis ran, its shape at twice the batch);
# None when MXNet cannot infer the graph at twice the batch
_ANALYSES: "weakref.WeakKeyDictionary[Graph, dict | None]" = weakref.WeakKeyDictionary()


def _shapes_at_twice_the_batch(graph: Graph) -> dict[Tensor, tuple] | None:
    from graphopt.mxnet_io.infer import shapes_at_twice_the_batch  # MXNet's symbol machinery

    if any(not node.shape for node in graph.variables("input")):
        return None
    twice = shapes_at_twice_the_batch(graph)
    if twice is None:
        return None  # the model does not run at another batch size (or axis 0 is no batch)
    return {tensor: (graph.tensor_type(tensor).shape, shape) for tensor, shape in twice.items()}


def shapes_at_other_batches(graph: Graph, tensor: Tensor) -> list[tuple[int, ...]] | None:
    """``tensor``'s shape at twice and three times the loaded batch size (equal to its shape for
    a tensor that does not follow the batch), or ``None`` when that is not known: the model
    does not run at twice its batch size, or ``tensor`` is newer than the analysis.

    The analysis runs once per graph, at the first question, and is kept while the graph lives.
    Rewrites keep the shapes of the tensors they leave at every batch (that is what this module
    is for), so answers for older tensors stay right; a tensor whose shape changed since is
    treated as unknown."""
    if graph not in _ANALYSES:
        _ANALYSES[graph] = _shapes_at_twice_the_batch(graph)
    analysis = _ANALYSES[graph]
    shape = graph.tensor_type(tensor).shape
    if analysis is None or shape is None or tensor not in analysis:
        return None
    then, twice = analysis[tensor]
    if then != shape or twice is None or len(twice) != len(shape):
        return None
    # an axis that follows the batch is k * batch, so at three times the batch it grows by
    # twice what it grew by at twice the batch
    thrice = tuple(size + 2 * (doubled - size) for size, doubled in zip(shape, twice))
    return [tuple(twice), thrice]


def shapes_with_every_axis_varied(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Stand-ins for the shapes at other batch sizes when it is not known which axes follow the
    batch: every axis doubled, then tripled (any axis might)."""
    return [tuple(2 * size for size in shape), tuple(3 * size for size in shape)]
