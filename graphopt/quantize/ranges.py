"""Choosing a tensor's clipping range from its histogram: minmax, percentile, entropy, mse.

The quantizer covers a range with 255 steps of an integer grid that holds zero exactly:

- *symmetric* (int8, zero point 0): ``[-t, t]``, step ``t / 127``;
- *asymmetric* (uint8, a zero point): ``[lo, hi]``, step ``(hi - lo) / 255``.

A one-sided tensor (no negative value: a ReLU, sigmoid, softmax output) gets ``lo = 0`` either
way, and its ``t`` is chosen for the steps it gets over ``[0, t]``: 255 by default (uint8, or
int8 with zero point -128 as ``qparams`` does); ``steps=127`` for a symmetric int8 grid that
spends half its levels on negatives (MXNet's int8). Choosing ``t`` over a symmetric histogram,
as onnxruntime's percentile and entropy calibrators do, collapses accuracy (onnxruntime#10571).

Methods (each returns ``(lo, hi)`` with ``lo <= 0 <= hi``):

- ``minmax``: the observed extremes.
- ``percentile``: the ``percentile``-th percentile of ``|x|`` (symmetric or one-sided), or of
  each tail with ``(100 - percentile) / 2`` % beyond each bound (asymmetric, signed). Exact zeros
  are left out of the count: they are represented exactly whatever the range, and a ReLU output
  that is 90 % zeros would otherwise have its threshold taken among the largest 10 % values only.
- ``entropy``: the threshold whose quantized distribution is closest to the observed one in
  Kullback-Leibler divergence (TensorRT's and MXNet's method: the values beyond the threshold are
  folded into the edge bin of P; Q is the window quantized to the levels the quantizer has,
  spread over P's non-empty bins). Computed for every candidate threshold at once from prefix
  sums (the divergence of a candidate needs one term per quantized level, not per bin).
  Asymmetric signed tensors search windows ``[a * min, a * max]`` with 256 levels.
- ``mse``: the range minimising the expected squared error over the histogram (bin centres):
  clipping error beyond the bounds plus the rounding error on the step's grid inside.
"""

from __future__ import annotations

import math

import numpy as np

from graphopt.quantize.histogram import TensorHistogram

METHODS = ("minmax", "percentile", "entropy", "mse")
STEPS = 255                   # 8-bit: 256 levels, 255 steps over the range
SYMMETRIC_STEPS = 127        # over [0, t] when the range is [-t, t] (int8, zero point 0)
DEFAULT_PERCENTILE = 99.99
KL_EMPTY_COUNT = 0.5          # a quantized level with no count but outliers folded in: as if half a value
MAX_CANDIDATES = 1024         # thresholds tried before refining around the best
ENTROPY_BINS = 2048           # KL on at most this many bins over [0, max|x|] (TensorRT's 2048)
MSE_BINS = 2048               # the error is computed on at most this many bins (merged as needed)
MSE_GRID = 16                 # bounds per side tried per round of the coarse-to-fine MSE search


