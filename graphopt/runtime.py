"""Run a model in MXNet or in onnxruntime on numpy inputs, and get numpy outputs back by name.

Two small entry points that tests, ``compare`` and the benchmarks share:

- :func:`run_mxnet` runs a :class:`~graphopt.ir.Graph`, or an MXNet model given as
  ``(symbol_json_path, params_path)``, at inference (``is_train=False``). It can return the graph
  outputs, every intermediate tensor (``outputs="all"``), or any list of MXNet tensor names
  (``conv0_output``, as ``symbol.get_internals()`` names them).
- :func:`run_onnx` runs an ONNX model (``ModelProto`` or path) in onnxruntime on the CPU. Asked for
  values that are not graph outputs, it declares them as the graph outputs of the session it
  makes (the caller's model is left as it was).

Both return ``{name: np.ndarray}`` in the order asked for.

MXNet runs op by op: its MKLDNN subgraph backend (on by default in the CPU build) is switched
off while binding, unless ``fuse=True``. The fusion is wrong for intermediates: asked for a
Convolution's output and the ReLU after it together, MXNet 1.9.1 returns the pre-activation
values for both (measured on ``lenet_digits``: max abs difference 2.9 between the "ReLU output"
and ReLU of the conv output), and a reference should not depend on which tensors were asked for.
"""

from __future__ import annotations

import contextlib
import os
from typing import Mapping, Sequence

import mxnet as mx
import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from graphopt.errors import GraphoptError, ModelFileError, ShapeError
from graphopt.ir.graph import Graph, unique_output_names
from graphopt.mxnet_io.infer import first_error_line

ModelPaths = tuple[str | os.PathLike, str | os.PathLike | None]


class MXNetModel:
    """An MXNet symbol with its parameters as NDArrays, ready to bind many times.

    Build it once with :meth:`from_graph` or :meth:`from_files` when running the same model
    more than once (``compare --per-layer`` binds it once per group of intermediates).
    """

    def __init__(self, symbol: mx.sym.Symbol, params: Mapping[str, np.ndarray],
                 output_names: Sequence[str] | None = None):
        self.symbol = symbol
        self.params = {name: mx.nd.array(value, dtype=value.dtype) for name, value in params.items()}
        self.output_names = list(output_names or symbol.list_outputs())
        internals = symbol.get_internals()
        self._internals = internals
        variables = set(internals.list_arguments()) | set(internals.list_auxiliary_states())
        self._internal_index = {name: i for i, name in enumerate(internals.list_outputs())}
        self.internal_names = [name for name in internals.list_outputs() if name not in variables]
        """MXNet's names of every op output, in the symbol's (topological) order."""

    @classmethod
    def from_graph(cls, graph: Graph) -> "MXNetModel":
        from graphopt.mxnet_io.infer import to_symbol
        return cls(to_symbol(graph), graph.params, graph.output_names)

    @classmethod
    def from_files(cls, symbol_path: str | os.PathLike, params_path: str | os.PathLike | None,
                   graph: Graph | None = None) -> "MXNetModel":
        """The symbol exactly as the file holds it: the reference does not go through
        graphopt's IR. The parameter values are read by :func:`graphopt.load` (which also
        understands Gluon ``save_parameters`` names); pass ``graph`` if it is already loaded."""
        if graph is None:
            from graphopt.mxnet_io.load import load
            graph = load(symbol_path, params_path)
        return cls(mx.sym.load(str(symbol_path)), graph.params)

    def run(self, inputs: Mapping[str, np.ndarray], outputs: str | Sequence[str] = "graph",
            fuse: bool = False) -> dict[str, np.ndarray]:
        """See :func:`run_mxnet`."""
        names, arrays = self._forward(inputs, outputs, fuse)
        return dict(zip(names, arrays))

    def forward(self, inputs: Mapping[str, np.ndarray], fuse: bool = False) -> list[np.ndarray]:
        """The graph outputs as a list, in order (two outputs may carry the same name)."""
        return self._forward(inputs, "graph", fuse)[1]

    def _forward(self, inputs: Mapping[str, np.ndarray], outputs: str | Sequence[str],
                 fuse: bool) -> tuple[list[str], list[np.ndarray]]:
        if isinstance(outputs, str) and outputs == "graph":
            # a tensor listed twice as an output is there twice: "x", then "x_1" (as in ONNX)
            symbol, names = self.symbol, unique_output_names(self.output_names)
        else:
            names = self.internal_names if isinstance(outputs, str) and outputs == "all" else list(outputs)
            unknown = [name for name in names if name not in self._internal_index]
            if unknown:
                raise KeyError(f"MXNet has no tensor named {unknown[:5]}; the op outputs are named "
                               f"like {self.internal_names[:3]}")
            symbol = mx.sym.Group([self._internals[self._internal_index[n]] for n in names])
        with contextlib.nullcontext() if fuse else _subgraph_backend("NONE"):
            executor = self._bind(symbol, inputs)
        results = executor.forward(is_train=False)
        return list(names), [array.asnumpy() for array in results]

    def _bind(self, symbol: mx.sym.Symbol, inputs: Mapping[str, np.ndarray]):
        arguments = symbol.list_arguments()
        shapes = {name: np.shape(inputs[name]) for name in arguments if name in inputs}
        # the parameters' shapes too: a Custom op (graphopt's quantize ops) cannot infer the
        # shapes of its inputs backwards from its readers, as MXNet's own ops do
        shapes.update({name: self.params[name].shape for name in arguments
                       if name in self.params and name not in shapes})
        try:
            argument_shapes, _, _ = symbol.infer_shape_partial(**shapes)
        except mx.MXNetError as error:
            raise ShapeError(f"MXNet cannot run on inputs {shapes}: "
                             f"{first_error_line(error)}") from None
        args = {}
        for name, shape in zip(arguments, argument_shapes):
            if name in inputs:
                value = np.asarray(inputs[name])
                args[name] = mx.nd.array(value, dtype=value.dtype)
            elif name in self.params:
                args[name] = self.params[name]
            elif shape:  # a loss label: bound (MXNet wants every argument) but never read
                args[name] = mx.nd.zeros(shape)
            else:
                raise ShapeError(f"no value for MXNet argument {name!r}: give it as an input",
                                 node=name)
        aux = {name: self.params[name] for name in symbol.list_auxiliary_states()}
        return symbol.bind(mx.cpu(), args=args, aux_states=aux, grad_req="null")


