"""Dropping zeroed channels: deleting them from every coupled tensor, exactly.

    smaller, report = drop_channels(pruned_graph)
    print(report.format())          # what went, and why each zeroed channel that stayed stayed

The deletion is the rule ``drop_zeroed_channels`` (``rules/prune.toml``, phase
``drop_channels``) run by the rewrite engine, so it is journaled, re-inferred by MXNet and
rolled back if it does not hold, like any rewrite. The rule is anchored on a producer
(Convolution / FullyConnected / Deconvolution); its function :func:`plan_drop` looks at the
producer's whole :class:`~graphopt.prune.coupling.ChannelGroup` and computes every new array and
attribute of the group at once (``apply_changes``: a channel group is not a local pattern).

Which channels go (:func:`plan_drop`)
    A group channel may be deleted when it is not pinned (graph output, an op the analysis
    cannot follow...) and every layer reading it (the group's consumers) sees a constant there
    that can be folded into its bias: ``bias += c * sum(W[:, c])`` for a convolution that pads
    nothing or c == 0 (zero padding makes a constant channel non-constant at the borders: such
    channels stay, with that reason), the matching columns' sum for a FullyConnected after a
    Flatten, c == 0 only for a Deconvolution. The constant is the channel's value through
    BatchNorm (beta != 0 still emits one), activations and pooling
    (:mod:`graphopt.prune.constants`). Then: a tensor keeps at least one channel; the groups of a
    grouped convolution and the parts of a SliceChannel lose equally many (extra zeroed channels
    stay, with the reason).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from graphopt.ir.graph import Graph, Tensor
from graphopt.prune.constants import channel_constants
from graphopt.prune.coupling import (ChannelGroup, Consumer, bias_of, channel_cut, channel_groups,
                                     node_attr, pads_nothing)
from graphopt.rewrite.edits import GraphChanges
from graphopt.rewrite.report import Report
from graphopt.rewrite.rules import builtin_rules_dir, load_rule_file

RULE = "drop_zeroed_channels"
RULE_FILE = "prune.toml"


@dataclass
class DropPlan:
    """What dropping a group's zeroed channels does: the group channels ``dropped``, the
    constant channels ``kept`` with the reason, and the ``changes`` that delete them."""
    group: ChannelGroup
    dropped: list[int] = field(default_factory=list)
    zeroed: list[int] = field(default_factory=list)    # constant in every producer that makes it
    kept: dict[int, str] = field(default_factory=dict)
    carrier: int | None = None    # the constant channel kept to carry the others' constants
    changes: GraphChanges = field(default_factory=GraphChanges)

    def explain(self) -> str:
        """Why nothing (more) of this group is dropped."""
        if not self.zeroed:
            return f"{self.group.describe()}: no zeroed channel"
        reasons: dict[str, int] = {}
        for channel in self.zeroed:
            if channel in self.kept:
                reasons[self.kept[channel]] = reasons.get(self.kept[channel], 0) + 1
        listed = "; ".join(f"{count} channel(s): {why}" for why, count in reasons.items())
        return f"{self.group.describe()}: zeroed channels kept: {listed or 'none'}"


# --- choosing the channels -----------------------------------------------------------------------

SPREADS = "spreads"   # a constant a linear layer spreads unevenly: it needs the carrier channel


def _spreads_constants(graph: Graph, consumer: Consumer) -> bool:
    """A constant input channel does not give this layer a constant output: zero padding (or a
    transposed convolution) covers the borders unevenly. Such a layer is still linear in the
    constant, so ``c_p * L(W_p, 1)`` of every dropped channel p adds up, exactly, to
    ``c_r * L(W_r + sum_p (c_p / c_r) W_p, 1)`` for one constant channel r that stays: the
    carrier. (For one conv group; grouped layers keep such channels.)"""
    if consumer.op == "Deconvolution":
        return True
    return consumer.op == "Convolution" and not pads_nothing(graph, consumer.node)


def _fold_problem(graph: Graph, consumer: Consumer, value: float) -> str | None:
    """Why constant ``value`` at an input channel of ``consumer`` cannot go into its bias
    (``SPREADS`` if only through a carrier channel)."""
    if not np.isfinite(value):
        return "not constant"
    if value == 0 or not _spreads_constants(graph, consumer):
        return None
    if consumer.num_group > 1:
        return (f"a non-zero constant enters the zero padding of grouped {consumer.op} "
                f"{consumer.node!r}: not constant at the borders, so it cannot go into a bias")
    return SPREADS


def _carrier(group: ChannelGroup, values: dict[Tensor, np.ndarray], candidates: set[int],
             layers: set[str]) -> int | None:
    """The candidate whose constant is non-zero at every one of ``layers`` (the largest such,
    for the best-conditioned ratios c_p / c_r), or None."""
    best, best_size = None, 0.0
    for channel in sorted(candidates):
        sizes = []
        for consumer in group.consumers:
            if consumer.node in layers:
                constants = values[consumer.tensor]
                found = [abs(constants[p]) for p, c in enumerate(consumer.channels) if c == channel]
                sizes.append(max(found, default=0.0))
        size = min(sizes, default=0.0)
        if size > best_size:
            best, best_size = channel, size
    return best


def _choose(graph: Graph, group: ChannelGroup, values: dict[Tensor, np.ndarray],
            plan: DropPlan) -> set[int]:
    blocked: dict[int, str] = dict(group.pinned)
    spread: dict[int, set[str]] = {}
    for consumer in group.consumers:
        constants = values.get(consumer.tensor)
        for position, channel in enumerate(consumer.channels):
            value = np.nan if constants is None else constants[position]
            problem = _fold_problem(graph, consumer, value)
            if problem == SPREADS:
                spread.setdefault(channel, set()).add(consumer.node)
            elif problem is not None:
                blocked.setdefault(channel, problem)
    candidates = {c for c in spread if c not in blocked}
    if candidates:
        layers = set().union(*(spread[c] for c in candidates))
        carrier = _carrier(group, values, candidates, layers)
        names = ", ".join(sorted(layers))
        if carrier is None:
            for channel in candidates:
                blocked[channel] = (f"a non-zero constant enters the zero padding of {names} and "
                                    f"no constant channel can carry it there")
        else:
            plan.carrier = carrier
            blocked[carrier] = (f"carries the constants of the dropped channels into the zero "
                                f"padding of {names}")
    zeroed = {c for producer in group.producers for c in producer.channels}
    for producer in group.producers:
        constants = values.get(Tensor(producer.node, 0))
        for position, channel in enumerate(producer.channels):
            if constants is None or not np.isfinite(constants[position]):
                zeroed.discard(channel)
    plan.zeroed = sorted(zeroed)
    drop = {c for c in range(group.size) if c not in blocked}
    plan.kept.update({c: blocked[c] for c in zeroed if c in blocked})
    changed = True
    while changed:
        changed = False
        for tensor in list(group.tensors) + list(group.flat_tensors):
            channels = group.channels_of(tensor)
            if channels and all(c in drop for c in channels):
                drop.discard(channels[0])
                plan.kept[channels[0]] = (f"the last channel of {graph.tensor_name(tensor)} "
                                          f"(a layer never loses all its channels)")
                changed = True
        for constraint in group.constraints:
            counts = [sum(c in drop for c in block) for block in constraint.blocks]
            low = min(counts)
            for block, count in zip(constraint.blocks, counts):
                for channel in reversed(block):
                    if count <= low:
                        break
                    if channel in drop:
                        drop.discard(channel)
                        count -= 1
                        changed = True
                        plan.kept[channel] = (f"the {constraint.what} of {constraint.node!r} must "
                                              f"lose equally many channels")
    return drop


# --- computing the new arrays --------------------------------------------------------------------

class _Arrays:
    """The parameters a plan changes, as they stand after its earlier steps. Weights keep their
    dtype (a VGG classifier is 100M values); biases are float64 while constants are folded in."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.values: dict[str, np.ndarray] = {}
        self.new_bias: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray:
        return self.values[name] if name in self.values else self.graph.params[name]

    def set(self, name: str, value: np.ndarray) -> None:
        self.values[name] = value

    def bias(self, node: str, bias: str | None, size: int) -> np.ndarray:
        """The node's bias, writable, in float64 (a new zero bias if it has none)."""
        if bias is None:
            return self.new_bias.setdefault(node, np.zeros(size))
        value = self.get(bias)
        if value.dtype != np.float64 or not value.flags.writeable:
            value = value.astype(np.float64)
            self.set(bias, value)
        return value

    def changes(self, attrs: list, new_bias_slot: dict[str, int]) -> GraphChanges:
        params = {name: _read_only(value.astype(self.graph.params[name].dtype, copy=False))
                  for name, value in self.values.items()}
        new_inputs = []
        for node, value in self.new_bias.items():
            if np.any(value != 0):
                weight_dtype = self.graph.params[self.graph.input_of(node, 1).node].dtype
                new_inputs.append((node, new_bias_slot[node], value.astype(weight_dtype)))
                attrs.append((node, "no_bias", False))
        return GraphChanges(params, new_inputs, attrs)


