"""The functions ``rules/prune.toml`` names, registered with the rule engine at import
(``graphopt.prune`` imports this module, and ``graphopt`` imports ``graphopt.prune``, before any
rule file is loaded)."""

from __future__ import annotations

from graphopt.prune.coupling import channel_groups, refusal
from graphopt.prune.drop import plan_drop
from graphopt.rewrite.edits import GraphChanges
from graphopt.rewrite.match import Ref
from graphopt.rewrite.registry import NoRewrite, register_function


@register_function(returns="changes")
def zeroed_channel_drop(producer: Ref) -> GraphChanges:
    """The edits deleting the zeroed channels of the channel group ``producer`` makes (new
    weights, biases with the folded constants, BatchNorm statistics, channel counts), across
    the whole group; declines with the reason when none can go."""
    graph = producer.graph
    for group in channel_groups(graph):
        if any(p.node == producer.name for p in group.producers):
            plan = plan_drop(graph, group)
            if not plan.dropped:
                raise NoRewrite(plan.explain())
            return plan.changes
    raise NoRewrite(f"{producer.name!r} makes no channel group: "
                    f"{refusal(graph, producer.name) or 'its output channels are not followed'}")
