"""MXNet int8 (issue 8, item 4): the digits models calibrated by graphopt, emitted as MXNet's
oneDNN int8 symbol + params, saved, reloaded with ``mx.sym.load`` + ``SymbolBlock.imports`` and
run against the float model on the held-out digits.

SQNR = 10 log10(sum ref^2 / sum (ref - q)^2) over the logits, ref the float32 model.
"""

import json
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

import graphopt
from fixtures import build
from graphopt.errors import DataError, GraphError
from graphopt.quantize import ObservedRanges, calibrate, quantize
from graphopt.quantize.mxnet_int8 import to_mxnet_int8
from graphopt.mxnet_io.save import save_symbol
from graphopt.runtime import run_mxnet, run_onnx

CALIBRATION_SAMPLES = 256  # of the training digits; the held-out 359 are never calibrated on
# The bound: int8 held-out accuracy within 0.5 points of float32 on the digits fixtures.
MAX_ACCURACY_DROP = 0.005


def sqnr(reference, quantized):
    reference, quantized = np.asarray(reference, np.float64), np.asarray(quantized, np.float64)
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - quantized) ** 2))


@pytest.fixture(scope="module")
def digits():
    return build.digits_split()


def _emitted(name, digits, tmp_path_factory, **options):
    x_train, _, x_test, _ = digits
    graph = graphopt.load(*build.fixture_path(name), inputs={"data": build.DIGITS_INPUT_SHAPE})
    calibration = calibrate(graph, x_train[:CALIBRATION_SAMPLES], method="minmax")
    qgraph, report = to_mxnet_int8(graph, calibration, **options)
    prefix = tmp_path_factory.mktemp(name) / f"{name}-int8"
    symbol_path, params_path = graphopt.save_mxnet(qgraph, prefix)
    net = mx.gluon.SymbolBlock.imports(str(symbol_path), ["data"], str(params_path))
    quantized = net(mx.nd.array(x_test)).asnumpy()
    reference = run_mxnet(graph, {"data": x_test})[graph.output_names[0]]
    return dict(graph=graph, calibration=calibration, qgraph=qgraph, report=report,
                symbol_path=symbol_path, quantized=quantized, reference=reference)


@pytest.fixture(scope="module")
def lenet(digits, tmp_path_factory):
    return _emitted("lenet_digits", digits, tmp_path_factory)


@pytest.fixture(scope="module")
def resnet(digits, tmp_path_factory):
    return _emitted("resnet_digits", digits, tmp_path_factory)


def _saved_nodes(symbol_path):
    return json.loads(symbol_path.read_text())["nodes"]


@pytest.mark.parametrize("fixture, min_sqnr", [
    # LeNet measured 42.2 dB with min-max ranges: the 35 dB goal holds.
    ("lenet", 35.0),
    # resnet_digits measured 27.0 dB with min-max ranges (9 int8 convs through residual adds),
    # below the 35 dB goal; onnxruntime's QDQ model of the same ranges measured 27.1 dB on this
    # unfolded graph and 32.6 dB BatchNorm-folded, where MXNet stays at 27.0 dB (README: MXNet's
    # int8 convs deviate from an emulation of their own scheme). The floor guards the emission.
    ("resnet", 25.0),
])
def test_digits_models_run_in_int8_in_mxnet_as_accurate_as_float(fixture, min_sqnr, digits, request):
    result = request.getfixturevalue(fixture)
    _, _, _, y_test = digits
    float_accuracy = build.accuracy(result["reference"], y_test)
    int8_accuracy = build.accuracy(result["quantized"], y_test)
    ratio = sqnr(result["reference"], result["quantized"])
    print(f"{fixture}: float {float_accuracy:.4f} int8 {int8_accuracy:.4f} SQNR {ratio:.1f} dB")
    assert int8_accuracy >= float_accuracy - MAX_ACCURACY_DROP
    assert ratio >= min_sqnr
    # every Convolution and FullyConnected runs in an int8 oneDNN node of the saved symbol
    nodes = _saved_nodes(result["symbol_path"])
    fused = [n for n in nodes if n["op"] in ("_sg_mkldnn_conv", "_sg_mkldnn_fully_connected")]
    assert fused and all(n["attrs"]["quantized"].lower() == "true" for n in fused)
    assert any(n["op"] == "_contrib_quantize_v2" for n in nodes)
    report = result["report"]
    assert not report.float, report.format()
    weighted = [n.name for n in result["graph"].op_nodes() if n.op in ("Convolution", "FullyConnected")]
    assert all(report.precision_of(name) == "int8" for name in weighted)


