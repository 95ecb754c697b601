"""Winograd's kernels (kernels/winograd.py) against the plain conv2d, conv2d_transpose and
weight gradient (lipref/primitives/linear.py in float64, inside reference_only()).

Winograd's rounding is not the plain definition's (its transforms cancel terms), so the
tolerance is the bound the module docstring derives, computed per entry: gamma_(n)(2^-24)
times the algorithm run in float64 on |x|, |W| (or |g|) with the absolute values of its
transform matrices (`winograd.ABSOLUTE`), plus 5 n eta for products that underflow, with
n = K + 10 for the forward and the input gradient (K channels summed) and n = rows + 10
for the weight gradient (rows: tiles times samples). The bound is checked to be the
deciding one: a wrong transform entry breaks it (test_a_wrong_transform_breaks_the_bound).

Also here: the registry tries Winograd first where it applies and never elsewhere (float64,
first layers, strided layers with padding >= stride); a sound certificate (float64) never
runs it, a fast float32 one does; overflowing blocks fall back to the plain infinities.
"""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import assert_backend_close

from lipref import primitives as P
from lipref.kernels import conv as K
from lipref.kernels import conv_blocks as KB
from lipref.kernels import applying_kernel, enabled, reference_only
from lipref.kernels import winograd as W
from lipref.primitives.linear import _conv2d_weight_grad as plain_weight_grad
from lipref.shapes import conv_output_hw

U32 = 2.0 ** -24
ETA32 = float(numpy.finfo(numpy.float32).smallest_subnormal)
# (taps r, stride s): 3x3 stride 1, 2x2 stride 1, 4x4 stride 2, 6x6 and 9x9 stride 3
GEOMETRIES = [(3, 1), (2, 1), (2, 2), (2, 3), (3, 3)]
# float32 scales: products from subnormal (1e-40) to 1e34, none overflowing; weights normal
SCALES = st.sampled_from([(1e-21, 1e-19), (1.0, 1.0), (3e16, 3e17)])


def gamma(n):
    return n * U32 / (1 - n * U32)


def _plain(fn, *args):
    with reference_only():
        return fn(*args)


def _draw(rng, shape, scale, zeros):
    a = rng.standard_normal(shape) * scale
    return numpy.where(rng.random(shape) < zeros, 0.0, a).astype(numpy.float32)


def _case(seed, r, s, padding, extra, n, c, o, scales, zeros):
    rng = numpy.random.default_rng(seed)
    k = r * s
    padding = padding if s == 1 else padding % s
    h, w = max(1, k - 2 * padding) + extra[0], max(1, k - 2 * padding) + extra[1]
    oh, ow = conv_output_hw(h, w, k, k, s, padding)
    x, g = _draw(rng, (n, c, h, w), scales[0], zeros), _draw(rng, (n, o, oh, ow), 1.0, zeros)
    wt = _draw(rng, (o, c, k, k), scales[1], zeros)
    return x, wt, g, k, s, padding


def _within_bound(got, exact, magnitude, n_terms, what):
    """|got - exact| <= gamma_n * magnitude + 5 n eta, entry by entry."""
    got, exact, magnitude = (numpy.asarray(a, dtype=numpy.float64) for a in (got, exact, magnitude))
    bound = gamma(n_terms) * magnitude + 5 * n_terms * ETA32
    excess = numpy.abs(got - exact) - bound
    worst = numpy.unravel_index(numpy.argmax(excess), excess.shape)
    assert numpy.all(excess <= 0), (f"{what}: |error| {abs(got - exact)[worst]:.3e} > bound {bound[worst]:.3e} "
                                    f"at {worst}")


