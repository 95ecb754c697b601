"""The padded-grid kernel of the masked conv operator (kernels/conv_grid.py) against
the plain operator (conv2d and conv2d_transpose with masks, bounds/layer_norms.py)."""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from networks import materialise
from support import assert_backend_close

from lipref import primitives as P
from lipref.backend import to_host
from lipref.kernels.conv_grid import GRID_FORMS, ConvGrid, grid_form
from lipref.layers import Conv2d


@st.composite
def conv_cases(draw):
    stride = draw(st.integers(1, 3))
    k = draw(st.integers(1, 5))
    padding = draw(st.integers(0, 2))
    h = draw(st.integers(max(1, k - 2 * padding), 9))
    w = draw(st.integers(max(1, k - 2 * padding), 9))
    return dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 4)), o=draw(st.integers(1, 4)), k=k,
                stride=stride, padding=padding, h=h, w=w, seed=draw(st.integers(0, 10_000)))


def _arrays(case):
    rng = numpy.random.default_rng(case["seed"])
    oh, ow = P.conv_output_hw(case["h"], case["w"], case["k"], case["k"], case["stride"], case["padding"])
    weight = rng.standard_normal((case["o"], case["c"], case["k"], case["k"]))
    x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"]))
    y = rng.standard_normal((case["n"], case["o"], oh, ow))
    return weight, x, y


@settings(max_examples=40, deadline=None)
@given(case=conv_cases())
def test_grid_forward_and_adjoint_are_conv2d_and_its_adjoint(xp, case):
    weight, x, y = _arrays(case)
    s, p = case["stride"], case["padding"]
    forward = P.conv2d(x, weight, None, s, p)
    adjoint = P.conv2d_transpose(y, weight, s, p, (case["h"], case["w"]))
    for form in GRID_FORMS:
        grid = ConvGrid(xp.asarray(weight), s, p, (case["h"], case["w"]), form)
        xg = grid.to_grid(xp.asarray(x))
        assert_backend_close(grid.from_grid(xg), x, xp, rtol=0, atol=0, what="from_grid(to_grid(x))")
        rows, cols = grid.masks(None, None, case["n"], xg.dtype, xp)
        # the forward, rows that are no output removed, is conv2d in the form's output layout
        assert_backend_close(grid.forward(xg) * rows, grid.to_outputs(xp.asarray(forward)), xp,
                             rtol=1e-12, atol=1e-12, what=f"forward {form}")
        back = grid.adjoint(grid.to_outputs(xp.asarray(y)))
        assert_backend_close(grid.from_grid(back), adjoint, xp, rtol=1e-12, atol=1e-12, what=f"adjoint {form}")
        # the column mask removes exactly the grid's padding: there the adjoint may be nonzero
        assert_backend_close(back * cols, grid.to_grid(xp.asarray(adjoint)), xp, rtol=1e-12, atol=1e-12,
                             what=f"masked adjoint {form}")


@settings(max_examples=25, deadline=None)
@given(case=conv_cases())
def test_grid_masks_keep_exactly_the_layers_entries(xp, case):
    weight, x, y = _arrays(case)
    rng = numpy.random.default_rng(case["seed"] + 1)
    row_mask = (rng.random(y.shape) < 0.5).astype(numpy.float64)
    col_mask = (rng.random(x.shape) < 0.5).astype(numpy.float64)
    for form in GRID_FORMS:
        grid = ConvGrid(xp.asarray(weight), case["stride"], case["padding"], (case["h"], case["w"]), form)
        rows, cols = grid.masks(xp.asarray(row_mask), xp.asarray(col_mask), case["n"], xp.float64, xp)
        assert float(xp.sum(rows)) == row_mask.sum() and float(xp.sum(cols)) == col_mask.sum()
        assert tuple(rows.shape) == (case["n"], grid.output_pixels(), case["o"])
        all_rows, all_cols = grid.masks(None, None, case["n"], xp.float64, xp)
        assert float(xp.sum(all_rows)) == y.size and float(xp.sum(all_cols)) == x.size
        assert_backend_close(grid.from_grid(cols), col_mask, xp, rtol=0, atol=0, what="column mask")


def test_grid_form_copies_the_narrower_side():
    assert grid_form(1, 32, 1) == "gather"  # a first layer: 1 channel in
    assert grid_form(32, 64, 1) == "gather"
    assert grid_form(32, 32, 1) == "gather"
    assert grid_form(32, 32, 2) == "scatter"  # space-to-depth makes the input 4x wider
    assert grid_form(64, 32, 1) == "scatter"


def test_unknown_grid_form_is_an_error():
    with pytest.raises(ValueError, match="grid form"):
        ConvGrid(numpy.ones((2, 2, 3, 3)), 1, 1, (5, 5), "im2col")


