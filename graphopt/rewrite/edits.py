"""Carrying out a rule's ``edits`` on the graph, through the graph's own edit vocabulary.

Each verb is one small method of :class:`~graphopt.ir.Graph` (the FX lesson), so producers and
consumers stay consistent and every change is journaled for rollback:

    set_input       make a slot read a tensor, or a new parameter holding a computed array
    replace_uses    every reader of one tensor (and the graph outputs) reads another
    set_attr        set attributes, literal (``attrs``) or computed (``attrs_from``)
    add_node        add an op node
    add_param       add a parameter holding a computed array
    insert_on_edge  put an op between a tensor and all its readers
    erase           remove a node nothing reads
    apply_changes   a computed :class:`GraphChanges`: new parameter values, new parameter inputs
                    and attributes across any number of nodes (deleting channels through a
                    whole channel group is not a local pattern)

Afterwards the matched nodes and parameters that nothing reads any more are erased, and every
node the rule made or changed records the rule and the loaded nodes it stands for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphopt.errors import GraphError
from graphopt.ir.graph import Graph, Tensor, TensorType
from graphopt.rewrite.match import Match, Ref, readers, slot_name
from graphopt.rewrite.rules import Edit, Rule
from graphopt.rewrite.validate import visible_outputs
from graphopt.schema import format_value, mxnet_schema


@dataclass
class GraphChanges:
    """Edits a function computed for the ``apply_changes`` verb, made through the graph's edit
    vocabulary (journaled, validated and rolled back like any other edit):

    ``params``      parameter name -> its new value (the shape may change);
    ``new_inputs``  (node, slot, value): the node reads a new parameter holding ``value`` there;
    ``attrs``       (node, key, value): set an attribute.
    """
    params: dict[str, np.ndarray] = field(default_factory=dict)
    new_inputs: list[tuple[str, int, np.ndarray]] = field(default_factory=list)
    attrs: list[tuple[str, str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.params or self.new_inputs or self.attrs)


@dataclass
class EditSummary:
    added: list[str] = field(default_factory=list)        # new nodes (ops and parameters)
    changed: set[str] = field(default_factory=set)        # existing ops whose inputs/attrs changed
    erased: list[str] = field(default_factory=list)
    neighbours: set[str] = field(default_factory=set)     # producers whose readers changed
    replaced: list[tuple[str, TensorType, Tensor]] = field(default_factory=list)


class EditRun:
    def __init__(self, graph: Graph, rule: Rule, match: Match, values: dict[str, Any]):
        self.graph, self.rule, self.match, self.values = graph, rule, match, values
        self.new: dict[str, Tensor] = {}
        self.remade: set[str] = set()   # existing nodes whose inputs or attributes the rule set
        self.stands_for: list[str] = []  # the name of each tensor replace_uses replaced
        self.summary = EditSummary()
        origin: list[str] = []
        for name in match.nodes:
            node = graph.node(name)
            origin.extend(node.origin or (name,))
        self.origin = tuple(dict.fromkeys(origin))

    # names -> things -------------------------------------------------------------------------

    def tensor(self, name: str) -> Tensor | None:
        """The tensor a name stands for; ``"q:1"`` is output 1 of the node bound to ``q``."""
        if ":" in name:
            base, index = name.split(":")
            return Tensor(self.node_name(base), int(index))
        if name in self.new:
            return self.new[name]
        if isinstance(self.values.get(name), Ref):  # a function chose the tensor
            return self.values[name].tensor
        return self.match.tensors[name]

    def node_name(self, name: str) -> str:
        tensor = self.tensor(name)
        if tensor is None:
            raise GraphError(f"{name!r} is bound to an absent optional input")
        return tensor.node

    def template(self, template: str | None, default: str) -> str:
        if template is None:
            return default
        names = {k: (t.node if t is not None else k) for k, t in
                 list(self.match.tensors.items()) + list(self.new.items())}
        names.update({k: v.name for k, v in self.values.items() if isinstance(v, Ref)})
        return template.format(**names)

    def attrs(self, fields: dict) -> dict:
        attrs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.get("attrs", {}).items()}
        for key, name in fields.get("attrs_from", {}).items():
            attrs[key] = self.values[name]
        return attrs

    def source(self, name: str, consumer: str, slot: int, kind: str = "param") -> Tensor:
        """The tensor for ``name``: a bound tensor, or a new parameter for a computed array."""
        if name in self.values and not isinstance(self.values[name], Ref):
            param_name = f"{consumer}_{slot_name(self.graph.node(consumer).op, slot)}"
            return Tensor(self.param(self.values[name], param_name, kind), 0)
        tensor = self.tensor(name)
        if tensor is None:
            raise GraphError(f"{name!r} is bound to an absent optional input", node=consumer)
        return tensor

    def param(self, array: Any, name: str, kind: str) -> str:
        node = self.graph.add_param(name, np.asarray(array), kind=kind, origin=self.origin,
                                    rule=self.rule.name)
        self.summary.added.append(node.name)
        return node.name

    def owned_param(self, current: Tensor | None, consumer: str, slot: int) -> bool:
        """``current`` is a parameter that only this slot reads."""
        if current is None:
            return False
        producer = self.graph.node(current.node)
        return (producer.is_variable and producer.kind in ("param", "aux")
                and readers(self.graph, current) == [(consumer, slot)]
                and not self.graph.is_output(current.node))

    # the verbs -------------------------------------------------------------------------------

    def run(self) -> EditSummary:
        for edit in self.rule.edits:
            getattr(self, f"do_{edit.verb}")(edit)
        self.erase_dead()
        self.take_names()
        for name in self.remade:  # made again by this rule: it now stands for the matched nodes
            if name in self.graph:
                node = self.graph.node(name)
                origin = tuple(dict.fromkeys((node.origin or (name,)) + self.origin))
                self.graph.set_provenance(name, self.rule.name, origin)
        return self.summary

    def do_set_input(self, edit: Edit) -> None:
        consumer = self.node_name(edit.target)
        slot = edit.fields["slot"]
        if isinstance(slot, str):
            slot = mxnet_schema()[self.graph.node(consumer).op].inputs.index(slot)
        to = edit.fields["to"]
        current = self.graph.input_of(consumer, slot)
        if to in self.values and self.owned_param(current, consumer, slot):
            # give the parameter its new value: it keeps its name (and no other node sees it)
            self.graph.set_param(current.node, np.asarray(self.values[to]))
        else:
            kind = "aux" if current is not None and self.graph.node(current.node).kind == "aux" else "param"
            if current is not None:
                self.summary.neighbours.add(current.node)
            self.graph.set_input(consumer, slot, self.source(to, consumer, slot, kind))
        self.summary.changed.add(consumer)
        self.remade.add(consumer)

    def do_replace_uses(self, edit: Edit) -> None:
        old = self.tensor(edit.target)
        new = self.tensor(edit.fields["by"])
        if old is None or new is None:
            raise GraphError(f"replace_uses: {edit.target!r} or {edit.fields['by']!r} is absent")
        self.summary.replaced.append((old.node, self.graph.tensor_type(old), new))
        self.stands_for.append(self.graph.tensor_name(old))
        reading = [c for c, _slot in readers(self.graph, old) if c != new.node]
        self.graph.replace_all_uses(old, new)
        self.summary.changed.update(reading)
        self.summary.neighbours.add(new.node)

    def do_set_attr(self, edit: Edit) -> None:
        name = self.node_name(edit.target)
        for key, value in self.attrs(edit.fields).items():
            self.graph.set_attr(name, key, value)
        self.summary.changed.add(name)
        self.remade.add(name)

    def node_args(self, edit: Edit, default_name: str, inputs: int) -> dict:
        """Name, attributes, provenance and number of outputs of a node an edit adds."""
        op, attrs = edit.fields["op"], self.attrs(edit.fields)
        texts = tuple(sorted((k, v if isinstance(v, str) else format_value(v)) for k, v in attrs.items()))
        return {"name": self.template(edit.fields.get("name"), default_name), "attrs": attrs,
                "origin": self.origin, "rule": self.rule.name,
                "num_outputs": visible_outputs(op, texts, inputs)}

    def do_add_node(self, edit: Edit) -> None:
        op, inputs = edit.fields["op"], edit.fields.get("inputs", [])
        default = f"{self.match.anchor}_{op.lower().strip('_')}"
        node = self.graph.add_node(op, [], **self.node_args(edit, default, len(inputs)))
        self.new[edit.target] = Tensor(node.name, 0)
        self.summary.added.append(node.name)
        for slot, source in enumerate(inputs):
            self.graph.set_input(node.name, slot, self.source(source, node.name, slot))

    def do_add_param(self, edit: Edit) -> None:
        name = self.template(edit.fields.get("name"), f"{self.match.anchor}_{edit.target}")
        self.new[edit.target] = Tensor(self.param(self.values[edit.fields["value"]], name, "param"), 0)

    def do_insert_on_edge(self, edit: Edit) -> None:
        tensor = self.tensor(edit.fields["tensor"])
        op, extra = edit.fields["op"], edit.fields.get("extra_inputs", [])
        uses = readers(self.graph, tensor)
        reading = [c for c, _slot in uses]
        default = f"{tensor.node}_{op.lower().strip('_')}"
        # readers_only: the graph outputs keep the tensor itself (a quantize pair for the
        # readers must not turn the model's result into its quantized copy)
        consumers = uses if edit.fields.get("readers_only") else None
        node = self.graph.insert_on_edge(tensor, op, consumers=consumers,
                                         **self.node_args(edit, default, 1 + len(extra)))
        for slot, source in enumerate(extra, start=1):
            self.graph.set_input(node.name, slot, self.source(source, node.name, slot))
        self.new[edit.target] = Tensor(node.name, 0)
        self.summary.added.append(node.name)
        self.summary.changed.update(reading)

    def do_erase(self, edit: Edit) -> None:
        name = self.node_name(edit.target)
        self.summary.neighbours.update(self.graph.nx.pred[name])
        self.graph.erase_node(name)
        self.summary.erased.append(name)

    def do_apply_changes(self, edit: Edit) -> None:
        changes = self.values[edit.target]
        if not isinstance(changes, GraphChanges):
            raise GraphError(f"apply_changes needs a GraphChanges, {edit.target!r} is a "
                             f"{type(changes).__name__}")
        graph = self.graph
        for name, value in changes.params.items():
            graph.set_param(name, np.asarray(value))
            readers_of = [consumer for consumer, _slot in readers(graph, Tensor(name, 0))]
            self.summary.changed.update(readers_of)
            self.remade.update(readers_of)
        for node, slot, value in changes.new_inputs:
            name = f"{node}_{slot_name(graph.node(node).op, slot)}"
            graph.set_input(node, slot, Tensor(self.param(value, name, "param"), 0))
            self.summary.changed.add(node)
            self.remade.add(node)
        for node, key, value in changes.attrs:
            graph.set_attr(node, key, value)
            self.summary.changed.add(node)
            self.remade.add(node)

    # clean-up --------------------------------------------------------------------------------

    def take_names(self) -> None:
        """A tensor the rule made or remade that replaced a tensor of a node now erased takes
        that tensor's name: it computes what the old tensor computed (the conv with the
        BatchNorm folded in is the old ``bn_output``), and its own old value exists no more. A
        tensor that was merely rewired (an identity removed) keeps its name, which still means
        the same value. Names derive from unique node names, so an erased node's is free."""
        made = self.remade | {t.node for t in self.new.values()}
        for (old_node, _type, tensor), name in zip(self.summary.replaced, self.stands_for):
            if old_node not in self.graph and tensor.node in made and tensor.node in self.graph \
                    and not self.graph.node(tensor.node).is_variable:
                self.graph.set_output_name(tensor, name)

    def erase_dead(self) -> None:
        """Erase matched ops, and parameters they or the edits left unread. Graph inputs and
        nodes outside the match are never erased."""
        graph = self.graph
        candidates = list(dict.fromkeys(self.match.nodes))
        candidates += [t.node for t in self.match.tensors.values() if t is not None]
        candidates += list(self.summary.neighbours)
        pending = list(dict.fromkeys(candidates))
        matched = set(self.match.nodes)
        while pending:
            name = pending.pop(0)
            if name not in graph:
                continue
            node = graph.node(name)
            erasable = name in matched or (node.is_variable and node.kind in ("param", "aux"))
            if not erasable or graph.nx.succ[name] or graph.is_output(name):
                continue
            producers = list(graph.nx.pred[name])
            graph.erase_node(name)
            self.summary.erased.append(name)
            self.summary.changed.discard(name)
            self.summary.neighbours.update(producers)
            pending.extend(producers)


def apply_edits(graph: Graph, rule: Rule, match: Match, values: dict[str, Any]) -> EditSummary:
    return EditRun(graph, rule, match, values).run()


__all__ = ["apply_edits", "EditSummary", "GraphChanges"]
