"""Scales and zero points: activations per tensor, weights per output channel, biases in int32.

- Activations (``"uint8"``): asymmetric uint8 over the calibrated range widened to hold 0, with
  an integer zero point, so that 0 (padding, a ReLU's floor) is exactly representable.
- Activations (``"int8"``): symmetric int8 (zero point 0, scale max|x|/127) for signed tensors;
  a one-sided tensor (calibrated low end 0, after a ReLU) uses the full int8 grid from 0 up
  (zero point -128, scale hi/255) -- the grid of MXNet's zero-based uint8, so that a ReLU folds
  into the quantize (its floor is the grid's floor) and no bit is wasted on negatives.
- Weights: symmetric int8 in [-127, 127] per slice of the output-channel axis (zero point 0).
- Bias: int32 with scale = input scale x weight scale (zero point 0), as the int8 kernels add it
  to their int32 accumulators.
"""

from __future__ import annotations

import warnings

import numpy as np

from graphopt.errors import DataError

ACTIVATION_TYPES = ("uint8", "int8")
WEIGHT_MAX = 127
INT32 = np.iinfo(np.int32)


class QuantizationWarning(UserWarning):
    """A tensor whose quantization is degenerate (a constant zero range)."""


def activation_qparams(lo: float, hi: float, activations: str, name: str
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero_point), each of shape (1,), for a tensor calibrated to ``[lo, hi]``."""
    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {ACTIVATION_TYPES}, not {activations!r}")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(f"tensor {name!r} has a non-finite calibrated range [{lo}, {hi}] (NaN or "
                        f"Inf in its activations): check the calibration data")
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0.0:
        warnings.warn(f"tensor {name!r} was 0 on every calibration sample (scale 0): it is "
                      f"quantized with scale 1, which represents only its 0 exactly",
                      QuantizationWarning, stacklevel=2)
        hi = 1.0 if activations == "uint8" else 127.0
    if activations == "uint8":
        scale = np.float32((hi - lo) / 255.0)
        zero_point = np.clip(np.rint(-lo / scale), 0, 255).astype(np.uint8)
        return np.asarray([scale], np.float32), np.asarray([zero_point], np.uint8)
    if lo == 0.0:   # one-sided: the whole int8 grid from 0 up
        return np.asarray([hi / 255.0], np.float32), np.asarray([-128], np.int8)
    return np.asarray([max(-lo, hi) / 127.0], np.float32), np.asarray([0], np.int8)


REDUCED_WEIGHT_MAX = 63   # 7-bit weights: a uint8 x int8 pair sum stays within int16


def cpu_needs_reduced_range() -> bool:
    """This x86 CPU multiplies uint8 by int8 with VPMADDUBSW (AVX2/AVX-512 without VNNI), whose
    int16 pair sums saturate with full-range weights (PITFALLS.md, "Quantization"); CPUs with
    VNNI or AMX, and non-x86 CPUs, do not."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo
                          if line.startswith("flags")), [])
    except OSError:
        return False
    vnni = {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)
    return "avx2" in flags and not vnni


def quantize_weight(weight: np.ndarray, axis: int | None, maximum: int = WEIGHT_MAX,
                    min_scale: np.ndarray | float = 0.0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric int8 ``(q, scale, zero_point)`` in [-maximum, maximum], per slice of ``axis``
    (``None``: per tensor). ``min_scale`` (per slice, or one value): the smallest scale allowed,
    so that the layer's int32 bias fits (:func:`bias_min_weight_scale`)."""
    weight = np.asarray(weight, np.float32)
    if axis is None:
        peak = np.asarray([np.abs(weight).max(initial=0.0)], np.float32)
        floor = np.asarray([np.max(min_scale, initial=0.0)], np.float32)
        shape = []
    else:
        others = tuple(a for a in range(weight.ndim) if a != axis)
        peak = np.abs(weight).max(axis=others, initial=0.0).astype(np.float32)
        floor = np.broadcast_to(np.asarray(min_scale, np.float32), peak.shape)
        shape = [1] * weight.ndim
        shape[axis] = -1
    scale = np.where(peak > 0, peak / maximum, 1.0).astype(np.float32)  # an all-zero channel
    scale = np.maximum(scale, floor).astype(np.float32)
    shaped_scale = scale.reshape(shape)
    q = np.clip(round_keeping_kernel_sums(weight / shaped_scale), -maximum, maximum)
    return q.astype(np.int8), scale, np.zeros(scale.shape, np.int8)


def round_keeping_kernel_sums(scaled: np.ndarray) -> np.ndarray:
    """Round to integers so that the sum over the spatial taps of every (axis 0, axis 1) kernel
    is kept to within half a step (plain rounding lets it drift by up to K/2 steps).

    Images and feature maps are spatially smooth, so a kernel meets nearly the same value under
    all its taps and its error is mostly (sum of its rounding errors) x (that value): a gain error
    that adds up coherently through the network. Flipping the rounding of the taps nearest their
    rounding boundary (each moves by under one step) cancels it. Measured on the digits ResNet
    (weights only, min-max): output SQNR 27.0 -> 36 dB; the first conv alone 32.3 -> 38.9 dB.
    Weights without spatial taps (FullyConnected, 1x1) are rounded plainly."""
    q = np.rint(scaled)
    if scaled.ndim < 3 or int(np.prod(scaled.shape[2:])) < 2:
        return q
    kernels = scaled.reshape(scaled.shape[0] * scaled.shape[1], -1)
    rounded = q.reshape(kernels.shape)
    excess = rounded - kernels                       # each in [-0.5, 0.5]
    flips = np.rint(excess.sum(axis=1)).astype(np.int64)[:, None]   # > 0: sum too high
    rank_down = np.argsort(np.argsort(-excess, axis=1, kind="stable"), axis=1, kind="stable")
    rank_up = np.argsort(np.argsort(excess, axis=1, kind="stable"), axis=1, kind="stable")
    rounded = rounded - (rank_down < flips) + (rank_up < -flips)
    return rounded.reshape(scaled.shape)


def bias_min_weight_scale(bias: np.ndarray, input_scale: float) -> np.ndarray:
    """Per bias element, the smallest weight scale at which ``bias / (input scale x weight
    scale)`` fits int32 with a factor 2 to spare (bias correction later moves the bias). It only
    binds for a channel whose weights are nearly 0 but whose bias is not (a BatchNorm with gamma
    ~ 0 folded in); such a channel's weights round to 0 either way."""
    bias = np.abs(np.asarray(bias, np.float64))
    return (bias / (float(input_scale) * (INT32.max / 2))).astype(np.float32)


def quantize_bias(bias: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int32 ``(q, scale, zero_point)`` for a bias with per-channel ``scale`` (input scale x weight
    scale). A bias too large for int32 at that scale is refused (ValueError)."""
    bias = np.asarray(bias, np.float32)
    scale = np.broadcast_to(np.asarray(scale, np.float32), bias.shape).astype(np.float32)
    q = np.rint(bias.astype(np.float64) / scale.astype(np.float64))
    if np.any(np.abs(q) > INT32.max):
        raise ValueError("the bias does not fit int32 at scale input x weight scale")
    return q.astype(np.int32), scale, np.zeros(scale.shape, np.int32)