def test_thresholds_are_the_calibrated_ranges_of_the_tensors_fused_nodes_compute(resnet):
    """A fused conv+BatchNorm+ReLU node's output is the ReLU's: its threshold is that tensor's
    range, and the input is quantized over the data's range (the digits are in [0, 1])."""
    thresholds = resnet["report"].thresholds
    assert thresholds["data"]["tensor"] == "data"
    assert (thresholds["data"]["min"], thresholds["data"]["max"]) == pytest.approx((0.0, 1.0), abs=1e-6)
    first = next(name for name in thresholds if name.startswith("sg_mkldnn_conv_bn_act_0"))
    assert thresholds[first]["tensor"] == "resnet_relu0_fwd_output"
    low, high = resnet["calibration"].range("resnet_relu0_fwd_output")
    assert (thresholds[first]["min"], thresholds[first]["max"]) == pytest.approx((low, high))
    # and MXNet carries them as the int8 node's calibration attributes
    node = next(n for n in _saved_nodes(resnet["symbol_path"])
                if n["name"] == "quantized_sg_mkldnn_conv_bn_act_0")
    assert float(node["attrs"]["max_calib_range"]) == pytest.approx(high, rel=1e-5)


def test_the_int8_graph_round_trips_through_graphopt(resnet, digits):
    _, _, x_test, _ = digits
    reloaded = graphopt.load(resnet["symbol_path"], str(resnet["symbol_path"]).replace(
        "-symbol.json", "-0000.params"), inputs={"data": build.DIGITS_INPUT_SHAPE})
    again = run_mxnet(reloaded, {"data": x_test})[reloaded.output_names[0]]
    np.testing.assert_array_equal(again, resnet["quantized"])


def test_exclusions_and_first_last_stay_float_with_their_reason(digits, tmp_path_factory):
    result = _emitted("resnet_digits", digits, tmp_path_factory, exclude=["resnet_basicblock1_conv0_fwd"],
                      exclude_first_last=True)
    report = result["report"]
    reasons = {layer.node: layer.reason for layer in report.float}
    assert reasons["resnet_basicblock1_conv0_fwd"] == "excluded by the caller"
    assert "first or last" in reasons["resnet_conv0_fwd"]
    assert "first or last" in reasons["resnet_dense0_fwd"]
    # the BatchNorm and ReLU fused with an excluded conv stay float with it
    assert "fused with 'resnet_conv0_fwd'" in reasons["resnet_batchnorm0_fwd"]
    by_name = {n["name"]: n for n in _saved_nodes(result["symbol_path"])}
    assert by_name["sg_mkldnn_conv_bn_act_0"]["op"] == "_sg_mkldnn_conv"
    assert "quantized" not in by_name["sg_mkldnn_conv_bn_act_0"].get("attrs", {})
    _, _, _, y_test = digits
    assert build.accuracy(result["quantized"], y_test) >= \
        build.accuracy(result["reference"], y_test) - MAX_ACCURACY_DROP


def test_an_op_type_excludes_every_node_of_it(lenet, digits):
    """As for the ONNX QDQ model (``quantize(exclude=...)``): an op type names all its nodes."""
    qgraph, report = to_mxnet_int8(lenet["graph"], lenet["calibration"], exclude=["Pooling"])
    assert {layer.node for layer in report.float} == {"lenet_pool0_fwd", "lenet_pool1_fwd"}
    assert report.precision_of("lenet_conv1_fwd") == "int8"
    assert report.mxnet_ops["Pooling"] == 2
    _, _, x_test, y_test = digits
    quantized = run_mxnet(qgraph, {"data": x_test})[qgraph.output_names[0]]
    assert build.accuracy(quantized, y_test) >= build.accuracy(lenet["reference"], y_test) - MAX_ACCURACY_DROP


def small_model(net, tmp_path, shape=(2, 3, 12, 12)):
    """``net`` with N(0, 0.3) parameters, loaded at ``shape``, and a U(0, 1) input for it."""
    rng = np.random.RandomState(0)
    symbol_path, params_path = save_symbol(
        net, tmp_path / "model", {"data": shape},
        lambda kind, name, size: (rng.randn(*size) * 0.3).astype(np.float32))
    graph = graphopt.load(symbol_path, params_path, inputs={"data": shape})
    return graph, rng.rand(*shape).astype(np.float32)


