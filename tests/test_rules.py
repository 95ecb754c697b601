"""Interval and ball bounds of an affine layer (bounds/rules.py)."""
import numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from support import assert_backend_close

from lipref.backend import to_host
from lipref.layers import Conv2d, Linear


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), conv=st.booleans(), eps=st.sampled_from([0.0, 0.01, 0.3, 2.0]))
def test_interval_shortcuts_equal_the_plain_formulas(xp, seed, conv, eps):
    """What the walk computes more cheaply equals what it stands for:
    - affine_interval takes the halves on the weights: bitwise the plain centre/radius form;
    - row norms of an all-ones mask, once for the batch: the per-sample ones;
    - the first layer's box x +- eps: uniform_box_interval equals the interval intersected
      with the ball bound (to rounding: the plain form's centre is ((x+eps)+(x-eps))/2)."""
    from lipref.bounds.rules import (
        affine_interval,
        ball_interval,
        intersect,
        row_norms,
        uniform_box_interval,
        weight_forms,
    )
    rng = numpy.random.default_rng(seed)
    layer = Conv2d((2, 7, 6), 3, 3, 2, 1) if conv else Linear(9, 5)
    shape_w = (3, 2, 3, 3) if conv else (5, 9)
    params = {"weight": xp.asarray(rng.standard_normal(shape_w)), "bias": xp.asarray(rng.standard_normal(shape_w[0]))}
    forms = weight_forms(params["weight"])
    n = 4
    x = xp.asarray(rng.uniform(-1, 1, (n,) + layer.in_shape))
    lower = xp.asarray(to_host(x) - rng.uniform(0, 1, (n,) + layer.in_shape))
    upper = xp.asarray(to_host(x) + rng.uniform(0, 1, (n,) + layer.in_shape))
    w, b = params["weight"], params["bias"]
    lo, up = affine_interval(layer, forms, b, lower, upper)
    mid, rad = (upper + lower) * 0.5, (upper - lower) * 0.5
    c, r = layer.affine(mid, w, b), layer.affine(rad, xp.abs(w), None)
    assert numpy.array_equal(to_host(lo), to_host(c - r)) and numpy.array_equal(to_host(up), to_host(c + r))

    ones = xp.ones((n,) + layer.in_shape, dtype=xp.float64)
    norms_once = row_norms(layer, forms, None)
    assert tuple(norms_once.shape) == (1,) + layer.out_shape
    # to rounding: BLAS may sum a one-row product in another order than a four-row one
    assert_backend_close(row_norms(layer, forms, ones), numpy.broadcast_to(to_host(norms_once), (n,) + layer.out_shape),
                         xp, rtol=1e-14, atol=0, what="row norms")

    z = layer.affine(x, w, b)
    radius = xp.asarray(eps * rng.uniform(0.5, 3.0, n))
    lo_u, up_u = uniform_box_interval(layer, forms, z, eps, radius, norms_once)
    lo_p, up_p = intersect(*affine_interval(layer, forms, b, x - eps, x + eps), *ball_interval(z, radius, norms_once))
    assert_backend_close(lo_u, to_host(lo_p), xp, rtol=0, atol=1e-13, what="lower")
    assert_backend_close(up_u, to_host(up_p), xp, rtol=0, atol=1e-13, what="upper")
