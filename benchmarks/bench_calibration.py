"""Calibration memory and time: graphopt's streaming histograms against onnxruntime's calibrators.

    .venv/bin/python benchmarks/bench_calibration.py                  # table
    .venv/bin/python benchmarks/bench_calibration.py --json
    .venv/bin/python benchmarks/bench_calibration.py --samples 100,1000 --ort-samples 50,200

Each measurement runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``) is its
own: the model loaded, then calibrated on N samples streamed from a generator (the samples are
never all in memory at once). The samples are the scikit-learn digits (``fixtures/digits.npz``)
upsampled to 224x224 by pixel repetition, on three channels, ImageNet-normalised: real image
structure (flat backgrounds, edges), not uniform noise.

- graphopt: ``graphopt.calibrate(graph, batches, method, num_samples=N)`` on resnet18_v1
  (``fixtures.zoo.export_zoo_model``), then the range of every tensor (the KL or MSE search
  included in the time), for each method and each N in ``--samples``.
- onnxruntime: ``onnxruntime.quantization.calibrate.create_calibrator`` on the same model
  exported by ``graphopt.to_onnx``, MinMax / Entropy / Percentile with their default options,
  ``collect_data`` over a reader giving the same batches, then ``compute_data``. Its histogram
  calibrators keep every activation of every sample until ``collect_data`` ends, so its sample
  counts are capped (``--ort-samples``, default 50 and 200).

Goals (issue 8): peak RSS of entropy calibration grows < 10% from 100 to 1000 samples; 1000
samples in < 1 GB; entropy takes <= 2x graphopt's own minmax time (CPU time of the process,
which other jobs on the machine stretch less than wall time; both printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

MODEL = "resnet18_v1"
CHUNK = 10                      # samples per batch the generator yields (graphopt re-batches)
GROWTH_GOAL = 0.10
MEMORY_GOAL_MB = 1024
TIME_RATIO_GOAL = 2.0
METHODS = ("minmax", "percentile", "entropy", "mse")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def digit_batches(count: int, chunk: int = CHUNK, size: int = 224):
    """``count`` samples (N, 3, size, size) float32 in batches of ``chunk``, made on the fly."""
    import numpy as np
    with np.load(ROOT / "fixtures" / "digits.npz") as digits:
        images = digits["images"].astype(np.float32) / 16.0      # (1797, 8, 8) in [0, 1]
    repeat = size // images.shape[1]
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    for start in range(0, count, chunk):
        indices = np.arange(start, min(start + chunk, count)) % len(images)
        big = images[indices].repeat(repeat, axis=1).repeat(repeat, axis=2)   # (n, size, size)
        yield ((big[:, None] - mean) / std).astype(np.float32)


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KB on Linux


# --- the children ---------------------------------------------------------------------------

def child_graphopt(config: dict) -> dict:
    import warnings

    import graphopt
    from fixtures import zoo
    symbol, params, shape = zoo.export_zoo_model(config["model"])
    graph = graphopt.load(symbol, params, inputs={"data": shape})
    loaded_rss = _current_rss_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = graphopt.calibrate(graph, digit_batches(config["samples"]), method=config["method"],
                                   num_samples=config["samples"], batch_size=config.get("batch_size"))
        for name in table.names:       # the range search is part of the work (KL, MSE)
            table.range(name)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {"tool": "graphopt", "method": config["method"], "samples": table.samples,
            "batch_size": table.batch_size, "tensors": len(table.names),
            "peak_rss_mb": _peak_rss_mb(), "rss_after_load_mb": loaded_rss,
            "seconds": seconds, "cpu_seconds": cpu_seconds}


def child_onnxruntime(config: dict) -> dict:
    import onnxruntime
    from onnxruntime.quantization.calibrate import (CalibrationDataReader, CalibrationMethod,
                                                    create_calibrator)

    class Reader(CalibrationDataReader):
        def __init__(self, count):
            self.batches = digit_batches(count)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"data": batch}

    loaded_rss = _current_rss_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as folder:
        calibrator = create_calibrator(config["onnx"],
                                       augmented_model_path=str(Path(folder) / "augmented.onnx"),
                                       calibrate_method=getattr(CalibrationMethod, config["method"]))
        calibrator.collect_data(Reader(config["samples"]))
        ranges = calibrator.compute_data()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {"tool": f"onnxruntime {onnxruntime.__version__}", "method": config["method"],
            "samples": config["samples"], "tensors": len(ranges.data),
            "peak_rss_mb": _peak_rss_mb(), "rss_after_load_mb": loaded_rss,
            "seconds": seconds, "cpu_seconds": cpu_seconds}


def run_child(config: dict) -> dict:
    """One measurement in a fresh interpreter; its last line of output is the JSON result."""
    process = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)],
                             capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "GRAPHOPT_PROGRESS": "0"})
    lines = process.stdout.strip().splitlines()
    if process.returncode != 0 or not lines:
        tail = (process.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {**config, "error": f"exit {process.returncode}: {tail}"}
    return json.loads(lines[-1])


# --- the parent -------------------------------------------------------------------------------

def export_onnx(model: str) -> Path:
    """resnet18_v1 as ONNX (graphopt's exporter), cached beside the zoo export."""
    import graphopt
    from fixtures import zoo
    symbol, params, shape = zoo.export_zoo_model(model)
    path = Path(symbol).with_name(f"{model}-calibration-bench.onnx")
    if not path.exists():
        graphopt.to_onnx(graphopt.load(symbol, params, inputs={"data": shape}), path=str(path))
    return path


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--samples", type=_counts, default=[100, 1000])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ort-samples", type=_counts, default=[50, 200])
    parser.add_argument("--ort-methods", default=",".join(ORT_METHODS))
    parser.add_argument("--batch-size", type=int, help="graphopt's MXNet batch (default: its own)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        config = json.loads(args.child)
        child = child_graphopt if config["tool"] == "graphopt" else child_onnxruntime
        print(json.dumps(child(config)))
        return 0

    from bench_quantize import cpu_flags
    from fixtures import zoo
    zoo.export_zoo_model(args.model)   # built once, before the children need it
    onnx_path = export_onnx(args.model)
    methods = [m for m in args.methods.split(",") if m]
    results = []
    for samples in args.samples:
        for method in methods:
            results.append(run_child({"tool": "graphopt", "model": args.model, "method": method,
                                      "samples": samples, "batch_size": args.batch_size}))
            _progress(results[-1], args.json)
    for samples in args.ort_samples:
        for method in [m for m in args.ort_methods.split(",") if m]:
            results.append(run_child({"tool": "onnxruntime", "onnx": str(onnx_path),
                                      "method": method, "samples": samples}))
            _progress(results[-1], args.json)
    summary = {"model": args.model, "cpu_flags": cpu_flags(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "results": results, "goals": _goals(results, args.samples)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_format(summary))
    return 0


def _progress(result: dict, quiet: bool) -> None:
    if not quiet:
        print(f"  measured {result.get('tool')} {result.get('method')} x{result.get('samples')}",
              file=sys.stderr)


def _find(results, tool_prefix, method, samples):
    for result in results:
        if str(result.get("tool", "")).startswith(tool_prefix) and result.get("method") == method \
                and result.get("samples") == samples and "error" not in result:
            return result
    return None


def _goals(results: list[dict], counts: list[int]) -> dict:
    goals = {}
    low, high = min(counts), max(counts)
    for method in METHODS:
        small, large = _find(results, "graphopt", method, low), _find(results, "graphopt", method, high)
        if small and large and low != high:
            goals[f"{method}_rss_growth_{low}_to_{high}"] = \
                large["peak_rss_mb"] / small["peak_rss_mb"] - 1.0
        if large:
            goals[f"{method}_peak_rss_mb_at_{high}"] = large["peak_rss_mb"]
    for samples in counts:
        entropy, minmax = (_find(results, "graphopt", m, samples) for m in ("entropy", "minmax"))
        if entropy and minmax:
            goals[f"entropy_over_minmax_cpu_time_at_{samples}"] = \
                entropy["cpu_seconds"] / minmax["cpu_seconds"]
            goals[f"entropy_over_minmax_wall_time_at_{samples}"] = \
                entropy["seconds"] / minmax["seconds"]
    return goals


def _format(summary: dict) -> str:
    flags = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in summary["cpu_flags"].items())
    lines = [f"calibration of {summary['model']}  (CPU: {flags}; OMP_NUM_THREADS="
             f"{summary['omp_num_threads']})", "",
             f"{'tool':<20} {'method':<11} {'samples':>7} {'peak RSS MB':>12} {'after load':>11} "
             f"{'wall s':>8} {'CPU s':>8}"]
    for r in summary["results"]:
        if "error" in r:
            lines.append(f"{r['tool']:<20} {r['method']:<11} {r['samples']:>7}  failed: {r['error']}")
            continue
        lines.append(f"{r['tool']:<20} {r['method']:<11} {r['samples']:>7} {r['peak_rss_mb']:>12.0f} "
                     f"{r['rss_after_load_mb']:>11.0f} {r['seconds']:>8.1f} {r['cpu_seconds']:>8.1f}")
    lines.append("")
    for name, value in summary["goals"].items():
        if "growth" in name:
            verdict = "ok" if value < GROWTH_GOAL else "MISSED"
            lines.append(f"{name}: {value:+.1%}  (goal < {GROWTH_GOAL:.0%}: {verdict})")
        elif "peak_rss" in name:
            verdict = "ok" if value < MEMORY_GOAL_MB else "MISSED"
            lines.append(f"{name}: {value:.0f} MB  (goal < {MEMORY_GOAL_MB} MB: {verdict})")
        else:
            verdict = "ok" if value <= TIME_RATIO_GOAL else "MISSED"
            lines.append(f"{name}: {value:.2f}x  (goal <= {TIME_RATIO_GOAL:.0f}x: {verdict})")
    lines.append("onnxruntime's sample counts are capped: its histogram calibrators keep every "
                 "activation of every sample until collect_data ends.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
