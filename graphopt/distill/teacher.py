"""The teacher: a loaded model run in inference mode, its logits cached.

The teacher runs through :class:`graphopt.runtime.MXNetModel`, which binds with
``grad_req="null"`` and runs ``forward(is_train=False)``: BatchNorm uses its moving statistics
and never updates them, dropout is off, and no gradient reaches the teacher's weights
(PITFALLS.md, Distillation: "the teacher runs in inference mode and its BatchNorm statistics
never move"). ``tests/test_distill.py`` checks the statistics are bit-identical after training.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np

from graphopt.distill.models import ModelSource, as_graph, logits_graph, single_input
from graphopt.errors import ShapeError
from graphopt.ir.graph import Graph
from graphopt.mxnet_io.infer import first_error_line
from graphopt.runtime import MXNetModel

INFERENCE_BATCH = 256  # rows per teacher run when caching: big enough to amortise the bind


class Teacher:
    """``Teacher(model).logits(x)`` -> (N, classes) float32 logits at inference."""

    def __init__(self, model: ModelSource):
        self.graph: Graph = as_graph(model, "teacher")
        self.input_name = single_input(self.graph, "teacher")
        self._model = MXNetModel.from_graph(logits_graph(self.graph, "teacher"))

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The input shape the teacher was loaded with (None if loaded without one)."""
        return self.graph.node(self.input_name).shape

    def logits(self, x: np.ndarray, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
        chunks = []
        for start in range(0, len(x), batch_size):
            try:
                (output,) = self._model.forward({self.input_name: x[start:start + batch_size]},
                                                )
            except (ShapeError, mx.MXNetError) as error:
                reason = error.message if isinstance(error, ShapeError) else first_error_line(error)
                raise ShapeError(f"the teacher cannot run on inputs of shape {x.shape[1:]} "
                                 f"(per sample): {reason}",
                                 file=self.graph.source.get("symbol")) from None
            chunks.append(output.astype(np.float32, copy=False))
        return np.concatenate(chunks)
