"""Channel coupling: which channels of a graph must be kept or dropped together.

Deleting output channel ``c`` of a convolution changes every tensor that carries that channel:
the BatchNorm and activation after it, the residual add that joins it to other branches (whose
channel ``c`` must go too), the Concat that places it at an offset, the SliceChannel that cuts
it out again, a depthwise convolution that filters it on its own, and finally the layers that
*read* it (the next convolution's weight axis 1, the FullyConnected columns after a Flatten).
This module finds those couplings, from the graph's structure and shapes alone (no parameter
values are read), so that

- filter pruning zeroes coupled filters together (channel ``c`` of every producer on a residual
  trunk), and never zeroes all channels of a tensor, and
- :mod:`graphopt.prune.drop` deletes a channel everywhere at once.

The model
    Every channel of every *channel tensor* (a tensor whose axis 1 is the channel axis, NC...
    layout) is mapped to an *atom*: one channel identity. A producer (Convolution,
    FullyConnected, Deconvolution with a weight parameter) makes fresh atoms, one per output
    channel. Ops that compute channel ``c`` of their output from channel ``c`` of their inputs
    only (BatchNorm, activations, pooling, elementwise ops, a depthwise convolution...) pass the
    atoms on; an elementwise op with several channel inputs (a residual add, an SE block's
    ``broadcast_mul``) unites the atoms position by position; Concat concatenates the maps
    (so ``concat(x, x)`` repeats atoms), SliceChannel / ``slice_axis`` / ``slice`` cut them.
    Dropping an atom deletes it at every position of every tensor where it appears.

    A :class:`ChannelGroup` is a connected set of atoms (atoms that share a tensor, or are united
    by an elementwise op). Its channels are numbered 0..size-1, and every member states which
    group channel each of its positions is.

Members of a group
    producers  the weighted ops whose output channels (filters) are group channels, with the
               weight axis of those channels (Convolution/FullyConnected 0, Deconvolution 1 within
               each group). Depthwise convolutions are listed too (``depthwise=True``): their
               filter ``k`` filters group channel ``channels[k]`` and is zeroed with it.
    throughs   the ops the channels pass through, with their per-channel parameters (BatchNorm's
               four, PReLU's slope, a broadcast operand of shape (1, C, 1, 1), a depthwise
               filter) and the attributes that count channels (``num_filter``, a Reshape's
               literal C, a ``slice_axis``' begin/end).
    consumers  the ops that *read* group channels as their input channels and are not in the
               group themselves: a Convolution (weight axis 1, per group), a Deconvolution (weight
               axis 0), a FullyConnected (``spatial`` columns per channel after a Flatten). A
               dropped channel must be folded into their bias when it is a non-zero constant.
    constraints  sets of blocks that must lose equally many positions: the groups of a grouped
               convolution (input or output), the parts of a SliceChannel.
    pinned     group channels that must stay, each with the reason: a graph output carries it,
               an op the analysis cannot follow reads it, a weight is shared, a channel is
               broadcast across other channels...

A group with every channel pinned is not droppable; :attr:`ChannelGroup.reason` says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from graphopt.ir.graph import Graph, Node, Tensor
from graphopt.rewrite.match import inputs_in_slot_order, readers
from graphopt.schema import attr_or_default, mxnet_schema

PRODUCER_OPS = ("Convolution", "Deconvolution", "FullyConnected")

# Ops computing each output element from the same element of each input (broadcasting).
UNARY_ELEMENTWISE = {
    "Activation", "LeakyReLU", "relu", "sigmoid", "tanh", "softsign", "hard_sigmoid", "clip",
    "abs", "exp", "expm1", "log", "log1p", "log2", "log10", "sqrt", "rsqrt", "cbrt", "square",
    "negative", "reciprocal", "erf", "sign", "round", "rint", "floor", "ceil", "fix", "trunc",
    "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "arcsinh", "arccosh",
    "arctanh", "gamma", "gammaln", "_mul_scalar", "_plus_scalar", "_minus_scalar",
    "_rminus_scalar", "_div_scalar", "_rdiv_scalar", "_power_scalar", "_rpower_scalar",
    "_maximum_scalar", "_minimum_scalar", "_hypot_scalar", "_mod_scalar", "_rmod_scalar",
    "Dropout", "_copy", "BlockGrad", "Cast", "amp_cast", "make_loss", "stop_gradient",
}
BINARY_ELEMENTWISE = {
    "elemwise_add", "elemwise_sub", "elemwise_mul", "elemwise_div", "_grad_add",
    "broadcast_add", "broadcast_sub", "broadcast_mul", "broadcast_div", "broadcast_maximum",
    "broadcast_minimum", "broadcast_power", "broadcast_hypot", "_maximum", "_minimum", "_power",
    "_hypot", "add_n",
}
# Ops computing channel c of the output from channel c of the input over space.
SPATIAL_PER_CHANNEL = {"Pooling", "UpSampling", "_contrib_AdaptiveAvgPooling2D",
                       "_contrib_BilinearResize2D", "Pad"}


# --- the public data structure -----------------------------------------------------------------

@dataclass
class Producer:
    """A weighted op whose output channels are group channels: filter ``i`` (index ``i`` along
    ``weight_axis``, within each of ``num_group`` groups for a Deconvolution) makes group channel
    ``channels[i]``. ``bias`` is None without one."""
    node: str
    op: str
    weight: str
    bias: str | None
    weight_axis: int
    channels: tuple[int, ...]
    num_group: int = 1
    depthwise: bool = False       # a depthwise conv the channels pass through (also a through)


@dataclass
class Through:
    """An op the group's channels pass through. ``inputs`` / ``outputs`` are its channel
    tensors; ``params`` the per-channel parameters as (name, axis) to slice."""
    node: str
    op: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    params: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class Consumer:
    """An op reading group channels at ``slot``: position ``p`` of its input ``tensor`` is group
    channel ``channels[p]``, and covers ``spatial`` consecutive input columns (FullyConnected
    after a Flatten) or weight index ``p`` (within its conv group) along ``weight_axis``."""
    node: str
    op: str
    slot: int
    tensor: Tensor
    channels: tuple[int, ...]
    weight: str | None
    bias: str | None
    weight_axis: int
    spatial: int = 1
    num_group: int = 1


@dataclass
class EqualDrops:
    """Blocks of positions (as group channels) that must each lose as many positions: the
    groups of a grouped convolution, the parts of a SliceChannel."""
    node: str
    what: str
    blocks: list[tuple[int, ...]]


@dataclass
class ChannelGroup:
    index: int
    size: int
    tensors: dict[Tensor, tuple[int, ...]]
    producers: list[Producer] = field(default_factory=list)
    throughs: list[Through] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    constraints: list[EqualDrops] = field(default_factory=list)
    pinned: dict[int, str] = field(default_factory=dict)
    flat_tensors: dict[Tensor, tuple[tuple[int, ...], int]] = field(default_factory=dict)

    @property
    def droppable(self) -> bool:
        """Some channel of the group may be dropped (not every one is pinned)."""
        return len(self.pinned) < self.size

    @property
    def reason(self) -> str | None:
        """Why nothing of the group may be dropped (None if something may)."""
        if self.droppable:
            return None
        return "; ".join(dict.fromkeys(self.pinned.values()))

    @property
    def nodes(self) -> list[str]:
        names = [p.node for p in self.producers] + [t.node for t in self.throughs] \
            + [c.node for c in self.consumers]
        return list(dict.fromkeys(names))

    def channels_of(self, tensor: Tensor) -> tuple[int, ...]:
        """The group channel of each channel position of ``tensor`` (flattened ones too)."""
        if tensor in self.tensors:
            return self.tensors[tensor]
        return self.flat_tensors[tensor][0]

    def describe(self) -> str:
        producers = ", ".join(p.node for p in self.producers) or "no producer"
        return f"channel group {self.index} ({self.size} channels; producers {producers})"


# --- union-find ----------------------------------------------------------------------------------

class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, atom: int) -> int:
        parent = self.parent
        root = atom
        while parent[root] != root:
            root = parent[root]
        while parent[atom] != root:
            parent[atom], atom = root, parent[atom]
        return root

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


# --- the analysis ----------------------------------------------------------------------------------

def _roots(parent: list[int]) -> np.ndarray:
    """The root of every element of a union-find forest (pointer jumping)."""
    roots = np.asarray(parent, dtype=np.int64)
    while True:
        jumped = roots[roots]
        if np.array_equal(jumped, roots):
            return roots
        roots = jumped


def channel_groups(graph: Graph) -> list[ChannelGroup]:
    """The channel groups of ``graph`` (see the module docstring), in the order of their first
    producer. The result is cached in ``graph.derived`` until the graph's next edit."""
    cached = graph.derived.get("channel_groups")
    if cached is None:
        analysis = _Analysis(graph)
        cached = graph.derived["channel_groups"] = analysis.run()
        graph.derived["channel_refusals"] = analysis.refused
    return cached