def choose_range(histogram: TensorHistogram, method: str, symmetric: bool,
                 percentile: float = DEFAULT_PERCENTILE,
                 steps: float | None = None) -> tuple[float, float]:
    """The clipping range of a tensor with at least one finite value and ``min < max``.

    ``steps``: the quantization steps over ``[0, t]`` of a one-sided or symmetric range
    (default: 255 one-sided, 127 symmetric signed)."""
    low, high = min(histogram.minimum, 0.0), max(histogram.maximum, 0.0)
    magnitude = max(-low, high)
    if method == "minmax":
        if histogram.one_sided:
            return 0.0, high
        return (-magnitude, magnitude) if symmetric else (low, high)
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {METHODS}")
    width = histogram.bin_width
    # exact zeros are left out of every method: zero is exact on every grid, and a ReLU
    # output's spike of zeros would pull the percentile, KL and MSE thresholds down (measured on
    # resnet_digits' first ReLU: entropy 9 dB SQNR with the zeros, 42 dB without)
    if histogram.one_sided or symmetric:
        counts = histogram.counts[histogram.bins_per_side:] if histogram.one_sided \
            else histogram.magnitude_counts()
        counts = _without_zeros(counts, 0, histogram.zeros)
        if steps is None:
            steps = STEPS if histogram.one_sided else SYMMETRIC_STEPS
        if not counts.any():
            return (0.0, magnitude) if histogram.one_sided else (-magnitude, magnitude)
        if method == "percentile":
            edge = _percentile_edge(counts, percentile / 100.0)
        elif method == "entropy":
            edge = _entropy_edge(counts, levels=int(round(steps)) + 1)
        else:
            edge = _mse_magnitude_edge(counts, steps)
        threshold = min(edge * width, magnitude)
        if threshold <= 0.0:
            threshold = magnitude
        return (0.0, threshold) if histogram.one_sided else (-threshold, threshold)
    zero_index = histogram.bins_per_side
    counts = _without_zeros(histogram.counts, zero_index, histogram.zeros)
    if method == "percentile":
        tail = (1.0 - percentile / 100.0) / 2.0
        first, stop = _two_tail_edges(counts, zero_index, tail)
    elif method == "entropy":
        first, stop = _entropy_window(counts, zero_index)
    else:
        first, stop = _mse_window(counts, zero_index)
    lo = max((first - zero_index) * width, low)
    hi = min((stop - zero_index) * width, high)
    return min(lo, 0.0), max(hi, 0.0)


def _without_zeros(counts: np.ndarray, zero_index: int, zeros: int) -> np.ndarray:
    """``counts`` (as float64) without the exact zeros, which sit in the bin at ``zero_index``."""
    counts = counts.astype(np.float64)
    counts[zero_index] -= zeros
    return counts


# --- percentile -------------------------------------------------------------------------------

def _percentile_edge(counts: np.ndarray, fraction: float) -> int:
    """The bin edge below which ``fraction`` of the values of a magnitude histogram lie."""
    cumulative = np.cumsum(counts)
    return int(np.searchsorted(cumulative, fraction * cumulative[-1], side="left")) + 1


def _two_tail_edges(counts: np.ndarray, zero_index: int, tail: float) -> tuple[int, int]:
    """(first kept bin, one past the last kept bin) leaving ``tail`` of the values beyond
    each side."""
    cumulative = np.cumsum(counts)
    total = cumulative[-1]
    first = int(np.searchsorted(cumulative, tail * total, side="right"))
    stop = int(np.searchsorted(cumulative, (1.0 - tail) * total, side="left")) + 1
    return min(first, zero_index), max(stop, zero_index)