def _read_only(array: np.ndarray) -> np.ndarray:
    """Arrays a plan made are its own: marked read-only, the graph keeps them without a copy."""
    array.flags.writeable = False
    return array


def _kept_positions(channels: tuple[int, ...], drop: set[int]) -> list[int]:
    return [p for p, c in enumerate(channels) if c not in drop]


def _per_group(positions: list[int], per_group: int, groups: int) -> list[list[int]]:
    """Positions split by the conv group they fall in, as indices within that group."""
    split: list[list[int]] = [[] for _ in range(groups)]
    for p in positions:
        split[p // per_group].append(p % per_group)
    return split


def _drop_outputs(graph: Graph, arrays: _Arrays, attrs: list, producer, keep: list[int]) -> None:
    weight = arrays.get(producer.weight)
    if producer.op == "Deconvolution":
        groups = producer.num_group
        rows, columns = weight.shape[0] // groups, weight.shape[1]
        locals_ = _per_group(keep, columns, groups)
        arrays.set(producer.weight, np.concatenate(
            [np.take(weight[j * rows:(j + 1) * rows], locals_[j], axis=1) for j in range(groups)],
            axis=0))
    else:
        arrays.set(producer.weight, np.take(weight, keep, axis=0))
    bias = bias_of(graph, producer.node)
    if bias is not None:
        arrays.set(bias, np.take(arrays.get(bias), keep, axis=0))
    key = "num_hidden" if producer.op == "FullyConnected" else "num_filter"
    attrs.append((producer.node, key, len(keep)))


def _carry(weight: np.ndarray, axis: int, consumer: Consumer, gone: list[int],
           constants: np.ndarray, carrier: int | None) -> tuple[np.ndarray, list[int]]:
    """Add (c_p / c_r) * W_p to the carrier's weight slice r for each dropped position p with a
    non-zero constant (see :func:`_spreads_constants`); returns the new weight and the
    positions left to fold."""
    moving = [p for p in gone if constants[p] != 0]
    if not moving:
        return weight, gone
    weight = weight.copy()
    target = next(q for q, c in enumerate(consumer.channels) if c == carrier and constants[q] != 0)
    view = np.moveaxis(weight, axis, 0)   # a view: writes go to weight
    carried = view[target].astype(np.float64)
    for p in moving:
        carried += constants[p] / constants[target] * view[p]
    view[target] = carried
    return weight, [p for p in gone if constants[p] == 0]


def _drop_inputs(graph: Graph, arrays: _Arrays, consumer: Consumer, drop: set[int],
                 constants: np.ndarray | None, carrier: int | None) -> None:
    weight = arrays.get(consumer.weight)
    positions = range(len(consumer.channels))
    keep = [p for p in positions if consumer.channels[p] not in drop]
    gone = [p for p in positions if consumer.channels[p] in drop]
    if _spreads_constants(graph, consumer):
        weight, gone = _carry(weight, 0 if consumer.op == "Deconvolution" else 1, consumer, gone,
                      constants, carrier)
    if consumer.op == "Deconvolution":   # (C_in, C_out/g, ...): input channels are axis 0
        arrays.set(consumer.weight, np.take(weight, keep, axis=0))
        return
    if consumer.op == "FullyConnected":   # (out, C * spatial): channel p is columns p*S..p*S+S-1
        by_channel = weight.reshape(weight.shape[0], len(consumer.channels), consumer.spatial)
        folding = [p for p in gone if constants[p] != 0]
        if folding:
            bias = arrays.bias(consumer.node, bias_of(graph, consumer.node), weight.shape[0])
            bias += np.take(by_channel, folding, axis=1).sum(axis=2, dtype=np.float64) @ constants[folding]
        arrays.set(consumer.weight, np.take(by_channel, keep, axis=1).reshape(weight.shape[0], -1))
        return
    groups = consumer.num_group
    per_in = len(consumer.channels) // groups
    per_out = weight.shape[0] // groups
    folding = [p for p in gone if constants[p] != 0]
    if folding:
        sums = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2, dtype=np.float64)
        bias = arrays.bias(consumer.node, bias_of(graph, consumer.node), weight.shape[0])
        for p in folding:   # b[o] += c_p * sum(W[o, p]) for the outputs o of p's conv group
            j, r = divmod(p, per_in)
            bias[j * per_out:(j + 1) * per_out] += constants[p] * sums[j * per_out:(j + 1) * per_out, r]
    locals_ = _per_group(keep, per_in, groups)
    arrays.set(consumer.weight, np.concatenate(
        [np.take(weight[j * per_out:(j + 1) * per_out], locals_[j], axis=1) for j in range(groups)],
        axis=0))