def refusal(graph: Graph, node: str) -> str | None:
    """Why the analysis did not follow op ``node`` (None if it did, or never met it)."""
    channel_groups(graph)
    return graph.derived.get("channel_refusals", {}).get(node)


def node_attr(graph: Graph, node: str, key: str):
    """Attribute ``key`` of op ``node``: explicit if set, else MXNet's default (None if none)."""
    n = graph.node(node)
    return attr_or_default(n.op, n.attrs, key, None)


def pads_nothing(graph: Graph, node: str) -> bool:
    """The op (a convolution or pooling) adds no padding."""
    return not any(node_attr(graph, node, "pad") or ())


def reduced_axes(graph: Graph, node: str) -> set[int] | None:
    """The input axes a mean/sum/max/min reduces (None: all of them, or not known)."""
    n = graph.node(node)
    shape = graph.tensor_type(graph.inputs_of(node)[0]).shape
    axis = attr_or_default(n.op, n.attrs, "axis", None)
    if shape is None or axis is None or axis == ():
        return None
    axes = {a % len(shape) for a in (axis if isinstance(axis, (tuple, list)) else (axis,))}
    if attr_or_default(n.op, n.attrs, "exclude", False):
        axes = set(range(len(shape))) - axes
    return axes


def channel_cut(graph: Graph, node: str, channels: int) -> tuple[int, int] | None:
    """The positions [start, stop) of the ``channels`` a slice_axis / slice keeps, or None when
    it does not cut axis 1."""
    n = graph.node(node)
    if n.op == "slice_axis":
        rank = len(graph.tensor_type(graph.inputs_of(node)[0]).shape)
        if int(node_attr(graph, node, "axis")) % rank != 1:
            return None
        begin, end = node_attr(graph, node, "begin"), node_attr(graph, node, "end")
    else:
        begins = tuple(node_attr(graph, node, "begin") or ())
        ends = tuple(node_attr(graph, node, "end") or ())
        if len(begins) < 2:
            return None
        begin, end = begins[1], ends[1] if len(ends) > 1 else None
    start, stop, _ = slice(begin, end).indices(channels)
    return start, max(start, stop)


