"""Each sound allowance of bounds/rounding.py, and each norm bound, against exact (rational)
arithmetic where values underflow: subnormal weights and products, squares below the
smallest subnormal, products of norms that underflow to 0 (issue 25, items 1 and 2)."""
import math
from fractions import Fraction

import numpy
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from operators_support import SETTINGS, conv_matrix, conv_operator, masked_norms, masks

from lipref.backend import to_backend, to_host
from lipref.bounds import rounding as R
from lipref.bounds.certificates import conv_spectral_norm_certified, conv_spectral_norm_upper
from lipref.bounds.rounding import dense_spectral_norm_upper
from lipref.bounds.rules import affine_interval, row_norms, uniform_box_interval, weight_forms
from lipref.bounds.lanczos import lanczos_upper_bound
from lipref.bounds.certificate import gloro_radius
from lipref.layers import Conv2d, Linear

ETA = 2.0 ** -1074
EXPONENTS = (-1080, -1074, -1070, -1060, -1040, -1022, -1000, -600, 0, 400)


def _fractions(a):
    return [[Fraction(float(v)) for v in row] for row in numpy.asarray(a, dtype=numpy.float64).reshape(a.shape[0], -1)]


def _exact_norm_squared(v):
    return sum(Fraction(float(e)) ** 2 for e in numpy.ravel(v))


def _at_least_the_norm(bound, matrix, shift):
    """Is bound >= ||2^-shift M||_2 (to float64's ~1e-15 in the SVD)? Compared as 2^shift
    bound >= ||M||_2, an exact scaling, so that neither side underflows in the comparison."""
    return math.ldexp(float(bound), shift) >= float(scipy.linalg.svdvals(matrix)[0])


def test_above_below_and_products(xp):
    a = xp.asarray([0.0, 1.0, ETA, 2.0 ** -600, 3 * ETA], dtype=xp.float64)
    up, down = to_host(R.above(a)), to_host(R.below(a))
    assert up[0] == ETA and up[2] == 2 * ETA and numpy.all(up > to_host(a)) and numpy.all(down < to_host(a))
    # the exact products 0, 0, eta / 2, 2^-1200, 1.5 eta: rounded up, never to 0 unless a factor is 0
    p = to_host(R.product_upper(a, xp.asarray([5.0, 0.0, 0.5, 2.0 ** -600, 0.5], dtype=xp.float64)))
    assert p[0] == 0 and p[1] == 0 and p[2] == ETA and p[3] == ETA and p[4] == 3 * ETA
    assert to_host(R.product_upper(a, 1.5))[4] >= 4.5 * ETA


@settings(SETTINGS, max_examples=30)
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(1, 40), spread=st.integers(0, 600),
       top=st.sampled_from(EXPONENTS), zeros=st.booleans())
def test_norm_upper_is_an_upper_bound_at_every_scale(xp, seed, n, spread, top, zeros):
    """norm_upper >= the exact norm (compared squared, in rationals) and within 1e-12 of it,
    for entries spread over `spread` binades below 2^top (subnormals and zeros included)."""
    rng = numpy.random.default_rng(seed)
    x = numpy.ldexp(rng.uniform(-1, 1, (3, n)), top - rng.integers(0, spread + 1, (3, n)))
    if zeros:
        x[rng.uniform(size=x.shape) < 0.3] = 0.0
    found = to_host(R.norm_upper(to_backend(x, xp, xp.float64), axis=1))
    for row, bound in zip(x, found):
        exact = _exact_norm_squared(row)
        assert Fraction(float(bound)) ** 2 >= exact, (row, bound)
        # and tight: bound <= exact (1 + 1e-12) + 4 eta (subnormal results round by eta)
        assert Fraction(max(float(bound) - 4 * ETA, 0.0)) ** 2 <= exact * Fraction(1 + 1e-12) ** 2, (row, bound)
        assert exact > 0 or bound == 0


