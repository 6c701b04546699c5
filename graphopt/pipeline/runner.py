"""Runs a pipeline: load, each step in turn with its gate, the deployment artifacts, the report.

    result = run_pipeline(spec, out="build/resnet")   # raises GateError when a gate fails

Every step is measured on the evaluation data and checked against the step before it (or the
model as loaded, ``against = "input"``) by its gate: ``rtol`` (relative error of the outputs),
``min_sqnr`` (dB) and/or ``max_accuracy_drop`` (a fraction: 0.01 is one point, needs labels).
A step's files (``OUT/steps/NAME/model-*``) are written only once its gate has passed, so a
failing step leaves the files of earlier steps as they were; the report is written either way
and names the step that failed. An earlier run's files in ``OUT`` (those its report.json
lists) are removed before this run writes its first file, so none of them passes for this
run's.
Accuracy-aware quantization writes its best model and the report even when its budget is
missed, then fails (exit 1) saying so.

Default gates, when a step names none:

==========  =======================================================================
fold        ``rtol = 1e-4``: folding is exact up to float rounding
prune       ``max_accuracy_drop = 0.05`` with labels, else ``min_sqnr = 20``
distill     ``max_accuracy_drop = 0.01`` with labels, else ``min_sqnr = 20``
quantize    its budget (``max_accuracy_drop``/``min_sqnr``) if given, else
            ``max_accuracy_drop = 0.02`` with labels, else ``min_sqnr = 20``
export      ONNX against MXNet on the final model: ``rtol = 1e-4`` for a float model,
            ``min_sqnr = 30`` for int8 (onnxruntime's integer kernels against MXNet's float
            simulation of the same quantize/dequantize arithmetic)
==========  =======================================================================
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from graphopt.pipeline.data import EvaluationData, evaluation_data
from graphopt.pipeline.measure import (accuracy, mxnet_latency, mxnet_runner, onnx_latency,
                                       onnx_runner, output_agreement, run_in_batches,
                                       size_figures)
from graphopt.pipeline.spec import PipelineError, PipelineSpec, Step
from graphopt.pipeline.steps import STEP_FUNCTIONS, Context, StepOutcome

FINAL_NAME = "model"
DEFAULT_SQNR = 20.0
EXPORT_GATE_FLOAT = {"rtol": 1e-4}
EXPORT_GATE_INT8 = {"min_sqnr": 30.0}


class GateError(Exception):
    """A step failed its gate (exit code 1): not bad input, a result that is not good enough."""

    def __init__(self, message: str, result: "PipelineResult"):
        super().__init__(message)
        self.result = result


@dataclass
class PipelineResult:
    ok: bool
    out: Path
    records: list[dict[str, Any]]
    files: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None


def default_gate(kind: str, labelled: bool, options: dict) -> dict:
    if kind == "fold":
        return {"rtol": 1e-4}
    if kind == "quantize" and ("max_accuracy_drop" in options or "min_sqnr" in options):
        return {key: options[key] for key in ("max_accuracy_drop", "min_sqnr") if key in options}
    drop = {"prune": 0.05, "distill": 0.01, "quantize": 0.02}[kind]
    return {"max_accuracy_drop": drop} if labelled else {"min_sqnr": DEFAULT_SQNR}


def check_gate(gate: dict, figures: dict, reference: dict, agreement: dict) -> dict:
    """The gate's verdict: each criterion with its measured value and whether it holds."""
    checks = []
    if "rtol" in gate:
        checks.append({"criterion": "relative error", "limit": gate["rtol"],
                       "measured": agreement["relative_error"],
                       "passed": agreement["relative_error"] <= gate["rtol"]})
    if "min_sqnr" in gate:
        sqnr = agreement["sqnr_db"]  # None: identical outputs
        checks.append({"criterion": "SQNR dB", "limit": gate["min_sqnr"], "measured": sqnr,
                       "passed": sqnr is None or sqnr >= gate["min_sqnr"]})
    if "max_accuracy_drop" in gate:
        if figures.get("accuracy") is None or reference.get("accuracy") is None:
            raise PipelineError("an accuracy gate needs labelled evaluation data ('digits' or a "
                                ".npz with labels) and a classifier's output")
        drop = reference["accuracy"] - figures["accuracy"]
        checks.append({"criterion": "accuracy drop", "limit": gate["max_accuracy_drop"],
                       "measured": round(drop, 6),
                       "passed": drop <= gate["max_accuracy_drop"] + 1e-12})
    return {"against": gate.get("against", "previous"), "checks": checks,
            "passed": all(check["passed"] for check in checks)}


