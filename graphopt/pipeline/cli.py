"""``graphopt run pipeline.toml`` and the pipeline form of ``graphopt optimize``::

    graphopt optimize MODEL --input data:1x1x28x28 --data digits --fold-bn \\
        --prune filters:0.5 --distill epochs=5,learning_rate=3e-3 \\
        --quantize int8 --calib digits --max-accuracy-drop 0.01 --to onnx,mxnet --out DIR

``optimize`` runs the pipeline when given ``--out DIR`` or any step flag; otherwise it is the
rewrite command it always was (``-o OUT --to onnx|mxnet``). The flags build the same document
as a pipeline file and go through the same validation (:mod:`graphopt.pipeline.spec`).

Exit codes: 0 every gate passed; 1 a gate failed (the report says which; earlier steps' files
stay; a missed quantization budget still writes its best model); 2 bad input (a bad flag or
pipeline file, a missing model, unusable data).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from graphopt.pipeline.spec import STEPS, PipelineError

STEP_FLAGS = ("fold_bn", "prune", "distill", "quantize")
EXIT_CODES = ("exit codes: 0 every gate passed; 1 a gate failed (earlier steps' files stay, the "
              "report says which step); 2 bad input (flags, pipeline file, model, data)")


def add_commands(commands) -> None:
    p = commands.add_parser("run", help="run a pipeline file (pipeline.toml): steps, gates, "
                                        "deployment files and report", epilog=EXIT_CODES)
    p.add_argument("pipeline", help="the pipeline file (TOML)")
    p.add_argument("--out", metavar="DIR", help="the output folder (default: the file's 'out')")
    p.add_argument("--json", action="store_true", help="print report.json instead of the summary")
    p.set_defaults(run=cmd_run)
    for name in ("optimize", "rewrite"):
        add_pipeline_arguments(commands.choices[name])


def add_pipeline_arguments(p) -> None:
    group = p.add_argument_group("pipeline (with --out DIR or any step flag; see graphopt.pipeline)",
                                 EXIT_CODES)
    group.add_argument("--out", metavar="DIR", help="run the pipeline, writing every step, the "
                       "deployment files and report.json/report.html here")
    group.add_argument("--fold-bn", action="store_true", help="step: fold BatchNorm and clean up")
    group.add_argument("--prune", metavar="SPEC", help="step: filters:RATIO, sparsity:S or "
                       "threshold:T, then ,key=value options (e.g. filters:0.5,criterion=l2)")
    group.add_argument("--distill", metavar="SPEC", help="step: EPOCHS or key=value options "
                       "(epochs=5,temperature=4,alpha=0.5,learning_rate=3e-3,train_data=DATA.npz); "
                       "train_data defaults to the digits only with --data digits")
    group.add_argument("--quantize", choices=["int8"], help="step: int8 post-training quantization")
    group.add_argument("--calib", metavar="DATA", help="calibration data ('digits' or .npz; "
                       "default: the evaluation data)")
    group.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=None,
                       help="quantize: cross-layer equalization before calibrating (default: on, "
                            "as graphopt quantize)")
    group.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                       help="quantize: fold the rounded weights' mean error into the int32 biases "
                            "(default: on, as graphopt quantize)")
    group.add_argument("--max-accuracy-drop", type=float, metavar="D",
                       help="quantization budget: the most sensitive layers fall back to float "
                            "until the accuracy drop is at most D (0.01 = one point; needs labels)")
    group.add_argument("--min-sqnr", type=float, metavar="DB",
                       help="quantization budget: outputs' SQNR against float of at least DB")
    group.add_argument("--data", metavar="DATA", help="evaluation data for the gates: 'digits' "
                       "or a .npz (with labels for accuracy); default: seeded inputs")
    group.add_argument("--samples", type=int, help="seeded inputs when no --data (default 16)")
    group.add_argument("--gate", action="append", default=[], metavar="KIND:key=value,...",
                       help="a step's gate, e.g. prune:max_accuracy_drop=0.9 or "
                            "distill:max_accuracy_drop=0.02,against=input (repeatable)")


def wants_pipeline(args) -> bool:
    return bool(getattr(args, "out", None)) or any(getattr(args, flag, None) for flag in STEP_FLAGS)


PIPELINE_ONLY = (("--data", "data"), ("--samples", "samples"), ("--gate", "gate"),
                 ("--calib", "calib"), ("--max-accuracy-drop", "max_accuracy_drop"),
                 ("--min-sqnr", "min_sqnr"), ("--[no-]equalize", "equalize"),
                 ("--[no-]bias-correction", "bias_correction"))


def refuse_pipeline_flags(args) -> None:
    """The single-output form (``-o OUT``) has no data, gates or quantization: a flag of the
    pipeline given to it is refused (it was ignored: a gate asked for was never checked)."""
    given = [flag for flag, name in PIPELINE_ONLY if getattr(args, name, None) not in (None, [])]
    if given:
        raise PipelineError(f"{', '.join(given)}: flags of the pipeline (--out DIR and step flags "
                            f"such as --fold-bn), not of the single-output form (-o OUT)")


def _value(text: str):
    """A flag's value typed as TOML would type it (1 int, 0.5 float, true bool, else a string)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_options(text: str, flag: str) -> dict:
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise PipelineError(f"{flag} {text!r}: expected key=value, got {item!r}")
        options[key.strip()] = _value(value.strip())
    return options