@contextlib.contextmanager
def _subgraph_backend(name: str):
    """Set ``MXNET_SUBGRAPH_BACKEND`` for the binds inside the block (MXNet reads it at bind)."""
    key = "MXNET_SUBGRAPH_BACKEND"
    saved = os.environ.get(key)
    os.environ[key] = name
    try:
        yield
    finally:
        if saved is None:
            del os.environ[key]
        else:
            os.environ[key] = saved


def random_input(graph: Graph, name: str, shape: tuple[int, ...], dtype: np.dtype,
                 rng: np.random.RandomState) -> np.ndarray:
    """A seeded value for input ``name``: floats uniform in [-1, 1] (as
    ``fixtures.zoo.seeded_input``); integers valid as indices of every ``Embedding`` reading the
    input (else in [0, 10)); booleans fair coin flips."""
    if dtype.kind == "f":
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.randint(0, 2, size=shape).astype(bool)
    bounds = [int(graph.node(consumer).attrs.get("input_dim", 10))
              for consumer, _slot in graph.consumers(name) if graph.node(consumer).op == "Embedding"]
    return rng.randint(0, min(bounds, default=10), size=shape).astype(dtype)


def as_mxnet_model(model: Graph | ModelPaths | MXNetModel) -> MXNetModel:
    if isinstance(model, MXNetModel):
        return model
    if isinstance(model, Graph):
        return MXNetModel.from_graph(model)
    symbol_path, params_path = model
    return MXNetModel.from_files(symbol_path, params_path)


def run_mxnet(model: Graph | ModelPaths | MXNetModel, inputs: Mapping[str, np.ndarray],
              outputs: str | Sequence[str] = "graph", fuse: bool = False) -> dict[str, np.ndarray]:
    """Run ``model`` in MXNet at inference on ``inputs`` (``{input name: array}``; arrays keep
    their dtype).

    ``outputs``: ``"graph"`` for the graph outputs (named as :attr:`Graph.output_names`, or as
    ``symbol.list_outputs()`` for files; a name listed twice is ``name``, then ``name_1``), ``"all"`` for every op output in topological order, or
    a list of MXNet tensor names. Loss labels (``SoftmaxOutput``'s) are bound to zeros.
    ``fuse=True`` lets MXNet's MKLDNN subgraph backend fuse ops (see the module docstring).
    """
    return as_mxnet_model(model).run(inputs, outputs, fuse)


# --- onnxruntime --------------------------------------------------------------------------------

