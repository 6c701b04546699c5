"""One function per step kind: ``(context, step) -> StepOutcome``. Each calls the public API of
its issue (rewrite, prune, distill, quantize) and returns the new graph, how its outputs are run
(MXNet for float models, onnxruntime for the QDQ model, as deployed), what it changed (for the
graph picture) and its own report.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

import numpy as np

from graphopt.ir.graph import Graph
from graphopt.pipeline.data import EvaluationData, calibration_data
from graphopt.pipeline.spec import PipelineError, Step


@dataclass
class Context:
    """What the steps share: the model as loaded, the graph so far, the evaluation data."""
    original: Graph
    current: Graph
    evaluation: EvaluationData
    resolve: Callable[[str | None], str | None]
    outputs: list[str]


@dataclass
class StepOutcome:
    graph: Graph
    runtime: str                       # "mxnet" or "onnxruntime": where its outputs are measured
    details: dict[str, Any]
    marks: dict[str, list[str]] = field(default_factory=dict)   # mark -> node names
    quantized: bool = False
    budget: dict[str, Any] | None = None     # accuracy-aware quantization: the budget verdict
    mxnet_graph: Graph | None = None         # the MXNet artifact when it is not ``graph`` itself


def fold(context: Context, step: Step) -> StepOutcome:
    import graphopt
    graph, report = graphopt.rewrite(context.current, phases=step.options.get("phases"))
    rewritten = sorted(node.name for node in graph.nodes() if node.rule is not None
                       and not node.is_variable)
    return StepOutcome(graph, "mxnet", {"rules_fired": {k: v for k, v in report.fired().items() if v},
                                        "ops_before": report.ops_before,
                                        "ops_after": report.ops_after},
                       marks={"rewritten": rewritten})


def prune(context: Context, step: Step) -> StepOutcome:
    import graphopt
    options = dict(step.options)
    method = options.pop("method", "filters" if "ratio" in options else "magnitude")
    drop = options.pop("drop", method == "filters")
    pruned, report = graphopt.prune(context.current, method=method, drop=drop,
                                    measure_storage=False, **options)
    layers = [layer.name for layer in report.layers]
    return StepOutcome(pruned, "mxnet", report.to_dict(), marks={"pruned": layers})


def distill(context: Context, step: Step) -> StepOutcome:
    import graphopt
    options = dict(step.options)
    teacher_name = options.pop("teacher", "input")
    teacher = {"input": context.original, "previous": context.current}.get(teacher_name)
    if teacher is None:
        teacher = context.resolve(teacher_name)
    train = context.resolve(options.pop("train_data", "digits"))
    # the digits validate on their held-out split; other data only when named (else the last
    # epoch is kept): validating on the training set would pick an epoch by its training fit
    val = context.resolve(options.pop("val_data", "digits" if train == "digits" else None))
    result = graphopt.distill(teacher, context.current, train, val, **options)
    details = result.to_dict()
    details["teacher"] = teacher_name
    return StepOutcome(result.student, "mxnet", details)


def quantize(context: Context, step: Step) -> StepOutcome:
    """int8 QDQ for onnxruntime (and MXNet's own int8 model when MXNet is an output), by the
    recipe of ``graphopt quantize`` (:mod:`graphopt.quantize.recipe`: fold, equalize, calibrate,
    quantize, correct biases), so both give the same model for the same options. With
    ``max_accuracy_drop`` or ``min_sqnr`` the most sensitive layers fall back to float
    (:func:`graphopt.quantize.fallback_until`) until the budget holds; when it never holds the
    best model tried is kept, and the outcome says the budget was missed."""
    from graphopt.quantize import fallback_until
    from graphopt.quantize.recipe import RecipeOptions, prepare, quantize_with
    options = dict(step.options)
    recipe = RecipeOptions(**{option.name: options[option.name] for option in fields(RecipeOptions)
                              if option.name in options})   # the spec's keys, checked there
    recipe = replace(recipe, exclude=tuple(recipe.exclude))
    source = calibration_data(context.current, context.resolve(options.get("calib")),
                              context.evaluation)
    prepared = prepare(context.current, source, recipe)
    graph, calibration = prepared.graph, prepared.calibration
    exclude = list(recipe.exclude)
    if recipe.exclude_first_last:
        from graphopt.quantize.qdq import resolve_exclusions
        exclude = sorted(resolve_exclusions(graph, exclude, True))
    budget = None
    if "max_accuracy_drop" in options or "min_sqnr" in options:
        labels = context.evaluation.labels
        if "max_accuracy_drop" in options and labels is None:
            raise PipelineError("max_accuracy_drop needs labelled evaluation data (data = "
                                "'digits' or a .npz with labels); use min_sqnr without labels")
        result = fallback_until(graph, calibration, context.evaluation.inputs,
                                min_sqnr=options.get("min_sqnr"),
                                max_accuracy_drop=options.get("max_accuracy_drop"), labels=labels,
                                exclude=exclude, activations=recipe.activations,
                                per_channel=recipe.per_channel,
                                bias_data=prepared.data if recipe.bias_correction else None)
        order = [item.layer for item in result.ranking]
        qgraph, report, bias_report = result.graph, result.report, result.bias_correction
        budget = {"max_accuracy_drop": options.get("max_accuracy_drop"),
                  "min_sqnr": options.get("min_sqnr"), "met": result.met,
                  "float_fallback": list(result.excluded), "tried": len(result.steps),
                  "steps": [_step_dict(error, order[:k]) for k, error in enumerate(result.steps)],
                  "sensitivity": [item.as_dict() for item in result.ranking]}
        exclude = list(result.excluded) + exclude
    else:
        quantized = quantize_with(prepared, recipe)
        qgraph, report, bias_report = quantized.graph, quantized.report, quantized.bias_correction
    mxnet_graph = None
    if "mxnet" in context.outputs:
        from graphopt.quantize import to_mxnet_int8
        mxnet_graph, _ = to_mxnet_int8(graph, calibration, exclude=exclude,
                                       granularity="channel-wise" if recipe.per_channel
                                       else "tensor-wise")
    details = report.to_dict()
    details["calibration"] = {"method": recipe.method,
                              "data": options.get("calib") or context.evaluation.source}
    details["equalize_rewrites"] = prepared.equalize_rewrites
    if bias_report is not None:
        details["bias_correction"] = bias_report.to_dict()
    marks = {"quantized": list(report.quantized),
             "float fallback": list(budget["float_fallback"]) if budget else []}
    return StepOutcome(qgraph, "onnxruntime", details, marks=marks, quantized=True, budget=budget,
                       mxnet_graph=mxnet_graph)


def _step_dict(error, fallback: list[str]) -> dict:
    sqnr = error.sqnr
    return {"float_fallback": list(fallback), "accuracy": error.accuracy,
            "sqnr_db": None if np.isinf(sqnr) else round(float(sqnr), 3),
            "relative_error": error.relative_error, "top1_agreement": error.top1_agreement}


STEP_FUNCTIONS: dict[str, Callable[[Context, Step], StepOutcome]] = {
    "fold": fold, "prune": prune, "distill": distill, "quantize": quantize,
}
