"""Sound upper bounds (bounds/certificates.py) checked against scipy's exact singular values:
never below the exact norm, and close to it."""
import math

import numpy
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from networks import drawn_inputs, materialise, small_model
from operators_support import SETTINGS, conv_matrix
from support import assert_backend_close, to_numpy

from lipref.backend import to_host
from lipref.bounds import certificates as C
from lipref.bounds import rounding as R
from lipref.bounds import BoundOptions, GlobalNorms, network_bounds
from lipref.layers import Conv2d
from lipref.primitives import conv2d, conv2d_transpose


@settings(SETTINGS, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 16), n=st.integers(1, 16), batch=st.integers(1, 4),
       rank=st.integers(0, 16), scale=st.sampled_from([1e-3, 1.0, 1e4]))
def test_dense_spectral_norm_upper(xp, seed, m, n, batch, rank, scale):
    rng = numpy.random.default_rng(seed)
    r = min(rank, m, n)
    mats = scale * rng.standard_normal((batch, m, r)) @ rng.standard_normal((batch, r, n))  # rank <= r
    exact = numpy.array([scipy.linalg.svdvals(a)[0] if r else 0.0 for a in mats])
    upper = R.dense_spectral_norm_upper(xp.asarray(mats))
    up = to_numpy(upper)
    assert numpy.all(up >= exact), f"{up} below {exact}"
    assert_backend_close(upper, exact, xp, rtol=1e-10, atol=0, what="dense bound tight")


@settings(SETTINGS, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2),
       c=st.integers(1, 4), o=st.integers(1, 4), h=st.integers(3, 8), w=st.integers(3, 8))
def test_conv_spectral_norm_upper(xp, seed, k, stride, padding, c, o, h, w):
    if k > h + 2 * padding or k > w + 2 * padding:
        k = min(h, w) + 2 * padding  # keep the draw: the largest kernel that fits
    rng = numpy.random.default_rng(seed)
    weight = rng.standard_normal((o, c, k, k))
    matrix, _ = conv_matrix(weight, (c, h, w), stride, padding)
    exact = scipy.linalg.svdvals(matrix)[0]
    bound = C.conv_spectral_norm_upper(xp.asarray(weight), (h, w), stride, padding)
    assert bound.ndim == 0 and bound.dtype == xp.float64
    b = float(to_numpy(bound))
    assert b >= exact, f"conv bound {b} below the exact norm {exact}"
    if stride == 1:  # the circular embedding costs at most a modest factor on small inputs
        assert b <= 2.5 * exact, f"conv bound {b} loose vs {exact}"


def circular_strided_matrix(weight, grid_hw, stride):
    """The stride-s circular cross-correlation on an Nh x Nw grid as a dense host matrix:
    out[o, i, j] = sum_{c, a, b} w[o, c, a, b] x[c, (s i + a) mod Nh, (s j + b) mod Nw]."""
    o, c, kh, kw = weight.shape
    nh, nw = grid_hw
    n = c * nh * nw
    basis = numpy.eye(n).reshape(n, c, nh, nw)
    out = 0
    for a in range(kh):
        for b in range(kw):
            shifted = numpy.roll(basis, (-a, -b), axis=(2, 3))[:, :, ::stride, ::stride]
            out = out + numpy.einsum("oc,nchw->nohw", weight[:, :, a, b], shifted)
    return out.reshape(n, -1).T


@settings(SETTINGS, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), stride=st.integers(1, 3), c=st.integers(1, 3),
       o=st.integers(1, 3), mh=st.integers(1, 4), mw=st.integers(1, 4))
