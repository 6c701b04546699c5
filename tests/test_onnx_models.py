"""A user exports a whole MXNet model to ONNX and gets the same predictions from onnxruntime.

Every architecture of ``mxnet.gluon.model_zoo.vision`` (non-degenerate random weights, see
``fixtures.zoo``) and every committed fixture is loaded at batch 1, exported at the default
opset and at opset 13, checked (``check_model(full_check=True)``, strict shape inference, no
initializer listed as a graph input, the MXNet input/output names), and run in onnxruntime:
at batch 3 for the default opset (the export's batch axis is dynamic) and at batch 1 for opset 13.

Tolerance: 1e-5 relative (max |MXNet - ONNX| / max |MXNet|, issue 3). For the deepest nets that
is below float32's own noise with these random weights: MXNet float32 differs from MXNet float64
by 1.5e-5 on resnet50_v1, 6e-5 on resnet101_v1 and 2e-4 on resnet152_v1 (measured). So when a
model misses 1e-5, the test asks that the ONNX output be no further from MXNet's float64 output
than MXNet's own float32 output is: the conversion adds no error beyond float32 rounding
(measured: ONNX is the closer of the two on every such net). Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import time

import mxnet as mx
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
import graphopt.onnx.emit as emit
from conftest import relative_error
from fixtures import build, zoo
from graphopt.onnx import DEFAULT_OPSET, to_onnx

TOLERANCE = 1e-5
OTHER_BATCH = 3


def session(model: onnx.ModelProto | bytes | str) -> ort.InferenceSession:
    """An onnxruntime session of a model, its serialized bytes, or a file path."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # CI runs two pytest workers on two cores
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(model: onnx.ModelProto | bytes | str, data: np.ndarray) -> np.ndarray:
    return session(model).run(None, {"data": data})[0]


def mxnet_block(symbol_path, params_path, dtype="float32") -> mx.gluon.SymbolBlock:
    block = mx.gluon.SymbolBlock.imports(str(symbol_path), ["data"], str(params_path))
    if dtype != "float32":
        block.cast(dtype)
    return block


class Reference:
    """MXNet's outputs on ``data``: float32 (what ONNX must match), and float64, computed only
    when a model misses 1e-5 (float64 MXNet is slow: about 10 s for resnet152_v1 at batch 3)."""

    def __init__(self, symbol_path, params_path, data: np.ndarray):
        self.paths, self.data = (symbol_path, params_path), data
        self.float32 = mxnet_block(*self.paths)(mx.nd.array(data)).asnumpy()
        self._float64 = None

    def float64(self) -> np.ndarray:
        if self._float64 is None:
            block = mxnet_block(*self.paths, dtype="float64")
            self._float64 = block(mx.nd.array(self.data, dtype="float64")).asnumpy()
        return self._float64


def assert_matches_mxnet(what: str, onnx_output: np.ndarray, reference: Reference) -> float:
    """Relative error <= 1e-5, or else no larger than float32's own (see the module docstring)."""
    rows = len(onnx_output)
    error = relative_error(reference.float32[:rows], onnx_output)
    if error <= TOLERANCE:
        return error
    exact = reference.float64()[:rows]
    float32_noise = relative_error(exact, reference.float32[:rows])
    onnx_error = relative_error(exact, onnx_output)
    print(f"{what}: vs MXNet float32 {error:.2e}; vs float64: ONNX {onnx_error:.2e}, "
          f"MXNet float32 {float32_noise:.2e}")
    assert onnx_error <= max(TOLERANCE, float32_noise), \
        f"{what}: relative error {error:.3g} against MXNet; against MXNet float64 ONNX is " \
        f"{onnx_error:.3g} off, MXNet float32 only {float32_noise:.3g}"
    return error


def check_export(model: onnx.ModelProto, serialized: bytes, graph: graphopt.Graph) -> None:
    onnx.checker.check_model(serialized, full_check=True)  # full_check includes strict shape inference
    inputs = [i.name for i in model.graph.input]
    assert inputs == ["data"]
    assert not {t.name for t in model.graph.initializer} & set(inputs), "a weight is a graph input"
    assert [o.name for o in model.graph.output] == graph.output_names
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def check_model_file(name, symbol_path, params_path, shape) -> dict:
    """The whole story for one model; returns the measured figures."""
    graph = graphopt.load(symbol_path, params_path, inputs={"data": shape})
    reference = Reference(symbol_path, params_path,
                          zoo.seeded_input((OTHER_BATCH, *shape[1:]), zoo.name_seed(name)))
    figures = {"name": name}
    for opset, batch in ((DEFAULT_OPSET, OTHER_BATCH), (13, 1)):
        started = time.perf_counter()
        model = to_onnx(graph, opset=opset)
        figures[f"export_seconds_opset{opset}"] = round(time.perf_counter() - started, 3)
        serialized = model.SerializeToString()
        check_export(model, serialized, graph)
        output = run_onnx(serialized, reference.data[:batch])
        assert output.shape == reference.float32[:batch].shape
        figures[f"relative_error_opset{opset}"] = assert_matches_mxnet(
            f"{name} opset {opset} batch {batch}", output, reference)
    print(json.dumps(figures))
    return figures


