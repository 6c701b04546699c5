"""``graphopt quantize MODEL --input ... --calib DATA [--method entropy] [--per-channel]
[--exclude NAME|OP ...] --to onnx|mxnet -o OUT [--report report.json]``.

The model is cleaned and its BatchNorms folded first (the int8 kernels want one conv, not a
conv and a BatchNorm), calibrated on DATA (a ``.npz``, an image folder, or a calibration table
``.json`` written by ``graphopt calibrate``), quantized, and written: ``--to onnx`` as a QDQ
model checked by the fusion report (what onnxruntime runs in int8, confirmed on its optimized
model), ``--to mxnet`` as MXNet's oneDNN int8 model. Nothing is written when a step fails; the
model and the report are each written atomically.
"""

from __future__ import annotations

import argparse
import json

from graphopt.cli import _load, _model_arguments, _print_json
from graphopt.onnx import DEFAULT_OPSET


def add_commands(commands) -> None:
    from graphopt.quantize.calibrate import METHODS
    p = commands.add_parser("quantize", help="post-training int8 quantization (ONNX QDQ or "
                                             "MXNet int8)")
    _model_arguments(p)
    p.add_argument("--calib", metavar="DATA",
                   help="calibration data: .npz (arrays by input name, or one array), an image "
                        "folder, or a calibration table .json (graphopt calibrate)")
    p.add_argument("--dynamic", action="store_true",
                   help="no calibration: int8 FullyConnected weights, inputs quantized at run "
                        "time (transformers; ONNX only)")
    p.add_argument("--method", choices=METHODS, default="entropy",
                   help="how ranges are chosen from the calibration statistics")
    p.add_argument("--num-samples", type=int, help="calibrate on at most this many samples")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="int8 weights with one scale per output channel (default) or per tensor")
    p.add_argument("--activations", choices=["uint8", "int8"], default="uint8",
                   help="activations asymmetric uint8 (default; onnxruntime's fast x86 format) "
                        "or symmetric int8")
    p.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="NAME|OP",
                   help="node names or op types to keep in float")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="7-bit weights, for x86 CPUs without VNNI (default: if this CPU is one)")
    p.add_argument("--exclude-first-last", action="store_true",
                   help="keep the first and the last weighted layers in float")
    p.add_argument("--to", choices=["onnx", "mxnet"], default="onnx")
    p.add_argument("-o", "--output", required=True, help="OUT.onnx, or an MXNet prefix")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help="ONNX opset (>= 13: per-channel QDQ)")
    p.add_argument("--static-batch", action="store_true", help="ONNX: keep the batch size fixed")
    p.add_argument("--no-fold", action="store_true", help="do not run the cleanup and fold rules first")
    p.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=True,
                   help="cross-layer equalization of conv -> (ReLU) -> conv pairs before calibrating "
                        "(rules/equalize.toml; not with a calibration table .json, made before it)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=True,
                   help="fold the mean error of the rounded weights on the calibration data into "
                        "the int32 biases (ONNX static; not with a calibration table .json)")
    p.add_argument("--report", metavar="REPORT.json", help="write the quantization (and fusion) report")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_quantize)


def recipe_options(args):
    """The recipe's options (:mod:`graphopt.quantize.recipe`) from the command line."""
    from graphopt.quantize.recipe import RecipeOptions
    return RecipeOptions(method=args.method, num_samples=args.num_samples,
                         activations=args.activations, per_channel=args.per_channel,
                         exclude=tuple(args.exclude), exclude_first_last=args.exclude_first_last,
                         reduce_range=args.reduce_range, fold=not args.no_fold,
                         equalize=args.equalize, bias_correction=args.bias_correction)


def cmd_quantize(args) -> int:
    import graphopt
    from graphopt._files import atomic_write_bytes
    from graphopt.errors import GraphoptError
    if args.to == "onnx" and args.opset < 13:
        raise GraphoptError(f"--opset {args.opset}: per-channel QuantizeLinear/DequantizeLinear "
                            f"need opset 13 or newer")
    if not args.dynamic and not args.calib:
        raise GraphoptError("--calib DATA is needed (or --dynamic, which calibrates nothing)")
    if args.dynamic and args.to != "onnx":
        raise GraphoptError("--dynamic writes ONNX only (MXNet's int8 ops are calibrated)")
    from graphopt.quantize.recipe import prepare
    options = recipe_options(args)
    prepared = prepare(_load(args), None if args.dynamic else args.calib, options)
    summary: dict = {"model": str(args.model), "method": "dynamic" if args.dynamic else args.method,
                     "to": args.to, "output": args.output,
                     "equalize_rewrites": prepared.equalize_rewrites}
    if args.to == "onnx":
        model, summary["quantize"], summary["fusion"] = quantize_to_onnx(prepared, args)
        write = lambda: graphopt.onnx.emit.save(model, args.output)  # noqa: E731
    else:
        from graphopt.quantize.mxnet_int8 import to_mxnet_int8
        qgraph, int8_report = to_mxnet_int8(
            prepared.graph, prepared.calibration, exclude=args.exclude,
            exclude_first_last=args.exclude_first_last,
            granularity="channel-wise" if args.per_channel else "tensor-wise")
        summary["mxnet_int8"] = {"int8": [layer.node for layer in int8_report.int8],
                                 "float": {layer.node: layer.reason for layer in int8_report.float}}
        write = lambda: graphopt.save_mxnet(qgraph, args.output)  # noqa: E731
    report = json.dumps(summary, indent=2).encode()   # everything computed before any write
    write()
    if args.report:
        atomic_write_bytes(args.report, report)
    if args.json:
        _print_json(summary)
    else:
        print(_format(summary))
    return 0


def quantize_to_onnx(prepared, args):
    """The QDQ model (not written yet), the quantization report and the fusion report of the
    recipe's :class:`~graphopt.quantize.recipe.Prepared` model, quantized by
    :func:`~graphopt.quantize.recipe.quantize_with` with the command line's options."""
    import graphopt
    from graphopt.quantize.fusion import fusion_report
    from graphopt.quantize.recipe import quantize_with
    quantized = quantize_with(prepared, recipe_options(args))
    model = graphopt.to_onnx(quantized.graph, opset=args.opset, dynamic_batch=not args.static_batch)
    return model, quantized.to_dict(), fusion_report(model).to_dict()


def _format(summary: dict) -> str:
    lines = [f"wrote {summary['output']} ({summary['to']}, calibration {summary['method']})"]
    if "quantize" in summary:
        quantized = summary["quantize"]
        fusion = summary["fusion"]
        lines.append(f"{len(quantized['quantized'])} layers quantized, "
                     f"{len(quantized['float_layers'])} kept in float")
        for name, reason in quantized["float_layers"].items():
            lines.append(f"  float  {name}: {reason}")
        lines.append(f"onnxruntime (optimized model): {fusion['fused']} groups in int8 "
                     f"{fusion['predicted']}, {fusion['float']} in float")
        for group in fusion["float_groups"]:
            lines.append(f"  float  {group['node']} ({group['op']}): {group['reason']}")
    else:
        int8 = summary["mxnet_int8"]
        lines.append(f"MXNet int8: {len(int8['int8'])} nodes in int8, {len(int8['float'])} in float")
        for name, reason in int8["float"].items():
            lines.append(f"  float  {name}: {reason}")
    return "\n".join(lines)


__all__ = ["add_commands", "cmd_quantize", "quantize_to_onnx", "recipe_options"]
