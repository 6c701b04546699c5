"""The functions ``rules/prune.toml`` names, registered with the rule engine at import
(``graphopt.prune`` imports this module, and ``graphopt`` imports ``graphopt.prune``, before any
rule file is loaded)."""

from __future__ import annotations

import weakref

from graphopt.ir.graph import Graph
from graphopt.prune.coupling import ChannelGroup, channel_groups, signature
from graphopt.prune.drop import plan_drop
from graphopt.rewrite.edits import GraphChanges
from graphopt.rewrite.match import Ref
from graphopt.rewrite.registry import NoRewrite, register_function


class _Groups:
    """The channel groups of one graph under rewrite, kept across the drops.

    Every edit clears ``graph.derived``, so ``channel_groups`` would redo the whole analysis
    after each group dropped (densenet121: 60 times). But a drop changes only its own group's
    tensors; the others' descriptions still hold, which their :func:`signature` confirms before
    each use (the analysis is redone if one does not match). A group whose plan was handed to
    the engine is remembered: when its producers come back with its shapes changed, its
    channels were dropped."""

    def __init__(self, graph: Graph):
        self.refresh(graph)
        self.handed_out: set[int] = set()

    def refresh(self, graph: Graph) -> None:
        self.groups = channel_groups(graph)
        self.signatures = {id(g): signature(graph, g) for g in self.groups}
        self.by_producer = {p.node: g for g in self.groups for p in g.producers}
        self.refused = dict(graph.derived.get("channel_refusals", {}))
        self.handed_out = set()

    def group(self, graph: Graph, producer: str) -> tuple[ChannelGroup | None, bool]:
        """The producer's group, and whether its zeroed channels were just dropped."""
        group = self.by_producer.get(producer)
        if group is not None and self.signatures[id(group)] == signature(graph, group):
            return group, False
        if group is not None and id(group) in self.handed_out:
            return group, True
        if group is None and producer in self.refused:   # dropping never makes it followable
            return None, False
        self.refresh(graph)
        return self.by_producer.get(producer), False


_CACHE: "weakref.WeakKeyDictionary[Graph, _Groups]" = weakref.WeakKeyDictionary()


@register_function(returns="changes")
def zeroed_channel_drop(producer: Ref) -> GraphChanges:
    """The edits deleting the zeroed channels of the channel group ``producer`` makes (new
    weights, biases with the folded constants, BatchNorm statistics, channel counts), across
    the whole group; declines with the reason when none can go."""
    graph = producer.graph
    cache = _CACHE.get(graph)
    if cache is None:
        cache = _CACHE[graph] = _Groups(graph)
    group, dropped = cache.group(graph, producer.name)
    if group is None:
        why = cache.refused.get(producer.name) or "its output channels are not followed"
        raise NoRewrite(f"{producer.name!r} makes no channel group: {why}")
    if dropped:
        raise NoRewrite(f"{group.describe()}: its zeroed channels were dropped")
    plan = plan_drop(graph, group)
    if not plan.dropped:
        raise NoRewrite(plan.explain())
    cache.handed_out.add(id(group))
    return plan.changes
