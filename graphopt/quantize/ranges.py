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
  folded into the edge bin of P; Q is P's window summed per quantized level and spread over P's
  non-empty bins). One change: each candidate window is observed at the same resolution, 8 bins
  per quantized level (TensorRT: 2048 bins for 128 levels), read from the fine histogram's
  cumulative counts. Observed on a fixed grid instead, a wider window puts more bins in each
  level, and on peaky data (activations of images with flat backgrounds: every background pixel
  gives the same value) the divergence then grows with the threshold whatever the clipping:
  measured on resnet_digits' first ReLU, the fixed grid chose 2.4 of max 6.7 (18 dB SQNR), the
  per-window grid 6.4 (42 dB). Thresholds from 1/16 of the largest value up (TensorRT's range).
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
ENTROPY_CANDIDATES = 256      # thresholds tried per round (two rounds: coarse, then around the best)
ENTROPY_BINS_PER_LEVEL = 8
SMALLEST_THRESHOLD = 1 / 16   # of the largest value: TensorRT's 128 of 2048 bins
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

def _entropy_edge(counts: np.ndarray, levels: int) -> float:
    """The threshold (in bins, fractional) of a magnitude histogram with the least KL divergence."""
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    occupied = float(np.flatnonzero(counts)[-1] + 1)

    def divergence(stops):
        return _kl_of_windows(cumulative, np.zeros_like(stops), stops, levels)
    return _least(divergence, SMALLEST_THRESHOLD * occupied, occupied)


def _entropy_window(counts: np.ndarray, zero_index: int) -> tuple[float, float]:
    """The window ``[a * first, a * stop)`` around zero (``1/16 <= a <= 1``; in bins) with the
    least KL divergence at 256 levels."""
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    occupied = np.flatnonzero(counts)
    below = zero_index - float(occupied[0])
    above = float(occupied[-1] + 1) - zero_index

    def divergence(factors):
        return _kl_of_windows(cumulative, zero_index - factors * below,
                              zero_index + factors * above, STEPS + 1)
    factor = _least(divergence, SMALLEST_THRESHOLD, 1.0)
    return zero_index - factor * below, zero_index + factor * above


def _least(objective, low: float, high: float) -> float:
    """The point of ``[low, high]`` minimising ``objective`` (vectorised) on a grid of
    :data:`ENTROPY_CANDIDATES`, then on a finer grid around the best."""
    candidates = np.linspace(low, high, ENTROPY_CANDIDATES)
    best = int(np.argmin(_blocked(objective, candidates, block=32)))
    spacing = candidates[1] - candidates[0] if len(candidates) > 1 else 0.0
    fine = np.linspace(max(low, candidates[best] - spacing), min(high, candidates[best] + spacing),
                       33)
    return float(fine[int(np.argmin(_blocked(objective, fine, block=33)))])


def _kl_of_windows(cumulative: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                   levels: int) -> np.ndarray:
    """KL(P || Q) of each window ``[start, stop)`` (bin positions, fractional) of the histogram
    whose cumulative counts are ``cumulative``.

    P: the window cut into ``levels * ENTROPY_BINS_PER_LEVEL`` equal bins (counts read from the
    cumulative counts, linear within a histogram bin), the values left of the window added to
    its first bin and those right of it to its last, normalised. Q: P's window without those
    outliers, summed per level and spread evenly over the level's non-empty bins of P,
    normalised; a level with outliers but no count of its own gets :data:`KL_EMPTY_COUNT`."""
    bins = levels * ENTROPY_BINS_PER_LEVEL
    positions = starts[:, None] + (stops - starts)[:, None] * (np.arange(bins + 1) / bins)[None, :]
    cut = _interpolated(cumulative, positions)
    window = np.diff(cut, axis=1)
    p = window.copy()
    p[:, 0] += cut[:, 0]
    p[:, -1] += cumulative[-1] - cut[:, -1]
    shape = (len(starts), levels, ENTROPY_BINS_PER_LEVEL)
    nonempty = (p > 0).reshape(shape)
    level_counts = np.maximum(window.reshape(shape).sum(axis=2), KL_EMPTY_COUNT)
    level_bins = np.maximum(nonempty.sum(axis=2), 1)
    q = (level_counts / level_bins)[:, :, None] * nonempty
    q = q.reshape(len(starts), bins)
    p = p / p.sum(axis=1, keepdims=True)
    q = q / q.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / np.where(q > 0, q, 1.0)), 0.0)
    return terms.sum(axis=1)


def _interpolated(cumulative: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Cumulative counts at fractional bin positions (linear within a bin)."""
    last = len(cumulative) - 1
    positions = np.clip(positions, 0.0, last)
    left = np.minimum(np.floor(positions).astype(np.int64), last - 1)
    fraction = positions - left
    return cumulative[left] + (cumulative[left + 1] - cumulative[left]) * fraction


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
