"""Bad input gets a clear error naming the file, the node and the op, and nothing is lost."""

from __future__ import annotations

import json
import os
import shutil

import mxnet as mx
import numpy as np
import pytest

import graphopt
from fixtures import build

LENET_INPUT = {"data": (1, 1, 28, 28)}


@pytest.fixture
def lenet(tmp_path):
    """A private copy of the trained LeNet fixture, so tests can damage it."""
    symbol_path, params_path = build.fixture_path("lenet_digits")
    symbol_copy = tmp_path / symbol_path.name
    params_copy = tmp_path / params_path.name
    shutil.copy(symbol_path, symbol_copy)
    shutil.copy(params_path, params_copy)
    return symbol_copy, params_copy


def unchanged(path, before: bytes) -> bool:
    return path.read_bytes() == before


def test_truncated_json_names_the_file(lenet):
    symbol_path, params_path = lenet
    symbol_path.write_text(symbol_path.read_text()[:500])
    before = symbol_path.read_bytes()
    with pytest.raises(graphopt.ModelFileError) as error:
        graphopt.load(symbol_path, params_path, inputs=LENET_INPUT)
    assert str(symbol_path) in str(error.value) and "truncated or malformed" in str(error.value)
    assert unchanged(symbol_path, before)


def test_json_that_is_not_a_symbol(lenet):
    symbol_path, params_path = lenet
    symbol_path.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(graphopt.ModelFileError, match="not an MXNet symbol JSON"):
        graphopt.load(symbol_path, params_path, inputs=LENET_INPUT)


def test_missing_params_file(lenet, tmp_path):
    symbol_path, _ = lenet
    missing = tmp_path / "nope-0000.params"
    with pytest.raises(graphopt.ModelFileError) as error:
        graphopt.load(symbol_path, missing, inputs=LENET_INPUT)
    assert "params file not found" in str(error.value) and str(missing) in str(error.value)


def test_truncated_params_file(lenet):
    symbol_path, params_path = lenet
    params_path.write_bytes(params_path.read_bytes()[:1000])
    with pytest.raises(graphopt.ModelFileError, match="cannot read params file"):
        graphopt.load(symbol_path, params_path, inputs=LENET_INPUT)


def _rewrite_params(params_path, edit):
    arrays = mx.nd.load(str(params_path))
    edit(arrays)
    mx.nd.save(str(params_path), arrays)


def _first_conv(symbol_path) -> tuple[str, str]:
    """(name of the first Convolution, name of its weight variable)."""
    nodes = json.loads(symbol_path.read_text())["nodes"]
    conv = next(n for n in nodes if n["op"] == "Convolution")
    return conv["name"], nodes[conv["inputs"][1][0]]["name"]


def test_parameter_missing_from_params_names_node_and_op(lenet):
    symbol_path, params_path = lenet
    conv, weight = _first_conv(symbol_path)
    _rewrite_params(params_path, lambda arrays: arrays.pop(f"arg:{weight}"))
    with pytest.raises(graphopt.ParameterError) as error:
        graphopt.load(symbol_path, params_path, inputs=LENET_INPUT)
    assert error.value.node == conv and error.value.op == "Convolution"
    assert weight in str(error.value) and str(params_path) in str(error.value)


def test_parameter_of_the_wrong_shape_names_node_and_op(lenet):
    symbol_path, params_path = lenet
    conv, weight = _first_conv(symbol_path)

    def shrink(arrays):
        arrays[f"arg:{weight}"] = mx.nd.zeros((20, 1, 3, 3))
    _rewrite_params(params_path, shrink)
    with pytest.raises(graphopt.ParameterError) as error:
        graphopt.load(symbol_path, params_path, inputs=LENET_INPUT)
    assert error.value.node == conv and error.value.op == "Convolution"
    assert "(20, 1, 3, 3)" in str(error.value) and "(20, 1, 5, 5)" in str(error.value)


def test_input_shape_that_does_not_fit(lenet):
    symbol_path, params_path = lenet
    with pytest.raises(graphopt.ShapeError) as error:
        graphopt.load(symbol_path, params_path, inputs={"data": (1, 1, 3, 3)})
    assert error.value.node is not None and error.value.op is not None
    assert str(symbol_path) in str(error.value)


def test_unknown_input_name(lenet):
    symbol_path, params_path = lenet
    with pytest.raises(graphopt.ShapeError, match="no graph input named"):
        graphopt.load(symbol_path, params_path, inputs={"image": (1, 1, 28, 28)})


def test_op_mxnet_does_not_know_lists_every_such_node(lenet):
    symbol_path, params_path = lenet
    data = json.loads(symbol_path.read_text())
    renamed = []
    for node in data["nodes"]:
        if node["op"] == "Activation":
            node["op"] = "FancyActivation"
            renamed.append(node["name"])
    symbol_path.write_text(json.dumps(data))
    before = symbol_path.read_bytes()
    with pytest.raises(graphopt.UnknownOpError) as error:
        graphopt.load(symbol_path, params_path, inputs=LENET_INPUT)
    assert error.value.op == "FancyActivation" and error.value.node == renamed[0]
    assert all(name in str(error.value) for name in renamed)
    assert unchanged(symbol_path, before)


