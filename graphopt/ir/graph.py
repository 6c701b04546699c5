"""The graph IR: operators and variables in a ``networkx.MultiDiGraph``.

Node and edge attributes, in one place (the FX lesson: every kind documented once)

Node (``Graph.node(name)``), stored as the ``node`` attribute of the networkx node ``name``:
    name         unique within the graph; for variables it is the parameter/input name MXNet binds.
    op           the MXNet op type (canonical JSON name), or ``"null"`` for a variable.
    kind         ``"op"``; for variables ``"input"`` (fed by the user), ``"label"`` (a loss label that
                 inference never reads), ``"param"`` (an argument whose value the graph holds) or
                 ``"aux"`` (an auxiliary state such as BatchNorm's moving mean/var).
    attrs        typed attribute values (``(3, 3)``, ``True``, ``None`` ...), only those set explicitly,
                 as in MXNet's JSON; the defaults live in :mod:`graphopt.schema`.
    outputs      one :class:`TensorType` (shape, dtype) per visible output.
    output_names MXNet's name of each output (``conv0_output``; a variable's own name). A rewrite
                 that makes a node compute what a removed node computed gives the node that
                 tensor's name (a conv with a BatchNorm folded in outputs ``bn_output``), so
                 that names keep meaning the same values in compare and in the files written.
    origin       names of the nodes of the loaded model this node stands for (provenance).
    rule         name of the rule that made the node, ``None`` for loaded nodes.

Edge ``producer -> consumer`` with ``key`` = the consumer's input slot and attribute
``index`` = which output of the producer feeds that slot. A consumer's slots are numbered
0..n-1 without gaps; :meth:`Graph.validate` checks it.

Parameters are numpy arrays in ``Graph.params`` keyed by variable name. They are never written
in place (the arrays are marked read-only); an edit replaces the array, which keeps copies of a
graph cheap and the user's input untouched.

Edits go through the small vocabulary below (add, set an input, replace all uses, insert on an
edge, erase, set an attribute or a parameter), which keeps producers and consumers consistent by
construction and journals every change, so that a failed rewrite is undone with
:meth:`Graph.rollback`.
"""

from __future__ import annotations

import copy as _copy
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import networkx as nx
import numpy as np

from graphopt.errors import GraphError

VARIABLE_KINDS = ("input", "label", "param", "aux")


class Tensor(NamedTuple):
    """One output of one node: ``Tensor("conv0", 0)``."""
    node: str
    index: int = 0


@dataclass
class TensorType:
    shape: tuple[int, ...] | None = None
    dtype: str | None = None

    @property
    def known(self) -> bool:
        return self.shape is not None and self.dtype is not None


