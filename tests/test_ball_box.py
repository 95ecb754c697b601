"""The ball-and-box support max c^T d over ||d|| <= R, lo <= d <= hi against ground truth.

Three definitions are compared: `ball_box_support` with the sorted-breakpoint kernel's
multiplier (kernels/ball_box.py), with its plain definition's (`bisected_multiplier`, both
passed explicitly, so the comparison also runs under LIPREF_REFERENCE=1), and the
certificates' weak-duality bound (`ball_box_upper_bound`). The ground truth is an enumeration of every KKT active set
(each coordinate at its lower face, its upper face or free, the free ones filling the
ball along c), written here in plain NumPy for D <= 5: an independent algorithm. Drawn
cases include what broke the first solver: exact zeros in c, ties among breakpoints, the
sphere met exactly at a breakpoint, boxes inside the ball, constant coordinates (box
[0, 0]) with weights 1e8 times the moving ones, and huge and tiny overall scales."""
import itertools

import numpy
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lipref.backend import to_host
from lipref.bounds import certificate as C
from lipref.bounds import margins as M
from lipref.kernels.ball_box import sorted_breakpoint_multiplier


def brute_force_maximum(c, lo, hi, radius):
    """max c.d over the ball and box by enumerating active sets (float64, small D): each
    coordinate at its lower face, its upper face or free, the free ones along c filling
    what the faces leave of the ball; the best feasible candidate (d = 0 is feasible)."""
    top = float(numpy.max(numpy.abs(c)))
    if top == 0:
        return 0.0
    c = c / top  # the maximum is homogeneous in c; unscaled, squares of 1e-200 vanish
    states = numpy.array(list(itertools.product((0, 1, 2), repeat=len(c))))  # (S, D)
    faces = numpy.where(states == 1, lo, numpy.where(states == 2, hi, 0.0))
    rest = radius * radius - numpy.sum(faces * faces, axis=1)
    free = numpy.where(states == 0, c, 0.0)
    norm = numpy.linalg.norm(free, axis=1)
    fill = numpy.sqrt(numpy.maximum(rest, 0.0)) / numpy.where(norm > 0, norm, 1.0)
    d = faces + free * fill[:, None]
    tol = 1e-12 * (radius + numpy.max(numpy.abs(d), axis=1))
    ok = ((rest >= 0) & numpy.all(d >= lo - tol[:, None], axis=1) & numpy.all(d <= hi + tol[:, None], axis=1)
          & (numpy.linalg.norm(d, axis=1) <= radius + tol))
    return max(0.0, float(numpy.max(numpy.where(ok, d @ c, -numpy.inf)))) * top


@st.composite
def hard_cases(draw):
    """(c, lo, hi, R), one row, D <= 5, with the hard cases drawn often."""
    d = draw(st.integers(1, 5))
    f = st.floats(-3, 3, allow_nan=False, allow_subnormal=False)
    c = numpy.array(draw(st.lists(f, min_size=d, max_size=d)))
    zeros = numpy.array(draw(st.lists(st.booleans(), min_size=d, max_size=d)))
    c[zeros] = 0.0
    if draw(st.booleans()):  # ties: equal |c| and equal faces give equal breakpoints
        c = numpy.round(c)
    radius = draw(st.floats(1e-3, 10))
    shape = draw(st.sampled_from(["cube", "random", "inside", "constant-heavy"]))
    if shape == "cube":  # the box +-R: the sphere meets the breakpoint of any lone coordinate
        lo, hi = numpy.full(d, -radius), numpy.full(d, radius)
    else:
        lo = -numpy.array(draw(st.lists(st.floats(0, 3), min_size=d, max_size=d)))
        hi = numpy.array(draw(st.lists(st.floats(0, 3), min_size=d, max_size=d)))
        if shape == "inside":
            lo, hi = lo * radius / (4 * d), hi * radius / (4 * d)
        elif shape == "constant-heavy":  # constant neurons (box [0, 0]) with weights 1e8 x larger
            heavy = numpy.array(draw(st.lists(st.booleans(), min_size=d, max_size=d)))
            lo[heavy], hi[heavy] = 0.0, 0.0
            c[heavy] = c[heavy] * 1e8 + 1e8
    scale = 10.0 ** draw(st.sampled_from([-30, -8, 0, 8, 30]))
    return c * scale, lo, hi, radius


def _solve(xp, c, lo, hi, radius):
    arrays = [xp.asarray(numpy.asarray(a, dtype=numpy.float64).reshape(1, -1)) for a in (c, lo, hi)]
    r = xp.asarray(numpy.array([radius], dtype=numpy.float64))
    value, lam, inside = C.ball_box_support(*arrays, r, sorted_breakpoint_multiplier)
    reference, _, _ = C.ball_box_support(*arrays, r, C.ball_box_multiplier.plain)
    lam_used = xp.where(inside, xp.full_like(lam, xp.inf), lam)
    upper = C.ball_box_upper_bound(*arrays, r, lam_used)
    return (float(to_host(a)[0]) for a in (value, reference, upper))


@settings(max_examples=200, deadline=None)
@given(case=hard_cases())
@example(case=(numpy.array([5.481887415507686, 0.0]), numpy.full(2, -9.351373513639805),
               numpy.full(2, 9.351373513639805), 9.351373513639805))  # the minimal case
@example(case=(numpy.array([1e8, 1.0]), numpy.array([0.0, -1.0]), numpy.array([0.0, 1.0]), 0.5))  # cancellation
def test_solvers_against_the_true_maximum(xp, case):
    c, lo, hi, radius = case
    truth = brute_force_maximum(c, lo, hi, radius)
    value, reference, upper = _solve(xp, c, lo, hi, radius)
    size = float(numpy.sum(numpy.abs(c))) * radius
    tol = 1e-9 * size + 1e-300  # and a few subnormal ulps
    assert abs(value - truth) <= tol, f"exact solver {value} vs true maximum {truth}"
    assert abs(reference - truth) <= tol, f"bisection reference {reference} vs true maximum {truth}"
    assert upper >= truth - 1e-13 * size - 1e-300, f"the certificates' bound {upper} is below the maximum {truth}"
    assert upper <= truth + tol


