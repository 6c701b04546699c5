"""`graphopt optimize ... --out DIR` and `graphopt run pipeline.toml` on the digits models:
each step gated against the one before, the deployment files, the report, the exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graphopt.cli import main
from graphopt.pipeline import load_pipeline_file
from graphopt.pipeline.report_html import format_figure
from graphopt.runtime import run_mxnet, run_onnx

ROOT = Path(__file__).resolve().parents[1]
LENET = str(ROOT / "fixtures" / "models" / "lenet_digits")
RESNET = str(ROOT / "fixtures" / "models" / "resnet_digits")
DIGITS_INPUT = ["--input", "data:1x1x28x28"]


@pytest.fixture(scope="module")
def held_out():
    from graphopt.distill.data import digits
    _, _, x, y = digits()
    return x, y


def optimize(*args) -> int:
    return main(["--quiet", "optimize", *args])


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def resnet_chain(tmp_path_factory):
    """The whole chain on the digits ResNet: fold -> prune half the filters -> distill from
    the unpruned model -> int8 with an accuracy budget -> ONNX + MXNet."""
    out = tmp_path_factory.mktemp("resnet") / "out"
    code = optimize(RESNET, *DIGITS_INPUT, "--data", "digits", "--fold-bn",
                    "--prune", "filters:0.5",
                    # pruning half the filters costs most of the accuracy (98.9% -> 13%,
                    # measured); distillation wins it back, so the prune gate is loose...
                    "--gate", "prune:max_accuracy_drop=0.95",
                    "--distill", "epochs=2,learning_rate=3e-3,lr_schedule=cosine",
                    # ...and the distill gate asks it to improve on the pruned model
                    "--gate", "distill:max_accuracy_drop=-0.2",
                    "--quantize", "int8", "--calib", "digits", "--max-accuracy-drop", "0.02",
                    "--to", "onnx,mxnet", "--out", str(out))
    return code, out


def test_the_chain_passes_its_gates_and_writes_validated_artifacts(resnet_chain, held_out):
    code, out = resnet_chain
    report = read_report(out)
    assert code == 0, report["failure"]
    steps = {record["name"]: record for record in report["steps"]}
    assert list(steps) == ["input", "01-fold", "02-prune", "03-distill", "04-quantize", "export"]
    assert all(record["gate"]["passed"] for name, record in steps.items() if name != "input")
    # folding is exact; pruning shrinks the model (parameters and MACs about a quarter: every
    # conv keeps half its inputs and half its outputs); distillation wins accuracy back
    assert steps["01-fold"]["figures"]["relative_error"] < 1e-4
    assert steps["02-prune"]["figures"]["params"] < 0.4 * steps["01-fold"]["figures"]["params"]
    assert steps["02-prune"]["figures"]["macs"] < 0.3 * steps["01-fold"]["figures"]["macs"]
    assert steps["03-distill"]["figures"]["accuracy"] >= steps["02-prune"]["figures"]["accuracy"] + 0.2
    quantized = steps["04-quantize"]
    assert quantized["budget"]["met"]
    # int8 weights are a quarter of float32's; on a model this small (20 k parameters) the
    # graph itself, scales and zero points keep the file at about half (0.52 measured)
    assert quantized["figures"]["onnx_bytes"] < 0.6 * steps["03-distill"]["figures"]["onnx_bytes"]
    # the ONNX file written is the model measured: same accuracy on the held-out digits
    x, y = held_out
    (logits,) = run_onnx(out / "model.onnx", {"data": x}).values()
    assert np.mean(logits.argmax(1) == y) == pytest.approx(quantized["figures"]["accuracy"])
    # MXNet's own int8 model runs, and agrees with the distilled float model on most digits
    (int8,) = run_mxnet((out / "model-symbol.json", out / "model-0000.params"), {"data": x}).values()
    mxnet_accuracy = np.mean(int8.argmax(1) == y)
    assert mxnet_accuracy > quantized["figures"]["accuracy"] - 0.05
    assert steps["export"]["mxnet_int8"]["accuracy"] == pytest.approx(mxnet_accuracy)
    assert steps["export"]["per_layer"]
    # every step's model is kept for inspection
    for name in ("01-fold", "02-prune", "03-distill", "04-quantize"):
        assert (out / "steps" / name / "model-symbol.json").is_file()
    assert set(report["marks"]) >= {"rewritten", "pruned", "quantized"}


def test_the_html_report_shows_the_json_figures(resnet_chain):
    _, out = resnet_chain
    report = read_report(out)
    page = (out / "report.html").read_text()
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for record in report["steps"]:
        if record["kind"] == "export":
            continue
        row = page.split(f'data-step="{record["name"]}"', 1)[1].split("</tr>", 1)[0]
        for key in ("params", "macs", "onnx_bytes", "accuracy"):
            assert f'data-key="{key}">{format_figure(key, record["figures"][key])}<' in row
    assert 'id="graph-picture"' in page and 'id="error-plot"' in page


def test_a_failing_gate_exits_1_and_leaves_the_earlier_steps(tmp_path, held_out):
    out = tmp_path / "out"
    code = optimize(RESNET, *DIGITS_INPUT, "--data", "digits", "--fold-bn",
                    "--prune", "filters:0.5", "--gate", "prune:max_accuracy_drop=0.01",
                    "--out", str(out))
    assert code == 1
    report = read_report(out)
    assert not report["ok"] and "02-prune" in report["failure"]
    prune = report["steps"][-1]
    assert prune["status"] == "gate failed" and "files" not in prune
    assert not (out / "steps" / "02-prune").exists() and not (out / "model.onnx").exists()
    # the report's picture is of the folded model: nothing in it is marked pruned
    assert "pruned" not in report["marks"] and report["marks"]["rewritten"]
    assert report["files"] == {"report_json": str(out / "report.json"),
                               "report_html": str(out / "report.html")}
    # the folded model of step 1 is there, whole, and computes what the original does
    x, _ = held_out
    folded = run_mxnet((out / "steps/01-fold/model-symbol.json", out / "steps/01-fold/model-0000.params"),
                       {"data": x[:32]})
    original = run_mxnet((RESNET + "-symbol.json", RESNET + "-0000.params"), {"data": x[:32]})
    np.testing.assert_allclose(*folded.values(), *original.values(), rtol=1e-4, atol=1e-4)


def test_a_failed_run_into_an_earlier_runs_folder_leaves_none_of_its_models(tmp_path):
    out = tmp_path / "out"
    assert optimize(LENET, *DIGITS_INPUT, "--data", "digits", "--fold-bn", "--out", str(out)) == 0
    assert (out / "model.onnx").is_file() and (out / "steps/01-fold/model-symbol.json").is_file()
    (out / "notes.txt").write_text("the user's own file")
    # bad input found by a step, before this run wrote anything: the earlier run stays whole
    assert optimize(LENET, *DIGITS_INPUT, "--prune", "filters:1.5", "--out", str(out)) == 2
    assert (out / "model.onnx").is_file() and read_report(out)["ok"]
    # pruning 90% of LeNet's filters costs accuracy (99.4% -> 16%, measured): a zero-drop gate fails
    code = optimize(LENET, *DIGITS_INPUT, "--data", "digits", "--prune", "filters:0.9",
                    "--gate", "prune:max_accuracy_drop=0", "--out", str(out))
    assert code == 1
    # the earlier run's deployment files and step files are gone: a model.onnx left there would
    # pass for this failed run's output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "notes.txt", "report.html", "report.json"]


def test_a_missed_budget_still_writes_the_best_model_and_says_so(tmp_path, held_out):
    out = tmp_path / "out"
    # 200 dB is beyond any int8 model (float32 rounding alone is about 140 dB)
    code = optimize(LENET, *DIGITS_INPUT, "--data", "digits", "--quantize", "int8",
                    "--calib", "digits", "--min-sqnr", "200", "--out", str(out))
    assert code == 1
    report = read_report(out)
    budget = report["steps"][1]["budget"]
    assert not budget["met"] and "budget was missed" in report["failure"]
    # the best model tried (highest SQNR; LeNet's held-out accuracy is the same for all) is the
    # one written, not the last one tried
    best = max(budget["steps"], key=lambda s: (s["accuracy"], s["sqnr_db"] or 1e9))
    assert budget["float_fallback"] == best["float_fallback"]
    x, y = held_out
    (logits,) = run_onnx(out / "model.onnx", {"data": x}).values()
    assert np.mean(logits.argmax(1) == y) == pytest.approx(best["accuracy"])
    assert "MISSED" in (out / "report.html").read_text()


def test_seeded_inputs_give_numeric_gates(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["optimize", LENET, *DIGITS_INPUT, "--fold-bn", "--quantize", "int8",
                 "--samples", "8", "--opset", "17", "--json", "--out", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["evaluation"] == {"source": "8 seeded inputs (seed 0)", "samples": 8,
                                    "labelled": False}
    quantize = report["steps"][2]
    assert [c["criterion"] for c in quantize["gate"]["checks"]] == ["SQNR dB"]
    assert quantize["figures"]["accuracy"] is None
    import onnx
    model = onnx.load(out / "model.onnx")
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]


def test_the_users_labelled_npz_gives_accuracy_gates(tmp_path, held_out):
    x, y = held_out
    np.savez(tmp_path / "eval.npz", data=x[:100], label=y[:100])
    out = tmp_path / "out"
    assert optimize(LENET, *DIGITS_INPUT, "--data", str(tmp_path / "eval.npz"), "--quantize",
                    "int8", "--calib", str(tmp_path / "eval.npz"), "--out", str(out)) == 0
    report = read_report(out)
    assert report["evaluation"]["samples"] == 100 and report["evaluation"]["labelled"]
    (logits,) = run_mxnet((LENET + "-symbol.json", LENET + "-0000.params"), {"data": x[:100]}).values()
    assert report["steps"][0]["figures"]["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y[:100]))
    assert report["steps"][1]["gate"]["checks"][0]["criterion"] == "accuracy drop"


def test_an_output_folder_holding_the_input_model_is_refused(tmp_path, capsys):
    import shutil
    for suffix in ("-symbol.json", "-0000.params"):
        shutil.copy(LENET + suffix, tmp_path / f"model{suffix}")
    before = (tmp_path / "model-0000.params").read_bytes()
    # the run writes OUT/model-symbol.json and OUT/model-0000.params: it replaced its own input
    assert optimize(str(tmp_path / "model"), *DIGITS_INPUT, "--fold-bn", "--out",
                    str(tmp_path)) == 2
    assert "the run would overwrite it" in capsys.readouterr().err
    assert (tmp_path / "model-0000.params").read_bytes() == before
    # an earlier run's step model, chained into a run with the same folder: it removed it
    steps = tmp_path / "steps" / "01-fold"
    steps.mkdir(parents=True)
    shutil.move(tmp_path / "model-symbol.json", steps / "model-symbol.json")
    shutil.move(tmp_path / "model-0000.params", steps / "model-0000.params")
    assert optimize(str(steps / "model"), *DIGITS_INPUT, "--fold-bn", "--out", str(tmp_path)) == 2
    assert "the run would overwrite it" in capsys.readouterr().err


def test_evaluation_samples_of_another_size_are_refused(tmp_path, capsys, held_out):
    x, y = held_out
    np.savez(tmp_path / "eval.npz", data=x[:100, :, :14, :14], label=y[:100])
    # the digits ResNet ends in global pooling: it ran on 14x14 images and gated on them
    assert optimize(RESNET, *DIGITS_INPUT, "--data", str(tmp_path / "eval.npz"), "--fold-bn",
                    "--out", str(tmp_path / "out")) == 2
    assert "samples of 'data' have shape (1, 14, 14), but the model was loaded for (1, 1, 28, 28)" \
        in capsys.readouterr().err


def test_an_accuracy_gate_without_labels_is_refused_before_any_step_runs(tmp_path, capsys):
    out = tmp_path / "out"
    assert optimize(LENET, *DIGITS_INPUT, "--fold-bn", "--prune", "filters:0.5",
                    "--gate", "prune:max_accuracy_drop=0.1", "--out", str(out)) == 2
    assert "step 02-prune: an accuracy gate needs labelled" in capsys.readouterr().err
    assert not out.exists()  # the fold step used to run and write its files first


@pytest.mark.parametrize("labels, message", [
    # (N, 1) labels broadcast against (N,) predictions: 10.5% accuracy reported, measured
    (lambda y: y[:, None], "labels must be class indices of shape (N,), got shape (100, 1)"),
    (lambda y: y[:60], "60 labels for inputs of {'data': 100} samples"),   # reported 0%
    (lambda y: y + 0.5, "labels must be whole class indices"),             # reported 0%
])
def test_bad_labels_in_the_evaluation_npz_are_refused(tmp_path, capsys, held_out, labels,
                                                      message):
    x, y = held_out
    np.savez(tmp_path / "eval.npz", data=x[:100], label=labels(y[:100]))
    assert optimize(LENET, *DIGITS_INPUT, "--data", str(tmp_path / "eval.npz"), "--fold-bn",
                    "--out", str(tmp_path / "out")) == 2
    assert message in capsys.readouterr().err


PIPELINE = """\
model = "{model}"
inputs = ["data:1x1x28x28"]
data = "digits"
out = "build"