def load_onnx(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """``model`` itself, or the ONNX file it names; a missing or unreadable file is a
    :class:`ModelFileError` naming it (bad input, exit code 2), not a traceback."""
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except OSError as error:
        raise ModelFileError(f"cannot read the ONNX file: {error.strerror}",
                             file=str(model)) from None
    except Exception as error:  # protobuf's DecodeError and friends: not an ONNX model
        raise ModelFileError(f"not an ONNX model: {error}", file=str(model)) from None


def onnx_session(model: onnx.ModelProto | bytes | str | os.PathLike, threads: int | None = None,
                 optimize: bool = True, config: Mapping[str, str] | None = None,
                 profile_prefix: str | None = None) -> ort.InferenceSession:
    """A CPU session; ``threads`` sets the intra-op thread count (default: onnxruntime's);
    ``config``: session config entries (``{"session.intra_op.allow_spinning": "0"}``);
    ``profile_prefix``: onnxruntime's per-node profiling, written by ``end_profiling()``."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise GraphoptError(f"onnxruntime cannot load the model: {error}") from None


def output_values(model: onnx.ModelProto, names: Sequence[str],
                  dtypes: Mapping[str, str | np.dtype] | None = None) -> list[onnx.ValueInfoProto]:
    """Declarations of ``names`` (any node outputs) as graph outputs, shapes left open.

    A name the model already outputs keeps its declaration; a name in ``dtypes`` gets that
    element type; the others get the type :func:`inferred_dtypes` finds, or none where it
    finds nothing (onnxruntime accepts an untyped output: the value tells).
    """
    declared = {value.name: value for value in model.graph.output}
    produced = {output for node in model.graph.node for output in node.output}
    unknown = [name for name in names if name not in produced and name not in declared]
    if unknown:
        raise KeyError(f"the ONNX model has no value named {unknown[:5]}")
    dtypes = dict(dtypes or {})
    if any(name not in declared and name not in dtypes for name in names):
        dtypes = {**inferred_dtypes(model), **dtypes}
    values = []
    for name in names:
        if name in declared and declared[name].type.tensor_type.elem_type:
            values.append(declared[name])
        elif name in dtypes:
            element = helper.np_dtype_to_tensor_dtype(np.dtype(dtypes[name]))
            values.append(helper.make_tensor_value_info(name, element, None))
        else:
            values.append(onnx.ValueInfoProto(name=name))
    return values


def inferred_dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    """Element types of the model's values, as onnx shape inference finds them.

    Inference runs on a skeleton of ``model``: initializers of more than 1024 elements become
    typed graph inputs, so the weights are not copied (small ones, which may be shapes that a
    Reshape reads, are kept). It helps but is not required: custom domains or a failure just
    leave values out."""
    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    inputs = {value.name for value in model.graph.input}
    for tensor in model.graph.initializer:
        if int(np.prod(tensor.dims, dtype=np.int64)) <= 1024:
            graph.initializer.append(tensor)
        elif tensor.name not in inputs:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                             list(tensor.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton)
    except Exception:
        return {}
    return {value.name: helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            for value in inferred.graph.value_info if value.type.tensor_type.elem_type}


def with_outputs(model: onnx.ModelProto, names: Sequence[str],
                 dtypes: Mapping[str, str | np.dtype] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``names`` (see :func:`output_values`)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend(output_values(model, names, dtypes))
    return copy


def _serialized_with_outputs(model: onnx.ModelProto, names: Sequence[str],
                             dtypes: Mapping[str, str | np.dtype] | None) -> bytes:
    """:func:`with_outputs` serialized, without copying the weights: the outputs are swapped
    in place for the time of serializing, then restored."""
    values = output_values(model, names, dtypes)
    saved = list(model.graph.output)
    try:
        del model.graph.output[:]
        model.graph.output.extend(values)
        return model.SerializeToString()
    finally:
        del model.graph.output[:]
        model.graph.output.extend(saved)


def run_onnx(model: onnx.ModelProto | str | os.PathLike | ort.InferenceSession,
             inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
             threads: int | None = None,
             dtypes: Mapping[str, str | np.dtype] | None = None) -> dict[str, np.ndarray]:
    """Run ``model`` in onnxruntime (CPU) on ``inputs``; entries the model does not take
    (a loss label, say) are ignored.

    ``outputs``: ``None`` for the graph outputs, or a list of value names, which may be any
    node outputs (typed as :func:`output_values` says; ``dtypes`` gives their element types).
    """
    if isinstance(model, ort.InferenceSession):
        if outputs is not None:
            raise ValueError("a session has fixed outputs; pass the model to ask for other values")
        session = model
    else:
        if outputs is not None:
            model = _serialized_with_outputs(load_onnx(model), outputs, dtypes)
        session = onnx_session(model, threads)
    expected = session.get_inputs()
    absent = [value.name for value in expected if value.name not in inputs]
    if absent:
        raise ShapeError(f"no value for ONNX input(s) {absent}; given {sorted(inputs)}")
    feed = {value.name: np.asarray(inputs[value.name]) for value in expected}
    names = [value.name for value in session.get_outputs()]
    try:
        results = session.run(names, feed)
    except Exception as error:
        raise GraphoptError(f"onnxruntime failed: {error}") from None
    return dict(zip(names, results))
