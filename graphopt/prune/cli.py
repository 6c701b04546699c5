"""``graphopt prune``: magnitude or filter pruning from the command line.

    graphopt prune MODEL --input data:1x3x224x224 (--threshold T | --sparsity S | --filters R)
        [--layers PATTERN] [--scope layer|global] [--criterion l1|l2|bn_gamma] [--round-to N]
        [--drop-channels] [-o OUT] [--to mxnet|onnx] [--sparse-params P.npz]
        [--report report.json] [--json]

``--threshold``/``--sparsity`` are magnitude pruning, ``--filters R`` zeroes the fraction R of
output channels (then ``--drop-channels`` removes them). ``--layers`` takes the syntax of
:mod:`graphopt.prune.layers` (``op:Convolution``, ``re:...``, globs, ``!`` to exclude).
Without ``-o`` nothing is written: the report alone says what the pruning would do.
Bad requests (a value out of range, a pattern that matches nothing) exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from graphopt.errors import PruneError
from graphopt.onnx import DEFAULT_OPSET


def add_commands(commands) -> None:
    from graphopt.cli import _model_arguments
    p = commands.add_parser("prune", help="zero small weights or whole filters, and drop zeroed "
                                          "channels (magnitude and filter pruning)")
    _model_arguments(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--threshold", type=float, metavar="T",
                     help="magnitude: zero every weight with |w| <= T")
    how.add_argument("--sparsity", type=float, metavar="S",
                     help="magnitude: zero the fraction S (0 <= S < 1) of smallest weights")
    how.add_argument("--filters", type=float, metavar="RATIO",
                     help="filters: zero the fraction RATIO (0 <= RATIO < 1) of output channels")
    p.add_argument("--layers", metavar="PATTERN",
                   help="which layers: op:Convolution, re:REGEX, a glob, !PATTERN excludes; "
                        "comma-separated (default: every Convolution/Deconvolution/FullyConnected)")
    p.add_argument("--scope", choices=["layer", "global"], default="layer",
                   help="the target per layer, or over all selected layers ranked together")
    p.add_argument("--criterion", choices=["l1", "l2", "bn_gamma"], default="l1",
                   help="filters: rank channels by their filter's L1 or L2 norm, or by the "
                        "following BatchNorm's |gamma|")
    p.add_argument("--round-to", type=int, metavar="N",
                   help="filters: keep a multiple of N channels per layer (8 or 16 keep kernels fast)")
    p.add_argument("--drop-channels", action="store_true",
                   help="remove the zeroed channels from every coupled tensor")
    p.add_argument("-o", "--output", help="write the pruned model (MXNet prefix or ONNX file)")
    p.add_argument("--to", choices=["mxnet", "onnx"], default="mxnet")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--static-batch", action="store_true", help="ONNX: keep the batch size fixed")
    p.add_argument("--sparse-params", metavar="PARAMS.npz",
                   help="also write the pruned parameters as a deflated bitmask .npz "
                        "(graphopt.prune.load_sparse reads it back)")
    p.add_argument("--report", metavar="REPORT.json", help="write the report as JSON")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=cmd_prune)


def _outputs(args) -> list[tuple[str, Path]]:
    """Every file the command writes, with the option that names it."""
    outputs = []
    if args.output and args.to == "onnx":
        outputs.append(("-o", Path(args.output)))
    elif args.output:
        outputs += [("-o", Path(f"{args.output}-symbol.json")),
                    ("-o", Path(f"{args.output}-0000.params"))]
    if args.report:
        outputs.append(("--report", Path(args.report)))
    if args.sparse_params:
        outputs.append(("--sparse-params", Path(args.sparse_params)))
    return outputs


def _refuse_overwriting_the_input(args) -> None:
    """The input model is never modified: an output path naming one of its files (``-o`` given
    the input's own prefix, say) is a bad request, refused before anything is written."""
    from graphopt.cli import resolve_model
    inputs = [path for path in resolve_model(args.model, args.params) if path is not None]
    for option, output in _outputs(args):
        for path in inputs:
            if output.exists() and path.exists() and output.samefile(path):
                raise PruneError(f"{option} {output} would overwrite the input model's "
                                 f"file {path}; write the pruned model elsewhere")


def cmd_prune(args) -> int:
    from graphopt._files import atomic_write_bytes
    from graphopt.cli import _load, _print_json
    from graphopt.prune.api import prune
    if args.round_to is not None and args.filters is None:
        raise PruneError("--round-to applies to filter pruning (--filters RATIO)")
    _refuse_overwriting_the_input(args)
    if args.output and args.to == "onnx":
        from graphopt.onnx import MAX_OPSET, MIN_OPSET
        if not MIN_OPSET <= args.opset <= MAX_OPSET:   # said before the pruning, not after
            raise PruneError(f"--opset {args.opset} is not supported: choose one from "
                             f"{MIN_OPSET} to {MAX_OPSET}")
    graph = _load(args)
    if args.filters is not None:
        pruned, report = prune(graph, "filters", ratio=args.filters, criterion=args.criterion,
                               scope=args.scope, layers=args.layers, round_to=args.round_to,
                               drop=args.drop_channels)
    else:
        if args.criterion != "l1":
            raise PruneError("--criterion applies to filter pruning (--filters RATIO)")
        pruned, report = prune(graph, "magnitude", threshold=args.threshold,
                               sparsity=args.sparsity, scope=args.scope, layers=args.layers,
                               drop=args.drop_channels)
    data = report.to_dict()
    if args.report:
        atomic_write_bytes(args.report, json.dumps(data, indent=2, default=str).encode())
    _print_json(data) if args.json else print(report.format())
    if args.sparse_params:
        from graphopt.prune.storage import save_sparse
        save_sparse(pruned.params, args.sparse_params)
        print(f"wrote {args.sparse_params} (sparse parameters)", file=sys.stderr)
    if args.output:
        if args.to == "onnx":
            from graphopt.onnx import to_onnx
            to_onnx(pruned, path=args.output, opset=args.opset,
                    dynamic_batch=not args.static_batch)
        else:
            from graphopt.mxnet_io import save_mxnet
            save_mxnet(pruned, args.output)
        print(f"wrote {args.output} ({args.to})", file=sys.stderr)
    return 0
