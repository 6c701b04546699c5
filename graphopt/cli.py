"""The ``graphopt`` command line: inspect | export | optimize (rewrite) | compare | rules.

Every command takes a model as ``PREFIX-symbol.json`` (its params found beside it as
``PREFIX-NNNN.params``, the newest epoch) or as ``PREFIX``; ``--params`` names another file.
Input shapes come from ``--input data:1x3x224x224`` (repeatable), optionally with a dtype:
``--input ids:1x16:int32``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

from graphopt.errors import GraphoptError


def resolve_model(model: str, params: str | None = None) -> tuple[Path, Path | None]:
    """``prefix-symbol.json`` or ``prefix`` -> (symbol path, params path or None)."""
    path = Path(model)
    if path.name.endswith("-symbol.json"):
        prefix = path.with_name(path.name[: -len("-symbol.json")])
    elif path.suffix == ".json":
        prefix = path.with_suffix("")
    else:
        prefix, path = path, Path(f"{model}-symbol.json")
    if params is not None:
        return path, Path(params)
    candidates = sorted(prefix.parent.glob(f"{prefix.name}-[0-9][0-9][0-9][0-9].params"))
    if not candidates and prefix.with_suffix(".params").exists():
        candidates = [prefix.with_suffix(".params")]
    return path, candidates[-1] if candidates else None


INPUT_DTYPES = ("float32", "float16", "float64", "uint8", "int8", "int32", "int64", "bool")


class InputArg(NamedTuple):
    name: str
    shape: tuple[int, ...]
    dtype: str | None  # None: the model's own (float32 unless its symbol says otherwise)


def parse_input(text: str) -> InputArg:
    """``data:1x3x224x224`` -> ("data", (1, 3, 224, 224), None); ``ids:1x16:int32`` gives the
    dtype too."""
    match = re.fullmatch(r"([^:]+):(\d+(?:[x,]\d+)*)(?::(\w+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected NAME:DIMxDIM...[:DTYPE], e.g. data:1x3x224x224 or ids:1x16:int32, got {text!r}")
    dtype = match.group(3)
    if dtype is not None and dtype not in INPUT_DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {dtype!r} in {text!r}; MXNet's are "
                                         f"{', '.join(INPUT_DTYPES)}")
    return InputArg(match.group(1), tuple(int(d) for d in re.split(r"[x,]", match.group(2))), dtype)


def _shapes(args) -> dict[str, tuple[int, ...]] | None:
    return {i.name: i.shape for i in args.input or []} or None


def _dtypes(args) -> dict[str, str] | None:
    return {i.name: i.dtype for i in args.input or [] if i.dtype} or None


def _load(args) -> "Graph":  # noqa: F821
    import graphopt
    symbol, params = resolve_model(args.model, getattr(args, "params", None))
    return graphopt.load(symbol, params, inputs=_shapes(args), dtypes=_dtypes(args))


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


# --- commands ----------------------------------------------------------------------------------

def cmd_inspect(args) -> int:
    from graphopt.analysis import format_inspection, inspect_graph
    if args.compare_params and not args.compare:
        raise GraphoptError(f"--compare-params {args.compare_params} needs --compare OTHER "
                            f"(the model whose params file it is)")
    report = inspect_graph(_load(args))
    if args.compare:
        import graphopt
        from graphopt.analysis.inspect import compare_inspections, format_comparison
        symbol, params = resolve_model(args.compare, args.compare_params)
        other = graphopt.load(symbol, params, inputs=_shapes(args), dtypes=_dtypes(args))
        comparison = compare_inspections(report, inspect_graph(other))
        _print_json(comparison) if args.json else print(format_comparison(comparison))
        return 0
    _print_json(report) if args.json else print(format_inspection(report))
    return 0


def cmd_export(args) -> int:
    graph = _load(args)
    if args.to == "onnx":
        from graphopt.onnx import DEFAULT_OPSET, to_onnx
        to_onnx(graph, path=args.output, opset=args.opset or DEFAULT_OPSET,
                dynamic_batch=not args.static_batch)
    else:
        from graphopt.mxnet_io import save_mxnet
        save_mxnet(graph, args.output)
    print(f"wrote {args.output} ({args.to})")
    return 0


def cmd_optimize(args) -> int:
    from graphopt.pipeline.cli import cmd_optimize_pipeline, refuse_pipeline_flags, wants_pipeline
    if wants_pipeline(args):  # --out DIR or a step flag: the pipeline (graphopt/pipeline/)
        return cmd_optimize_pipeline(args)
    refuse_pipeline_flags(args)
    if (args.to or "mxnet") not in ("onnx", "mxnet"):
        raise GraphoptError(f"--to {args.to!r}: -o OUT writes one format, onnx or mxnet (a list "
                            f"such as onnx,mxnet is for --out DIR)")
    args.to = args.to or "mxnet"
    from graphopt.rewrite import format_report, rewrite
    graph = _load(args)
    phases = args.phases.split(",") if args.phases else None
    new_graph, report = rewrite(graph, phases=phases, rules_dirs=args.rules_dir or None,
                                check=args.check)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(format_report(report, explain=args.explain))
    if args.output:
        if args.to == "onnx":
            from graphopt.onnx import DEFAULT_OPSET, to_onnx
            to_onnx(new_graph, path=args.output, opset=args.opset or DEFAULT_OPSET,
                    dynamic_batch=not args.static_batch)
        else:
            from graphopt.mxnet_io import save_mxnet
            save_mxnet(new_graph, args.output)
        print(f"wrote {args.output} ({args.to})", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from graphopt.compare import compare
    symbol, params = resolve_model(args.symbol, args.params)
    report = compare(symbol, params, args.onnx, inputs=_shapes(args), dtypes=_dtypes(args),
                     data=args.data, per_layer=args.per_layer, rtol=args.rtol, atol=args.atol,
                     seed=args.seed, detection=args.detection, iou=args.iou,
                     score_tolerance=args.score_tolerance)
    _print_json(report.to_dict()) if args.json else print(report.format())
    return 0 if report.ok else 1


def cmd_rules(args) -> int:
    from graphopt.rewrite import list_rules
    rules = list_rules(rules_dirs=args.rules_dir or None)
    if args.json:
        _print_json(rules)
        return 0
    width = max((len(rule["name"]) for rule in rules), default=0)
    for rule in rules:
        print(f"{rule['name']:<{width}}  [{rule['phase']}] anchor {rule['anchor']}: {rule['description']}")
    return 0


# --- the parser -----------------------------------------------------------------------------------

def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="PREFIX-symbol.json or PREFIX")
    parser.add_argument("--params", help="params file (default: PREFIX-NNNN.params beside the model)")
    parser.add_argument("--input", action="append", type=parse_input, metavar="NAME:SHAPE[:DTYPE]",
                        help="an input shape, e.g. data:1x3x224x224, and optionally its dtype, "
                             "e.g. ids:1x16:int32 (repeatable)")


OPSET_HELP = ("ONNX opset, 13 to 28 (default: graphopt.onnx.DEFAULT_OPSET, 21, the newest at "
              "which the pinned onnxruntime runs every converter)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphopt", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("inspect", help="inputs, outputs, op histogram, parameters, MACs/FLOPs")
    _model_arguments(p)
    p.add_argument("--compare", metavar="OTHER", help="another model (e.g. the pruned one): "
                   "params, bytes and MACs per layer and in total, side by side, with ratios")
    p.add_argument("--compare-params", metavar="PARAMS", help="OTHER's params file (default: beside it)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_inspect)

    p = commands.add_parser("export", help="write the model as ONNX or MXNet")
    _model_arguments(p)
    p.add_argument("--to", choices=["onnx", "mxnet"], default="onnx")
    p.add_argument("output", help="OUT.onnx, or an MXNet prefix")
    p.add_argument("--opset", type=int, help=OPSET_HELP)
    p.add_argument("--static-batch", action="store_true", help="keep the batch size fixed")
    p.set_defaults(run=cmd_export)

    for name in ("optimize", "rewrite"):
        p = commands.add_parser(name, help="apply the rewrite rules (fold BatchNorm, drop no-ops...)")
        _model_arguments(p)
        p.add_argument("-o", "--output", help="write the result (ONNX file or MXNet prefix)")
        p.add_argument("--to", metavar="onnx|mxnet[,...]", help="the format of -o (default "
                       "mxnet); with --out DIR a list (default onnx,mxnet)")
        p.add_argument("--opset", type=int, help=OPSET_HELP)
        p.add_argument("--static-batch", action="store_true", help="ONNX: keep the batch size fixed")
        p.add_argument("--rules-dir", action="append", help="a folder of extra rule files")
        p.add_argument("--phases", help="comma-separated phases to run (default: all)")
        p.add_argument("--check", choices=["numeric"], help="run MXNet before/after each phase")
        p.add_argument("--explain", action="store_true", help="say why rules did not fire")
        p.add_argument("--json", action="store_true")
        p.set_defaults(run=cmd_optimize)

    p = commands.add_parser("compare", help="run MXNet and onnxruntime on the same inputs")
    p.add_argument("symbol", help="PREFIX-symbol.json or PREFIX")
    p.add_argument("params", nargs="?", help="params file (default: beside the symbol)")
    p.add_argument("onnx", help="the ONNX model")
    p.add_argument("--input", action="append", type=parse_input, metavar="NAME:SHAPE[:DTYPE]",
                   help="an input shape (and dtype) for random inputs (repeatable)")
    p.add_argument("--data", help=".npz of input arrays (default: seeded random inputs)")
    p.add_argument("--per-layer", action="store_true", help="find the first diverging layer")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--detection", action="store_true", default=None,
                   help="compare the outputs as detections (ids, scores, boxes matched by class, "
                        "score and IoU); automatic for a model that sorts by score")
    p.add_argument("--no-detection", dest="detection", action="store_false",
                   help="compare detection outputs element-wise only")
    p.add_argument("--iou", type=float, default=0.9, help="detections: least IoU of a match")
    p.add_argument("--score-tolerance", type=float, default=1e-4,
                   help="detections: largest score difference of a match, and of a tie")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_compare)

    p = commands.add_parser("rules", help="the rewrite rules")
    p.add_argument("action", choices=["list"])
    p.add_argument("--rules-dir", action="append")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_rules)

    # each compression keeps its own commands beside its code: ``add_commands(commands)`` in
    # graphopt/<room>/cli.py, using _model_arguments/_load from here
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(commands)
    return parser


COMMAND_MODULES = ("graphopt.quantize.cli", "graphopt.quantize.calibrate_cli", "graphopt.prune.cli",
                   "graphopt.distill.cli", "graphopt.pipeline.cli")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet or getattr(args, "json", False):
        from graphopt import _progress
        _progress.set_enabled(False)
    try:
        return args.run(args)
    except GraphoptError as error:
        print(f"graphopt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
