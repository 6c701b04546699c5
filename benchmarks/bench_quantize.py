"""Post-training int8 (issue 8): graphopt's QDQ model against onnxruntime's own ``quantize_static``
in the same run, in onnxruntime latency and output SQNR, and calibration cost per method.

1. onnxruntime latency, batch 1, 2 intra-op threads, of three models of each network, runs
   interleaved, medians: the clean float32 model (BatchNorm folded by graphopt's rules), graphopt's
   int8 QDQ model (``graphopt.quantize.quantize``, activations uint8 by default) and onnxruntime's
   ``quantize_static`` of that same float model (QDQ, per-channel, S8S8, the same calibration
   samples and method). Goals: graphopt int8 at most 1.0x onnxruntime's quantized model and at
   least 2.5x faster than float32.
2. Output SQNR, 10 log10(sum ref^2 / sum (ref - q)^2), of both int8 models against float32 on
   held-out inputs (the issue's goal: at least onnxruntime's, and 35 dB), and what onnxruntime's
   optimized model runs in int8 (graphopt's fusion report, confirmed).
3. Calibration time and peak memory (resident set of a fresh process) per method on
   resnet50_v1, with ``--calibration``.

Networks: resnet50_v1 and mobilenetv2_1.0 from the model zoo with random He-init weights
(``fixtures.zoo``; calibration and held-out inputs are seeded normal images), and the digits
fixtures lenet_digits and resnet_digits (calibrated on training digits, held out on the test split).
The CPU's int8-relevant flags are printed beside the ratios: int8 speed depends on them (VNNI,
AMX). Not a test: it asserts nothing about time. Usage::

    .venv/bin/python benchmarks/bench_quantize.py [--models resnet50_v1,lenet_digits]
        [--runs 20] [--samples 32] [--method minmax] [--activations uint8] [--calibration] [--json]
        [--no-equalize] [--no-bias-correction]   # graphopt without its equalization / bias correction
        [--no-spinning] [--profile]   # onnxruntime's threads block when idle; per-op kernel times

MXNet int8 latency at batch 8 against MXNet float32, and the agreement of the MXNet and ONNX
int8 models, are measured by ``benchmarks/bench_quantize_mxnet.py`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cpu import cpu_flags  # noqa: E402  (benchmarks/cpu.py, beside this script)

MODELS = ("resnet50_v1", "mobilenetv2_1.0", "lenet_digits", "resnet_digits")
ZOO_HELDOUT = 8   # held-out seeded images per zoo network (SQNR)
SPEEDUP_GOAL = 2.5      # graphopt int8 at least 2.5x faster than float32
PEER_RATIO_GOAL = 1.0   # graphopt int8 latency at most 1.0x onnxruntime's quantized model
SQNR_GOAL = 35.0
ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def load_network(name: str, samples: int):
    """(folded float graph, calibration inputs, held-out inputs)."""
    import numpy as np
    import graphopt
    if name in ("lenet_digits", "resnet_digits"):
        from fixtures.build import digits_split
        x_train, _, x_test, _ = digits_split()
        prefix = ROOT / "fixtures" / "models" / name
        graph = graphopt.load(f"{prefix}-symbol.json", f"{prefix}-0000.params",
                              inputs={"data": (1, 1, 28, 28)})
        calibration, heldout = x_train[:samples], x_test[:64]
    else:
        from fixtures.zoo import export_zoo_model
        symbol, params, shape = export_zoo_model(name)
        graph = graphopt.load(symbol, params, inputs={"data": shape})
        rng = np.random.RandomState(0)
        calibration = rng.randn(samples, *shape[1:]).astype(np.float32)
        heldout = rng.randn(ZOO_HELDOUT, *shape[1:]).astype(np.float32)
    return graphopt.rewrite(graph)[0], calibration, heldout


def peer_quantize_static(float_path: Path, target: Path, calibration, method: str) -> float:
    """onnxruntime's quantize_static as the issue sets it; returns its wall seconds."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"data": calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(float_path), str(target), Samples(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method]))
    return time.perf_counter() - started


SPINNING_OFF = {"session.intra_op.allow_spinning": "0"}