def test_polyphase_circulant_is_exact(xp, seed, k, stride, c, o, mh, mw):
    """A stride-s circular convolution on an (s Mh) x (s Mw) grid has exactly the norm of the
    stride-1 circular convolution of its polyphase kernel on the Mh x Mw grid (kernels larger
    than the grid included: their taps wrap)."""
    rng = numpy.random.default_rng(seed)
    weight = rng.standard_normal((o, c, k, k))
    exact = scipy.linalg.svdvals(circular_strided_matrix(weight, (stride * mh, stride * mw), stride))[0]
    phases = C.polyphase_kernel(xp.asarray(weight), stride)
    assert tuple(phases.shape) == (o, c * stride * stride, -(-k // stride), -(-k // stride))
    bound = float(to_numpy(C.circulant_norm_upper(phases, (mh, mw))))
    assert exact <= bound <= exact * (1 + 1e-10), (bound, exact)


@settings(SETTINGS, max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([3, 4]), stride=st.sampled_from([1, 2]),
       padding=st.sampled_from([0, 1]), c=st.integers(1, 4), o=st.integers(1, 4), h=st.integers(4, 9),
       w=st.integers(4, 9))
def test_conv_bound_never_below_exact_nor_above_plain_circulant(xp, seed, k, stride, padding, c, o, h, w):
    """The polyphase bound is >= the exact norm of the zero-padded strided conv, and never
    above the plain stride-1 circulant bound on the (H + 2p) x (W + 2p) grid (the bound before
    the polyphase form). (No tightness factor here: with a kernel as large as the input a
    layer has a single output, and any circulant bound can be up to sqrt(kh kw) above it.)"""
    rng = numpy.random.default_rng(seed)
    weight = rng.standard_normal((o, c, k, k))
    matrix, _ = conv_matrix(weight, (c, h, w), stride, padding)
    exact = scipy.linalg.svdvals(matrix)[0]
    new = float(to_numpy(C.conv_spectral_norm_upper(xp.asarray(weight), (h, w), stride, padding)))
    old = float(to_numpy(C.circulant_norm_upper(xp.asarray(weight), (h + 2 * padding, w + 2 * padding))))
    assert new >= exact, f"bound {new} below the exact norm {exact}"
    assert new <= old * (1 + 1e-9), f"bound {new} above the plain circulant bound {old}"


def test_conv_bound_grids_are_valid():
    """The grids satisfy the conditions the proof needs: multiples of s, N >= H + p, N >= s OH."""
    for h, k, s, p in ((28, 4, 2, 1), (14, 3, 1, 1), (5, 4, 3, 2), (7, 1, 3, 0), (9, 4, 2, 0)):
        oh = (h + 2 * p - k) // s + 1
        grids = C.circular_grids((h, h + 1), (k, k), s, p)
        assert grids == sorted(grids) and len(grids) >= 4
        for nh, nw in grids:
            assert nh % s == 0 and nw % s == 0
            assert nh >= max(h + p, s * oh) and nw >= h + 1 + p


def test_conv_bound_tight_on_4c3f_shapes(xp):
    """The strided layers of 4c3f (4x4 kernel, stride 2, padding 1): the old stride-1
    circulant bound was about 2x the exact norm; the polyphase one is within 3%."""
    rng = numpy.random.default_rng(8)
    weight = rng.standard_normal((4, 3, 4, 4))
    matrix, _ = conv_matrix(weight, (3, 12, 12), 2, 1)
    exact = scipy.linalg.svdvals(matrix)[0]
    b = float(to_numpy(C.conv_spectral_norm_upper(xp.asarray(weight), (12, 12), 2, 1)))
    assert exact <= b <= 1.03 * exact, b / exact


def test_conv_spectral_norm_upper_tight_on_larger_inputs(xp):
    rng = numpy.random.default_rng(2)
    weight = rng.standard_normal((4, 3, 3, 3))
    matrix, _ = conv_matrix(weight, (3, 10, 10), 1, 1)
    exact = scipy.linalg.svdvals(matrix)[0]
    b = float(to_numpy(C.conv_spectral_norm_upper(xp.asarray(weight), (10, 10), 1, 1)))
    assert exact <= b <= 1.25 * exact


def test_conv_circular_case_is_exact(xp):
    """A 1x1 kernel: conv2d is W applied at every pixel, norm ||W||_2 exactly, and the
    bound is the dense bound of W up to its rounding margin."""
    rng = numpy.random.default_rng(4)
    weight = rng.standard_normal((5, 3, 1, 1))
    exact = scipy.linalg.svdvals(weight[:, :, 0, 0])[0]
    bound = C.conv_spectral_norm_upper(xp.asarray(weight), (4, 6), 1, 0)
    assert float(to_numpy(bound)) >= exact
    assert_backend_close(bound, exact, xp, rtol=1e-12, atol=0, what="1x1 conv")


@settings(SETTINGS, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 14), n=st.integers(1, 14), rank=st.integers(0, 14),
       log_scale=st.integers(-30, 30))
def test_gram_cholesky_upper_dense(xp, seed, m, n, rank, log_scale):
    """On drawn dense matrices (rank-deficient and zero ones, tiny and huge scales): never
    below the exact norm, and above it by at most the margin the certificate promises."""
    rng = numpy.random.default_rng(seed)
    rank = min(rank, m, n)
    matrix = (rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))) * 2.0 ** log_scale
    w = xp.asarray(matrix)

    def apply(v):
        return xp.matmul(v, w.T)

    def apply_adjoint(u):
        return xp.matmul(u, w)
    abs_upper = R.dense_spectral_norm_upper(xp.abs(w)[None, ...])[0]
    upper, estimate = C.gram_cholesky_upper(apply, apply_adjoint, (n,), (m,), max(m, n), abs_upper, rng)
    exact = scipy.linalg.svdvals(matrix)[0] if rank else 0.0
    b = float(to_numpy(upper))
    assert upper.ndim == 0 and upper.dtype == xp.float64
    assert b >= exact, f"certificate {b} below the exact norm {exact}"
    assert b <= exact * (1 + 1e-6) + 1e-150, (b, exact)  # a zero matrix: sqrt(smallest normal)
    assert float(to_numpy(estimate)) <= exact * (1 + 1e-12) + 1e-300


@settings(SETTINGS, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2),
       c=st.integers(1, 3), o=st.integers(1, 3), h=st.integers(3, 8), w=st.integers(3, 8))
