"""Filter pruning: do fewer MACs make a faster model? MACs against measured latency, in MXNet
and in onnxruntime, at 25/50/75% filter pruning of resnet50_v1 and mobilenetv2_1.0.

For each model (``fixtures.zoo.export_zoo_model``: the zoo architecture with non-degenerate
random weights) and each ratio R, ``graphopt.prune(graph, method="filters", ratio=R,
round_to=8, drop=True)`` zeroes the lowest-L1 fraction R of every channel segment's filters
(residual trunks together, the classifier's outputs kept) and drops them. Then:

- MACs before and after (``graphopt inspect``'s count) and their ratio;
- MXNet latency: the graph's symbol bound once per model (oneDNN fusion on, as MXNet runs by
  default), ``forward(is_train=False)`` + ``wait_to_read``, at each ``--batches`` size;
- onnxruntime latency: ``graphopt.to_onnx`` of the same graph, CPU provider, the session options
  of ``bench_onnx_export.ort_latency`` (``--threads`` intra-op threads, no spinning);
- a check that the dropped model computes what the masked (zeroed, not dropped) model computes
  in MXNet (max difference relative to the output's max-abs).

All variants of one model run interleaved in one process (round i runs them in one order, round
i+1 in the reverse), so a noisy neighbour slows them alike; medians of ``--runs``, of wall time
and of the process's CPU time (which does not count the time other jobs held the cores). The figure
that matters is the speedup ``latency(original) / latency(pruned)`` beside the MACs ratio
``MACs(original) / MACs(pruned)``. Goal: >= 1.7x faster at 50% (Torch-Pruning's ResNet-50 table:
45.2 -> 20.7 ms), and latency falling with MACs.

``--digits`` prints instead the issue's figures on the trained digits models (seconds, not
latency): LeNet threshold-pruned as in the tutorial (sparsity, held-out accuracy), and LeNet and
the digits ResNet at 50% filters + drop, MACs and accuracy before and after a short plain
fine-tune (``graphopt.distill(None, model, train, alpha=1)``, Adam 1e-3, last epoch, no
selection on the held-out set).

Not a test: it asserts nothing about time. Usage::

    .venv/bin/python benchmarks/bench_prune.py [--models resnet50_v1,mobilenetv2_1.0]
        [--ratios 0.25,0.5,0.75] [--batches 1,8] [--threads 2] [--runs 30] [--round-to 8]
        [--also-exact] [--json]
    .venv/bin/python benchmarks/bench_prune.py --digits [--epochs 3,10]
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
MODELS = ("resnet50_v1", "mobilenetv2_1.0")
RATIOS = (0.25, 0.5, 0.75)
SPEEDUP_GOAL = 1.7   # at 50% filters


def interleaved_medians(runners: dict, runs: int, warmup: int) -> tuple[dict, dict]:
    """Median wall and CPU milliseconds of each ``runner()`` over ``runs`` interleaved rounds.
    CPU time (every thread of this process) does not count time other jobs took the cores
    away, which on a shared machine stretches wall time by up to 2x, unevenly."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    wall = {label: [] for label in runners}
    cpu = {label: [] for label in runners}
    for round_ in range(runs):
        labels = list(runners) if round_ % 2 == 0 else list(reversed(list(runners)))
        for label in labels:
            started, started_cpu = time.perf_counter(), time.process_time()
            runners[label]()
            wall[label].append(1e3 * (time.perf_counter() - started))
            cpu[label].append(1e3 * (time.process_time() - started_cpu))
    return ({label: statistics.median(v) for label, v in wall.items()},
            {label: statistics.median(v) for label, v in cpu.items()})


def ort_runner(path: Path, batch_shape: tuple, threads: int):
    """An onnxruntime session of ``path`` (CPU, ``threads`` intra-op threads, no spinning: an
    idle spinning pool would steal the 2 cores from the next variant), as a callable."""
    import numpy as np
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name:
            np.random.default_rng(0).uniform(-1, 1, batch_shape).astype(np.float32)}
    return lambda: session.run(None, feed)