def test_ops_without_an_int8_kernel_are_listed_as_float(tmp_path):
    """tanh, LRN, sigmoid and softmax have no int8 kernel in MXNet 1.9.1: they run in float
    between a dequantize and a quantize, and the report says so; the leaky ReLU fuses into the
    int8 conv before it."""
    data = mx.sym.Variable("data")
    net = mx.sym.Convolution(data, kernel=(3, 3), num_filter=8, name="conv")
    net = mx.sym.Activation(net, act_type="tanh", name="tanh")
    net = mx.sym.LRN(net, nsize=3, name="lrn")
    net = mx.sym.sigmoid(net, name="sigmoid")
    net = mx.sym.Pooling(net, kernel=(2, 2), stride=(2, 2), pool_type="max", name="pool")
    net = mx.sym.Convolution(net, kernel=(3, 3), num_filter=8, name="conv2")
    net = mx.sym.LeakyReLU(net, act_type="leaky", slope=0.1, name="leaky")
    net = mx.sym.FullyConnected(net, num_hidden=5, name="fc")
    net = mx.sym.softmax(net, name="prob")
    graph, x = small_model(net, tmp_path)
    qgraph, report = to_mxnet_int8(graph, ObservedRanges.observe(graph, {"data": x}))
    reasons = {layer.node: layer.reason for layer in report.float}
    assert sorted(reasons) == ["lrn", "prob", "sigmoid", "tanh"]
    assert "no int8 kernel for Activation(act_type=tanh)" in reasons["tanh"]
    assert {layer.node for layer in report.int8} == {"conv", "pool", "conv2", "leaky", "fc"}
    assert report.mxnet_ops["softmax"] == 1 and report.mxnet_ops["_contrib_dequantize"] == 1
    assert "lrn (LRN): MXNet 1.9.1 has no int8 kernel" in report.format()
    # the mixed model runs, and close to float (tanh/sigmoid squash the int8 error)
    reference = run_mxnet(graph, {"data": x})[graph.output_names[0]]
    quantized = run_mxnet(qgraph, {"data": x})[qgraph.output_names[0]]
    assert sqnr(reference, quantized) > 30  # measured 45 dB


def test_the_relu_op_fuses_into_the_int8_conv_as_activation_relu_does(tmp_path):
    """Gluon's F.relu writes MXNet's ``relu`` op, which MXNet 1.9.1's oneDNN conv fusion does
    not take (only Activation): it is handed to MXNet as Activation(act_type=relu), the same
    function, so the conv+ReLU run as one int8 node instead of int8 conv, dequantize, float relu."""
    data = mx.sym.Variable("data")
    net = mx.sym.Convolution(data, kernel=(3, 3), num_filter=8, name="conv")
    net = mx.sym.relu(net, name="relu")
    net = mx.sym.Convolution(net, kernel=(3, 3), num_filter=8, name="conv2")
    graph, x = small_model(net, tmp_path)
    qgraph, report = to_mxnet_int8(graph, ObservedRanges.observe(graph, {"data": x}))
    assert not report.float, report.format()
    assert "relu" not in report.mxnet_ops and report.mxnet_ops["_sg_mkldnn_conv"] == 2
    assert [n.op for n in graph.op_nodes("relu")] == ["relu"]   # the input graph is unchanged
    reference = run_mxnet(graph, {"data": x})[graph.output_names[0]]
    quantized = run_mxnet(qgraph, {"data": x})[qgraph.output_names[0]]
    assert sqnr(reference, quantized) > 30


def test_bad_requests_are_refused_clearly(lenet):
    graph = lenet["graph"]
    with pytest.raises(GraphError, match="names no node and no op"):
        to_mxnet_int8(graph, lenet["calibration"], exclude=["lenet_conv9_fwd"])
    # the second conv's output (after its ReLU) is a tensor MXNet needs a threshold for
    calibration = lenet["calibration"]
    partial = {name: calibration.range(name) for name in calibration.names
               if name != "lenet_conv1_relu_fwd_output"}
    with pytest.raises(DataError, match="lenet_conv1_relu_fwd_output"):
        to_mxnet_int8(graph, partial)
    with pytest.raises(ValueError, match="quantized_dtype"):
        to_mxnet_int8(graph, lenet["calibration"], quantized_dtype="int4")


