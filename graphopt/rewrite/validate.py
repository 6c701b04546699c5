"""Validation of the region a rewrite touched, in time proportional to that region.

Re-validating the whole graph after each rewrite would make a rewrite pass O(n^2) (issue 4
wants time per node flat on 100k-block chains), so the engine validates locally:

- **Acyclic**: :class:`TopologicalIndex` keeps a number per node that grows along every edge.
  A rewrite places its new nodes between their producers and consumers and then only checks the
  edges it touched; only if one points backwards does it fall back to a full topological sort,
  which either finds the cycle or renumbers the graph.
- **Slots filled**: the input slots of every touched op are 0..n-1.
- **Shapes**: each touched op is re-inferred with MXNet's own inference on that op alone
  (:class:`LocalShapeInference`, memoised on op, attributes and input types, so a chain of
  identical blocks costs one MXNet call). A node whose output type changes passes the change on
  to its consumers, which are re-inferred in turn.
"""

from __future__ import annotations

import functools
import heapq
import json
import math
from typing import Any, Iterable

import mxnet as mx
import numpy as np

from graphopt.errors import GraphError
from graphopt.ir.graph import Graph, TensorType
from graphopt.mxnet_io.infer import first_error_line, known_shape
from graphopt.mxnet_io.symbol_json import format_attrs
from graphopt.rewrite.match import inputs_in_slot_order


class TopologicalIndex:
    """A number per node, smaller than the numbers of its consumers."""

    def __init__(self, graph: Graph, order: list[str] | None = None):
        self.graph = graph
        self.rebuilds = 0
        self.rebuild(order)

    def rebuild(self, order: list[str] | None = None) -> None:
        order = order if order is not None else self.graph.topological_order()
        self.position = {name: float(i) for i, name in enumerate(order)}
        self.rebuilds += 1

    def place(self, new_nodes: Iterable[str], touched: Iterable[str]) -> str | None:
        """Number the ``new_nodes`` and check the edges of ``touched`` nodes. Returns ``None``,
        or the description of the cycle the rewrite made."""
        graph, position = self.graph, self.position
        new = [n for n in dict.fromkeys(new_nodes) if n in graph]
        new_set = set(new)
        order = _local_order(graph, new, new_set)
        if order is None:
            return self._full_check()
        upper: dict[str, float] = {}
        for name in reversed(order):   # the smallest number among old consumers downstream
            bound = math.inf
            for consumer in graph.nx.succ[name]:
                bound = min(bound, upper[consumer] if consumer in new_set else position[consumer])
            upper[name] = bound
        for name in order:
            lower = max((position[p] for p in graph.nx.pred[name]), default=-math.inf)
            high = upper[name]
            if lower == -math.inf:
                value = 0.0 if high == math.inf else high - 1.0
            elif high == math.inf:
                value = lower + 1.0
            else:
                value = (lower + high) / 2
            if not lower < value < high:
                return self._full_check()
            position[name] = value
        for name in set(touched) | new_set:
            if name not in graph:
                continue
            here = position[name]
            for producer in graph.nx.pred[name]:
                if not position[producer] < here:
                    return self._full_check()
        return None

    def _full_check(self) -> str | None:
        try:
            self.rebuild()
        except GraphError as error:
            return error.message
        return None


def _local_order(graph: Graph, new: list[str], new_set: set[str]) -> list[str] | None:
    """The new nodes in an order where producers come first (Kahn over the edges among them)."""
    indegree = {n: sum(1 for p in graph.nx.pred[n] if p in new_set) for n in new}
    ready = [n for n in new if indegree[n] == 0]
    order = []
    while ready:
        name = ready.pop()
        order.append(name)
        for consumer in graph.nx.succ[name]:
            if consumer in new_set:
                indegree[consumer] -= 1
                if indegree[consumer] == 0:
                    ready.append(consumer)
    return order if len(order) == len(new) else None


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