def gate_text(name: str, verdict: dict) -> str:
    parts = [f"{c['criterion']} {c['measured']} (limit {c['limit']}) "
             f"{'ok' if c['passed'] else 'FAILED'}" for c in verdict["checks"]]
    return f"gate of {name} against the {verdict['against']} model: {'; '.join(parts)}"


class _Run:
    """One run's state: the records so far and how to measure and write."""

    def __init__(self, spec: PipelineSpec, out: Path, log: Callable[[str], None],
                 evaluation: EvaluationData):
        self.spec, self.out, self.log, self.evaluation = spec, out, log, evaluation
        self.records: list[dict[str, Any]] = []
        self.files: dict[str, str] = {}
        self.outputs: dict[str, list] = {}   # record name -> evaluation outputs
        self.report: dict[str, Any] = {}
        self.folder_claimed = False

    def claim_folder(self) -> None:
        """Before this run's first file: an earlier run's files go (see the module docstring);
        bad input found before then leaves them as they were."""
        if not self.folder_claimed:
            _remove_previous_run(self.out)
            self.folder_claimed = True

    def measure(self, name: str, graph, runtime: str, mxnet_graph=None) -> dict:
        import graphopt
        onnx_model = self.to_onnx(graph)
        evaluation = self.evaluation
        run = mxnet_runner(graph) if runtime == "mxnet" else onnx_runner(onnx_model)
        outputs = run_in_batches(run, evaluation, name)
        self.outputs[name] = outputs
        single = evaluation.first(1)
        figures = size_figures(graph, onnx_model)
        figures["latency_mxnet_ms"] = mxnet_latency(mxnet_graph or graph, single,
                                                    self.spec.latency_runs)
        figures["latency_onnxruntime_ms"] = onnx_latency(onnx_model, single, self.spec.latency_runs)
        figures["accuracy"] = accuracy(outputs, evaluation.labels)
        figures["measured_in"] = runtime
        return figures

    def to_onnx(self, graph):
        import graphopt
        from graphopt.onnx import DEFAULT_OPSET
        return graphopt.to_onnx(graph, opset=self.spec.opset or DEFAULT_OPSET,
                                dynamic_batch=not self.spec.static_batch)

    def write_step(self, name: str, graph) -> dict[str, str]:
        import graphopt
        self.claim_folder()
        symbol, params = graphopt.save_mxnet(graph, self.out / "steps" / name / FINAL_NAME)
        return {"mxnet_symbol": str(symbol), "mxnet_params": str(params)}


def run_pipeline(spec: PipelineSpec, out: str | Path | None = None,
                 log: Callable[[str], None] = lambda text: None) -> PipelineResult:
    """Run ``spec``; see the module docstring. ``log`` receives one line per event."""
    import graphopt
    from graphopt.cli import parse_input, resolve_model
    out = Path(out) if out is not None else (Path(spec.path(spec.out)) if spec.out else None)
    if out is None:
        raise PipelineError("give the output folder: --out DIR, or out = \"DIR\" in the file")
    inputs = [parse_input(text) for text in spec.inputs]
    symbol, params = resolve_model(spec.path(spec.model), spec.path(spec.params))
    _refuse_overwriting_the_input(out, symbol, params)
    graph = graphopt.load(symbol, params, inputs={i.name: i.shape for i in inputs} or None,
                          dtypes={i.name: i.dtype for i in inputs if i.dtype} or None)
    run = _Run(spec, out, log, evaluation_data(graph, spec.path(spec.data), spec.samples,
                                               spec.seed))
    started = time.perf_counter()
    log(f"loaded {symbol.name}; evaluating on {run.evaluation.source}")
    input_figures = run.measure("input", graph, "mxnet")
    _check_accuracy_gates(spec, input_figures)
    run.records.append({"name": "input", "kind": "input", "figures": input_figures,
                        "status": "ok", "model": str(symbol)})
    context = Context(original=graph, current=graph, evaluation=run.evaluation,
                      resolve=spec.path, outputs=spec.to)
    marks: dict[str, set[str]] = {}
    failure = None
    last_outcome: StepOutcome | None = None
    for step in spec.steps:
        failure, outcome = _run_step(run, context, step)
        last_outcome = outcome
        if outcome.graph is context.current:  # the picture shows only what the model went through
            for mark, names in outcome.marks.items():
                marks.setdefault(mark, set()).update(names)
        if failure is not None:
            break
    # a missed quantization budget stops the run but still exports the best model it found
    budget_missed = (failure is not None and last_outcome is not None
                     and last_outcome.budget is not None and not last_outcome.budget["met"]
                     and last_outcome.graph is context.current)
    if failure is None or budget_missed:
        export_failure = _export(run, context, last_outcome)
        failure = failure or export_failure
    seconds = round(time.perf_counter() - started, 2)
    _write_report(run, _report(spec, run, marks, failure, seconds), context.current)
    result = PipelineResult(failure is None, out, run.records, run.files, run.report, failure)
    if failure is not None:
        raise GateError(failure, result)
    return result


