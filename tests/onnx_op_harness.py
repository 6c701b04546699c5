"""Op-level ONNX checks: build a small MXNet graph, convert it, run it in onnxruntime, compare.

The story every op test tells: a user writes a symbol (``mx.sym``) and its params to disk, loads
them with :func:`graphopt.load`, exports ONNX, and gets what MXNet computes. :func:`check` does
exactly that, at each opset asked for, and, when given inputs of another batch size, also runs
the exported model on them (the export keeps the batch axis dynamic) against MXNet at that size.

Export goes through :func:`graphopt.onnx.to_onnx`, as a user's would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import mxnet as mx
import numpy as np
import onnx
import onnxruntime as ort

import graphopt
from conftest import relative_error
from graphopt.onnx import DEFAULT_OPSET, MAX_OPSET, to_onnx

NEWEST_OPSET = MAX_OPSET
DEFAULT_OPSETS = (13, DEFAULT_OPSET)
TOLERANCE = 1e-5  # issue 3: max |MXNet - ONNX| / max |MXNet| for every op


def export(graph: graphopt.Graph, opset: int, dynamic_batch: bool = True) -> onnx.ModelProto:
    return to_onnx(graph, opset=opset, dynamic_batch=dynamic_batch)


def run_mxnet(symbol: mx.sym.Symbol, feeds: Mapping[str, np.ndarray],
              params: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    arrays = {k: mx.nd.array(v, dtype=v.dtype) for k, v in {**params, **feeds}.items()}
    args = {k: arrays[k] for k in symbol.list_arguments()}
    aux = {k: arrays[k] for k in symbol.list_auxiliary_states()}
    executor = symbol.bind(mx.cpu(), args=args, aux_states=aux, grad_req="null")
    return [o.asnumpy() for o in executor.forward(is_train=False)]


def run_onnx(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in wanted})


def save_model(symbol: mx.sym.Symbol, params: Mapping[str, np.ndarray], directory: Path,
               name: str = "op") -> tuple[Path, Path | None]:
    symbol_path = directory / f"{name}-symbol.json"
    symbol_path.write_text(symbol.tojson())
    if not params:
        return symbol_path, None
    params_path = directory / f"{name}-0000.params"
    mx.nd.save(str(params_path), {f"arg:{k}": mx.nd.array(v, dtype=v.dtype)
                                  for k, v in params.items()})
    return symbol_path, params_path


def load(symbol: mx.sym.Symbol, tmp_path: Path, inputs: Mapping[str, np.ndarray],
         params: Mapping[str, np.ndarray] | None = None) -> graphopt.Graph:
    """Write the symbol and params to disk (a new folder under ``tmp_path`` per call) and load
    them as a user would."""
    directory = tmp_path / f"model{sum(1 for _ in tmp_path.iterdir())}"
    directory.mkdir()
    symbol_path, params_path = save_model(symbol, params or {}, directory)
    return graphopt.load(symbol_path, params_path,
                         inputs={k: v.shape for k, v in inputs.items()},
                         dtypes={k: v.dtype.name for k, v in inputs.items()})


def assert_close(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray],
                 tolerance: float, what: str) -> None:
    assert len(reference) == len(actual), f"{what}: {len(actual)} outputs, MXNet has {len(reference)}"
    for index, (expected, got) in enumerate(zip(reference, actual)):
        assert got.shape == expected.shape, \
            f"{what}, output {index}: shape {got.shape}, MXNet gives {expected.shape}"
        assert got.dtype == expected.dtype, \
            f"{what}, output {index}: dtype {got.dtype}, MXNet gives {expected.dtype}"
        if expected.size == 0:
            continue
        if np.issubdtype(expected.dtype, np.floating):
            assert np.array_equal(np.isnan(expected), np.isnan(got)), f"{what}: NaN positions differ"
            expected, got = np.nan_to_num(expected), np.nan_to_num(got)
        error = relative_error(expected, got)
        assert error <= tolerance, \
            f"{what}, output {index}: relative error {error:.3g} > {tolerance:g}\n" \
            f"MXNet:\n{expected}\nONNX:\n{got}"


def check(symbol: mx.sym.Symbol, tmp_path: Path, inputs: Mapping[str, np.ndarray],
          params: Mapping[str, np.ndarray] | None = None, *, opsets: Sequence[int] = DEFAULT_OPSETS,
          other_batch: Mapping[str, np.ndarray] | None = None,
          tolerance: float = TOLERANCE, full_check: bool = True) -> dict[int, onnx.ModelProto]:
    """Convert ``symbol`` (loaded from disk) at each opset and compare its outputs with MXNet's.

    ``other_batch`` holds the same inputs at another batch size: the model, exported with a
    dynamic batch at the size of ``inputs``, must also match MXNet on them. ``full_check``: the
    model passes ``onnx.checker`` (full) and strict shape inference.
    """
    params = dict(params or {})
    graph = load(symbol, tmp_path, inputs, params)
    reference = run_mxnet(symbol, inputs, params)
    other_reference = run_mxnet(symbol, other_batch, params) if other_batch else None
    models = {}
    for opset in opsets:
        model = export(graph, opset)
        if full_check:
            onnx.checker.check_model(model, full_check=True)
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        assert_close(reference, run_onnx(model, inputs), tolerance, f"opset {opset}")
        if other_batch:
            assert_close(other_reference, run_onnx(model, other_batch), tolerance,
                         f"opset {opset}, other batch size")
        models[opset] = model
    return models


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]
