"""The rounding allowances (bounds/rounding.py) cover the rounding they claim to cover.

Each is checked against the same computation in higher precision: float32 against float64
for the walk's terms, float64 against numpy.longdouble for the last layer's."""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipref.bounds import rounding as R
from lipref.bounds.rules import affine_interval, weight_forms
from lipref.bounds.walk import NetworkBounds
from lipref.layers import Conv2d, Linear


def test_unit_roundoff_and_gamma(xp):
    assert R.unit_roundoff(xp, xp.float64) == 2.0 ** -53
    assert R.unit_roundoff(xp, xp.float32) == 2.0 ** -24
    u = 2.0 ** -53
    assert R.gamma(7, u) == 7 * u / (1 - 7 * u)
    assert R.last_layer_gamma(100) == R.gamma(110, u)
    with pytest.raises(ValueError, match="too large"):
        R.gamma(2 ** 23, 2.0 ** -24)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), conv=st.booleans(), scale=st.sampled_from([1e-3, 1.0, 1e4]))
def test_affine_rounding_slack_covers_the_float32_interval(seed, conv, scale):
    """The interval of an affine layer computed in float32 is within the float32 slack of
    the same interval in float64 (its exact value, to float64's far smaller rounding)."""
    import array_api_compat.numpy as xp
    rng = numpy.random.default_rng(seed)
    layer = Conv2d((2, 6, 6), 3, 3, 2, 1) if conv else Linear(40, 7)
    shape_w = (3, 2, 3, 3) if conv else (7, 40)
    w = rng.standard_normal(shape_w) * scale
    b = rng.standard_normal(shape_w[0]) * scale
    centre = rng.standard_normal((4,) + layer.in_shape)
    lower, upper = centre - rng.uniform(0, 1, centre.shape), centre + rng.uniform(0, 1, centre.shape)

    def interval(dtype):
        params = {"weight": w.astype(dtype), "bias": b.astype(dtype)}
        return params, affine_interval(layer, weight_forms(params["weight"]), params["bias"], lower.astype(dtype),
                                       upper.astype(dtype))
    params32, (lo32, up32) = interval(numpy.float32)
    _, (lo64, up64) = interval(numpy.float64)
    slack = R.affine_rounding_slack(layer, params32["weight"], params32["bias"], lower.astype(numpy.float32),
                                    upper.astype(numpy.float32))
    assert numpy.all(numpy.abs(lo32.astype(numpy.float64) - lo64) <= slack)
    assert numpy.all(numpy.abs(up32.astype(numpy.float64) - up64) <= slack)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 300), scale=st.sampled_from([1e-8, 1.0, 1e8]))
def test_logit_slack_covers_the_logits_and_their_differences(seed, dim, scale):
    """float64 logits W h + b and their differences z_j - z_y are within logit_slack of
    the same in long double."""
    import array_api_compat.numpy as xp
    rng = numpy.random.default_rng(seed)
    w, b = rng.standard_normal((5, dim)), rng.standard_normal(5) * scale
    h = rng.standard_normal((3, dim)) * scale
    logits = h @ w.T + b
    exact = h.astype(numpy.longdouble) @ w.T.astype(numpy.longdouble) + b.astype(numpy.longdouble)
    z = numpy.zeros((3,))
    bounds = NetworkBounds(logits, xp.asarray(h), xp.asarray(h), xp.asarray(h), z, z, None)
    slack = R.logit_slack(bounds, xp.asarray(w), xp.asarray(b))
    assert numpy.all(numpy.abs(logits - exact).max(axis=1) <= slack)
    diffs = logits[:, :, None] - logits[:, None, :]
    exact_diffs = exact[:, :, None] - exact[:, None, :]
    assert numpy.all(numpy.abs(diffs - exact_diffs).max(axis=(1, 2)) <= slack)
    assert numpy.all(R.margin_slack(bounds, xp.asarray(w), xp.asarray(b)) >= slack)


def test_support_radius_adds_the_forward_error():
    import array_api_compat.numpy as xp
    radius = xp.asarray([1.0, 2.0])
    bounds = NetworkBounds(None, None, None, None, None, radius, None)
    assert R.support_radius(bounds) is radius
    bounds.forward_error = xp.asarray([[3.0, 4.0], [0.0, 0.0]])
    found = R.support_radius(bounds)
    assert numpy.all(found >= [6.0, 2.0])  # rounded up: R + ||e|| at most a few ulps above
    numpy.testing.assert_allclose(found, [6.0, 2.0], rtol=1e-14, atol=0)
