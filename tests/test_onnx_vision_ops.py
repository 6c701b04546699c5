"""A user exports a model using MXNet's vision ops to ONNX and gets what MXNet computes: spatial
transformers (GridGenerator, BilinearSampler, SpatialTransformer), deformable convolutions,
box geometry and small index / linear-algebra helpers.

Tolerance and opsets: see onnx_op_harness (1e-5 relative). Sampling needs GridSample (opset 16),
whose mode was renamed at opset 20, so those ops run at 16, 17, 20 and the newest opset.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from graphopt.errors import UnsupportedOpError
from onnx_op_harness import NEWEST_OPSET, check, export, load

x = mx.sym.var("x")
y = mx.sym.var("y")
RNG = np.random.default_rng(11)
SAMPLING_OPSETS = (16, 17, 20, NEWEST_OPSET)


def normal(*shape, dtype="float32"):
    return RNG.standard_normal(shape).astype(dtype)


def uniform(low, high, *shape, dtype="float32"):
    return RNG.uniform(low, high, shape).astype(dtype)


# --- sampling grids and bilinear sampling --------------------------------------------------------

def _thetas(batch):
    """Affine matrices near the identity, scaled up to 1.6x so that some samples leave the image."""
    identity = np.array([1, 0, 0, 0, 1, 0], dtype="float32")
    return (identity * uniform(0.7, 1.6, batch, 1) + uniform(-0.4, 0.4, batch, 6)).astype("float32")


@pytest.mark.parametrize("target_shape", [(4, 5), (1, 3), (6, 1), (7, 7)], ids=str)
def test_affine_grid_generator(target_shape, tmp_path):
    """A size-1 axis divides by zero in MXNet's grid (2 / (size - 1)): NaN in both."""
    symbol = mx.sym.GridGenerator(x, transform_type="affine", target_shape=target_shape)
    check(symbol, tmp_path, {"x": _thetas(2)}, other_batch={"x": _thetas(3)})


@pytest.mark.parametrize("shape", [(2, 2, 4, 5), (1, 2, 1, 3)], ids=str)
def test_warp_grid_generator(shape, tmp_path):
    symbol = mx.sym.GridGenerator(x, transform_type="warp")
    check(symbol, tmp_path, {"x": normal(*shape) * 2},
          other_batch={"x": normal(3, *shape[1:]) * 2})


def _grid(batch, height, width, reach=1.4):
    """Normalised positions in [-reach, reach]: beyond 1 they fall off the image."""
    return uniform(-reach, reach, batch, 2, height, width)


@pytest.mark.parametrize("data_shape,grid_size", [((2, 3, 5, 6), (4, 7)), ((1, 2, 1, 4), (3, 3)),
                                                  ((2, 1, 8, 8), (8, 8))], ids=str)
def test_bilinear_sampler(data_shape, grid_size, tmp_path):
    symbol = mx.sym.BilinearSampler(x, y)
    check(symbol, tmp_path, {"x": normal(*data_shape), "y": _grid(data_shape[0], *grid_size)},
          opsets=SAMPLING_OPSETS,
          other_batch={"x": normal(3, *data_shape[1:]), "y": _grid(3, *grid_size)})


def test_bilinear_sampler_at_corners_edges_and_far_outside(tmp_path):
    """-1 and 1 are the centres of the corner pixels; half a pixel beyond still blends with
    zeros; far outside is zero."""
    height, width = 4, 5
    positions = np.array([-1, 1, -1 - 1 / (width - 1), 1 + 1 / (width - 1), -1.1, 1.1, 0, -3, 5,
                          1 + 2 / (width - 1), 0.3, -0.999], dtype="float32")
    grid = np.stack(np.meshgrid(positions, positions[::-1]))[None].astype("float32")
    check(mx.sym.BilinearSampler(x, y), tmp_path,
          {"x": normal(1, 2, height, width), "y": grid}, opsets=SAMPLING_OPSETS)


def test_grid_generator_feeding_bilinear_sampler(tmp_path):
    """The usual pair: MXNet's docstring example of zooming out and a warp by a flow field."""
    theta, flow = mx.sym.var("theta"), mx.sym.var("flow")
    zoomed = mx.sym.BilinearSampler(x, mx.sym.GridGenerator(theta, transform_type="affine",
                                                            target_shape=(6, 6)))
    warped = mx.sym.BilinearSampler(x, mx.sym.GridGenerator(flow, transform_type="warp"))
    inputs = {"x": normal(2, 3, 6, 6), "theta": _thetas(2), "flow": normal(2, 2, 6, 6)}
    check(mx.sym.Group([zoomed, warped]), tmp_path, inputs, opsets=SAMPLING_OPSETS)


