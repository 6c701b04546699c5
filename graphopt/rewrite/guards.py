"""Built-in guards. Each returns ``None`` when the rewrite may go ahead, else the reason why not,
phrased for ``--explain`` (``"conv3_weight is also used by conv7"``).

Several exist because other tools folded BatchNorm wrongly without them (PITFALLS.md,
"BatchNorm"): a conv output that also feeds another node, a weight shared by another node
(PyTorch FX #104593), a BatchNorm over another axis than the producer's channels.
"""

from __future__ import annotations

import numpy as np

from graphopt.rewrite.batch import shapes_at_other_batches, shapes_with_every_axis_varied
from graphopt.rewrite.match import Ref
from graphopt.rewrite.registry import register_guard
from graphopt.rewrite.validate import LocalShapeInference

_INFERENCE = LocalShapeInference()


def _names(uses: list[tuple[str, int]]) -> str:
    return ", ".join(dict.fromkeys(consumer for consumer, _slot in uses))


@register_guard
def single_consumer(tensor: Ref, reader: Ref | None = None) -> str | None:
    """``tensor`` is read once (by ``reader``, if given) and is not a graph output: rewriting its
    producer for one reader would change what the others see."""
    if tensor.graph.is_output(tensor.tensor):
        return f"{tensor.name}'s output is also a graph output"
    uses = tensor.readers()
    if len(uses) == 1 and (reader is None or uses[0][0] == reader.name):
        return None
    uses = tensor.consumers()
    others = [use for use in uses if reader is None or use[0] != reader.name]
    if reader is not None and len(uses) - len(others) > 1:
        return f"{reader.name} reads {tensor.name}'s output more than once"
    if reader is None and len(uses) > 1:
        return f"{tensor.name}'s output is read by {len(uses)} nodes ({_names(uses)})"
    if reader is not None and others:
        return f"{tensor.name}'s output is also read by {_names(others)}"
    return None


@register_guard
def param_not_shared(param: Ref | None, user: Ref | None = None) -> str | None:
    """The parameter ``param`` (absent is fine) is read only by ``user``: changing its value
    in place would change the other readers too."""
    if param is None:
        return None
    uses = param.readers()
    if len(uses) == 1 and (user is None or uses[0][0] == user.name):
        return None
    uses = param.consumers()
    others = [use for use in uses if user is None or use[0] != user.name]
    if user is None and len(uses) > 1:
        return f"{param.name} is used by {len(uses)} nodes ({_names(uses)})"
    if user is not None and others:
        return f"{param.name} is also used by {_names(others)}"
    return None


def _channel_axis(producer: Ref) -> tuple[int | None, str | None]:
    """The axis holding the output channels of a conv/deconv/dense node, or why there is none."""
    rank = len(producer.shape)
    if producer.op in ("Convolution", "Deconvolution"):
        layout = producer.attr("layout")
        if layout is not None and not str(layout).startswith("NC"):
            return None, f"{producer.name} has channel-last layout {layout}"
        return 1, None
    if producer.op == "FullyConnected":
        return rank - 1, None
    return None, f"{producer.name} ({producer.op}) has no output-channel axis known to this guard"


@register_guard
def batchnorm_on_channel_axis(bn: Ref, producer: Ref) -> str | None:
    """``bn`` normalises the output-channel axis of ``producer`` (conv and deconv: axis 1 in NC*
    layouts; dense: the last axis) and outputs nothing but its result."""
    if bn.attr("output_mean_var"):
        return f"{bn.name} also outputs its mean and variance"
    if bn.shape is None:
        return f"the shape of {bn.name}'s output is unknown (MXNet cannot infer it)"
    rank = len(bn.shape)
    axis = int(bn.attr("axis"))
    if not -rank <= axis < rank:
        return f"{bn.name} has axis {axis}, outside its rank {rank}"
    axis %= rank
    channel, problem = _channel_axis(producer)
    if problem:
        return problem
    if axis != channel:
        return (f"{bn.name} normalises axis {axis}, but {producer.name}'s output channels are on "
                f"axis {channel}")
    return None


@register_guard
def float_tensors(*tensors: Ref | None) -> str | None:
    """Every given tensor is floating point: folding scales into integer (quantized) weights
    would round them."""
    for tensor in tensors:
        if tensor is not None and np.dtype(tensor.dtype).kind != "f":
            return f"{tensor.name} is {tensor.dtype}, not a float type"
    return None


@register_guard
def same_shape(result: Ref, source: Ref) -> str | None:
    """``result`` has the shape of ``source`` (a reshape or flatten that changes nothing), both
    known: two unknown shapes (after a ``_while_loop``) say nothing about each other."""
    if result.shape is None or source.shape is None:
        unknown = result if result.shape is None else source
        return f"the shape of {unknown.name}'s output is unknown (MXNet cannot infer it)"
    if result.shape != source.shape:
        return f"{result.name} changes the shape {source.shape} to {result.shape}"
    return None


@register_guard
def reshape_is_identity(reshape: Ref, source: Ref) -> str | None:
    """``reshape`` (Reshape or Flatten) gives back its input ``source`` at every batch size, not
    only at the loaded one: ``Reshape(shape=(6, -1))`` of a (6, 4) tensor is the identity at
    batch 6, but makes (3, 4) into (6, 2) at batch 3. Checked by MXNet's inference of the reshape
    at the input's shapes at two other batch sizes (graphopt.rewrite.batch); where those are
    unknown, with every axis of the input varied."""
    problem = same_shape(reshape, source)
    if problem or reshape.op == "Flatten":
        return problem  # a Flatten that keeps a shape has a 2-D input, and keeps any 2-D shape
    others = shapes_at_other_batches(source.graph, source.tensor)
    if others is None:
        others = shapes_with_every_axis_varied(source.shape)
    for shape in others:
        result = _INFERENCE.infer_with_inputs(reshape.graph, reshape.name, [(shape, source.dtype)])
        if isinstance(result, str):
            return f"{reshape.name} cannot reshape a {shape} input: {result}"
        if result[0].shape != shape:
            return (f"{reshape.name} keeps the shape {source.shape} at the loaded batch size only: "
                    f"it makes {shape} into {result[0].shape}")
    return None


@register_guard
def keeps_first_axis(reshape: Ref) -> str | None:
    """``reshape`` (Reshape or Flatten) keeps its input's axis 0 as its own axis 0, whatever
    the batch size: a Flatten after it then equals a Flatten of its input."""
    if reshape.op == "Flatten":
        return None
    if reshape.attr("reverse") or reshape.attr("target_shape"):
        return f"{reshape.name} uses reverse or the legacy target_shape"
    shape = tuple(reshape.attr("shape") or ())
    if not shape or shape[0] != 0:
        return f"{reshape.name}'s shape {shape} does not copy axis 0 (code 0 first)"
    return None


@register_guard
def op_is_not(tensor: Ref, *ops: str) -> str | None:
    """``tensor`` is not produced by any of ``ops`` (keeps a rule that inserts such an op in
    front of its anchor from firing again on its own work)."""
    if tensor.op in ops:
        return f"{tensor.name} is already a {tensor.op}"
    return None
