"""Which layers a pruning touches: the weighted layers of a graph, and the ``layers=`` syntax.

A *prunable layer* is a Convolution, Deconvolution or FullyConnected node whose weight (input
slot 1) is a parameter the graph holds. A weight shared by two nodes is one layer (the first
node in topological order names it): pruning it once prunes both uses, so a pattern naming
either node selects (or with ``!`` excludes) it.

The ``layers`` selection (a string, or a list of strings; a string may hold several terms
separated by commas):

==========================  =================================================================
term                        selects
==========================  =================================================================
``op:Convolution``          every prunable layer of that op (case-insensitive; the canonical
                            MXNet name, e.g. ``op:FullyConnected``)
``re:PATTERN``              layers whose node name or weight name contains a match of the
                            Python regular expression (``re.search``)
``lenet_conv*``             layers whose node name or weight name matches the shell-style glob
                            (``fnmatch``: ``*``, ``?``, ``[...]``); a plain name is a glob too
``!TERM``                   removes what TERM selects (any of the forms above)
==========================  =================================================================

No term, or only ``!`` terms, starts from every prunable layer. So the classic tutorial's choice
(convolutions only, dense layers skipped) is ``layers="op:Convolution"``, and "everything but
the classifier" is ``layers="!lenet_dense1_fwd"``. A term that selects nothing is an error that
lists the prunable layers (and says when the name belongs to a node without weights): a typo
must never silently prune nothing, or everything.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from graphopt.errors import PruneError
from graphopt.ir.graph import Graph
from graphopt.schema import attr_or_default, mxnet_schema

WEIGHTED_OPS = ("Convolution", "Deconvolution", "FullyConnected")
"""Ops whose input slot 1 is a weight that magnitude and filter pruning act on."""

LayerSelection = str | Iterable[str] | None


@dataclass(frozen=True)
class PrunableLayer:
    """A weighted node: ``name`` (the node), ``op`` (canonical), ``weight`` and ``bias``
    (parameter names; ``bias`` is None without one)."""
    name: str
    op: str
    weight: str
    bias: str | None
    shared_with: tuple[str, ...] = ()   # the other nodes multiplying by the same weight

    @property
    def output_axis(self) -> int:
        """The weight axis that indexes output channels (within a group, for Deconvolution:
        its weight is (C_in, C_out / num_group, kh, kw))."""
        return 1 if self.op == "Deconvolution" else 0


def prunable_layers(graph: Graph) -> list[PrunableLayer]:
    """Every prunable layer of ``graph`` in topological order (see the module docstring)."""
    schema = mxnet_schema()
    layers, seen, readers = [], set(), {}
    for node in graph.nodes():
        if node.is_variable:
            continue
        op = schema.canonical(node.op)
        if op not in WEIGHTED_OPS:
            continue
        inputs = graph.inputs_of(node.name)
        if len(inputs) < 2 or inputs[1].node not in graph.params:
            continue
        readers.setdefault(inputs[1].node, []).append(node.name)
        if inputs[1].node in seen:
            continue
        seen.add(inputs[1].node)
        bias = inputs[2].node if len(inputs) > 2 and inputs[2].node in graph.params else None
        layers.append(PrunableLayer(node.name, op, inputs[1].node, bias))
    return [PrunableLayer(layer.name, layer.op, layer.weight, layer.bias,
                          tuple(readers[layer.weight][1:])) for layer in layers]


def selection_setting(layers: LayerSelection) -> str | list[str] | None:
    """``layers`` as a report records it (JSON-able: a string, a list or None)."""
    return layers if layers is None or isinstance(layers, str) else list(layers)


def _terms(layers: LayerSelection) -> list[str]:
    if layers is None:
        return []
    items = [layers] if isinstance(layers, str) else list(layers)
    terms = [term.strip() for item in items for term in str(item).split(",")]
    return [term for term in terms if term]


def _matcher(term: str):
    if term.lower().startswith("op:"):
        wanted = term[3:].strip().lower()
        return lambda layer: layer.op.lower() == wanted
    if term.startswith("re:"):
        try:
            pattern = re.compile(term[3:])
        except re.error as error:
            raise PruneError(f"layer pattern {term!r} is not a valid regular expression: "
                             f"{error}") from None
        return lambda layer: any(pattern.search(name) for name in
                                 (layer.name, layer.weight, *layer.shared_with))
    return lambda layer: any(fnmatch.fnmatchcase(name, term) for name in
                             (layer.name, layer.weight, *layer.shared_with))


def select_layers(graph: Graph, layers: LayerSelection = None,
                  candidates: list[PrunableLayer] | None = None) -> list[PrunableLayer]:
    """The prunable layers ``layers`` selects (syntax in the module docstring), in topological
    order. Raises :class:`PruneError` when a term selects nothing, or nothing is left."""
    available = prunable_layers(graph) if candidates is None else candidates
    terms = _terms(layers)
    includes = [t for t in terms if not t.startswith("!")]
    excludes = [t[1:].strip() for t in terms if t.startswith("!")]
    chosen: set[str] = set() if includes else {layer.name for layer in available}
    for term in includes:
        hits = [layer.name for layer in available if _matcher(term)(layer)]
        if not hits:
            raise PruneError(_nothing_matched(graph, term, available))
        chosen.update(hits)
    for term in excludes:
        hits = [layer.name for layer in available if _matcher(term)(layer)]
        if not hits:
            raise PruneError(_nothing_matched(graph, "!" + term, available))
        chosen.difference_update(hits)
    selected = [layer for layer in available if layer.name in chosen]
    if not selected:
        raise PruneError(f"layer selection {terms} leaves no layer to prune; prunable layers: "
                         f"{_listing(available)}")
    return selected


def _listing(available: list[PrunableLayer], limit: int = 40) -> str:
    if not available:
        return "none (no Convolution, Deconvolution or FullyConnected with a weight parameter)"
    shown = ", ".join(f"{layer.name} ({layer.op})" for layer in available[:limit])
    more = f" and {len(available) - limit} more" if len(available) > limit else ""
    ops = sorted({layer.op for layer in available})
    return f"{shown}{more}; ops: {', '.join('op:' + op for op in ops)}"


def _nothing_matched(graph: Graph, term: str, available: list[PrunableLayer]) -> str:
    message = f"layer pattern {term!r} matches no prunable layer"
    bare = term.lstrip("!")
    if not bare.lower().startswith(("op:", "re:")):
        others = [n for n in graph.op_nodes() if fnmatch.fnmatchcase(n.name, bare)]
        if others:
            names = ", ".join(f"{n.name} ({n.op})" for n in others[:5])
            message += f" (it names {names}, which has no weight to prune)"
    return f"{message}; prunable layers: {_listing(available)}"


def num_groups(graph: Graph, layer: PrunableLayer) -> int:
    """The layer's ``num_group`` (1 for FullyConnected)."""
    if layer.op == "FullyConnected":
        return 1
    return int(attr_or_default(layer.op, graph.node(layer.name).attrs, "num_group"))