def mxnet_runner(graph, batch: int):
    """A bound MXNet executor of ``graph`` at ``batch``, as a no-argument callable."""
    import mxnet as mx
    import numpy as np
    from graphopt.mxnet_io.infer import to_symbol
    symbol = to_symbol(graph)
    shape = (batch,) + tuple(graph.node("data").shape[1:])
    data = mx.nd.array(np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32))
    params = {name: mx.nd.array(value, dtype=value.dtype) for name, value in graph.params.items()}
    args = {name: params[name] for name in symbol.list_arguments() if name in params}
    args["data"] = data
    aux = {name: params[name] for name in symbol.list_auxiliary_states()}
    executor = symbol.bind(mx.cpu(), args=args, aux_states=aux, grad_req="null")

    def run():
        executor.forward(is_train=False)[0].wait_to_read()
    return run, executor


def mxnet_output(graph, images):
    from graphopt.runtime import run_mxnet
    return next(iter(run_mxnet(graph, {"data": images}).values()))


def bench_model(name: str, args: argparse.Namespace, folder: Path) -> dict:
    import numpy as np
    import graphopt
    from fixtures.zoo import export_zoo_model
    symbol_path, params_path, shape = export_zoo_model(name)
    graph = graphopt.load(symbol_path, params_path, inputs={"data": (1, *shape[1:])})
    variants = {"original": graph}
    entry: dict = {"ratios": {}}
    images = np.random.default_rng(1).uniform(-1, 1, (2, *shape[1:])).astype(np.float32)
    settings = [(ratio, args.round_to, f"{int(round(ratio * 100))}%") for ratio in args.ratios]
    if args.also_exact and args.round_to:
        settings += [(ratio, None, f"{int(round(ratio * 100))}% exact") for ratio in args.ratios]
    for ratio, round_to, label in settings:
        print(f"[bench] {name}: filters {label}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        masked, _ = graphopt.prune(graph, method="filters", ratio=ratio, round_to=round_to,
                                   measure_storage=False)
        try:
            smaller, report = graphopt.prune(graph, method="filters", ratio=ratio,
                                             round_to=round_to, drop=True,
                                             measure_storage=False)
        except Exception as error:  # the dropper is another room's: say what it did
            entry["ratios"][label] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            continue
        seconds = time.perf_counter() - started
        reference, actual = mxnet_output(masked, images), mxnet_output(smaller, images)
        entry["ratios"][label] = {
            "prune_and_drop_seconds": round(seconds, 2),
            "macs_before": report.before["macs"], "macs_after": report.after["macs"],
            "params_after": report.after["params"],
            "channels_dropped": report.dropped.dropped,
            "channels_zeroed_kept": sum(g["zeroed_kept"] for g in report.dropped.groups),
            "macs_speedup": report.before["macs"] / report.after["macs"],
            "max_rel_diff_vs_masked": float(np.abs(actual - reference).max()
                                            / (np.abs(reference).max() or 1.0)),
        }
        entry["macs"] = report.before["macs"]
        entry["params"] = report.before["params"]
        variants[label] = smaller

    for batch in args.batches:
        print(f"[bench] {name}: MXNet latency, batch {batch}", file=sys.stderr, flush=True)
        runners = {label: mxnet_runner(g, batch)[0] for label, g in variants.items()}
        wall, cpu = interleaved_medians(runners, args.runs, args.warmup)
        entry.setdefault("mxnet_ms", {})[batch] = wall
        entry.setdefault("mxnet_cpu_ms", {})[batch] = cpu
        del runners
        print(f"[bench] {name}: onnxruntime latency, batch {batch}", file=sys.stderr, flush=True)
        runners = {}
        for label, g in variants.items():
            path = folder / f"{name}-{label.replace('%', '').replace(' ', '-')}.onnx"
            if not path.exists():
                graphopt.to_onnx(g, path)
            runners[label] = ort_runner(path, (batch, *shape[1:]), args.threads)
        wall, cpu = interleaved_medians(runners, args.runs, args.warmup)
        entry.setdefault("onnxruntime_ms", {})[batch] = wall
        entry.setdefault("onnxruntime_cpu_ms", {})[batch] = cpu
        del runners
    for label, figures in entry["ratios"].items():
        if "error" in figures:
            continue
        for timing in ("mxnet", "mxnet_cpu", "onnxruntime", "onnxruntime_cpu"):
            for batch, medians in entry[f"{timing}_ms"].items():
                figures[f"{timing}_speedup_b{batch}"] = medians["original"] / medians[label]
    return entry