def _refuse_overwriting_the_input(out: Path, symbol: Path, params: Path) -> None:
    """The run writes ``OUT/model-symbol.json``, ``OUT/model-0000.params``, ``OUT/model.onnx``
    and ``OUT/steps/`` (and removes an earlier run's): a model loaded from there would be
    replaced or removed."""
    written = {(out / name).resolve() for name in (f"{FINAL_NAME}-symbol.json",
                                                   f"{FINAL_NAME}-0000.params",
                                                   f"{FINAL_NAME}.onnx")}
    steps = (out / "steps").resolve()  # an earlier run's step files: removed by this run
    clashes = [str(path) for path in (symbol, params) if Path(path).resolve() in written
               or Path(path).resolve().is_relative_to(steps)]
    if clashes:
        raise PipelineError(f"the output folder {str(out)!r} is where the input model is "
                            f"({', '.join(clashes)}): the run would overwrite it; give another "
                            f"output folder")


def _check_accuracy_gates(spec: PipelineSpec, input_figures: dict) -> None:
    """Refuse an accuracy gate or budget that cannot be measured before any step runs (it was
    found after the earlier steps had run and written their files, with no report)."""
    if input_figures["accuracy"] is not None:
        return
    for step in spec.steps:
        if "max_accuracy_drop" in step.gate or (step.kind == "quantize"
                                                and "max_accuracy_drop" in step.options):
            raise PipelineError(f"step {step.name}: an accuracy gate needs labelled evaluation "
                                f"data ('digits' or a .npz with labels) and a classifier's "
                                f"output (N, classes)")


def _remove_previous_run(out: Path) -> None:
    """Delete the files an earlier run into ``out`` listed in its report.json (its deployment
    files, its steps' files, the report itself), so that when this run stops early no model of
    the earlier run sits in the folder looking like this run's. Only files the report names, by
    their names inside ``out``: whatever else the user keeps there stays."""
    try:
        previous = json.loads((out / "report.json").read_text(encoding="utf-8"))
        listed = [out / Path(path).name for path in previous.get("files", {}).values()]
        for record in previous.get("steps", []):
            if record.get("kind") not in ("input", "export") and record.get("files"):
                folder = out / "steps" / Path(record["name"]).name
                listed += [folder / Path(path).name for path in record["files"].values()]
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return  # no earlier report (or not one of ours): nothing known to remove
    for path in [p for p in listed if p.name != "report.json"] + [out / "report.json"]:
        path.unlink(missing_ok=True)
        if (path.parent.parent == out / "steps" and path.parent.is_dir()
                and not any(path.parent.iterdir())):
            path.parent.rmdir()


def _run_step(run: _Run, context: Context, step: Step):
    """Run one step, measure it, check its gate, write its files if it passed (or if it is a
    quantization that missed its budget: its best model is still written)."""
    labelled = run.evaluation.labels is not None
    run.log(f"step {step.name}: {step.kind} {json.dumps(step.options)}")
    started = time.perf_counter()
    outcome = STEP_FUNCTIONS[step.kind](context, step)
    figures = run.measure(step.name, outcome.graph, outcome.runtime, outcome.mxnet_graph)
    gate = step.gate or default_gate(step.kind, labelled, step.options)
    reference_name = "input" if gate.get("against") == "input" else run.records[-1]["name"]
    reference = next(r for r in run.records if r["name"] == reference_name)
    agreement = output_agreement(run.outputs[reference_name], run.outputs[step.name])
    figures.update(agreement)
    verdict = check_gate(gate, figures, reference["figures"], agreement)
    verdict["reference"] = reference_name
    record = {"name": step.name, "kind": step.kind, "options": step.options, "gate": verdict,
              "figures": figures, "details": outcome.details,
              "seconds": round(time.perf_counter() - started, 2)}
    if outcome.budget is not None:
        record["budget"] = {k: v for k, v in outcome.budget.items() if k != "sensitivity"}
        record["sensitivity"] = outcome.budget["sensitivity"]
    run.log(gate_text(step.name, verdict))
    budget_missed = outcome.budget is not None and not outcome.budget["met"]
    if verdict["passed"] or budget_missed:
        record["files"] = run.write_step(step.name, outcome.graph)
        context.current = outcome.graph
    record["status"] = "ok" if verdict["passed"] else "gate failed"
    run.records.append(record)
    if verdict["passed"]:
        return None, outcome
    message = f"step {step.name} failed its gate: {gate_text(step.name, verdict)}"
    if budget_missed:
        message += ("; the accuracy budget was missed: the best model found (float fallback "
                    f"{outcome.budget['float_fallback']}) and the report are written")
    return message, outcome


