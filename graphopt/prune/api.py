"""``graphopt.prune(graph, method=...)``: one entry point for magnitude and filter pruning.

>>> pruned, report = graphopt.prune(graph, method="magnitude", threshold=0.05,
...                                 layers="op:Convolution")        # the classic tutorial
>>> pruned, report = graphopt.prune(graph, method="magnitude", sparsity=0.8, scope="global")
>>> small, report = graphopt.prune(graph, method="filters", ratio=0.5, drop=True)

Zeroing makes nothing smaller or faster by itself: magnitude pruning makes the params file
compressible (``report.storage_after``), filter pruning zeroes whole output channels, which
``drop=True`` (or :func:`graphopt.prune.drop_channels` afterwards) removes from every coupled
tensor, so the model really has fewer parameters and MACs. The input graph is never modified.
"""

from __future__ import annotations

from typing import Any

from graphopt.errors import PruneError
from graphopt.ir.graph import Graph
from graphopt.prune.layers import LayerSelection
from graphopt.prune.report import PruneReport

METHODS = ("magnitude", "filters")


def prune(graph: Graph, method: str = "magnitude", *, threshold: float | None = None,
          sparsity: float | None = None, ratio: float | None = None,
          criterion: str = "l1", scope: str = "layer", layers: LayerSelection = None,
          round_to: int | None = None, drop: bool = False,
          measure_storage: bool = True) -> tuple[Graph, PruneReport]:
    """Prune ``graph``; returns ``(new graph, report)``.

    ``method="magnitude"`` takes ``threshold`` or ``sparsity`` (and ``scope``), see
    :mod:`graphopt.prune.magnitude`. ``method="filters"`` takes ``ratio`` (the fraction of
    output channels to zero), ``criterion`` (``l1``, ``l2`` or ``bn_gamma``), ``scope`` and
    ``round_to`` (keep a multiple of this many channels), see :mod:`graphopt.prune.filters`.
    ``layers`` selects layers by name, regex or op (:mod:`graphopt.prune.layers`).
    ``drop=True`` then removes the zeroed channels (:func:`graphopt.prune.drop_channels`);
    the report's ``after`` figures are those of the smaller model and ``dropped`` holds the
    dropper's report. ``measure_storage=False`` skips writing the params in each encoding
    (seconds on a ResNet-50).
    """
    if method == "magnitude":
        _refuse_unused(method, ratio=ratio, round_to=round_to,
                       criterion=None if criterion == "l1" else criterion)
        from graphopt.prune.magnitude import prune_magnitude
        pruned, report = prune_magnitude(graph, threshold=threshold, sparsity=sparsity,
                                         layers=layers, scope=scope,
                                         measure_storage=measure_storage and not drop)
    elif method == "filters":
        _refuse_unused(method, threshold=threshold, sparsity=sparsity)
        if ratio is None:
            raise PruneError("filter pruning needs ratio=R, the fraction of output channels to "
                             "zero (0 <= R < 1)")
        from graphopt.prune.filters import prune_filters
        pruned, report = prune_filters(graph, ratio=ratio, criterion=criterion, scope=scope,
                                       layers=layers, round_to=round_to,
                                       measure_storage=measure_storage and not drop)
    else:
        raise PruneError(f"unknown pruning method {method!r}; the methods are {METHODS}")
    if drop:
        pruned = apply_drop(graph, pruned, report, measure_storage)
    return pruned, report


def apply_drop(original: Graph, pruned: Graph, report: PruneReport,
               measure_storage: bool = True) -> Graph:
    """Remove the zeroed channels of ``pruned`` and bring ``report`` up to date (the after
    figures of the smaller graph, per layer too; the dropper's report in ``dropped``)."""
    from graphopt.prune import drop_channels
    from graphopt.prune.report import refresh_after
    smaller, drop_report = drop_channels(pruned)
    refresh_after(report, original, smaller, measure_storage=measure_storage)
    report.dropped = drop_report
    return smaller


def _refuse_unused(method: str, **given: Any) -> None:
    unused = [name for name, value in given.items() if value is not None]
    if unused:
        verb = "does" if len(unused) == 1 else "do"
        raise PruneError(f"{', '.join(unused)} {verb} not apply to method={method!r}")
