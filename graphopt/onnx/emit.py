"""Graph IR -> ONNX: walk the graph, call each op's converter, wrap the result in a model.

The contract of :func:`to_onnx`:

- graph inputs are the graph's ``input`` variables, with their names, dtypes and shapes (axis 0
  named ``batch`` with ``dynamic_batch``); loss labels are not inputs;
- parameters and aux states are initializers only, never graph inputs (PITFALLS.md, "ONNX /
  onnxruntime": weights listed as inputs stop onnxruntime's constant folding);
- outputs carry ``graph.output_names`` (an Identity renames a value that has another name);
- float64 ops that onnxruntime has no double kernel for compute in float32 between Casts
  (:mod:`graphopt.onnx.float64`);
- every op without a converter, and every converter that raises :class:`Unsupported`, is
  reported in one :class:`~graphopt.errors.UnsupportedOpError` that lists them all;
- with ``path`` the file is written atomically, with the weights in an external data file beside
  it when the model would pass protobuf's 2 GB limit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

import graphopt
from graphopt._files import atomic_paths
from graphopt.errors import ShapeError, UnsupportedOpError
from graphopt.ir.graph import Graph, Node, Tensor, unique_output_names
from graphopt.onnx import converters  # noqa: F401  (importing it fills the converter table)
from graphopt.onnx.context import ConvertContext, convert_graph, needed_nodes, onnx_dtype
from graphopt.onnx.float64 import run_double_ops_in_float32
from graphopt.onnx.converters.control_flow import complete_loop_shapes
from graphopt.onnx.converters.tensor import batch_axes

MIN_OPSET = 13
# The newest opset of the pinned onnx (1.23) and onnxruntime (1.32): onnxruntime registers a CPU
# kernel for the newest version of every op up to opset 28 (``get_all_opkernel_def``), and the
# nn op tests run at 13, the default and this one.
MAX_OPSET = 28
# The default is the newest opset at which the pinned onnxruntime runs every converter: 21.
# It has DeformConv with its mask (19, modulated deformable convolution), GridSample "linear"
# (20); above it onnxruntime 1.32 has no kernel for RoiAlign, MaxRoiPool and the random ops
# (their version 22), so a model holding one of them would not load.
DEFAULT_OPSET = 21
BATCH_DIM = "batch"

# protobuf cannot serialize a message of 2 GiB or more; leave room for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 64 * 2**20


def to_onnx(graph: Graph, path: str | os.PathLike | None = None, opset: int = DEFAULT_OPSET,
            dynamic_batch: bool = True) -> onnx.ModelProto:
    """Convert ``graph`` to an ONNX model (and write it to ``path`` when given).

    ``opset`` is the ONNX default-domain opset, from 13 to :data:`MAX_OPSET`. With
    ``dynamic_batch`` axis 0 of every input (and of the outputs that follow it) is the symbolic
    dimension ``batch``, and no converter bakes the loaded batch size into the model.
    Raises :class:`~graphopt.errors.UnsupportedOpError` listing every node that cannot be
    converted.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} is not supported: choose one from {MIN_OPSET} to "
                         f"{MAX_OPSET}")
    live = graph.live_nodes()
    inputs = [node for node in graph.variables("input") if node.name in live]
    _check_input_types(graph, inputs)

    context = ConvertContext(graph, opset, dynamic_batch=dynamic_batch)
    complete_loop_shapes(context)  # MXNet infers no shape after a _while_loop or _cond
    graph = context.graph
    unsupported = [_problem(node, reason) for node, reason in convert_graph(context)]
    if unsupported:
        raise _unsupported_error(graph, unsupported)

    outputs = _name_outputs(graph, context)
    nodes, initializers = _needed(context, outputs)
    batch = inputs[0].shape[0] if dynamic_batch and inputs and inputs[0].shape else None
    onnx_graph = helper.make_graph(
        nodes, graph.name,
        [_value_info(node.name, node.outputs[0], _batch_axes(context, Tensor(node.name)), batch)
         for node in inputs],
        [_value_info(name, graph.tensor_type(tensor), _batch_axes(context, tensor), batch)
         for name, tensor in zip(outputs, graph.outputs)])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="graphopt",
                              producer_version=graphopt.__version__)
    model.graph.initializer.extend(initializers)  # after make_model, which copies its graph
    model.ir_version = helper.find_min_ir_version_for(opsets)  # the widest range of runtimes
    run_double_ops_in_float32(model)
    if path is not None:
        save(model, path)
    return model