class LocalShapeInference:
    """MXNet's shape and dtype inference for one op at a time, memoised."""

    def __init__(self):
        self.cache: dict[tuple, list[TensorType] | str] = {}

    def infer(self, graph: Graph, name: str) -> list[TensorType] | str:
        """The output types of op ``name`` given its inputs' recorded types, or why not."""
        node = graph.node(name)
        inputs = inputs_in_slot_order(graph, name)
        types = []
        for slot, tensor in enumerate(inputs):
            tensor_type = graph.tensor_type(tensor)
            if not tensor_type.known:
                return f"input slot {slot} of {name!r} ({tensor.node!r}) has no known shape"
            types.append((tensor_type.shape, tensor_type.dtype))
        result = self.infer_with_inputs(graph, name, types)
        if isinstance(result, str):
            return f"shape inference of {name!r} ({node.op}) failed: {result}"
        return result

    def infer_with_inputs(self, graph: Graph, name: str, types: list[tuple]) -> list[TensorType] | str:
        """The output types of op ``name`` if its inputs had ``types`` (shape, dtype), or
        MXNet's objection: what the op would give at another batch size, say."""
        node = graph.node(name)
        key = (node.op, _hashable(node.attrs), tuple(types))
        result = self.cache.get(key)
        if result is None:
            result = self.cache[key] = self._infer_with_mxnet(node.op, format_attrs(node), types)
        return result

    @staticmethod
    def _infer_with_mxnet(op: str, attrs: dict[str, str], types: list[tuple]) -> list[TensorType] | str:
        try:
            internals, outputs = _single_op(op, attrs, len(types))
            shapes = {f"in{i}": shape for i, (shape, _) in enumerate(types)}
            dtypes = {f"in{i}": np.dtype(dtype) for i, (_, dtype) in enumerate(types)}
            arg_shapes, out_shapes, aux_shapes = internals.infer_shape_partial(**shapes)
            _, out_types, _ = internals.infer_type_partial(**dtypes)
        except mx.MXNetError as error:
            return first_error_line(error)
        # Some ops (BatchNorm) overwrite the shapes given for their parameters instead of
        # checking them: a gamma left with 4 entries for 2 channels would pass unseen.
        inferred = dict(zip(internals.list_arguments(), arg_shapes))
        inferred.update(zip(internals.list_auxiliary_states(), aux_shapes))
        for name, given in shapes.items():
            needed = known_shape(inferred.get(name)) if inferred.get(name) is not None else None
            if given and needed and tuple(needed) != tuple(given):
                return f"input {name[2:]} has shape {tuple(given)}, the op needs {tuple(needed)}"
        result = []
        for i in outputs:
            shape = known_shape(out_shapes[i])
            if shape is None or out_types[i] is None:
                return "MXNet cannot infer its output shape from its inputs"
            result.append(TensorType(shape, np.dtype(out_types[i]).name))
        return result


def _single_op(op: str, attrs: dict[str, str], count: int) -> tuple[mx.sym.Symbol, list[int]]:
    """MXNet's symbol of one ``op`` node reading variables in0..in{count-1}: its internals and
    the positions of the op's visible outputs among them."""
    nodes = [{"op": "null", "name": f"in{i}", "inputs": []} for i in range(count)]
    nodes.append({"op": op, "name": "op", "attrs": attrs, "inputs": [[i, 0, 0] for i in range(count)]})
    text = json.dumps({"nodes": nodes, "arg_nodes": list(range(count)), "heads": [[count, 0, 0]],
                       "attrs": {"mxnet_version": ["int", 10901]}})
    internals = mx.sym.load_json(text).get_internals()
    outputs = [i for i, out in enumerate(internals.list_outputs()) if out.startswith("op_output")]
    return internals, outputs


@functools.lru_cache(maxsize=4096)
def visible_outputs(op: str, attrs: tuple[tuple[str, str], ...], count: int) -> int:
    """How many outputs a new ``op`` node shows (``_contrib_quantize_v2``: data, min, max)."""
    try:
        return len(_single_op(op, dict(attrs), count)[1]) or 1
    except mx.MXNetError:
        return 1  # validation will say what MXNet objects to


def check_slots(graph: Graph, name: str) -> str | None:
    slots = sorted(key for _s, _d, key in graph.nx.in_edges(name, keys=True))
    if slots != list(range(len(slots))):
        return f"input slots of {name!r} are {slots}, not 0..{len(slots) - 1}"
    return None


def propagate_types(graph: Graph, inference: LocalShapeInference, position: dict[str, float],
                    start: Iterable[str], frozen_ok: set[str], allow_changes: bool) -> str | None:
    """Re-infer ``start`` ops in topological order, following changes to consumers.

    An existing node whose output type changes is refused unless ``allow_changes`` (rules that
    delete channels) or it is in ``frozen_ok`` (new nodes, which had no type yet)."""
    heap = [(position[n], n) for n in set(start) if n in graph and not graph.node(n).is_variable]
    heapq.heapify(heap)
    seen = set()
    while heap:
        _, name = heapq.heappop(heap)
        if name in seen:
            continue
        seen.add(name)
        node = graph.node(name)
        result = inference.infer(graph, name)
        if isinstance(result, str):
            return result
        if [(t.shape, t.dtype) for t in result] == [(t.shape, t.dtype) for t in node.outputs]:
            continue
        if name not in frozen_ok and not allow_changes:
            old = ", ".join(f"{t.shape} {t.dtype}" for t in node.outputs)
            new = ", ".join(f"{t.shape} {t.dtype}" for t in result)
            return f"{name!r} ({node.op}) would change its output from {old} to {new}"
        graph.set_output_types(name, result)
        for consumer in graph.nx.succ[name]:
            if consumer not in seen:
                heapq.heappush(heap, (position[consumer], consumer))
    return None
