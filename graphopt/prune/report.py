"""What a pruning did: per layer sparsity and zeroed filters, and the model's cost before/after.

:class:`PruneReport` is returned by :func:`graphopt.prune` (and written by ``graphopt prune
--report``). Per pruned layer it gives the weight's elements, its zeros before and after, the
sparsity, the output channels whose filter is all zero, the threshold that was applied, and the
layer's params, their bytes and MACs before and after (from
:func:`graphopt.analysis.inspect_graph`, so dropped channels show up as fewer MACs). ``nonzero_macs`` counts only the multiplies by a nonzero weight
(what a sparse kernel would do; a dense kernel still does all ``macs``).

The model totals (parameters, bytes, MACs) before and after come from the same inspection, and
``storage`` is the parameters' size on disk in several encodings, measured by writing them
(:mod:`graphopt.prune.storage`): zeros make a dense ``.params`` file no smaller.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from graphopt.analysis.inspect import _table, human_bytes, human_count, inspect_graph
from graphopt.ir.graph import Graph
from graphopt.prune.layers import PrunableLayer, num_groups, output_filters
from graphopt.prune.storage import storage_sizes


@dataclass
class LayerPruning:
    """One pruned layer. ``elements``/``filters`` are the original weight's; ``shape`` and
    ``filters_after`` the weight's after pruning (smaller once channels are dropped), and
    ``zeros_after`` counts the removed weights as zeros, so ``sparsity`` is the fraction of the
    original weights that are gone or zero."""
    name: str
    op: str
    weight: str
    shape: list[int]
    elements: int
    zeros_before: int
    zeros_after: int
    filters: int
    filters_after: int
    zeroed_filters_before: int
    zeroed_filters_after: int
    threshold: float | None = None
    params_before: int = 0
    params_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    nonzero_macs: int = 0

    @property
    def sparsity(self) -> float:
        return self.zeros_after / self.elements if self.elements else 0.0

    def to_dict(self) -> dict:
        return dict(asdict(self), sparsity=self.sparsity)


@dataclass
class PruneReport:
    """See the module docstring. ``settings`` holds what was asked; ``skipped`` lists what was
    not pruned and why (``{"layers": [...], "reason": ...}``); ``notes`` anything the user
    should know (a criterion that fell back, a target that could not be met exactly);
    ``dropped`` the channel dropper's report when channels were removed."""
    method: str
    settings: dict[str, Any]
    layers: list[LayerPruning]
    before: dict[str, int]
    after: dict[str, int]
    storage_before: dict[str, int] | None = None
    storage_after: dict[str, int] | None = None
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped: Any = None

    @property
    def sparsity(self) -> float:
        """Zeros among the pruned layers' weights (all of them together)."""
        elements = sum(layer.elements for layer in self.layers)
        return sum(layer.zeros_after for layer in self.layers) / elements if elements else 0.0

    def to_dict(self) -> dict:
        dropped = self.dropped
        if dropped is not None and hasattr(dropped, "to_dict"):
            dropped = dropped.to_dict()
        return {"method": self.method, "settings": self.settings, "sparsity": self.sparsity,
                "layers": [layer.to_dict() for layer in self.layers],
                "before": self.before, "after": self.after,
                "ratios": _ratios(self.before, self.after),
                "storage_before": self.storage_before, "storage_after": self.storage_after,
                "skipped": self.skipped, "notes": self.notes, "dropped": dropped}

    def format(self) -> str:
        return format_report(self)


def _totals(inspection: dict) -> dict[str, int]:
    parameters = inspection["parameters"]["total"]
    return {"params": parameters["count"], "bytes": parameters["bytes"],
            "macs": inspection["totals"]["macs"], "flops": inspection["totals"]["flops"]}


def _ratios(before: dict, after: dict) -> dict[str, float | None]:
    return {key: (after[key] / before[key] if before.get(key) else None) for key in after}


def _zeroed_filters(weight: np.ndarray, op: str, groups: int) -> int:
    filters = output_filters(weight, op, groups)
    return int(np.sum(~np.any(filters != 0, axis=1)))


def _weight_readers(graph: Graph, layer: PrunableLayer) -> list[str]:
    """The nodes that multiply by ``layer``'s weight: the layer, and the nodes sharing it."""
    if layer.weight not in graph:
        return [layer.name]
    readers = [name for name, slot in graph.consumers(layer.weight) if slot == 1]
    return list(dict.fromkeys(readers)) or [layer.name]