def test_a_failed_save_leaves_no_half_written_model(lenet, tmp_path, monkeypatch):
    symbol_path, params_path = lenet
    graph = graphopt.load(symbol_path, params_path, inputs=LENET_INPUT)
    target = tmp_path / "out"
    graphopt.save_mxnet(graph, target)
    good = (tmp_path / "out-symbol.json").read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(mx.nd, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        graphopt.save_mxnet(graph, target)
    assert (tmp_path / "out-symbol.json").read_bytes() == good  # the old model is intact
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_save_failing_between_its_renames_restores_the_old_model(lenet, tmp_path, monkeypatch):
    """The params file is renamed into place first; if the symbol's rename then fails, the old
    params come back, so the old model is whole (not new params beside an old symbol)."""
    symbol_path, params_path = lenet
    graph = graphopt.load(symbol_path, params_path, inputs=LENET_INPUT)
    target = tmp_path / "out"
    graphopt.save_mxnet(graph, target)
    old = {p.name: p.read_bytes() for p in tmp_path.glob("out-*")}
    changed = graph.copy()
    name = next(iter(changed.params))
    changed.set_param(name, changed.params[name] + 1)

    real_replace, calls = os.replace, []

    def replace_failing_the_second_time(source, destination):
        calls.append(destination)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(destination))
        return real_replace(source, destination)
    monkeypatch.setattr(os, "replace", replace_failing_the_second_time)
    with pytest.raises(graphopt.ModelFileError, match="nothing was changed") as error:
        graphopt.save_mxnet(changed, target)
    assert error.value.file == str(tmp_path / "out-symbol.json")  # the model's file, not a temp
    monkeypatch.setattr(os, "replace", real_replace)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("out-*")} == old
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_saving_under_a_file_is_a_clear_error(lenet, tmp_path):
    symbol_path, params_path = lenet
    graph = graphopt.load(symbol_path, params_path, inputs=LENET_INPUT)
    with pytest.raises(graphopt.ModelFileError, match="cannot write here") as error:
        graphopt.save_mxnet(graph, symbol_path / "model")  # a folder that is a file
    assert str(symbol_path) in str(error.value)


def test_numpy_guard_refuses_numpy_124(monkeypatch):
    monkeypatch.setattr(np, "__version__", "1.24.0")
    with pytest.raises(graphopt.EnvironmentMismatchError, match="numpy < 1.24"):
        graphopt._check_numpy()


def test_aux_state_of_the_wrong_shape_names_node_and_op(tmp_path):
    """MXNet ignores the shapes it is given for aux states; graphopt must not."""
    symbol_path, params_path = build.fixture_path("resnet_digits")
    symbol_copy, params_copy = tmp_path / symbol_path.name, tmp_path / params_path.name
    shutil.copy(symbol_path, symbol_copy)
    shutil.copy(params_path, params_copy)
    arrays = mx.nd.load(str(params_copy))
    aux = next(k for k in arrays if k.startswith("aux:") and k.endswith("running_var"))
    arrays[aux] = mx.nd.ones((7,))
    mx.nd.save(str(params_copy), arrays)
    with pytest.raises(graphopt.ParameterError) as error:
        graphopt.load(symbol_copy, params_copy, inputs=LENET_INPUT)
    assert error.value.op == "BatchNorm" and "(7,)" in str(error.value)


def test_malformed_graph_output_names_the_file(lenet):
    symbol_path, params_path = lenet
    data = json.loads(symbol_path.read_text())
    data["heads"] = [[]]
    symbol_path.write_text(json.dumps(data))
    with pytest.raises(graphopt.ModelFileError, match="graph output"):
        graphopt.load(symbol_path, params_path, inputs=LENET_INPUT)


def test_a_forgotten_second_input_is_not_called_a_parameter(tmp_path):
    data, mask = mx.sym.Variable("data"), mx.sym.Variable("mask")
    out = mx.sym.broadcast_mul(mx.sym.FullyConnected(data, num_hidden=4, name="fc"), mask, name="masked")
    symbol_path = tmp_path / "masked-symbol.json"
    symbol_path.write_text(out.tojson())
    params_path = tmp_path / "masked-0000.params"
    mx.nd.save(str(params_path), {"arg:fc_weight": mx.nd.ones((4, 3)), "arg:fc_bias": mx.nd.zeros(4)})
    with pytest.raises(graphopt.ShapeError) as error:
        graphopt.load(symbol_path, params_path, inputs={"data": (2, 3)})
    assert "'mask'" in str(error.value) and "inputs" in str(error.value)
    assert error.value.node == "masked"


def test_repeated_names_keep_mxnet_semantics(tmp_path):
    """Two variables named alike are one variable in MXNet; a repeated op name is renamed to a
    name no other node has, so the outputs keep their names."""
    nodes = [
        {"op": "null", "name": "data", "inputs": []},
        {"op": "Activation", "name": "act", "attrs": {"act_type": "relu"}, "inputs": [[0, 0, 0]]},
        {"op": "null", "name": "data", "inputs": []},
        {"op": "Activation", "name": "act", "attrs": {"act_type": "tanh"}, "inputs": [[2, 0, 0]]},
        {"op": "elemwise_add", "name": "act_1", "inputs": [[1, 0, 0], [3, 0, 0]]},
    ]
    path = tmp_path / "dup-symbol.json"
    path.write_text(json.dumps({"nodes": nodes, "arg_nodes": [0, 2], "heads": [[4, 0, 0]]}))
    graph = graphopt.load(path, inputs={"data": (2, 3)})
    assert graph.input_names == ["data"]
    assert graph.output_names == ["act_1_output"]
    assert graph.node("act_2").attrs["act_type"] == "tanh"
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    # MXNet's own bind refuses the file (two arguments named "data"); what it means is this:
    actual = graphopt.mxnet_io.to_symbol(graph).bind(mx.cpu(), {"data": mx.nd.array(x)}).forward()[0]
    np.testing.assert_allclose(actual.asnumpy(), np.maximum(x, 0) + np.tanh(x), rtol=1e-6)