[[step]]
kind = "fold"

[[step]]
kind = "prune"
method = "magnitude"
{prune_line}
gate = {{ max_accuracy_drop = 0.05 }}
"""


def test_a_pipeline_file_runs_with_paths_relative_to_it(tmp_path):
    (tmp_path / "pipeline.toml").write_text(PIPELINE.format(model=LENET, prune_line="sparsity = 0.5"))
    assert main(["--quiet", "run", str(tmp_path / "pipeline.toml")]) == 0
    report = read_report(tmp_path / "build")
    assert report["ok"] and report["steps"][2]["kind"] == "prune"
    assert (tmp_path / "build" / "model.onnx").is_file()


@pytest.mark.parametrize("prune_line, message", [
    ("ratoi = 0.5", "line 12: unknown key 'ratoi' in [[step]] #2 (prune) (known: "),
    ('sparsity = "half"', "line 12: 'sparsity' in [[step]] #2 (prune) must be a number, not str"),
    ("sparsity = 0.5\nbogus.key = 1", "line 13: unknown key 'bogus'"),
    ("sparsity = 0.5 oops", "not valid TOML"),
    ('sparsity = 0.5\nscope = "everywhere"',
     "line 13: 'scope' in [[step]] #2 (prune) must be one of layer, global, not 'everywhere'"),
])
def test_a_bad_pipeline_file_is_refused_with_its_line(tmp_path, capsys, prune_line, message):
    path = tmp_path / "pipeline.toml"
    path.write_text(PIPELINE.format(model=LENET, prune_line=prune_line))
    assert main(["run", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "build").exists()


@pytest.mark.parametrize("replace, message", [
    (('"data:1x1x28x28"', '"data:1xAx28"'), "line 2: 'inputs': expected NAME:DIMxDIM"),
    (('kind = "fold"', 'kind = "fold"\nname = "../escape"'), "line 8: the name of [[step]] #1"),
    (('kind = "fold"', 'kind = "fold"\nname = ".."'), "line 8: the name of [[step]] #1"),
    # both ended in a ValueError traceback with exit code 1, the code of a failed gate
    (('out = "build"', 'out = "build"\nopset = 5'), "line 5: 'opset' must lie in 13.."),
    (('out = "build"', 'out = "build"\nseed = -1'), "line 5: 'seed' must be at least 0"),
    # the report's own record names: a step called "input" was gated against its own outputs
    (('kind = "fold"', 'kind = "fold"\nname = "input"'), "line 8: the name of [[step]] #1 (fold) ('input') is the report's"),
    (('kind = "fold"', 'kind = "fuse"'), "line 7: [[step]] #1: 'kind' must be one of fold, prune"),
    (('kind = "fold"', 'kind = "quantize"'), "line 10: [[step]] #2 (prune) comes after the quantize"),
    (("max_accuracy_drop = 0.05", "max_acc = 0.05"),
     "line 13: unknown key 'max_acc' in the gate of [[step]] #2 (prune)"),
])
def test_bad_top_level_values_are_refused_with_their_line(tmp_path, capsys, replace, message):
    path = tmp_path / "pipeline.toml"
    path.write_text(PIPELINE.format(model=LENET, prune_line="sparsity = 0.5").replace(*replace))
    assert main(["run", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_the_example_pipeline_file_is_valid():
    spec = load_pipeline_file(ROOT / "examples" / "resnet_digits.pipeline.toml")
    assert [step.kind for step in spec.steps] == ["fold", "prune", "distill", "quantize"]
    assert Path(spec.path(spec.model)).resolve() == Path(RESNET)


def test_bad_flags_exit_2(tmp_path, capsys):
    assert optimize(LENET, *DIGITS_INPUT, "--prune", "half", "--out", str(tmp_path)) == 2
    assert "expected filters:RATIO" in capsys.readouterr().err
    assert optimize(LENET, *DIGITS_INPUT, "--quantize", "int8", "--max-accuracy-drop", "0.01",
                    "--out", str(tmp_path)) == 2   # an accuracy budget without labelled data
    assert "labelled" in capsys.readouterr().err
    assert optimize(LENET, *DIGITS_INPUT, "--fold-bn", "-o", str(tmp_path / "m"),
                    "--out", str(tmp_path)) == 2   # -o is the single-output form's
    assert "not of the pipeline" in capsys.readouterr().err
    # distillation's training data is the digits only for a pipeline on the digits: a model
    # evaluated on the user's data was trained on the digits, silently, when the shapes fit
    assert optimize(LENET, *DIGITS_INPUT, "--distill", "1", "--out", str(tmp_path)) == 2
    assert "(distill) needs 'train_data'" in capsys.readouterr().err
    # a gate given to the single-output form was ignored, never checked
    assert optimize(LENET, *DIGITS_INPUT, "-o", str(tmp_path / "m.onnx"), "--to", "onnx",
                    "--gate", "fold:rtol=1e-9") == 2
    assert "--gate: flags of the pipeline" in capsys.readouterr().err


def test_the_single_output_form_of_optimize_is_unchanged(tmp_path):
    assert optimize(LENET, *DIGITS_INPUT, "-o", str(tmp_path / "m.onnx"), "--to", "onnx") == 0
    assert (tmp_path / "m.onnx").is_file()
    assert optimize(LENET, *DIGITS_INPUT, "-o", str(tmp_path / "m"), "--to", "onnx,mxnet") == 2
