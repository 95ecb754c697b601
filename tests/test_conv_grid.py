"""The conv layer on its padded space-to-depth grid (lipref.bounds.conv_grid), against
conv2d and its adjoint on the layer's own layout: drawn shapes (strides 1-3, kernels that are
and are not multiples of the stride, padding 0-2, non-square images), both forms, float64."""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipref import primitives as P
from lipref.bounds.conv_grid import GRID_FORMS, ConvGrid, grid_form
from support import assert_backend_close


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