@pytest.mark.parametrize("name", build.COMMITTED)
def test_fixture_exports_and_matches_mxnet(name):
    symbol_path, params_path = build.fixture_path(name)
    shape = tuple(json.loads(symbol_path.with_name(f"{name}.json").read_text())["input_shape"])
    check_model_file(name, symbol_path, params_path, shape)


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.ZOO_NAMES)
def test_model_zoo_exports_and_matches_mxnet(name):
    symbol_path, params_path, shape = zoo.export_zoo_model(name)
    check_model_file(name, symbol_path, params_path, shape)


# --- the exported file ----------------------------------------------------------------------------

def _resnet_fixture():
    symbol_path, params_path = build.fixture_path("resnet_bn_random")
    return graphopt.load(symbol_path, params_path, inputs={"data": (1, 3, 32, 32)}), symbol_path, params_path


def test_writes_the_file_atomically(tmp_path):
    graph, symbol_path, params_path = _resnet_fixture()
    target = tmp_path / "out" / "model.onnx"
    model = to_onnx(graph, target)
    assert onnx.load(str(target)) == model
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]  # no temporary left
    data = zoo.seeded_input((2, 3, 32, 32), 5)
    reference = mxnet_block(symbol_path, params_path)(mx.nd.array(data)).asnumpy()
    assert relative_error(reference, run_onnx(str(target), data)) <= TOLERANCE


def test_unsupported_model_writes_nothing(tmp_path):
    symbol = mx.sym.Dropout(mx.sym.var("data"), p=0.5, mode="always", name="always")
    symbol.save(str(tmp_path / "drop-symbol.json"))
    graph = graphopt.load(tmp_path / "drop-symbol.json", inputs={"data": (1, 4)})
    target = tmp_path / "drop.onnx"
    with pytest.raises(graphopt.UnsupportedOpError):
        to_onnx(graph, target)
    assert list(tmp_path.iterdir()) == [tmp_path / "drop-symbol.json"]


def test_external_data_beyond_the_protobuf_limit(tmp_path, monkeypatch):
    """Models over 2 GB keep their weights in ``<file>.data``. Lowering the threshold exercises
    the same path on a 1 MB model (a real 2 GB one would take 7 GB of memory to test)."""
    monkeypatch.setattr(emit, "EXTERNAL_DATA_THRESHOLD", 1024)
    graph, symbol_path, params_path = _resnet_fixture()
    target = tmp_path / "big.onnx"
    model = to_onnx(graph, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert target.stat().st_size < 200_000 < (tmp_path / "big.onnx.data").stat().st_size
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer), \
        "the returned model must still hold its weights"
    onnx.checker.check_model(str(target), full_check=True)
    data = zoo.seeded_input((1, 3, 32, 32), 6)
    assert relative_error(run_onnx(model, data), run_onnx(str(target), data)) == 0.0


def test_static_batch_export(tmp_path):
    graph, symbol_path, params_path = _resnet_fixture()
    model = to_onnx(graph, dynamic_batch=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 32, 32]
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, 10]


def test_outputs_keep_their_names_after_a_rename(tmp_path):
    """A rewrite may change which node produces an output; the ONNX output keeps the loaded
    model's name (through an Identity), and the same tensor may be two outputs."""
    data = mx.sym.var("data")
    relu = mx.sym.Activation(data, act_type="relu", name="relu")
    mx.sym.Group([relu, mx.sym.sigmoid(relu, name="sig")]).save(str(tmp_path / "two-symbol.json"))
    graph = graphopt.load(tmp_path / "two-symbol.json", inputs={"data": (2, 3)})
    graph.set_outputs([graph.outputs[0], graph.outputs[0]])
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["relu_output", "sig_output"]
    first, second = session(model).run(None, {"data": np.array([[-1, 0, 2]] * 2, np.float32)})
    assert np.array_equal(first, second) and first.max() == 2


def test_unknown_input_shape_is_refused(tmp_path):
    mx.sym.Activation(mx.sym.var("data"), act_type="relu").save(str(tmp_path / "relu-symbol.json"))
    graph = graphopt.load(tmp_path / "relu-symbol.json")
    with pytest.raises(graphopt.ShapeError, match="inputs="):
        to_onnx(graph)


def test_the_same_tensor_twice_among_the_loaded_outputs(tmp_path):
    """``Group([r, r])``: both outputs carry MXNet's name ``r_output``; ONNX names must be unique."""
    relu = mx.sym.Activation(mx.sym.var("data"), act_type="relu", name="r")
    mx.sym.Group([relu, relu]).save(str(tmp_path / "twice-symbol.json"))
    graph = graphopt.load(tmp_path / "twice-symbol.json", inputs={"data": (2, 3)})
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["r_output", "r_output_1"]
    first, second = session(model).run(None, {"data": np.array([[-1, 0, 2]] * 2, np.float32)})
    assert np.array_equal(first, second) and first.max() == 2
