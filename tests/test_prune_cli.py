"""``graphopt prune`` and ``graphopt inspect --compare``, as a deployment pipeline uses them:
prune the trained digits models, write MXNet (loaded back with ``SymbolBlock.imports``) or ONNX
(run in onnxruntime), compare the two models' costs, and refuse bad requests with exit 2."""

from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest

import graphopt
from fixtures.build import digits_split, fixture_path
from graphopt.cli import main
from graphopt.prune import load_sparse
from graphopt.runtime import run_mxnet, run_onnx

SHAPE = "data:1x1x28x28"


@pytest.fixture(scope="module")
def heldout():
    _, _, x_test, y_test = digits_split()
    return x_test[:64], y_test[:64]


def lenet_prefix() -> str:
    return str(fixture_path("lenet_digits")[0]).removesuffix("-symbol.json")


def resnet_prefix() -> str:
    return str(fixture_path("resnet_digits")[0]).removesuffix("-symbol.json")


def imported_block(prefix):
    """The saved model as a user loads it: a Gluon SymbolBlock."""
    with mx.util.np_shape(False):
        return mx.gluon.SymbolBlock.imports(f"{prefix}-symbol.json", ["data"],
                                            f"{prefix}-0000.params")


def test_threshold_pruning_writes_an_mxnet_model_that_symbolblock_loads(tmp_path, heldout,
                                                                         capsys):
    out = tmp_path / "lenet_pruned"
    code = main(["prune", lenet_prefix(), "--input", SHAPE, "--threshold", "0.1",
                 "--layers", "op:Convolution", "-o", str(out), "--report",
                 str(tmp_path / "report.json")])
    assert code == 0
    text = capsys.readouterr().out
    assert "sparsity of the pruned layers: 61.27%" in text  # as test_prune_magnitude measured
    report = json.loads((tmp_path / "report.json").read_text())
    assert [layer["name"] for layer in report["layers"]] == ["lenet_conv0_fwd", "lenet_conv1_fwd"]

    # what was written is the API's pruned graph, and Gluon computes the same outputs with it
    original = graphopt.load(*fixture_path("lenet_digits"), inputs={"data": (1, 1, 28, 28)})
    expected, _ = graphopt.prune(original, threshold=0.1, layers="op:Convolution",
                                 measure_storage=False)
    saved = graphopt.load(f"{out}-symbol.json", f"{out}-0000.params")
    for name, value in expected.params.items():
        assert np.array_equal(saved.params[name], value), name
    images, _ = heldout
    reference = next(iter(run_mxnet(expected, {"data": images}).values()))
    gluon = imported_block(out)(mx.nd.array(images)).asnumpy()
    np.testing.assert_allclose(gluon, reference, rtol=1e-5, atol=1e-5)