def digits_figures(epochs: list[int]) -> dict:
    """Threshold pruning of the trained LeNet; 50% filters + drop of LeNet and the digits
    ResNet, before and after fine-tuning ``epochs`` epochs (module docstring)."""
    import numpy as np
    import graphopt
    from fixtures.build import digits_split, fixture_path
    from graphopt.runtime import run_mxnet
    x_train, y_train, x_test, y_test = digits_split()

    def accuracy(graph) -> float:
        (logits,) = run_mxnet(graph, {"data": x_test}).values()
        return float(np.mean(logits.argmax(axis=1) == y_test))

    results = {}
    for name in ("lenet_digits", "resnet_digits"):
        graph = graphopt.load(*fixture_path(name), inputs={"data": (1, 1, 28, 28)})
        entry = results[name] = {"accuracy": accuracy(graph), "thresholds": {}}
        if name == "lenet_digits":
            for threshold in (0.05, 0.1, 0.15):
                pruned, report = graphopt.prune(graph, threshold=threshold,
                                                layers="op:Convolution", measure_storage=False)
                entry["thresholds"][threshold] = {
                    "sparsity": report.sparsity, "accuracy": accuracy(pruned),
                    "per_layer": {l.name: l.sparsity for l in report.layers}}
        print(f"[bench] {name}: 50% filters + drop, fine-tuning", file=sys.stderr, flush=True)
        smaller, report = graphopt.prune(graph, method="filters", ratio=0.5, drop=True,
                                         measure_storage=False)
        entry["filters_50"] = {"macs_before": report.before["macs"],
                               "macs_after": report.after["macs"],
                               "params_before": report.before["params"],
                               "params_after": report.after["params"],
            "channels_dropped": report.dropped.dropped,
            "channels_zeroed_kept": sum(g["zeroed_kept"] for g in report.dropped.groups),
                               "accuracy": accuracy(smaller), "fine_tuned": {}}
        for count in epochs:
            started = time.perf_counter()
            result = graphopt.distill(None, smaller, (x_train, y_train), alpha=1.0,
                                      epochs=count, seed=0)
            entry["filters_50"]["fine_tuned"][count] = {
                "accuracy": accuracy(result.student),
                "seconds": round(time.perf_counter() - started, 1)}
    return results


