"""The converter table and what a converter sees while it runs.

A converter is one short function per MXNet op (or family of ops sharing one lowering),
registered with :func:`converter`::

    @converter("Activation")
    def activation(ctx: ConvertContext, node: Node) -> None:
        kind = ctx.attr(node, "act_type")           # explicit value or MXNet's default
        ctx.emit(ACTIVATIONS[kind], [ctx.input(node, 0)], [ctx.output(node)])

Rules of the road:
- Read attributes with :meth:`ConvertContext.attr`: MXNet's defaults come from the op schema
  (graphopt.schema), never from ONNX's.
- The node's final ONNX values must be named :meth:`ConvertContext.output` (the MXNet tensor name),
  so that ``compare --per-layer`` can match MXNet and ONNX intermediates by name. Intermediate values
  get names from :meth:`ConvertContext.fresh`.
- Parameters are initializers only (never graph inputs). A converter that needs a parameter as a
  constant (a PReLU slope to reshape, a BatchNorm gamma to replace when ``fix_gamma``) reads it
  with :meth:`ConvertContext.param` and adds what it computes with :meth:`ConvertContext.constant`.
- Raise :class:`Unsupported` (with a reason) for attribute combinations ONNX cannot express;
  the emitter gathers every such case in the graph into one error.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt.ir.graph import Graph, Node, Tensor
from graphopt.schema import attr_or_default

Converter = Callable[["ConvertContext", Node], None]
CONVERTERS: dict[str, Converter] = {}


def converter(*ops: str) -> Callable[[Converter], Converter]:
    """Register the decorated function as the converter of ``ops`` (canonical MXNet names)."""
    def register(function: Converter) -> Converter:
        for op in ops:
            if op in CONVERTERS:
                raise ValueError(f"two converters for {op}: {CONVERTERS[op].__name__} and "
                                 f"{function.__name__}")
            CONVERTERS[op] = function
        return function
    return register


class Unsupported(Exception):
    """Raised by a converter for a case it cannot lower; the message says why."""


def onnx_dtype(dtype: str | np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class ConvertContext:
    """State of one conversion: the source graph, the target opset and the ONNX graph being built."""

    def __init__(self, graph: Graph, opset: int, dynamic_batch: bool = True):
        self.graph = graph
        self.opset = opset
        self.dynamic_batch = dynamic_batch  # axis 0 of the inputs is left to the runtime
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._names: set[str] = set()
        self._constants: dict[tuple, str] = {}
        self._renamed: dict[Tensor, str] = {}
        self._batch_size: str | None = None
        self._inputs_with_shapes: list[Node] | None = None
        self._other_batch_shapes: dict[Tensor, tuple | None] | None = None
        self.current: Node | None = None

    # --- reading the MXNet node -------------------------------------------------------------

    def attr(self, node: Node, key: str, fallback: Any = ...) -> Any:
        """Attribute ``key`` of ``node``: explicit value, else MXNet's default (from the schema)."""
        if fallback is ...:
            return attr_or_default(node.op, node.attrs, key)
        return attr_or_default(node.op, node.attrs, key, fallback)

    def source(self, node: Node, slot: int) -> Tensor:
        tensor = self.graph.input_of(node.name, slot)
        if tensor is None:
            raise Unsupported(f"input slot {slot} is not connected")
        return tensor

    def num_inputs(self, node: Node) -> int:
        return len(self.graph.inputs_of(node.name))

    def input(self, node: Node, slot: int) -> str:
        """The ONNX value name feeding ``slot`` of ``node``."""
        return self.value_name(self.source(node, slot))

    def inputs(self, node: Node) -> list[str]:
        return [self.value_name(t) for t in self.graph.inputs_of(node.name)]

    def value_name(self, tensor: Tensor) -> str:
        if tensor in self._renamed:
            return self._renamed[tensor]
        producer = self.graph.node(tensor.node)
        if producer.kind in ("param", "aux"):
            self._add_param_initializer(producer.name)
        return self.graph.tensor_name(tensor)

    def output(self, node: Node, index: int = 0) -> str:
        """The ONNX name the node's ``index``-th output must get (MXNet's tensor name)."""
        name = self.graph.tensor_name(Tensor(node.name, index))
        self._names.add(name)
        return name

    def param(self, node: Node, slot: int) -> np.ndarray | None:
        """The value feeding ``slot`` when it is a parameter, else ``None``."""
        tensor = self.graph.input_of(node.name, slot)
        if tensor is None or self.graph.node(tensor.node).kind not in ("param", "aux"):
            return None
        return self.graph.params[tensor.node]

    def shape(self, node: Node, slot: int) -> tuple[int, ...] | None:
        """Static shape of the tensor feeding ``slot`` (as loaded; the batch axis may be dynamic)."""
        return self.graph.tensor_type(self.source(node, slot)).shape

    def dtype(self, node: Node, slot: int) -> str | None:
        return self.graph.tensor_type(self.source(node, slot)).dtype

    def output_shape(self, node: Node, index: int = 0) -> tuple[int, ...] | None:
        return node.outputs[index].shape

    def output_dtype(self, node: Node, index: int = 0) -> str | None:
        return node.outputs[index].dtype

    # --- building the ONNX graph ------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        base = f"{self.current.name}__{hint}" if self.current is not None else hint
        name, k = base, 0
        while name in self._names or name in self.graph:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def emit(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | int | None = None,
             domain: str | None = None, **attrs: Any) -> list[str]:
        """Add an ONNX node; ``outputs`` are names, or a count of fresh names to make.
        Attributes whose value is ``None`` are left out. Returns the output names."""
        if outputs is None:
            outputs = 1
        if isinstance(outputs, int):
            outputs = [self.fresh(op_type.lower()) for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        name = self.fresh(op_type) if self.current is not None else op_type
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name,
                                           domain=domain, **attrs))
        return list(outputs)

    def emit1(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs) -> str:
        """:meth:`emit` for the common single-output case; returns the output name."""
        return self.emit(op_type, inputs, [output] if output else 1, **attrs)[0]

    def constant(self, value: Any, dtype: str | np.dtype | None = None, hint: str = "const") -> str:
        """An initializer holding ``value`` (deduplicated for small constants)."""
        array = np.asarray(value, dtype=dtype)
        key = None
        if array.size <= 64:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._constants:
                return self._constants[key]
        name = self.fresh(hint)
        self.initializers[name] = numpy_helper.from_array(array, name)
        if key is not None:
            self._constants[key] = name
        return name

    def int64s(self, values: Iterable[int], hint: str = "ints") -> str:
        return self.constant(np.asarray(list(values), dtype=np.int64), hint=hint)

    # --- the dynamic batch ------------------------------------------------------------------

    @property
    def other_batch_shapes(self) -> dict[Tensor, tuple | None]:
        """Every tensor's shape when axis 0 of every input is doubled (MXNet's inference), which
        tells the axes that follow the batch; empty for a static export or a model that only
        runs at its own batch size. A control-flow body is given its own (its sources')."""
        if self._other_batch_shapes is None:
            from graphopt.mxnet_io.infer import shapes_at_twice_the_batch
            twice = shapes_at_twice_the_batch(self.graph) if self.dynamic_batch else None
            self._other_batch_shapes = twice or {}
        return self._other_batch_shapes

    @other_batch_shapes.setter
    def other_batch_shapes(self, shapes: dict[Tensor, tuple | None]) -> None:
        self._other_batch_shapes = shapes

    def batch_size(self) -> str:
        """A 1-D int64 ONNX value ``[N]``: axis 0 of the first graph input at run time (the
        batch size of a dynamic-batch export)."""
        if self._batch_size is None:
            source = next(iter(self._shaped_inputs()), None)
            if source is None:
                raise Unsupported("the batch size is needed, but the graph has no input with a shape")
            saved, self.current = self.current, None
            try:
                shape = self.emit1("Shape", [source.name], self.fresh("batch_shape"))
                self._batch_size = self.emit1("Slice", [shape, self.int64s([0]), self.int64s([1])],
                                              self.fresh("batch_size"))
            finally:
                self.current = saved
        return self._batch_size

    def runtime_shape(self, tensor: Tensor, dynamic: Iterable[int], other: Sequence[int] | None
                      ) -> str:
        """A 1-D int64 ONNX value holding the shape ``tensor`` has at run time, for a tensor
        that no ONNX value carries (the output of MXNet's ``zeros``, whose size MXNet inferred
        from elsewhere in the graph). ``dynamic``: its axes that follow the batch; ``other``:
        its shape when every input's axis 0 is doubled. A dynamic axis must be a fixed multiple
        of the batch size (``k * N``); anything else cannot be written without the tensor the
        size came from, and is refused."""
        shape = self.graph.tensor_type(tensor).shape
        if shape is None:
            raise Unsupported("its output shape is unknown (load the model with input shapes)")
        dynamic = sorted(dynamic)
        if not dynamic:
            return self.int64s(shape, hint="shape")
        batch = self._export_batch()
        for axis in dynamic:  # (refused before any ONNX node is added)
            if other is None or shape[axis] % batch or other[axis] != 2 * shape[axis]:
                raise Unsupported(f"axis {axis} of its output ({shape[axis]} at batch {batch}) "
                                  "does not scale with the batch size; export with "
                                  "dynamic_batch=False")
        pieces = []
        for axis, size in enumerate(shape):
            if axis in dynamic:
                factor = size // batch
                pieces.append(self.batch_size() if factor == 1 else
                              self.emit1("Mul", [self.batch_size(), self.int64s([factor])]))
            else:
                pieces.append(self.int64s([size]))
        return self.emit1("Concat", pieces, axis=0)

    def _export_batch(self) -> int:
        """Axis 0 of the inputs at export; refused when the inputs disagree on it (which one a
        size follows is then unknown)."""
        sizes = {n.outputs[0].shape[0] for n in self._shaped_inputs()}
        if len(sizes) != 1:
            raise Unsupported(f"the inputs' axis 0 sizes differ ({sorted(sizes)}), so which one "
                              "its output's size follows is unknown; export with dynamic_batch=False")
        return sizes.pop()

    def _shaped_inputs(self) -> list[Node]:
        """The graph inputs the outputs depend on and whose shape is known, in input order
        (found once: a whole-graph walk per created tensor made the export quadratic)."""
        if self._inputs_with_shapes is None:
            live = self.graph.live_nodes()
            self._inputs_with_shapes = [n for n in self.graph.variables("input")
                                        if n.name in live and n.outputs[0].shape]
        return self._inputs_with_shapes

    def alias(self, tensor: Tensor, name: str) -> None:
        """Let later readers of ``tensor`` read ONNX value ``name`` (for no-op converters)."""
        self._renamed[tensor] = name

    def _add_param_initializer(self, name: str) -> None:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(self.graph.params[name], name)
            self._names.add(name)