def _new_cut(keep_before: list[int], begin: int, end: int) -> tuple[int, int]:
    """A [begin, end) cut of the old positions, in the kept positions' numbering."""
    new_begin = sum(1 for p in keep_before if p < begin)
    return new_begin, new_begin + sum(1 for p in keep_before if begin <= p < end)


def _through_changes(graph: Graph, group: ChannelGroup, arrays: _Arrays, attrs: list,
                     through, drop: set[int]) -> None:
    node = graph.node(through.node)
    if not through.outputs:
        return
    output = through.outputs[0]
    keep_out = _kept_positions(group.channels_of(output), drop)
    for param, axis in through.params:
        arrays.set(param, np.take(arrays.get(param), keep_out, axis=axis))
    if node.op in ("Convolution", "Deconvolution"):   # depthwise
        keep_in = _kept_positions(group.channels_of(through.inputs[0]), drop)
        if node.op == "Deconvolution":   # weight (C_in, multiplier, ...): rows are inputs
            weight = graph.input_of(node.name, 1).node
            arrays.set(weight, np.take(arrays.get(weight), keep_in, axis=0))
        attrs.append((node.name, "num_filter", len(keep_out)))
        attrs.append((node.name, "num_group", len(keep_in)))
    elif node.op == "Reshape":
        codes = tuple(node_attr(graph, node.name, "shape"))
        if len(codes) > 1 and codes[1] > 0 and output in group.tensors:
            attrs.append((node.name, "shape", codes[:1] + (len(keep_out),) + codes[2:]))
    elif node.op in ("slice_axis", "slice"):
        channels = group.channels_of(through.inputs[0])
        where = channel_cut(graph, node.name, len(channels))
        if where is None:
            return
        new_begin, new_end = _new_cut(_kept_positions(channels, drop), *where)
        if node.op == "slice_axis":
            attrs.append((node.name, "begin", new_begin))
            attrs.append((node.name, "end", new_end))
        else:
            begins = tuple(node_attr(graph, node.name, "begin"))
            ends = tuple(node_attr(graph, node.name, "end") or ()) or (None,)
            ends = ends + (None,) * (2 - len(ends))
            attrs.append((node.name, "begin", begins[:1] + (new_begin,) + begins[2:]))
            attrs.append((node.name, "end", ends[:1] + (new_end,) + ends[2:]))