@pytest.mark.parametrize("target_shape", [(4, 4), (3, 7), (9, 5)], ids=str)
def test_spatial_transformer(target_shape, tmp_path):
    symbol = mx.sym.SpatialTransformer(x, y, target_shape=target_shape, transform_type="affine",
                                       sampler_type="bilinear")
    check(symbol, tmp_path, {"x": normal(2, 3, 6, 5), "y": _thetas(2)}, opsets=SAMPLING_OPSETS,
          other_batch={"x": normal(1, 3, 6, 5), "y": _thetas(1)})


@pytest.mark.parametrize("symbol", [
    mx.sym.BilinearSampler(x, y),
    mx.sym.SpatialTransformer(x, mx.sym.Reshape(y, shape=(-1, 6)), target_shape=(3, 3),
                              transform_type="affine", sampler_type="bilinear")])
def test_sampling_needs_opset_16(symbol, tmp_path):
    graph = load(symbol, tmp_path, {"x": normal(1, 2, 4, 4), "y": _grid(1, 3, 3)[:, :, :1, :3]})
    with pytest.raises(UnsupportedOpError, match="opset 16"):
        export(graph, 15)


def test_bilinear_sampler_in_float64(tmp_path):
    symbol = mx.sym.BilinearSampler(x, y)
    check(symbol, tmp_path, {"x": normal(1, 2, 5, 5, dtype="float64"),
                             "y": _grid(1, 3, 4).astype("float64")}, opsets=SAMPLING_OPSETS)


# --- deformable convolutions ---------------------------------------------------------------------

DEFORM_OPSETS = (19, NEWEST_OPSET)  # DeformConv is opset 19

DEFORM_CASES = [  # attributes; offsets large enough that some samples leave the image
    {"kernel": (3, 3), "num_filter": 4},
    {"kernel": (3, 3), "num_filter": 4, "pad": (1, 1), "no_bias": True},
    {"kernel": (3, 2), "num_filter": 6, "stride": (2, 1), "pad": (1, 0), "dilate": (1, 2)},
    {"kernel": (3, 3), "num_filter": 4, "num_group": 2, "num_deformable_group": 2, "pad": (2, 2),
     "dilate": (2, 2)},
    {"kernel": (1, 1), "num_filter": 4, "num_deformable_group": 4},
]


def _deform_inputs(attrs, batch, channels=4, size=(7, 8), modulated=False):
    kernel = attrs["kernel"]
    stride = attrs.get("stride", (1, 1))
    pad = attrs.get("pad", (0, 0))
    dilate = attrs.get("dilate", (1, 1))
    out = [(size[i] + 2 * pad[i] - dilate[i] * (kernel[i] - 1) - 1) // stride[i] + 1
           for i in range(2)]
    positions = attrs.get("num_deformable_group", 1) * kernel[0] * kernel[1]
    inputs = {"x": normal(batch, channels, *size), "offset": normal(batch, 2 * positions, *out) * 2}
    if modulated:
        inputs["mask"] = uniform(0, 1, batch, positions, *out)
    return inputs


def _deform_params(attrs, channels=4):
    params = {"weight": normal(attrs["num_filter"], channels // attrs.get("num_group", 1),
                               *attrs["kernel"])}
    if not attrs.get("no_bias"):
        params["bias"] = normal(attrs["num_filter"])
    return params


@pytest.mark.parametrize("attrs", DEFORM_CASES, ids=str)
def test_deformable_convolution(attrs, tmp_path):
    symbol = mx.sym.contrib.DeformableConvolution(x, mx.sym.var("offset"), name="dcn", **attrs)
    params = {f"dcn_{k}": v for k, v in _deform_params(attrs).items()}
    check(symbol, tmp_path, _deform_inputs(attrs, 2), params, opsets=DEFORM_OPSETS,
          other_batch=_deform_inputs(attrs, 1))


@pytest.mark.parametrize("attrs", DEFORM_CASES, ids=str)
def test_modulated_deformable_convolution(attrs, tmp_path):
    symbol = mx.sym.contrib.ModulatedDeformableConvolution(
        x, mx.sym.var("offset"), mx.sym.var("mask"), name="dcn", **attrs)
    params = {f"dcn_{k}": v for k, v in _deform_params(attrs).items()}
    check(symbol, tmp_path, _deform_inputs(attrs, 2, modulated=True), params, opsets=DEFORM_OPSETS,
          other_batch=_deform_inputs(attrs, 1, modulated=True))


def _taps_around_the_border(size):
    """Positions within two pixels of the first and last row (column) of an axis of ``size``."""
    return np.array([-1.5, -1, -0.5, -0.25, 0, 0.5, size - 1.5, size - 1, size - 0.75,
                     size - 0.5, size, size + 0.5], dtype="float32")