def _prune_step(text: str) -> dict:
    head, _, rest = text.partition(",")
    kind, sep, value = head.partition(":")
    forms = {"filters": ("filters", "ratio"), "sparsity": ("magnitude", "sparsity"),
             "threshold": ("magnitude", "threshold")}
    if not sep or kind not in forms:
        raise PipelineError(f"--prune {text!r}: expected filters:RATIO, sparsity:S or "
                            f"threshold:T (then ,key=value options)")
    method, key = forms[kind]
    return {"kind": "prune", "method": method, key: _value(value), **parse_options(rest, "--prune")}


def _distill_step(text: str) -> dict:
    head, _, rest = text.partition(",")
    if "=" not in head:
        return {"kind": "distill", "epochs": _value(head), **parse_options(rest, "--distill")}
    return {"kind": "distill", **parse_options(text, "--distill")}


def spec_from_args(args):
    """The pipeline document of ``optimize``'s flags, validated like a pipeline file."""
    from graphopt.pipeline.spec import validate
    single_output_flags = [flag for flag, given in (
        ("-o/--output", args.output), ("--rules-dir", args.rules_dir), ("--check", args.check),
        ("--explain", args.explain)) if given]
    if single_output_flags:
        raise PipelineError(f"{', '.join(single_output_flags)}: flags of the single-output form "
                            f"of optimize (-o OUT), not of the pipeline (--out DIR, step flags)")
    if args.phases and not args.fold_bn:
        raise PipelineError("--phases chooses the rule phases of --fold-bn: give --fold-bn too")
    steps = []
    if args.fold_bn:
        steps.append({"kind": "fold", **({"phases": args.phases.split(",")} if args.phases else {})})
    if args.prune:
        steps.append(_prune_step(args.prune))
    if args.distill:
        steps.append(_distill_step(args.distill))
    quantize_options = (("calib", args.calib), ("max_accuracy_drop", args.max_accuracy_drop),
                        ("min_sqnr", args.min_sqnr), ("equalize", args.equalize),
                        ("bias_correction", args.bias_correction))
    if args.quantize or any(value is not None for _, value in quantize_options):
        if not args.quantize:
            raise PipelineError("--calib, --max-accuracy-drop, --min-sqnr, --[no-]equalize and "
                                "--[no-]bias-correction belong to --quantize int8")
        step = {"kind": "quantize"}
        for key, value in quantize_options:
            if value is not None:
                step[key] = value
        steps.append(step)
    for text in args.gate:
        kind, sep, rest = text.partition(":")
        if not sep or kind not in STEPS:
            raise PipelineError(f"--gate {text!r}: expected KIND:key=value,... with KIND one of "
                                f"{', '.join(STEPS)}")
        matching = [step for step in steps if step["kind"] == kind]
        if not matching:
            raise PipelineError(f"--gate {text!r}: the pipeline has no {kind} step")
        matching[0]["gate"] = parse_options(rest, "--gate")
    document = {"model": args.model, "step": steps,
                "inputs": [f"{i.name}:{'x'.join(map(str, i.shape))}" + (f":{i.dtype}" if i.dtype else "")
                           for i in args.input or []],
                "to": (args.to or "onnx,mxnet").split(",")}
    if args.static_batch:
        document["static_batch"] = True
    for key, value in (("params", args.params), ("data", args.data), ("samples", args.samples),
                       ("out", args.out), ("opset", args.opset)):
        if value is not None:
            document[key] = value
    return validate(document, source="graphopt optimize")


