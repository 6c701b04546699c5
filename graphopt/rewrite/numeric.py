"""Running a graph in MXNet on seeded inputs: the ``check="numeric"`` of the engine and the
rule test vectors both compare MXNet's outputs before and after a rewrite."""

from __future__ import annotations

import mxnet as mx
import numpy as np

from graphopt.ir.graph import Graph
from graphopt.mxnet_io.infer import to_symbol


def seeded_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform [-1, 1] floats (integers 0/1 for integer inputs) of each input's recorded shape."""
    rng = np.random.RandomState(seed)
    inputs = {}
    for node in graph.variables("input"):
        dtype = np.dtype(node.dtype or "float32")
        if dtype.kind == "f":
            inputs[node.name] = rng.uniform(-1.0, 1.0, size=node.shape).astype(dtype)
        else:
            inputs[node.name] = rng.randint(0, 2, size=node.shape).astype(dtype)
    return inputs


def run_graph(graph: Graph, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """MXNet's inference outputs of ``graph`` (labels, if any, are fed zeros)."""
    symbol = to_symbol(graph)
    shapes = {name: value.shape for name, value in inputs.items()}
    arg_shapes, _, _ = symbol.infer_shape_partial(**shapes)
    args = {}
    for name, shape in zip(symbol.list_arguments(), arg_shapes):
        if name in inputs:
            args[name] = mx.nd.array(inputs[name], dtype=inputs[name].dtype)
        elif name in graph.params:
            args[name] = mx.nd.array(graph.params[name], dtype=graph.params[name].dtype)
        else:  # a label: inference does not read it
            args[name] = mx.nd.zeros(shape)
    aux = {name: mx.nd.array(graph.params[name], dtype=graph.params[name].dtype)
           for name in symbol.list_auxiliary_states()}
    executor = symbol.bind(mx.cpu(), args=args, aux_states=aux, grad_req="null")
    return [output.asnumpy() for output in executor.forward(is_train=False)]


def relative_error(reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """max |a - b| / max |a| over all outputs (the figure tolerances are stated in)."""
    worst = 0.0
    for a, b in zip(reference, actual):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a64.shape != b64.shape:
            return float("inf")
        scale = max(float(np.max(np.abs(a64))) if a64.size else 0.0, 1e-30)
        difference = float(np.max(np.abs(a64 - b64))) if a64.size else 0.0
        worst = max(worst, difference / scale if np.isfinite(difference) else float("inf"))
    return worst