def test_conv_spectral_norm_certified(xp, seed, k, stride, padding, c, o, h, w):
    """The certified conv norm is >= the exact norm of the materialised operator, within
    1e-6 of it (the polyphase bound is up to a few percent above it here), and never above
    the polyphase bound; with max_dim below the layer's size it is the polyphase bound."""
    k = min(k, h + 2 * padding, w + 2 * padding)
    rng = numpy.random.default_rng(seed)
    weight = rng.standard_normal((o, c, k, k))
    matrix, _ = conv_matrix(weight, (c, h, w), stride, padding)
    exact = scipy.linalg.svdvals(matrix)[0]
    wx = xp.asarray(weight)
    cert = C.conv_spectral_norm_certified(wx, (h, w), stride, padding, rng)
    poly = float(to_numpy(C.conv_spectral_norm_upper(wx, (h, w), stride, padding)))
    b = float(to_numpy(cert))
    assert exact <= b <= exact * (1 + 1e-6), (b, exact)
    assert b <= poly
    fallback = C.conv_spectral_norm_certified(wx, (h, w), stride, padding, rng, max_dim=min(matrix.shape) - 1)
    assert float(to_numpy(fallback)) == poly


def test_gram_cholesky_refuses_a_margin_below_the_norm(xp):
    """A shift below lambda_max leaves mu I - B indefinite by far more than rounding, so
    Cholesky must break down and no certificate is given (+inf), whatever the estimate."""
    rng = numpy.random.default_rng(3)
    weight = rng.standard_normal((3, 2, 3, 3))
    wx = xp.asarray(weight)

    def apply(v):
        return conv2d(v, wx, None, 1, 1)

    def apply_adjoint(y):
        return conv2d_transpose(y, wx, 1, 1, (6, 6))
    abs_upper = C.conv_spectral_norm_upper(xp.abs(wx), (6, 6), 1, 1)
    for margins in ((-1e-3,), (-0.5, -1e-2)):
        upper, estimate = C.gram_cholesky_upper(apply, apply_adjoint, (2, 6, 6), (3, 6, 6), 27, abs_upper, rng,
                                                margins=margins)
        assert math.isinf(float(to_numpy(upper)))
        assert float(to_numpy(estimate)) > 0
    upper, _ = C.gram_cholesky_upper(apply, apply_adjoint, (2, 6, 6), (3, 6, 6), 27, abs_upper, rng,
                                     margins=(-1e-3, 1e-6))  # the second margin certifies
    matrix, _ = conv_matrix(weight, (2, 6, 6), 1, 1)
    exact = scipy.linalg.svdvals(matrix)[0]
    assert exact <= float(to_numpy(upper)) <= exact * (1 + 1e-6)


def test_cholesky_or_none_reports_breakdown_on_every_backend(xp):
    """The certificate's proof step: a positive definite matrix gives its factor, an
    indefinite or singular one gives None -- never an unchecked partial factor."""
    from lipref.backend import cholesky_or_none
    good = numpy.array([[4.0, 1.0], [1.0, 3.0]])
    factor = cholesky_or_none(xp, xp.asarray(good))
    assert factor is not None
    assert_backend_close(xp.matmul(factor, xp.matrix_transpose(factor)), good, xp, rtol=1e-14, atol=0,
                         what="L L^T")
    for bad in ([[1.0, 2.0], [2.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]], [[-1.0, 0.0], [0.0, 5.0]]):
        assert cholesky_or_none(xp, xp.asarray(numpy.array(bad))) is None, bad


def test_sound_global_norms_are_certified_and_reused(xp):
    """sound_global_norms: per affine layer >= the exact norm of the materialised operator
    (scipy) and within 1e-6 of it (conv layers by the Cholesky certificate, dense by SVD);
    network_bounds given them uses them, and computes the same ones itself from the same rng."""
    import scipy.linalg

    from lipref.bounds import sound_global_norms
    model, rng = small_model("relu", True, xp, 4)
    norms = sound_global_norms(model, numpy.random.default_rng(0))
    affine = [layer for layer in model.layers[:-1] if layer.is_affine]
    assert len(norms) == len(affine)
    for layer, bound in zip(affine, norms):
        w = to_host(layer.params["weight"].value)
        if isinstance(layer, Conv2d):
            matrix = materialise(layer, w, numpy.ones(layer.out_shape), numpy.ones(layer.in_shape))
        else:
            matrix = w
        exact = scipy.linalg.svdvals(matrix)[0]
        assert exact <= float(to_host(bound)) <= exact * (1 + 1e-6), (type(layer).__name__, float(to_host(bound)), exact)
    x = xp.asarray(drawn_inputs(model, rng, 3))
    given_norms = network_bounds(model, x, 0.3, BoundOptions("local", "sound", 20), norms=GlobalNorms(tuple(norms)), rng=numpy.random.default_rng(1))
    computed = network_bounds(model, x, 0.3, BoundOptions("local", "sound", 20), rng=numpy.random.default_rng(0))
    for a, b in zip(given_norms.global_norms, computed.global_norms):  # the same certificate, given or not
        assert_backend_close(a, float(to_host(b)), xp, rtol=1e-12, atol=0, what="global norm")
    assert numpy.all(to_host(given_norms.lipschitz) <= float(to_host(given_norms.global_lipschitz)) * (1 + 1e-12))
