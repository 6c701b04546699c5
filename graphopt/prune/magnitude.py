"""Magnitude (unstructured) pruning: zero the weights of smallest absolute value.

Two ways to say how much, on the layers ``layers`` selects (:mod:`graphopt.prune.layers`):

- ``threshold=T``: zero every weight with ``|w| <= T``, keeping ``|w| > T`` — the classic
  tutorial's ``w * (|w| > threshold)``. A threshold that would zero a whole layer is refused
  (the error gives each layer's largest |w|): the layer's output would no longer depend on its
  input.
- ``sparsity=S`` (0 <= S < 1): exactly ``round(S * n)`` zeros in each layer's ``n`` weights
  (``scope="layer"``), or ``round(S * N)`` zeros over all ``N`` selected weights ranked
  together (``scope="global"``: layers with many small weights give more). Ties in |w| are
  broken by position, so the count is exact. Each layer keeps at least its largest weight.
  Weights that were already zero count towards the target.

Only weights (input slot 1) are pruned; biases and BatchNorm parameters are left alone. The
input graph is never modified: the result is a copy whose pruned weights are new arrays.
"""

from __future__ import annotations

import math

import numpy as np

from graphopt.errors import PruneError
from graphopt.ir.graph import Graph
from graphopt.prune.layers import LayerSelection, PrunableLayer, select_layers, selection_setting
from graphopt.prune.report import PruneReport, build_report

SCOPES = ("layer", "global")


def _check_threshold(threshold: float) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise PruneError(f"threshold must be a number >= 0, got {threshold!r}") from None
    if not math.isfinite(value) or value < 0:
        raise PruneError(f"threshold must be a finite number >= 0 (weights with |w| <= threshold "
                         f"are zeroed), got {threshold!r}")
    return value


def check_fraction(value: float, what: str, upper_text: str = "below 1") -> float:
    """``value`` as a float in [0, 1), else a :class:`PruneError` naming ``what``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PruneError(f"{what} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= number < 1.0:
        raise PruneError(f"{what} must be in [0, 1) (0 prunes nothing; it must stay {upper_text} "
                         f"so that every layer keeps something), got {value!r}")
    return number


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise PruneError(f"scope must be one of {SCOPES}, got {scope!r}")
    return scope


def _threshold_masks(graph: Graph, layers: list[PrunableLayer], threshold: float):
    masks, whole = {}, []
    for layer in layers:
        magnitude = np.abs(graph.params[layer.weight])
        # compared in float64: numpy would round the threshold to a float16 weight's dtype
        keep = magnitude.astype(np.float64, copy=False) > threshold
        if not keep.any() and magnitude.size:
            whole.append(layer.name)
        masks[layer.weight] = keep
    if whole:
        largest = ", ".join(f"{layer.name} {float(np.abs(graph.params[layer.weight]).max()):.4g}"
                            for layer in layers)
        raise PruneError(f"threshold {threshold:g} would zero every weight of {', '.join(whole)}; "
                         f"it must stay below each selected layer's largest |w|: {largest}")
    return masks


def _smallest(magnitudes: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` smallest values, ties broken by position (exact counts)."""
    return np.argsort(magnitudes, kind="stable")[:count]


def _sparsity_masks(graph: Graph, layers: list[PrunableLayer], sparsity: float, scope: str,
                    notes: list[str]):
    masks = {}
    if scope == "layer":
        for layer in layers:
            magnitude = np.abs(graph.params[layer.weight]).reshape(-1)
            count = round(sparsity * magnitude.size)
            if count >= magnitude.size:
                count = magnitude.size - 1
                notes.append(f"{layer.name}: {sparsity:g} of {magnitude.size} weights rounds to "
                             f"all of them; kept the largest one")
            keep = np.ones(magnitude.size, dtype=bool)
            keep[_smallest(magnitude, count)] = False
            masks[layer.weight] = keep.reshape(graph.params[layer.weight].shape)
        return masks

    # global: rank every selected weight together, each layer's largest one set aside
    flats = [np.abs(graph.params[layer.weight]).reshape(-1) for layer in layers]
    total = sum(flat.size for flat in flats)
    count = round(sparsity * total)
    reserved = [int(np.argmax(flat)) for flat in flats]
    candidates = np.concatenate([np.delete(flat, r) for flat, r in zip(flats, reserved)])
    if count > candidates.size:
        notes.append(f"global sparsity {sparsity:g} of {total} weights rounds to {count}; "
                     f"each layer keeps its largest weight, so {candidates.size} were zeroed")
        count = candidates.size
    pruned = np.zeros(candidates.size, dtype=bool)
    pruned[_smallest(candidates, count)] = True
    start = 0
    for layer, flat, r in zip(layers, flats, reserved):
        layer_pruned = np.insert(pruned[start:start + flat.size - 1], r, False)
        start += flat.size - 1
        masks[layer.weight] = ~layer_pruned.reshape(graph.params[layer.weight].shape)
    return masks


def prune_magnitude(graph: Graph, *, threshold: float | None = None,
                    sparsity: float | None = None, layers: LayerSelection = None,
                    scope: str = "layer", measure_storage: bool = True
                    ) -> tuple[Graph, PruneReport]:
    """Zero small weights (module docstring); returns ``(pruned copy, report)``."""
    if (threshold is None) == (sparsity is None):
        raise PruneError("magnitude pruning needs exactly one of threshold=T (zero |w| <= T) "
                         f"or sparsity=S (fraction of zeros), got threshold={threshold!r}, "
                         f"sparsity={sparsity!r}")
    scope = check_scope(scope)   # a misspelt scope is refused with a threshold too
    selected = select_layers(graph, layers)
    notes: list[str] = []
    if threshold is not None:
        threshold = _check_threshold(threshold)
        masks = _threshold_masks(graph, selected, threshold)
    else:
        sparsity = check_fraction(sparsity, "sparsity")
        masks = _sparsity_masks(graph, selected, sparsity, scope, notes)

    pruned = graph.copy()
    applied = {}
    for layer in selected:
        weight = graph.params[layer.weight]
        keep = masks[layer.weight]
        pruned.set_param(layer.weight, np.where(keep, weight, np.zeros((), weight.dtype)))
        cut = np.abs(weight)[~keep]
        applied[layer.weight] = threshold if threshold is not None else (
            float(cut.max()) if cut.size else None)
    settings = {"threshold": threshold, "sparsity": sparsity,
                "scope": scope if sparsity is not None else None,
                "layers": selection_setting(layers)}
    report = build_report("magnitude", settings, graph, pruned, selected, applied,
                          measure_storage=measure_storage)
    report.notes += notes
    return pruned, report
