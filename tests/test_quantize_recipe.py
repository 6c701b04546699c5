"""One post-training recipe (graphopt/quantize/recipe.py) behind every path: `graphopt quantize`
and the pipeline's quantize step write the same int8 model for the same data and options, and
the float fallback returns the best model it tried, not the last."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphopt
from fixtures import build
from graphopt.cli import main
from graphopt.quantize.recipe import RecipeOptions, prepare, quantize_with
from graphopt.quantize.sensitivity import best_step, fallback_until, output_error, sensitivity
from graphopt.runtime import run_onnx

ROOT = Path(__file__).resolve().parents[1]
LENET = str(ROOT / "fixtures" / "models" / "lenet_digits")
DIGITS_INPUT = ["--input", "data:1x1x28x28"]
CALIBRATION_SAMPLES = 256   # enough for stable ranges on the digits; keeps the test fast


@pytest.fixture(scope="module")
def digits():
    return build.digits_split()


@pytest.fixture(scope="module")
def graph():
    return graphopt.load(*build.fixture_path("lenet_digits"),
                         inputs={"data": build.DIGITS_INPUT_SHAPE})


@pytest.fixture(scope="module")
def calibration_npz(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, data=digits[0][:CALIBRATION_SAMPLES])
    return str(path)


def initializers(path) -> dict[str, np.ndarray]:
    return {tensor.name: numpy_helper.to_array(tensor)
            for tensor in onnx.load(str(path)).graph.initializer}


def test_the_pipeline_step_and_graphopt_quantize_write_the_same_model(graph, calibration_npz,
                                                                      tmp_path):
    cli_model = tmp_path / "cli.onnx"
    assert main(["--quiet", "quantize", LENET, *DIGITS_INPUT, "--calib", calibration_npz,
                 "-o", str(cli_model)]) == 0
    out = tmp_path / "pipeline"
    assert main(["--quiet", "optimize", LENET, *DIGITS_INPUT, "--quantize", "int8",
                 "--calib", calibration_npz, "--data", "digits", "--to", "onnx",
                 "--out", str(out)]) == 0
    from_cli, from_pipeline = initializers(cli_model), initializers(out / "model.onnx")
    assert sorted(from_cli) == sorted(from_pipeline)
    for name, value in from_cli.items():
        assert value.dtype == from_pipeline[name].dtype, name
        np.testing.assert_array_equal(value, from_pipeline[name], err_msg=name)
    # both went through bias correction: an int32 bias differs from the uncorrected model's
    options = RecipeOptions(bias_correction=False)
    uncorrected = graphopt.to_onnx(quantize_with(prepare(graph, calibration_npz, options),
                                                 options).graph)
    plain = {t.name: numpy_helper.to_array(t) for t in uncorrected.graph.initializer}
    assert any(value.dtype == np.int32 and not np.array_equal(value, plain[name])
               for name, value in from_cli.items())


@pytest.mark.parametrize("form", ["pipeline file", "optimize flags"])
def test_pipeline_options_turn_equalization_and_bias_correction_off(graph, calibration_npz,
                                                                   tmp_path, form):
    out = tmp_path / "out"
    if form == "pipeline file":
        spec = tmp_path / "pipeline.toml"
        spec.write_text(f'model = "{LENET}"\ninputs = ["data:1x1x28x28"]\nto = ["onnx"]\n'
                        f'data = "digits"\n'
                        f'[[step]]\nkind = "quantize"\ncalib = "{calibration_npz}"\n'
                        f'equalize = false\nbias_correction = false\n')
        assert main(["--quiet", "run", str(spec), "--out", str(out)]) == 0
    else:
        assert main(["--quiet", "optimize", LENET, *DIGITS_INPUT, "--quantize", "int8",
                     "--calib", calibration_npz, "--no-equalize", "--no-bias-correction",
                     "--data", "digits", "--to", "onnx", "--out", str(out)]) == 0
    options = RecipeOptions(equalize=False, bias_correction=False)
    expected = graphopt.to_onnx(quantize_with(prepare(graph, calibration_npz, options),
                                              options).graph)
    written = initializers(out / "model.onnx")
    for tensor in expected.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), written[tensor.name])
    # and the options mattered: the default recipe's model is another one
    default = graphopt.to_onnx(quantize_with(prepare(graph, calibration_npz)).graph)
    assert any(not np.array_equal(numpy_helper.to_array(tensor), written[tensor.name])
               for tensor in default.graph.initializer)


def test_a_missed_budget_returns_the_best_model_tried(graph, digits):
    prepared = prepare(graph, {"data": digits[0][:CALIBRATION_SAMPLES]})
    x, y = digits[2][:128], digits[3][:128]
    convs = ["lenet_conv0_fwd", "lenet_conv1_fwd"]
    # conv0 then conv1 (name order, not sensitivity order): measured 45.6, 46.5 and 45.9 dB, the
    # accuracy the same (99.2%) at every step: the best is the middle one, not the last (8-bit
    # weights on every CPU: the same models wherever the test runs)
    ranking = sorted(sensitivity(prepared.graph, prepared.calibration, x, layers=convs,
                                 bias_data=prepared.data, reduce_range=False),
                     key=lambda item: item.layer)
    result = fallback_until(prepared.graph, prepared.calibration, x, min_sqnr=math.inf,
                            max_accuracy_drop=0.0, labels=y, bias_data=prepared.data,
                            reduce_range=False, ranking=ranking)
    assert not result.met and len(result.steps) == 3         # every ranked layer tried
    best = best_step(result.steps, met=False)
    assert best < len(result.steps) - 1
    assert result.excluded == convs[:best]
    score = lambda error: (error.accuracy, error.sqnr)        # noqa: E731
    assert all(score(result.steps[best]) >= score(error) for error in result.steps)
    # the model returned is the one measured at that step: run it again, same figures
    (reference,) = run_onnx(graphopt.to_onnx(prepared.graph), {"data": x}).values()
    (returned,) = run_onnx(graphopt.to_onnx(result.graph), {"data": x}).values()
    again = output_error([reference], [returned], y)
    assert again.accuracy == result.steps[best].accuracy
    assert again.sqnr == pytest.approx(result.steps[best].sqnr, abs=1e-6)
    assert result.bias_correction is not None and result.bias_correction.corrected
