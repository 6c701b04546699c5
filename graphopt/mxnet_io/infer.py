"""Shapes and dtypes of every tensor, computed by MXNet's own inference.

MXNet defines what its ops compute, so it is also the authority on their output shapes: we
build the symbol from the graph, take its internals (every visible output of every node) and
run ``infer_shape_partial`` / ``infer_type_partial`` once over the whole graph.
"""

from __future__ import annotations

import json
import re

import mxnet as mx
import numpy as np

from graphopt.errors import GraphoptError, ParameterError, ShapeError
from graphopt.ir.graph import Graph, Tensor, TensorType
from graphopt.mxnet_io.symbol_json import graph_to_dict

_OPERATOR_IN_ERROR = re.compile(r"Error in operator ([^:\s]+)")


def to_symbol(graph: Graph) -> mx.sym.Symbol:
    """The graph as an MXNet symbol, built once until the graph is next edited (the ONNX
    export's batch analysis, compare and the rule engine's checks all ask for it)."""
    symbol = graph.derived.get("mxnet_symbol")
    if symbol is None:
        # Compact JSON: with ``indent`` json.dumps falls back to its pure-Python encoder (~5x
        # slower).
        symbol = mx.sym.load_json(json.dumps(graph_to_dict(graph), ensure_ascii=False))
        graph.derived["mxnet_symbol"] = symbol
    return symbol