def latencies(paths: dict[str, Path], x, runs: int, spinning: bool = True
              ) -> tuple[dict[str, float], dict[str, float]]:
    """(median wall ms, process CPU ms) per run at batch 1 with 2 threads, the models' runs
    interleaved. The CPU time (``time.process_time`` around each run: this process's threads
    only) is what the run cost on a shared machine, where the wall time also holds the waits
    for a core; it includes the worker threads' spinning unless ``spinning`` is off."""
    from graphopt.runtime import onnx_session
    config = None if spinning else SPINNING_OFF
    sessions = {key: onnx_session(str(path), threads=2, config=config)
                for key, path in paths.items()}
    feed = {"data": x[:1]}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feed)
    times: dict[str, list[float]] = {key: [] for key in sessions}
    cpu: dict[str, float] = {key: 0.0 for key in sessions}
    for _ in range(runs):
        for key, session in sessions.items():
            cpu_started, started = time.process_time(), time.perf_counter()
            session.run(None, feed)
            times[key].append(time.perf_counter() - started)
            cpu[key] += time.process_time() - cpu_started
    return ({key: 1000 * statistics.median(values) for key, values in times.items()},
            {key: 1000 * total / runs for key, total in cpu.items()})


def kernel_profile(paths: dict[str, Path], x, runs: int, graph) -> dict:
    """onnxruntime's per-node kernel times (median over ``runs`` interleaved runs, 1 thread so
    that a node's time is its work), summed per op type for each model; and for graphopt's
    int8 model the QLinearConv time and GMAC/s per kind of conv (input channels not a multiple
    of 4, 1x1, depthwise, other), beside float32's Conv GMAC/s over all convs. MACs from
    ``graphopt.analysis.inspect``; a QLinearConv node is named after the IR conv it fuses."""
    from graphopt.analysis.inspect import inspect_graph
    from graphopt.runtime import onnx_session
    sessions = {key: onnx_session(str(path), threads=1, config=SPINNING_OFF,
                                  profile_prefix=str(path.with_suffix("")) + "-profile")
                for key, path in paths.items()}
    feed = {"data": x[:1]}
    for _ in range(runs):
        for session in sessions.values():
            session.run(None, feed)
    result = {}
    for key, session in sessions.items():
        durations: dict[tuple[str, str], list[float]] = {}
        for event in json.loads(Path(session.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                node = (event["name"][:-len("_kernel_time")], event["args"]["op_name"])
                durations.setdefault(node, []).append(event["dur"] / 1000)
        medians = {node: statistics.median(values[-runs:]) for node, values in durations.items()}
        by_op: dict[str, float] = {}
        for (_name, op), ms in medians.items():
            by_op[op] = by_op.get(op, 0.0) + ms
        result[key] = {"total_ms": sum(by_op.values()),
                       "op_ms": dict(sorted(by_op.items(), key=lambda item: -item[1])),
                       "node_ms": {name: ms for (name, _op), ms in medians.items()}}
    convs = {layer["name"]: layer for layer in inspect_graph(graph)["layers"]
             if layer["op"] == "Convolution"}
    kinds: dict[str, dict] = {}
    for name, ms in result["graphopt"]["node_ms"].items():
        layer = convs.get(name.split("__Conv")[0])
        if layer is None or "__Conv" not in name:
            continue
        node = graph.node(layer["name"])
        weight = graph.params[graph.inputs_of(node.name)[1].node]
        depthwise = weight.shape[1] == 1 and int(node.attrs.get("num_group", 1)) > 1
        # MLAS's fast int8 conv (ConvSym) needs input channels per group in multiples of 4
        kind = ("depthwise" if depthwise else "in-channels % 4 != 0" if weight.shape[1] % 4
                else "1x1" if weight.shape[2:] in ((1, 1), ()) else "kxk")
        entry = kinds.setdefault(kind, {"count": 0, "macs": 0, "ms": 0.0})
        entry["count"] += 1
        entry["macs"] += layer["macs"]
        entry["ms"] += ms
    for entry in kinds.values():
        entry["gmac_per_s"] = entry["macs"] / entry["ms"] / 1e6
    float_conv_ms = result["float32"]["op_ms"].get("Conv", 0.0)
    all_macs = sum(layer["macs"] for layer in convs.values())
    for model in result.values():
        del model["node_ms"]
    result["graphopt_qlinearconv_by_kind"] = kinds
    result["float32_conv_gmac_per_s"] = all_macs / float_conv_ms / 1e6 if float_conv_ms else None
    return result


def bench_network(name: str, args, folder: Path) -> dict:
    import onnx
    import graphopt
    from graphopt.quantize import RecipeOptions, fusion_report, prepare, quantize_with
    from graphopt.quantize.sensitivity import sqnr_db
    from graphopt.runtime import onnx_session
    graph, calibration_inputs, heldout = load_network(name, args.samples)
    # onnxruntime quantizes the folded float model as the user has it; graphopt runs its own
    # recipe, as its CLI does by default: equalize, calibrate, quantize, correct the biases
    # (--no-equalize, --no-bias-correction to measure without)
    options = RecipeOptions(method=args.method, activations=args.activations, fold=False,
                            equalize=args.equalize, bias_correction=args.bias_correction)
    started = time.perf_counter()
    prepared = prepare(graph, calibration_inputs, options)
    calibrate_seconds = time.perf_counter() - started
    started = time.perf_counter()
    quantized = quantize_with(prepared, options)
    qgraph, report = quantized.graph, quantized.report
    quantize_seconds = time.perf_counter() - started
    paths = {"float32": folder / f"{name}-float.onnx", "graphopt": folder / f"{name}-int8.onnx",
             "onnxruntime": folder / f"{name}-ort-int8.onnx"}
    graphopt.to_onnx(graph, paths["float32"])
    model = graphopt.to_onnx(qgraph, paths["graphopt"])
    peer_seconds = peer_quantize_static(paths["float32"], paths["onnxruntime"],
                                        calibration_inputs, args.method)
    outputs = {key: onnx_session(str(path), threads=2).run(None, {"data": heldout})[0]
               for key, path in paths.items()}
    milliseconds, cpu_ms = latencies(paths, heldout, args.runs, spinning=args.spinning)
    ours = fusion_report(model)
    peer = fusion_report(onnx.load(str(paths["onnxruntime"])))
    row = {
        "model": name, "method": args.method, "activations": args.activations,
        "equalize": args.equalize, "bias_correction": args.bias_correction,
        "calibration_samples": len(calibration_inputs),
        "latency_ms": milliseconds, "cpu_ms_per_run": cpu_ms, "spinning": args.spinning,
        "cpu_speedup_vs_float32": cpu_ms["float32"] / cpu_ms["graphopt"],
        "cpu_vs_onnxruntime_int8": cpu_ms["graphopt"] / cpu_ms["onnxruntime"],
        "speedup_vs_float32": milliseconds["float32"] / milliseconds["graphopt"],
        "latency_vs_onnxruntime_int8": milliseconds["graphopt"] / milliseconds["onnxruntime"],
        "onnxruntime_int8_speedup_vs_float32": milliseconds["float32"] / milliseconds["onnxruntime"],
        "sqnr_db": {"graphopt": sqnr_db([outputs["float32"]], [outputs["graphopt"]]),
                    "onnxruntime": sqnr_db([outputs["float32"]], [outputs["onnxruntime"]])},
        "int8_groups": {"graphopt": len(ours.fused), "onnxruntime": len(peer.fused)},
        "float_groups": {"graphopt": len(ours.float_groups), "onnxruntime": len(peer.float_groups)},
        "graphopt_float_layers": report.float_layers,
        "file_bytes": {key: path.stat().st_size for key, path in paths.items()},
        "seconds": {"equalize_and_calibrate": calibrate_seconds, "quantize": quantize_seconds,
                    "onnxruntime_quantize_static": peer_seconds},
    }
    if args.profile:
        row["profile"] = kernel_profile(paths, heldout, args.runs, prepared.graph)
    return row


def calibration_cost(name: str, method: str, samples: int) -> dict:
    """Time and peak resident memory of calibrating ``name`` with ``method``, in a fresh process
    (so that the peak is this calibration's)."""
    script = ("import json, resource, sys, time; sys.path.insert(0, %r); "
              "from benchmarks.bench_quantize import load_network; "
              "from graphopt.quantize import calibrate; "
              "graph, x, _ = load_network(%r, %d); before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
              "t = time.perf_counter(); calibrate(graph, x, method=%r); t = time.perf_counter() - t; "
              "print(json.dumps({'seconds': t, 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
              "'rss_before_mb': before / 1024}))" % (str(ROOT), name, samples, method))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={"GRAPHOPT_PROGRESS": "0", "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=32, help="calibration samples")
    parser.add_argument("--method", choices=sorted(ORT_METHODS), default="minmax")
    parser.add_argument("--activations", choices=["uint8", "int8"], default="uint8")
    parser.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=True,
                        help="graphopt: cross-layer equalization before calibrating")
    parser.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=True,
                        help="graphopt: bias correction after quantizing")
    parser.add_argument("--spinning", action=argparse.BooleanOptionalAction, default=True,
                        help="onnxruntime's intra-op threads spin while waiting for work (its "
                             "default); --no-spinning: they block (fairer on a loaded machine)")
    parser.add_argument("--profile", action="store_true",
                        help="also onnxruntime's per-op kernel times (1 thread) and graphopt's "
                             "QLinearConv GMAC/s per kind of conv")
    parser.add_argument("--calibration", action="store_true",
                        help="also time calibration per method on resnet50_v1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import onnxruntime
    results = {"cpu_flags": cpu_flags(), "onnxruntime": onnxruntime.__version__,
               "goals": {"speedup_vs_float32": SPEEDUP_GOAL,
                         "latency_vs_onnxruntime_int8": PEER_RATIO_GOAL, "sqnr_db": SQNR_GOAL},
               "networks": []}
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-quantize-") as folder:
        for name in args.models.split(","):
            row = bench_network(name, args, Path(folder))
            results["networks"].append(row)
            if not args.json:
                print(_format_row(row), flush=True)
                if args.profile:
                    print(_format_profile(row["profile"]), flush=True)
    if args.calibration:
        results["calibration"] = {method: calibration_cost("resnet50_v1", method, args.samples)
                                  for method in ("minmax", "percentile", "entropy", "mse")}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        flags = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in results["cpu_flags"].items())
        print(f"CPU: {flags}; onnxruntime {results['onnxruntime']}")
        for method, cost in results.get("calibration", {}).items():
            print(f"calibrate resnet50_v1 {method}: {cost}")
    return 0


def _format_row(row: dict) -> str:
    ms, sqnr, cpu = row["latency_ms"], row["sqnr_db"], row["cpu_ms_per_run"]
    return (f"{row['model']}: float32 {ms['float32']:.2f} ms, graphopt int8 {ms['graphopt']:.2f} ms "
            f"({row['speedup_vs_float32']:.2f}x faster; goal {SPEEDUP_GOAL}x), onnxruntime int8 "
            f"{ms['onnxruntime']:.2f} ms (graphopt/onnxruntime {row['latency_vs_onnxruntime_int8']:.2f}; "
            f"goal <= {PEER_RATIO_GOAL}); SQNR graphopt {sqnr['graphopt']:.1f} dB, onnxruntime "
            f"{sqnr['onnxruntime']:.1f} dB; int8 groups {row['int8_groups']}, float groups "
            f"{row['float_groups']}; CPU time per run {cpu['float32']:.1f} / {cpu['graphopt']:.1f} / "
            f"{cpu['onnxruntime']:.1f} ms ({row['cpu_speedup_vs_float32']:.2f}x faster, "
            f"graphopt/onnxruntime {row['cpu_vs_onnxruntime_int8']:.2f}; spinning "
            f"{'on' if row['spinning'] else 'off'})")


def _format_profile(profile: dict) -> str:
    lines = []
    for key in ("float32", "graphopt", "onnxruntime"):
        ops = ", ".join(f"{op} {ms:.2f}" for op, ms in list(profile[key]["op_ms"].items())[:5])
        lines.append(f"  {key} kernels {profile[key]['total_ms']:.2f} ms (1 thread): {ops}")
    lines.append(f"  float32 Conv {profile['float32_conv_gmac_per_s'] or 0:.0f} GMAC/s; graphopt "
                 "QLinearConv " + ", ".join(
                     f"{kind} ({e['count']}) {e['ms']:.2f} ms {e['gmac_per_s']:.0f} GMAC/s"
                     for kind, e in profile["graphopt_qlinearconv_by_kind"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