@pytest.mark.parametrize("modulated", [False, True])
def test_deformable_convolution_at_the_image_border(modulated, tmp_path):
    """Version 1 reads zero for a tap at row -0.5 and row H - 1 alone for one at H - 0.5
    (measured: MXNet 1.9.1); the modulated version blends with zeros in both cases."""
    height, width = 4, 5
    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    targets = [RNG.choice(_taps_around_the_border(height), (height, width)),
               RNG.choice(_taps_around_the_border(width), (height, width))]
    offsets = np.stack([targets[0] - rows, targets[1] - columns])[None].astype("float32")
    inputs = {"x": normal(1, 2, height, width), "offset": offsets}
    attrs = {"kernel": (1, 1), "num_filter": 3, "no_bias": True}
    if modulated:
        inputs["mask"] = uniform(0.5, 1, 1, 1, height, width)
        symbol = mx.sym.contrib.ModulatedDeformableConvolution(
            x, mx.sym.var("offset"), mx.sym.var("mask"), name="dcn", **attrs)
    else:
        symbol = mx.sym.contrib.DeformableConvolution(x, mx.sym.var("offset"), name="dcn", **attrs)
    check(symbol, tmp_path, inputs, {"dcn_weight": normal(3, 2, 1, 1)}, opsets=DEFORM_OPSETS)


def test_deformable_convolution_needs_opset_19(tmp_path):
    attrs = DEFORM_CASES[0]
    symbol = mx.sym.contrib.DeformableConvolution(x, mx.sym.var("offset"), name="dcn", **attrs)
    params = {f"dcn_{k}": v for k, v in _deform_params(attrs).items()}
    graph = load(symbol, tmp_path, _deform_inputs(attrs, 1), params)
    with pytest.raises(UnsupportedOpError, match="opset 19"):
        export(graph, 18)


# --- box geometry --------------------------------------------------------------------------------

def _corner_boxes(*shape, degenerate=True):
    """Overlapping boxes; unless not ``degenerate``, the first has a zero width and the last a
    negative height (no area in MXNet)."""
    corner = uniform(0, 6, *shape, 2)
    size = uniform(0.5, 5, *shape, 2)
    boxes = np.concatenate([corner, corner + size], axis=-1).reshape(-1, 4)
    if not degenerate:
        return boxes.reshape(*shape, 4).astype("float32")
    boxes[0, 2] = boxes[0, 0]
    boxes[-1, 3] = boxes[-1, 1] - 1
    return boxes.reshape(*shape, 4).astype("float32")


def _to_center(boxes):
    return np.concatenate([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]],
                          axis=-1).astype("float32")


@pytest.mark.parametrize("fmt", [None, "corner", "center"])
@pytest.mark.parametrize("shapes", [((2, 5), (7,)), ((6,), (2, 3)), ((3,), (4,))], ids=str)
def test_box_iou(fmt, shapes, tmp_path):
    attrs = {} if fmt is None else {"format": fmt}
    encode = _to_center if fmt == "center" else (lambda boxes: boxes)
    lhs, rhs = encode(_corner_boxes(*shapes[0])), encode(_corner_boxes(*shapes[1]))
    rhs[..., :1, :] = lhs.reshape(-1, 4)[:1]  # an identical pair: IoU 1
    other = encode(_corner_boxes(4, *shapes[0][1:]))
    check(mx.sym.contrib.box_iou(x, y, **attrs), tmp_path, {"x": lhs, "y": rhs},
          other_batch={"x": other, "y": rhs} if len(shapes[0]) > 1 else None)


# --- SSD detection output ------------------------------------------------------------------------