def bias_of(graph: Graph, node: str) -> str | None:
    """The bias parameter ``node`` reads now (slot 2), or None. Plans read it from the graph,
    not from a group's description: dropping a neighbouring group may give the node one."""
    tensor = graph.input_of(node, 2)
    return None if tensor is None or tensor.node not in graph.params else tensor.node


def signature(graph: Graph, group: ChannelGroup) -> tuple:
    """What a group's description rests on besides parameter values: its tensors' shapes and
    readers, its producers' output shapes, its throughs' inputs, its consumers' data inputs.
    Equal signatures: the description still holds (values are read at plan time). Dropping a
    group changes its own signature only (a consumer's output belongs to another group)."""
    nodes = graph.nx

    def shapes(name: str):
        return tuple(t.shape for t in graph.node(name).outputs) if name in nodes else None

    tensors = tuple((t, graph.tensor_type(t).shape if t.node in nodes else None,
                     frozenset(readers(graph, t)) if t.node in nodes else None)
                    for t in list(group.tensors) + list(group.flat_tensors))
    producers = tuple((p.node, shapes(p.node)) for p in group.producers)
    throughs = tuple((t.node, tuple(inputs_in_slot_order(graph, t.node)) if t.node in nodes
                      else None, shapes(t.node)) for t in group.throughs)
    consumers = tuple((c.node, graph.input_of(c.node, 0) if c.node in nodes else None)
                      for c in group.consumers)
    return tensors, producers, throughs, consumers, tuple(graph.outputs)


def group_of(graph: Graph, node: str) -> ChannelGroup | None:
    """The group whose producers include ``node`` (None if it produces no group channels)."""
    for group in channel_groups(graph):
        if any(p.node == node for p in group.producers):
            return group
    return None