def convert_graph(context: ConvertContext) -> list[tuple[Node, str]]:
    """Run every live op node of ``context.graph`` through its converter, in topological order.
    Returns the nodes that cannot be converted with the reason: those without a converter
    first, then those whose converter raised :class:`Unsupported`. Used for the model's graph
    and, with a nested context, for the body of a control-flow op."""
    graph = context.graph
    live = graph.live_nodes()
    nodes = [node for node in graph.op_nodes() if node.name in live]
    problems = [(node, f"no ONNX converter for op {node.op}") for node in nodes
                if node.op not in CONVERTERS]
    for node in nodes:
        if node.op not in CONVERTERS:
            continue
        context.current = node
        try:
            CONVERTERS[node.op](context, node)
        except Unsupported as reason:
            problems.append((node, str(reason)))
    context.current = None
    return problems


def names_read(onnx_node: onnx.NodeProto) -> set[str]:
    """The values an ONNX node reads: its inputs and, for Loop, Scan and If, every name the
    nodes of its bodies read (a body reads outer values by name, without listing them as the
    node's inputs; names the body defines itself are included too, which is harmless)."""
    names = set(onnx_node.input)
    for attribute in onnx_node.attribute:
        bodies = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs
        for body in bodies:
            for inner in body.node:
                names |= names_read(inner)
            names.update(output.name for output in body.output)
    return names


def needed_nodes(nodes: Sequence[onnx.NodeProto], outputs: Iterable[str]
                 ) -> tuple[list[onnx.NodeProto], set[str]]:
    """The ``nodes`` that ``outputs`` depend on (in their order), and every value name they read."""
    needed, kept = set(outputs), []
    for onnx_node in reversed(nodes):
        if needed.intersection(onnx_node.output):
            kept.append(onnx_node)
            needed |= names_read(onnx_node)
    return kept[::-1], needed


FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