def _check_bounds(seed, r, s, padding, extra, n, c, o, scales, zeros):
    x, wt, g, k, s, padding = _case(seed, r, s, padding, extra, n, c, o, scales, zeros)
    x64, w64, g64 = (a.astype(numpy.float64) for a in (x, wt, g))
    ax, aw, ag = numpy.abs(x64), numpy.abs(w64), numpy.abs(g64)
    alg = W.ABSOLUTE[r]
    h, w = x.shape[2:]
    kk = s * s * c
    _within_bound(W.conv2d(x, wt, None, s, padding), _plain(P.conv2d, x64, w64, None, s, padding),
                  W.conv2d(ax, aw, None, s, padding, alg), kk + 10, "forward")
    tiles = W.tiles_hw(g.shape[2:])
    _within_bound(W.conv2d_weight_grad(g, x, wt.shape, s, padding),
                  _plain(plain_weight_grad, g64, x64, wt.shape, s, padding),
                  W.conv2d_weight_grad(ag, ax, wt.shape, s, padding, alg), n * tiles[0] * tiles[1] + 10,
                  "weight gradient")
    if s == 1 and padding <= r - 1:
        _within_bound(W.conv2d_input_grad(g, wt, s, padding, (h, w)),
                      _plain(P.conv2d_transpose, g64, w64, s, padding, (h, w)),
                      W.conv2d_input_grad(ag, aw, s, padding, (h, w), alg), o + 10, "input gradient")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), geometry=st.sampled_from(GEOMETRIES), padding=st.integers(0, 3),
       extra=st.tuples(st.integers(0, 6), st.integers(0, 6)), n=st.integers(1, 3), c=st.sampled_from([1, 3, 8]),
       o=st.sampled_from([1, 2, 9]), scales=SCALES, zeros=st.sampled_from([0.0, 0.5, 1.0]),
       block=st.sampled_from([1, 10 ** 9]))