def plan_drop(graph: Graph, group: ChannelGroup) -> DropPlan:
    """Which channels of ``group`` go, and every new parameter value and attribute that deletes
    them (see the module docstring)."""
    plan = DropPlan(group)
    values = channel_constants(graph, group)
    drop = _choose(graph, group, values, plan)
    plan.dropped = sorted(drop)
    if not drop:
        return plan
    arrays, attrs = _Arrays(graph), []
    for producer in group.producers:
        if not producer.depthwise:
            keep = _kept_positions(producer.channels, drop)
            if len(keep) < len(producer.channels):
                _drop_outputs(graph, arrays, attrs, producer, keep)
    for through in group.throughs:
        _through_changes(graph, group, arrays, attrs, through, drop)
    for consumer in group.consumers:
        if any(c in drop for c in consumer.channels):
            _drop_inputs(graph, arrays, consumer, drop, values.get(consumer.tensor), plan.carrier)
    plan.changes = arrays.changes(attrs, {c.node: 2 for c in group.consumers})
    return plan


# --- the entry point ---------------------------------------------------------------------------

@dataclass
class DropReport:
    """What :func:`drop_channels` did: channels and parameters before and after, per channel
    group its channels before and after and the zeroed channels that stayed and why
    (``groups``), and the rewrite engine's report (``rewrite``)."""
    channels_before: int
    channels_after: int
    params_before: int
    params_after: int
    groups: list[dict]
    rewrite: Report
    seconds: float = 0.0

    @property
    def dropped(self) -> int:
        return self.channels_before - self.channels_after

    def to_dict(self) -> dict:
        return {"channels_before": self.channels_before, "channels_after": self.channels_after,
                "dropped": self.dropped, "params_before": self.params_before,
                "params_after": self.params_after, "groups": self.groups,
                "seconds": round(self.seconds, 3)}

    def format(self) -> str:
        lines = [f"dropped {self.dropped} of {self.channels_before} channels; parameters "
                 f"{self.params_before:,} -> {self.params_after:,}"]
        for entry in self.groups:
            if entry["kept"]:
                reasons = "; ".join(f"{count} kept: {why}" for why, count in entry["kept"].items())
                lines.append(f"  group of {', '.join(entry['producers'][:3])}"
                             f"{' ...' if len(entry['producers']) > 3 else ''}: "
                             f"{entry['channels_before']} -> {entry['channels']} channels, "
                             f"{reasons}")
        return "\n".join(lines)


