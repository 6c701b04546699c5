"""Matching a rule's pattern at an anchor node.

The matcher walks from the anchor to its producers, slot by slot, as the pattern says. It stops
at the first thing that does not fit and says what and where (the onnxscript lesson: "why didn't
my rule fire?"), e.g. ``bn slot 0 (data): expected Convolution, found Concat 'concat3'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphopt.ir.graph import Graph, Node, Tensor
from graphopt.rewrite.rules import PatternNode, Rule
from graphopt.schema import attr_or_default, mxnet_schema


def inputs_in_slot_order(graph: Graph, name: str) -> list[Tensor]:
    """``graph.inputs_of(name)``, read straight from networkx's adjacency: the matcher asks this
    for every node it visits, and building edge views cost a third of a fold on long chains."""
    by_slot = {}
    for source, edges in graph.nx.pred[name].items():
        for slot, data in edges.items():
            by_slot[slot] = Tensor(source, data["index"])
    return [by_slot[slot] for slot in sorted(by_slot)]


def readers(graph: Graph, tensor: Tensor) -> list[tuple[str, int]]:
    """``graph.consumers(tensor)`` without its ordering by creation (the same pairs)."""
    return [(consumer, slot) for consumer, edges in graph.nx.succ[tensor.node].items()
            for slot, data in edges.items() if data["index"] == tensor.index]


class Ref:
    """A name bound by a match: one tensor of the graph and the node producing it. This is what
    guards and functions receive for pattern names."""

    __slots__ = ("graph", "binding", "tensor")

    def __init__(self, graph: Graph, binding: str, tensor: Tensor):
        self.graph, self.binding, self.tensor = graph, binding, tensor

    @property
    def node(self) -> Node:
        return self.graph.node(self.tensor.node)

    @property
    def name(self) -> str:
        return self.tensor.node

    @property
    def op(self) -> str:
        return self.node.op

    @property
    def shape(self) -> tuple[int, ...] | None:
        return self.graph.tensor_type(self.tensor).shape

    @property
    def dtype(self) -> str | None:
        return self.graph.tensor_type(self.tensor).dtype

    @property
    def is_param(self) -> bool:
        node = self.node
        return node.is_variable and node.kind in ("param", "aux")

    @property
    def value(self) -> np.ndarray:
        """The parameter's value (the pattern's ``params`` guarantees there is one)."""
        return self.graph.params[self.tensor.node]

    def attr(self, key: str) -> Any:
        """An attribute of the producing op: explicit if set, else MXNet's default."""
        node = self.node
        return attr_or_default(node.op, node.attrs, key)

    def consumers(self) -> list[tuple[str, int]]:
        """(consumer, slot) pairs reading this tensor, in the graph's order."""
        return self.graph.consumers(self.tensor)

    def readers(self) -> list[tuple[str, int]]:
        """The same pairs in no particular order (faster)."""
        return readers(self.graph, self.tensor)

    def __repr__(self) -> str:
        return f"Ref({self.binding}={self.tensor.node}:{self.tensor.index})"


@dataclass
class Match:
    rule: Rule
    anchor: str
    tensors: dict[str, Tensor | None]           # binding -> tensor (None: absent optional slot)
    nodes: list[str] = field(default_factory=list)  # graph names of the matched pattern nodes

    def ref(self, graph: Graph, binding: str) -> Ref | None:
        tensor = self.tensors[binding]
        return None if tensor is None else Ref(graph, binding, tensor)


@dataclass
class Mismatch:
    where: str          # "bn slot 0 (data)"
    reason: str         # "expected Convolution, found Concat 'concat3'"

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def slot_name(op: str, slot: int) -> str:
    """MXNet's name of input ``slot`` of ``op`` (``weight``); ``data3`` for variadic ops."""
    spec = mxnet_schema().get(op)
    if spec is not None and slot < len(spec.inputs) and not spec.variadic:
        return spec.inputs[slot]
    if spec is not None and spec.variadic and spec.inputs:
        return f"{spec.inputs[-1]}{slot}"
    return f"in{slot}"


def _describe(node: Node) -> str:
    if node.is_variable:
        return f"{node.kind} variable {node.name!r}"
    return f"{node.op} {node.name!r}"


def match_rule(rule: Rule, graph: Graph, anchor: str) -> Match | Mismatch:
    """Match ``rule`` with its anchor at node ``anchor`` (whose op the caller has checked)."""
    anchor_node = rule.pattern[rule.anchor]
    match = Match(rule, anchor, {})
    problem = _match_node(rule, graph, anchor_node, Tensor(anchor, anchor_node.output), match,
                          where=rule.anchor)
    return problem or match


def _match_node(rule: Rule, graph: Graph, pattern: PatternNode, tensor: Tensor, match: Match,
                where: str) -> Mismatch | None:
    bound = match.tensors.get(pattern.binding)
    if bound is not None:
        return None if bound == tensor else Mismatch(where, f"{pattern.binding} is bound to "
                                                            f"{bound.node!r}, found {tensor.node!r}")
    node = graph.node(tensor.node)
    if node.op not in pattern.ops:
        return Mismatch(where, f"expected {' or '.join(pattern.ops)}, found {_describe(node)}")
    if tensor.index != pattern.output:
        return Mismatch(where, f"expected output {pattern.output} of {node.name!r}, found output "
                               f"{tensor.index}")
    for key, wanted in pattern.attrs:
        actual = attr_or_default(node.op, node.attrs, key, None)
        if isinstance(actual, list):
            actual = tuple(actual)
        if actual != wanted:
            return Mismatch(f"{pattern.binding} ({node.name})",
                            f"attribute {key} is {actual!r}, the pattern needs {wanted!r}")
    match.tensors[pattern.binding] = tensor
    match.nodes.append(node.name)
    inputs = inputs_in_slot_order(graph, node.name)
    if len(inputs) > len(pattern.inputs) and not pattern.more_inputs:
        return Mismatch(f"{pattern.binding} ({node.name})",
                        f"has {len(inputs)} inputs, the pattern names {len(pattern.inputs)}")
    for slot, spec in enumerate(pattern.inputs):
        slot_where = f"{pattern.binding} slot {slot} ({slot_name(node.op, slot)})"
        if slot >= len(inputs):
            if not spec.optional:
                return Mismatch(slot_where, f"{node.name!r} has no input there")
            if spec.binding is not None:
                if match.tensors.get(spec.binding, None) is not None:
                    return Mismatch(slot_where, f"{spec.binding} is bound elsewhere but absent here")
                match.tensors[spec.binding] = None
            continue
        if spec.binding is None:
            continue
        source = inputs[slot]
        child = rule.pattern.get(spec.binding)
        if child is not None:
            problem = _match_node(rule, graph, child, source, match, slot_where)
            if problem is not None:
                return problem
            continue
        if spec.binding in rule.params:
            producer = graph.node(source.node)
            if not (producer.is_variable and producer.kind in ("param", "aux")):
                return Mismatch(slot_where, f"expected a parameter, found {_describe(producer)}")
        previous = match.tensors.get(spec.binding)
        if spec.binding in match.tensors and previous != source:
            return Mismatch(slot_where, f"{spec.binding} is bound to "
                                        f"{previous.node if previous else 'nothing'!r}, found "
                                        f"{source.node!r}")
        match.tensors[spec.binding] = source
    return None
