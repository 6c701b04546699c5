"""Post-training int8 to ONNX QDQ (issue 8): the digits models calibrated, quantized by the rules
of rules/quantize.toml, written as QDQ ONNX and run by the real onnxruntime with its int8 kernels,
against the float model and against onnxruntime's own quantize_static on the same samples.

The rules' own test vectors (each rule on tiny graphs) run in tests/test_rewrite_rules.py.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphopt
from fixtures.build import digits_split
from graphopt.quantize import calibrate, fusion_report, quantize
from graphopt.quantize.qparams import QuantizationWarning, activation_qparams
from graphopt.quantize.sensitivity import sqnr_db
from graphopt.rewrite.testvectors import build_vector_graph
from graphopt.runtime import onnx_session, run_mxnet

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "models"
CALIBRATION_SAMPLES = 200   # of the 1438 training digits; the held-out 359 are never calibrated on
METHODS = ("minmax", "percentile", "entropy")


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return onnx_session(model, threads=1).run(None, {"data": x})[0]


def _folded(name: str):
    graph = graphopt.load(FIXTURES / f"{name}-symbol.json", FIXTURES / f"{name}-0000.params",
                          inputs={"data": (1, 1, 28, 28)})
    return graphopt.rewrite(graph)[0]


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module", params=["lenet_digits", "resnet_digits"])
def fixture(request, digits):
    """A trained digits model, folded, calibrated once (entropy keeps the histograms every
    method chooses its ranges from), with its float outputs on the held-out digits."""
    x_train, _y_train, x_test, y_test = digits
    graph = _folded(request.param)
    calibration = calibrate(graph, x_train[:CALIBRATION_SAMPLES], method="entropy")
    float_model = graphopt.to_onnx(graph)
    reference = _run(float_model, x_test)
    models = {}

    def int8(method: str, **options):
        key = (method, tuple(sorted(options.items())))
        if key not in models:
            qgraph, report = quantize(graph, calibration.with_method(method), **options)
            models[key] = (graphopt.to_onnx(qgraph), qgraph, report)
        return models[key]
    return SimpleNamespace(name=request.param, graph=graph, calibration=calibration,
                           float_model=float_model, reference=reference, int8=int8,
                           x_train=x_train, x_test=x_test, y_test=y_test)


@pytest.mark.parametrize("method", METHODS)
def test_int8_accuracy_stays_within_half_a_point_of_float(fixture, method):
    model, _qgraph, _report = fixture.int8(method)
    quantized = _run(model, fixture.x_test)
    float_accuracy = np.mean(fixture.reference.argmax(1) == fixture.y_test)
    int8_accuracy = np.mean(quantized.argmax(1) == fixture.y_test)
    assert int8_accuracy >= float_accuracy - 0.005   # the bound: 0.5 points


def _onnxruntime_quantize_static(float_model: onnx.ModelProto, samples: np.ndarray, method: str,
                                 tmp_path: Path) -> onnx.ModelProto:
    """onnxruntime's own quantizer, as the issue sets it: QDQ, per-channel, S8S8, the same
    calibration samples, on the same folded float model."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Samples(CalibrationDataReader):
        def __init__(self, x):
            self.batches = iter([{"data": x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.batches, None)
    source, target = tmp_path / f"{method}-float.onnx", tmp_path / f"{method}-ort.onnx"
    onnx.save(float_model, str(source))
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(source), str(target), Samples(samples),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
    return onnx.load(str(target))


@pytest.mark.parametrize("method", METHODS)
def test_output_sqnr_matches_or_beats_onnxruntime_quantize_static(fixture, method, tmp_path):
    ours = sqnr_db([fixture.reference], [_run(fixture.int8(method)[0], fixture.x_test)])
    peer_model = _onnxruntime_quantize_static(fixture.float_model,
                                              fixture.x_train[:CALIBRATION_SAMPLES], method, tmp_path)
    peer = sqnr_db([fixture.reference], [_run(peer_model, fixture.x_test)])
    assert ours >= peer - 0.1, f"graphopt {ours:.1f} dB, onnxruntime {peer:.1f} dB"
    # measured (200 samples; min-max, percentile, entropy): LeNet 43.2 / 43.1 / 43.3 dB against
    # onnxruntime's 39.4 / 40.2 / 40.0, ResNet 32.5 / 33.0 / 31.9 dB against 25.9 / 26.1 / 26.7. The goal is 35 dB: the LeNet reaches it, the digits
    # ResNet does not (its first conv's weights alone cost 38.9 dB; see the final report).
    assert ours >= (35.0 if fixture.name == "lenet_digits" else 30.0)


def test_onnxruntime_runs_every_quantized_layer_in_int8_and_the_file_shrinks(fixture):
    model, qgraph, report = fixture.int8("minmax")
    fusion = fusion_report(model)
    assert fusion.confirmed and not fusion.mismatches, fusion.format()
    assert not fusion.float_groups, fusion.format()
    convs = sum(1 for node in fixture.graph.op_nodes() if node.op == "Convolution")
    counts = fusion.counts()
    assert counts["QLinearConv"] == convs
    assert counts.get("QGemm", 0) == sum(1 for n in fixture.graph.op_nodes() if n.op == "FullyConnected")
    if fixture.name == "resnet_digits":
        assert counts["QLinearAdd"] == 3           # each residual add, both inputs dequantized
    # the last classifier writes the graph output, which stays float (QGemm with a float output)
    assert list(report.float_layers) == [fixture.graph.outputs[0].node]
    # int8 weights: 4x smaller, less the int32 biases and the per-channel scales
    assert len(fixture.float_model.SerializeToString()) / len(model.SerializeToString()) > 3.0
    weights = [t for t in model.graph.initializer if t.name.endswith("_weight_quantized")]
    assert weights and all(t.data_type == onnx.TensorProto.INT8 for t in weights)


def test_mxnet_runs_the_qdq_graph_as_onnxruntime_runs_its_int8_kernels(fixture):
    model, qgraph, _report = fixture.int8("minmax")
    x = fixture.x_test[:32]
    simulated = next(iter(run_mxnet(qgraph, {"data": x}).values()))
    int8 = _run(model, x)
    # the int8 kernels requantize with their own rounding of the combined scale: a step of the
    # last quantized tensor at most, far below the quantization error itself
    assert sqnr_db([int8], [simulated]) > 40.0


def test_the_qdq_graph_saved_as_mxnet_loads_and_runs(fixture, tmp_path):
    _model, qgraph, _report = fixture.int8("minmax")
    symbol, params = graphopt.save_mxnet(qgraph, tmp_path / "int8")
    reloaded = graphopt.load(symbol, params, inputs={"data": (1, 1, 28, 28)})
    weights = [name for name in reloaded.params if name.endswith("_weight_quantized")]
    assert weights and all(reloaded.params[name].dtype == np.int8 for name in weights)
    x = fixture.x_test[:8]
    assert np.array_equal(next(iter(run_mxnet(reloaded, {"data": x}).values())),
                          next(iter(run_mxnet(qgraph, {"data": x}).values())))


def test_reduced_range_weights_for_cpus_without_vnni_keep_the_accuracy(fixture):
    model, _qgraph, report = fixture.int8("minmax", reduce_range=True)
    assert report.reduce_range
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer
               if t.name.endswith("_weight_quantized")]
    assert max(int(np.abs(w).max()) for w in weights) == 63   # 7 bits: u8 x s8 pairs fit int16
    quantized = _run(model, fixture.x_test)
    assert np.mean(quantized.argmax(1) == fixture.y_test) >= \
        np.mean(fixture.reference.argmax(1) == fixture.y_test) - 0.005


def test_exclusions_by_name_op_and_first_last_stay_float(fixture):
    graph = fixture.graph
    first_conv = next(n.name for n in graph.op_nodes() if n.op == "Convolution")
    _model, qgraph, report = fixture.int8("minmax", exclude=(first_conv, "Pooling"))
    assert first_conv in report.float_layers and "excluded" in report.float_layers[first_conv]
    pools = [n.name for n in graph.op_nodes() if n.op == "Pooling"]
    assert pools and all(p in report.float_layers for p in pools)
    assert all(n.op != "Pooling" or n.name in pools for n in qgraph.op_nodes())

    _model, _qgraph, report = fixture.int8("minmax", exclude_first_last=True)
    last = graph.outputs[0].node
    assert {first_conv, last} <= set(report.excluded)
    assert "excluded" in report.float_layers[first_conv]


def test_an_unknown_exclusion_is_refused_with_the_layers_it_could_mean(fixture):
    with pytest.raises(graphopt.GraphError, match="names no node and no op"):
        quantize(fixture.graph, fixture.calibration, exclude=["conv_that_does_not_exist"])


# --- operators beyond the digits models ------------------------------------------------------

DECONV_AND_CONCAT = {
    "name": "deconvolution and concat",
    "inputs": {"data": [1, 4, 6, 6]},
    "nodes": [
        {"name": "conv", "op": "Convolution", "inputs": ["data"],
         "attrs": {"kernel": [3, 3], "num_filter": 8, "pad": [1, 1]}},
        {"name": "relu", "op": "Activation", "inputs": ["conv"], "attrs": {"act_type": "relu"}},
        {"name": "deconv", "op": "Deconvolution", "inputs": ["relu"],
         "attrs": {"kernel": [4, 4], "num_filter": 6, "num_group": 2, "stride": [2, 2],
                   "pad": [1, 1], "no_bias": False}},
        {"name": "side", "op": "Convolution", "inputs": ["deconv"],
         "attrs": {"kernel": [1, 1], "num_filter": 4}},
        {"name": "cat", "op": "Concat", "inputs": ["deconv", "side"], "attrs": {"dim": 1}},
        {"name": "head", "op": "Convolution", "inputs": ["cat"],
         "attrs": {"kernel": [3, 3], "num_filter": 3, "pad": [1, 1]}},
    ],
    "outputs": ["head"],
}


def test_deconvolution_weights_are_per_channel_on_axis_1_and_concat_runs_in_int8(tmp_path):
    graph = build_vector_graph(DECONV_AND_CONCAT, tmp_path)
    rng = np.random.RandomState(0)
    calibration = calibrate(graph, rng.rand(64, 4, 6, 6).astype(np.float32), method="minmax")
    qgraph, report = quantize(graph, calibration)
    model = graphopt.to_onnx(qgraph)

    dequantize = next(n for n in model.graph.node if n.op_type == "DequantizeLinear"
                      and n.input[0] == "deconv_weight_quantized")
    assert next(a.i for a in dequantize.attribute if a.name == "axis") == 1
    scales = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # weight (in=8, out/groups=3, 4, 4): one scale per slice of axis 1, shared by the groups
    assert scales[dequantize.input[1]].shape == (3,)

    fusion = fusion_report(model)
    assert fusion.counts().get("QLinearConcat") == 1 and not fusion.mismatches, fusion.format()
    assert "deconv" in report.quantized and "cat" in report.quantized
    # onnxruntime 1.32 runs a QDQ ConvTranspose in float (int8 weights, dequantized): said so
    (deconv,) = [g for g in fusion.groups if g.op == "ConvTranspose"]
    assert not deconv.in_int8 and "does not fuse a QDQ ConvTranspose" in deconv.float_reason
    x = rng.rand(16, 4, 6, 6).astype(np.float32)
    reference = _run(graphopt.to_onnx(graph), x)
    assert sqnr_db([reference], [_run(model, x)]) > 30.0   # measured about 38 dB


RELU_OPS = {
    "name": "relu written as MXNet's relu op (Gluon's F.relu, mx.sym.relu) and as Activation",
    "inputs": {"data": [1, 4, 8, 8]},
    "nodes": [
        {"name": "conv", "op": "Convolution", "inputs": ["data"],
         "attrs": {"kernel": [3, 3], "num_filter": 8, "pad": [1, 1]}},
        {"name": "relu_op", "op": "relu", "inputs": ["conv"]},
        {"name": "side", "op": "Convolution", "inputs": ["data"],
         "attrs": {"kernel": [3, 3], "num_filter": 8, "pad": [1, 1]}},
        {"name": "relu_act", "op": "Activation", "inputs": ["side"], "attrs": {"act_type": "relu"}},
        {"name": "add", "op": "elemwise_add", "inputs": ["relu_op", "relu_act"]},
        {"name": "head", "op": "Convolution", "inputs": ["add"],
         "attrs": {"kernel": [1, 1], "num_filter": 3}},
    ],
    "outputs": ["head"],
}


def test_the_relu_op_folds_into_the_quantize_as_activation_relu_does(tmp_path):
    """MXNet's ``relu`` op is the same function as Activation(act_type=relu): both fold into
    their conv's output quantize (before, the relu op stayed between two quantize pairs, and the
    fusion report predicted a float Relu that onnxruntime had removed)."""
    graph = build_vector_graph(RELU_OPS, tmp_path)
    rng = np.random.RandomState(0)
    calibration = calibrate(graph, rng.randn(32, 4, 8, 8).astype(np.float32), method="minmax")
    qgraph, _report = quantize(graph, calibration)
    assert not any(n.op in ("relu", "Activation") for n in qgraph.op_nodes())
    model = graphopt.to_onnx(qgraph)
    fusion = fusion_report(model)
    assert fusion.counts() == {"QLinearConv": 2, "QLinearAdd": 1, "Conv": 1}, fusion.format()
    assert not fusion.mismatches, fusion.format()
    x = rng.randn(8, 4, 8, 8).astype(np.float32)
    assert sqnr_db([_run(graphopt.to_onnx(graph), x)], [_run(model, x)]) > 30.0


RELU_BESIDE_A_RESIDUAL = {
    "name": "a conv output read by a ReLU and by a residual add",
    "inputs": {"data": [1, 4, 8, 8]},
    "nodes": [
        {"name": "conv", "op": "Convolution", "inputs": ["data"],
         "attrs": {"kernel": [3, 3], "num_filter": 8, "pad": [1, 1]}},
        {"name": "relu", "op": "Activation", "inputs": ["conv"], "attrs": {"act_type": "relu"}},
        {"name": "pool", "op": "Pooling", "inputs": ["relu"],
         "attrs": {"kernel": [1, 1], "global_pool": True, "pool_type": "avg"}},
        {"name": "add", "op": "broadcast_add", "inputs": ["conv", "pool"]},
        {"name": "head", "op": "Convolution", "inputs": ["add"],
         "attrs": {"kernel": [1, 1], "num_filter": 3}},
    ],
    "outputs": ["head"],
}


def test_a_relu_left_before_a_quantize_is_predicted_removed_as_onnxruntime_removes_it(tmp_path):
    """The conv's output has two readers, so its ReLU cannot fold into the conv's quantize and
    stays as DQ -> Relu -> Q (zero point at the grid's floor). onnxruntime's ReluQuantFusion
    deletes such a Relu; the fusion report predicted a float Relu (a mismatch)."""
    graph = build_vector_graph(RELU_BESIDE_A_RESIDUAL, tmp_path)
    rng = np.random.RandomState(0)
    calibration = calibrate(graph, rng.randn(32, 4, 8, 8).astype(np.float32), method="minmax")
    qgraph, _report = quantize(graph, calibration)
    assert any(n.op == "Activation" for n in qgraph.op_nodes())   # the case this test is about
    fusion = fusion_report(graphopt.to_onnx(qgraph))
    assert not fusion.mismatches, fusion.format()
    assert fusion.counts() == {"QLinearConv": 1, "QLinearGlobalAveragePool": 1, "QLinearAdd": 1,
                               "Conv": 1}, fusion.format()


def test_a_near_dead_channel_with_a_bias_keeps_an_int32_bias(tmp_path):
    """A channel whose weights are almost 0 but whose bias is not (a BatchNorm with gamma ~ 0
    folded in): per channel, its weight scale is so small that bias / (input scale x weight
    scale) overflows int32. Its weight scale is raised until the bias fits (its weights are ~0
    either way); before, the whole layer's bias stayed float, which onnxruntime's QDQ Conv
    selector does not expect, and the fusion report's prediction was wrong."""
    graph = build_vector_graph(RELU_OPS, tmp_path)
    weight, bias = graph.param("conv_weight").copy(), graph.param("conv_bias").copy()
    weight[3] *= 1e-7
    bias[3] = 0.5
    graph.set_param("conv_weight", weight)
    graph.set_param("conv_bias", bias)
    rng = np.random.RandomState(0)
    calibration = calibrate(graph, rng.randn(32, 4, 8, 8).astype(np.float32), method="minmax")
    qgraph, _report = quantize(graph, calibration)
    assert qgraph.param("conv_bias_quantized").dtype == np.int32
    model = graphopt.to_onnx(qgraph)
    fusion = fusion_report(model)
    assert fusion.counts().get("QLinearConv") == 2 and not fusion.mismatches, fusion.format()
    x = rng.randn(8, 4, 8, 8).astype(np.float32)
    assert sqnr_db([_run(graphopt.to_onnx(graph), x)], [_run(model, x)]) > 30.0


def test_an_all_zero_tensor_gets_a_warning_naming_it():
    with pytest.warns(QuantizationWarning, match="'dead_relu_output'"):
        scale, zero_point = activation_qparams(0.0, 0.0, "uint8", "dead_relu_output")
    assert scale[0] > 0 and zero_point[0] == 0   # 0 stays exact, and nothing divides by 0


def test_activations_int8_are_symmetric_and_one_sided_tensors_start_at_the_grid_floor():
    scale, zero_point = activation_qparams(-2.0, 3.0, "int8", "signed")
    assert zero_point[0] == 0 and np.isclose(scale[0], 3.0 / 127)
    scale, zero_point = activation_qparams(0.0, 5.1, "int8", "after_relu")
    assert zero_point[0] == -128 and np.isclose(scale[0], 5.1 / 255)
    scale, zero_point = activation_qparams(-1.0, 3.0, "uint8", "asymmetric")
    assert zero_point.dtype == np.uint8 and zero_point[0] == round(1.0 / (4.0 / 255))


# --- the command line ---------------------------------------------------------------------------

def _graphopt(*args, capsys):
    """``graphopt ARGS`` run in this process (the command line's own entry point: its exit code
    and what it prints)."""
    from graphopt.cli import main
    code = main([str(arg) for arg in args])
    printed = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=printed.out, stderr=printed.err)