def _group_channels(graph: Graph) -> tuple[int, list[ChannelGroup]]:
    groups = channel_groups(graph)
    return sum(g.size for g in groups if any(not p.depthwise for p in g.producers)), groups


def drop_channels(graph: Graph, check: str | None = None) -> tuple[Graph, DropReport]:
    """Delete the channels pruning zeroed, through every coupled tensor, exactly (constants a
    zeroed channel still emits are folded into the next layer's bias). Returns the smaller
    graph and a :class:`DropReport`; ``graph`` itself is not changed. ``check="numeric"`` also
    runs MXNet before and after (the rewrite engine's check)."""
    from graphopt.rewrite.engine import rewrite
    started = time.perf_counter()
    before, original = _group_channels(graph)
    size_before = {p.node: g.size for g in original for p in g.producers}
    # the rule from its own file: another rule file being broken does not stop a drop
    rules = [r for r in load_rule_file(builtin_rules_dir() / RULE_FILE) if r.name == RULE]
    smaller, report = rewrite(graph, rules=rules, phases=["drop_channels"], check=check)
    after, groups = _group_channels(smaller)
    entries = []
    for group in groups:
        plan = plan_drop(smaller, group)
        kept: dict[str, int] = {}
        for channel in plan.zeroed:
            why = group.pinned.get(channel) or plan.kept.get(channel) or "kept"
            kept[why] = kept.get(why, 0) + 1
        entries.append({"producers": [p.node for p in group.producers],
                        "channels_before": size_before.get(group.producers[0].node, group.size),
                        "channels": group.size, "zeroed_kept": len(plan.zeroed), "kept": kept})
    return smaller, DropReport(before, after, sum(int(v.size) for v in graph.params.values()),
                               sum(int(v.size) for v in smaller.params.values()), entries, report,
                               time.perf_counter() - started)
