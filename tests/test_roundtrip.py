"""A user loads an exported MXNet model, saves it back, and gets the very same outputs.

The round trip must be bit-identical (issue 2): same graph, same parameter bytes, so MXNet
computes the same bits. Both params formats MXNet writes must load.
"""

from __future__ import annotations

import json
import os
import stat

import mxnet as mx
import numpy as np
import pytest

import graphopt
from fixtures import build, zoo
from graphopt.mxnet_io.symbol_json import graph_to_dict


def run_mxnet(symbol_path, params_path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a saved model the way users do: SymbolBlock.imports, then a forward pass."""
    names = list(inputs)
    block = mx.gluon.SymbolBlock.imports(str(symbol_path), names, str(params_path))
    outputs = block(*[mx.nd.array(inputs[n]) for n in names])
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [o.asnumpy() for o in outputs]


def assert_round_trip_identical(symbol_path, params_path, input_shape, tmp_path):
    inputs = {"data": zoo.seeded_input(input_shape)}
    graph = graphopt.load(symbol_path, params_path, inputs={"data": input_shape})
    graph.validate()
    saved_symbol, saved_params = graphopt.save_mxnet(graph, tmp_path / "roundtrip")
    before = run_mxnet(symbol_path, params_path, inputs)
    after = run_mxnet(saved_symbol, saved_params, inputs)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b), "round trip changed the model's output bits"
    return graph


@pytest.mark.parametrize("name", ["lenet_digits", "resnet_digits", "lenet_random", "resnet_bn_random"])
def test_fixture_round_trip_is_bit_identical(name, tmp_path):
    symbol_path, params_path = build.fixture_path(name)
    shape = tuple(json.loads(symbol_path.with_name(f"{name}.json").read_text())["input_shape"])
    graph = assert_round_trip_identical(symbol_path, params_path, shape, tmp_path)
    for node in graph.nodes():
        for tensor_type in node.outputs:
            assert tensor_type.known, f"{node.name} has an unknown shape or dtype after loading"


ZOO_FAST = ["resnet18_v1", "mobilenet0.25", "squeezenet1.1"]


@pytest.mark.parametrize("name", ZOO_FAST)
def test_zoo_round_trip_is_bit_identical(name, tmp_path):
    symbol_path, params_path, shape = zoo.export_zoo_model(name)
    assert_round_trip_identical(symbol_path, params_path, shape, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in zoo.ZOO_NAMES if n not in ZOO_FAST])
def test_every_zoo_architecture_round_trips_bit_identical(name, tmp_path):
    symbol_path, params_path, shape = zoo.export_zoo_model(name)
    assert_round_trip_identical(symbol_path, params_path, shape, tmp_path)


def test_saved_json_keeps_every_attribute_verbatim(tmp_path):
    symbol_path, params_path, shape = zoo.export_zoo_model("resnet18_v1")
    original = json.loads(symbol_path.read_text())
    graph = graphopt.load(symbol_path, params_path, inputs={"data": shape})
    written = graph_to_dict(graph)
    assert [n["name"] for n in written["nodes"]] == [n["name"] for n in original["nodes"]]
    for before, after in zip(original["nodes"], written["nodes"]):
        assert before["op"] == after["op"]
        assert before.get("attrs", {}) == after.get("attrs", {}), before["name"]
        assert [i[:2] for i in before["inputs"]] == [i[:2] for i in after["inputs"]]
    assert written["heads"] == original["heads"]


def test_attributes_are_typed_and_defaults_come_from_mxnet():
    data = mx.sym.Variable("data")
    conv = mx.sym.Convolution(data, kernel=(3, 3), num_filter=8, pad=(1, 1), name="conv")
    bn = mx.sym.BatchNorm(conv, name="bn")  # eps, fix_gamma left to MXNet's defaults
    pool = mx.sym.Pooling(bn, kernel=(2, 2), pool_type="avg", pooling_convention="full", name="pool")
    graph = graphopt.mxnet_io.graph_from_json(pool.tojson())
    assert graph.node("conv").attrs == {"kernel": (3, 3), "num_filter": 8, "pad": (1, 1)}
    assert graph.node("pool").attrs["pool_type"] == "avg"
    assert "eps" not in graph.node("bn").attrs  # only explicit attributes, as in MXNet's JSON
    from graphopt.schema import attr_or_default
    # PITFALLS.md (BatchNorm): MXNet's defaults are eps=1e-3 and fix_gamma=True
    assert attr_or_default("BatchNorm", graph.node("bn").attrs, "fix_gamma") is True
    assert abs(attr_or_default("BatchNorm", graph.node("bn").attrs, "eps") - 1e-3) < 1e-9
    # PITFALLS.md (Ops): Deconvolution no_bias defaults to True, Convolution's to False
    assert attr_or_default("Deconvolution", {}, "no_bias") is True
    assert attr_or_default("Convolution", {}, "no_bias") is False


@pytest.mark.parametrize("name", ["lenet_digits", "resnet_digits"])
def test_both_params_formats_load_to_the_same_values(name):
    """Gluon's save_parameters names parameters by structure; they must land on the same variables
    as the exported arg:/aux: names, BatchNorm running statistics included (they are aux states,
    interleaved with the arguments in graph order)."""
    symbol_path, params_path = build.fixture_path(name)
    gluon_params = symbol_path.parent / f"{name}.gluon.params"
    stored_keys = list(mx.nd.load(str(gluon_params)))
    assert all(":" not in k and "." in k for k in stored_keys), "expected Gluon structural names"
    shape = {"data": (1, 1, 28, 28)}
    exported = graphopt.load(symbol_path, params_path, inputs=shape)
    structural = graphopt.load(symbol_path, gluon_params, inputs=shape)
    assert exported.params.keys() == structural.params.keys()
    for name, value in exported.params.items():
        assert np.array_equal(value, structural.params[name]), name


def test_from_block_loads_a_hybrid_block():
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(4, 3, activation="relu"), mx.gluon.nn.BatchNorm(),
            mx.gluon.nn.Dense(3))
    net.initialize(mx.init.Xavier())
    x = zoo.seeded_input((2, 3, 8, 8))
    expected = net(mx.nd.array(x)).asnumpy()
    graph = graphopt.from_block(net, inputs={"data": (2, 3, 8, 8)})
    assert graph.input_names == ["data"]
    assert graph.tensor_type(graph.outputs[0]).shape == (2, 3)
    assert sorted(n.kind for n in graph.variables()).count("aux") == 2  # BN moving mean/var
    symbol = graphopt.mxnet_io.to_symbol(graph)
    args = {k: mx.nd.array(v) for k, v in graph.params.items() if graph.node(k).kind == "param"}
    aux = {k: mx.nd.array(v) for k, v in graph.params.items() if graph.node(k).kind == "aux"}
    args["data"] = mx.nd.array(x)
    out = symbol.bind(mx.cpu(), args, aux_states=aux).forward()[0].asnumpy()
    assert np.array_equal(out, expected)


def test_loading_never_modifies_the_input_files(tmp_path):
    symbol_path, params_path = build.fixture_path("lenet_digits")
    before = (symbol_path.read_bytes(), params_path.read_bytes())
    graph = graphopt.load(symbol_path, params_path, inputs={"data": (1, 1, 28, 28)})
    with pytest.raises(ValueError):
        next(iter(graph.params.values()))[...] = 0  # parameters are read-only arrays
    saved = graphopt.save_mxnet(graph, tmp_path / "copy")
    assert (symbol_path.read_bytes(), params_path.read_bytes()) == before
    umask = os.umask(0)
    os.umask(umask)
    for path in saved:  # written through a temporary file, yet with the usual permissions
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_from_block_keeps_the_users_input_names():
    class TwoInputs(mx.gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            self.image_branch = mx.gluon.nn.Dense(4)
            self.mask_branch = mx.gluon.nn.Dense(4)

        def hybrid_forward(self, F, image, mask):
            return F.broadcast_mul(self.image_branch(image), F.sigmoid(self.mask_branch(mask)))

    net = TwoInputs()
    net.initialize(mx.init.Xavier())
    graph = graphopt.from_block(net, inputs={"image": (2, 5), "mask": (2, 3)})
    assert graph.input_names == ["image", "mask"]
    image, mask = zoo.seeded_input((2, 5)), zoo.seeded_input((2, 3), seed=1)
    expected = net(mx.nd.array(image), mx.nd.array(mask)).asnumpy()
    args = {k: mx.nd.array(v) for k, v in graph.params.items()}
    args.update(image=mx.nd.array(image), mask=mx.nd.array(mask))
    out = graphopt.mxnet_io.to_symbol(graph).bind(mx.cpu(), args).forward()[0].asnumpy()
    assert np.array_equal(out, expected)


class ControlFlow(mx.gluon.HybridBlock):
    """A recurrent cell run with ``foreach`` over the sequence, a ``while_loop`` that doubles a
    state while it is small, and a ``cond`` on the result: control-flow ops whose bodies MXNet
    stores as subgraphs inside the node (the cell's weights feed the loop from outside)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.cell = mx.gluon.nn.Dense(4, flatten=False, in_units=3)

    def hybrid_forward(self, F, sequence, state):
        def step(x, states):
            h = F.tanh(self.cell(x) + states[0])
            return h, [h]

        outputs, states = F.contrib.foreach(step, sequence, [state])
        _, (doubled,) = F.contrib.while_loop(
            cond=lambda s: F.sum(F.abs(s)) < 100, func=lambda s: (s, [s * 2]),
            loop_vars=[states[0]], max_iterations=10)
        chosen = F.contrib.cond(F.sum(doubled) > 0, lambda: doubled + 1, lambda: doubled - 1)
        return outputs, chosen


def test_control_flow_subgraphs_round_trip(tmp_path):
    """foreach / while_loop / cond keep their bodies through load and save, MXNet runs the
    saved model to the same bits, and the ONNX export matches MXNet."""
    rng = np.random.RandomState(0)
    inputs = {"sequence": rng.uniform(-1, 1, (5, 2, 3)).astype(np.float32),
              "state": rng.uniform(-1, 1, (2, 4)).astype(np.float32)}
    block = ControlFlow()
    block.initialize(mx.init.Xavier())
    block.hybridize()
    block(*[mx.nd.array(v) for v in inputs.values()])
    block.export(str(tmp_path / "loop"), epoch=0)
    symbol_path, params_path = tmp_path / "loop-symbol.json", tmp_path / "loop-0000.params"
    text = symbol_path.read_text().replace('"data0"', '"sequence"').replace('"data1"', '"state"')
    symbol_path.write_text(text)

    graph = graphopt.load(symbol_path, params_path,
                          inputs={name: value.shape for name, value in inputs.items()})
    ops = {graph.node(name).op for name in graph.live_nodes()}
    assert {"_foreach", "_while_loop", "_cond"} <= ops
    assert sorted(graph.params) == sorted(p.name for p in block.collect_params().values())
    saved_symbol, saved_params = graphopt.save_mxnet(graph, tmp_path / "roundtrip")
    written = {n["name"]: n for n in json.loads(saved_symbol.read_text())["nodes"]}
    original = {n["name"]: n for n in json.loads(text)["nodes"]}
    for name, node in original.items():
        assert written[name].get("subgraphs") == node.get("subgraphs"), f"{name}: body changed"
    before = run_mxnet(symbol_path, params_path, inputs)
    after = run_mxnet(saved_symbol, saved_params, inputs)
    assert len(before) == len(after) == 2
    for a, b in zip(before, after):
        assert np.array_equal(a, b), "round trip changed the model's output bits"
    rewritten, _ = graphopt.rewrite(graph)  # the rules leave the loops alone
    folded_symbol, folded_params = graphopt.save_mxnet(rewritten, tmp_path / "rewritten")
    for a, b in zip(before, run_mxnet(folded_symbol, folded_params, inputs)):
        assert np.array_equal(a, b)

    # ONNX export (Scan, Loop, If) computes the same outputs in onnxruntime
    from onnx_op_harness import TOLERANCE, assert_close, run_onnx
    assert_close(before, run_onnx(graphopt.to_onnx(graph), inputs), TOLERANCE, "ONNX export")
