"""``graphopt calibrate MODEL --input ... --calib DATA [--method M] [--batch-size B]
[--num-samples N] -o table.json``: run the calibration once and keep its table.

DATA is an ``.npz`` (arrays by input name, or one array for a one-input model) or an image
folder, whose preprocessing is declared with ``--resize``, ``--crop``, ``--mean``, ``--std``,
``--layout`` (ImageNet's by default). The table is written atomically: a failure (bad data, NaN
in an activation) leaves no file, and an existing table is kept as it was.
"""

from __future__ import annotations

import argparse

from graphopt.cli import _load, _model_arguments, _print_json


def add_commands(commands) -> None:
    from graphopt.quantize.calibrate import METHODS
    p = commands.add_parser("calibrate", help="run the model on calibration data and write the "
                                              "per-tensor ranges (JSON table)")
    _model_arguments(p)
    p.add_argument("--calib", required=True, metavar="DATA",
                   help="calibration data: .npz (arrays by input name, or one array) or an image "
                        "folder (see --resize/--crop/--mean/--std/--layout)")
    p.add_argument("--method", choices=METHODS, default="entropy",
                   help="how ranges are chosen (the table keeps the histograms, so the method can "
                        "be changed later without running the model again)")
    p.add_argument("--batch-size", type=int, help="samples per MXNet run (default: by memory)")
    p.add_argument("--num-samples", type=int, help="calibrate on at most this many samples")
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile")
    p.add_argument("-o", "--output", required=True, metavar="TABLE.json")
    p.add_argument("--json", action="store_true", help="print the ranges as JSON")
    preprocessing_arguments(p)
    p.set_defaults(run=cmd_calibrate)


def preprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    """The options declaring how an image folder becomes input (:class:`ImagePreprocessing`)."""
    group = parser.add_argument_group("image folders")
    group.add_argument("--resize", type=int, default=256, help="shorter side, before the crop (0: none)")
    group.add_argument("--crop", type=int, default=224, help="centre crop size (0: none)")
    group.add_argument("--mean", type=_floats, default=(0.485, 0.456, 0.406),
                       help="per-channel mean after scaling to [0, 1], e.g. 0.485,0.456,0.406")
    group.add_argument("--std", type=_floats, default=(0.229, 0.224, 0.225))
    group.add_argument("--no-scale", action="store_true", help="keep pixels in 0..255")
    group.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW")
    group.add_argument("--channels", type=int, choices=[1, 3], default=3)


def preprocessing_from(args):
    from graphopt.quantize.data import ImagePreprocessing
    return ImagePreprocessing(resize=args.resize or None, crop=args.crop or None,
                              mean=tuple(args.mean), std=tuple(args.std), scale=not args.no_scale,
                              layout=args.layout, channels=args.channels)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def cmd_calibrate(args) -> int:
    from graphopt.quantize.calibrate import calibrate
    graph = _load(args)
    table = calibrate(graph, args.calib, method=args.method, batch_size=args.batch_size,
                      num_samples=args.num_samples, percentile=args.percentile,
                      preprocessing=preprocessing_from(args))
    table.save(args.output)
    rows = [{"tensor": name, "min": table.stats(name)["min"], "max": table.stats(name)["max"],
             "range": list(table.range(name))} for name in table.names]
    if args.json:
        _print_json({"output": args.output, "method": table.method, "samples": table.samples,
                     "tensors": rows})
        return 0
    width = max(len(row["tensor"]) for row in rows)
    print(f"calibrated {len(rows)} tensors on {table.samples} samples ({table.method}); "
          f"wrote {args.output}")
    for row in rows:
        lo, hi = row["range"]
        print(f"  {row['tensor']:<{width}}  observed [{row['min']:.6g}, {row['max']:.6g}]"
              f"  range [{lo:.6g}, {hi:.6g}]")
    return 0