def cmd_optimize_pipeline(args) -> int:
    return _run(spec_from_args(args), args.out, args)


def cmd_run(args) -> int:
    from graphopt.pipeline.spec import load_pipeline_file
    return _run(load_pipeline_file(args.pipeline), args.out, args)


def _run(spec, out, args) -> int:
    from graphopt.pipeline.runner import GateError, run_pipeline
    quiet = getattr(args, "quiet", False) or args.json
    log = (lambda text: None) if quiet else (lambda text: print(f"[graphopt] {text}",
                                                                file=sys.stderr, flush=True))
    try:
        result = run_pipeline(spec, out=out, log=log)
        code = 0
    except GateError as error:
        result = error.result
        print(f"graphopt: gate failed: {error}", file=sys.stderr)
        code = 1
    if args.json:
        print(json.dumps(result.report, indent=2, default=str))
    else:
        print(format_summary(result.report))
    return code


def format_summary(report: dict) -> str:
    from graphopt.pipeline.report_html import COLUMNS, format_figure
    keys = ["params", "macs", "onnx_bytes", "accuracy", "sqnr_db", "latency_onnxruntime_ms"]
    titles = dict(COLUMNS)
    lines = [f"{'step':<14} " + " ".join(f"{titles[k]:>14}" for k in keys) + "  gate"]
    for record in report["steps"]:
        figures = record.get("figures", {})
        gate = record.get("gate")
        verdict = "" if gate is None else ("passed" if gate["passed"] else "FAILED")
        if record["kind"] == "export":
            lines.append(f"{'export':<14} ONNX vs MXNet: SQNR {format_figure('sqnr_db', figures.get('sqnr_db'))} dB, "
                         f"relative error {format_figure('relative_error', figures.get('relative_error'))}  {verdict}")
            if record.get("mxnet_int8"):
                int8 = record["mxnet_int8"]
                lines.append(f"{'':<14} MXNet's int8 model: accuracy "
                             f"{format_figure('accuracy', int8['accuracy'])}, SQNR "
                             f"{format_figure('sqnr_db', int8['sqnr_db'])} dB against float")
            continue
        lines.append(f"{record['name']:<14} " + " ".join(
            f"{format_figure(k, figures.get(k)):>14}" for k in keys) + f"  {verdict}")
    for record in report["steps"]:
        if record.get("budget"):
            budget = record["budget"]
            kept = budget["float_fallback"]
            shown = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
            lines.append(f"quantization budget {'met' if budget['met'] else 'MISSED'}; kept in "
                         f"float: {len(kept)} layer(s){': ' + shown if kept else ''}")
    lines.append("files: " + ", ".join(f"{v}" for v in report["files"].values()))
    lines.append("result: " + ("OK" if report["ok"] else f"FAILED: {report['failure']}"))
    return "\n".join(lines)