def build_report(method: str, settings: dict, before: Graph, after: Graph,
                 layers: list[PrunableLayer], thresholds: dict[str, float] | None = None,
                 measure_storage: bool = True) -> PruneReport:
    """Compare ``before`` with ``after`` over ``layers`` (the ones pruned, named as in
    ``before``; a layer whose weight is gone from ``after`` counts as fully removed)."""
    inspection_before, inspection_after = inspect_graph(before), inspect_graph(after)
    costs_before = {layer["name"]: layer for layer in inspection_before["layers"]}
    costs_after = {layer["name"]: layer for layer in inspection_after["layers"]}
    thresholds = thresholds or {}
    entries = []
    for layer in layers:
        old = before.params[layer.weight]
        new = after.params.get(layer.weight, np.zeros((0,), old.dtype))
        groups = num_groups(before, layer)
        new_groups = num_groups(after, layer) if layer.name in after else groups
        cost_before = costs_before.get(layer.name, {})
        cost_after = costs_after.get(layer.name, {"params": 0, "param_bytes": 0, "macs": 0})
        macs_before = sum(costs_before.get(n, {}).get("macs", 0)
                          for n in _weight_readers(before, layer))
        macs_after = sum(costs_after.get(n, {}).get("macs", 0)
                         for n in _weight_readers(after, layer))
        density = float(np.count_nonzero(new)) / new.size if new.size else 0.0
        entries.append(LayerPruning(
            name=layer.name, op=layer.op, weight=layer.weight, shape=list(new.shape),
            elements=int(old.size), zeros_before=int(old.size - np.count_nonzero(old)),
            zeros_after=int(old.size - np.count_nonzero(new)),
            filters=int(output_filters(old, layer.op, groups).shape[0]),
            filters_after=int(output_filters(new, layer.op, new_groups).shape[0]) if new.size else 0,
            zeroed_filters_before=_zeroed_filters(old, layer.op, groups),
            zeroed_filters_after=(_zeroed_filters(new, layer.op, new_groups) if new.size else 0),
            threshold=thresholds.get(layer.weight),
            params_before=int(cost_before.get("params", 0)),
            params_after=int(cost_after["params"]),
            bytes_before=int(cost_before.get("param_bytes", 0)),
            bytes_after=int(cost_after["param_bytes"]),
            macs_before=int(macs_before), macs_after=int(macs_after),
            nonzero_macs=int(round(macs_after * density))))
    report = PruneReport(method=method, settings=dict(settings), layers=entries,
                         before=_totals(inspection_before), after=_totals(inspection_after))
    if measure_storage:
        report.storage_before = storage_sizes(before)
        report.storage_after = storage_sizes(after)
    return report


def _ratio_text(before: float, after: float) -> str:
    return f"{after / before:.3f}x" if before else "-"


def format_report(report: PruneReport) -> str:
    """The report as text: the per-layer table, the totals with ratios, the storage sizes."""
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items() if v is not None)
    out = [f"Pruning ({report.method}: {settings})", ""]
    rows = [[l.name, l.op, "x".join(map(str, l.shape)), f"{100 * l.sparsity:.1f}%",
             f"{l.filters}" if l.filters_after == l.filters else f"{l.filters} -> {l.filters_after}",
             str(l.zeroed_filters_after),
             "-" if l.threshold is None else f"{l.threshold:.4g}",
             human_count(l.macs_before), human_count(l.macs_after), human_count(l.nonzero_macs)]
            for l in report.layers]
    out += _table(["layer", "op", "weight", "sparsity", "filters", "zero filters", "threshold",
                   "MACs before", "MACs after", "nonzero MACs"], rows, right=set(range(2, 10)))
    out += ["", f"sparsity of the pruned layers: {100 * report.sparsity:.2f}%", ""]
    before, after = report.before, report.after
    out += _table(["total", "", "before", "after", "after/before"], [
        ["parameters", "", human_count(before["params"]), human_count(after["params"]),
         _ratio_text(before["params"], after["params"])],
        ["bytes", "", human_bytes(before["bytes"]), human_bytes(after["bytes"]),
         _ratio_text(before["bytes"], after["bytes"])],
        ["MACs", "", human_count(before["macs"]), human_count(after["macs"]),
         _ratio_text(before["macs"], after["macs"])]], right={2, 3, 4})
    if report.storage_after:
        dense = report.storage_before["mxnet"] if report.storage_before else None
        title = "params file after, measured"
        out += ["", title + (f" (dense MXNet file before: {human_bytes(dense)}):" if dense else ":")]
        for name, size in report.storage_after.items():
            saving = f"  {size / dense:.3f} of before" if dense else ""
            out.append(f"  {name:<13} {human_bytes(size):>10}{saving}")
    if report.dropped is not None and hasattr(report.dropped, "format"):
        out += ["", report.dropped.format()]
    for skipped in report.skipped:
        names = ", ".join(skipped.get("layers", [])[:6])
        out.append(f"not pruned: {names}: {skipped['reason']}")
    out += [f"note: {note}" for note in report.notes]
    return "\n".join(out)


def refresh_after(report: PruneReport, before: Graph, after: Graph,
                  measure_storage: bool = True) -> None:
    """Recompute the after figures of ``report`` for ``after`` (the pruned graph once its
    zeroed channels were dropped); what was asked, thresholds, notes and skips stay."""
    pruned = [PrunableLayer(l.name, l.op, l.weight, None) for l in report.layers]
    thresholds = {l.weight: l.threshold for l in report.layers}
    fresh = build_report(report.method, report.settings, before, after, pruned, thresholds,
                         measure_storage=measure_storage)
    report.layers, report.after = fresh.layers, fresh.after
    report.storage_before, report.storage_after = fresh.storage_before, fresh.storage_after