class _Analysis:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.schema = mxnet_schema()
        self.atoms = _UnionFind()        # channel identity
        self.component = _UnionFind()    # group membership, over blocks of atoms
        self.block_of: list[int] = []    # atom -> its block (the producer call that made it)
        self.maps: dict[Tensor, list[int]] = {}
        self.flat: dict[Tensor, tuple[list[int], int]] = {}
        self.pins: dict[int, str] = {}
        self.producers: list[Producer] = []
        self.throughs: list[Through] = []
        self.consumers: list[Consumer] = []
        self.constraints: list[EqualDrops] = []
        self.producer_atoms: dict[str, list[int]] = {}   # output atoms of each producer
        self.refused: dict[str, str] = {}                 # op nodes not followed, and why
        self.order: dict[str, int] = {}                   # op nodes in topological order
        self.readers: dict[str, int] = {}
        for _src, _dst, _data in graph.nx.edges(data=True):
            self.readers[_src] = self.readers.get(_src, 0) + 1

    # atoms ------------------------------------------------------------------------------------

    def fresh(self, count: int) -> list[int]:
        """``count`` new atoms, one block (the component union-find works on blocks: a
        producer's channels always share a group, and uniting blocks is cheaper than atoms)."""
        block = self.component.new()
        start = len(self.block_of)
        self.block_of.extend([block] * count)
        self.atoms.parent.extend(range(start, start + count))
        return list(range(start, start + count))

    def pin(self, atoms, reason: str) -> None:
        for atom in atoms:
            self.pins.setdefault(atom, reason)

    def join(self, atoms: list[int]) -> None:
        """The atoms of one tensor belong to one group."""
        block_of = self.block_of
        blocks = {block_of[a] for a in atoms}
        first = blocks.pop() if blocks else None
        for block in blocks:
            self.component.union(first, block)

    def set_map(self, tensor: Tensor, atoms: list[int]) -> bool:
        shape = self.graph.tensor_type(tensor).shape
        if shape is None or len(shape) < 2 or shape[1] != len(atoms):
            self.pin(atoms, f"{tensor.node!r} has shape {shape}, not the {len(atoms)} channels "
                            f"the analysis expects")
            return False
        self.join(atoms)
        self.maps[tensor] = atoms
        return True

    def map_or_pinned(self, tensor: Tensor, why: str) -> list[int]:
        """The map of a channel tensor; a tensor outside every group gets pinned atoms."""
        atoms = self.maps.get(tensor)
        if atoms is None:
            shape = self.graph.tensor_type(tensor).shape
            atoms = self.fresh(shape[1])
            self.pin(atoms, why)
        return atoms

    # params -----------------------------------------------------------------------------------

    def param_input(self, name: str, slot: int) -> str | None:
        inputs = inputs_in_slot_order(self.graph, name)
        if slot >= len(inputs):
            return None
        tensor = inputs[slot]
        node = self.graph.node(tensor.node)
        return tensor.node if node.is_variable and node.kind in ("param", "aux") else None

    def shared(self, param: str | None) -> bool:
        return param is not None and (self.readers.get(param, 0) > 1 or self.graph.is_output(param))

    # the walk ---------------------------------------------------------------------------------

    def run(self) -> list[ChannelGroup]:
        graph = self.graph
        for node in graph.nodes():
            if node.is_variable:
                continue
            self.order[node.name] = len(self.order)
            self.visit(node)
        for tensor in graph.outputs:
            if tensor in self.maps:
                self.pin(self.maps[tensor], f"{graph.tensor_name(tensor)} is a graph output")
            if tensor in self.flat:
                self.pin(self.flat[tensor][0], f"{graph.tensor_name(tensor)} is a graph output")
        return self.groups()

    def attr(self, node: Node, key: str):
        return attr_or_default(node.op, node.attrs, key, None)

    def inputs(self, node: Node) -> list[Tensor]:
        return inputs_in_slot_order(self.graph, node.name)

    def visit(self, node: Node) -> None:
        op = self.schema.canonical(node.op)
        handler = {
            "Convolution": self.convolution, "Deconvolution": self.deconvolution,
            "FullyConnected": self.fully_connected, "BatchNorm": self.batchnorm,
            "Concat": self.concat, "SliceChannel": self.slice_channel,
            "slice_axis": self.cut, "slice": self.cut, "Flatten": self.flatten,
            "Reshape": self.reshape, "mean": self.reduce, "sum": self.reduce,
            "max": self.reduce, "min": self.reduce, "InstanceNorm": self.instance_norm,
            "squeeze": self.axes_after_channels, "expand_dims": self.axes_after_channels,
            "transpose": self.axes_after_channels, "SwapAxis": self.axes_after_channels,
            "_contrib_MultiBoxPrior": self.spatial_shape_only, "slice_like": self.slice_like,
            "_contrib_arange_like": self.arange_like,
        }.get(op)
        if handler is None:
            if op in UNARY_ELEMENTWISE or op in BINARY_ELEMENTWISE:
                handler = self.elementwise
            elif op in SPATIAL_PER_CHANNEL:
                handler = self.spatial
        shapes = [t.shape for t in node.outputs] + [
            self.graph.tensor_type(t).shape for t in self.inputs(node)]
        if any(shape is None for shape in shapes):
            problem = "its shapes are unknown"
        else:
            problem = handler(node) if handler is not None else "unknown"
        if problem:
            self.refuse(node, "the dropper cannot follow it" if problem == "unknown" else problem)

    def refuse(self, node: Node, why: str) -> None:
        """``node`` reads channel tensors in a way the analysis does not follow: pin them."""
        self.refused[node.name] = why
        for slot, tensor in enumerate(self.inputs(node)):
            atoms = self.maps.get(tensor) or (self.flat[tensor][0] if tensor in self.flat else None)
            if atoms:
                self.pin(atoms, f"read by {node.op} {node.name!r}: {why}")

    # producers and consumers ----------------------------------------------------------------

    def channels_first(self, node: Node) -> bool:
        layout = self.attr(node, "layout")
        return layout is None or str(layout).startswith("NC")

    def weighted(self, node: Node) -> tuple[str, str | None] | str:
        weight = self.param_input(node.name, 1)
        if weight is None:
            return "its weight is not a parameter"
        bias = self.param_input(node.name, 2)
        if len(self.inputs(node)) > 2 and bias is None:
            return "its bias is not a parameter"
        if self.shared(weight) or self.shared(bias):
            return "its weight or bias is shared with another node"
        if node.outputs[0].shape is None or len(node.outputs[0].shape) < 2:
            return "its output shape is unknown"
        return weight, bias

    def consume(self, node: Node, weight: str | None, bias: str | None, axis: int,
                num_group: int = 1) -> None:
        data = self.inputs(node)[0]
        if data in self.maps:
            atoms = self.maps[data]
            self.consumers.append(Consumer(node.name, node.op, 0, data, tuple(atoms), weight, bias,
                                           axis, 1, num_group))
            if num_group > 1:
                self.equal_blocks(node, "input channel groups", atoms, num_group)
            if len(self.graph.tensor_type(data).shape) > 2 and node.op == "FullyConnected":
                spatial = math.prod(self.graph.tensor_type(data).shape[2:])
                self.consumers[-1].spatial = spatial
        elif data in self.flat:
            atoms, spatial = self.flat[data]
            self.consumers.append(Consumer(node.name, node.op, 0, data, tuple(atoms), weight, bias,
                                           axis, spatial, num_group))

    def equal_blocks(self, node: Node, what: str, atoms: list[int], count: int) -> None:
        if len(atoms) % count:
            self.pin(atoms, f"{node.name!r} splits {len(atoms)} channels into {count} groups")
            return
        size = len(atoms) // count
        self.constraints.append(EqualDrops(node.name, what, [tuple(atoms[i * size:(i + 1) * size])
                                                             for i in range(count)]))

    def convolution(self, node: Node) -> str | None:
        found = self.weighted(node)
        if isinstance(found, str) or not self.channels_first(node):
            return found if isinstance(found, str) else "channels-last layout"
        weight, bias = found
        data = self.inputs(node)[0]
        in_channels = self.graph.tensor_type(data).shape[1]
        out_channels = node.outputs[0].shape[1]
        groups = int(self.attr(node, "num_group") or 1)
        if groups == in_channels > 1 and out_channels % groups == 0 and data in self.maps:
            # depthwise: output channel k filters input channel k // multiplier on its own
            multiplier = out_channels // groups
            atoms = [self.maps[data][k // multiplier] for k in range(out_channels)]
            params = [(weight, 0)] + ([(bias, 0)] if bias else [])
            self.throughs.append(Through(node.name, node.op, [data], [Tensor(node.name, 0)], params))
            self.producers.append(Producer(node.name, node.op, weight, bias, 0, (), groups, True))
            self.maps[Tensor(node.name, 0)] = atoms
            self.producer_atoms[node.name] = atoms
            return None
        atoms = self.fresh(out_channels)
        self.maps[Tensor(node.name, 0)] = atoms
        self.producers.append(Producer(node.name, node.op, weight, bias, 0, (), groups))
        self.producer_atoms[node.name] = atoms
        if groups > 1:
            self.equal_blocks(node, "output channel groups", atoms, groups)
        self.consume(node, weight, bias, 1, groups)
        return None

    def deconvolution(self, node: Node) -> str | None:
        found = self.weighted(node)
        if isinstance(found, str) or not self.channels_first(node):
            return found if isinstance(found, str) else "channels-last layout"
        weight, bias = found
        groups = int(self.attr(node, "num_group") or 1)
        data = self.inputs(node)[0]
        in_channels = self.graph.tensor_type(data).shape[1]
        out_channels = node.outputs[0].shape[1]
        if groups == in_channels > 1 and out_channels % groups == 0 and data in self.maps:
            # depthwise (a bilinear-style upsampler): weight (C_in, multiplier, ...), output
            # channel k upsamples input channel k // multiplier on its own. Its weight rows
            # follow the input channels; the bias follows the outputs.
            multiplier = out_channels // groups
            atoms = [self.maps[data][k // multiplier] for k in range(out_channels)]
            params = [(bias, 0)] if bias else []
            self.throughs.append(Through(node.name, node.op, [data], [Tensor(node.name, 0)], params))
            self.producers.append(Producer(node.name, node.op, weight, bias, 1, (), groups, True))
            self.maps[Tensor(node.name, 0)] = atoms
            self.producer_atoms[node.name] = atoms
            return None
        atoms = self.fresh(out_channels)
        self.maps[Tensor(node.name, 0)] = atoms
        self.producers.append(Producer(node.name, node.op, weight, bias, 1, (), groups))
        self.producer_atoms[node.name] = atoms
        if groups > 1:
            self.equal_blocks(node, "output channel groups", atoms, groups)
        self.consume(node, weight, bias, 0, groups)
        return None

    def fully_connected(self, node: Node) -> str | None:
        found = self.weighted(node)
        if isinstance(found, str):
            return found
        weight, bias = found
        data = self.inputs(node)[0]
        rank = len(self.graph.tensor_type(data).shape or ())
        if not self.attr(node, "flatten") and rank > 2:
            return "FullyConnected(flatten=False) of a tensor of rank > 2 works on its last axis"
        atoms = self.fresh(node.outputs[0].shape[1])
        self.maps[Tensor(node.name, 0)] = atoms
        self.producers.append(Producer(node.name, node.op, weight, bias, 0, ()))
        self.producer_atoms[node.name] = atoms
        self.consume(node, weight, bias, 1)
        return None

    # through ops -------------------------------------------------------------------------------

    def through(self, node: Node, inputs: list[Tensor], atoms: list[int],
                params: list[tuple[str, int]] = ()) -> None:
        output = Tensor(node.name, 0)
        mapped = self.set_map(output, atoms)
        self.throughs.append(Through(node.name, node.op, inputs, [output] if mapped else [],
                                     list(params)))

    def batchnorm(self, node: Node) -> str | None:
        data = self.inputs(node)[0]
        if data not in self.maps:
            return None if data not in self.flat else "unknown"
        rank = len(self.graph.tensor_type(data).shape)
        if int(self.attr(node, "axis")) % rank != 1:
            return "BatchNorm over another axis than the channels"
        if self.attr(node, "output_mean_var"):
            return "it also outputs its batch mean and variance"
        params = []
        for slot in range(1, 5):
            param = self.param_input(node.name, slot)
            if param is None:
                return f"its input {slot} is not a parameter"
            if self.shared(param):
                return f"{param!r} is shared with another node"
            params.append((param, 0))
        self.through(node, [data], self.maps[data], params)
        return None

    def elementwise(self, node: Node) -> str | None:
        inputs = self.inputs(node)
        if not any(t in self.maps or t in self.flat for t in inputs):
            return None
        out_shape = node.outputs[0].shape
        if out_shape is None or len(out_shape) < 2:
            return "unknown"
        if any(t in self.flat for t in inputs):
            if len(inputs) == 1 and self.schema.canonical(node.op) in UNARY_ELEMENTWISE \
                    and node.op != "LeakyReLU":
                self.flat[Tensor(node.name, 0)] = self.flat[inputs[0]]
                self.throughs.append(Through(node.name, node.op, inputs, [Tensor(node.name, 0)]))
                return None
            return "unknown"
        channels = out_shape[1]
        rank = len(out_shape)
        mapped, params, broadcast = [], [], set()
        for slot, tensor in enumerate(inputs):
            shape = self.graph.tensor_type(tensor).shape or ()
            # the axis of this operand that broadcasts against the output's channel axis
            axis = len(shape) - rank + 1
            size = shape[axis] if 0 <= axis < len(shape) else 1
            if tensor in self.maps:
                if len(shape) != rank:
                    return "unknown"
                if size != channels:
                    self.pin(self.maps[tensor], f"{node.op} {node.name!r} broadcasts it across "
                                                f"{channels} channels")
                    broadcast.add(tensor)   # not an input whose channels the op passes on
                    continue
                mapped.append(self.maps[tensor])
            elif size == channels and channels > 1:
                param = self.param_input(node.name, slot)
                if param is not None and not self.shared(param):
                    params.append((param, axis))
                else:
                    mapped.append(self.map_or_pinned(
                        tensor, f"{node.op} {node.name!r} joins it with {tensor.node!r}, whose "
                                f"channels pruning does not follow"))
        if node.op == "LeakyReLU" and self.attr(node, "act_type") == "prelu" and len(inputs) > 1:
            param = self.param_input(node.name, 1)
            if param is None or self.shared(param):
                return "its slope is not a parameter of its own"
            params = [(param, 0)] if self.graph.tensor_type(inputs[1]).shape[0] == channels else []
        if not mapped:
            return None
        first = mapped[0]
        for other in mapped[1:]:
            if other is first:
                continue
            union = self.atoms.union
            for a, b in zip(first, other):
                if a != b:
                    union(a, b)
            self.join(first + other)
        self.through(node, [t for t in inputs if t in self.maps and t not in broadcast], first,
                     params)
        return None

    def spatial(self, node: Node) -> str | None:
        inputs = self.inputs(node)
        data = inputs[0]
        if data not in self.maps:
            return "unknown" if any(t in self.maps or t in self.flat for t in inputs) else None
        if len(inputs) > 1:
            return "more than one input"
        if not self.channels_first(node):
            return "channels-last layout"
        if node.op == "Pad":
            widths = self.attr(node, "pad_width") or ()
            if any(widths[:4]):
                return "it pads the batch or channel axis"
        if node.op == "UpSampling" and self.attr(node, "sample_type") != "nearest":
            return "bilinear UpSampling is a deconvolution with a weight input"
        self.through(node, [data], self.maps[data])
        return None

    def reduce(self, node: Node) -> str | None:
        """mean/sum/max/min over spatial axes only (a global pooling written as a reduction):
        the channel axis stays axis 1."""
        data = self.inputs(node)[0]
        if data not in self.maps:
            return None if data not in self.flat else "unknown"
        axes = reduced_axes(self.graph, node.name)
        if axes is None or axes & {0, 1}:
            return "a reduction over the batch or channel axis"
        self.through(node, [data], self.maps[data])
        return None

    def instance_norm(self, node: Node) -> str | None:
        """Per (sample, channel) normalisation with per-channel gamma and beta."""
        data = self.inputs(node)[0]
        if data not in self.maps:
            return None if data not in self.flat else "unknown"
        params = []
        for slot in (1, 2):
            param = self.param_input(node.name, slot)
            if param is None or self.shared(param):
                return f"its input {slot} is not a parameter of its own"
            params.append((param, 0))
        self.through(node, [data], self.maps[data], params)
        return None

    def axes_after_channels(self, node: Node) -> str | None:
        """squeeze / expand_dims / transpose / SwapAxis that leave axes 0 and 1 where they are."""
        data = self.inputs(node)[0]
        if data not in self.maps:
            return None if data not in self.flat else "unknown"
        rank = len(self.graph.tensor_type(data).shape)
        out_rank = len(node.outputs[0].shape or ())
        if node.op == "transpose":
            axes = tuple(self.attr(node, "axes") or ())
            moves = not axes or tuple(a % rank for a in axes[:2]) != (0, 1)
        elif node.op == "SwapAxis":
            moves = bool({int(self.attr(node, "dim1")) % rank,
                          int(self.attr(node, "dim2")) % rank} & {0, 1})
        elif node.op == "squeeze":
            axis = self.attr(node, "axis")
            axes = axis if isinstance(axis, (tuple, list)) else (axis,)
            moves = axis is None or bool({a % rank for a in axes} & {0, 1})
        else:
            moves = int(self.attr(node, "axis")) % (rank + 1) < 2
        if moves or out_rank < 2:
            return "it moves the channel axis"
        self.through(node, [data], self.maps[data])
        return None

    def spatial_shape_only(self, node: Node) -> str | None:
        """Anchors from the feature map's height and width: the channels do not matter."""
        return None

    def arange_like(self, node: Node) -> str | None:
        data = self.inputs(node)[0]
        axis = self.attr(node, "axis")
        rank = len(self.graph.tensor_type(data).shape)
        if (data in self.maps or data in self.flat) and (axis is None or int(axis) % rank == 1):
            return "it counts the channels"
        return None

    def slice_like(self, node: Node) -> str | None:
        """Cut ``data`` to the size of ``shape_like`` along ``axes``: the channels of
        ``shape_like`` do not matter, and ``data`` keeps its own unless axis 1 is cut."""
        data, like = self.inputs(node)[:2]
        rank = len(node.outputs[0].shape)
        axes = tuple(self.attr(node, "axes") or ())
        if not axes or 1 in {a % rank for a in axes}:
            return "unknown" if any(t in self.maps or t in self.flat for t in (data, like)) else None
        if like in self.flat or data in self.flat:
            return "unknown"
        if data in self.maps:
            self.through(node, [data], self.maps[data])
        return None

    # index maps --------------------------------------------------------------------------------

    def concat(self, node: Node) -> str | None:
        inputs = self.inputs(node)
        if not any(t in self.maps or t in self.flat for t in inputs):
            return None
        rank = len(node.outputs[0].shape or ())
        if rank < 2 or int(self.attr(node, "dim")) % rank != 1:
            return "unknown"
        atoms: list[int] = []
        for tensor in inputs:
            if tensor in self.flat:
                return "unknown"
            atoms += self.map_or_pinned(tensor, f"Concat {node.name!r} joins {tensor.node!r}, "
                                                f"whose channels pruning does not follow")
        self.through(node, inputs, atoms)
        return None

    def slice_channel(self, node: Node) -> str | None:
        data = self.inputs(node)[0]
        if data not in self.maps:
            return None if data not in self.flat else "unknown"
        rank = len(self.graph.tensor_type(data).shape)
        parts = int(self.attr(node, "num_outputs"))
        if int(self.attr(node, "axis")) % rank != 1:
            return "unknown"
        if self.attr(node, "squeeze_axis"):
            return "it squeezes the channel axis away"
        atoms = self.maps[data]
        size = len(atoms) // parts
        self.throughs.append(Through(node.name, node.op, [data],
                                     [Tensor(node.name, i) for i in range(parts)]))
        self.equal_blocks(node, "parts", atoms, parts)
        for i in range(parts):
            self.set_map(Tensor(node.name, i), atoms[i * size:(i + 1) * size])
        return None

    def cut(self, node: Node) -> str | None:
        """slice_axis / slice: the channels [start, stop) when axis 1 is cut, else all."""
        data = self.inputs(node)[0]
        if data not in self.maps:
            return None if data not in self.flat else "unknown"
        steps = tuple(self.attr(node, "step") or ()) if node.op == "slice" else ()
        if len(steps) > 1 and steps[1] not in (None, 1):
            return "a slice with a step over the channels"
        atoms = self.maps[data]
        where = channel_cut(self.graph, node.name, len(atoms))
        self.through(node, [data], atoms if where is None else atoms[where[0]:where[1]])
        return None

    def flatten(self, node: Node) -> str | None:
        data = self.inputs(node)[0]
        if data not in self.maps:
            return None if data not in self.flat else "unknown"
        shape = self.graph.tensor_type(data).shape
        spatial = math.prod(shape[2:])
        self.throughs.append(Through(node.name, node.op, [data], [Tensor(node.name, 0)]))
        if spatial == 1:
            self.set_map(Tensor(node.name, 0), self.maps[data])
        else:
            self.flat[Tensor(node.name, 0)] = (self.maps[data], spatial)
        return None

    def reshape(self, node: Node) -> str | None:
        data = self.inputs(node)[0]
        if data not in self.maps:
            return None if data not in self.flat else "unknown"
        shape = self.graph.tensor_type(data).shape
        out = node.outputs[0].shape
        if out is None or self.attr(node, "reverse") or self.attr(node, "target_shape"):
            return "unknown"
        codes = tuple(self.attr(node, "shape") or ())
        if len(out) == 2 and len(codes) == 2 and out[0] == shape[0] and codes[0] in (0, shape[0]) \
                and codes[1] == -1:
            self.throughs.append(Through(node.name, node.op, [data], [Tensor(node.name, 0)]))
            self.flat[Tensor(node.name, 0)] = (self.maps[data], math.prod(shape[2:]))
            return None
        if len(codes) < 2 or codes[0] not in (0, shape[0]) or codes[1] not in (0, shape[1]):
            return "a Reshape that moves the channel axis"
        if len(out) >= 2 and out[:2] == shape[:2] and (len(out) > 2 or math.prod(shape[2:]) == 1):
            if len(out) > 2 and math.prod(out[2:]) != math.prod(shape[2:]):
                return "unknown"
            self.through(node, [data], self.maps[data])
            return None
        return "a Reshape that mixes the channel axis with others"

    # grouping ----------------------------------------------------------------------------------

    def groups(self) -> list[ChannelGroup]:
        """Number each group's channels (its distinct atom identities, in the order of the
        atoms that made them) and hand every member its positions' group channels."""
        identity = _roots(self.atoms.parent)
        block_root = _roots(self.component.parent)
        component = block_root[np.asarray(self.block_of, dtype=np.int64)]
        keys = np.unique(component * len(identity) + identity)   # (component, identity) pairs
        group_roots, starts, sizes = np.unique(keys // max(len(identity), 1), return_index=True,
                                               return_counts=True)
        number = np.zeros(len(identity), dtype=np.int64)
        number[keys % max(len(identity), 1)] = np.arange(len(keys)) - np.repeat(starts, sizes)
        members: dict[int, ChannelGroup] = {int(r): ChannelGroup(0, int(n), {})
                                            for r, n in zip(group_roots, sizes)}

        def channels(atoms) -> tuple[ChannelGroup, tuple[int, ...]]:
            atoms = np.asarray(atoms, dtype=np.int64)
            group = members[int(component[atoms[0]])]
            return group, tuple(number[identity[atoms]].tolist())

        for producer in self.producers:
            group, producer.channels = channels(self.producer_atoms[producer.node])
            group.producers.append(producer)
        for tensor, atoms in self.maps.items():
            if atoms:
                group, mapped = channels(atoms)
                group.tensors[tensor] = mapped
        for tensor, (atoms, spatial) in self.flat.items():
            if atoms:
                group, mapped = channels(atoms)
                group.flat_tensors[tensor] = (mapped, spatial)
        for through in self.throughs:
            atoms = next((self.maps.get(t) or self.flat[t][0]
                          for t in through.inputs + through.outputs
                          if self.maps.get(t) or t in self.flat), None)
            if atoms:
                members[int(component[atoms[0]])].throughs.append(through)
        for consumer in self.consumers:
            group, consumer.channels = channels(self._consumer_atoms(consumer))
            group.consumers.append(consumer)
        for constraint in self.constraints:
            group = members[int(component[constraint.blocks[0][0]])]
            constraint.blocks = [channels(block)[1] for block in constraint.blocks]
            group.constraints.append(constraint)
        for atom, reason in self.pins.items():
            group = members[int(component[atom])]
            group.pinned.setdefault(int(number[identity[atom]]), reason)
        result = [group for group in members.values() if group.producers]
        result.sort(key=lambda group: self.order[group.producers[0].node])
        for index, group in enumerate(result):
            group.index = index
        return result

    def _consumer_atoms(self, consumer: Consumer) -> list[int]:
        if consumer.tensor in self.maps:
            return self.maps[consumer.tensor]
        return self.flat[consumer.tensor][0]


