"""ONNX export: graphopt against MXNet's bundled exporter, in export time and in the speed of
the ONNX each writes.

1. Export time on resnet50_v1, vgg16_bn, densenet121, mobilenetv2_1.0 and inceptionv3 (the same
   MXNet files, exported by ``fixtures.zoo``), median of ``--repeat`` runs, from the two files
   on disk to an ``.onnx`` file on disk:
   - MXNet's bundled exporter, ``mxnet.onnx.export_model(symbol_path, params_path, ...)``, run in
     its own venv (mxnet 1.9.1, onnx 1.14.1: see ``benchmarks/peers.py``) in a subprocess;
   - graphopt: ``graphopt.load`` + ``graphopt.onnx.to_onnx(graph, path)``, in this process
     (``to_onnx`` alone is reported too).
   Goal: graphopt at least 5x faster on each model.
2. onnxruntime latency on resnet50_v1 of the two ONNX files, batch 1, 2 intra-op threads, in
   one process with the same onnxruntime (graphopt's), runs of the two models interleaved;
   medians. Goal: graphopt's ONNX at most 0.6x the bundled exporter's latency. For reference,
   the bundled exporter's model with its weights removed from the graph inputs (the fix
   PITFALLS.md describes) is timed beside them. And the compute bound: the model's FLOPs
   (``graphopt inspect``) against what onnxruntime's own large MatMul reaches on this machine,
   which says how close to the hardware a latency is and whether the goal's latency is within
   reach of any float32 graph computing the same convolutions.

Each exporter runs with its defaults: the bundled one writes a static batch, graphopt a dynamic
one (``dynamic_batch=True``), the harder case for graphopt's latency.

Not a test: it asserts nothing about time. Usage::

    .venv/bin/python benchmarks/bench_onnx_export.py [--repeat 3] [--models a,b] [--json]

The first run builds the peer venv (~30 s) and exports the zoo models it lacks (minutes).
When graphopt's exporter is missing or fails on a model, its cells say so and the peer's
figures are still reported.
"""

from __future__ import annotations

# Only the standard library at module level: the peer worker (``--peer-worker``) runs this file
# in the peer's venv, which has no graphopt.
import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ("resnet50_v1", "vgg16_bn", "densenet121", "mobilenetv2_1.0", "inceptionv3")
LATENCY_MODEL = "resnet50_v1"
EXPORT_GOAL = 5.0    # graphopt export at least 5x faster
LATENCY_GOAL = 0.6   # graphopt's ONNX at most 0.6x the latency


def seconds(function) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(runs: list[tuple[float, float]]) -> dict:
    return {"median": statistics.median(w for w, _ in runs),
            "median_cpu": statistics.median(c for _, c in runs),
            "runs": [round(w, 4) for w, _ in runs]}


# --- the peer side: runs in the peer venv ----------------------------------------------------------

def peer_worker(args: argparse.Namespace) -> None:
    """Export with ``mxnet.onnx.export_model`` ``--repeat`` times; print one JSON line."""
    import logging
    logging.disable(logging.INFO)  # the exporter logs every node
    import mxnet as mx
    import numpy as np
    import onnx
    from mxnet.onnx import export_model

    shape = tuple(int(d) for d in args.shape.split("x"))

    def export():
        export_model(args.symbol, args.params, in_shapes=[shape], in_types=np.float32,
                     onnx_file_path=args.output)

    runs = [seconds(export) for _ in range(args.repeat)]
    model = onnx.load(args.output, load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    print(json.dumps({**summary(runs), "output": args.output,
                      "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")],
                      "weights_as_inputs": sum(i.name in initializers for i in model.graph.input),
                      "versions": {"mxnet": mx.__version__, "onnx": onnx.__version__,
                                   "numpy": np.__version__}}))


def bundled_export(symbol_path: Path, params_path: Path, shape: tuple, out: Path,
                   repeat: int) -> dict:
    sys.path.insert(0, str(HERE))
    from peers import MX2ONNX, run_in_peer
    try:
        return run_in_peer(MX2ONNX, Path(__file__), [
            "--peer-worker", "--symbol", symbol_path, "--params", params_path,
            "--shape", "x".join(map(str, shape)), "--output", out, "--repeat", repeat])
    except Exception as error:  # a model the exporter cannot convert: report it, go on
        return {"error": str(error).strip().splitlines()[-1][:300]}