def test_the_input_graph_is_left_as_it_was(lenet, digits):
    _, _, x_test, _ = digits
    graph = lenet["graph"]
    before = run_mxnet(graph, {"data": x_test[:16]})[graph.output_names[0]]
    np.testing.assert_array_equal(before, lenet["reference"][:16])
    assert all(node.op not in ("_sg_mkldnn_conv", "_contrib_quantize_v2") for node in graph.op_nodes())


@pytest.mark.parametrize("fixture", ["lenet", "resnet"])
def test_mxnet_int8_agrees_with_the_onnx_int8_model(fixture, digits, request):
    """Agreement: MXNet's int8 model and graphopt's ONNX QDQ model, quantized from the same
    calibration, give the same top-1 on the held-out digits (but for a few borderline images)
    and logits close to each other."""
    result = request.getfixturevalue(fixture)
    _, _, x_test, _ = digits
    qdq_graph, _ = quantize(result["graph"], result["calibration"])
    onnx_logits = next(iter(run_onnx(graphopt.to_onnx(qdq_graph), {"data": x_test}).values()))
    agreement = float(np.mean(onnx_logits.argmax(1) == result["quantized"].argmax(1)))
    between = sqnr(onnx_logits, result["quantized"])
    print(f"{fixture}: top-1 agreement {agreement:.4f}, SQNR ONNX vs MXNet int8 {between:.1f} dB, "
          f"ONNX int8 vs float {sqnr(result['reference'], onnx_logits):.1f} dB")
    assert agreement >= 0.99  # at most 3 of 359 images, each near a tie
    assert between >= 20


@pytest.mark.slow
@pytest.mark.parametrize("name, min_sqnr", [
    # random He-init weights on normal images; measured with 4 calibration images: resnet18_v1
    # 24 dB, squeezenet1.0 33 dB, mobilenet0.25 14 dB (depthwise convs and per-tensor
    # activations: the ONNX QDQ model measures the same on mobilenets). The floors guard the
    # emission, not the calibration.
    ("resnet18_v1", 18.0), ("squeezenet1.0", 25.0), ("mobilenet0.25", 10.0),
])
def test_zoo_models_run_in_int8_in_mxnet(name, min_sqnr, tmp_path):
    from fixtures import zoo
    symbol_path, params_path, shape = zoo.export_zoo_model(name)
    graph = graphopt.load(symbol_path, params_path, inputs={"data": shape})
    rng = np.random.RandomState(0)
    calibration_images = rng.randn(4, *shape[1:]).astype(np.float32)
    heldout = rng.randn(2, *shape[1:]).astype(np.float32)
    with pytest.warns(UserWarning, match="4 samples"):  # few samples: fine for this check
        calibration = calibrate(graph, calibration_images, method="minmax")
    qgraph, report = to_mxnet_int8(graph, calibration)
    assert not report.float, report.format()  # every zoo op has an int8 kernel, or is removed
    assert {layer.op for layer in report.removed} <= {"Dropout"}
    saved_symbol, saved_params = graphopt.save_mxnet(qgraph, tmp_path / name)
    net = mx.gluon.SymbolBlock.imports(str(saved_symbol), ["data"], str(saved_params))
    quantized = net(mx.nd.array(heldout)).asnumpy()
    reference = run_mxnet(graph, {"data": heldout})[graph.output_names[0]]
    assert sqnr(reference, quantized) >= min_sqnr
    assert any(n["op"] == "_sg_mkldnn_conv" and n["attrs"].get("quantized") == "true"
               for n in _saved_nodes(saved_symbol))


