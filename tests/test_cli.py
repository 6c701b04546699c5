"""The command line, as a deployment pipeline uses it: inspect, export, optimize, compare, rules."""

from __future__ import annotations

import json
import shutil

import mxnet as mx
import numpy as np
import onnx
import pytest

from fixtures import build
from graphopt.cli import main, parse_input, resolve_model

SHAPE = "data:1x1x28x28"


@pytest.fixture
def resnet(tmp_path):
    """The trained digits ResNet (with BatchNorm), copied so outputs land in tmp_path."""
    symbol_path, params_path = build.fixture_path("resnet_digits")
    for path in (symbol_path, params_path):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / symbol_path.name


def test_model_paths_resolve_from_symbol_or_prefix(resnet):
    prefix = str(resnet).removesuffix("-symbol.json")
    assert resolve_model(str(resnet)) == resolve_model(prefix)
    assert resolve_model(prefix)[1].name == "resnet_digits-0000.params"
    assert parse_input("data:2x3x32x32") == ("data", (2, 3, 32, 32), None)
    assert parse_input("ids:1x16:int32") == ("ids", (1, 16), "int32")


def test_inspect_json_counts_the_model(resnet, capsys):
    assert main(["inspect", str(resnet), "--input", SHAPE, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    params = mx.nd.load(str(resnet).replace("-symbol.json", "-0000.params"))
    stored = sum(int(np.prod(a.shape)) for a in params.values())
    assert report["op_histogram"]["BatchNorm"] == 9  # one per conv of the fixture's 3 stages
    # the total parameter count, aux states included, equals what the params file holds
    assert report["parameters"]["total"]["count"] == stored


def test_export_then_compare_passes_as_a_gate(resnet, tmp_path, capsys):
    onnx_path = tmp_path / "resnet.onnx"
    assert main(["export", str(resnet), "--input", SHAPE, "--to", "onnx", str(onnx_path)]) == 0
    onnx.checker.check_model(str(onnx_path), full_check=True)
    code = main(["compare", str(resnet), str(onnx_path), "--input", SHAPE, "--per-layer", "--json"])
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after export's "wrote" line
    assert code == 0 and report["ok"] is True


def test_compare_fails_the_gate_when_onnx_differs(resnet, tmp_path, capsys):
    onnx_path = tmp_path / "resnet.onnx"
    main(["export", str(resnet), "--input", SHAPE, "--to", "onnx", str(onnx_path)])
    model = onnx.load(str(onnx_path))
    bias = next(i for i in model.graph.initializer if i.name.endswith("dense0_bias"))
    values = onnx.numpy_helper.to_array(bias) + 1.0  # shifts every logit: far past 1e-5
    bias.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), bias.name))
    onnx.save(model, str(onnx_path))
    assert main(["compare", str(resnet), str(onnx_path), "--input", SHAPE]) == 1


def test_optimize_folds_batchnorm_and_writes_mxnet(resnet, tmp_path, capsys):
    out = tmp_path / "folded"
    assert main(["optimize", str(resnet), "--input", SHAPE, "-o", str(out), "--explain"]) == 0
    text = capsys.readouterr().out
    assert "fold_batchnorm_into_convolution" in text
    nodes = json.loads((tmp_path / "folded-symbol.json").read_text())["nodes"]
    assert not [n for n in nodes if n["op"] == "BatchNorm"]
    mx.sym.load(str(tmp_path / "folded-symbol.json"))  # MXNet accepts what we wrote


def test_rules_list_names_the_builtin_rules(capsys):
    assert main(["rules", "list", "--json"]) == 0
    names = {rule["name"] for rule in json.loads(capsys.readouterr().out)}
    assert "fold_batchnorm_into_convolution" in names


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    broken = tmp_path / "broken-symbol.json"
    broken.write_text('{"nodes": [')
    assert main(["inspect", str(broken)]) == 2
    error = capsys.readouterr().err
    assert "truncated or malformed" in error and str(broken) in error


def test_an_integer_input_is_declared_with_its_dtype(tmp_path, capsys):
    """A token classifier whose ids input is int32: export and compare are told the dtype on
    the command line, and the ONNX input carries it."""
    ids = mx.sym.var("ids")
    logits = mx.sym.FullyConnected(mx.sym.Embedding(ids, input_dim=20, output_dim=6, name="embed"),
                                   num_hidden=3, name="classify")
    (tmp_path / "tagger-symbol.json").write_text(logits.tojson())
    rng = np.random.RandomState(0)
    mx.nd.save(str(tmp_path / "tagger-0000.params"), {
        "arg:embed_weight": mx.nd.array(rng.uniform(-1, 1, (20, 6))),
        "arg:classify_weight": mx.nd.array(rng.uniform(-1, 1, (3, 30))),
        "arg:classify_bias": mx.nd.array(rng.uniform(-1, 1, (3,)))})
    prefix, onnx_path = str(tmp_path / "tagger"), tmp_path / "tagger.onnx"
    assert main(["export", prefix, "--input", "ids:2x5:int32", str(onnx_path)]) == 0
    declared = onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.elem_type
    assert declared == onnx.TensorProto.INT32
    capsys.readouterr()
    assert main(["compare", prefix, str(onnx_path), "--input", "ids:3x5:int32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"]["ids"]["dtype"] == "int32" and report["ok"] is True
    with pytest.raises(SystemExit):  # argparse: usage and the reason, exit status 2
        main(["export", prefix, "--input", "ids:2x5:int33", str(onnx_path)])
    assert "unknown dtype 'int33'" in capsys.readouterr().err