def test_cli_quantizes_to_onnx_with_its_report(tmp_path, digits, capsys):
    np.savez(tmp_path / "calib.npz", data=digits[0][:64])
    result = _graphopt("quantize", FIXTURES / "lenet_digits", "--input", "data:1x1x28x28",
                       "--calib", tmp_path / "calib.npz", "--method", "percentile",
                       "-o", tmp_path / "int8.onnx", "--report", tmp_path / "report.json",
                       capsys=capsys)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fusion"]["predicted"]["QLinearConv"] == 2 and report["fusion"]["confirmed"]
    quantized = _run(onnx.load(str(tmp_path / "int8.onnx")), digits[2])
    assert np.mean(quantized.argmax(1) == digits[3]) > 0.98


@pytest.mark.parametrize("calib, extra, message", [
    ("wrong_shape.npz", [], "shape"),
    ("calib.npz", ["--opset", "12"], "opset 13"),
    ("calib.npz", ["--exclude", "no_such_layer"], "no_such_layer"),
])
def test_cli_bad_input_is_refused_and_writes_nothing(tmp_path, digits, calib, extra, message,
                                                     capsys):
    np.savez(tmp_path / "calib.npz", data=digits[0][:16])
    np.savez(tmp_path / "wrong_shape.npz", data=digits[0][:16, :, :20, :20])
    result = _graphopt("quantize", FIXTURES / "lenet_digits", "--input", "data:1x1x28x28",
                       "--calib", tmp_path / calib, "--method", "minmax", "-o",
                       tmp_path / "int8.onnx", "--report", tmp_path / "report.json", *extra,
                       capsys=capsys)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "int8.onnx").exists() and not (tmp_path / "report.json").exists()


