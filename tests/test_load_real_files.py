"""Model files as they are found in the wild load, and save back to what MXNet computes from
the originals: symbols written by older MXNet, Gluon save_parameters files of nested blocks,
UTF-8 names, 0-d parameters, declared input dtypes, quantized models; and bad files say which
node and op MXNet refuses."""

from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest

import graphopt
from fixtures import build

RNG = np.random.RandomState(0)


def bind_and_run(symbol_path, params_path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """MXNet's own reading of a model: mx.sym.load + executor bind (labels never read)."""
    symbol = mx.sym.load(str(symbol_path))
    stored = mx.nd.load(str(params_path)) or {}
    args = {k.split(":", 1)[-1]: v for k, v in stored.items() if not k.startswith("aux:")}
    aux = {k[4:]: v for k, v in stored.items() if k.startswith("aux:")}
    args.update({k: mx.nd.array(v, dtype=v.dtype) for k, v in inputs.items()})
    executor = symbol.bind(mx.cpu(), {n: args[n] for n in symbol.list_arguments()},
                           aux_states={n: aux[n] for n in symbol.list_auxiliary_states()},
                           grad_req="null")
    return [out.asnumpy() for out in executor.forward(is_train=False)]


def assert_saved_computes_the_same(symbol_path, params_path, inputs, tmp_path):
    graph = graphopt.load(symbol_path, params_path, inputs={k: v.shape for k, v in inputs.items()})
    graph.validate()
    saved = graphopt.save_mxnet(graph, tmp_path / "saved")
    before, after = bind_and_run(symbol_path, params_path, inputs), bind_and_run(*saved, inputs)
    for tensor, a, b in zip(graph.outputs, before, after):
        assert a.dtype == b.dtype and np.array_equal(a, b), "round trip changed the output bits"
        assert graph.tensor_type(tensor).shape == a.shape
        assert graph.tensor_type(tensor).dtype == a.dtype.name
    return graph, saved


def write_model(tmp_path, name, symbol_dict, params: dict):
    symbol_path, params_path = tmp_path / f"{name}-symbol.json", tmp_path / f"{name}-0000.params"
    symbol_path.write_text(json.dumps(symbol_dict))
    mx.nd.save(str(params_path), params)
    return symbol_path, params_path


# MXNet's legacy_json_util.cc upgrades files older than itself; these meanings change on upgrade.
LEGACY_MODELS = {
    # before 0.9.0, aux states were implicit: BatchNorm listed data, gamma, beta only
    "implicit_aux_states": ({"nodes": [
        {"op": "null", "name": "data", "param": {}, "inputs": [], "backward_source_id": -1},
        {"op": "null", "name": "bn_gamma", "param": {}, "inputs": [], "backward_source_id": -1},
        {"op": "null", "name": "bn_beta", "param": {}, "inputs": [], "backward_source_id": -1},
        {"op": "BatchNorm", "name": "bn", "param": {"fix_gamma": "False"},
         "inputs": [[0, 0], [1, 0], [2, 0]], "backward_source_id": -1}],
        "arg_nodes": [0, 1, 2], "heads": [[3, 0]]},
        {"arg:bn_gamma": RNG.rand(3) + 0.5, "arg:bn_beta": RNG.rand(3),
         "aux:bn_moving_mean": RNG.rand(3), "aux:bn_moving_var": RNG.rand(3) + 0.5}, (2, 3, 4, 4)),
    # before 0.9.5, argmax axis=-1 meant "no axis": the argmax over the flattened input
    "argmax_axis_minus_one": ({"nodes": [
        {"op": "null", "name": "data", "param": {}, "inputs": []},
        {"op": "argmax", "name": "am", "param": {"axis": "-1"}, "inputs": [[0, 0]]}],
        "arg_nodes": [0], "heads": [[1, 0]]}, {}, (2, 3, 4)),
    # lr_mult / ctx_group written as plain attributes (and weight_wd_mult for an input)
    "plain_hidden_keys": ({"nodes": [
        {"op": "null", "name": "data", "inputs": []},
        {"op": "null", "name": "fc_weight", "inputs": []},
        {"op": "null", "name": "fc_bias", "inputs": []},
        {"op": "FullyConnected", "name": "fc", "param": {"num_hidden": "4"},
         "attr": {"lr_mult": "2", "weight_wd_mult": "0.5", "ctx_group": "dev1"},
         "inputs": [[0, 0, 0], [1, 0, 0], [2, 0, 0]]}],
        "arg_nodes": [0, 1, 2], "heads": [[3, 0, 0]], "attrs": {"mxnet_version": ["int", 905]}},
        {"arg:fc_weight": RNG.rand(4, 6), "arg:fc_bias": RNG.rand(4)}, (2, 6)),
}


@pytest.mark.parametrize("name", sorted(LEGACY_MODELS))
def test_symbols_of_older_mxnet_keep_their_meaning(name, tmp_path):
    symbol_dict, params, shape = LEGACY_MODELS[name]
    symbol_path, params_path = write_model(
        tmp_path, name, symbol_dict, {k: mx.nd.array(v) for k, v in params.items()})
    x = RNG.randn(*shape).astype(np.float32)
    _, (saved_symbol, _) = assert_saved_computes_the_same(symbol_path, params_path, {"data": x},
                                                          tmp_path)
    written = json.loads(saved_symbol.read_text())
    assert written["attrs"]["mxnet_version"][1] >= 10901  # read as MXNet reads it, no upgrade left


def test_names_with_quotes_slashes_and_non_ascii_letters(tmp_path):
    odd = 'conv "1"/b\\c:d é中'
    data = mx.sym.Variable("in put:0")
    out = mx.sym.FullyConnected(mx.sym.relu(data, name=odd), num_hidden=2, name="fc.1/2",
                                weight=mx.sym.Variable("w eight"), bias=mx.sym.Variable("arg:b"))
    symbol_path = tmp_path / "odd-symbol.json"
    symbol_path.write_text(out.tojson(), encoding="utf-8")
    params_path = tmp_path / "odd-0000.params"
    mx.nd.save(str(params_path), {"arg:w eight": mx.nd.array(RNG.randn(2, 3)),
                                  "arg:arg:b": mx.nd.array(RNG.randn(2))})
    graph, _ = assert_saved_computes_the_same(
        symbol_path, params_path, {"in put:0": RNG.randn(2, 3).astype(np.float32)}, tmp_path)
    assert odd in graph


def test_gluon_save_parameters_of_nested_blocks_with_shared_and_reordered_layers(tmp_path):
    """save_parameters names by attribute path in registration (= creation) order; the second
    block here is created first but used last, has the shape of the other, and a third layer
    shares the first's parameters (saved twice, one variable in the symbol)."""
    nn = mx.gluon.nn

    class Net(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.conv = nn.Conv2D(4, 3, padding=1)
                self.norm = nn.BatchNorm()
                self.late = nn.Dense(5, in_units=5)
                self.early = nn.Dense(5, in_units=5)
                self.tied = nn.Dense(5, in_units=5, params=self.early.params)
                self.lstm = mx.gluon.rnn.LSTM(5, layout="NTC", input_size=4)

        def hybrid_forward(self, F, x):
            y = F.relu(self.norm(self.conv(x)))          # (2, 4, 3, 3)
            y = self.lstm(F.transpose(F.reshape(y, (0, 4, -1)), (0, 2, 1)))  # (2, 9, 5)
            return self.late(self.tied(F.relu(self.early(F.mean(y, axis=1)))))

    net = Net()
    net.initialize(mx.init.Uniform(0.5))
    net.hybridize()
    net(mx.nd.zeros((2, 3, 3, 3)))  # deferred shapes become known
    for param in net.collect_params().values():  # distinct values, statistics included
        param.set_data(mx.nd.array(RNG.rand(*param.shape) + 0.5))
    net.export(str(tmp_path / "net"), epoch=0)
    net.save_parameters(str(tmp_path / "net.gluon.params"))
    symbol_path = tmp_path / "net-symbol.json"
    shape = {"data": (2, 3, 3, 3)}
    exported = graphopt.load(symbol_path, tmp_path / "net-0000.params", inputs=shape)
    structural = graphopt.load(symbol_path, tmp_path / "net.gluon.params", inputs=shape)
    assert exported.params.keys() == structural.params.keys()
    for name, value in exported.params.items():
        assert np.array_equal(value, structural.params[name]), name


def test_shared_parameters_that_cannot_be_told_apart_are_refused_not_guessed(tmp_path):
    """Two untouched zero biases look like a shared parameter's two copies: with more equal
    entries than entries too many, which to drop is a guess, and a wrong guess would shift
    every later bias by one layer (same shapes, so nothing else would notice)."""
    nn = mx.gluon.nn

    class Net(nn.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.a, self.b = nn.Dense(4, in_units=4), nn.Dense(4, in_units=4)
                self.c = nn.Dense(4, in_units=4)
                self.d = nn.Dense(4, in_units=4, params=self.c.params)

        def hybrid_forward(self, F, x):
            return self.d(self.c(self.b(self.a(x))))

    net = Net()
    net.initialize(mx.init.Xavier())  # biases zero
    net.c.bias.set_data(mx.nd.array([1, 2, 3, 4]))
    net.hybridize()
    net(mx.nd.zeros((2, 4)))
    net.export(str(tmp_path / "net"), epoch=0)
    net.save_parameters(str(tmp_path / "net.gluon.params"))
    with pytest.raises(graphopt.ParameterError, match="cannot be told"):
        graphopt.load(tmp_path / "net-symbol.json", tmp_path / "net.gluon.params",
                      inputs={"data": (2, 4)})
    net.save_parameters(str(tmp_path / "dedup.gluon.params"), deduplicate=True)
    exported = graphopt.load(tmp_path / "net-symbol.json", tmp_path / "net-0000.params",
                             inputs={"data": (2, 4)})
    deduplicated = graphopt.load(tmp_path / "net-symbol.json", tmp_path / "dedup.gluon.params",
                                 inputs={"data": (2, 4)})
    for name, value in exported.params.items():
        assert np.array_equal(value, deduplicated.params[name]), name


def test_zero_dimensional_parameters_load_and_save(tmp_path):
    """A 0-d array exists only in MXNet's numpy shape semantics; its params file can be read
    only with them on (and mx.nd.save of a 0-d array without them writes an unreadable file)."""
    out = mx.sym.broadcast_mul(mx.sym.Variable("data"), mx.sym.Variable("scale"), name="scaled")
    symbol_path, params_path = tmp_path / "scaled-symbol.json", tmp_path / "scaled-0000.params"
    symbol_path.write_text(out.tojson())
    with mx.util.np_shape(True):
        mx.nd.save(str(params_path), {"arg:scale": mx.nd.array(np.float32(2.5))})
    graph = graphopt.load(symbol_path, params_path, inputs={"data": (2, 3)})
    graph.validate()
    assert graph.node("scale").shape == () and graph.node("scaled").shape == (2, 3)
    _, saved_params = graphopt.save_mxnet(graph, tmp_path / "saved")
    with mx.util.np_shape(True):
        reread = mx.nd.load(str(saved_params))["arg:scale"]
        assert reread.shape == () and reread.asnumpy() == np.float32(2.5)


def test_an_input_declared_float16_is_float16(tmp_path):
    data = mx.sym.Variable("data", shape=(2, 4), dtype="float16")
    bias = mx.sym.Variable("bias", shape=(1, 4), dtype="float16", lr_mult=2.0)
    out = mx.sym.broadcast_add(data, bias, name="add")
    symbol_path, params_path = write_model(
        tmp_path, "half", json.loads(out.tojson()),
        {"arg:bias": mx.nd.array(RNG.randn(1, 4), dtype="float16")})
    for inputs in ({}, {"data": (2, 4)}):  # declared __shape__ and __dtype__ serve when none given
        graph = graphopt.load(symbol_path, params_path, inputs=inputs)
        assert graph.node("data").dtype == "float16" and graph.node("add").dtype == "float16"
    assert_saved_computes_the_same(symbol_path, params_path,
                                   {"data": RNG.randn(2, 4).astype(np.float16)}, tmp_path)


def test_a_quantized_model_keeps_every_attribute_and_computes_the_same(tmp_path):
    """mx.contrib.quantization with the oneDNN backend: _sg_mkldnn_conv with calibration ranges
    as attributes, _contrib_quantize_v2, int8 weights."""
    data = mx.sym.Variable("data")
    conv = mx.sym.Convolution(data, kernel=(3, 3), num_filter=4, name="conv")
    relu = mx.sym.Activation(conv, act_type="relu", name="relu")
    out = mx.sym.FullyConnected(relu, num_hidden=3, name="fc")
    arg_shapes, _, _ = out.infer_shape(data=(2, 3, 6, 6))
    args = {n: mx.nd.array(RNG.randn(*s) * 0.3) for n, s in zip(out.list_arguments(), arg_shapes)
            if n != "data"}
    calibration = mx.io.NDArrayIter(data=RNG.rand(4, 3, 6, 6).astype(np.float32), batch_size=2)
    qsym, qargs, qaux = mx.contrib.quantization.quantize_model_mkldnn(
        out, args, {}, ctx=mx.cpu(), calib_mode="naive", calib_data=calibration,
        num_calib_examples=4, quantized_dtype="auto", quantize_mode="smart")
    mx.model.save_checkpoint(str(tmp_path / "q"), 0, qsym, qargs, qaux)
    symbol_path, params_path = tmp_path / "q-symbol.json", tmp_path / "q-0000.params"
    original = {n["name"]: n for n in json.loads(symbol_path.read_text())["nodes"]}
    assert any(n["op"].startswith("_sg_mkldnn") for n in original.values())
    x = RNG.rand(2, 3, 6, 6).astype(np.float32)
    _, (saved_symbol, _) = assert_saved_computes_the_same(symbol_path, params_path, {"data": x},
                                                          tmp_path)
    for node in json.loads(saved_symbol.read_text())["nodes"]:
        assert node.get("attrs", {}) == original[node["name"]].get("attrs", {}), node["name"]


@pytest.mark.parametrize("attribute, value", [("pool_type", "median"), ("colour", "blue")])
def test_an_attribute_mxnet_refuses_names_the_node_and_op(attribute, value, tmp_path):
    symbol_path, params_path = build.fixture_path("lenet_digits")
    data = json.loads(symbol_path.read_text())
    pool = next(n for n in data["nodes"] if n["op"] == "Pooling")
    pool["attrs"][attribute] = value
    broken = tmp_path / "broken-symbol.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(graphopt.ModelFileError) as error:
        graphopt.load(broken, params_path, inputs={"data": (1, 1, 28, 28)})
    assert error.value.node == pool["name"] and error.value.op == "Pooling"
    assert value in str(error.value) or attribute in str(error.value)


@pytest.mark.parametrize("content", [b"", b"not an MXNet params file\n" * 4, b"\x93NUMPY\x01\x00"])
def test_a_file_that_is_not_params_says_what_mxnet_found(content, tmp_path):
    symbol_path, _ = build.fixture_path("lenet_digits")
    bogus = tmp_path / "bogus.params"
    bogus.write_bytes(content)
    with pytest.raises(graphopt.ModelFileError) as error:
        graphopt.load(symbol_path, bogus, inputs={"data": (1, 1, 28, 28)})
    message = str(error.value)
    assert str(bogus) in message and "Invalid NDArray file format" in message
    assert "Traceback" not in message


def test_directories_and_another_models_params(tmp_path):
    symbol_path, params_path = build.fixture_path("lenet_digits")
    _, resnet_params = build.fixture_path("resnet_digits")
    with pytest.raises(graphopt.ModelFileError, match="params file is a directory"):
        graphopt.load(symbol_path, tmp_path, inputs={"data": (1, 1, 28, 28)})
    with pytest.raises(graphopt.ParameterError, match="another model"):
        graphopt.load(symbol_path, resnet_params, inputs={"data": (1, 1, 28, 28)})
    graph = graphopt.load(symbol_path, params_path, inputs={"data": (1, 1, 28, 28)})
    (tmp_path / "out-symbol.json").mkdir()
    with pytest.raises(graphopt.ModelFileError, match="directory"):
        graphopt.save_mxnet(graph, tmp_path / "out")
    assert not (tmp_path / "out-0000.params").exists()  # nothing half-saved
