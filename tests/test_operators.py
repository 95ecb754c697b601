"""Masked operators (bounds/layer_norms.py): the plain masked operator is the masked matrix,
its adjoint is its transpose, its Gram shortcut is A^T A on A^T's range, and the masked
power iteration never exceeds the exact masked norm."""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from networks import materialise
from support import assert_backend_close, examples

from lipref.backend import to_host
from lipref.bounds.layer_norms import masked_operator, masked_power_iteration
from lipref.kernels import reference_only
from lipref.layers import Conv2d, Linear


def _layer(conv, rng):
    if conv:
        layer = Conv2d((2, 5, 5), 3, 3, 2, 1)
        return layer, rng.standard_normal((3, 2, 3, 3))
    return Linear(6, 4), rng.standard_normal((4, 6))


def _dense(layer, w, rows, cols):
    if isinstance(layer, Conv2d):
        return materialise(layer, w, rows, cols)
    return rows[:, None] * w * cols[None, :]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), conv=st.booleans(), density=st.sampled_from([0.0, 0.5, 1.0]))
def test_masked_operator_is_the_masked_matrix(xp, seed, conv, density):
    rng = numpy.random.default_rng(seed)
    layer, w = _layer(conv, rng)
    n = 3
    rows = (rng.random((n,) + layer.out_shape) < density).astype(numpy.float64)
    cols = (rng.random((n,) + layer.in_shape) < max(density, 0.5)).astype(numpy.float64)
    apply, apply_adjoint, gram = masked_operator(layer, xp.asarray(w), xp.asarray(rows), xp.asarray(cols))
    v = rng.standard_normal((n,) + layer.in_shape)
    u = rng.standard_normal((n,) + layer.out_shape)
    av, atu = to_host(apply(xp.asarray(v))), to_host(apply_adjoint(xp.asarray(u)))
    for s in range(n):
        m = _dense(layer, w, rows[s], cols[s])
        numpy.testing.assert_allclose(av[s].reshape(-1), m @ v[s].reshape(-1), rtol=1e-12, atol=1e-12)
        numpy.testing.assert_allclose(atu[s].reshape(-1), m.T @ u[s].reshape(-1), rtol=1e-12, atol=1e-12)
    in_range = apply_adjoint(xp.asarray(u))  # cols * v == v there
    assert_backend_close(gram(in_range), to_host(apply_adjoint(apply(in_range))), xp, rtol=1e-12, atol=1e-12,
                         what="gram shortcut")


@pytest.mark.property  # its @given is built per backend (fewer draws off NumPy), out of conftest's sight
def test_masked_power_iteration_never_exceeds_the_masked_norm(xp):
    """Plain (reference_only) and with kernels: sigma <= the exact masked norm, 0 for an
    all-masked operator, and close to it after many steps."""
    @settings(max_examples=examples(xp, 15, 5), deadline=None)
    @given(seed=st.integers(0, 2**32 - 1), conv=st.booleans(), density=st.sampled_from([0.0, 0.5, 1.0]))
    def run(seed, conv, density):
        rng = numpy.random.default_rng(seed)
        layer, w = _layer(conv, rng)
        n = 3
        rows = (rng.random((n,) + layer.out_shape) < density).astype(numpy.float64)
        cols = (rng.random((n,) + layer.in_shape) < max(density, 0.5)).astype(numpy.float64)
        exact = numpy.array([numpy.linalg.norm(_dense(layer, w, rows[s], cols[s]), 2) for s in range(n)])
        v0 = xp.asarray(rng.standard_normal((n,) + layer.in_shape))
        for plain in (False, True):
            if plain:
                with reference_only():
                    sigma, v = masked_power_iteration(layer, xp.asarray(w), xp.asarray(rows), xp.asarray(cols), v0, 300)
            else:
                sigma, v = masked_power_iteration(layer, xp.asarray(w), xp.asarray(rows), xp.asarray(cols), v0, 300)
            s = to_host(sigma)
            assert numpy.all(s <= exact * (1 + 1e-12) + 1e-300)
            assert numpy.all(s >= 0.9 * exact)
            assert tuple(v.shape) == (n,) + layer.in_shape
    run()