def _ssd_outputs(batch, classes=4, anchors=16, seed=0):
    """Softmaxed class probabilities (B, C, N) and location predictions (B, N * 4)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((batch, classes, anchors)) * 2
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    locations = rng.standard_normal((batch, anchors * 4)) * 0.5
    return {"x": probabilities.astype("float32"), "y": locations.astype("float32")}


def _ssd_anchors(count=16):
    """Corner anchors in [0, 1] around four centres, so that many overlap; some stick out."""
    centres = np.repeat(np.array([[0.3, 0.3], [0.7, 0.4], [0.35, 0.7], [0.9, 0.9]]),
                        count // 4, axis=0) + RNG.uniform(-0.05, 0.05, (count, 2))
    sizes = RNG.uniform(0.2, 0.5, (count, 2))
    corners = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=-1)
    return corners[None].astype("float32")


MULTIBOX_CASES = [
    {},
    {"threshold": 0.3},
    {"nms_threshold": 0.3},
    {"force_suppress": True, "nms_threshold": 0.4},
    {"nms_topk": 5},
    {"nms_topk": 3, "threshold": 0.2, "force_suppress": True},
    {"nms_topk": 100},
    {"clip": False, "variances": (0.2, 0.1, 0.3, 0.25)},
    {"nms_threshold": 0},  # 0 or above 1: no sorting, no NMS
    {"nms_threshold": 1.5, "threshold": 0.4},
    {"threshold": 0.99},  # no detection in some batches
    {"background_id": 0, "nms_threshold": 1.0},
    {"background_id": 2},  # ignored by MXNet 1.9.1's CPU kernel: column 0 stays the background
]


@pytest.mark.parametrize("attrs", MULTIBOX_CASES, ids=str)
def test_multibox_detection(attrs, tmp_path):
    symbol = mx.sym.contrib.MultiBoxDetection(x, y, mx.sym.var("anchors"), **attrs)
    check(symbol, tmp_path, _ssd_outputs(2), {"anchors": _ssd_anchors()},
          other_batch=_ssd_outputs(3, seed=1))


# --- linear algebra and indices ------------------------------------------------------------------

def _well_conditioned(*shape, dtype="float32"):
    """Matrices near the identity with a positive diagonal (for log of the diagonal)."""
    size = shape[-1]
    return (np.eye(size) * 2 + uniform(-0.4, 0.4, *shape)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_det(dtype, tmp_path):
    """float64 is reduced in float32 (onnxruntime has no float64 Det): 1e-5 still holds for
    these well-conditioned matrices."""
    check(mx.sym.linalg.det(x), tmp_path, {"x": _well_conditioned(2, 3, 4, 4, dtype=dtype)},
          other_batch={"x": _well_conditioned(1, 3, 4, 4, dtype=dtype)})


@pytest.mark.parametrize("offset", [None, 0, 1, -2, 3])
def test_extract_and_make_diagonal(offset, tmp_path):
    attrs = {} if offset is None else {"offset": offset}
    matrices = normal(2, 3, 4, 4)
    matrices[0, 0, 0, 1] = np.inf  # off the diagonal: must not leak into a gathered diagonal
    check(mx.sym.Group([mx.sym.linalg.extractdiag(x, **attrs),
                        mx.sym.linalg.makediag(y, **attrs)]), tmp_path,
          {"x": matrices if offset != 1 else normal(2, 3, 4, 4), "y": normal(2, 3, 5)},
          other_batch={"x": normal(1, 3, 4, 4), "y": normal(1, 3, 5)})


def test_sum_log_diagonal(tmp_path):
    check(mx.sym.linalg.sumlogdiag(x), tmp_path, {"x": _well_conditioned(2, 5, 5)},
          other_batch={"x": _well_conditioned(3, 5, 5)})


def test_scatter_nd(tmp_path):
    indices = np.array([[0, 1, 1, 2], [3, 0, 2, 3]], dtype="int32")  # distinct (row, column)
    check(mx.sym.scatter_nd(x, y, shape=(3, 4, 2)), tmp_path,
          {"x": normal(4, 2), "y": indices})


def test_index_copy(tmp_path):
    index = mx.sym.var("index")
    check(mx.sym.contrib.index_copy(x, index, y), tmp_path,
          {"x": normal(5, 3), "index": np.array([4, 0, 2], dtype="float32"), "y": normal(3, 3)})


@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_ravel_and_unravel_multi_index(dtype, tmp_path):
    shape = (3, 4, 5)
    coordinates = np.stack([RNG.integers(0, size, 6) for size in shape]).astype(dtype)
    flat = RNG.integers(0, 60, 7).astype(dtype)
    check(mx.sym.Group([mx.sym.ravel_multi_index(x, shape=shape),
                        mx.sym.unravel_index(y, shape=shape)]), tmp_path,
          {"x": coordinates, "y": flat})


def test_unravel_index_of_a_matrix_is_refused(tmp_path):
    """MXNet 1.9.1 returns such an input reshaped to (M, N) rather than its coordinates."""
    graph = load(mx.sym.unravel_index(x, shape=(3, 4, 5)), tmp_path,
                 {"x": np.array([[1, 22, 59], [7, 8, 9]], dtype="float32")})
    with pytest.raises(UnsupportedOpError, match="more than one axis"):
        export(graph, 17)


def test_box_encode(tmp_path):
    """Samples: 1 positive, 0 and -1 not (no target, mask 0); unmatched anchors point at -1."""
    batch, anchors, refs = 2, 6, 3
    samples = RNG.choice([1.0, 0.0, -1.0], (batch, anchors)).astype("float32")
    samples[:, 0] = 1
    matches = RNG.integers(0, refs, (batch, anchors)).astype("float32")
    matches[samples < 0.5] = -1
    inputs = {"samples": samples, "matches": matches,
              "anchors": _corner_boxes(batch, anchors, degenerate=False),
              "refs": _corner_boxes(batch, refs, degenerate=False),
              "means": uniform(-0.1, 0.1, 4), "stds": uniform(0.1, 0.3, 4)}
    symbol = mx.sym.contrib.box_encode(*(mx.sym.var(name) for name in inputs))
    check(symbol, tmp_path, inputs)
