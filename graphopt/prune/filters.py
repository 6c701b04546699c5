"""Filter (structured) pruning: zero whole output channels, the same ones in every coupled layer.

The unit is a *segment*: the channels of one channel group
(:func:`graphopt.prune.coupling.channel_groups`) that the same set of producers makes. On a
residual trunk every producer makes every channel, so the trunk is one segment and channel ``c``
is zeroed in all its producers at once (zeroing it in one only would leave nothing to drop); a
Concat of two convolutions' outputs is one group with two segments, each pruned by its own
ratio. A depthwise convolution on the channels has its filter of each zeroed channel zeroed too.

A pruned channel is silenced, not just its filter: its bias, and the ``beta`` and moving mean of
every BatchNorm it passes through (and a per-channel parameter added to it), are zeroed too, so
the channel is exactly 0 after them. A zeroed filter alone leaves the constant
``act(beta - gamma * mean / sqrt(var + eps))``, which can be folded into the next layer's bias
only where that layer does not pad with zeros (at the borders a padded conv sees the constant
in some taps and zeros in others): ResNet's 3x3 convs all pad, and the dropper (rightly) kept
nearly every such channel (measured on resnet_digits at 50%: 64 of 234 channels dropped; with
the channels silenced, every zeroed one). This is what removing the channel means, and what
Torch-Pruning and NNI's speedup produce; the pruned-but-not-dropped model computes exactly what
the dropped one computes.

Ranking (``criterion``), per channel, summed over the segment's producers:

``l1`` / ``l2``   the L1 / L2 norm of the channel's filter (all it multiplies)
``bn_gamma``      |gamma| of the BatchNorms the channel passes through (network slimming): the
                  one after each producer (ResNet v1), after the residual add (v2), after each
                  later Concat (DenseNet), summed. MXNet's BatchNorm defaults to
                  ``fix_gamma=True``, which treats gamma as 1 whatever is stored: then (or
                  without a BatchNorm on every channel) |gamma| ranks nothing, and the segment
                  falls back to ``l1``, with a note in the report.

How many (``ratio`` R in [0, 1)): ``scope="layer"`` zeroes ``round(R * n)`` of each segment's
``n`` channels; ``scope="global"`` ranks all segments' channels together, each score divided by
its segment's mean score (so wide and narrow layers compare), and zeroes ``round(R * total)``.
Either way a segment keeps at least one channel (never 0), and ``round_to=m`` makes every pruned
segment keep a multiple of ``m`` channels (at least ``m``; a segment of ``m`` or fewer channels
is left alone): 8 or 16 keep vectorized kernels fast. Channels pinned by the coupling analysis
(a graph output, an op it cannot follow...) are never zeroed, so the classifier's outputs stay;
a grouped convolution's groups (and a SliceChannel's parts) lose equally many channels each.

A segment is pruned only if ``layers`` selects every one of its producers; otherwise it is
listed in ``report.skipped`` with the reason, as is every segment the coupling pins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphopt.errors import PruneError
from graphopt.ir.graph import Graph
from graphopt.prune.coupling import ChannelGroup, Producer, channel_groups, refusal
from graphopt.prune.layers import (LayerSelection, PrunableLayer, output_filters, select_layers,
                                   selection_setting, zero_output_channels)
from graphopt.prune.magnitude import check_fraction, check_scope
from graphopt.prune.report import PruneReport, build_report
from graphopt.schema import attr_or_default

CRITERIA = ("l1", "l2", "bn_gamma")


@dataclass
class Segment:
    """Channels ``channels`` of ``group`` made by the (non-depthwise) ``producers``;
    ``followers`` are the depthwise convolutions filtering them."""
    group: ChannelGroup
    producers: list[Producer]
    channels: list[int]
    followers: list[Producer] = field(default_factory=list)
    scores: np.ndarray | None = None     # one per entry of ``channels``
    prune_count: int = 0

    @property
    def names(self) -> list[str]:
        return [p.node for p in self.producers]

    @property
    def free(self) -> list[int]:
        """Positions (into ``channels``) that may be zeroed: not pinned."""
        return [i for i, c in enumerate(self.channels) if c not in self.group.pinned]


def _segments(groups: list[ChannelGroup]) -> list[Segment]:
    segments = []
    for group in groups:
        makers: dict[int, list[Producer]] = {}
        followers = [p for p in group.producers if p.depthwise]
        for producer in group.producers:
            if not producer.depthwise:
                for channel in producer.channels:
                    makers.setdefault(channel, []).append(producer)
        by_makers: dict[tuple[str, ...], Segment] = {}
        for channel in sorted(makers):
            key = tuple(p.node for p in makers[channel])
            if key not in by_makers:
                by_makers[key] = Segment(group, makers[channel], [], followers)
            by_makers[key].channels.append(channel)
        segments += by_makers.values()
    return segments


# --- scores ----------------------------------------------------------------------------------------

def _filter_norms(graph: Graph, producer: Producer, order: int) -> dict[int, float]:
    """Group channel -> norm of the producer's filters that make it (summed when two of its
    filters make one channel: halves of its output added together)."""
    filters = output_filters(graph.params[producer.weight], producer.op, producer.num_group)
    norms = np.linalg.norm(filters.astype(np.float64), ord=order, axis=1)
    by_channel: dict[int, float] = {}
    for i, channel in enumerate(producer.channels):
        by_channel[channel] = by_channel.get(channel, 0.0) + float(norms[i])
    return by_channel


def _gamma_scores(graph: Graph, segment: Segment) -> tuple[np.ndarray | None, str]:
    """Per segment channel, the sum of |gamma| over every BatchNorm it passes through (right
    after its conv in ResNet v1, after the residual add in v2, after each later Concat in
    DenseNet); or (None, why |gamma| cannot rank them)."""
    position = {channel: i for i, channel in enumerate(segment.channels)}
    totals = np.zeros(len(segment.channels))
    covered = np.zeros(len(segment.channels), dtype=bool)
    for through in segment.group.throughs:
        if through.op != "BatchNorm":
            continue
        channels = segment.group.tensors.get(through.inputs[0], ())
        hits = [(p, position[c]) for p, c in enumerate(channels) if c in position]
        if not hits:
            continue
        node = graph.node(through.node)
        if attr_or_default("BatchNorm", node.attrs, "fix_gamma"):
            return None, (f"BatchNorm {node.name!r} has fix_gamma=True (MXNet's default): "
                          f"gamma is treated as 1, so |gamma| ranks nothing")
        gamma = np.abs(graph.params[through.params[0][0]]).astype(np.float64)
        for p, i in hits:
            totals[i] += gamma[p]
            covered[i] = True
    if not covered.any():
        return None, "its channels pass through no BatchNorm"
    if not covered.all():
        return None, f"{int((~covered).sum())} of its channels pass through no BatchNorm"
    return totals, ""


def _score(graph: Graph, segment: Segment, criterion: str, notes: list[str]) -> np.ndarray:
    if criterion == "bn_gamma":
        totals, why = _gamma_scores(graph, segment)
        if totals is None:
            notes.append(f"{', '.join(segment.names)}: ranked by L1 norm instead of |gamma|: {why}")
            return _score(graph, segment, "l1", notes)
        return totals
    order = 1 if criterion == "l1" else 2
    totals = np.zeros(len(segment.channels))
    for producer in segment.producers:
        norms = _filter_norms(graph, producer, order)
        totals += [norms[c] for c in segment.channels]
    return totals


# --- how many, which -------------------------------------------------------------------------------

def _keep_count(size: int, prune: int, round_to: int | None) -> int:
    """How many channels a segment of ``size`` keeps when ``prune`` are asked for."""
    keep = max(size - prune, 1)
    if round_to:
        if size <= round_to:
            return size
        keep = min(max(round_to, round_to * round(keep / round_to)), size)
    return keep


def _blocks(segment: Segment) -> list[list[int]] | str:
    """The positions of the segment split into blocks that must lose equally many channels
    (one block if nothing constrains it), or why no common split exists."""
    members = set(segment.channels)
    partitions = []
    for constraint in segment.group.constraints:
        blocks = [[c for c in block if c in members] for block in constraint.blocks]
        blocks = [block for block in blocks if block]
        if len(blocks) > 1:
            partitions.append((constraint, blocks))
    if not partitions:
        return [list(range(len(segment.channels)))]
    # the common refinement: channels in the same block of every partition
    label = {c: tuple(next(i for i, b in enumerate(blocks) if c in b) for _, blocks in partitions)
             for c in segment.channels}
    refined: dict[tuple, list[int]] = {}
    for position, channel in enumerate(segment.channels):
        refined.setdefault(label[channel], []).append(position)
    blocks = list(refined.values())
    if len({len(b) for b in blocks}) > 1:
        names = ", ".join(f"{c.node} ({c.what})" for c, _ in partitions)
        return f"the channel groupings of {names} have no common equal split"
    return blocks


def _choose(segment: Segment, count: int, notes: list[str]) -> list[int] | str:
    """The positions to zero: the ``count`` lowest scores among the free ones, taken equally
    from every block (fewer if pinned channels leave fewer, with a note); or why the segment
    cannot be pruned at all."""
    blocks = _blocks(segment)
    if isinstance(blocks, str):
        return blocks
    free = set(segment.free)
    candidates = [[p for p in block if p in free] for block in blocks]
    per_block = min([count // len(blocks)] + [len(c) for c in candidates]
                    + [len(block) - 1 for block in blocks])
    if per_block == 0:
        if count < len(blocks):
            return (f"{count} channel(s) to zero, but each of {len(blocks)} blocks (conv groups, "
                    f"SliceChannel parts) must lose as many")
        return "pinned channels leave none to zero"
    if per_block * len(blocks) < count:
        notes.append(f"{', '.join(segment.names)}: {per_block * len(blocks)} of the {count} "
                     f"channels asked zeroed (pinned channels, or equal drops per block)")
    chosen = []
    for block in candidates:
        chosen += sorted(block, key=lambda p: (segment.scores[p], p))[:per_block]
    return sorted(chosen)


def _layer_counts(segments: list[Segment], ratio: float, round_to: int | None) -> None:
    for segment in segments:
        size = len(segment.channels)
        segment.prune_count = size - _keep_count(size, round(ratio * size), round_to)


def _global_counts(segments: list[Segment], ratio: float, round_to: int | None) -> None:
    entries = []
    for index, segment in enumerate(segments):
        mean = float(np.mean(segment.scores)) or 1.0
        entries += [(float(segment.scores[p]) / mean, index) for p in segment.free]
    total = round(ratio * sum(len(s.channels) for s in segments))
    counts = [0] * len(segments)
    floor = max(round_to or 1, 1)
    for _score_value, index in sorted(entries):
        if total == 0:
            break
        size = len(segments[index].channels)
        if size - counts[index] - 1 >= min(floor, size):
            counts[index] += 1
            total -= 1
    for segment, count in zip(segments, counts):
        size = len(segment.channels)
        segment.prune_count = size - _keep_count(size, count, round_to) if count else 0


# --- silencing a channel --------------------------------------------------------------------------

ADDITIVE_OPS = ("broadcast_add", "broadcast_sub", "elemwise_add", "elemwise_sub", "_grad_add",
                "add_n")


def _zero_entries(graph: Graph, name: str, axis: int, positions: list[int]) -> None:
    value = np.array(graph.params[name])
    index = [slice(None)] * value.ndim
    index[axis] = positions
    value[tuple(index)] = 0
    graph.set_param(name, value)


def _silence(graph: Graph, segment: Segment, zeroed: set[int]) -> None:
    """Zero what would keep the ``zeroed`` group channels non-zero after their filters are:
    the producers' (and depthwise followers') bias entries, BatchNorm beta and moving mean,
    and per-channel parameters added to them (module docstring)."""
    for producer in segment.producers + segment.followers:
        if producer.bias is not None:
            positions = [i for i, c in enumerate(producer.channels) if c in zeroed]
            if positions:
                _zero_entries(graph, producer.bias, 0, positions)
    for through in segment.group.throughs:
        if not through.params or not through.inputs:
            continue
        channels = segment.group.tensors.get(through.inputs[0])
        if channels is None:
            continue
        positions = [p for p, c in enumerate(channels) if c in zeroed]
        if not positions:
            continue
        if through.op == "BatchNorm":  # gamma * (0 - mean) / sqrt(var + eps) + beta == 0
            for name, axis in (through.params[1], through.params[2]):
                _zero_entries(graph, name, axis, positions)
        elif through.op in ADDITIVE_OPS:
            for name, axis in through.params:
                if graph.params[name].shape[axis] == len(channels):
                    _zero_entries(graph, name, axis, positions)


# --- the entry point --------------------------------------------------------------------------------

def _check_round_to(round_to) -> int | None:
    if round_to is None:
        return None
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise PruneError(f"round_to must be a whole number >= 1 (keep a multiple of that many "
                         f"channels), got {round_to!r}")
    return int(round_to)


def _layer_of(producer: Producer) -> PrunableLayer:
    return PrunableLayer(producer.node, producer.op, producer.weight, producer.bias)


def prune_filters(graph: Graph, *, ratio: float, criterion: str = "l1", scope: str = "layer",
                  layers: LayerSelection = None, round_to: int | None = None,
                  measure_storage: bool = True) -> tuple[Graph, PruneReport]:
    """Zero the filters of the lowest-ranked output channels (module docstring); returns
    ``(pruned copy, report)``. Nothing is removed yet: :func:`graphopt.prune.drop_channels`
    (or ``graphopt.prune(..., drop=True)``) does that."""
    ratio = check_fraction(ratio, "ratio")
    scope = check_scope(scope)
    round_to = _check_round_to(round_to)
    if criterion not in CRITERIA:
        raise PruneError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    unknown = [node.name for node in graph.variables("input") if not node.outputs[0].known]
    if unknown:   # the channel analysis follows channels by shape: it would follow none
        raise PruneError(f"filter pruning follows channels by their shapes, and the shape of "
                         f"input(s) {unknown} is unknown: load the model with "
                         f"inputs={{name: shape}} (CLI: --input NAME:SHAPE)")
    selected_layers = select_layers(graph, layers)
    selected = {layer.name for layer in selected_layers}

    notes: list[str] = []
    skipped: list[dict] = []
    segments = []
    all_segments = _segments(channel_groups(graph))
    in_segments = {producer.node for segment in all_segments
                   for producer in segment.producers + segment.followers}
    for layer in selected_layers:   # producers the analysis did not follow
        if layer.name not in in_segments:
            skipped.append({"layers": [layer.name], "reason": refusal(graph, layer.name)
                            or "the channel analysis does not follow its output channels"})
    for segment in all_segments:
        chosen = [name for name in segment.names if name in selected]
        if not chosen:
            continue
        if len(chosen) < len(segment.names):
            left_out = [name for name in segment.names if name not in selected]
            skipped.append({"layers": segment.names, "reason": f"coupled with {left_out}, "
                            f"which the layer selection leaves out: their channels must be "
                            f"zeroed together"})
        elif not segment.free:
            reason = "; ".join(dict.fromkeys(segment.group.pinned[c] for c in segment.channels))
            skipped.append({"layers": segment.names, "reason": f"channels kept: {reason}"})
        else:
            segments.append(segment)
    for segment in segments:
        segment.scores = _score(graph, segment, criterion, notes)
    (_layer_counts if scope == "layer" else _global_counts)(segments, ratio, round_to)

    pruned = graph.copy()
    pruned_layers = []
    for segment in segments:
        if segment.prune_count == 0:
            continue
        positions = _choose(segment, segment.prune_count, notes)
        if isinstance(positions, str):
            skipped.append({"layers": segment.names, "reason": positions})
            continue
        zeroed = {segment.channels[p] for p in positions}
        _silence(pruned, segment, zeroed)
        for producer in segment.producers + segment.followers:
            indices = [i for i, c in enumerate(producer.channels) if c in zeroed]
            if not indices:
                continue
            weight = pruned.params[producer.weight]
            pruned.set_param(producer.weight, zero_output_channels(
                weight, producer.op, indices, producer.num_group))
            pruned_layers.append(_layer_of(producer))
    settings = {"ratio": ratio, "criterion": criterion, "scope": scope, "round_to": round_to,
                "layers": selection_setting(layers)}
    unique = list({layer.name: layer for layer in pruned_layers}.values())
    report = build_report("filters", settings, graph, pruned, unique,
                          measure_storage=measure_storage)
    report.skipped, report.notes = skipped, list(dict.fromkeys(notes))
    return pruned, report
