"""Running a graph in MXNet on seeded inputs: the ``check="numeric"`` of the engine and the
rule test vectors both compare MXNet's outputs before and after a rewrite."""

from __future__ import annotations

import numpy as np

from graphopt.compare import relative_error as tensor_relative_error
from graphopt.ir.graph import Graph
from graphopt.runtime import MXNetModel, random_input


def seeded_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded value of each input's recorded shape and dtype (see ``runtime.random_input``)."""
    rng = np.random.RandomState(seed)
    return {node.name: random_input(graph, node.name, node.shape, np.dtype(node.dtype or "float32"), rng)
            for node in graph.variables("input")}


def run_graph(graph: Graph, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """MXNet's inference outputs of ``graph``, as MXNet runs it by default (fused), labels fed
    zeros."""
    return MXNetModel.from_graph(graph).forward(inputs, fuse=True)


def relative_error(reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """The worst ``max |a - b| / max |a|`` over all outputs."""
    return max((tensor_relative_error(a, b) for a, b in zip(reference, actual)), default=0.0)