@settings(max_examples=100, deadline=None)
@given(case=hard_cases(), log_lam=st.floats(-12, 12))
def test_the_dual_bound_holds_for_any_multiplier(xp, case, log_lam):
    """Weak duality: whatever lam (a wrong solver, a NaN, 0, inf), the bound is >= the maximum."""
    c, lo, hi, radius = case
    truth = brute_force_maximum(c, lo, hi, radius)
    size = float(numpy.sum(numpy.abs(c))) * radius
    arrays = [xp.asarray(a.reshape(1, -1)) for a in (c, lo, hi)]
    r = xp.asarray(numpy.array([radius]))
    for lam in (10.0 ** log_lam, 0.0, numpy.inf, numpy.nan):
        upper = float(to_host(C.ball_box_upper_bound(*arrays, r, xp.asarray(numpy.array([lam]))))[0])
        assert upper >= truth - 1e-13 * size - 1e-300, f"lam {lam}: bound {upper} below the maximum {truth}"


MULTIPLIERS = pytest.mark.parametrize("multiplier", [sorted_breakpoint_multiplier, C.ball_box_multiplier.plain],
                                      ids=["sorted breakpoints", "bisection"])


@MULTIPLIERS
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sphere_met_at_a_breakpoint(xp, dtype, multiplier):
    """c = (c0, 0) in the box +-R: the maximum is c0 R with the first coordinate at its face.
    The first solver returned 0 for about a quarter of such draws (rounding said the sphere
    was reached at the flat piece after the breakpoint, and took lam = 0 there)."""
    rng = numpy.random.default_rng(3)
    m = 400
    c0, radius = rng.uniform(0.1, 10, m), rng.uniform(0.1, 10, m)
    c = numpy.stack([c0, numpy.zeros(m)], axis=1).astype(dtype)
    box = numpy.repeat(radius[:, None], 2, axis=1).astype(dtype)
    r = radius.astype(dtype)
    value, _, _ = C.ball_box_support(xp.asarray(c), xp.asarray(-box), xp.asarray(box), xp.asarray(r), multiplier)
    expected = c[:, 0].astype(numpy.float64) * r.astype(numpy.float64)
    numpy.testing.assert_allclose(to_host(value), expected, rtol=1e-5 if dtype == "float32" else 1e-12)


@MULTIPLIERS
@pytest.mark.parametrize("dtype,ratio", [("float32", 1e4), ("float32", 1e6), ("float64", 1e7), ("float64", 1e9)])
def test_heavy_constant_coordinates_do_not_cancel(xp, dtype, ratio, multiplier):
    """Constant neurons (box [0, 0]) whose last-layer weights are `ratio` times the moving
    ones: the others' sum of c^2 (C_k) used to be total - prefix and cancelled to 0."""
    rng = numpy.random.default_rng(4)
    m, heavy, light = 50, 40, 3
    c = numpy.concatenate([rng.uniform(1, 2, (m, heavy)) * ratio, rng.normal(size=(m, light))], axis=1)
    lo = numpy.concatenate([numpy.zeros((m, heavy)), -numpy.ones((m, light))], axis=1)
    hi = -lo
    radius = numpy.full(m, 0.5)
    value, _, _ = C.ball_box_support(*(xp.asarray(a.astype(dtype)) for a in (c, lo, hi, radius)), multiplier)
    expected = 0.5 * numpy.linalg.norm(c[:, heavy:], axis=1)  # the moving part alone, inside its box
    numpy.testing.assert_allclose(to_host(value), expected, rtol=1e-4 if dtype == "float32" else 1e-10)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 6), inside=st.booleans())
def test_ball_box_maximum_is_a_primitive_with_the_envelope_gradient(seed, dim, inside):
    """`ball_box_maximum` is registered in PRIMITIVES (the gradient checker sees it); its
    value is the solver's, and its vector-Jacobian products match central finite
    differences of the solver's value in every argument, away from breakpoints."""
    import array_api_compat.numpy as xp

    from lipref.primitives import PRIMITIVES
    from lipref.tape import Var, grad
    assert PRIMITIVES["_ball_box_maximum"] is M.ball_box_maximum
    rng = numpy.random.default_rng(seed)
    c = rng.standard_normal((3, dim))
    lo, hi = -rng.uniform(0.1, 1.0, (3, dim)), rng.uniform(0.1, 1.0, (3, dim))
    radius = rng.uniform(2.0, 3.0, 3) * (3 * dim if inside else 0.2)
    args = [xp.asarray(a) for a in (c, lo, hi, radius)]
    value = M.ball_box_maximum(*args)
    assert numpy.array_equal(value, C.ball_box_support(*args)[0])
    vs = [Var(a) for a in args]
    seed_g = xp.asarray(rng.standard_normal(3))
    grads = grad(M.ball_box_maximum(*vs), vs, seed=seed_g)
    step = 1e-6
    for i, (a, g) in enumerate(zip(args, grads)):
        fd = numpy.zeros_like(a)
        for idx in numpy.ndindex(a.shape):
            up, down = [b.copy() for b in args], [b.copy() for b in args]
            up[i][idx] += step
            down[i][idx] -= step
            fd[idx] = numpy.sum(seed_g * (C.ball_box_support(*up)[0] - C.ball_box_support(*down)[0])) / (2 * step)
        numpy.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6, err_msg=f"argument {i}")