def first_error_line(error: Exception) -> str:
    """The one line of an MXNetError that says what went wrong (no stack trace). MXNet 1.9
    puts a C++ traceback first ("Traceback (most recent call last):", then "  File ..." lines)
    and the message after it, on the line starting "MXNetError: "."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("MXNetError: "):
            return line[len("MXNetError: "):].strip()
    lines = [line for line in lines if "Stack trace" not in line and not line.startswith(
        ("Traceback (most recent call last)", "File \""))]
    return lines[0] if lines else text.strip()


def known_shape(shape, numpy_semantics: bool = False) -> tuple | None:
    if numpy_semantics:  # MXNet's numpy shape semantics: None or -1 dims mean "unknown"
        return None if shape is None or any(d < 0 for d in shape) else tuple(int(d) for d in shape)
    if shape is None or len(shape) == 0 or any(d == 0 for d in shape):
        return None  # MXNet's legacy shape semantics: () or 0 dims mean "unknown"
    return tuple(int(d) for d in shape)


NUMPY_OP_PREFIXES = ("_np_", "_npi_", "_npx_")  # ops of MXNet's NumPy interface (npx.set_np())


def needs_numpy_shapes(shapes, graph: Graph | None = None) -> bool:
    """Whether a 0-d or zero-size shape is among ``shapes``, or ``graph`` uses ops of MXNet's
    NumPy interface (a sum over every axis is 0-d there): such tensors exist only in MXNet's
    numpy shape semantics (in the legacy ones, () and 0 dims mean "unknown")."""
    if mx.util.is_np_array() or any(len(shape) == 0 or 0 in shape for shape in shapes):
        return True  # (with the NumPy interface on, MXNet refuses to turn its shapes off)
    return graph is not None and any(node.op.startswith(NUMPY_OP_PREFIXES)
                                     for node in graph._iter_unordered())  # (no sort needed)


def infer_shapes(graph: Graph, input_shapes: dict[str, tuple] | None = None,
                 input_dtypes: dict[str, str] | None = None,
                 symbol: mx.sym.Symbol | None = None) -> None:
    """Fill ``node.outputs`` for every node. ``input_shapes``/``input_dtypes`` override what the
    input variables record. ``symbol`` may be given when it is known to be the graph as it is
    (the loader passes the one it parsed). Raises :class:`ShapeError` or
    :class:`ParameterError` with the node."""
    input_shapes = dict(input_shapes or {})
    heads, out_shapes, out_types = _inferred(graph, input_shapes, input_dtypes, symbol)
    counts: dict[str, int] = {}
    for name, index in heads:
        counts[name] = max(counts.get(name, 0), index + 1)
    for (name, index), shape, dtype in zip(heads, out_shapes, out_types):
        node = graph.node(name)
        if len(node.outputs) != counts[name]:
            node.outputs = [TensorType() for _ in range(counts[name])]
        node.outputs[index] = TensorType(shape, None if dtype is None else np.dtype(dtype).name)
    for name, shape in input_shapes.items():
        if name in graph and graph.node(name).kind == "input" and graph.node(name).shape is None:
            graph.node(name).outputs[0] = TensorType(tuple(shape), graph.node(name).dtype)


def _inferred(graph: Graph, input_shapes: dict[str, tuple], input_dtypes: dict[str, str] | None,
              symbol: mx.sym.Symbol | None, types: bool = True) -> tuple[list, list, list]:
    """MXNet's inference over the graph as it is, changing nothing: the (node, index) of every
    op output and variable, its shape (None when unknown) and, with ``types``, its dtype."""
    input_dtypes = dict(input_dtypes or {})
    file = graph.source.get("symbol")
    symbol = symbol if symbol is not None else to_symbol(graph)
    internals = symbol.get_internals()
    internal_json = json.loads(internals.tojson())
    heads = [(internal_json["nodes"][nid]["name"], index) for nid, index, _ in internal_json["heads"]]

    shapes, dtypes = {}, {}
    for node in graph.variables():
        if node.kind in ("param", "aux"):
            value = graph.params[node.name]
            shapes[node.name], dtypes[node.name] = tuple(value.shape), value.dtype
        elif node.kind == "input":
            shape = input_shapes.get(node.name, node.shape)
            if shape is not None:
                shapes[node.name] = tuple(shape)
            dtypes[node.name] = np.dtype(input_dtypes.get(node.name) or node.dtype or "float32")
    arguments = set(internals.list_arguments()) | set(internals.list_auxiliary_states())
    shapes = {k: v for k, v in shapes.items() if k in arguments}
    dtypes = {k: v for k, v in dtypes.items() if k in arguments}

    numpy_semantics = needs_numpy_shapes(shapes.values(), graph)
    try:
        with mx.util.np_shape(numpy_semantics):
            arg_shapes, out_shapes, aux_shapes = internals.infer_shape_partial(**shapes)
    except mx.MXNetError as error:
        raise _explain_shape_failure(graph, internals, shapes, error, file) from None
    # MXNet checks argument shapes against what it infers, but silently ignores given aux shapes
    mismatch = _param_shape_mismatch(graph, internals, arg_shapes, aux_shapes, shapes,
                                     numpy_semantics)
    if mismatch is not None:
        raise mismatch
    out_types = [None] * len(heads)
    if types:
        try:
            _, out_types, _ = internals.infer_type_partial(**dtypes)
        except mx.MXNetError as error:
            raise _error_at(ShapeError, graph, error, "dtype inference failed", file) from None
    return heads, [known_shape(shape, numpy_semantics) for shape in out_shapes], out_types


def shapes_at_twice_the_batch(graph: Graph) -> dict[Tensor, tuple | None] | None:
    """Every tensor's shape when axis 0 of every input is doubled (MXNet's inference; the graph
    is left as it is), which tells the axes that follow the batch; ``None`` when the graph has
    no input with a shape or does not run at twice its batch (axis 0 is then no batch). Twice,
    not another size: a size that divides the loaded one divides this one too."""
    inputs = {node.name: node.shape for node in graph.variables("input") if node.shape}
    if not inputs:
        return None
    try:
        heads, shapes, _ = _inferred(graph, {name: (2 * shape[0], *shape[1:])
                                             for name, shape in inputs.items()}, None, None,
                                     types=False)
    except GraphoptError:
        return None
    return {Tensor(name, index): shape for (name, index), shape in zip(heads, shapes)}


def _error_at(kind, graph: Graph, error: Exception, what: str, file):
    match = _OPERATOR_IN_ERROR.search(str(error))
    node = match.group(1) if match else None
    op = graph.node(node).op if node and node in graph else None
    return kind(f"{what}: {first_error_line(error)}", file=file, node=node, op=op)


def _explain_shape_failure(graph: Graph, internals, shapes: dict, error: Exception, file):
    """Tell a parameter of the wrong shape from an input shape that does not fit: infer again
    from the inputs alone and compare what each parameter should be with what it is."""
    inputs_only = {k: v for k, v in shapes.items() if graph.node(k).kind == "input"}
    numpy_semantics = needs_numpy_shapes(shapes.values(), graph)
    try:
        with mx.util.np_shape(numpy_semantics):
            arg_shapes, _, aux_shapes = internals.infer_shape_partial(**inputs_only)
    except mx.MXNetError:
        return _error_at(ShapeError, graph, error, "the input shapes do not fit the graph", file)
    mismatch = _param_shape_mismatch(graph, internals, arg_shapes, aux_shapes, shapes,
                                     numpy_semantics)
    if mismatch is not None:
        return mismatch
    return _error_at(ShapeError, graph, error, "shape inference failed", file)


def _param_shape_mismatch(graph: Graph, internals, arg_shapes, aux_shapes, shapes: dict,
                          numpy_semantics: bool = False) -> ParameterError | None:
    """A parameter whose stored shape differs from the one the graph needs, as an error naming
    the parameter, the node that reads it and both shapes."""
    names = internals.list_arguments() + internals.list_auxiliary_states()
    for name, expected in zip(names, list(arg_shapes) + list(aux_shapes)):
        expected = known_shape(expected, numpy_semantics)
        node = graph.node(name)
        if node.kind in ("param", "aux") and expected is not None and expected != shapes[name]:
            consumer, _slot = graph.consumers(name)[0]
            return ParameterError(
                f"parameter {name!r} has shape {shapes[name]} in the params file, but node "
                f"{consumer!r} ({graph.node(consumer).op}) needs {expected}",
                file=graph.source.get("params"), node=consumer, op=graph.node(consumer).op)
    return None


def tensor_shapes(graph: Graph) -> dict[Tensor, TensorType]:
    return {Tensor(n.name, i): t for n in graph.nodes() for i, t in enumerate(n.outputs)}
