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

MODELS = ("resnet50_v1", "mobilenetv2_1.0", "lenet_digits", "resnet_digits")
ZOO_HELDOUT = 8   # held-out seeded images per zoo network (SQNR)
SPEEDUP_GOAL = 2.5      # graphopt int8 at least 2.5x faster than float32
PEER_RATIO_GOAL = 1.0   # graphopt int8 latency at most 1.0x onnxruntime's quantized model
SQNR_GOAL = 35.0
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def cpu_flags() -> dict[str, bool]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {flag: flag in flags for flag in CPU_FLAGS}


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


def latencies(paths: dict[str, Path], x, runs: int) -> dict[str, float]:
    """Median ms per run at batch 1 with 2 threads, the models' runs interleaved."""
    from graphopt.runtime import onnx_session
    sessions = {key: onnx_session(str(path), threads=2) for key, path in paths.items()}
    feed = {"data": x[:1]}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feed)
    times: dict[str, list[float]] = {key: [] for key in sessions}
    for _ in range(runs):
        for key, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feed)
            times[key].append(time.perf_counter() - started)
    return {key: 1000 * statistics.median(values) for key, values in times.items()}


def bench_network(name: str, args, folder: Path) -> dict:
    import onnx
    import graphopt
    from graphopt.quantize import calibrate, correct_bias, equalize, fusion_report, quantize
    from graphopt.quantize.sensitivity import sqnr_db
    from graphopt.runtime import onnx_session
    graph, calibration_inputs, heldout = load_network(name, args.samples)
    # onnxruntime quantizes the folded float model as the user has it; graphopt, as its CLI
    # does by default, equalizes it first and corrects the biases after (--no-equalize,
    # --no-bias-correction to measure without)
    source = equalize(graph)[0] if args.equalize else graph
    started = time.perf_counter()
    calibration = calibrate(source, calibration_inputs, method=args.method)
    calibrate_seconds = time.perf_counter() - started
    started = time.perf_counter()
    qgraph, report = quantize(source, calibration, activations=args.activations)
    if args.bias_correction:
        qgraph, _ = correct_bias(qgraph, source, calibration_inputs)
    quantize_seconds = time.perf_counter() - started
    paths = {"float32": folder / f"{name}-float.onnx", "graphopt": folder / f"{name}-int8.onnx",
             "onnxruntime": folder / f"{name}-ort-int8.onnx"}
    graphopt.to_onnx(graph, paths["float32"])
    model = graphopt.to_onnx(qgraph, paths["graphopt"])
    peer_seconds = peer_quantize_static(paths["float32"], paths["onnxruntime"],
                                        calibration_inputs, args.method)
    outputs = {key: onnx_session(str(path), threads=2).run(None, {"data": heldout})[0]
               for key, path in paths.items()}
    milliseconds = latencies(paths, heldout, args.runs)
    ours = fusion_report(model)
    peer = fusion_report(onnx.load(str(paths["onnxruntime"])))
    return {
        "model": name, "method": args.method, "activations": args.activations,
        "equalize": args.equalize, "bias_correction": args.bias_correction,
        "calibration_samples": len(calibration_inputs),
        "latency_ms": milliseconds,
        "speedup_vs_float32": milliseconds["float32"] / milliseconds["graphopt"],
        "latency_vs_onnxruntime_int8": milliseconds["graphopt"] / milliseconds["onnxruntime"],
        "onnxruntime_int8_speedup_vs_float32": milliseconds["float32"] / milliseconds["onnxruntime"],
        "sqnr_db": {"graphopt": sqnr_db([outputs["float32"]], [outputs["graphopt"]]),
                    "onnxruntime": sqnr_db([outputs["float32"]], [outputs["onnxruntime"]])},
        "int8_groups": {"graphopt": len(ours.fused), "onnxruntime": len(peer.fused)},
        "float_groups": {"graphopt": len(ours.float_groups), "onnxruntime": len(peer.float_groups)},
        "graphopt_float_layers": report.float_layers,
        "file_bytes": {key: path.stat().st_size for key, path in paths.items()},
        "seconds": {"calibrate": calibrate_seconds, "quantize": quantize_seconds,
                    "onnxruntime_quantize_static": peer_seconds},
    }


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
    ms, sqnr = row["latency_ms"], row["sqnr_db"]
    return (f"{row['model']}: float32 {ms['float32']:.2f} ms, graphopt int8 {ms['graphopt']:.2f} ms "
            f"({row['speedup_vs_float32']:.2f}x faster; goal {SPEEDUP_GOAL}x), onnxruntime int8 "
            f"{ms['onnxruntime']:.2f} ms (graphopt/onnxruntime {row['latency_vs_onnxruntime_int8']:.2f}; "
            f"goal <= {PEER_RATIO_GOAL}); SQNR graphopt {sqnr['graphopt']:.1f} dB, onnxruntime "
            f"{sqnr['onnxruntime']:.1f} dB; int8 groups {row['int8_groups']}, float groups "
            f"{row['float_groups']}")


if __name__ == "__main__":
    sys.exit(main())