def test_pruning_to_onnx_runs_in_onnxruntime_like_mxnet(tmp_path, heldout):
    out = tmp_path / "lenet_sparse.onnx"
    assert main(["--quiet", "prune", lenet_prefix(), "--input", SHAPE, "--sparsity", "0.8",
                 "--scope", "global", "-o", str(out), "--to", "onnx",
                 "--sparse-params", str(tmp_path / "sparse.npz")]) == 0
    original = graphopt.load(*fixture_path("lenet_digits"), inputs={"data": (1, 1, 28, 28)})
    pruned, report = graphopt.prune(original, sparsity=0.8, scope="global")
    # the sparse file holds the same weights, in the size the report measured (141 KiB of 668)
    stored = load_sparse(tmp_path / "sparse.npz")
    assert all(np.array_equal(stored[name], value) for name, value in pruned.params.items())
    assert (tmp_path / "sparse.npz").stat().st_size == report.storage_after["bitmask_zlib"]
    images, _ = heldout
    reference = next(iter(run_mxnet(pruned, {"data": images}).values()))
    actual = next(iter(run_onnx(str(out), {"data": images}).values()))
    # float32 convolutions in two libraries: agreement to ~1e-5 of the logits' scale
    np.testing.assert_allclose(actual, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_inspect_compare_shows_a_magnitude_pruned_model_is_no_smaller(tmp_path, capsys):
    out = tmp_path / "lenet_pruned"
    main(["prune", lenet_prefix(), "--input", SHAPE, "--sparsity", "0.9", "-o", str(out),
          "--json"])
    capsys.readouterr()
    assert main(["inspect", lenet_prefix(), "--input", SHAPE, "--compare", str(out),
                 "--json"]) == 0
    comparison = json.loads(capsys.readouterr().out)
    # zeros are still stored and multiplied: every ratio is exactly 1
    assert {key: t["ratio"] for key, t in comparison["totals"].items()} == {
        "params": 1.0, "bytes": 1.0, "macs": 1.0, "flops": 1.0}
    assert [layer["name"] for layer in comparison["layers"]] == [
        "lenet_conv0_fwd", "lenet_conv1_fwd", "lenet_dense0_fwd", "lenet_dense1_fwd"]
    assert comparison["layers"][1]["macs"] == [900_000, 900_000]  # 50x10x10 outputs x 20x3x3

    assert main(["inspect", lenet_prefix(), "--input", SHAPE, "--compare", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lenet_digits (before) vs lenet_pruned (after)" in text and "macs" in text


@pytest.mark.parametrize("arguments, message", [
    (["--sparsity", "1.5"], "sparsity must be in [0, 1)"),
    (["--threshold", "-1"], "threshold must be a finite number >= 0"),
    (["--filters", "1.0"], "ratio must be in [0, 1)"),
    (["--sparsity", "0.5", "--layers", "conv9*"],
     "layer pattern 'conv9*' matches no prunable layer; prunable layers: lenet_conv0_fwd"),
    (["--sparsity", "0.5", "--round-to", "8"], "--round-to applies to filter pruning"),
    (["--sparsity", "0.5", "--criterion", "bn_gamma"], "--criterion applies to filter pruning"),
    # to_onnx's ValueError used to end the command with a traceback (exit 1) after the pruning
    (["--sparsity", "0.5", "--to", "onnx", "-o", "never_written.onnx", "--opset", "5"],
     "--opset 5 is not supported: choose one from 13 to"),
])
def test_bad_requests_exit_2_naming_what_was_asked(arguments, message, capsys):
    assert main(["prune", lenet_prefix(), "--input", SHAPE, *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("graphopt prune: error: ") and message in error


def test_one_way_of_pruning_at_a_time(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["prune", lenet_prefix(), "--input", SHAPE, "--threshold", "0.1",
              "--filters", "0.5"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_filters_dropped_then_compared_with_inspect(tmp_path, heldout, capsys):
    """The issue's pipeline: 50% filters, drop, write MXNet and ONNX, compare the costs."""
    out = tmp_path / "resnet_small"
    assert main(["prune", resnet_prefix(), "--input", SHAPE, "--filters", "0.5",
                 "--round-to", "8", "--drop-channels", "-o", str(out), "--report",
                 str(tmp_path / "report.json")]) == 0
    text = capsys.readouterr().out
    assert "dropped 112 of 234 channels" in text  # half of 16+16+32+32+64+64 (the dropper's count)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["dropped"]["dropped"] == 112
    assert report["ratios"]["macs"] < 0.26  # measured 2.36 M of 9.35 M MACs

    assert main(["inspect", resnet_prefix(), "--input", SHAPE, "--compare", str(out),
                 "--json"]) == 0
    comparison = json.loads(capsys.readouterr().out)
    assert comparison["totals"]["macs"]["after"] == report["after"]["macs"]
    stem = next(l for l in comparison["layers"] if l["name"] == "resnet_conv0_fwd")
    assert stem["params"] == [16 * 9, 8 * 9]  # 16 -> 8 filters of 1x3x3, no bias

    onnx_path = tmp_path / "resnet_small.onnx"
    assert main(["prune", resnet_prefix(), "--input", SHAPE, "--filters", "0.5",
                 "--round-to", "8", "--drop-channels", "-o", str(onnx_path), "--to", "onnx",
                 "--json"]) == 0
    images, _ = heldout
    (reference,) = run_mxnet(graphopt.load(f"{out}-symbol.json", f"{out}-0000.params"),
                             {"data": images}).values()
    (actual,) = run_onnx(str(onnx_path), {"data": images}).values()
    np.testing.assert_allclose(actual, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    gluon = imported_block(out)(mx.nd.array(images)).asnumpy()
    np.testing.assert_allclose(gluon, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize("target", ["-o PREFIX", "--report SYMBOL", "--sparse-params PARAMS",
                                    "--to onnx -o PARAMS"])
def test_an_output_that_would_overwrite_the_input_model_is_refused(target, tmp_path, capsys):
    """The input files are never modified: ``-o`` naming the input's own prefix (or a report
    or sparse-params path naming one of its files) used to overwrite the model being pruned."""
    symbol, params = fixture_path("lenet_digits")
    prefix = tmp_path / "lenet"
    (tmp_path / "lenet-symbol.json").write_bytes(symbol.read_bytes())
    (tmp_path / "lenet-0000.params").write_bytes(params.read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    paths = {"PREFIX": str(prefix), "SYMBOL": f"{prefix}-symbol.json",
             "PARAMS": f"{prefix}-0000.params"}
    option = [paths.get(word, word) for word in target.split()]
    code = main(["prune", str(prefix), "--input", SHAPE, "--sparsity", "0.5", *option])
    assert code == 2
    assert "input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_compare_params_without_compare_is_a_bad_request(capsys):
    """--compare-params names OTHER's params: without --compare it used to be ignored, and
    the user read a plain inspection as if it were the comparison asked for."""
    code = main(["inspect", lenet_prefix(), "--input", SHAPE, "--compare-params",
                 f"{resnet_prefix()}-0000.params"])
    assert code == 2
    assert "needs --compare OTHER" in capsys.readouterr().err