def test_winograd_is_within_its_rounding_bound_of_the_plain_definition(
        seed, geometry, padding, extra, n, c, o, scales, zeros, block):
    """Forward, input gradient and weight gradient on drawn shapes (odd sizes, padding 0-3,
    batch 1-3, exact zeros, tiny to huge scales, blocks of one sample or one block)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(W, "WINOGRAD_BLOCK", block)
        _check_bounds(seed, *geometry, padding, extra, n, c, o, scales, zeros)


@pytest.mark.parametrize("case", [
    (3, 1, 1, (32, 32), 2, 32, 64),  # a 4c3f / 6c2f 3x3 layer at CIFAR's size
    (2, 2, 1, (28, 28), 2, 32, 32),  # 4c3f's 4x4 stride-2 layer on MNIST
    (2, 2, 0, (15, 15), 2, 16, 24),  # 8c2f's unpadded stride-2 layers, at an odd size
    (3, 1, 0, (5, 4), 1, 8, 8),  # one sample, padding 0, odd output sizes
])
def test_winograd_bound_on_the_paper_layers(case):
    r, s, padding, (h, w), n, c, o = case
    rng = numpy.random.default_rng(sum(case[:3]))
    _check_bounds(int(rng.integers(2**32)), r, s, padding, (h - max(1, r * s - 2 * padding),
                                                            w - max(1, r * s - 2 * padding)),
                  n, c, o, (1.0, 1.0), 0.0)


def test_a_wrong_transform_or_a_small_slip_breaks_the_bound():
    """The tolerance decides: the check fails for an algorithm with one entry of B^T
    changed, and for a result off by 2^-12 of itself in one entry (about 200 times
    float32's rounding unit)."""
    alg = W.ALGORITHMS[3]
    bt = [list(row) for row in alg.bt]
    bt[1][3] = 1  # B^T's second row (0, 1, 1, 0) reads one more pixel
    broken = alg._replace(bt=tuple(tuple(row) for row in bt))
    rng = numpy.random.default_rng(0)
    x, wt = rng.standard_normal((2, 8, 6, 6)).astype(numpy.float32), rng.standard_normal((8, 8, 3, 3)).astype(
        numpy.float32)
    x64, w64 = x.astype(numpy.float64), wt.astype(numpy.float64)
    exact = _plain(P.conv2d, x64, w64, None, 1, 1)
    magnitude = W.conv2d(numpy.abs(x64), numpy.abs(w64), None, 1, 1, W.ABSOLUTE[3])
    got = W.conv2d(x, wt, None, 1, 1)
    _within_bound(got, exact, magnitude, 8 + 10, "forward")
    with pytest.raises(AssertionError, match="forward"):
        _within_bound(W.conv2d(x, wt, None, 1, 1, broken), exact, magnitude, 8 + 10, "forward")
    slipped = numpy.array(got)
    slipped[1, 2, 3, 4] *= numpy.float32(1 + 2 ** -12)
    with pytest.raises(AssertionError, match="forward"):
        _within_bound(slipped, exact, magnitude, 8 + 10, "forward")


def test_the_plain_dot_product_bound_does_not_hold_for_winograd():
    """Why the kernels are kept out of sound mode: output column 2 of a tile's first column
    reads padded columns 2-4 with weights g0, g1, g2; with g2 = 0 its plain bound
    gamma_n |W||x| leaves out column 4, but Winograd's transformed terms carry it (U0 + U1
    + U2 = g2 only in exact arithmetic). A large column there: the direct form stays within
    the plain bound, Winograd does not."""
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal((1, 8, 6, 6)).astype(numpy.float32)
    x[:, :, :, 3] = 1e6  # padded column 4 = 2b + 2 for the tile b = 1
    wt = rng.standard_normal((8, 8, 3, 3)).astype(numpy.float32)
    wt[:, :, :, 2] = 0
    exact = _plain(P.conv2d, x.astype(numpy.float64), wt.astype(numpy.float64), None, 1, 1)
    plain_bound = gamma(8 * 9) * _plain(P.conv2d, numpy.abs(x).astype(numpy.float64),
                                        numpy.abs(wt).astype(numpy.float64), None, 1, 1)
    direct = K.conv2d(x, wt, None, 1, 1, "im2col")
    assert numpy.all(numpy.abs(direct - exact) <= plain_bound)
    beyond = numpy.abs(W.conv2d(x, wt, None, 1, 1) - exact) > plain_bound
    assert numpy.any(beyond[..., 2])


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_overflowing_blocks_take_the_plain_infinities():
    """Products that overflow make +inf in the plain definition (every term positive), but
    inf - inf = NaN in Winograd's transformed sums (at the borders, where V = d0 - d2 < 0):
    such blocks are recomputed by the direct form, and the result is the plain one."""
    x = numpy.full((2, 8, 6, 6), 3e19, dtype=numpy.float32)
    wt = numpy.full((8, 8, 3, 3), 3e19, dtype=numpy.float32)
    alg = W.ALGORITHMS[3]
    raw = numpy.empty((2, 6, 6, 8), dtype=numpy.float32)
    with numpy.errstate(over="ignore", invalid="ignore"):
        W._forward_block_into(numpy.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                              W.transformed_weights(W.grid_weight(wt, 1), alg), 1, 1, alg, raw)
        got = W.conv2d(x, wt, None, 1, 1)
        expected = _plain(P.conv2d, x, wt, None, 1, 1)
    assert numpy.any(numpy.isnan(raw)), "the case no longer overflows inside the transforms"
    assert numpy.all(numpy.isposinf(expected))
    numpy.testing.assert_array_equal(got, expected)


def _args(dtype, c, o, k, s, p, hw=(12, 12)):
    x = numpy.ones((2, c) + hw, dtype=dtype)
    wt = numpy.ones((o, c, k, k), dtype=dtype)
    g = numpy.ones((2, o) + conv_output_hw(hw[0], hw[1], k, k, s, p), dtype=dtype)
    return x, wt, g


@pytest.mark.parametrize("dtype, c, o, k, s, p, runs", [
    (numpy.float32, 32, 64, 3, 1, 1, (True, True, True)),  # 3x3 stride 1: all three
    (numpy.float32, 32, 32, 4, 2, 1, (True, False, True)),  # 4x4 stride 2: not the input gradient
    (numpy.float32, 32, 32, 4, 2, 2, (False, False, False)),  # padding >= stride
    (numpy.float64, 32, 64, 3, 1, 1, (False, False, False)),  # float64: sound mode's dtype
    (numpy.float32, 3, 32, 3, 1, 1, (False, False, False)),  # a first layer
    (numpy.float32, 32, 32, 5, 1, 1, (False, False, False)),  # a 5x5 kernel
])
def test_the_registry_tries_winograd_first_where_it_applies(dtype, c, o, k, s, p, runs):
    if not enabled():
        pytest.skip("kernels are off (LIPREF_REFERENCE): nothing is picked")
    x, wt, g = _args(dtype, c, o, k, s, p)
    picked = (applying_kernel("conv2d", x, wt, None, s, p), applying_kernel("conv2d_transpose", g, wt, s, p, x.shape[2:]),
              applying_kernel("conv2d_weight_grad", g, x, wt.shape, s, p))
    assert tuple(f.__module__ == W.__name__ for f in picked) == runs
    assert all(f is not None for f in picked)  # conv.py / conv_grads.py otherwise


def test_the_threads_and_blocks_change_no_number(monkeypatch):
    """Winograd's blocks run in threads with a one-thread BLAS each; their partition depends
    on the batch only, so one thread and three give bitwise the same results."""
    import lipref.backend as backend
    rng = numpy.random.default_rng(5)
    x, wt = rng.standard_normal((9, 16, 10, 10)).astype(numpy.float32), rng.standard_normal(
        (16, 16, 3, 3)).astype(numpy.float32)
    g = rng.standard_normal((9, 16, 10, 10)).astype(numpy.float32)
    monkeypatch.setattr(W, "WINOGRAD_BLOCK", 20000)
    assert len(KB.blocks_of(9, 4 * 100 * 32, W.WINOGRAD_BLOCK)) > 1
    results = []
    for threads in (1, 3):
        monkeypatch.setattr(backend, "default_threads", lambda xp, t=threads: t)
        results.append((W.conv2d(x, wt, None, 1, 1), W.conv2d_input_grad(g, wt, 1, 1, (10, 10)),
                        W.conv2d_weight_grad(g, x, wt.shape, 1, 1)))
    for one, three in zip(*results):
        numpy.testing.assert_array_equal(one, three)


def test_a_sound_certificate_never_runs_winograd_and_a_fast_float32_one_does(monkeypatch):
    """Sound mode computes in float64 (walk.py refuses float32), and the kernels apply to
    float32 only: certify a conv model whose layers Winograd fits, in sound mode with a spy
    on the tiles every Winograd path makes (none), and in fast mode in float32 (some)."""
    import array_api_compat.numpy as xp

    from lipref.certification import CertifyConfig, certify
    from lipref.models import build_stack
    if not enabled():
        pytest.skip("kernels are off (LIPREF_REFERENCE): fast mode runs no Winograd either")
    calls = []
    real = W.split_grid

    def spy(*args):
        calls.append(1)
        return real(*args)
    monkeypatch.setattr(W, "split_grid", spy)
    rng = numpy.random.default_rng(0)
    images = rng.uniform(0, 1, (3, 1, 8, 8))
    labels = numpy.array([0, 1, 2])
    for dtype, mode in ((xp.float64, "sound"), (xp.float32, "fast")):
        model = build_stack([(8, 3, 1, 1), (8, 3, 1, 1), (8, 4, 2, 1)], [16], (1, 8, 8), 3)
        model.init_params(xp, dtype, numpy.random.default_rng(1))
        calls.clear()
        certify(model, images.astype(numpy.float64 if mode == "sound" else numpy.float32), labels, 0.1,
                CertifyConfig(mode=mode, n_iters=5, pgd_steps=0), seed=0)
        assert (len(calls) > 0) == (mode == "fast"), f"{mode}: {len(calls)} Winograd calls"
