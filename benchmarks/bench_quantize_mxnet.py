"""MXNet int8 (issue 8, item 4): MXNet's oneDNN int8 model made by graphopt
(``graphopt.quantize.to_mxnet_int8``, thresholds from ``graphopt.quantize.calibrate``) against
MXNet float32, at batch 8, in the same run, and against graphopt's ONNX int8 model.

1. Latency at batch 8, runs interleaved, medians: MXNet float32 with its oneDNN fusion
   (``get_backend_symbol("MKLDNN")``: conv+BN+ReLU fused, the fair baseline) and MXNet int8.
   Goal: int8 at least 3x faster.
2. SQNR, 10 log10(sum ref^2 / sum (ref - q)^2), and top-1 agreement against float32 on
   held-out inputs, of MXNet int8 and of graphopt's ONNX QDQ model (onnxruntime), and between
   the two int8 models (the "agreement" check).
3. What stays float in MXNet (ops without an int8 kernel) and the params file sizes.

Networks: resnet50_v1 and mobilenetv2_1.0 from the model zoo (random He-init weights, seeded
normal images: ``bench_quantize.load_network``, BatchNorm folded by graphopt's rules), the
digits fixtures lenet_digits and resnet_digits (training digits / held-out digits), and with
``--alexnet`` the full model-zoo AlexNet (61M parameters) with its ONNX file sizes. The CPU's
int8 flags are printed beside the ratios. Not a test: it asserts nothing. Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_quantize_mxnet.py
        [--models resnet50_v1,mobilenetv2_1.0,lenet_digits,resnet_digits] [--alexnet]
        [--runs 20] [--samples 32] [--method minmax] [--batch 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_quantize import cpu_flags, load_network  # noqa: E402

MODELS = ("resnet50_v1", "mobilenetv2_1.0", "lenet_digits", "resnet_digits")
SPEEDUP_GOAL = 3.0
SQNR_GOAL = 35.0


def _executor(symbol, params: dict, x):
    import mxnet as mx
    arguments = {name: params[name] for name in symbol.list_arguments() if name in params}
    arguments["data"] = mx.nd.array(x)
    aux = {name: params[name] for name in symbol.list_auxiliary_states()}
    return symbol.bind(mx.cpu(), args=arguments, aux_states=aux, grad_req="null")


def latencies(executors: dict, runs: int) -> dict[str, float]:
    """Median ms per forward of each executor, runs interleaved (others' load hits all alike)."""
    for executor in executors.values():
        for _ in range(3):
            executor.forward(is_train=False)[0].wait_to_read()
    times: dict[str, list[float]] = {key: [] for key in executors}
    for _ in range(runs):
        for key, executor in executors.items():
            started = time.perf_counter()
            executor.forward(is_train=False)[0].wait_to_read()
            times[key].append(time.perf_counter() - started)
    return {key: 1000 * statistics.median(values) for key, values in times.items()}


def batch_of(x, batch: int):
    import numpy as np
    reps = -(-batch // len(x))
    return np.concatenate([x] * reps)[:batch]


def bench_network(name: str, graph, calibration_inputs, heldout, args, folder: Path) -> dict:
    import numpy as np
    import graphopt
    from graphopt.mxnet_io.infer import to_symbol
    from graphopt.quantize import calibrate, quantize, to_mxnet_int8
    from graphopt.quantize.sensitivity import output_error
    from graphopt.runtime import MXNetModel, run_mxnet, run_onnx

    started = time.perf_counter()
    calibration = calibrate(graph, calibration_inputs, method=args.method)
    calibration_seconds = time.perf_counter() - started
    started = time.perf_counter()
    qgraph, report = to_mxnet_int8(graph, calibration)
    emission_seconds = time.perf_counter() - started

    x = batch_of(heldout, args.batch)
    float_model, int8_model = MXNetModel.from_graph(graph), MXNetModel.from_graph(qgraph)
    executors = {
        "float32": _executor(to_symbol(graph).get_backend_symbol("MKLDNN"), float_model.params, x),
        "int8": _executor(int8_model.symbol, int8_model.params, x),
    }
    ms = latencies(executors, args.runs)

    reference = [run_mxnet(graph, {"data": heldout})[graph.output_names[0]]]
    mxnet_int8 = [run_mxnet(qgraph, {"data": heldout})[qgraph.output_names[0]]]
    row = {"model": name, "batch": args.batch, "float32_ms": ms["float32"], "int8_ms": ms["int8"],
           "speedup": ms["float32"] / ms["int8"],
           "calibration_s": calibration_seconds, "emission_s": emission_seconds,
           "mxnet_int8": _errors(output_error(reference, mxnet_int8)),
           "int8_nodes": len(report.int8),
           "float_nodes": {layer.node: layer.reason for layer in report.float},
           "removed_nodes": [layer.node for layer in report.removed]}
    float_paths = graphopt.save_mxnet(graph, folder / f"{name}-float")
    int8_paths = graphopt.save_mxnet(qgraph, folder / f"{name}-int8")
    row["params_bytes"] = {"float32": float_paths[1].stat().st_size,
                           "int8": int8_paths[1].stat().st_size}
    try:
        qdq_graph, _ = quantize(graph, calibration)
        onnx_path = folder / f"{name}-int8.onnx"
        graphopt.to_onnx(qdq_graph, onnx_path)
        onnx_int8 = list(run_onnx(onnx_path, {"data": heldout}).values())[:1]
        row["onnx_int8"] = _errors(output_error(reference, onnx_int8))
        row["mxnet_vs_onnx_int8"] = _errors(output_error(onnx_int8, mxnet_int8))
    except Exception as error:  # the ONNX side is another helper's: report, keep the MXNet row
        row["onnx_int8"] = {"error": f"{type(error).__name__}: {error}"[:200]}
    return row


def _errors(error) -> dict:
    return {"sqnr_db": error.sqnr, "top1_agreement": error.top1_agreement}


def bench_alexnet(args, folder: Path) -> dict:
    """The full zoo AlexNet: MXNet latencies as above, and the ONNX float32 / int8 file sizes."""
    import numpy as np
    import graphopt
    from fixtures.build import alexnet
    from graphopt.quantize import calibrate, quantize

    symbol_path, params_path = alexnet()
    graph = graphopt.load(symbol_path, params_path, inputs={"data": (1, 3, 224, 224)})
    rng = np.random.RandomState(0)
    calibration_inputs = rng.randn(args.samples, 3, 224, 224).astype(np.float32)
    heldout = rng.randn(args.batch, 3, 224, 224).astype(np.float32)
    row = bench_network("alexnet", graph, calibration_inputs, heldout, args, folder)
    float_onnx, int8_onnx = folder / "alexnet.onnx", folder / "alexnet-int8.onnx"
    graphopt.to_onnx(graph, float_onnx)
    if not int8_onnx.exists():
        qdq_graph, _ = quantize(graph, calibrate(graph, calibration_inputs, method=args.method))
        graphopt.to_onnx(qdq_graph, int8_onnx)
    row["onnx_bytes"] = {"float32": float_onnx.stat().st_size, "int8": int8_onnx.stat().st_size}
    return row


def _format_row(row: dict) -> str:
    def figure(entry: dict | None) -> str:
        if not entry or "error" in entry:
            return (entry or {}).get("error", "-")[:40]
        agreement = entry["top1_agreement"]
        return f"{entry['sqnr_db']:5.1f} dB" + ("" if agreement is None else f" top1 {agreement:.3f}")
    goal = "ok" if row["speedup"] >= SPEEDUP_GOAL else "MISSED"
    lines = [f"{row['model']:16s} fp32 {row['float32_ms']:8.1f} ms  int8 {row['int8_ms']:8.1f} ms  "
             f"{row['speedup']:5.2f}x ({goal} >= {SPEEDUP_GOAL}x)",
             f"{'':16s} MXNet int8 vs fp32 {figure(row['mxnet_int8'])} | ONNX int8 vs fp32 "
             f"{figure(row.get('onnx_int8'))} | MXNet vs ONNX int8 {figure(row.get('mxnet_vs_onnx_int8'))}",
             f"{'':16s} {row['int8_nodes']} nodes int8; params {row['params_bytes']['float32']} -> "
             f"{row['params_bytes']['int8']} bytes (MXNet keeps float weights, quantized at run)"]
    for node, reason in row["float_nodes"].items():
        lines.append(f"{'':16s} float: {node}: {reason}")
    if "onnx_bytes" in row:
        sizes = row["onnx_bytes"]
        lines.append(f"{'':16s} ONNX {sizes['float32']} -> {sizes['int8']} bytes "
                     f"({sizes['float32'] / sizes['int8']:.2f}x smaller)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--alexnet", action="store_true", help="also the full zoo AlexNet")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=32, help="calibration samples")
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import mxnet as mx
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quantize-mxnet-") as temporary:
        folder = Path(temporary)
        for name in [m for m in args.models.split(",") if m]:
            graph, calibration_inputs, heldout = load_network(name, args.samples)
            rows.append(bench_network(name, graph, calibration_inputs, heldout, args, folder))
            if not args.json:
                print(_format_row(rows[-1]), flush=True)
        if args.alexnet:
            rows.append(bench_alexnet(args, folder))
            if not args.json:
                print(_format_row(rows[-1]), flush=True)
    result = {"cpu_flags": cpu_flags(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "mxnet": mx.__version__, "method": args.method, "rows": rows,
              "goals": {"speedup": SPEEDUP_GOAL, "sqnr_db": SQNR_GOAL}}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        flags = " ".join(flag for flag, present in result["cpu_flags"].items() if present)
        print(f"CPU flags: {flags or 'unknown'}; OMP_NUM_THREADS={result['omp_num_threads']}; "
              f"MXNet {mx.__version__}; calibration {args.method}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
