"""Regression tests for certificates that were false and inputs that gave silently wrong
answers (the soundness review): overflowing bounds read as "constant", the forward pass's
own rounding in sound mode, and exact inputs. Each constructs the case the review found."""
import itertools

import numpy
import pytest

from lipref.backend import to_host
from lipref.bounds import BoundOptions, network_bounds
from lipref.bounds.rules import rule_of
from lipref.certification import CertifyConfig, certify
from lipref.errors import BoundsOverflowError, InputError
from lipref.layers import ClampedMaxMin, ClippedReLU, Linear, ReLU, Sequential


def _dense(xp, dtype, layers, values):
    model = Sequential(layers).init_params(xp, dtype, numpy.random.default_rng(0))
    model.set_parameters({k: xp.asarray(numpy.asarray(v, dtype=numpy.float64), dtype=dtype) for k, v in values.items()})
    return model


@pytest.mark.parametrize("layer", [ReLU((3,)), ClippedReLU((3,), 1.0), ClampedMaxMin((4,), 1.0)])
def test_nan_bounds_mean_can_move(xp, layer):
    """inf - inf = NaN bounds used to fail every `upper > 0` test, so whole layers were
    marked constant and the local bound collapsed to 0."""
    layer.init_params(xp, xp.float64, numpy.random.default_rng(0))
    nan = xp.full((2,) + layer.in_shape, float("nan"), dtype=xp.float64)
    rows, outputs = rule_of(layer).masks({k: v.value for k, v in layer.params.items()}, nan, nan)
    assert bool(xp.all(rows == 1)) and bool(xp.all(outputs == 1))


@pytest.mark.parametrize("dtype,eps", [("float32", 3e38), ("float64", 1.7e308)])
def test_an_eps_whose_bounds_overflow_is_an_error(xp, dtype, eps):
    """`lipref bound --eps 3e38` printed a local bound of 0 and constant fraction 1.00."""
    dt = getattr(xp, dtype)
    rng = numpy.random.default_rng(1)
    model = _dense(xp, dt, [Linear(2, 4), ReLU((4,)), Linear(4, 4), ReLU((4,)), Linear(4, 3)],
                   {"0.weight": rng.normal(size=(4, 2)), "0.bias": rng.normal(size=4),
                    "2.weight": rng.normal(size=(4, 4)), "2.bias": rng.normal(size=4),
                    "4.weight": rng.normal(size=(3, 4)), "4.bias": rng.normal(size=3)})
    x = xp.asarray(rng.uniform(-1, 1, (3, 2)), dtype=dt)
    with pytest.raises(BoundsOverflowError, match="overflow"):
        network_bounds(model, x, eps, BoundOptions("local", "fast", 5), rng=rng)
    mode = "sound" if dtype == "float64" else "fast"
    with pytest.raises(BoundsOverflowError):
        certify(model, rng.uniform(-1, 1, (3, 2)).astype(dtype), numpy.zeros(3, dtype=numpy.int64), eps, CertifyConfig(mode=mode, n_iters=5, pgd_steps=0), rng=rng)
    with pytest.raises(InputError, match="finite"):
        network_bounds(model, x, float("inf"), BoundOptions("local", "fast", 5), rng=rng)


def _cancelling_model(xp, order):
    """2 -> 3 -> 1 -> 2 classes. Hidden neurons a1 = a2 = 2^53 + 2 (constant: zero weight
    rows) and c = 1; the next layer computes g = relu(a1 + c - a2), which float64 rounds to 2
    (2^53 + 3 is not a float) where the exact value is 1; the logits are (g - 1.5, 0). The
    exact network predicts class 1 everywhere; float64 says class 0. `order` permutes the
    hidden neurons, so that some permutation meets the rounding whatever the dot product's
    summation order."""
    big = 2.0 ** 53 + 2
    bias1 = numpy.array([big, 1.0, big])[list(order)]
    mix = numpy.array([1.0, 1.0, -1.0])[list(order)]
    return _dense(xp, xp.float64, [Linear(2, 3), ReLU((3,)), Linear(3, 1), ReLU((1,)), Linear(1, 2)],
                  {"0.weight": numpy.zeros((3, 2)), "0.bias": bias1, "2.weight": mix[None, :], "2.bias": [0.0],
                   "4.weight": [[1.0], [0.0]], "4.bias": [-1.5, 0.0]})


def test_sound_mode_covers_the_forward_pass_rounding(xp):
    """Sound mode widened the boxes for the interval's rounding but not for the rounding
    already in h: it certified class 0, which the exact network never predicts."""
    x = numpy.array([[0.25, -0.5]])
    rounded = []
    for order in itertools.permutations(range(3)):
        model = _cancelling_model(xp, order)
        logits = to_host(model(xp.asarray(x), record=False))
        if logits[0, 0] > 0:  # float64 met the rounding in this order: prediction 0, exactly 1
            rounded.append(order)
            result = certify(model, x, numpy.array([0]), 1e-3, CertifyConfig(mode="sound", n_iters=10, pgd_steps=0), rng=numpy.random.default_rng(0))
            assert int(result.predictions[0]) == 0
            assert not result.certified_local[0] and not result.certified_global[0]
            assert result.radius_local[0] == 0.0 and result.radius_global[0] == 0.0
    assert rounded, "no summation order met the rounding: the construction does not test anything"
