"""Load and save speed: graphopt against MXNet's own loaders, and load time as graphs grow.

1. Model-zoo nets (resnet50_v1, vgg16_bn, exported by ``fixtures.zoo``): ``graphopt.load``
   (parse, params, MXNet shape inference) and ``graphopt.save_mxnet``, against MXNet's
   ``mx.sym.load`` + ``mx.nd.load`` and ``mx.model.save_checkpoint``. Runs alternate between
   the two sides; medians of ``--repeat`` runs after one warm-up of each.
2. Synthetic chains of 1k, 10k and 100k nodes (a unit is weight, bias, FullyConnected(8),
   Activation: 4 nodes, 2 of them parameters), written as symbol JSON directly. Time per node
   must stay flat as the graph grows: a rising figure means something quadratic.

Not a test: it asserts nothing about time. Usage::

    .venv/bin/python benchmarks/bench_load_save.py [--repeat 5] [--chains 1000,10000,100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

import graphopt  # noqa: E402

MODELS = ("resnet50_v1", "vgg16_bn")
CHAIN_UNIT = 4  # nodes per unit: weight, bias, FullyConnected, Activation
CHAIN_WIDTH = 8


def timed(function) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call. CPU time is the steadier figure
    on a shared machine: other jobs stretch wall time, not the CPU time this process uses."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def median_runs(functions: dict, repeat: int) -> dict[str, float]:
    """Median wall seconds (``name``) and CPU seconds (``name_cpu``) of each function over
    ``repeat`` rounds, after a warm-up round; the functions run in turn within a round, so a
    slow moment of the machine hits them all."""
    for function in functions.values():
        function()
    runs = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            runs[name].append(timed(function))
    medians = {}
    for name, values in runs.items():
        medians[name] = statistics.median(wall for wall, _cpu in values)
        medians[f"{name}_cpu"] = statistics.median(cpu for _wall, cpu in values)
    return medians


# --- model-zoo nets ------------------------------------------------------------------------------

def bench_model(name: str, repeat: int, folder: Path) -> dict:
    from fixtures.zoo import export_zoo_model
    symbol_path, params_path, shape = export_zoo_model(name)
    graph = graphopt.load(symbol_path, params_path, inputs={"data": shape})
    symbol = mx.sym.load(str(symbol_path))
    stored = mx.nd.load(str(params_path))
    arg_params = {k[4:]: v for k, v in stored.items() if k.startswith("arg:")}
    aux_params = {k[4:]: v for k, v in stored.items() if k.startswith("aux:")}

    def mxnet_load():
        mx.sym.load(str(symbol_path))
        loaded = mx.nd.load(str(params_path))
        {k[4:]: v for k, v in loaded.items()}  # noqa: B018 (split as save_checkpoint wants)

    times = median_runs({
        "graphopt_load": lambda: graphopt.load(symbol_path, params_path, inputs={"data": shape}),
        "mxnet_load": mxnet_load,
        "graphopt_save": lambda: graphopt.save_mxnet(graph, folder / f"{name}-graphopt"),
        "mxnet_save": lambda: mx.model.save_checkpoint(str(folder / f"{name}-mxnet"), 0, symbol,
                                                       arg_params, aux_params),
    }, repeat)
    times["graphopt_total"] = times["graphopt_load"] + times["graphopt_save"]
    times["mxnet_total"] = times["mxnet_load"] + times["mxnet_save"]
    return {"model": name, "nodes": len(graph), "params_mb": round(sum(
        a.nbytes for a in graph.params.values()) / 2**20, 1), **times,
        **{f"ratio_{step}": times[f"graphopt_{step}"] / times[f"mxnet_{step}"]
           for step in ("load", "save", "total")}}


# --- synthetic chains ----------------------------------------------------------------------------

def write_chain(nodes: int, folder: Path) -> tuple[Path, Path]:
    """A chain of ``nodes // 4`` units FullyConnected(8) -> relu, as symbol JSON and params."""
    units = max(nodes // CHAIN_UNIT, 1)
    entries = [{"op": "null", "name": "data", "inputs": []}]
    arg_nodes, previous = [0], 0
    for i in range(units):
        base = len(entries)
        entries += [
            {"op": "null", "name": f"fc{i}_weight", "inputs": []},
            {"op": "null", "name": f"fc{i}_bias", "inputs": []},
            {"op": "FullyConnected", "name": f"fc{i}",
             "attrs": {"num_hidden": str(CHAIN_WIDTH)},
             "inputs": [[previous, 0, 0], [base, 0, 0], [base + 1, 0, 0]]},
            {"op": "Activation", "name": f"relu{i}", "attrs": {"act_type": "relu"},
             "inputs": [[base + 2, 0, 0]]},
        ]
        arg_nodes += [base, base + 1]
        previous = base + 3
    symbol = {"nodes": entries, "arg_nodes": arg_nodes,
              "node_row_ptr": list(range(len(entries) + 1)), "heads": [[previous, 0, 0]],
              "attrs": {"mxnet_version": ["int", 10901]}}
    symbol_path = folder / f"chain{nodes}-symbol.json"
    params_path = folder / f"chain{nodes}-0000.params"
    symbol_path.write_text(json.dumps(symbol))
    rng = np.random.default_rng(0)
    weight = mx.nd.array(rng.normal(size=(CHAIN_WIDTH, CHAIN_WIDTH)).astype(np.float32) / 3)
    bias = mx.nd.array(rng.normal(size=(CHAIN_WIDTH,)).astype(np.float32) / 10)
    arrays = {}
    for i in range(units):  # the same two arrays under every name: writing is what we need
        arrays[f"arg:fc{i}_weight"] = weight
        arrays[f"arg:fc{i}_bias"] = bias
    mx.nd.save(str(params_path), arrays)
    return symbol_path, params_path


def bench_chain(nodes: int, repeat: int, folder: Path) -> dict:
    started = time.perf_counter()
    symbol_path, params_path = write_chain(nodes, folder)
    build = time.perf_counter() - started
    inputs = {"data": (1, CHAIN_WIDTH)}
    graph = graphopt.load(symbol_path, params_path, inputs=inputs)
    count = len(graph)

    def mxnet_load():
        mx.sym.load(str(symbol_path))
        mx.nd.load(str(params_path))

    times = median_runs({
        "graphopt_load": lambda: graphopt.load(symbol_path, params_path, inputs=inputs),
        "mxnet_load": mxnet_load,
    }, repeat)
    return {"nodes": count, "build_seconds": build, **times,
            "graphopt_us_per_node": 1e6 * times["graphopt_load"] / count,
            "graphopt_cpu_us_per_node": 1e6 * times["graphopt_load_cpu"] / count,
            "mxnet_us_per_node": 1e6 * times["mxnet_load"] / count,
            "mxnet_cpu_us_per_node": 1e6 * times["mxnet_load_cpu"] / count,
            "ratio_load": times["graphopt_load"] / times["mxnet_load"]}


# --- report --------------------------------------------------------------------------------------

def format_tables(models: list[dict], chains: list[dict]) -> str:
    lines = []
    if models:
        lines += ["Model-zoo nets: median seconds (graphopt / MXNet = ratio; < 1 means graphopt "
                  "is faster)",
                  f"{'model':<12} {'nodes':>6} {'MiB':>6}  {'load':>22}  {'save':>22}  "
                  f"{'load + save':>22}"]
        for r in models:
            cells = [f"{r[f'graphopt_{s}']:6.3f} / {r[f'mxnet_{s}']:6.3f} = {r[f'ratio_{s}']:4.2f}"
                     for s in ("load", "save", "total")]
            lines.append(f"{r['model']:<12} {r['nodes']:>6} {r['params_mb']:>6}  "
                         + "  ".join(f"{c:>22}" for c in cells))
        lines.append("")
    if chains:
        lines += ["Synthetic chains (FullyConnected + relu units): load time per node must stay "
                  "flat. Median wall seconds; us/node as wall (CPU)",
                  f"{'nodes':>8}  {'graphopt s':>10}  {'us/node':>14}  {'MXNet s':>8}  "
                  f"{'us/node':>14}  {'ratio':>6}"]
        for r in chains:
            per_node = [f"{r[f'{side}_us_per_node']:.1f} ({r[f'{side}_cpu_us_per_node']:.1f})"
                        for side in ("graphopt", "mxnet")]
            lines.append(f"{r['nodes']:>8}  {r['graphopt_load']:>10.3f}  {per_node[0]:>14}  "
                         f"{r['mxnet_load']:>8.3f}  {per_node[1]:>14}  {r['ratio_load']:>6.1f}")
        first, last = chains[0], chains[-1]
        growth = [last[key] / first[key] for key in ("graphopt_us_per_node",
                                                     "graphopt_cpu_us_per_node")]
        lines.append(f"graphopt time per node, {last['nodes']} vs {first['nodes']} nodes: "
                     f"{growth[0]:.2f}x wall, {growth[1]:.2f}x CPU (1.00 = flat)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="model-zoo names, comma-separated ('' for none)")
    parser.add_argument("--chains", default="1000,10000,100000",
                        help="chain sizes in nodes, comma-separated ('' for none)")
    parser.add_argument("--chain-repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="graphopt-bench-"))
    try:
        models = [bench_model(name, args.repeat, folder)
                  for name in filter(None, args.models.split(","))]
        chains = [bench_chain(int(n), args.chain_repeat, folder)
                  for n in filter(None, args.chains.split(","))]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                          "mxnet": mx.__version__, "repeat": args.repeat,
                          "models": models, "chains": chains}, indent=2))
    else:
        print(format_tables(models, chains))
    return 0


if __name__ == "__main__":
    sys.exit(main())