# --- dynamic quantization (transformers) ------------------------------------------------------

@pytest.fixture(scope="module")
def bert():
    """tests/test_gluon_models.py's BERT encoder (interleaved attention, Dense(flatten=False),
    LayerNorm, GELU), folded, with inputs and ten more batches to calibrate on."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_gluon_models import ARCHITECTURES, BATCH, inputs_for, seeded_block
    build, shapes, fill = ARCHITECTURES["bert"]
    arrays = inputs_for(shapes, fill, BATCH, seed=2)
    graph = graphopt.from_block(seeded_block(build, arrays), inputs=shapes,
                                dtypes={name: a.dtype.name for name, a in arrays.items()})
    batches = [inputs_for(shapes, fill, BATCH, seed=seed) for seed in range(10, 26)]
    return SimpleNamespace(graph=graphopt.rewrite(graph)[0], arrays=arrays, batches=batches)


def test_a_bert_encoder_runs_its_attention_matmuls_in_int8_after_static_quantization(bert):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # a constant tensor (the mask's ones) is expected
        calibration = calibrate(bert.graph, bert.batches, method="minmax")
    qgraph, report = quantize(bert.graph, calibration)
    model = graphopt.to_onnx(qgraph)
    fusion = fusion_report(model)
    # the interleaved qk and valatt ops, written out as MXNet's batch_dot, run as QLinearMatMul
    assert fusion.counts()["QLinearMatMul"] == 2 and not fusion.mismatches, fusion.format()
    assert fusion.counts()["QLinearAdd"] >= 3      # the residual adds
    # Dense(flatten=False) on (T, B, C): the transposed int8 weight's Transposes cancel, and the
    # product is an int8 GEMM with a float output (the bias added after it)
    last_axis = [n for n in bert.graph.op_nodes() if n.op == "FullyConnected"
                 and len(n.outputs[0].shape) > 2]
    assert fusion.counts()["MatMulIntegerToFloat"] == len(last_axis) == 4
    assert not report.float_layers
    reference = onnx_session(graphopt.to_onnx(bert.graph)).run(None, bert.arrays)
    assert sqnr_db(reference, onnx_session(model).run(None, bert.arrays)) > 30.0   # measured 34.2


def test_a_bert_encoder_runs_its_dense_layers_as_int8_dynamic_matmuls(bert):
    from graphopt.quantize import quantize_dynamic
    graph, arrays = bert.graph, bert.arrays
    qgraph, report = quantize_dynamic(graph)
    dense = [n.name for n in graph.op_nodes() if n.op == "FullyConnected"]
    assert sorted(report.quantized) == sorted(dense) and not report.float_layers

    model = graphopt.to_onnx(qgraph)
    fusion = fusion_report(model)
    assert fusion.counts() == {"DynamicQuantizeMatMul": len(dense)} and not fusion.mismatches
    reference = onnx_session(graphopt.to_onnx(graph)).run(None, arrays)
    quantized = onnx_session(model).run(None, arrays)
    assert sqnr_db(reference, quantized) > 35.0          # measured 44 dB
    # MXNet's run of the same graph (numpy MatMulInteger) is onnxruntime's int8 result
    assert sqnr_db(quantized, list(run_mxnet(qgraph, arrays).values())) > 60.0


@pytest.mark.slow
def test_resnet18_v1_sqnr_beats_onnxruntime_quantize_static_on_the_same_samples(tmp_path):
    """The issue's reference network (random He init, model zoo): 50 calibration samples,
    min-max, held-out seeded images."""
    from fixtures.zoo import export_zoo_model
    symbol, params, shape = export_zoo_model("resnet18_v1")
    graph = graphopt.rewrite(graphopt.load(symbol, params, inputs={"data": shape}))[0]
    rng = np.random.RandomState(0)
    samples = rng.randn(50, *shape[1:]).astype(np.float32)
    heldout = rng.randn(8, *shape[1:]).astype(np.float32)
    float_model = graphopt.to_onnx(graph)
    reference = onnx_session(float_model).run(None, {"data": heldout})[0]
    qgraph, _report = quantize(graph, calibrate(graph, samples, method="minmax"))
    ours = sqnr_db([reference], [onnx_session(graphopt.to_onnx(qgraph)).run(None, {"data": heldout})[0]])
    peer_model = _onnxruntime_quantize_static(float_model, samples, "minmax", tmp_path)
    peer = sqnr_db([reference], [onnx_session(peer_model).run(None, {"data": heldout})[0]])
    assert ours >= peer, f"graphopt {ours:.1f} dB, onnxruntime {peer:.1f} dB"
    assert ours >= 35.0 - 0.5   # measured 35.0 dB (onnxruntime 32.4 dB); the goal is 35


def test_cli_dynamic_quantization_of_a_saved_bert_encoder(bert, tmp_path, capsys):
    graphopt.save_mxnet(bert.graph, tmp_path / "bert")
    inputs = [f"{name}:{'x'.join(map(str, a.shape))}:{a.dtype.name}" for name, a in bert.arrays.items()]
    result = _graphopt("quantize", tmp_path / "bert", *[arg for i in inputs for arg in ("--input", i)],
                       "--dynamic", "-o", tmp_path / "bert-int8.onnx", "--report",
                       tmp_path / "report.json", capsys=capsys)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    dense = sum(1 for n in bert.graph.op_nodes() if n.op == "FullyConnected")
    assert report["method"] == "dynamic"
    assert report["fusion"]["predicted"] == {"DynamicQuantizeMatMul": dense}
    assert report["fusion"]["confirmed"] and not report["fusion"]["mismatches"]


@pytest.mark.slow
def test_mobilenetv2_runs_every_conv_and_residual_add_in_int8():
    """relu6 (clip 0..6) folds into the quantize, depthwise convs are per-channel like any conv,
    the residual adds have both inputs dequantized: onnxruntime's optimized model confirms it."""
    from fixtures.zoo import export_zoo_model
    symbol, params, shape = export_zoo_model("mobilenetv2_1.0")
    graph = graphopt.rewrite(graphopt.load(symbol, params, inputs={"data": shape}))[0]
    samples = np.random.RandomState(0).randn(4, *shape[1:]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # 4 samples are few, and this test knows it
        calibration = calibrate(graph, samples, method="minmax")
    qgraph, report = quantize(graph, calibration)
    fusion = fusion_report(graphopt.to_onnx(qgraph))
    counts = fusion.counts()
    assert counts["QLinearConv"] == sum(1 for n in graph.op_nodes() if n.op == "Convolution")
    assert counts["QLinearAdd"] == sum(1 for n in graph.op_nodes() if n.op == "elemwise_add")
    assert not fusion.mismatches and not any(n.op == "clip" for n in qgraph.op_nodes())
    # only the Flatten after the classifier conv, which writes the graph output, is float
    assert [g.op for g in fusion.float_groups] == ["Flatten"], fusion.format()
