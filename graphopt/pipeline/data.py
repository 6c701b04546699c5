"""The data a pipeline evaluates, calibrates and trains on.

Evaluation data (``data`` in the pipeline, ``--data`` on the command line) is what every gate
is measured on: ``"digits"`` (the held-out split of the bundled digits), a ``.npz`` (arrays by
input name, or ``data``/``x`` with ``label``/``y`` for a single-input model; labels make
accuracy gates possible), or nothing: then ``samples`` seeded inputs of the model's input
shapes (:func:`graphopt.runtime.random_input`), and the gates are numeric (SQNR, relative error).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphopt.errors import DataError
from graphopt.ir.graph import Graph


@dataclass
class EvaluationData:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    def first(self, count: int = 1) -> dict[str, np.ndarray]:
        """The first ``count`` samples (latency is measured at batch 1)."""
        return {name: value[:count] for name, value in self.inputs.items()}

    def describe(self) -> dict:
        return {"source": self.source, "samples": self.count, "labelled": self.labels is not None}


def evaluation_data(graph: Graph, data: str | None, samples: int, seed: int) -> EvaluationData:
    """See the module docstring. ``samples`` only sizes seeded inputs."""
    if data is None:
        rng = np.random.RandomState(seed)
        from graphopt.runtime import random_input
        inputs = {}
        for node in graph.variables("input"):
            if node.shape is None:
                raise DataError(f"input {node.name!r} has no shape: give --input "
                                f"{node.name}:SHAPE or evaluation data")
            shape = (samples,) + tuple(node.shape[1:])
            inputs[node.name] = random_input(graph, node.name, shape,
                                             np.dtype(node.dtype or "float32"), rng)
        return EvaluationData(inputs, None, f"{samples} seeded inputs (seed {seed})")
    if data != "digits" and not data.endswith(".npz"):
        raise DataError(f"evaluation data must be 'digits' or a .npz file, not {data!r}")
    if data.endswith(".npz") and Path(data).is_file():
        with np.load(data) as arrays:
            if all(name in arrays for name in graph.input_names):
                labels = next((arrays[k] for k in ("label", "y") if k in arrays), None)
                inputs = _checked_shapes(graph, {name: arrays[name] for name in graph.input_names},
                                         data)
                return EvaluationData(inputs, _checked_labels(labels, inputs, data), data)
    from graphopt.distill.data import ArrayData, as_training_data
    loaded = as_training_data(data, role="val_data")
    if not isinstance(loaded, ArrayData):
        raise DataError(f"evaluation data {data!r} must be arrays in memory")
    if len(graph.input_names) != 1:
        raise DataError(f"{data}: the model has inputs {graph.input_names}; store one array per "
                        f"input name in the .npz", file=data)
    return EvaluationData(_checked_shapes(graph, {graph.input_names[0]: loaded.x}, loaded.source),
                          loaded.y, loaded.source)


def _checked_shapes(graph: Graph, inputs: dict, source: str) -> dict:
    """``inputs``, refused when a sample's shape is not the one the model was loaded for: a
    model with global pooling runs on other image sizes too, and its gates would measure it
    on inputs it is not deployed for."""
    for name, array in inputs.items():
        declared = graph.node(name).shape
        if declared is not None and tuple(np.shape(array)[1:]) != tuple(declared[1:]):
            raise DataError(f"{source}: samples of {name!r} have shape {tuple(np.shape(array)[1:])}"
                            f", but the model was loaded for {tuple(declared)} (per sample "
                            f"{tuple(declared[1:])})", file=source)
    return inputs


def _checked_labels(labels, inputs: dict, source: str):
    """The labels as int64 class indices (N,), one per sample of every input, or a DataError:
    labels of shape (N, 1), too few of them or fractional ones gave a wrong accuracy silently
    (numpy broadcast or compared them elementwise)."""
    if labels is None:
        return None
    from graphopt.distill.data import _labels
    labels = _labels(np.asarray(labels), source)
    counts = {name: len(array) for name, array in inputs.items()}
    if any(count != len(labels) for count in counts.values()):
        raise DataError(f"{source}: {len(labels)} labels for inputs of {counts} samples",
                        file=source)
    return labels


def calibration_data(graph: Graph, calib: str | None, evaluation: EvaluationData):
    """What :func:`graphopt.quantize.calibrate` reads: ``"digits"`` is the training split (never
    the held-out one the gates measure on), a ``.npz`` its input arrays (labels left out), other
    sources (an image folder, a calibration table) as they are, nothing the evaluation inputs."""
    if calib is None:
        return evaluation.inputs
    if calib == "digits":
        from graphopt.distill.data import digits
        x_train, _, _, _ = digits()
        return {graph.input_names[0]: x_train}
    if calib.endswith(".npz") and Path(calib).is_file():
        # a labelled .npz (the evaluation data's form) calibrates on its inputs only
        with np.load(calib) as arrays:
            if all(name in arrays for name in graph.input_names):
                return {name: arrays[name] for name in graph.input_names}
            key = next((k for k in ("data", "x") if k in arrays), None)
            if key is not None and len(graph.input_names) == 1:
                return {graph.input_names[0]: arrays[key]}
    return calib
