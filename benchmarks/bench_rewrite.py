"""Rewrite speed: graphopt's default rules against the onnxscript optimizer and onnxoptimizer's
``fuse_bn_into_conv``, and time per node as graphs grow.

1. resnet50_v1, resnet152_v1, vgg16_bn (``fixtures.zoo`` exports, random non-degenerate
   weights): ``graphopt.rewrite.rewrite`` on the loaded graph, against the two peers on the same
   model exported to ONNX by ``graphopt.onnx.to_onnx``. The peers run in their own venv
   (``benchmarks/peers.py``; never graphopt's .venv, whose numpy must stay 1.23.5), this same
   script being run there with ``--peer``. Each side: one warm-up, then the median of
   ``--repeat`` runs; loading and serialising are not timed on either side (the peers get a fresh
   in-memory copy of the ModelProto per run, graphopt a loaded Graph it copies itself).
2. Synthetic chains of conv-BatchNorm-relu blocks (1k, 10k, 100k blocks; 8 nodes per block with
   parameters, 4 channels of 4x4 so the arithmetic is negligible): time per node must stay flat.
3. ``--standalone-bn``: MXNet's BatchNorm against the broadcast_mul + broadcast_add that would
   replace a BatchNorm with nothing to fold into (why graphopt leaves those alone by default).

Not a test: it asserts nothing. Usage::

    .venv/bin/python benchmarks/bench_rewrite.py [--repeat 5] [--models resnet50_v1,...]
        [--chains 1000,10000,100000] [--no-peers] [--standalone-bn] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet50_v1", "resnet152_v1", "vgg16_bn")
CHAINS = (1000, 10000, 100000)


# --- the peer side (runs in the peers' venv: no graphopt, no mxnet) ------------------------------

def peer_main(argv: list[str]) -> int:
    """``--peer MODEL.onnx --repeat N``: time both peers on one model, print one JSON line."""
    import onnx
    import onnxoptimizer
    import onnxscript
    from onnxscript import optimizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", required=True)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    base = onnx.load(args.peer)

    def fresh():
        model = onnx.ModelProto()
        model.CopyFrom(base)
        return model

    def timed(function):
        times, result = [], None
        for _ in range(args.repeat + 1):  # the first is the warm-up
            model = fresh()
            started = time.perf_counter()
            result = function(model)
            times.append(time.perf_counter() - started)
        return statistics.median(times[1:]), result

    def histogram(model):
        counts = {}
        for node in model.graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return counts

    script_seconds, script_model = timed(optimizer.optimize)
    fuse_seconds, fuse_model = timed(lambda m: onnxoptimizer.optimize(m, ["fuse_bn_into_conv"]))
    print(json.dumps({
        "nodes": len(base.graph.node),
        "onnxscript": {"seconds": script_seconds, "nodes": len(script_model.graph.node),
                       "ops": histogram(script_model), "version": onnxscript.__version__},
        "onnxoptimizer": {"seconds": fuse_seconds, "nodes": len(fuse_model.graph.node),
                          "ops": histogram(fuse_model), "version": onnxoptimizer.__version__},
    }))
    return 0


# --- graphopt's side -------------------------------------------------------------------------------

def _imports():
    for path in (ROOT, ROOT / "benchmarks"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def onnx_peer():
    _imports()
    from peers import Peer
    return Peer(
        name="onnx-optimizers-venv",
        requirements=("onnxscript==0.7.2", "onnxoptimizer==0.4.2", "onnx==1.23.2",
                      "onnxruntime==1.32.0"),
        probe="import onnxscript.optimizer, onnxoptimizer, onnx",
        why="onnxscript's optimizer and onnxoptimizer need numpy >= 2, which MXNet 1.9.1 cannot use",
    )


def median_seconds(function, repeat: int) -> tuple[float, float, object]:
    """(first run, median of the ``repeat`` runs after it, last result)."""
    times, result = [], None
    for _ in range(repeat + 1):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return times[0], statistics.median(times[1:]), result


def bench_model(name: str, repeat: int, peers: bool, cache: Path) -> dict:
    import graphopt
    from fixtures import zoo
    from graphopt.rewrite import rewrite

    symbol_path, params_path, shape = zoo.export_zoo_model(name)
    started = time.perf_counter()
    graph = graphopt.load(symbol_path, params_path, inputs={"data": shape})
    load_seconds = time.perf_counter() - started
    first, median, (optimized, report) = median_seconds(lambda: rewrite(graph), repeat)
    ops_before = sum(report.ops_before.values())
    result = {"model": name, "load_seconds": load_seconds,
              "graphopt": {"seconds": median, "first_run_seconds": first, "ops_before": ops_before,
                           "ops_after": sum(report.ops_after.values()),
                           "batchnorm_after": report.ops_after.get("BatchNorm", 0),
                           "fired": {k: v for k, v in report.fired().items() if v}}}
    if not peers:
        return result
    try:
        from graphopt.onnx import to_onnx
    except ImportError as error:
        result["peers_skipped"] = f"no graphopt.onnx.to_onnx ({error})"
        return result
    from peers import run_in_peer
    cache.mkdir(parents=True, exist_ok=True)
    onnx_path = cache / f"{name}.onnx"
    if not onnx_path.exists():
        to_onnx(graph, path=onnx_path)
    result.update(run_in_peer(onnx_peer(), Path(__file__), ["--peer", onnx_path, "--repeat", repeat]))
    for peer in ("onnxscript", "onnxoptimizer"):
        result[peer]["ratio"] = result[peer]["seconds"] / median  # > 1: graphopt is faster
    return result


def conv_bn_relu_chain(blocks: int, channels: int = 4, size: int = 4):
    """``blocks`` x (conv weight, Convolution, gamma, beta, mean, var, BatchNorm, Activation),
    built through the IR's edit API with the shapes set directly: MXNet's whole-graph inference
    is not what is measured here."""
    import numpy as np

    from graphopt import Graph, Tensor, TensorType

    graph = Graph(f"chain{blocks}")
    shape = (1, channels, size, size)
    graph.add_variable("data", "input", shape=shape, dtype="float32")
    rng = np.random.RandomState(0)
    weight = rng.normal(0.0, 0.3, (channels, channels, 3, 3)).astype(np.float32)
    stats = {role: rng.uniform(0.5, 1.5, channels).astype(np.float32)
             for role in ("gamma", "beta", "moving_mean", "moving_var")}
    x = Tensor("data", 0)
    for i in range(blocks):
        w = graph.add_param(f"conv{i}_weight", weight)
        conv = graph.add_node("Convolution", [x, Tensor(w.name, 0)], name=f"conv{i}",
                              attrs={"kernel": (3, 3), "pad": (1, 1), "num_filter": channels,
                                     "no_bias": True})
        bn_inputs = [Tensor(conv.name, 0)]
        for role, value in stats.items():
            kind = "aux" if role.startswith("moving") else "param"
            bn_inputs.append(Tensor(graph.add_param(f"bn{i}_{role}", value, kind=kind).name, 0))
        bn = graph.add_node("BatchNorm", bn_inputs, name=f"bn{i}",
                            attrs={"fix_gamma": False, "eps": 1e-5})
        relu = graph.add_node("Activation", [Tensor(bn.name, 0)], name=f"relu{i}",
                              attrs={"act_type": "relu"})
        for node in (conv, bn, relu):
            node.outputs = [TensorType(shape, "float32")]
        x = Tensor(relu.name, 0)
    graph.outputs = [x]
    graph.output_labels = [graph.tensor_name(x)]
    return graph


def bench_chain(blocks: int) -> dict:
    from graphopt.rewrite import load_rules, rewrite
    load_rules()  # parse the rule files once, outside the timing
    graph = conv_bn_relu_chain(blocks)
    started = time.perf_counter()
    _, report = rewrite(graph)
    seconds = time.perf_counter() - started
    assert report.ops_after.get("BatchNorm", 0) == 0
    return {"blocks": blocks, "nodes": len(graph), "seconds": seconds,
            "microseconds_per_node": seconds / len(graph) * 1e6}


def bench_standalone_batchnorm(repeat: int = 200) -> list[dict]:
    import mxnet as mx
    import numpy as np

    def forward_time(symbol, shapes):
        executor = symbol.simple_bind(mx.cpu(), grad_req="null", **shapes)
        for array in list(executor.arg_dict.values()) + list(executor.aux_dict.values()):
            array[:] = np.random.uniform(0.5, 1.5, array.shape)
        for _ in range(10):
            executor.forward(is_train=False)[0].wait_to_read()
        started = time.perf_counter()
        for _ in range(repeat):
            executor.forward(is_train=False)[0].wait_to_read()
        return (time.perf_counter() - started) / repeat

    rows = []
    for shape in [(1, 64, 112, 112), (1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14),
                  (1, 2048, 7, 7)]:
        data = mx.sym.Variable("data")
        batchnorm = forward_time(mx.sym.BatchNorm(data, fix_gamma=False), {"data": shape})
        scale, shift = mx.sym.Variable("scale"), mx.sym.Variable("shift")
        lowered = mx.sym.broadcast_add(mx.sym.broadcast_mul(data, scale), shift)
        channel = (1, shape[1], 1, 1)
        mul_add = forward_time(lowered, {"data": shape, "scale": channel, "shift": channel})
        rows.append({"shape": shape, "batchnorm_ms": batchnorm * 1e3, "mul_add_ms": mul_add * 1e3})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--chains", default=",".join(map(str, CHAINS)))
    parser.add_argument("--no-peers", action="store_true", help="time graphopt only")
    parser.add_argument("--standalone-bn", action="store_true",
                        help="also time BatchNorm against broadcast_mul + broadcast_add in MXNet")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "graphopt" / "bench"),
                        help="where the ONNX exports for the peers are kept")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    _imports()
    results: dict = {"models": [], "chains": []}
    for name in filter(None, args.models.split(",")):
        row = bench_model(name, args.repeat, not args.no_peers, Path(args.cache))
        results["models"].append(row)
        if not args.json:
            print(format_model(row), flush=True)
    for blocks in filter(None, args.chains.split(",")):
        row = bench_chain(int(blocks))
        results["chains"].append(row)
        if not args.json:
            print(f"chain {row['blocks']:>6} conv-BN-relu blocks, {row['nodes']:>7} nodes: "
                  f"{row['seconds']:8.2f} s, {row['microseconds_per_node']:6.1f} us/node", flush=True)
    if args.standalone_bn:
        results["standalone_batchnorm"] = bench_standalone_batchnorm()
        if not args.json:
            for row in results["standalone_batchnorm"]:
                print(f"standalone BatchNorm {row['shape']}: BatchNorm {row['batchnorm_ms']:.2f} ms, "
                      f"broadcast_mul+add {row['mul_add_ms']:.2f} ms "
                      f"({row['mul_add_ms'] / row['batchnorm_ms']:.2f}x)", flush=True)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0


def format_model(row: dict) -> str:
    ours = row["graphopt"]
    text = (f"{row['model']:<13} graphopt {ours['seconds'] * 1e3:7.1f} ms (first run "
            f"{ours['first_run_seconds'] * 1e3:.0f} ms), ops {ours['ops_before']} -> {ours['ops_after']}, "
            f"BatchNorm left {ours['batchnorm_after']}")
    for peer in ("onnxscript", "onnxoptimizer"):
        if peer in row:
            theirs = row[peer]
            text += (f"\n{'':<13} {peer:<13} {theirs['seconds'] * 1e3:7.1f} ms, nodes {row['nodes']} -> "
                     f"{theirs['nodes']}: graphopt {theirs['ratio']:.1f}x faster")
    if "peers_skipped" in row:
        text += f"\n{'':<13} peers skipped: {row['peers_skipped']}"
    return text


if __name__ == "__main__":
    if "--peer" in sys.argv:
        sys.exit(peer_main(sys.argv[1:]))
    sys.exit(main())
