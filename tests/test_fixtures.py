"""The fixtures themselves: the digits data, the committed models, the model-zoo exports.

Every other test trusts these, so each promise fixtures/ makes is checked here by running MXNet.
"""

import json
import os
import re
import time

import mxnet as mx
import numpy as np
import pytest

from fixtures import build, zoo

# fixtures/build.py refuses to export a trained model below this; the committed ones are at
# 0.994 (lenet_digits) and 0.989 (resnet_digits), measured when they were built.
MIN_ACCURACY = build.MIN_HELDOUT_ACCURACY
HELDOUT_COUNT = 359  # 20% of 1797, rounded


def _record(name):
    return json.loads((build.MODELS_DIR / f"{name}.json").read_text())


def _assert_non_degenerate(output):
    """Finite, max-abs within zoo.OUTPUT_MAX_ABS_RANGE, and not the same value for every class."""
    low, high = zoo.OUTPUT_MAX_ABS_RANGE
    assert np.all(np.isfinite(output))
    assert low <= np.abs(output).max() <= high
    assert output.std() > 1e-2 * np.abs(output).max()


def test_digits_file_has_the_documented_layout():
    with np.load(build.DIGITS_PATH) as digits:
        images, labels = digits["images"], digits["labels"]
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8)
    assert images.min() == 0 and images.max() == 16
    assert labels.dtype == np.uint8 and labels.shape == (1797,)
    assert sorted(set(labels.tolist())) == list(range(10))


def test_digits_split_is_reproducible_nchw_float32():
    x_train, y_train, x_test, y_test = build.digits_split()
    assert x_train.shape == (1797 - HELDOUT_COUNT, 1, 28, 28)
    assert x_test.shape == (HELDOUT_COUNT, 1, 28, 28)
    assert x_train.dtype == x_test.dtype == np.float32
    assert 0.0 <= min(x_train.min(), x_test.min()) and max(x_train.max(), x_test.max()) <= 1.0
    again = build.digits_split()
    for first, second in zip((x_train, y_train, x_test, y_test), again):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", build.TRAINED)
def test_trained_fixture_reaches_its_accuracy_in_mxnet(name):
    symbol_path, params_path = build.fixture_path(name)
    _, _, x_test, y_test = build.digits_split()
    # run_exported loads with mx.sym.load + mx.nd.load and binds an executor: no Gluon involved.
    accuracy = build.accuracy(build.run_exported(symbol_path, params_path, x_test), y_test)
    assert accuracy >= MIN_ACCURACY
    # The record beside the model was measured the same way; inference on CPU may differ by an
    # ulp, which can flip at most a borderline image.
    assert abs(accuracy - _record(name)["heldout_accuracy"]) <= 1.0 / HELDOUT_COUNT


@pytest.mark.parametrize("name", build.COMMITTED)
def test_exported_params_use_arg_and_aux_prefixes(name):
    symbol_path, params_path = build.fixture_path(name)
    assert (symbol_path.name, params_path.name) == (f"{name}-symbol.json", f"{name}-0000.params")
    saved = mx.nd.load(str(params_path))
    assert all(key.startswith(("arg:", "aux:")) for key in saved)
    # PITFALLS: BatchNorm's moving mean/var are the aux states, and nothing else is.
    aux = [key for key in saved if key.startswith("aux:")]
    assert all(key.endswith(("_running_mean", "_running_var")) for key in aux)
    assert bool(aux) == name.startswith("resnet")
    record = _record(name)
    assert record["input_name"] == "data"
    assert "data" in mx.sym.load(str(symbol_path)).list_arguments()


@pytest.mark.parametrize("name", build.TRAINED)
def test_gluon_params_file_has_structural_names_and_the_exported_values(name):
    gluon_path = str(build.MODELS_DIR / _record(name)["gluon_params"])
    gluon_saved = mx.nd.load(gluon_path)
    assert all(re.fullmatch(r"[a-z_]+(\.[a-z0-9_]+)+", key) for key in gluon_saved), gluon_saved
    assert "features.0.weight" in gluon_saved

    # Gluon itself maps structural names to the full names that export writes.
    net = build.new_net(name)
    net.load_parameters(gluon_path)
    exported = mx.nd.load(str(build.fixture_path(name)[1]))
    full_names = dict(net.collect_params().items())
    assert len(full_names) == len(exported) == len(gluon_saved)
    for full_name, param in full_names.items():
        prefix = "aux:" if full_name.endswith(("running_mean", "running_var")) else "arg:"
        np.testing.assert_array_equal(param.data().asnumpy(),
                                      exported[prefix + full_name].asnumpy())