def _merged_around_zero(counts: np.ndarray, zero_index: int,
                        limit: int) -> tuple[np.ndarray, int, int]:
    """The occupied part of a signed histogram with adjacent bins summed (a power of two of
    them, zero staying a bin edge) so that at most about ``limit`` are left. Returns (counts,
    index of the bin starting at zero, bins merged per new bin): merged bin ``k`` starts at
    original bin ``zero_index + (k - zero) * factor``."""
    occupied = np.flatnonzero(counts)
    first = min(int(occupied[0]), zero_index)
    stop = max(int(occupied[-1]) + 1, zero_index)
    factor = 1
    while stop - first > limit * factor:
        factor *= 2
    low_edge = zero_index - -(-(zero_index - first) // factor) * factor
    high_edge = zero_index + -(-(stop - zero_index) // factor) * factor
    merged = counts[low_edge:high_edge].reshape(-1, factor).sum(axis=1)
    return merged, (zero_index - low_edge) // factor, factor


# --- entropy ----------------------------------------------------------------------------------

def _entropy_edge(counts: np.ndarray, levels: int) -> int:
    """The threshold (a bin edge) of a magnitude histogram with the least KL divergence."""
    counts, factor = _merged(counts, ENTROPY_BINS)
    occupied = len(counts)
    if occupied <= levels:
        return occupied * factor
    prefix = _Prefix(counts)
    candidates = np.arange(levels, occupied + 1)

    def divergence(stops):
        return prefix.kl(np.zeros_like(stops), stops, levels)
    return int(_refined_argmin(candidates, divergence)) * factor


def _entropy_window(counts: np.ndarray, zero_index: int) -> tuple[int, int]:
    """The window ``[a * first, a * stop)`` around zero (``0 < a <= 1``) with the least KL
    divergence at 256 levels."""
    levels = STEPS + 1
    merged, zero, factor = _merged_around_zero(counts, zero_index, 2 * ENTROPY_BINS)
    span = len(merged)
    if span <= levels:
        return zero_index - zero * factor, zero_index + (span - zero) * factor
    prefix = _Prefix(merged)

    def starts_of(sizes):   # a window of n bins, split around zero in the data's proportion
        return zero - np.round(sizes * (zero / span)).astype(np.int64)

    def divergence(sizes):
        starts = starts_of(sizes)
        return prefix.kl(starts, starts + sizes, levels)
    best = int(_refined_argmin(np.arange(levels, span + 1), divergence))
    start = int(starts_of(np.asarray([best]))[0])
    return zero_index + (start - zero) * factor, zero_index + (start + best - zero) * factor


class _Prefix:
    """Prefix sums of a histogram for the KL divergence of many windows at once."""

    def __init__(self, counts: np.ndarray):
        counts = counts.astype(np.float64)
        self.counts = counts
        self.total = counts.sum()
        self.cumulative = np.concatenate([[0.0], np.cumsum(counts)])
        self.nonzero = np.concatenate([[0], np.cumsum(counts > 0)])
        self.plogp = np.concatenate([[0.0], np.cumsum(_xlogx(counts))])

    def kl(self, starts: np.ndarray, stops: np.ndarray, levels: int) -> np.ndarray:
        """KL(P || Q) of each window ``[start, stop)`` (every window at least ``levels`` bins).

        P: the histogram, values left of the window folded into its first bin and those right
        of it into its last, normalised. Q: the window's own counts summed per quantized level
        (levels split the window as evenly as whole bins allow), each level's mass spread
        evenly over the bins where P is non-zero, normalised. KL is
        ``sum p log p - sum_g P_g log q_g`` with one term per level."""
        starts, stops = np.asarray(starts, np.int64), np.asarray(stops, np.int64)
        cumulative, counts = self.cumulative, self.counts
        left = cumulative[starts]
        right = self.total - cumulative[stops]
        first_bin, last_bin = counts[starts], counts[stops - 1]
        p_first, p_last = first_bin + left, last_bin + right
        sum_plogp = (self.plogp[stops] - self.plogp[starts] - _xlogx(first_bin) - _xlogx(last_bin)
                     + _xlogx(p_first) + _xlogx(p_last))
        sizes = stops - starts
        edges = starts[:, None] + (np.arange(levels + 1)[None, :] * sizes[:, None]) // levels
        level_counts = np.diff(cumulative[edges], axis=1)            # Q before spreading
        level_nonzero = np.diff(self.nonzero[edges], axis=1).astype(np.float64)
        level_nonzero[:, 0] += (first_bin == 0) & (left > 0)
        level_nonzero[:, -1] += (last_bin == 0) & (right > 0)
        level_mass = level_counts.copy()                            # P per level
        level_mass[:, 0] += left
        level_mass[:, -1] += right
        window_total = np.maximum(cumulative[stops] - cumulative[starts], 1.0)
        q = np.maximum(level_counts, KL_EMPTY_COUNT) / window_total[:, None] / \
            np.maximum(level_nonzero, 1.0)
        cross = np.where(level_mass > 0, level_mass * np.log(q), 0.0).sum(axis=1)
        return (sum_plogp - cross) / self.total - math.log(self.total)


def _xlogx(values):
    values = np.asarray(values, dtype=np.float64)
    return np.where(values > 0, values * np.log(np.maximum(values, 1e-300)), 0.0)


def _refined_argmin(candidates: np.ndarray, objective) -> int:
    """The candidate minimising ``objective`` (vectorised): every ``stride``-th first, then
    each one around the best; evaluated in blocks so memory stays small."""
    stride = max(1, len(candidates) // MAX_CANDIDATES)
    coarse = candidates[::stride]
    best = int(np.argmin(_blocked(objective, coarse)))
    low, high = max(0, best * stride - stride), min(len(candidates), best * stride + stride + 1)
    fine = candidates[low:high]
    return int(fine[int(np.argmin(_blocked(objective, fine)))])


def _blocked(objective, values: np.ndarray, block: int = 128) -> np.ndarray:
    return np.concatenate([objective(values[i:i + block]) for i in range(0, len(values), block)])


# --- mse --------------------------------------------------------------------------------------

def _merged(counts: np.ndarray, limit: int) -> tuple[np.ndarray, int]:
    """``counts`` with adjacent bins summed so that at most ``limit`` are left (trailing empty
    bins dropped first); returns (counts, bins merged per new bin)."""
    occupied = int(np.flatnonzero(counts)[-1]) + 1
    factor = 1
    while occupied > limit * factor:
        factor *= 2
    length = -(-occupied // factor) * factor
    padded = np.zeros(length, dtype=np.float64)
    padded[:occupied] = counts[:occupied]
    return padded.reshape(-1, factor).sum(axis=1), factor


def _mse_magnitude_edge(counts: np.ndarray, steps: float) -> int:
    """The threshold (a bin edge) of a magnitude histogram with the least expected squared
    error, values at bin centres. The error is smooth in the threshold, so a coarse-to-fine
    search finds the minimum of the grid."""
    merged, factor = _merged(counts, MSE_BINS)
    centres = np.arange(len(merged)) + 0.5   # in units of the merged bin width

    def error(thresholds):
        thresholds = thresholds[:, 0:1]
        step = thresholds / steps
        inside = centres[None, :] < thresholds
        rounding = (centres[None, :] - step * np.round(centres[None, :] / step)) ** 2
        clipping = (centres[None, :] - thresholds) ** 2
        return (np.where(inside, rounding, clipping) * merged[None, :]).sum(axis=1)
    (best,) = _coarse_to_fine([(1, len(merged))], error)
    return best * factor


def _mse_window(counts: np.ndarray, zero_index: int) -> tuple[int, int]:
    """The window (bins) of an asymmetric signed tensor with the least expected squared error
    over lower x upper bounds, the step ``(hi - lo) / 255`` on a grid through zero."""
    merged, zero, factor = _merged_around_zero(counts, zero_index, MSE_BINS)
    centres = np.arange(len(merged)) - zero + 0.5

    def error(bounds):
        low, high = -bounds[:, 0:1], bounds[:, 1:2]
        step = np.maximum(high - low, 1e-9) / STEPS
        clipped = np.clip(centres[None, :], low, high)
        rounding = (clipped - step * np.round(clipped / step)) ** 2
        clipping = (centres[None, :] - clipped) ** 2
        return ((rounding + clipping) * merged[None, :]).sum(axis=1)
    below, above = _coarse_to_fine([(0, zero), (0, len(merged) - zero)], error)
    return zero_index - below * factor, zero_index + above * factor


def _coarse_to_fine(bounds: list[tuple[int, int]], objective) -> tuple[int, ...]:
    """The integer point of the box ``bounds`` (inclusive, one pair per axis) minimising
    ``objective`` (vectorised over rows of points): a grid of :data:`MSE_GRID` per axis, then
    grids around the best point, finer each round, down to single bins."""
    low = np.array([b[0] for b in bounds], dtype=np.int64)
    high = np.array([b[1] for b in bounds], dtype=np.int64)
    while True:
        axes = [np.unique(np.linspace(lo, hi, MSE_GRID).round().astype(np.int64))
                for lo, hi in zip(low, high)]
        points = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)
        best = points[int(np.argmin(_blocked(objective, points.astype(np.float64), block=64)))]
        spacing = np.array([(a[1] - a[0]) if len(a) > 1 else 0 for a in axes])
        if spacing.max() <= 1:
            return tuple(int(b) for b in best)
        low = np.maximum(low, best - spacing)
        high = np.minimum(high, best + spacing)