@settings(SETTINGS, max_examples=20)
@given(seed=st.integers(0, 2 ** 32 - 1), conv=st.booleans(), top=st.sampled_from(EXPONENTS[1:-1]))
def test_row_norms_of_tiny_weights(xp, seed, conv, top):
    """The row norms of weights whose squares underflow: the plain ones within 1e-12 of the
    exact norms (they were 0), sound mode's never below them, also under masks that leave
    out each row's largest weight."""
    rng = numpy.random.default_rng(seed)
    layer = Conv2d((2, 4, 4), 3, 3, 1, 1) if conv else Linear(6, 4)
    shape = (3, 2, 3, 3) if conv else (4, 6)
    w = numpy.ldexp(rng.uniform(-1, 1, shape), top)
    forms = weight_forms(to_backend(w, xp, xp.float64))
    mask = numpy.ones((1,) + layer.in_shape)
    plain = to_host(row_norms(layer, forms, None))
    upper = to_host(R.row_norms_upper(layer, forms, to_backend(mask, xp, xp.float64)))
    cut = (rng.uniform(size=(2,) + layer.in_shape) < 0.5).astype(numpy.float64)
    cut_upper = to_host(R.row_norms_upper(layer, forms, to_backend(cut, xp, xp.float64)))
    # the exact norms over the inputs each output reads: conv2d of the mask with w^2, in rationals
    for masks_, found in ((mask, upper), (cut, cut_upper)):
        for s in range(masks_.shape[0]):
            for out, bound in zip(_exact_row_norms_squared(layer, w, masks_[s]), numpy.ravel(found[s])):
                assert Fraction(float(bound)) ** 2 >= out
    exact_full = numpy.sqrt(numpy.array([float(v) for v in _exact_row_norms_squared(layer, numpy.ldexp(w, -top),
                                                                                     mask[0])]))
    numpy.testing.assert_allclose(numpy.ravel(plain), numpy.ldexp(exact_full, top), rtol=1e-12, atol=0)


def _exact_row_norms_squared(layer, w, mask):
    """Per output (flattened), sum of w^2 over the inputs it reads with mask 1 (rationals)."""
    if isinstance(layer, Linear):
        return [sum(Fraction(float(wi)) ** 2 * int(m) for wi, m in zip(row, mask)) for row in w]
    # conv: output (o, i, j) reads weight (o, c, a, b) at input (c, i s - p + a, j s - p + b)
    out = []
    o_n, c_n, kh, kw = w.shape
    _, h, wd = layer.in_shape
    oh, ow = layer.out_shape[1:]
    for o in range(o_n):
        for i in range(oh):
            for j in range(ow):
                total = Fraction(0)
                for c in range(c_n):
                    for a in range(kh):
                        for b in range(kw):
                            r, q = i * layer.stride - layer.padding + a, j * layer.stride - layer.padding + b
                            if 0 <= r < h and 0 <= q < wd and mask[c, r, q]:
                                total += Fraction(float(w[o, c, a, b])) ** 2
                out.append(total)
    return out


@settings(SETTINGS, max_examples=40)
@given(seed=st.integers(0, 2 ** 32 - 1), w_exp=st.sampled_from(EXPONENTS[:-1]), x_exp=st.sampled_from([-60, 0, 40]),
       eps_exp=st.sampled_from([-1074, -30, 0]))
def test_affine_slack_and_forward_error_cover_underflow(xp, seed, w_exp, x_exp, eps_exp):
    """The interval of an affine layer (both of the walk's forms) and its output z = fl(W h +
    b) at a point of the box are within the slack / the forward error of the exact values
    (rationals), with weights, products and box widths down in the subnormal range."""
    rng = numpy.random.default_rng(seed)
    layer = Linear(5, 3)
    w = numpy.ldexp(rng.uniform(-1, 1, (3, 5)), w_exp - rng.integers(0, 4, (3, 5)))
    b = numpy.ldexp(rng.uniform(-1, 1, 3), w_exp + x_exp)
    x = numpy.ldexp(rng.uniform(-1, 1, (2, 5)), x_exp)
    eps = math.ldexp(rng.uniform(0.5, 1), eps_exp)
    params = {"weight": to_backend(w, xp, xp.float64), "bias": to_backend(b, xp, xp.float64)}
    forms = weight_forms(params["weight"])
    lower, upper = x - eps, x + eps
    lo_b, up_b = (to_backend(v, xp, xp.float64) for v in (lower, upper))
    slack = to_host(R.affine_rounding_slack(layer, params["weight"], params["bias"], lo_b, up_b))
    z = layer.affine(to_backend(x, xp, xp.float64), params["weight"], params["bias"])
    computed = [affine_interval(layer, forms, params["bias"], lo_b, up_b),
                uniform_box_interval(layer, forms, z, eps, xp.zeros((2,), dtype=xp.float64) + 1e300,
                                     xp.zeros((1, 3), dtype=xp.float64) + 1e300)]
    error = to_host(R.affine_forward_error(layer, params["weight"], xp.zeros((2, 5), dtype=xp.float64),
                                           to_backend(slack, xp, xp.float64)))
    wf, bf = _fractions(w), [Fraction(float(v)) for v in b]
    for s in range(2):
        lo_f, up_f = [Fraction(float(v)) for v in lower[s]], [Fraction(float(v)) for v in upper[s]]
        for k in range(3):
            mid = sum(wf[k][i] * (lo_f[i] + up_f[i]) / 2 for i in range(5)) + bf[k]
            rad = sum(abs(wf[k][i]) * (up_f[i] - lo_f[i]) / 2 for i in range(5))
            allowed = Fraction(float(slack[s, k]))
            for lo_c, up_c in computed:
                assert abs(Fraction(float(to_host(lo_c)[s, k])) - (mid - rad)) <= allowed, (s, k)
                assert abs(Fraction(float(to_host(up_c)[s, k])) - (mid + rad)) <= allowed, (s, k)
            exact_z = sum(wf[k][i] * Fraction(float(x[s, i])) for i in range(5)) + bf[k]
            assert abs(Fraction(float(to_host(z)[s, k])) - exact_z) <= Fraction(float(error[s, k])), (s, k)


