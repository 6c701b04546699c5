"""Old checkpoints and fused exports use variant ops; each must export like its modern op.

``Convolution_v1``/``Pooling_v1``/``BatchNorm_v1`` come from 2016-era models (Inception-BN),
``_contrib_SyncBatchNorm`` from multi-GPU training, ``_contrib_BatchNormWithReLU`` from oneDNN
fusion. Defaults are the variant's own (PITFALLS.md: BatchNorm eps=1e-3, fix_gamma=True).
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from graphopt.onnx import DEFAULT_OPSET
from onnx_op_harness import check, op_types

RNG = np.random.default_rng(7)
X = RNG.standard_normal((2, 3, 9, 9)).astype(np.float32)
OTHER_BATCH = RNG.standard_normal((3, 3, 9, 9)).astype(np.float32)


def bn_params(name: str, channels: int = 3) -> dict[str, np.ndarray]:
    """Statistics far from identity, and a stored gamma of 3 that fix_gamma must ignore."""
    return {f"{name}_gamma": np.full(channels, 3.0, np.float32),
            f"{name}_beta": RNG.uniform(-0.5, 0.5, channels).astype(np.float32),
            f"{name}_moving_mean": RNG.uniform(-1, 1, channels).astype(np.float32),
            f"{name}_moving_var": RNG.uniform(0.5, 2, channels).astype(np.float32)}


@pytest.mark.parametrize("attrs", [{}, {"fix_gamma": False, "eps": 1e-5}])
def test_batchnorm_v1(attrs, tmp_path):
    symbol = mx.sym.BatchNorm_v1(mx.sym.var("data"), name="bn", **attrs)
    check(symbol, tmp_path, {"data": X}, bn_params("bn"), other_batch={"data": OTHER_BATCH})


@pytest.mark.parametrize("attrs", [{}, {"fix_gamma": False, "eps": 1e-5, "ndev": 2}])
def test_sync_batchnorm(attrs, tmp_path):
    symbol = mx.sym.contrib.SyncBatchNorm(mx.sym.var("data"), key="bn_key", name="bn", **attrs)
    check(symbol, tmp_path, {"data": X}, bn_params("bn"), other_batch={"data": OTHER_BATCH})


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4, 4, 4)], ids=str)
def test_legacy_batchnorms_on_other_ranks(shape, tmp_path):
    """Channels on axis 1 of (N, C) features and of 3-D volumes too."""
    data = mx.sym.var("data")
    symbol = mx.sym.Group([
        mx.sym.contrib.SyncBatchNorm(data, key="bn_key", name="sync", fix_gamma=False),
        mx.sym.contrib.SyncBatchNorm(data, key="bn_key2", name="bn", use_global_stats=True)])
    if len(shape) == 2:  # BatchNorm_v1 takes (N, C) or (N, C, H, W)
        symbol = mx.sym.Group([symbol, mx.sym.BatchNorm_v1(data, name="v1")])
    params = {**bn_params("sync"), **bn_params("bn"), **bn_params("v1")}
    params = {k: v for k, v in params.items() if k in symbol.list_inputs()}
    check(symbol, tmp_path, {"data": RNG.standard_normal(shape).astype(np.float32)}, params)


@pytest.mark.parametrize("attrs", [{}, {"fix_gamma": False}])
def test_batchnorm_with_relu(attrs, tmp_path):
    symbol = mx.sym.contrib.BatchNormWithReLU(mx.sym.var("data"), name="bn", **attrs)
    models = check(symbol, tmp_path, {"data": X}, bn_params("bn"), other_batch={"data": OTHER_BATCH})
    assert "Relu" in op_types(models[DEFAULT_OPSET])


@pytest.mark.parametrize("attrs", [
    {"kernel": (3, 3), "num_filter": 4},
    {"kernel": (3, 3), "num_filter": 6, "stride": (2, 2), "pad": (1, 1), "num_group": 3, "no_bias": True},
])
def test_convolution_v1(attrs, tmp_path):
    symbol = mx.sym.Convolution_v1(mx.sym.var("data"), name="conv", **attrs)
    weight_shape = symbol.infer_shape(data=X.shape)[0][1]
    params = {"conv_weight": RNG.standard_normal(weight_shape).astype(np.float32)}
    if not attrs.get("no_bias"):
        params["conv_bias"] = RNG.standard_normal(attrs["num_filter"]).astype(np.float32)
    check(symbol, tmp_path, {"data": X}, params, other_batch={"data": OTHER_BATCH})


@pytest.mark.parametrize("attrs", [
    {"kernel": (3, 3), "stride": (2, 2)},
    {"kernel": (3, 3), "stride": (2, 2), "pad": (1, 1), "pool_type": "avg", "pooling_convention": "full"},
    {"kernel": (2, 2), "pool_type": "sum"},
    {"kernel": (2, 3), "stride": (1, 2), "pad": (1, 0), "pool_type": "sum"},
    {"global_pool": True, "pool_type": "avg", "kernel": (1, 1)},
    {"global_pool": True, "pool_type": "sum", "kernel": (3, 3), "pad": (1, 1)},
], ids=str)
def test_pooling_v1(attrs, tmp_path):
    symbol = mx.sym.Pooling_v1(mx.sym.var("data"), name="pool", **attrs)
    check(symbol, tmp_path, {"data": X}, other_batch={"data": OTHER_BATCH})


@pytest.mark.parametrize("pool_type", ["max", "avg", "sum"])
@pytest.mark.parametrize("pad", [(0, 0), (1, 1), (2, 1)], ids=str)
def test_pooling_v1_pads_with_zeros_and_clips_full_windows(pool_type, pad, tmp_path):
    """Pooling_v1 pads with zeros whatever the pool type (a max over negative data is 0 at a
    padded border), clips "full" windows to the padded input and divides an average by the
    whole kernel (pooling_v1-inl.h: pool<Reducer>(pad(data), ...) * 1 / (kernel_h * kernel_w)).
    10 x 10 with kernel 3, stride 2: the last "full" window runs past the input."""
    negative = -np.abs(RNG.standard_normal((2, 3, 10, 10))).astype(np.float32) - 0.1
    for convention in ("valid", "full"):
        symbol = mx.sym.Pooling_v1(mx.sym.var("data"), kernel=(3, 3), stride=(2, 2), pad=pad,
                                   pool_type=pool_type, pooling_convention=convention)
        check(symbol, tmp_path, {"data": negative})


@pytest.mark.parametrize("attrs", [
    {},
    {"sizes": (0.2, 0.35), "ratios": (1.0, 2.0, 0.5), "clip": True},
    {"sizes": (0.5,), "ratios": (1.0, 3.0), "steps": (0.1, 0.125), "offsets": (0.25, 0.75)},
])
def test_ssd_anchor_boxes_become_mxnets_own_constants(attrs, tmp_path):
    """MultiBoxPrior depends only on the feature map's shape: MXNet computes it at export."""
    data = mx.sym.var("data")
    anchors = mx.sym.contrib.MultiBoxPrior(data, name="anchors", **attrs)
    scores = mx.sym.sum(data, axis=(2, 3), name="scores")  # the model's other output
    models = check(mx.sym.Group([anchors, scores]), tmp_path, {"data": X},
                   other_batch={"data": OTHER_BATCH})
    assert "Identity" in op_types(models[DEFAULT_OPSET])


def test_linspace_is_folded_to_a_constant(tmp_path):
    ramp = mx.sym.linspace(start=-1.0, stop=2.0, num=9, name="ramp")
    symbol = mx.sym.broadcast_add(mx.sym.var("data"), ramp, name="shifted")
    check(symbol, tmp_path, {"data": X}, other_batch={"data": OTHER_BATCH})