def output_filters(weight, op: str, groups: int = 1):
    """The weight as a (C_out, fan_in) matrix: row ``o`` is everything output channel ``o``
    multiplies. Convolution/FullyConnected weights have output channels on axis 0;
    Deconvolution's (C_in, C_out/g, kh, kw) has them on axis 1 within each group of C_in/g
    input channels, so channel ``gi * C_out/g + j`` is ``W[gi*C_in/g:(gi+1)*C_in/g, j]``."""
    weight = np.asarray(weight)
    if op != "Deconvolution":
        return weight.reshape(weight.shape[0], -1)
    c_in, c_out_group = weight.shape[:2]
    grouped = weight.reshape(groups, c_in // groups, c_out_group, -1)
    return grouped.transpose(0, 2, 1, 3).reshape(groups * c_out_group, -1)


def zero_output_channels(weight, op: str, channels, groups: int = 1):
    """A copy of ``weight`` with the filters of output ``channels`` zeroed (layout as in
    :func:`output_filters`)."""
    weight = np.array(weight)
    channels = np.asarray(list(channels), dtype=np.int64)
    if channels.size == 0:
        return weight
    if op != "Deconvolution":
        weight[channels] = 0
        return weight
    c_in, c_out_group = weight.shape[:2]
    for channel in channels:
        group, local = divmod(int(channel), c_out_group)
        per_group = c_in // groups
        weight[group * per_group:(group + 1) * per_group, local] = 0
    return weight