# --- graphopt's side -----------------------------------------------------------------------------

def graphopt_exporter():
    """``graphopt.onnx.to_onnx``, or the reason it is not there yet."""
    try:
        from graphopt.onnx import to_onnx
    except ImportError as error:
        return None, f"not available ({error})"
    return to_onnx, None


def graphopt_export(symbol_path: Path, params_path: Path, shape: tuple, out: Path,
                    repeat: int) -> dict:
    import graphopt
    to_onnx, missing = graphopt_exporter()
    if to_onnx is None:
        return {"error": missing}
    inputs = {"data": shape}
    try:
        to_onnx(graphopt.load(symbol_path, params_path, inputs=inputs), out)  # warm-up, and check
    except Exception as error:
        return {"error": f"failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    graph = graphopt.load(symbol_path, params_path, inputs=inputs)
    total = [seconds(lambda: to_onnx(graphopt.load(symbol_path, params_path, inputs=inputs), out))
             for _ in range(repeat)]
    export_only = [seconds(lambda: to_onnx(graph, out)) for _ in range(repeat)]
    return {**summary(total), "to_onnx_only": summary(export_only), "output": str(out)}


# --- onnxruntime latency -------------------------------------------------------------------------

def weights_only_as_initializers(source: Path, target: Path) -> Path:
    """The bundled exporter's model with the weights dropped from the graph inputs."""
    import onnx
    model = onnx.load(str(source))
    initializers = {t.name for t in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    onnx.save(model, str(target))
    return target


def ort_latency(models: dict[str, Path], shape: tuple, threads: int, runs: int,
                warmup: int) -> dict:
    """Median latency (ms) of each model, batch ``shape[0]``, interleaved runs in one process."""
    import numpy as np
    import onnxruntime as ort
    sessions, feeds = {}, {}
    data = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    for label, path in models.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # not one warning per weight-as-input of the bundled model
        # Idle pool threads spin for a while after a run; with sessions interleaved on 2 cores
        # the spinning threads of one session would slow the next one down.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[label] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds[label] = {sessions[label].get_inputs()[0].name: data}
    outputs = {label: sessions[label].run(None, feeds[label])[0] for label in sessions}
    for _ in range(warmup):
        for label in sessions:
            sessions[label].run(None, feeds[label])
    times = {label: [] for label in sessions}
    for round_ in range(runs):
        order = list(sessions) if round_ % 2 == 0 else list(reversed(list(sessions)))
        for label in order:
            started = time.perf_counter()
            sessions[label].run(None, feeds[label])
            times[label].append(1e3 * (time.perf_counter() - started))
    reference = next(iter(outputs.values()))
    scale = float(np.abs(reference).max()) or 1.0
    return {label: {"median_ms": statistics.median(values),
                    "max_rel_diff_vs_first": float(np.abs(outputs[label] - reference).max()) / scale}
            for label, values in times.items()} | {"onnxruntime": ort.__version__,
                                                   "threads": threads, "runs": runs}


def gemm_throughput(threads: int, runs: int, size: int = 1024) -> dict:
    """What onnxruntime's own GEMM reaches on this machine: one float32 ``size``-cube MatMul
    (weights an initializer), same threads and session options as the latency runs; median
    GFLOP/s. A compute-bound model cannot run faster than its FLOPs at this rate."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.uniform(-1, 1, (size, size)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"a": rng.uniform(-1, 1, (size, size)).astype(np.float32)}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return {"size": size, "gflops": 2 * size ** 3 / statistics.median(times) / 1e9}


def model_flops(name: str) -> int:
    """FLOPs of one image through the zoo model (``graphopt inspect``'s count)."""
    import graphopt
    from fixtures.zoo import export_zoo_model
    symbol_path, params_path, shape = export_zoo_model(name)
    graph = graphopt.load(symbol_path, params_path, inputs={"data": (1, *shape[1:])})
    return graphopt.inspect_graph(graph)["totals"]["flops"]


# --- the run -------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    from fixtures.zoo import export_zoo_model
    from peers import MX2ONNX, ensure_peer, installed_versions

    ensure_peer(MX2ONNX, log=lambda text: print(text, file=sys.stderr))
    folder = Path(args.output_dir or tempfile.mkdtemp(prefix="graphopt-onnx-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    results = {"peer": {"venv": MX2ONNX.name, "versions": installed_versions(MX2ONNX)},
               "repeat": args.repeat, "models": {}}
    results["latency_only"] = args.latency_only
    if args.latency_only:  # time the ONNX files an earlier run left in --output-dir
        results["models"][LATENCY_MODEL] = {
            side: {"output": str(path)} if path.exists() else {"error": f"{path} not found"}
            for side, path in (("bundled", folder / f"{LATENCY_MODEL}-mx2onnx.onnx"),
                               ("graphopt", folder / f"{LATENCY_MODEL}-graphopt.onnx"))}
    for name in [] if args.latency_only else args.models.split(","):
        symbol_path, params_path, shape = export_zoo_model(name)
        print(f"[bench] {name}: bundled exporter x{args.repeat}", file=sys.stderr, flush=True)
        bundled = bundled_export(symbol_path, params_path, shape,
                                 folder / f"{name}-mx2onnx.onnx", args.repeat)
        print(f"[bench] {name}: graphopt x{args.repeat}", file=sys.stderr, flush=True)
        ours = graphopt_export(symbol_path, params_path, shape, folder / f"{name}-graphopt.onnx",
                               args.repeat)
        entry = {"bundled": bundled, "graphopt": ours}
        if "median" in bundled and "median" in ours:
            entry["speedup"] = bundled["median"] / ours["median"]
            entry["speedup_cpu"] = bundled["median_cpu"] / ours["median_cpu"]
        results["models"][name] = entry

    latency = results["models"].get(LATENCY_MODEL, {})
    bundled_onnx = latency.get("bundled", {}).get("output")
    if bundled_onnx and not args.no_latency:
        print(f"[bench] {LATENCY_MODEL}: onnxruntime latency", file=sys.stderr, flush=True)
        models = {"bundled": Path(bundled_onnx),
                  "bundled, weights not inputs": weights_only_as_initializers(
                      Path(bundled_onnx), folder / f"{LATENCY_MODEL}-mx2onnx-initializers.onnx")}
        if "output" in latency.get("graphopt", {}):
            models["graphopt"] = Path(latency["graphopt"]["output"])
        shape = (1,) + tuple(export_zoo_model(LATENCY_MODEL)[2][1:])
        try:
            results["latency"] = ort_latency(models, shape, args.threads, args.runs, args.warmup)
        except Exception as error:
            results["latency"] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        if "graphopt" in results["latency"]:
            results["latency"]["ratio"] = (results["latency"]["graphopt"]["median_ms"]
                                           / results["latency"]["bundled"]["median_ms"])
            # the compute bound: how fast the goal's latency would have to compute
            results["latency"]["gemm"] = gemm_throughput(args.threads, max(10, args.runs // 5))
            results["latency"]["flops"] = model_flops(LATENCY_MODEL)
    results["output_dir"] = str(folder)
    return results


def _export_lines(results: dict) -> list[str]:
    versions = results["peer"]["versions"]
    lines = [f"ONNX export, median of {results['repeat']} (bundled exporter: mxnet "
             f"{versions.get('mxnet', '?')}, onnx {versions.get('onnx', '?')}, in its own venv)",
             "wall seconds (CPU seconds); graphopt = load + to_onnx, both from files to a file",
             f"{'model':<16} {'bundled s':>14} {'graphopt s':>14} {'to_onnx s':>10} "
             f"{'speedup':>8} {'(CPU)':>7}  goal >= {EXPORT_GOAL:g}x"]
    for name, entry in results["models"].items():
        bundled, ours = entry["bundled"], entry["graphopt"]
        cells = [f"{bundled['median']:.2f} ({bundled['median_cpu']:.2f})" if "median" in bundled
                 else "failed",
                 f"{ours['median']:.2f} ({ours['median_cpu']:.2f})" if "median" in ours else "n/a",
                 f"{ours['to_onnx_only']['median']:.2f}" if "median" in ours else "n/a",
                 f"{entry['speedup']:.2f}x" if "speedup" in entry else "-",
                 f"{entry['speedup_cpu']:.2f}x" if "speedup" in entry else ""]
        verdict = ("met" if entry["speedup"] >= EXPORT_GOAL else "not met") \
            if "speedup" in entry else ""
        lines.append(f"{name:<16} {cells[0]:>14} {cells[1]:>14} {cells[2]:>10} {cells[3]:>8} "
                     f"{cells[4]:>7}  {verdict}")
        for side, result in (("bundled", bundled), ("graphopt", ours)):
            if "error" in result:
                lines.append(f"    {side}: {result['error']}")
    return lines


def _latency_lines(latency: dict) -> list[str]:
    lines = [f"onnxruntime {latency.get('onnxruntime', '?')} latency, {LATENCY_MODEL}, batch 1, "
             f"{latency.get('threads', '?')} threads, median of {latency.get('runs', '?')} "
             f"interleaved runs"]
    if "error" in latency:
        lines.append(f"    failed: {latency['error']}")
    for label, value in latency.items():
        if isinstance(value, dict) and "median_ms" in value:
            lines.append(f"  {label:<30} {value['median_ms']:8.2f} ms   (max rel diff of "
                         f"output vs bundled: {value['max_rel_diff_vs_first']:.1e})")
    if "ratio" in latency:
        verdict = "met" if latency["ratio"] <= LATENCY_GOAL else "not met"
        lines.append(f"  graphopt / bundled: {latency['ratio']:.3f}x   goal <= "
                     f"{LATENCY_GOAL:g}x: {verdict}")
    if "gemm" in latency and "flops" in latency:
        peak, gflop = latency["gemm"]["gflops"], latency["flops"] / 1e9
        achieved = gflop / (latency["graphopt"]["median_ms"] / 1e3)
        goal_ms = LATENCY_GOAL * latency["bundled"]["median_ms"]
        needed = gflop / (goal_ms / 1e3)
        lines.append(f"  compute bound: {gflop:.2f} GFLOP per image; onnxruntime's own "
                     f"{latency['gemm']['size']}^3 MatMul reaches {peak:.0f} GFLOP/s here")
        lines.append(f"    graphopt's ONNX runs at {achieved:.0f} GFLOP/s ({achieved / peak:.0%} "
                     f"of that); the goal ({goal_ms:.1f} ms) needs {needed:.0f} GFLOP/s "
                     f"({needed / peak:.0%})")
    else:
        lines.append("  graphopt: not available")
    return lines


def format_report(results: dict) -> str:
    lines = [] if results.get("latency_only") else _export_lines(results) + [""]
    if results.get("latency"):
        lines += _latency_lines(results["latency"]) + [""]
    lines.append(f"ONNX files in {results['output_dir']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeat", type=int, default=3, help="exports per model (median)")
    parser.add_argument("--runs", type=int, default=100, help="timed onnxruntime runs per model")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--latency-only", action="store_true",
                        help="only the latency, of the files an earlier run left in --output-dir")
    parser.add_argument("--output-dir", help="where the ONNX files go (default: a temp folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    for option in ("--symbol", "--params", "--shape", "--output"):
        parser.add_argument(option, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.latency_only and not args.output_dir:
        parser.error("--latency-only needs the --output-dir of an earlier run")
    if args.peer_worker:
        peer_worker(args)
        return 0
    results = run(args)
    if not args.output_dir:  # a temporary folder: vgg16_bn alone leaves over 1 GB of ONNX
        shutil.rmtree(results["output_dir"], ignore_errors=True)
        results["output_dir"] += " (deleted; --output-dir keeps them)"
    print(json.dumps(results, indent=2) if args.json else format_report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