def _export(run: _Run, context: Context, last: StepOutcome | None) -> str | None:
    """Write the deployment files (ONNX, MXNet) of the final model and compare ONNX with MXNet
    layer by layer; returns a failure message when the export gate fails."""
    import graphopt
    from graphopt.compare import compare
    from graphopt.onnx.emit import save
    graph = context.current
    quantized = last is not None and last.quantized and last.graph is graph
    record: dict[str, Any] = {"name": "export", "kind": "export", "files": {}}
    onnx_model = run.to_onnx(graph)
    sample = run.evaluation.first(min(16, run.evaluation.count))
    comparison = compare(graph, None, onnx_model, data=sample, per_layer=True)
    reference = mxnet_runner(graph)(sample)
    actual = onnx_runner(onnx_model)(sample)
    agreement = output_agreement(reference, actual)
    gate = EXPORT_GATE_INT8 if quantized else EXPORT_GATE_FLOAT
    verdict = check_gate(gate, {}, {}, agreement)
    verdict["against"] = verdict["reference"] = "MXNet"  # the same graph, run by MXNet
    record.update({"gate": verdict, "figures": agreement,
                   "per_layer": [{"name": layer.name, "op": layer.op,
                                  "relative_error": _finite(layer.relative_error)}
                                 for layer in comparison.layers],
                   "first_divergent": (comparison.first_divergent.node
                                       if comparison.first_divergent else None)})
    run.log(gate_text("export", verdict))
    run.claim_folder()
    if "onnx" in run.spec.to:
        path = run.out / f"{FINAL_NAME}.onnx"
        save(onnx_model, path)
        record["files"]["onnx"] = str(path)
    if quantized and last.mxnet_graph is not None:
        record["mxnet_int8"] = _mxnet_int8_figures(run, last.mxnet_graph)
        run.log(f"MXNet's int8 model (not gated, see the README): {record['mxnet_int8']}")
    if "mxnet" in run.spec.to:
        mxnet_graph = last.mxnet_graph if quantized and last.mxnet_graph is not None else graph
        symbol, params = graphopt.save_mxnet(mxnet_graph, run.out / FINAL_NAME)
        record["files"].update({"mxnet_symbol": str(symbol), "mxnet_params": str(params)})
    record["status"] = "ok" if verdict["passed"] else "gate failed"
    run.records.append(record)
    run.files.update(record["files"])
    return None if verdict["passed"] else f"export failed its gate: {gate_text('export', verdict)}"


def _mxnet_int8_figures(run: _Run, mxnet_graph) -> dict:
    """MXNet's own int8 model (oneDNN kernels, its own grid) on the evaluation data: its
    accuracy and its outputs against the float model quantized (the record before the last)."""
    outputs = run_in_batches(mxnet_runner(mxnet_graph), run.evaluation, "MXNet int8")
    float_outputs = run.outputs[run.records[-2]["name"]]
    return {"accuracy": accuracy(outputs, run.evaluation.labels),
            **output_agreement(float_outputs, outputs)}


def _finite(value: float) -> float | None:
    import math
    return value if math.isfinite(value) else None


def _report(spec: PipelineSpec, run: _Run, marks: dict[str, set[str]], failure: str | None,
            seconds: float) -> dict:
    import platform
    return {
        "ok": failure is None, "failure": failure, "seconds": seconds,
        "pipeline": {"source": spec.source, "model": spec.model, "inputs": spec.inputs,
                     "to": spec.to, "steps": [step.to_dict() for step in spec.steps]},
        "evaluation": run.evaluation.describe(),
        "steps": run.records,
        "files": run.files,
        "marks": {mark: sorted(names) for mark, names in marks.items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
    }


def _write_report(run: _Run, report: dict, graph) -> None:
    """report.json and report.html (which draws ``graph``, the last model the run kept)."""
    from graphopt._files import atomic_write_bytes
    from graphopt.pipeline.report_html import render_html
    json_path, html_path = run.out / "report.json", run.out / "report.html"
    run.files.update({"report_json": str(json_path), "report_html": str(html_path)})
    report["files"] = dict(run.files)
    page = render_html(report, graph)  # both made before either is written
    run.claim_folder()
    atomic_write_bytes(json_path, json.dumps(report, indent=2, default=str).encode())
    atomic_write_bytes(html_path, page.encode())
    run.report = report