@pytest.mark.parametrize("name", build.RANDOM)
def test_random_fixture_is_small_and_non_degenerate(name):
    symbol_path, params_path = build.fixture_path(name)
    assert os.path.getsize(params_path) < 2 * 2**20  # the brief's limit for committing them
    shape = tuple(_record(name)["input_shape"])
    _assert_non_degenerate(build.run_exported(symbol_path, params_path, zoo.seeded_input(shape)))


def test_random_resnet_batchnorm_statistics_are_not_the_identity():
    """A fold that ignores gamma, beta, mean or var must be caught: none is at its default."""
    saved = mx.nd.load(str(build.fixture_path("resnet_bn_random")[1]))
    defaults = {"_gamma": 1.0, "_beta": 0.0, "_running_mean": 0.0, "_running_var": 1.0}
    for suffix, default in defaults.items():
        values = np.concatenate([v.asnumpy() for k, v in saved.items() if k.endswith(suffix)])
        assert np.abs(values - default).mean() > 0.05, suffix


def test_zoo_names_are_every_get_model_name():
    assert len(zoo.ZOO_NAMES) == 34  # counted in MXNet 1.9.1's vision.get_model table
    assert "inceptionv3" in zoo.ZOO_NAMES and "mobilenetv2_0.25" in zoo.ZOO_NAMES
    with pytest.raises(ValueError):
        zoo.input_shape("inception_v3")  # the function's name, not the zoo's
    assert zoo.input_shape("inceptionv3") == (1, 3, 299, 299)
    assert zoo.input_shape("resnet18_v1") == (1, 3, 224, 224)


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("zoo"))


@pytest.mark.parametrize("name", [
    "mobilenet0.25",
    "squeezenet1.0",  # its last weighted layer is a Conv followed by ReLU and pooling
    "resnet18_v1",
])
def test_export_zoo_model_gives_non_degenerate_outputs(name, zoo_cache):
    symbol_path, params_path, shape = zoo.export_zoo_model(name, zoo_cache)
    assert shape == zoo.input_shape(name)
    output = build.run_exported(symbol_path, params_path, zoo.seeded_input(shape))
    assert output.shape == (1, 1000)
    _assert_non_degenerate(output)


def test_export_zoo_model_is_seeded_by_name_and_reuses_its_cache(tmp_path):
    name = "mobilenet0.25"
    first = zoo.export_zoo_model(name, str(tmp_path / "first"))
    modified = os.path.getmtime(first[1])
    time.sleep(0.01)
    assert zoo.export_zoo_model(name, str(tmp_path / "first")) == first
    assert os.path.getmtime(first[1]) == modified
    assert not [path for path in os.listdir(tmp_path / "first") if path.startswith(".tmp")]

    second = zoo.export_zoo_model(name, str(tmp_path / "second"))
    first_params, second_params = mx.nd.load(str(first[1])), mx.nd.load(str(second[1]))
    assert first_params.keys() == second_params.keys()
    for key in first_params:
        np.testing.assert_allclose(first_params[key].asnumpy(), second_params[key].asnumpy(),
                                   rtol=1e-5, atol=1e-6)


def test_an_exploding_output_is_brought_back_by_rescaling_the_last_layer():
    """No zoo net needs the rescale (all 34 land in [0.26, 15.5] unaided), so force one."""
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(64, activation="relu"),
            mx.gluon.nn.Dense(10, weight_initializer=mx.init.Constant(1e4)))  # overrides He init
    output_max_abs, rescale = zoo.initialise_nondegenerate(net, (1, 100), seed=0)
    assert rescale < 1e-3
    assert output_max_abs == pytest.approx(zoo.RESCALED_OUTPUT_MAX_ABS, rel=1e-4)


@pytest.mark.slow
def test_alexnet_builds_on_demand():
    symbol_path, params_path = build.alexnet()
    output = build.run_exported(symbol_path, params_path, zoo.seeded_input((1, 3, 224, 224)))
    assert output.shape == (1, 1000)
    _assert_non_degenerate(output)


@pytest.mark.slow
def test_rebuilding_the_committed_fixtures_keeps_their_accuracy(tmp_path):
    records = build.build_all(str(tmp_path))
    for name in build.TRAINED:
        symbol_path = tmp_path / f"{name}-symbol.json"
        assert symbol_path.exists() and records[name]["heldout_accuracy"] >= MIN_ACCURACY