@dataclass
class Node:
    name: str
    op: str
    kind: str = "op"
    attrs: dict[str, Any] = field(default_factory=dict)
    outputs: list[TensorType] = field(default_factory=lambda: [TensorType()])
    output_names: list[str] = field(default_factory=list)
    origin: tuple[str, ...] = ()
    rule: str | None = None
    raw_attrs: dict[str, str] = field(default_factory=dict, repr=False)
    total_outputs: int | None = field(default=None, repr=False)
    seq: int = field(default=0, repr=False, compare=False)
    # the body graphs of a control-flow op (_foreach, _while_loop, _cond) as MXNet wrote them:
    # symbol JSON objects, kept verbatim and never edited
    subgraphs: list[dict] | None = field(default=None, repr=False, compare=False)

    @property
    def is_variable(self) -> bool:
        return self.op == "null"

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of the first output (the only one for most nodes)."""
        return self.outputs[0].shape

    @property
    def dtype(self) -> str | None:
        return self.outputs[0].dtype


def default_output_names(name: str, op: str, num_outputs: int) -> list[str]:
    """MXNet's naming of a node's outputs: ``x`` for a variable, ``x_output``, ``x_output0``..."""
    if op == "null":
        return [name]
    if num_outputs == 1:
        return [f"{name}_output"]
    return [f"{name}_output{i}" for i in range(num_outputs)]


def unique_output_names(names: list[str]) -> list[str]:
    """Graph output names made unique, as the ONNX export and MXNet runs name them: the same
    tensor listed twice as an output is ``name``, then ``name_1``..."""
    seen: set[str] = set()
    unique = []
    for name in names:
        candidate, k = name, 0
        while candidate in seen:
            k += 1
            candidate = f"{name}_{k}"
        seen.add(candidate)
        unique.append(candidate)
    return unique


class Graph:
    """A computation graph of MXNet ops with its parameters.

    Build one with :func:`graphopt.load` or :func:`graphopt.from_block`; edit it only through
    the methods below.
    """

    def __init__(self, name: str = "model"):
        self.name = name
        self.nx = nx.MultiDiGraph()
        self.params: dict[str, np.ndarray] = {}
        self.outputs: list[Tensor] = []
        self.output_labels: list[str] = []   # the loaded model's output names, kept by rewrites
        self.source: dict[str, Any] = {}     # where the graph was loaded from, for error messages
        self._seq = itertools.count()
        self._journal: list[Callable[[], None]] | None = None
        # names a new node must not take: a node's output renamed to ``bn_output`` holds "bn"
        self._names_held_by_outputs: set[str] = set()
        # what is computed from the structure and attributes (the MXNet symbol), dropped by
        # every edit and every rollback
        self.derived: dict[str, Any] = {}

    # --- queries ------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def node(self, name: str) -> Node:
        try:
            return self.nx.nodes[name]["node"]
        except KeyError:
            raise KeyError(f"no node named {name!r} in graph {self.name!r}") from None

    def nodes(self) -> Iterator[Node]:
        """All nodes in topological order (stable: ties keep the order of creation)."""
        for name in self.topological_order():
            yield self.node(name)

    def op_nodes(self, op: str | None = None) -> list[Node]:
        return [n for n in self.nodes() if not n.is_variable and (op is None or n.op == op)]

    def variables(self, kind: str | None = None) -> list[Node]:
        """Variables (of ``kind``) in creation order, which for a loaded graph is the file's order.
        No topological sort is needed: variables have no inputs."""
        kinds = VARIABLE_KINDS if kind is None else (kind,)
        found = [n for n in self._iter_unordered() if n.is_variable and n.kind in kinds]
        return sorted(found, key=lambda n: n.seq)

    @property
    def input_names(self) -> list[str]:
        return [n.name for n in self.variables("input")]

    @property
    def output_names(self) -> list[str]:
        """Stable names of the graph outputs: those of the loaded model, whatever rewrites did
        to the nodes producing them (ONNX outputs carry these names)."""
        labels = self.output_labels
        return [labels[i] if i < len(labels) and labels[i] else self.tensor_name(t)
                for i, t in enumerate(self.outputs)]

    def tensor_name(self, tensor: Tensor) -> str:
        node = self.node(tensor.node)
        names = node.output_names or default_output_names(node.name, node.op, node.num_outputs)
        return names[tensor.index]

    def tensor_type(self, tensor: Tensor) -> TensorType:
        return self.node(tensor.node).outputs[tensor.index]

    def inputs_of(self, name: str) -> list[Tensor]:
        """The tensors feeding ``name``, in slot order."""
        edges = sorted(self.nx.in_edges(name, keys=True, data="index"), key=lambda e: e[2])
        return [Tensor(src, index) for src, _dst, _slot, index in edges]

    def input_of(self, name: str, slot: int) -> Tensor | None:
        for src, _dst, key, index in self.nx.in_edges(name, keys=True, data="index"):
            if key == slot:
                return Tensor(src, index)
        return None

    def consumers(self, target: Tensor | str) -> list[tuple[str, int]]:
        """(consumer, slot) pairs reading ``target`` (a tensor, or any output of a node name)."""
        name, index = (target, None) if isinstance(target, str) else target
        uses = [(dst, slot) for _src, dst, slot, i in self.nx.out_edges(name, keys=True, data="index")
                if index is None or i == index]
        return sorted(uses, key=lambda use: (self.node(use[0]).seq, use[1]))

    def is_output(self, target: Tensor | str) -> bool:
        if isinstance(target, str):
            return any(t.node == target for t in self.outputs)
        return target in self.outputs

    def param(self, name: str) -> np.ndarray:
        return self.params[name]

    def topological_order(self) -> list[str]:
        """Kahn's algorithm with creation order as the tie-break, so an unchanged graph keeps
        the node order it was loaded with."""
        graph = self.nx
        indegree = {name: graph.in_degree(name) for name in graph}
        seq = {name: data["node"].seq for name, data in graph.nodes(data=True)}
        ready = [(seq[n], n) for n, d in indegree.items() if d == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            _, name = heapq.heappop(ready)
            order.append(name)
            for _src, dst in graph.out_edges(name):
                indegree[dst] -= 1
                if indegree[dst] == 0:
                    heapq.heappush(ready, (seq[dst], dst))
        if len(order) != len(indegree):
            cyclic = sorted(n for n, d in indegree.items() if d > 0)
            raise GraphError(f"graph has a cycle through {cyclic[:8]}", node=cyclic[0])
        return order

    def unique_name(self, base: str) -> str:
        """``base``, else ``base_1``, ``base_2``...: a name no node has, and whose outputs would
        not be named as a renamed output already is."""
        held = self._names_held_by_outputs
        if base not in self.nx and base not in held:
            return base
        for i in itertools.count(1):
            candidate = f"{base}_{i}"
            if candidate not in self.nx and candidate not in held:
                return candidate
        raise AssertionError("unreachable")

    # --- the journal ----------------------------------------------------------------------

    def journal_mark(self) -> int:
        """Start (or continue) journaling edits; returns a mark to :meth:`rollback` to."""
        if self._journal is None:
            self._journal = []
        return len(self._journal)

    def rollback(self, mark: int) -> None:
        """Undo every edit made since ``mark``, newest first."""
        journal = self._journal or []
        self.derived.clear()
        saved, self._journal = self._journal, None  # undo steps are not themselves journaled
        try:
            while len(journal) > mark:
                journal.pop()()
        finally:
            self._journal = saved

    def stop_journal(self) -> None:
        self._journal = None

    def _record(self, undo: Callable[[], None]) -> None:
        self.derived.clear()
        if self._journal is not None:
            self._journal.append(undo)

    # --- edits ------------------------------------------------------------------------------

    def add_node(self, op: str, inputs: Iterable[Tensor] = (), *, name: str | None = None,
                 attrs: dict[str, Any] | None = None, num_outputs: int = 1, kind: str = "op",
                 origin: Iterable[str] = (), rule: str | None = None,
                 output_names: list[str] | None = None) -> Node:
        """Add a node reading ``inputs`` (slot i <- inputs[i]). Names are made unique."""
        name = self.unique_name(name or op.lower().strip("_"))
        node = Node(name=name, op=op, kind=kind, attrs=dict(attrs or {}),
                    outputs=[TensorType() for _ in range(num_outputs)],
                    output_names=list(output_names or default_output_names(name, op, num_outputs)),
                    origin=tuple(origin), rule=rule, seq=next(self._seq))
        self._insert(node)
        for slot, tensor in enumerate(inputs):
            self._connect(tensor, name, slot)
        return node

    def add_variable(self, name: str, kind: str = "input", shape: tuple | None = None,
                     dtype: str | None = None, attrs: dict[str, Any] | None = None,
                     origin: Iterable[str] = (), rule: str | None = None) -> Node:
        if kind not in VARIABLE_KINDS:
            raise ValueError(f"variable kind must be one of {VARIABLE_KINDS}, not {kind!r}")
        name = self.unique_name(name)
        node = Node(name=name, op="null", kind=kind, attrs=dict(attrs or {}),
                    outputs=[TensorType(shape, dtype)], output_names=[name],
                    origin=tuple(origin), rule=rule, seq=next(self._seq))
        self._insert(node)
        return node

    def add_param(self, name: str, array: np.ndarray, kind: str = "param",
                  origin: Iterable[str] = (), rule: str | None = None) -> Node:
        """Add a variable holding ``array`` (a parameter, or an aux state with ``kind="aux"``)."""
        array = _frozen(array)
        node = self.add_variable(name, kind=kind, shape=tuple(array.shape),
                                 dtype=str(array.dtype), origin=origin, rule=rule)
        self._set_param_value(node.name, array)
        return node

    def set_param(self, name: str, array: np.ndarray) -> None:
        """Replace the value of parameter ``name`` (its shape may change: deleting channels)."""
        node = self.node(name)
        if not node.is_variable or node.kind not in ("param", "aux"):
            raise GraphError(f"{name!r} is not a parameter", node=name, op=node.op)
        array = _frozen(array)
        old_type = _copy.copy(node.outputs[0])
        self._set_param_value(name, array)
        node.outputs[0] = TensorType(tuple(array.shape), str(array.dtype))
        self._record(lambda: node.outputs.__setitem__(0, old_type))

    def set_attr(self, name: str, key: str, value: Any) -> None:
        """Set (or, with ``value=None`` for an attribute to drop, use :meth:`del_attr`) an attribute."""
        node = self.node(name)
        had, old = key in node.attrs, node.attrs.get(key)
        node.attrs[key] = value
        self._record(lambda: node.attrs.__setitem__(key, old) if had else node.attrs.pop(key, None))

    def del_attr(self, name: str, key: str) -> None:
        node = self.node(name)
        if key in node.attrs:
            old = node.attrs.pop(key)
            self._record(lambda: node.attrs.__setitem__(key, old))

    def set_output_types(self, name: str, types: list[TensorType]) -> None:
        """Record new output shapes/dtypes of ``name`` (after a local re-inference)."""
        node = self.node(name)
        old = node.outputs
        node.outputs = [_copy.copy(t) for t in types]
        self._record(lambda: setattr(node, "outputs", old))

    def set_output_name(self, tensor: Tensor, name: str) -> None:
        """Give output ``tensor`` the name ``name`` (the name of a tensor it now stands for)."""
        node = self.node(tensor.node)
        old = node.output_names or default_output_names(node.name, node.op, node.num_outputs)
        node.output_names = [name if i == tensor.index else n for i, n in enumerate(old)]
        self._names_held_by_outputs.add(name.rpartition("_output")[0] or name)
        self._record(lambda: setattr(node, "output_names", old))

    def set_provenance(self, name: str, rule: str | None, origin: Iterable[str]) -> None:
        """Record that rule ``rule`` made (or remade) ``name`` from the loaded nodes ``origin``."""
        node = self.node(name)
        old_rule, old_origin = node.rule, node.origin
        node.rule, node.origin = rule, tuple(origin)
        self._record(lambda: (setattr(node, "rule", old_rule), setattr(node, "origin", old_origin)))

    def set_input(self, consumer: str, slot: int, tensor: Tensor) -> None:
        """Make ``consumer`` read ``tensor`` at ``slot`` (replacing what it read there)."""
        old = self.input_of(consumer, slot)
        if old is not None:
            self._disconnect(old.node, consumer, slot)
        self._connect(tensor, consumer, slot)

    def replace_all_uses(self, old: Tensor, new: Tensor, *, exclude: Iterable[str] = ()) -> None:
        """Every consumer of ``old`` (and the graph outputs) reads ``new`` instead."""
        excluded = set(exclude)
        for consumer, slot in self.consumers(old):
            if consumer not in excluded and consumer != new.node:
                self.set_input(consumer, slot, new)
        if old in self.outputs:
            before = list(self.outputs)
            self.outputs = [new if t == old else t for t in self.outputs]
            self._record(lambda: setattr(self, "outputs", before))

    def set_outputs(self, outputs: list[Tensor]) -> None:
        before = list(self.outputs)
        self.outputs = list(outputs)
        self._record(lambda: setattr(self, "outputs", before))

    def insert_on_edge(self, tensor: Tensor, op: str, *, consumers: Iterable[tuple[str, int]] | None = None,
                       extra_inputs: Iterable[Tensor] = (), **node_args: Any) -> Node:
        """Insert a node ``op(tensor, *extra_inputs)`` between ``tensor`` and its consumers
        (all of them, and the graph outputs, unless ``consumers`` names some)."""
        node = self.add_node(op, [tensor, *extra_inputs], **node_args)
        if consumers is None:
            self.replace_all_uses(tensor, Tensor(node.name, 0), exclude=[node.name])
        else:
            for consumer, slot in list(consumers):
                self.set_input(consumer, slot, Tensor(node.name, 0))
        return node

    def erase_node(self, name: str) -> None:
        """Remove a node that nothing reads any more (with its parameter value)."""
        node = self.node(name)
        users = self.consumers(name)
        if users or self.is_output(name):
            raise GraphError(f"cannot erase {name!r}: still read by {users or 'the graph outputs'}",
                             node=name, op=node.op)
        in_edges = [(src, slot, index) for src, _dst, slot, index
                    in self.nx.in_edges(name, keys=True, data="index")]
        param = self.params.pop(name, None)
        self.nx.remove_node(name)

        def undo() -> None:
            self.nx.add_node(name, node=node)
            if param is not None:
                self.params[name] = param
            for src, slot, index in in_edges:
                self.nx.add_edge(src, name, key=slot, index=index)
        self._record(undo)

    def live_nodes(self) -> set[str]:
        """Names of the nodes the graph outputs depend on."""
        live: set[str] = set()
        stack = [t.node for t in self.outputs]
        while stack:
            name = stack.pop()
            if name not in live:
                live.add(name)
                stack.extend(self.nx.predecessors(name))
        return live

    def erase_dead(self) -> list[str]:
        """Erase every node the outputs do not depend on; returns their names."""
        live = self.live_nodes()
        dead = [n for n in reversed(self.topological_order()) if n not in live]
        for name in dead:
            self.erase_node(name)
        return dead

    # --- internals of the edits ---------------------------------------------------------------

    def _insert(self, node: Node) -> None:
        self.nx.add_node(node.name, node=node)
        self._record(lambda: self.nx.remove_node(node.name))

    def _set_param_value(self, name: str, array: np.ndarray) -> None:
        had, old = name in self.params, self.params.get(name)
        self.params[name] = array
        self._record(lambda: self.params.__setitem__(name, old) if had else self.params.pop(name, None))

    def _connect(self, tensor: Tensor, consumer: str, slot: int) -> None:
        producer = self.node(tensor.node)
        if not 0 <= tensor.index < producer.num_outputs:
            raise GraphError(f"{tensor.node!r} has no output {tensor.index}", node=consumer,
                             op=self.node(consumer).op)
        self.nx.add_edge(tensor.node, consumer, key=slot, index=tensor.index)
        self._record(lambda: self.nx.remove_edge(tensor.node, consumer, key=slot))

    def _disconnect(self, producer: str, consumer: str, slot: int) -> None:
        index = self.nx.edges[producer, consumer, slot]["index"]
        self.nx.remove_edge(producer, consumer, key=slot)
        self._record(lambda: self.nx.add_edge(producer, consumer, key=slot, index=index))

    # --- whole-graph operations -----------------------------------------------------------------

    def copy(self) -> "Graph":
        """An independent copy. Parameter arrays are shared: they are read-only and edits replace them."""
        other = Graph(self.name)
        other.nx = nx.MultiDiGraph()
        for name, data in self.nx.nodes(data=True):
            node = _copy.copy(data["node"])
            node.attrs = dict(node.attrs)
            node.outputs = [_copy.copy(t) for t in node.outputs]
            node.output_names = list(node.output_names)
            other.nx.add_node(name, node=node)
        other.nx.add_edges_from(self.nx.edges(keys=True, data=True))
        other.params = dict(self.params)
        other.outputs = list(self.outputs)
        other.output_labels = list(self.output_labels)
        other.source = dict(self.source)
        other._seq = itertools.count(max((n.seq for n in self._iter_unordered()), default=-1) + 1)
        other._names_held_by_outputs = set(self._names_held_by_outputs)
        other.derived = dict(self.derived)  # the same structure: the same symbol
        return other

    def _iter_unordered(self) -> Iterator[Node]:
        for _name, data in self.nx.nodes(data=True):
            yield data["node"]

    def validate(self, *, shapes: bool = True) -> None:
        """Check that the graph is well formed; raises :class:`GraphError` naming the first problem.

        Checks: no cycle; outputs exist; every edge reads an output the producer has; each op's
        input slots are 0..n-1 without gaps and a variable has no inputs; every parameter variable
        has a value of the recorded shape; with ``shapes``, every tensor that is read (by a node
        or as a graph output) has a known shape and dtype. (MXNet's inference may leave an
        output nothing reads unknown: the stacked outputs of an unused ``_while_loop`` result.)
        """
        order = self.topological_order()  # raises on a cycle
        read = {(src, index) for src, _dst, index in self.nx.edges(data="index")} \
            | {(t.node, t.index) for t in self.outputs} if shapes else set()
        for tensor in self.outputs:
            if tensor.node not in self.nx or tensor.index >= self.node(tensor.node).num_outputs:
                raise GraphError(f"graph output {tensor} does not exist", node=tensor.node)
        for name in order:
            node = self.node(name)
            slots = sorted(key for _s, _d, key in self.nx.in_edges(name, keys=True))
            if node.is_variable:
                if slots:
                    raise GraphError("a variable has inputs", node=name, op=node.op)
                if node.kind in ("param", "aux"):
                    if name not in self.params:
                        raise GraphError("parameter has no value", node=name, op=node.op)
                    value = self.params[name]
                    if node.shape is not None and tuple(value.shape) != tuple(node.shape):
                        raise GraphError(f"parameter value has shape {value.shape}, node records "
                                         f"{node.shape}", node=name, op=node.op)
            elif slots != list(range(len(slots))):
                raise GraphError(f"input slots {slots} are not numbered 0..{len(slots) - 1}",
                                 node=name, op=node.op)
            for src, _dst, slot, index in self.nx.in_edges(name, keys=True, data="index"):
                if index >= self.node(src).num_outputs:
                    raise GraphError(f"slot {slot} reads output {index} of {src!r}, which has "
                                     f"{self.node(src).num_outputs}", node=name, op=node.op)
            if shapes:
                for i, tensor_type in enumerate(node.outputs):
                    if not tensor_type.known and (name, i) in read:
                        raise GraphError(f"output {i} has unknown shape or dtype", node=name,
                                         op=node.op)

    def infer_shapes(self, input_shapes: dict[str, tuple] | None = None,
                     input_dtypes: dict[str, str] | None = None) -> None:
        """Recompute the shape and dtype of every tensor (with MXNet's own inference)."""
        from graphopt.mxnet_io.infer import infer_shapes  # MXNet defines the semantics of its ops
        infer_shapes(self, input_shapes, input_dtypes)

    def summary(self) -> str:
        ops = sum(1 for n in self._iter_unordered() if not n.is_variable)
        params = sum(int(a.size) for a in self.params.values())
        ins = ", ".join(f"{n.name}{list(n.shape) if n.shape else ''}" for n in self.variables("input"))
        outs = ", ".join(f"{self.tensor_name(t)}{list(self.tensor_type(t).shape or [])}"
                         for t in self.outputs)
        return f"Graph {self.name!r}: {ops} ops, {params:,} parameters; inputs {ins}; outputs {outs}"

    def __repr__(self) -> str:
        return f"<graphopt.Graph {self.name!r} with {len(self)} nodes>"


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.flags.writeable:
        array = array.copy()
        array.flags.writeable = False
    return array