def test_the_command_line_writes_mxnet_int8(digits, tmp_path, capsys):
    """``graphopt quantize ... --to mxnet``: the model is folded, calibrated on the .npz and
    written as MXNet's int8 model, which reloads and runs as accurately as float."""
    from graphopt.cli import main
    x_train, _, x_test, y_test = digits
    calibration_data = tmp_path / "calibration.npz"
    np.savez(calibration_data, data=x_train[:CALIBRATION_SAMPLES])
    symbol_path, params_path = build.fixture_path("resnet_digits")
    prefix = tmp_path / "resnet-int8"
    code = main(["quantize", str(symbol_path), "--input", "data:1x1x28x28", "--calib",
                 str(calibration_data), "--method", "minmax", "--to", "mxnet", "-o", str(prefix),
                 "--report", str(tmp_path / "report.json"), "--exclude", "resnet_dense0_fwd"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["mxnet_int8"]["float"]) == ["resnet_dense0_fwd"]
    net = mx.gluon.SymbolBlock.imports(f"{prefix}-symbol.json", ["data"], f"{prefix}-0000.params")
    quantized = net(mx.nd.array(x_test)).asnumpy()
    reference = run_mxnet(graphopt.load(symbol_path, params_path, inputs={"data": (1, 1, 28, 28)}),
                          {"data": x_test})
    reference = next(iter(reference.values()))
    assert build.accuracy(quantized, y_test) >= build.accuracy(reference, y_test) - MAX_ACCURACY_DROP
    assert sum(n["op"] == "_sg_mkldnn_conv" and n["attrs"].get("quantized") == "true"
               for n in _saved_nodes(Path(f"{prefix}-symbol.json"))) == 9


def test_an_int8_conv_computes_the_integer_arithmetic_of_its_thresholds(tmp_path):
    """The thresholds mean what the emulation says: input uint8 over [0, data max], weights int8
    per output channel, bias int32 at input x weight scale, output uint8 over [0, output max].
    An exact integer emulation of that scheme is within rounding of MXNet's output everywhere
    but where MXNet 1.9.1's oneDNN conv itself deviates: up to 3 steps here (random weights,
    16 channels; up to 7 on the digits ResNet's second conv), never a wrong range (that would
    be tens of steps). Why MXNet deviates is not known (no int16 saturation in an emulation of
    vpmaddubsw; the same on every ISA oneDNN is limited to); it is part of why MXNet's int8 is
    less accurate than onnxruntime's with the same ranges (README)."""
    rng = np.random.RandomState(0)
    data = mx.sym.Variable("data")
    net = mx.sym.Convolution(data, kernel=(3, 3), num_filter=16, pad=(1, 1), name="conv")
    net = mx.sym.Activation(net, act_type="relu", name="relu")
    shape = (16, 16, 28, 28)
    symbol_path, params_path = save_symbol(
        net, tmp_path / "conv", {"data": shape},
        lambda kind, name, size: (rng.randn(*size) * (0.3 if name.endswith("weight") else 0.5)
                                  ).astype(np.float32))
    graph = graphopt.load(symbol_path, params_path, inputs={"data": shape})
    x = np.maximum(rng.randn(*shape), 0).astype(np.float32)
    reference = run_mxnet(graph, {"data": x})["relu_output"]
    ranges = {"data": (0.0, float(x.max())), "relu_output": (0.0, float(reference.max()))}
    qgraph, _ = to_mxnet_int8(graph, ranges)
    output = next(n for n in qgraph.op_nodes() if n.op == "_sg_mkldnn_conv").name
    quantized = run_mxnet(qgraph, {"data": x}, outputs=[f"{output}_output"])[f"{output}_output"]

    weight, bias = graph.param("conv_weight").astype(np.float64), graph.param("conv_bias")
    data_scale = 255 / ranges["data"][1]
    weight_scale = 127 / np.abs(weight).reshape(16, -1).max(1)
    x_int = np.round(x.astype(np.float64) * data_scale)
    accumulator = mx.nd.Convolution(
        mx.nd.array(x_int, dtype=np.float64),
        mx.nd.array(np.round(weight * weight_scale[:, None, None, None]), dtype=np.float64),
        mx.nd.array(np.round(bias * weight_scale * data_scale), dtype=np.float64),
        kernel=(3, 3), pad=(1, 1), num_filter=16).asnumpy()
    output_scale = 255 / ranges["relu_output"][1]
    expected = np.clip(np.round(np.maximum(accumulator, 0) * output_scale / data_scale
                                / weight_scale[None, :, None, None]), 0, 255)
    difference = np.abs(expected - quantized.astype(np.float64))
    print(f"int8 conv vs integer emulation: max {difference.max()} steps, "
          f"{np.mean(difference > 0):.1%} differ")
    assert quantized.dtype == np.uint8
    # measured 3 steps, 18% of the values (exact arithmetic: at most 1 step, from rounding)
    assert difference.max() <= 4 and np.mean(difference > 0) < 0.3
