"""float64 models in onnxruntime: the ops its CPU provider has no double kernel for run in float32.

MXNet computes a float64 model in double throughout; ONNX allows double for Conv, pooling,
Resize, the activations and the recurrent ops, but onnxruntime's CPU provider registers those
kernels for float only (and its LSTM kernel, registered for double, refuses it at run time), so
a faithful double export is a model onnxruntime will not load. Each such node is given float32
copies of its double inputs and its double outputs are cast back, under their own names (so
``compare --per-layer`` still finds them). The cost: those ops round to float32 (relative error
of order 1e-7 against MXNet's double); every other op stays in double.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

# ONNX ops that onnxruntime 1.32 (constraints.txt) cannot run on double tensors on the CPU
# (``get_all_opkernel_def()`` lists float only; LSTM and GRU fail at run time "does not support
# double yet")
NO_DOUBLE_KERNEL = frozenset({
    "Conv", "ConvTranspose", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
    "GlobalLpPool", "InstanceNormalization", "GroupNormalization", "LRN", "Resize", "Upsample",
    "RNN", "LSTM", "GRU", "Softplus", "Softsign", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu",
    "ThresholdedRelu", "HardSigmoid", "HardSwish", "Mish", "Gelu", "Erf", "MaxRoiPool",
})


def run_double_ops_in_float32(model: onnx.ModelProto) -> None:
    """Rewrite ``model`` in place so that every node of :data:`NO_DOUBLE_KERNEL` reading a
    double tensor computes in float32 between Casts, in the bodies of Scan/Loop/If too."""
    if not _may_hold_doubles(model) or not any(node.op_type in NO_DOUBLE_KERNEL
                                               for node in _all_nodes(model.graph)):
        return
    types = _value_types(model)
    taken = set(types) | {value for node in _all_nodes(model.graph)
                          for value in (*node.input, *node.output)}

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    _rewrite(model.graph, types, fresh)


def _rewrite(graph: onnx.GraphProto, types: dict[str, int], fresh) -> None:
    nodes = []
    for node in graph.node:
        for body in _bodies(node):
            _rewrite(body, types, fresh)
        if node.op_type not in NO_DOUBLE_KERNEL or not any(
                types.get(value) == TensorProto.DOUBLE for value in node.input):
            nodes.append(node)
            continue
        for slot, value in enumerate(node.input):
            if types.get(value) == TensorProto.DOUBLE:
                node.input[slot] = fresh(f"{value}__float32")
                nodes.append(helper.make_node("Cast", [value], [node.input[slot]],
                                              name=fresh(f"{node.name}__to_float32"),
                                              to=TensorProto.FLOAT))
        casts_back = []
        for slot, value in enumerate(node.output):
            if value and types.get(value) == TensorProto.DOUBLE:
                node.output[slot] = fresh(f"{value}__float32")
                casts_back.append(helper.make_node("Cast", [node.output[slot]], [value],
                                                   name=fresh(f"{node.name}__to_float64"),
                                                   to=TensorProto.DOUBLE))
        nodes += [node, *casts_back]
    del graph.node[:]
    graph.node.extend(nodes)


def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The subgraphs of a Scan, Loop or If node."""
    bodies = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            bodies.append(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            bodies.extend(attribute.graphs)
    return bodies


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for body in _bodies(node):
            yield from _all_nodes(body)


def _may_hold_doubles(model: onnx.ModelProto) -> bool:
    """A cheap test before type inference: a double value starts at a double input, weight or
    constant, at a Cast to double, or at an op told to make doubles (``dtype``: RandomNormal,
    EyeLike ...)."""
    graph = model.graph
    return (any(t.data_type == TensorProto.DOUBLE for t in graph.initializer)
            or any(v.type.tensor_type.elem_type == TensorProto.DOUBLE for v in graph.input)
            or any(attribute.name in ("to", "dtype", "value")
                   and (attribute.i == TensorProto.DOUBLE
                        or attribute.t.data_type == TensorProto.DOUBLE)
                   for node in graph.node for attribute in node.attribute))


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every value, from ONNX type inference on the graph with its
    initializers declared as inputs (their data is not needed, and a model over protobuf's
    2 GB limit could not be inferred whole)."""
    graph = model.graph
    declared = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                for t in graph.initializer]
    skeleton = helper.make_model(
        helper.make_graph(graph.node, graph.name, [*graph.input, *declared], graph.output),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton).graph
    except onnx.shape_inference.InferenceError:  # untyped: left as it is, onnxruntime will say
        return {}
    return _types_in(inferred)


def _types_in(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every value of ``graph`` and of its nodes' bodies (whose value names are
    unique in the model: the converters prefix them with the node and body)."""
    types = {value.name: value.type.tensor_type.elem_type
             for value in (*graph.input, *graph.value_info, *graph.output)}
    for node in graph.node:
        for body in _bodies(node):
            types.update(_types_in(body))
    return types