def _check_input_types(graph: Graph, inputs: list[Node]) -> None:
    missing = [node.name for node in inputs if not node.outputs[0].known]
    if missing:
        raise ShapeError(f"the shape or dtype of input(s) {missing} is unknown: load the model "
                         f"with inputs={{name: shape}} so that every tensor's shape is known",
                         file=graph.source.get("symbol"), node=missing[0])


def _problem(node: Node, reason: str) -> dict:
    return {"node": node.name, "op": node.op, "attrs": dict(node.attrs), "reason": reason}


def _unsupported_error(graph: Graph, unsupported: list[dict]) -> UnsupportedOpError:
    lines = [f"  {p['node']} ({p['op']} {p['attrs']}): {p['reason']}" for p in unsupported]
    ops = sorted({p["op"] for p in unsupported})
    return UnsupportedOpError(
        f"{len(unsupported)} node(s) cannot be converted to ONNX (ops {', '.join(ops)}):\n"
        + "\n".join(lines), unsupported, file=graph.source.get("symbol"))


def _name_outputs(graph: Graph, context: ConvertContext) -> list[str]:
    """Give every graph output its stable name, adding an Identity where the value has another
    name. A graph input or a parameter returned as it is stays its own output: an Identity
    writing its name would define that name twice, which onnxruntime refuses."""
    names = unique_output_names(graph.output_names)
    for name, tensor in zip(names, graph.outputs):
        value = context.value_name(tensor)
        if value != name:
            identity = helper.make_node("Identity", [value], [name], name=f"{name}__output")
            context.nodes.append(identity)
    return names


def _batch_axes(context: ConvertContext, tensor: Tensor) -> frozenset[int]:
    """Axes of an input or output that follow the batch size: those that change when MXNet's
    inference runs with axis 0 of every input one larger (none when the model only runs at its
    own batch size)."""
    return batch_axes(context, tensor) if context.dynamic_batch else frozenset()


def _needed(context: ConvertContext, outputs: list[str]) -> tuple[list, list]:
    """The ONNX nodes and initializers the outputs depend on. Some converters read parameters
    ahead of the ops that convert them (the fused RNN reads its weights through the concat that
    MXNet feeds it); what nothing reads is left out, instead of doubling the file."""
    kept, needed = needed_nodes(context.nodes, outputs)
    initializers = [t for name, t in context.initializers.items() if name in needed]
    return kept, initializers


def _value_info(name: str, tensor_type, dynamic: frozenset[int],
                batch: int | None) -> onnx.ValueInfoProto:
    """ONNX type of a graph input or output: the ``dynamic`` axes are named ``batch`` when they
    have the batch size and left unnamed otherwise (a flattened batch, say)."""
    shape = None
    if tensor_type.shape is not None:
        shape = [(BATCH_DIM if size == batch else None) if axis in dynamic else size
                 for axis, size in enumerate(tensor_type.shape)]
    return helper.make_tensor_value_info(name, onnx_dtype(tensor_type.dtype), shape)


# --- writing the file -----------------------------------------------------------------------------

def save(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` atomically. A model whose weights pass protobuf's 2 GB limit
    goes with its initializers in ``<file name>.data`` beside it: both files are written in a
    temporary folder beside the target and then moved into place, each atomically, data first."""
    path = Path(path)
    if _initializer_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        with atomic_paths(path) as (temporary,):
            onnx.save_model(model, str(temporary))
        return path
    data_name = path.name + ".data"
    path.parent.mkdir(parents=True, exist_ok=True)
    detached = onnx.ModelProto()
    detached.CopyFrom(model)  # save_model moves the weights out of the model it is given
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx.save_model(detached, str(folder / path.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        os.replace(folder / data_name, path.parent / data_name)
        os.replace(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


def _initializer_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for tensor in model.graph.initializer:
        if tensor.raw_data:
            total += len(tensor.raw_data)
        else:
            count = int(np.prod(tensor.dims)) if tensor.dims else 1
            total += count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total


__all__ = ["to_onnx", "save", "MIN_OPSET", "MAX_OPSET", "DEFAULT_OPSET"]
