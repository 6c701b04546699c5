"""``graphopt.compare``: does my ONNX compute what my MXNet model computes, and if not, where
does it start to differ?

Every test runs real MXNet and real onnxruntime. Inputs are seeded (``seed=0`` unless said).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphopt
from fixtures.build import digits_split, fixture_path
from graphopt.compare import compare, compare_tensors
from graphopt.onnx import to_onnx
from graphopt.onnx.context import CONVERTERS
from graphopt.runtime import run_mxnet, run_onnx

LENET_INPUT = (1, 1, 28, 28)
# The fidelity bar: max |onnx - mxnet| / max |mxnet| <= 1e-5 (compare's default rtol).
FIDELITY = 1e-5


def exported(name: str, tmp_path, batch: int = 1):
    """Fixture ``name`` loaded by graphopt and written to ``tmp_path/name.onnx``; returns
    (symbol path, params path, graph, onnx path)."""
    symbol, params = fixture_path(name)
    shape = LENET_INPUT if name.startswith("lenet") else (1, 3, 32, 32)
    graph = graphopt.load(symbol, params, inputs={"data": (batch,) + shape[1:]})
    path = tmp_path / f"{name}.onnx"
    to_onnx(graph, path=str(path))
    return symbol, params, graph, path


def corrupt_output_of(converter, victim: str, offset: float = 0.5):
    """Wrap ``converter`` so that node ``victim``'s final ONNX value gets ``offset`` added: its
    own nodes now write an intermediate, and an Add writes the MXNet-named value."""
    def corrupted(ctx, node):
        first = len(ctx.nodes)
        converter(ctx, node)
        if node.name != victim:
            return
        final, raw = ctx.output(node), ctx.fresh("uncorrupted")
        for onnx_node in ctx.nodes[first:]:
            for i, name in enumerate(onnx_node.output):
                if name == final:
                    onnx_node.output[i] = raw
        ctx.emit("Add", [raw, ctx.constant(np.float32(offset))], [final])
    return corrupted


# --- the gate ---------------------------------------------------------------------------------

def test_exported_lenet_agrees_with_mxnet_on_seeded_random_inputs(tmp_path):
    symbol, params, _graph, path = exported("lenet_digits", tmp_path)

    # batch 8, not the exported 1: the export has a dynamic batch
    report = compare(symbol, params, str(path), inputs={"data": (8, 1, 28, 28)}, seed=0)

    assert report.ok, report.format()
    (output,) = report.outputs
    assert output.name == "lenet_dense1_fwd_output" and output.shape == (8, 10)
    assert output.relative_error <= FIDELITY
    assert output.top1_agreement == 1.0
    assert report.inputs["data"] == {"shape": [8, 1, 28, 28], "dtype": "float32",
                                     "source": "random (seed 0)"}


def test_compare_on_the_heldout_digits_from_an_npz_file(tmp_path):
    symbol, params, _graph, path = exported("lenet_digits", tmp_path)
    _, _, x_test, y_test = digits_split()
    np.savez(tmp_path / "heldout.npz", data=x_test)

    report = compare(symbol, params, str(path), data=str(tmp_path / "heldout.npz"))

    assert report.ok, report.format()
    assert report.inputs["data"]["shape"] == [len(x_test), 1, 28, 28]  # 359 images, one batch
    assert report.outputs[0].top1_agreement == 1.0
    # the data are real: MXNet's own accuracy on them is the fixture's recorded 99.4%
    logits = run_mxnet((symbol, params), {"data": x_test})["lenet_dense1_fwd_output"]
    assert np.mean(np.argmax(logits, axis=1) == y_test) > 0.99


def test_a_loaded_graph_and_an_onnx_modelproto_are_accepted(tmp_path):
    _symbol, _params, graph, path = exported("resnet_bn_random", tmp_path)

    report = compare(graph, None, onnx.load(str(path)))

    assert report.ok, report.format()
    assert report.outputs[0].relative_error <= FIDELITY


def test_a_tolerance_exceeded_fails_the_gate_and_atol_is_an_absolute_floor(tmp_path):
    # Nudge the last layer's bias in the ONNX file by delta: every logit moves by exactly delta.
    symbol, params, _graph, path = exported("lenet_digits", tmp_path)
    model = onnx.load(str(path))
    (bias,) = [t for t in model.graph.initializer if t.name == "lenet_dense1_bias"]
    delta = 1e-2
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(delta), bias.name))

    strict = compare(symbol, params, model)
    assert not strict.ok
    assert strict.outputs[0].max_abs_error == pytest.approx(delta, rel=1e-3)
    assert "FAIL" in strict.format()

    assert compare(symbol, params, model, rtol=0.0, atol=2 * delta).ok
    assert not compare(symbol, params, model, rtol=0.0, atol=delta / 2).ok
    # rtol alone: the error allowed is rtol * max|mxnet output|
    scale = strict.outputs[0].max_abs_reference
    assert compare(symbol, params, model, rtol=2 * delta / scale).ok


# --- per layer: where does it start to differ? ---------------------------------------------------

def test_per_layer_on_a_faithful_export_reports_no_divergent_layer(tmp_path):
    symbol, params, graph, path = exported("resnet_bn_random", tmp_path)

    report = compare(symbol, params, str(path), per_layer=True)

    assert report.ok, report.format()
    assert report.first_divergent is None, report.format()
    assert all(layer.passed for layer in report.layers)
    ops = [n for n in graph.nodes() if not n.is_variable]
    assert len(report.layers) + len(report.unmatched_mxnet) == len(ops)
    assert len(report.layers) >= len(ops) // 2, "most layers should be matched by name"
    assert "no layer diverges" in report.format()


def test_per_layer_names_the_layer_whose_converter_was_corrupted(tmp_path, monkeypatch):
    # Corrupt only the second Pooling of LeNet: the first one, and every layer before the
    # victim, must still pass; the victim is the first divergent layer.
    monkeypatch.setitem(CONVERTERS, "Pooling",
                        corrupt_output_of(CONVERTERS["Pooling"], victim="lenet_pool1_fwd"))
    symbol, params, _graph, path = exported("lenet_digits", tmp_path)

    report = compare(symbol, params, str(path), per_layer=True)

    assert not report.ok
    divergence = report.first_divergent
    assert divergence is not None, report.format()
    assert (divergence.node, divergence.op) == ("lenet_pool1_fwd", "Pooling")
    assert divergence.attrs["kernel"] == "(2, 2)" and divergence.attrs["pool_type"] == "max"
    assert divergence.layer.max_abs_error == pytest.approx(0.5, rel=1e-5)  # the offset added
    assert divergence.onnx_op == "Add"
    # and it is where the error grows: from float rounding (~1e-7) to 0.5 in one layer
    assert report.largest_growth.node == "lenet_pool1_fwd"
    assert report.largest_growth.growth > 1e4
    assert [entry["passed"] for entry in divergence.inputs] == [True]  # its input still agrees
    before = report.layers[:report.layers.index(divergence.layer)]
    assert [layer.op for layer in before] == ["Convolution", "Activation", "Pooling",
                                              "Convolution", "Activation"]
    assert all(layer.passed for layer in before)

    text = report.format()
    assert "first divergent layer: lenet_pool1_fwd (Pooling)" in text
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["ok"] is False
    assert as_json["per_layer"]["first_divergent"]["node"] == "lenet_pool1_fwd"


def test_layers_present_on_one_side_only_are_listed_as_unmatched_not_failed(tmp_path):
    # Rename one intermediate in the ONNX file, as another exporter might name it.
    symbol, params, _graph, path = exported("lenet_digits", tmp_path)
    model = onnx.load(str(path))
    old, new = "lenet_pool1_fwd_output", "renamed_pool1_output"
    for node in model.graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]

    report = compare(symbol, params, model, per_layer=True)

    assert report.ok and report.first_divergent is None, report.format()
    assert report.unmatched_mxnet == [{"tensor": old, "node": "lenet_pool1_fwd", "op": "Pooling"}]
    assert report.unmatched_onnx == [new]
    assert old not in [layer.name for layer in report.layers]


def test_per_layer_in_small_memory_groups_finds_the_same_layer(tmp_path, monkeypatch):
    monkeypatch.setitem(CONVERTERS, "Activation",
                        corrupt_output_of(CONVERTERS["Activation"], victim="lenet_dense0_relu_fwd"))
    symbol, params, _graph, path = exported("lenet_digits", tmp_path)

    whole = compare(symbol, params, str(path), per_layer=True)
    # a 1-byte budget fetches one tensor per MXNet run and per onnxruntime run
    grouped = compare(symbol, params, str(path), per_layer=True, memory_budget=1)

    assert whole.first_divergent.node == grouped.first_divergent.node == "lenet_dense0_relu_fwd"
    assert [(l.name, l.max_abs_error) for l in whole.layers] == \
           [(l.name, l.max_abs_error) for l in grouped.layers]


# --- the rules behind the numbers ---------------------------------------------------------------

def test_nan_agrees_with_nan_but_not_with_a_number():
    reference = np.array([[1.0, np.nan, np.inf]], dtype=np.float32)
    assert compare_tensors("y", reference, reference.copy(), rtol=0, atol=0).passed
    other = np.array([[1.0, 2.0, np.inf]], dtype=np.float32)
    result = compare_tensors("y", reference, other, rtol=1e-5, atol=0)
    assert not result.passed and result.max_abs_error == np.inf
    assert result.max_abs_reference == 1.0  # from the finite values only


def test_a_shape_or_dtype_mismatch_fails_even_when_values_agree():
    reference = np.arange(6, dtype=np.float32).reshape(2, 3)
    reshaped = compare_tensors("y", reference, reference.reshape(3, 2), rtol=1e-5, atol=0)
    assert not reshaped.passed and reshaped.max_abs_error == 0 and "shape" in reshaped.note
    widened = compare_tensors("y", reference, reference.astype(np.float64), rtol=1e-5, atol=0)
    assert not widened.passed and "dtype" in widened.note


def test_mxnet_runs_op_by_op_so_intermediates_are_what_each_op_computed():
    # MXNet 1.9.1's MKLDNN subgraph fusion, on by default, returns a Convolution's output as the
    # output of the ReLU fused after it when both are asked for (runtime.py's docstring).
    symbol, params = fixture_path("lenet_digits")
    x = np.random.RandomState(0).uniform(-1, 1, LENET_INPUT).astype(np.float32)
    names = ["lenet_conv0_fwd_output", "lenet_conv0_relu_fwd_output"]

    values = run_mxnet((symbol, params), {"data": x}, outputs=names)

    np.testing.assert_array_equal(values[names[1]], np.maximum(values[names[0]], 0))
    assert (values[names[0]] < 0).any()


def test_run_onnx_returns_any_named_value(tmp_path):
    symbol, params, _graph, path = exported("lenet_digits", tmp_path)
    x = np.random.RandomState(0).uniform(-1, 1, LENET_INPUT).astype(np.float32)

    onnx_values = run_onnx(str(path), {"data": x}, outputs=["lenet_pool0_fwd_output"])
    mxnet_values = run_mxnet((symbol, params), {"data": x}, outputs=["lenet_pool0_fwd_output"])

    assert list(onnx_values) == ["lenet_pool0_fwd_output"]
    np.testing.assert_allclose(onnx_values["lenet_pool0_fwd_output"],
                               mxnet_values["lenet_pool0_fwd_output"], rtol=1e-5, atol=1e-6)


def test_per_layer_after_batchnorm_folding_matches_each_folded_conv_to_its_batchnorm(tmp_path):
    """The deployment story: optimize (fold BatchNorm), export, then compare the ORIGINAL MXNet
    model with the optimized ONNX layer by layer. A conv with its BatchNorm folded in computes
    what the BatchNorm computed, and carries its name: it is compared with the BatchNorm, not
    reported as a divergent conv; the pre-BatchNorm conv outputs exist only in MXNet."""
    symbol, params = fixture_path("resnet_digits")
    graph = graphopt.load(symbol, params, inputs={"data": LENET_INPUT})
    optimized, report = graphopt.rewrite(graph)
    folded = report.applied("fold_batchnorm_into_convolution")
    assert folded == sum(1 for n in graph.nodes() if n.op == "BatchNorm") > 0
    path = tmp_path / "optimized.onnx"
    to_onnx(optimized, path=str(path))

    result = compare(symbol, params, path, inputs={"data": LENET_INPUT}, per_layer=True)
    assert result.ok and result.first_divergent is None, result.format()
    compared = {layer.name: layer.op for layer in result.layers}
    batchnorms = [n.output_names[0] for n in graph.nodes() if n.op == "BatchNorm"]
    assert all(compared.get(name) == "BatchNorm" for name in batchnorms)
    assert {u["tensor"] for u in result.unmatched_mxnet} == \
        {graph.node(n).output_names[0] for n in graph.nx if graph.node(n).op == "Convolution"
         and any(graph.node(c).op == "BatchNorm" for c, _ in graph.consumers(n))}

    # and the optimized graph against its own ONNX: MXNet names the folded value after the
    # conv, the ONNX after the BatchNorm; the two are still paired
    result = compare(optimized, None, path, inputs={"data": LENET_INPUT}, per_layer=True)
    assert result.ok and result.first_divergent is None and not result.unmatched_mxnet
    assert all(name in {layer.name for layer in result.layers} for name in batchnorms)


def test_a_tensor_returned_twice_is_compared_twice(tmp_path):
    """A model returning the same tensor twice has two ONNX outputs (``h`` and ``h_1``): both
    are compared with MXNet, and a corrupted second one fails the gate."""
    import mxnet as mx
    data = mx.sym.var("data")
    hidden = mx.sym.tanh(mx.sym.FullyConnected(data, num_hidden=4, name="fc"), name="h")
    symbol = mx.sym.Group([hidden, mx.sym.relu(data, name="r"), hidden])
    (tmp_path / "twice-symbol.json").write_text(symbol.tojson())
    rng = np.random.RandomState(0)
    mx.nd.save(str(tmp_path / "twice-0000.params"),
               {"arg:fc_weight": mx.nd.array(rng.uniform(-1, 1, (4, 3))),
                "arg:fc_bias": mx.nd.array(rng.uniform(-1, 1, (4,)))})
    files = (tmp_path / "twice-symbol.json", tmp_path / "twice-0000.params")
    graph = graphopt.load(*files, inputs={"data": (2, 3)})
    assert len(run_mxnet(graph, {"data": np.ones((2, 3), np.float32)})) == 3
    model = to_onnx(graph)
    result = compare(*files, model, inputs={"data": (2, 3)}, per_layer=True)
    assert result.ok and [o.name for o in result.outputs] == ["h_output", "r_output", "h_output_1"]
    assert result.unmatched_onnx == []  # the second copy is an output, not an unknown layer

    last = model.graph.output[2].name
    model.graph.node.append(onnx.helper.make_node("Neg", [last], [last + "_neg"]))
    model.graph.output[2].name = last + "_neg"   # the second copy now differs
    result = compare(*files, model, inputs={"data": (2, 3)})
    assert not result.ok


def test_a_missing_or_broken_onnx_file_is_bad_input_not_a_traceback(tmp_path, capsys):
    from graphopt.cli import main
    lenet = str(fixture_path("lenet_digits")[0])
    assert main(["compare", lenet, str(tmp_path / "typo.onnx"), "--input", "data:1x1x28x28"]) == 2
    assert "cannot read the ONNX file" in capsys.readouterr().err
    (tmp_path / "text.onnx").write_text("not a model")
    assert main(["compare", lenet, str(tmp_path / "text.onnx"), "--input", "data:1x1x28x28"]) == 2
    assert "not an ONNX model" in capsys.readouterr().err
