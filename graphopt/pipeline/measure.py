"""The figures of one model in the before/after table: parameters, bytes, MACs, latency in
MXNet and onnxruntime, accuracy (with labels), and its outputs' SQNR and relative error against
another model's (the gates' evidence).

Latency is the median over ``runs`` single-sample forward passes after one warm-up, on a
session or executor built once: MXNet with its default (oneDNN-fused) backend, as deployed,
and onnxruntime with its default optimizations. On a shared machine these numbers are noisy;
the table shows them for orientation, the gates never read them.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Sequence

import numpy as np

from graphopt._progress import progress
from graphopt.compare import relative_error
from graphopt.ir.graph import Graph
from graphopt.pipeline.data import EvaluationData
from graphopt.quantize.sensitivity import sqnr_db

EVALUATION_BATCH = 64


def run_in_batches(run: Callable[[dict], Sequence[np.ndarray]], data: EvaluationData,
                   what: str) -> list[np.ndarray]:
    """``run`` over the evaluation data in batches (with a progress bar), outputs joined."""
    pieces: list[list[np.ndarray]] = []
    starts = range(0, data.count, EVALUATION_BATCH)
    for start in progress(starts, desc=f"evaluate {what}", total=len(starts), unit="batch"):
        batch = {name: value[start:start + EVALUATION_BATCH] for name, value in data.inputs.items()}
        pieces.append(list(run(batch)))
    return [np.concatenate([piece[i] for piece in pieces]) for i in range(len(pieces[0]))]


def mxnet_runner(graph: Graph) -> Callable[[dict], list[np.ndarray]]:
    from graphopt.runtime import MXNetModel
    model = MXNetModel.from_graph(graph)
    return model.forward


def onnx_runner(model) -> Callable[[dict], list[np.ndarray]]:
    from graphopt.runtime import onnx_session, run_onnx
    session = onnx_session(model)
    return lambda batch: list(run_onnx(session, batch).values())


def accuracy(outputs: Sequence[np.ndarray], labels: np.ndarray | None) -> float | None:
    first = outputs[0]
    if labels is None or first.ndim < 2 or first.shape[1] < 2:
        return None
    return float(np.mean(first.argmax(1) == np.asarray(labels)))


def output_agreement(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> dict:
    """SQNR (dB) and relative error of ``outputs`` against ``reference``, JSON-safe."""
    sqnr = sqnr_db(reference, outputs)
    return {"sqnr_db": None if math.isinf(sqnr) and sqnr > 0 else round(sqnr, 3),
            "relative_error": max(relative_error(r, o) for r, o in zip(reference, outputs))}


def latency_ms(run: Callable[[], object], runs: int) -> float:
    run()  # warm-up: first-run allocations and kernel selection
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(1000.0 * statistics.median(times), 4)


def mxnet_latency(graph: Graph, inputs: dict, runs: int) -> float:
    from graphopt.runtime import MXNetModel
    model = MXNetModel.from_graph(graph)
    executor = model._bind(model.symbol, inputs)  # bound once, fused as deployed
    return latency_ms(lambda: [out.wait_to_read() for out in executor.forward(is_train=False)],
                      runs)


def onnx_latency(onnx_model, inputs: dict, runs: int) -> float:
    from graphopt.runtime import onnx_session
    session = onnx_session(onnx_model)
    names = [value.name for value in session.get_outputs()]
    feed = {value.name: inputs[value.name] for value in session.get_inputs()}
    return latency_ms(lambda: session.run(names, feed), runs)


def size_figures(graph: Graph, onnx_model) -> dict:
    """Parameters (elements), their bytes as the IR holds them, the ONNX file's bytes, MACs."""
    from graphopt.analysis import inspect_graph
    report = inspect_graph(graph)
    parameters = report["parameters"]["total"]
    return {"params": int(parameters["count"]), "param_bytes": int(parameters["bytes"]),
            "onnx_bytes": len(onnx_model.SerializeToString()), "macs": int(report["totals"]["macs"])}