def format_digits(results: dict) -> str:
    lines = ["The digits models (held-out accuracy on 359 images)"]
    for name, entry in results.items():
        lines.append(f"{name}: accuracy {entry['accuracy']:.4f}")
        for threshold, figures in entry["thresholds"].items():
            per_layer = ", ".join(f"{n} {100 * v:.1f}%" for n, v in figures["per_layer"].items())
            lines.append(f"  threshold {threshold} on the convolutions: sparsity "
                         f"{100 * figures['sparsity']:.1f}% ({per_layer}), accuracy "
                         f"{figures['accuracy']:.4f}")
        half = entry["filters_50"]
        tuned = ", ".join(f"{count} epochs {f['accuracy']:.4f} ({f['seconds']} s)"
                          for count, f in half["fine_tuned"].items())
        lines.append(f"  50% filters + drop: MACs {half['macs_before']:,} -> {half['macs_after']:,}"
                     f" ({half['macs_before'] / half['macs_after']:.2f}x fewer), parameters "
                     f"{half['params_before']:,} -> {half['params_after']:,}; accuracy "
                     f"{half['accuracy']:.4f} before fine-tuning; fine-tuned: {tuned}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    from cpu import cpu_flags, cpu_model
    import mxnet as mx
    import onnxruntime as ort
    flags = [flag for flag, present in cpu_flags().items() if present]
    results = {"cpu": {"model": cpu_model(), "cores": os.cpu_count(), "flags": flags},
               "threads": args.threads, "runs": args.runs,
               "round_to": args.round_to, "mxnet": mx.__version__,
               "onnxruntime": ort.__version__, "models": {}}
    with tempfile.TemporaryDirectory(prefix="graphopt-prune-bench-") as folder:
        for name in args.models:
            results["models"][name] = bench_model(name, args, Path(folder))
    return results


def format_report(results: dict) -> str:
    cpu = results["cpu"]
    lines = [f"Filter pruning + dropping: MACs vs latency (medians of {results['runs']} "
             f"interleaved runs, {results['threads']} threads, round_to={results['round_to']})",
             f"CPU: {cpu['model']}, {cpu.get('cores')} cores; flags: {' '.join(cpu['flags'])}",
             f"MXNet {results['mxnet']} (oneDNN fusion on), onnxruntime {results['onnxruntime']}",
             ""]
    for name, entry in results["models"].items():
        batches = list(entry.get("mxnet_ms", {}))
        header = f"{'':10} {'MACs':>8} {'MACs x':>7}"
        for batch in batches:
            for runtime in ("MXNet", "ORT"):
                header += f" {runtime + ' b' + str(batch) + ' ms':>12} {'x':>5} {'x CPU':>6}"
        lines += [f"{name}: {entry.get('macs', 0) / 1e9:.2f} GMACs, "
                  f"{entry.get('params', 0) / 1e6:.1f} M parameters", header]
        rows = {"original": {}} | entry["ratios"]
        for label, figures in rows.items():
            if "error" in figures:
                lines.append(f"{label:10} {figures['error']}")
                continue
            macs = figures.get("macs_after", entry.get("macs", 0))
            line = f"{label:10} {macs / 1e9:8.3f} {entry.get('macs', 0) / macs if macs else 0:6.2f}x"
            for batch in batches:
                for runtime in ("mxnet", "onnxruntime"):
                    wall = entry[f"{runtime}_ms"][batch]
                    cpu = entry[f"{runtime}_cpu_ms"][batch]
                    line += (f" {wall[label]:12.2f} {wall['original'] / wall[label]:4.2f}x"
                             f" {cpu['original'] / cpu[label]:5.2f}x")
            if "max_rel_diff_vs_masked" in figures:
                line += (f"   ({figures['channels_dropped']} channels dropped, "
                         f"{figures['channels_zeroed_kept']} zeroed kept; vs masked "
                         f"{figures['max_rel_diff_vs_masked']:.1e})")
            lines.append(line)
        half = entry["ratios"].get("50%", {})
        speedups = [half.get(f"{t}_speedup_b1") for t in ("mxnet", "onnxruntime")]
        if all(speedups):
            verdict = "met" if min(speedups) >= SPEEDUP_GOAL else "NOT met"
            lines.append(f"goal >= {SPEEDUP_GOAL}x at 50% (batch 1, wall): {verdict} "
                         f"(MXNet {speedups[0]:.2f}x, onnxruntime {speedups[1]:.2f}x; CPU time "
                         f"{half['mxnet_cpu_speedup_b1']:.2f}x, "
                         f"{half['onnxruntime_cpu_speedup_b1']:.2f}x)")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    parser.add_argument("--batches", default="1,8", help="batch sizes to time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per variant (median)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--round-to", type=int, default=8,
                        help="keep multiples of this many channels (0: exact ratios)")
    parser.add_argument("--also-exact", action="store_true",
                        help="also time each ratio without --round-to (channel counts as the "
                             "ratio gives them), interleaved with the rounded ones")
    parser.add_argument("--digits", action="store_true",
                        help="only the digits models' sparsity, MACs and accuracy figures")
    parser.add_argument("--epochs", default="3,10", help="--digits: fine-tuning epochs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.round_to = args.round_to or None
    # MXNet reads its thread count when it loads: set it before anything imports mxnet
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.pop("MXNET_SUBGRAPH_BACKEND", None)
    if args.digits:
        sys.path.insert(0, str(ROOT))
        results = digits_figures([int(e) for e in args.epochs.split(",")])
        print(json.dumps(results, indent=2) if args.json else format_digits(results))
        return 0
    results = run(args)
    print(json.dumps(results, indent=2) if args.json else format_report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
