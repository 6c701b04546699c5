"""control flow converters: MXNet's ``_foreach``, ``_while_loop`` and ``_cond`` as ONNX Scan,
Loop and If.

MXNet keeps each body as symbol JSON inside the node (``Node.subgraphs``). A body is loaded
into a :class:`Graph` of its own, its shapes inferred by MXNet from the shapes its inputs have
at one step, and converted by the same converters, in a :class:`BodyContext`, into the ONNX
subgraph. Every body value is named ``<node>/<body>/<name>``: ONNX names are unique across a
model and its subgraphs. What the body reads from outside (free parameters, values computed
before the loop) stays outside: an ONNX body reads outer values by name, and parameters stay
initializers of the main graph.

How MXNet wires the node (python/mxnet/symbol/contrib.py, src/operator/control_flow.cc):

- ``_foreach``: node inputs ``[data..., states..., remain...]``; body input ``in_data_locs[k]``
  is step ``t`` of data ``k`` (axis 0), ``in_state_locs[k]`` is state ``k``, ``remain_locs[k]``
  is remain ``k``. Body outputs and node outputs agree: ``num_out_data`` step outputs (stacked
  on a new axis 0), then the states. -> Scan.
- ``_while_loop``: node inputs are the union of both bodies' inputs; cond input ``j`` is node
  input ``cond_input_locs[j]``, func input ``j`` is node input ``func_input_locs[j]``, loop
  variable ``k`` is func input ``func_var_locs[k]``. A step: ``cond(vars)``, stop when it is
  zero, else ``func``; at most ``max_iterations`` steps. Node outputs: the step outputs stacked
  to ``max_iterations`` rows, then the final variables. MXNet never writes the rows after the
  last step (they hold whatever the memory held; after no step at all their shape is unknown):
  the export writes zeros there. -> Loop, with the condition computed before the loop too.
- ``_cond``: node inputs are the union of the three bodies' inputs, body input ``j`` of the
  predicate / then / else is node input ``{cond,then,else}_input_locs[j]``; the predicate is a
  1-element tensor, true when nonzero. -> If.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import mxnet as mx
import numpy as np
import onnx
from onnx import TensorProto, helper

from graphopt.errors import GraphoptError, ShapeError
from graphopt.ir.graph import Graph, Node, Tensor, TensorType
from graphopt.mxnet_io.infer import infer_shapes
from graphopt.mxnet_io.symbol_json import MXNET_VERSION, assign_output_names, graph_from_json
from graphopt.schema import attr_or_default
from graphopt.onnx.context import (ConvertContext, Unsupported, convert_graph, converter,
                                   needed_nodes, onnx_dtype)
# The body's shapes at another batch size are those of its sources, not what doubling axis 0
# of every body input would give (a parameter or a loop counter does not follow the batch).
from graphopt.onnx.converters.tensor import batch_axes


class BodyContext(ConvertContext):
    """The conversion of one control-flow body, nested in the conversion of the graph around
    it (``parent``). Values the body needs from the model as a whole (the batch size) come
    from the parent: an ONNX body may read any outer value."""

    def __init__(self, parent: ConvertContext, graph: Graph):
        super().__init__(graph, parent.opset, dynamic_batch=parent.dynamic_batch)
        self.parent = parent

    def batch_size(self) -> str:
        return self.parent.batch_size()

    def _export_batch(self) -> int:
        return self.parent._export_batch()


@dataclass
class Binding:
    """What a body input is bound to: a parameter of the model (``value``; the body reads the
    model's initializer ``name``), an outer ONNX value ``name``, or (``formal``) an input of
    the ONNX body itself, named after the body variable."""
    name: str | None
    tensor_type: TensorType
    value: np.ndarray | None = None
    other_shape: tuple | None = None  # its shape when the model runs at another batch size

    @property
    def formal(self) -> bool:
        return self.name is None


def outer_binding(ctx: ConvertContext, node: Node, slot: int) -> Binding:
    """The binding of a body input fed by input ``slot`` of the control-flow node."""
    source = ctx.source(node, slot)
    producer = ctx.graph.node(source.node)
    tensor_type = ctx.graph.tensor_type(source)
    other = ctx.other_batch_shapes.get(source)
    value = ctx.graph.params[producer.name] if producer.kind in ("param", "aux") else None
    return Binding(ctx.value_name(source), tensor_type, value, other)


def formal_binding(binding: Binding, drop_first_axis: bool = False) -> Binding:
    """A body input that the ONNX body receives as its own input, typed like ``binding``
    (one step of it with ``drop_first_axis``: MXNet gives a 1-D sequence's step the shape (1,))."""
    shape, other = binding.tensor_type.shape, binding.other_shape
    if drop_first_axis:
        shape = (shape[1:] or (1,)) if shape is not None else None
        other = (other[1:] or (1,)) if other is not None else None
    return Binding(None, TensorType(shape, binding.tensor_type.dtype), other_shape=other)


@dataclass
class Body:
    """A converted body: its context (ONNX nodes), its input variables and its output values."""
    context: BodyContext
    inputs: list[str]       # body variable names, in MXNet's order of the body's inputs
    outputs: list[str]      # ONNX value names of the body outputs

    def output_type(self, index: int) -> TensorType:
        return self.context.graph.tensor_type(self.context.graph.outputs[index])

    def output_dynamic(self, index: int) -> frozenset[int]:
        return batch_axes(self.context, self.context.graph.outputs[index])


def load_body(ctx_graph: Graph, node: Node, index: int, label: str,
              bindings: Sequence[Binding]) -> tuple[Graph, list[str]]:
    """Body ``index`` of ``node`` as a :class:`Graph`, its inputs bound (in MXNet's order of the
    body's inputs) and its shapes inferred; returns it with its input variable names. A body
    input bound to a parameter is that parameter (same name, same value)."""
    data = node.subgraphs[index] if node.subgraphs and index < len(node.subgraphs) else None
    if data is None:
        raise Unsupported(f"its body #{index} is missing from the symbol")
    # as written by this MXNet: a body without a version would be "upgraded" from 0.8, which
    # gives a nested control-flow node one input too many
    data = {**data, "attrs": {"mxnet_version": ["int", MXNET_VERSION]}}
    input_names = mx.sym.load_json(json.dumps(data)).list_inputs()
    if len(input_names) != len(bindings):
        raise Unsupported(f"its {label} body has {len(input_names)} inputs, the node feeds it "
                          f"{len(bindings)}")
    prefix = f"{node.name}/{label}/"
    renamed = {name: (binding.name if binding.value is not None else prefix + name)
               for name, binding in zip(input_names, bindings)}
    nodes = [{**entry, "name": renamed.get(entry["name"], prefix + entry["name"])}
             for entry in data["nodes"]]
    text = json.dumps({**data, "nodes": nodes})
    graph = graph_from_json(text, file=ctx_graph.source.get("symbol", "<string>"))
    graph.name = prefix.rstrip("/")
    variables = [renamed[name] for name in input_names]
    for name, binding in zip(variables, bindings):
        if binding.value is not None:
            graph.node(name).kind = "param"
            graph.params[name] = binding.value
    try:
        infer_with_loops(graph, {v: b.tensor_type.shape for v, b in zip(variables, bindings)
                                 if b.value is None and b.tensor_type.shape is not None},
                         {v: b.tensor_type.dtype for v, b in zip(variables, bindings)
                          if b.value is None and b.tensor_type.dtype is not None})
    except GraphoptError as error:
        raise Unsupported(f"MXNet cannot infer the shapes of its {label} body: {error}") from None
    assign_output_names(graph)
    return graph, variables


def convert_body(ctx: ConvertContext, node: Node, index: int, label: str,
                 bindings: Sequence[Binding]) -> Body:
    """Load body ``index`` of ``node`` with its inputs bound and convert it in a
    :class:`BodyContext`. The body's constants and parameters become initializers of ``ctx``
    (the model's, in the end)."""
    graph, variables = load_body(ctx.graph, node, index, label, bindings)
    body = BodyContext(ctx, graph)
    body.other_batch_shapes = _body_shapes_at_another_batch(graph, variables, bindings)
    for name, binding in zip(variables, bindings):
        if binding.value is None and not binding.formal:
            body.alias(Tensor(name, 0), binding.name)
    problems = convert_graph(body)
    if problems:
        raise Unsupported(f"its {label} body cannot be converted: " + "; ".join(
            f"{problem.name} ({problem.op}): {reason}" for problem, reason in problems))
    for name, initializer in body.initializers.items():
        ctx.initializers.setdefault(name, initializer)
    return Body(body, variables, [body.value_name(t) for t in graph.outputs])


def _body_shapes_at_another_batch(graph: Graph, variables: list[str],
                                  bindings: Sequence[Binding]) -> dict:
    """Every body tensor's shape when the model runs at another batch size: MXNet's inference
    from the shapes the body's inputs then have (empty when the batch is static)."""
    shapes = {v: b.other_shape for v, b in zip(variables, bindings) if b.value is None}
    if not shapes or any(shape is None for shape in shapes.values()):
        return {}
    return _shapes_of(graph, shapes)


def _shapes_of(graph: Graph, input_shapes: dict) -> dict:
    """Every tensor's shape with these input shapes (empty when the graph cannot run so)."""
    other = graph.copy()
    try:
        infer_with_loops(other, input_shapes)
    except (GraphoptError, Unsupported):  # (Unsupported: a body that does not fit them)
        return {}
    return {Tensor(name, index): tensor_type.shape
            for name in other.nx for index, tensor_type in enumerate(other.node(name).outputs)}


# --- shapes after a while loop or a cond ---------------------------------------------------------

def infer_with_loops(graph: Graph, input_shapes: dict, input_dtypes: dict | None = None) -> None:
    """MXNet's shape inference, carried on past each ``_while_loop`` and ``_cond``: MXNet 1.9.1
    infers no shape for their outputs, nor for anything computed from them (its symbolic
    inference gives up; at run time the executor sizes them). They are known all the same: a
    while loop's step outputs have ``max_iterations`` rows of its func body's step shape, its
    final loop variables the shapes of the initial ones; a cond's outputs have the shapes of its
    branches (refused when they differ). Inference then goes on with MXNet from a copy of the graph where variables of
    those shapes stand in for their outputs."""
    infer_shapes(graph, input_shapes, input_dtypes)
    while True:
        pending = [node for node in graph.op_nodes() if node.op in BODY_OUTPUT_TYPES
                   and not all(t.known for t in node.outputs)
                   and all(graph.tensor_type(t).known for t in graph.inputs_of(node.name))]
        if not pending:
            return
        stand_in = graph.copy()
        for node in pending:
            node.outputs = BODY_OUTPUT_TYPES[node.op](graph, node)
            for index, tensor_type in enumerate(node.outputs):
                variable = stand_in.add_variable(f"{node.name}__stand_in{index}", "input",
                                                 tensor_type.shape, tensor_type.dtype)
                stand_in.replace_all_uses(Tensor(node.name, index), Tensor(variable.name, 0))
            stand_in.erase_node(node.name)
        infer_shapes(stand_in)
        for name in stand_in.nx:
            if name in graph and not graph.node(name).is_variable:
                graph.node(name).outputs = stand_in.node(name).outputs


def body_output_types(graph: Graph, node: Node, index: int, locs_key: str) -> list[TensorType]:
    """Output types of body ``index`` of ``node``, fed the node inputs ``locs_key`` names."""
    bindings = []
    for slot in locations(node, locs_key):
        source = graph.input_of(node.name, slot)
        producer = graph.node(source.node)
        value = graph.params.get(producer.name) if producer.kind in ("param", "aux") else None
        bindings.append(Binding(producer.name if value is not None else None,
                                graph.tensor_type(source), value))
    body, _ = load_body(graph, node, index, "shapes", bindings)
    types = [body.tensor_type(t) for t in body.outputs]
    if not all(t.known for t in types):
        raise ShapeError(f"MXNet cannot infer the shapes of the body of {node.name}",
                         node=node.name, op=node.op)
    return types


def while_loop_output_types(graph: Graph, node: Node) -> list[TensorType]:
    num_out_data = int(attr_or_default(node.op, node.attrs, "num_out_data"))
    max_iterations = int(attr_or_default(node.op, node.attrs, "max_iterations"))
    types = body_output_types(graph, node, 1, "func_input_locs")
    return [TensorType((max_iterations, *t.shape), t.dtype) if index < num_out_data else t
            for index, t in enumerate(types)]


def cond_output_types(graph: Graph, node: Node) -> list[TensorType]:
    """The then branch's output types, which must be the else branch's: a cond whose branches
    give other shapes has no static shape, which the converters need."""
    then = body_output_types(graph, node, 1, "then_input_locs")
    otherwise = body_output_types(graph, node, 2, "else_input_locs")
    if [(t.shape, t.dtype) for t in then] != [(t.shape, t.dtype) for t in otherwise]:
        raise Unsupported(f"the branches of {node.name} return different shapes or dtypes "
                          f"({[t.shape for t in then]} then, {[t.shape for t in otherwise]} else)")
    return then


BODY_OUTPUT_TYPES = {"_while_loop": while_loop_output_types, "_cond": cond_output_types}


def complete_loop_shapes(ctx: ConvertContext) -> None:
    """Give ``ctx`` a copy of its graph with the shapes MXNet leaves unknown after a
    ``_while_loop`` or a ``_cond`` (see :func:`infer_with_loops`), and the shapes at another batch size that
    the dynamic batch reads (:func:`batch_axes`). The graph given is left as it is."""
    graph = ctx.graph
    if not any(node.op in BODY_OUTPUT_TYPES and not all(t.known for t in node.outputs)
               for node in graph.op_nodes()):
        return
    inputs = {node.name: node.shape for node in graph.variables("input") if node.shape}
    completed = graph.copy()
    try:
        infer_with_loops(completed, inputs)
    except (GraphoptError, Unsupported):
        return  # the while loop's converter says why
    ctx.graph = completed
    if ctx.dynamic_batch:
        ctx.other_batch_shapes = _shapes_of(graph, {
            name: (2 * shape[0], *shape[1:]) for name, shape in inputs.items()})


def value_info(name: str, tensor_type: TensorType, dynamic: frozenset[int] = frozenset()
               ) -> onnx.ValueInfoProto:
    """Type of a body input or output; axes that follow the batch are left unnamed."""
    shape = None if tensor_type.shape is None else [
        None if axis in dynamic else size for axis, size in enumerate(tensor_type.shape)]
    return helper.make_tensor_value_info(name, onnx_dtype(tensor_type.dtype), shape)


def body_graph(name: str, nodes: list[onnx.NodeProto],
               inputs: list[onnx.ValueInfoProto], outputs: list[tuple[str, onnx.ValueInfoProto]]
               ) -> onnx.GraphProto:
    """The ONNX body graph: ``outputs`` pairs a value with the typed output it becomes. Each
    output is a fresh Identity of its value, so that a body may return one value twice, or an
    input or an outer value as it is."""
    identities = [helper.make_node("Identity", [value], [info.name], name=f"{info.name}__identity")
                  for value, info in outputs]
    kept, _ = needed_nodes(nodes + identities, [info.name for _, info in outputs])
    return helper.make_graph(kept, name, inputs, [info for _, info in outputs])


def body_output(ctx: ConvertContext, body: Body, index: int, hint: str
                ) -> tuple[str, onnx.ValueInfoProto]:
    """Body output ``index`` as a (value, typed output of the ONNX body) pair."""
    return body.outputs[index], value_info(ctx.fresh(hint), body.output_type(index),
                                           body.output_dynamic(index))


def formal_input(body: Body, position: int, binding: Binding) -> onnx.ValueInfoProto:
    """The ONNX body input that body input ``position`` is bound to."""
    name = body.inputs[position]
    tensor = Tensor(name, 0)
    return value_info(name, binding.tensor_type, batch_axes(body.context, tensor))


def truth(ctx: ConvertContext, value: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes turning a 1-element MXNet predicate into the bool scalar Loop and If want (nonzero
    is true, as MXNet's ``as_bool_scalar``), and that scalar's name. Returned, not added: the
    condition of a while loop's next step is computed inside the Loop body."""
    scalar, flag = ctx.fresh("predicate_scalar"), ctx.fresh("predicate")
    return [helper.make_node("Reshape", [value, ctx.int64s([], hint="scalar_shape")], [scalar],
                             name=f"{scalar}__reshape"),
            helper.make_node("Cast", [scalar], [flag], name=f"{flag}__cast", to=TensorProto.BOOL)
            ], flag


def inline_predicate(ctx: ConvertContext, node: Node, index: int, label: str,
                     bindings: Sequence[Binding]) -> str:
    """Body ``index`` of ``node`` (a predicate), computed in the graph around the node; returns
    the bool scalar."""
    predicate = convert_body(ctx, node, index, label, bindings)
    nodes, flag = truth(ctx, predicate.outputs[0])
    ctx.nodes.extend(predicate.context.nodes + nodes)
    return flag


def locations(node: Node, key: str) -> list[int]:
    value = node.attrs.get(key)
    if value is None:
        raise Unsupported(f"attribute {key} is missing")
    return [int(v) for v in (value if isinstance(value, (tuple, list)) else [value])]


# --- _foreach -> Scan ---------------------------------------------------------------------------

@converter("_foreach")
def foreach(ctx: ConvertContext, node: Node) -> None:
    """Scan over axis 0 of the data inputs. Scan's body takes the states, then the data steps,
    and returns the new states, then the step outputs; MXNet's node returns the step outputs
    first."""
    data_locs, state_locs = locations(node, "in_data_locs"), locations(node, "in_state_locs")
    remain_locs = locations(node, "remain_locs")
    num_out_data = int(ctx.attr(node, "num_out_data"))
    body_locs = data_locs + state_locs + remain_locs  # node input i feeds body input body_locs[i]
    outer = [outer_binding(ctx, node, slot) for slot in range(len(body_locs))]
    bindings: list[Binding | None] = [None] * len(body_locs)
    for slot, position in enumerate(body_locs):
        is_data, is_state = slot < len(data_locs), slot < len(data_locs) + len(state_locs)
        bindings[position] = formal_binding(outer[slot], is_data) if is_state else outer[slot]
    body = convert_body(ctx, node, 0, "body", bindings)

    inputs, steps = [], []
    for slot in range(len(data_locs) + len(state_locs)):
        position = body_locs[slot]
        formal = formal_input(body, position, bindings[position])
        if slot < len(data_locs) and outer[slot].tensor_type.shape is not None \
                and len(outer[slot].tensor_type.shape) == 1:
            # one step of a 1-D sequence: Scan gives a scalar, MXNet a (1,) tensor
            step = value_info(ctx.fresh("scalar_step"),
                              TensorType((), bindings[position].tensor_type.dtype))
            steps.append(helper.make_node("Unsqueeze", [step.name, ctx.int64s([0], hint="axes")],
                                          [formal.name], name=f"{formal.name}__unsqueeze"))
            formal = step
        inputs.append(formal)
    inputs = inputs[len(data_locs):] + inputs[:len(data_locs)]  # states, then data
    count = len(body.outputs)
    order = list(range(num_out_data, count)) + list(range(num_out_data))
    outputs = [body_output(ctx, body, index, "body_output") for index in order]
    graph = body_graph(f"{node.name}_body", steps + body.context.nodes, inputs, outputs)
    node_inputs = [o.name for o in outer[len(data_locs):len(data_locs) + len(state_locs)]] + \
                  [o.name for o in outer[:len(data_locs)]]
    ctx.emit("Scan", node_inputs, [ctx.output(node, index) for index in order], body=graph,
             num_scan_inputs=len(data_locs))


# --- _while_loop -> Loop ------------------------------------------------------------------------

@converter("_while_loop")
def while_loop(ctx: ConvertContext, node: Node) -> None:
    """Loop with at most ``max_iterations`` steps. The condition of the first step is computed
    before the Loop, that of each next step at the end of the Loop body, from the new loop
    variables (ONNX Loop's contract, which is MXNet's order: test, then step). The stacked step
    outputs are padded with zero rows to ``max_iterations``, MXNet's shape."""
    cond_locs, func_locs = locations(node, "cond_input_locs"), locations(node, "func_input_locs")
    var_locs = locations(node, "func_var_locs")
    num_out_data = int(ctx.attr(node, "num_out_data"))
    max_iterations = int(ctx.attr(node, "max_iterations"))
    outer = {slot: outer_binding(ctx, node, slot) for slot in sorted(set(cond_locs + func_locs))}
    var_slots = [func_locs[position] for position in var_locs]  # node input of variable k

    first = inline_predicate(ctx, node, 0, "cond_first", [outer[slot] for slot in cond_locs])
    func_bindings = [formal_binding(outer[slot]) if position in var_locs else outer[slot]
                     for position, slot in enumerate(func_locs)]
    func = convert_body(ctx, node, 1, "func", func_bindings)
    new_variables = {slot: Binding(func.outputs[num_out_data + k], outer[slot].tensor_type,
                                   other_shape=outer[slot].other_shape)
                     for k, slot in enumerate(var_slots)}
    cond = convert_body(ctx, node, 0, "cond",
                        [new_variables.get(slot, outer[slot]) for slot in cond_locs])
    flag_nodes, flag = truth(ctx, cond.outputs[0])

    inputs = [value_info(ctx.fresh("iteration"), TensorType((), "int64")),
              value_info(ctx.fresh("condition"), TensorType((), "bool"))]
    inputs += [formal_input(func, position, func_bindings[position]) for position in var_locs]
    outputs = [(flag, value_info(ctx.fresh("next_condition"), TensorType((), "bool")))]
    outputs += [body_output(ctx, func, num_out_data + k, "variable") for k in range(len(var_locs))]
    outputs += [body_output(ctx, func, index, "step_output") for index in range(num_out_data)]
    graph = body_graph(f"{node.name}_body", func.context.nodes + cond.context.nodes
                       + flag_nodes, inputs, outputs)
    limit = ctx.constant(np.array(max_iterations, dtype=np.int64), hint="max_iterations")
    stacked = [ctx.fresh("steps") for _ in range(num_out_data)]
    ctx.emit("Loop", [limit, first] + [outer[slot].name for slot in var_slots],
             [ctx.output(node, num_out_data + k) for k in range(len(var_locs))] + stacked,
             body=graph)
    for index, steps in enumerate(stacked):
        ctx.output(node, index)
        pad_rows(ctx, steps, Tensor(node.name, index))


def pad_rows(ctx: ConvertContext, steps: str, output: Tensor) -> None:
    """``steps`` (one row per executed step) padded with zero rows to the shape of ``output``
    (``max_iterations`` rows). After no step at all onnxruntime gives the stacked outputs the
    shape (0,), so they are first reshaped to (-1, *step shape)."""
    shape = ctx.graph.tensor_type(output).shape
    dynamic = batch_axes(ctx, output)
    if dynamic:
        full = ctx.runtime_shape(output, dynamic, ctx.other_batch_shapes.get(output))
        step_shape = ctx.emit1("Slice", [full, ctx.int64s([1]), ctx.int64s([len(shape)])])
        target = ctx.emit1("Concat", [ctx.int64s([-1]), step_shape], axis=0)
    else:
        target = ctx.int64s([-1, *shape[1:]], hint="shape")
    rows = ctx.emit1("Reshape", [steps, target])
    executed = ctx.emit1("Slice", [ctx.emit1("Shape", [rows]), ctx.int64s([0]), ctx.int64s([1])])
    missing = ctx.emit1("Sub", [ctx.int64s([shape[0]]), executed])
    pads = ctx.emit1("Concat", [ctx.int64s([0] * len(shape)), missing,
                                ctx.int64s([0] * (len(shape) - 1))], axis=0)
    ctx.emit1("Pad", [rows, pads], ctx.graph.tensor_name(output))


# --- _cond -> If --------------------------------------------------------------------------------

@converter("_cond")
def cond(ctx: ConvertContext, node: Node) -> None:
    """If on the predicate body's value; the branches read their inputs from the graph around."""
    if not all(t.known for t in node.outputs):
        cond_output_types(ctx.graph, node)  # says why when the branches disagree
        raise Unsupported("the shapes of its outputs are unknown")
    locs = [locations(node, key) for key in ("cond_input_locs", "then_input_locs",
                                             "else_input_locs")]
    outer = {slot: outer_binding(ctx, node, slot) for slot in sorted(set(sum(locs, [])))}
    flag = inline_predicate(ctx, node, 0, "predicate", [outer[slot] for slot in locs[0]])
    branches = {}
    for index, label in ((1, "then"), (2, "else")):
        body = convert_body(ctx, node, index, label, [outer[slot] for slot in locs[index]])
        outputs = [body_output(ctx, body, i, f"{label}_output") for i in range(len(body.outputs))]
        branches[f"{label}_branch"] = body_graph(f"{node.name}_{label}",
                                                 body.context.nodes, [], outputs)
    ctx.emit("If", [flag], [ctx.output(node, index) for index in range(node.num_outputs)],
             **branches)