def test_dense_norm_bound_of_subnormal_matrices(xp):
    """[[eta, eta]] has norm sqrt(2) eta: the bound was eta (the last product rounded down)."""
    rng = numpy.random.default_rng(0)
    cases = [numpy.array([[ETA, ETA]]), numpy.array([[3 * ETA, 0.0], [ETA, 2 * ETA]])]
    cases += [numpy.ldexp(rng.uniform(-1, 1, (4, 3)), e) for e in (-1074 + 10, -1060, -1030, -600)]
    for m in cases:
        bound = float(to_host(dense_spectral_norm_upper(to_backend(m[None], xp, xp.float64)))[0])
        shift = -math.frexp(float(numpy.max(numpy.abs(m))))[1]
        assert _at_least_the_norm(bound, numpy.ldexp(m, shift), shift), (m, bound)


@settings(SETTINGS, max_examples=10)
@given(seed=st.integers(0, 2 ** 32 - 1), top=st.sampled_from([-1060, -900, -600, -170]))
def test_conv_norm_bounds_of_tiny_weights(xp, seed, top):
    """Sound mode's conv norms with weights whose Gram entries underflow: the masked Lanczos
    bound (it was 0: A^T A v underflowed), the polyphase circulant bound and the Gram
    certificate are never below the exact norms."""
    rng = numpy.random.default_rng(seed)
    weight = numpy.ldexp(rng.uniform(-1, 1, (2, 2, 3, 3)), top)
    matrix, out_shape = conv_matrix(numpy.ldexp(weight, -top), (2, 5, 5), 1, 1)  # exact: a power of two
    m_in, m_out = masks(rng, (3, 2, 5, 5), 0.7), masks(rng, (3,) + tuple(out_shape), 0.7)
    exact = masked_norms(matrix, m_in, m_out)  # of the weight times 2^-top: compared scaled by it
    apply, apply_adjoint = conv_operator(xp, weight, m_in, m_out, 1, 1)
    v0 = to_backend(rng.standard_normal((3, 2, 5, 5)), xp, xp.float64)
    upper, _, _ = lanczos_upper_bound(apply, apply_adjoint, v0, 30, 1e-9)
    assert numpy.all(numpy.ldexp(to_host(upper), -top) >= exact), (to_host(upper), exact)
    w = to_backend(weight, xp, xp.float64)
    for bound in (conv_spectral_norm_upper(w, (5, 5), 1, 1), conv_spectral_norm_certified(w, (5, 5), 1, 1, rng)):
        assert _at_least_the_norm(float(to_host(bound)), matrix, -top), float(to_host(bound))


def test_gloro_radius_is_never_nan(xp):
    """Zero, tiny and huge class differences and Lipschitz bounds; sound mode with an
    infinite forward-error norm. A zero difference (a class the penultimate layer cannot
    move) or a zero Lipschitz bound gives +inf where the margin is positive."""
    def radius(weight, logits, lipschitz, slack=None, forward=None):
        arrays = [to_backend(numpy.asarray(a, dtype=numpy.float64), xp, xp.float64) for a in (weight, logits)]
        onehot = to_backend(numpy.array([[1.0, 0.0]]), xp, xp.float64)
        lip = to_backend(numpy.array([lipschitz]), xp, xp.float64)
        extra = [None if v is None else to_backend(numpy.array([v]), xp, xp.float64) for v in (slack, forward)]
        return float(to_host(gloro_radius(arrays[1], arrays[0], onehot, lip, *extra))[0])
    assert radius([[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0]], 1.0) == math.inf  # w_1 = w_0
    assert radius([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0]], 0.0) == math.inf  # a constant network
    assert radius([[1e-170, 0.0], [0.0, 1e-170]], [[1.0, 0.0]], 1.0) <= 1 / (math.sqrt(2) * 1e-170)
    assert 0 < radius([[1e-170, 0.0], [0.0, 1e-170]], [[1.0, 0.0]], 1e-170) < math.inf  # the product underflows
    assert radius([[1e160, 0.0], [0.0, 1e160]], [[1.0, 0.0]], 1e160) == 0  # the product overflows
    assert radius([[1e160, 0.0], [0.0, 1e160]], [[1.0, 0.0]], 1.0, 1e300, 1e10) == 0
    assert radius([[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0]], 1.0, 0.0, math.inf) == math.inf
    assert radius([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0]], 1.0, 0.0, math.inf) == 0