@pytest.mark.parametrize("stride, c, o, k", [(1, 2, 3, 3), (2, 2, 3, 3), (1, 1, 8, 3), (2, 3, 2, 4), (3, 2, 2, 2)])
def test_conv_power_iteration_on_the_grid_matches_the_layer_layout(xp, stride, c, o, k):
    """Conv layers iterate on their padded space-to-depth grid (conv_grid) with the masked
    Gram shortcut; that must give what power iteration on the layer's own layout gives
    (apply_adjoint(apply(v)) every step): the same sigma and v, from a stored start vector
    that ignores today's column mask, and from a zero start (the constant unit vector, on
    the layer's entries), for 0 steps too; and never more than the exact masked norm."""
    from lipref.bounds import spectral
    from lipref.bounds.layer_norms import masked_operator as _operator
    from lipref.bounds.layer_norms import masked_power_iteration
    rng = numpy.random.default_rng(5)
    layer = Conv2d((c, 7, 7), o, k, stride, 1)
    w = xp.asarray(rng.standard_normal((o, c, k, k)))
    rows = xp.asarray((rng.random((4,) + layer.out_shape) < 0.6).astype(numpy.float64))
    cols = xp.asarray((rng.random((4, c, 7, 7)) < 0.6).astype(numpy.float64))
    v0_host = rng.standard_normal((4, c, 7, 7))
    v0_host[2] = 0.0
    v0 = xp.asarray(v0_host)
    apply, apply_adjoint, _ = _operator(layer, w, rows, cols)
    for n_iters in (0, 1, 7):
        on_grid = masked_power_iteration(layer, w, rows, cols, v0, n_iters)
        sigma, _, v = spectral.power_iteration(apply, apply_adjoint, v0, n_iters)
        assert_backend_close(on_grid[0], to_host(sigma), xp, rtol=1e-12, atol=1e-12, what=f"sigma, {n_iters} steps")
        assert_backend_close(on_grid[1], to_host(v), xp, rtol=1e-12, atol=1e-12, what=f"v, {n_iters} steps")
        assert tuple(on_grid[1].shape) == (4, c, 7, 7)
    dense = numpy.stack([numpy.linalg.norm(materialise(layer, to_host(w), to_host(rows)[s], to_host(cols)[s]), 2)
                         for s in range(4)])
    assert numpy.all(to_host(on_grid[0]) <= dense * (1 + 1e-12))
    assert numpy.all(to_host(on_grid[0]) >= 0.5 * dense)  # 7 steps from a random start: near, not equal


@settings(max_examples=25, deadline=None)
@given(case=conv_cases(), density=st.sampled_from([0.0, 0.5, 1.0]), scale=st.sampled_from([1e-200, 1.0, 1e150]),
       n_iters=st.sampled_from([0, 1, 4]))
def test_kernel_power_iteration_equals_the_plain_operator(xp, case, density, scale, n_iters):
    """masked_power_iteration with the grid kernel and under reference_only() (the plain
    masked operator on the layer's layout) agree to rounding on drawn shapes, at tiny and
    huge weight scales, with all-masked operators (density 0: sigma exactly 0, never NaN)
    and exactly zero start vectors."""
    from lipref.bounds.layer_norms import masked_power_iteration
    from lipref.kernels import applying_kernel, conv_grid, enabled, reference_only
    weight, x, _ = _arrays(case)
    rng = numpy.random.default_rng(case["seed"] + 1)
    layer = Conv2d((case["c"], case["h"], case["w"]), case["o"], case["k"], case["stride"], case["padding"])
    w = xp.asarray(weight * scale)
    rows = xp.asarray((rng.random((case["n"],) + layer.out_shape) < density).astype(numpy.float64))
    cols = xp.asarray((rng.random((case["n"],) + layer.in_shape) < max(density, 0.5)).astype(numpy.float64))
    v0_host = x.copy()
    v0_host[0] = 0.0
    v0 = xp.asarray(v0_host)
    runs = applying_kernel("masked_power_iteration", layer, w, rows, cols, v0, n_iters)
    on_numpy = "numpy" in xp.__name__ and "strict" not in xp.__name__
    assert (runs is conv_grid.grid_power_iteration) == (enabled() and on_numpy)  # enabled: not LIPREF_REFERENCE=1
    fast = masked_power_iteration(layer, w, rows, cols, v0, n_iters)
    with reference_only():
        assert applying_kernel("masked_power_iteration", layer, w, rows, cols, v0, n_iters) is None
        plain = masked_power_iteration(layer, w, rows, cols, v0, n_iters)
    sigma = to_host(plain[0])
    assert numpy.all(numpy.isfinite(to_host(fast[0]))) and numpy.all(numpy.isfinite(to_host(fast[1])))
    assert_backend_close(fast[0], sigma, xp, rtol=1e-10, atol=1e-12 * scale, what="sigma")
    assert_backend_close(fast[1], to_host(plain[1]), xp, rtol=1e-8, atol=1e-10, what="v")
    if density == 0.0:
        assert numpy.all(to_host(fast[0]) == 0.0)
