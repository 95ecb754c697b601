"""The conv kernels (kernels/conv.py, kernels/conv_grads.py) against the plain conv2d,
conv2d_transpose and weight gradient (lipref/primitives/linear.py, run inside
reference_only()), in every form and method the kernels have, on every backend; the
blocks they share (kernels/conv_blocks.py). Winograd's kernels (kernels/winograd.py), whose
rounding is not the plain definition's, are checked in test_kernels_conv_winograd.py.

The kernels are called directly, not through the dispatcher, so these comparisons also run
under LIPREF_REFERENCE=1. Hard cases: kernels of size 1, padding up to the kernel's size,
rectangular kernels, exact zeros, scales from 1e-150 to 1e150, overflow to inf, blocks
of one sample or several, and inputs in either memory order (NCHW data, lipref's own
channels-last activations).
"""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import assert_backend_close

from lipref import primitives as P
from lipref.kernels import conv as K
from lipref.kernels import conv_blocks as KB
from lipref.kernels import conv_grads as G
from lipref.kernels import reference_only
from lipref.primitives.linear import _conv2d_weight_grad as plain_weight_grad
from lipref.shapes import conv_output_hw, nchw, nhwc

SCALES = st.sampled_from([1e-150, 1.0, 1e150])


def _plain(fn, *args):
    with reference_only():
        return fn(*args)


def _arrays(rng, shapes, scale, zeros):
    """Standard normal arrays times `scale`, with a fraction `zeros` of exact zeros."""
    out = []
    for shape in shapes:
        a = rng.standard_normal(shape) * scale
        out.append(numpy.where(rng.random(shape) < zeros, 0.0, a))
    return out


def _forms(kh, kw, stride):
    return ("im2col", "channel-major") + (("taps",) if kh % stride == 0 and kw % stride == 0 else ()) + \
        (("row taps",) if stride == 1 else ())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), taps_h=st.integers(1, 3), taps_w=st.integers(1, 3), stride=st.integers(1, 3),
       padding=st.integers(0, 3), extra_h=st.integers(0, 5), extra_w=st.integers(0, 5), n=st.integers(1, 3),
       c=st.sampled_from([1, 2, 8]), o=st.sampled_from([1, 3, 8]), scale=SCALES,
       zeros=st.sampled_from([0.0, 0.5, 1.0]), block=st.sampled_from([1, 200, 10 ** 9]))
def test_every_forward_form_and_weight_gradient_equals_the_plain_definition(
        xp, seed, taps_h, taps_w, stride, padding, extra_h, extra_w, n, c, o, scale, zeros, block):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KB, "COLUMN_BLOCK", block)
        _check_forms(xp, seed, taps_h, taps_w, stride, padding, extra_h, extra_w, n, c, o, scale, zeros)


def _check_forms(xp, seed, taps_h, taps_w, stride, padding, extra_h, extra_w, n, c, o, scale, zeros):
    rng = numpy.random.default_rng(seed)
    kh, kw = taps_h * stride, taps_w * stride  # a multiple of the stride: every form applies
    h, w = max(1, kh - 2 * padding) + extra_h, max(1, kw - 2 * padding) + extra_w
    oh, ow = conv_output_hw(h, w, kh, kw, stride, padding)
    x, wt, b, g = _arrays(rng, [(n, c, h, w), (o, c, kh, kw), (o,), (n, o, oh, ow)], scale, zeros)
    xs, ws, bs, gs = (xp.asarray(a) for a in (x, wt, b, g))
    forward = _plain(P.conv2d, xs, ws, bs, stride, padding)
    wgrad = _plain(plain_weight_grad, gs, xs, wt.shape, stride, padding)
    tol = dict(rtol=1e-12, atol=1e-12 * scale * scale * kh * kw * c)
    for form in _forms(kh, kw, stride):
        assert_backend_close(K.conv2d(xs, ws, bs, stride, padding, form), forward, xp, **tol, what=f"forward {form}")
        assert_backend_close(G.conv2d_weight_grad(gs, xs, wt.shape, stride, padding, form), wgrad, xp,
                             rtol=1e-12, atol=1e-12 * scale * scale * n * oh * ow, what=f"weight gradient {form}")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kh=st.integers(1, 5), kw=st.integers(1, 5), stride=st.integers(1, 3),
       padding=st.integers(0, 3), extra_h=st.integers(0, 5), extra_w=st.integers(0, 5), n=st.integers(1, 3),
       c=st.sampled_from([1, 3, 8]), o=st.sampled_from([1, 2, 9]), scale=SCALES,
       zeros=st.sampled_from([0.0, 0.5]), block=st.sampled_from([1, 10 ** 9]))
def test_every_input_gradient_method_equals_the_plain_adjoint(
        xp, seed, kh, kw, stride, padding, extra_h, extra_w, n, c, o, scale, zeros, block):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KB, "COLUMN_BLOCK", block)
        _check_methods(xp, seed, kh, kw, stride, padding, extra_h, extra_w, n, c, o, scale, zeros)


def _check_methods(xp, seed, kh, kw, stride, padding, extra_h, extra_w, n, c, o, scale, zeros):
    rng = numpy.random.default_rng(seed)
    h, w = max(1, kh - 2 * padding) + extra_h, max(1, kw - 2 * padding) + extra_w
    oh, ow = conv_output_hw(h, w, kh, kw, stride, padding)
    wt, y = _arrays(rng, [(o, c, kh, kw), (n, o, oh, ow)], scale, zeros)
    ws, ys = xp.asarray(wt), xp.asarray(y)
    expected = _plain(P.conv2d_transpose, ys, ws, stride, padding, (h, w))
    fits_row_taps = stride == 1 and kh == kw and padding <= kh - 1
    for method in ("gather", "scatter") + (("row taps",) if fits_row_taps else ()):
        got = G.conv2d_input_grad(ys, ws, stride, padding, (h, w), method)
        assert_backend_close(got, expected, xp, rtol=1e-12, atol=1e-12 * scale * scale * kh * kw * o,
                             what=f"input gradient {method}")
    # the rule's own choice, through the dispatcher, too
    assert_backend_close(P.conv2d_transpose(ys, ws, stride, padding, (h, w)), expected, xp, rtol=1e-12,
                         atol=1e-12 * scale * scale * kh * kw * o, what="input gradient (picked)")


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("form", ["im2col", "taps"])
def test_overflow_gives_inf_in_the_kernel_as_in_the_plain_definition(xp, form):
    """Products that overflow float32 are inf in both; no NaN appears from the kernel's order
    when every term has the same sign."""
    x = xp.full((1, 2, 4, 4), 3e19, dtype=xp.float32)
    w = xp.full((2, 2, 2, 2), 3e19, dtype=xp.float32)
    got = K.conv2d(x, w, None, 2, 0, form)
    expected = _plain(P.conv2d, x, w, None, 2, 0)
    host_got, host_expected = numpy.asarray(got), numpy.asarray(expected)
    assert numpy.all(numpy.isposinf(host_expected)) and numpy.array_equal(host_got, host_expected)


def test_the_rules_pick_forms_by_shape_and_refuse_forms_that_do_not_apply():
    """The rules (_conv_form, _input_grad_method) on the paper's layers, and the refusals:
    a form that does not apply is an error, not a wrong answer."""
    assert K._conv_form((4, 4), 2, 32, 32) == "taps" and K._conv_form((6, 3), 3, 1, 8) == "taps"
    assert K._conv_form((3, 3), 1, 32, 32) == "row taps" and K._conv_form((3, 3), 1, 64, 32) == "row taps"
    assert K._conv_form((3, 3), 1, 32, 64) == "im2col"  # more outputs than inputs
    assert K._conv_form((3, 3), 1, 3, 32) == "channel-major"  # a first layer: runs of C = 3 are too short
    assert K._conv_form((3, 3), 1, 1, 32) == "channel-major"
    assert K._conv_form((3, 3), 2, 32, 32) == "im2col" and K._conv_form((4, 3), 2, 32, 32) == "im2col"
    assert G._input_grad_method(numpy.ones((64, 32, 3, 3)), 1, 1) == "row taps"
    assert G._input_grad_method(numpy.ones((32, 32, 4, 4)), 2, 1) == "gather"
    assert G._input_grad_method(numpy.ones((32, 1, 3, 3)), 1, 1) == "scatter"
    x, w = numpy.ones((1, 1, 5, 5)), numpy.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match="not a multiple of stride 2"):
        K.conv2d(x, w, None, 2, 1, "taps")
    with pytest.raises(ValueError, match="stride 1 only"):
        K.conv2d(x, w, None, 2, 1, "row taps")
    with pytest.raises(ValueError, match="must be one of"):
        K.conv2d(x, w, None, 1, 1, "winograd")
    with pytest.raises(ValueError, match="padding <= k-1"):
        G.conv2d_input_grad(numpy.ones((1, 1, 7, 7)), w, 1, 3, (5, 5), "row taps")


@pytest.mark.parametrize("block, min_blocks, count", [(1, 4, 5), (500, 4, 3), (10 ** 9, 4, 3), (10 ** 9, 1, 1)])
def test_blocks_of_samples_do_not_change_a_number(monkeypatch, block, min_blocks, count):
    """The kernels work through the batch in blocks of whole samples (for the cache, and at
    least MIN_BLOCKS for the threads): blocks of one sample, uneven blocks and one block
    give bitwise the same results."""
    rng = numpy.random.default_rng(7)
    x, wt, b = rng.standard_normal((5, 2, 7, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    g = rng.standard_normal((5, 3, 4, 3))
    monkeypatch.setattr(KB, "MIN_BLOCKS", 1)
    monkeypatch.setattr(KB, "COLUMN_BLOCK", 10 ** 9)
    whole = (K.conv2d(x, wt, b, 2, 1), G.conv2d_input_grad(g, wt, 2, 1, (7, 6)),
             G.conv2d_weight_grad(g, x, wt.shape, 2, 1))
    monkeypatch.setattr(KB, "MIN_BLOCKS", min_blocks)
    monkeypatch.setattr(KB, "COLUMN_BLOCK", block)
    assert len(KB.blocks_of(5, 4 * 3 * 9 * 2)) == count
    blocked = (K.conv2d(x, wt, b, 2, 1), G.conv2d_input_grad(g, wt, 2, 1, (7, 6)),
               G.conv2d_weight_grad(g, x, wt.shape, 2, 1))
    for got, want in zip(blocked[:2], whole[:2]):
        numpy.testing.assert_array_equal(got, want)
    numpy.testing.assert_allclose(blocked[2], whole[2], rtol=1e-13)  # sums over blocks: another order


def _every_conv_kernel(x, wt, g, stride, padding):
    h, w = x.shape[2:]
    return (K.conv2d(x, wt, None, stride, padding), G.conv2d_input_grad(g, wt, stride, padding, (h, w)),
            G.conv2d_weight_grad(g, x, wt.shape, stride, padding))


@pytest.mark.parametrize("c, k, stride", [(1, 3, 1), (3, 3, 1), (16, 3, 1), (8, 4, 2), (16, 3, 2)])
def test_the_thread_count_changes_no_number(monkeypatch, c, k, stride):
    """The blocks run in threads (conv_blocks.map_blocks), each with a one-thread BLAS, and
    their partition depends on the batch only: one thread and three give bitwise the same
    forward and gradients, the weight gradient's sum over blocks included."""
    import lipref.backend as backend
    rng = numpy.random.default_rng(c + k)
    x = rng.standard_normal((9, c, 11, 10)).astype(numpy.float32)
    wt = rng.standard_normal((16, c, k, k)).astype(numpy.float32)
    y = K.conv2d(x, wt, None, stride, 1)
    g = rng.standard_normal(y.shape).astype(numpy.float32)
    monkeypatch.setattr(KB, "COLUMN_BLOCK", 2000)  # several blocks
    results = {}
    for threads in (1, 3):
        monkeypatch.setattr(backend, "default_threads", lambda xp, t=threads: t)
        results[threads] = _every_conv_kernel(x, wt, g, stride, 1)
    assert len(KB.blocks_of(9, 11 * 10 * k * k * c)) > 1
    for one, three in zip(results[1], results[3]):
        numpy.testing.assert_array_equal(one, three)


@pytest.mark.parametrize("c, k, stride", [(3, 3, 1), (32, 3, 1), (16, 4, 2)])
def test_nchw_and_channels_last_memory_give_the_same_numbers(c, k, stride):
    """conv_blocks.channels_last: an NCHW array's blocks are copied to channels-last memory
    (through a staged buffer), lipref's channels-last activations are used as they are;
    both give bitwise the same results, at the 32x32 size where NCHW's channel stride is
    4 KiB."""
    rng = numpy.random.default_rng(c)
    x = rng.standard_normal((3, c, 32, 32)).astype(numpy.float32)
    wt = rng.standard_normal((8, c, k, k)).astype(numpy.float32)
    g = rng.standard_normal(K.conv2d(x, wt, None, stride, 1).shape).astype(numpy.float32)
    channels_last = [nchw(numpy.ascontiguousarray(nhwc(a))) for a in (x, g)]
    assert not channels_last[0].flags.c_contiguous and x.flags.c_contiguous
    for got, want in zip(_every_conv_kernel(*channels_last[:1], wt, channels_last[1], stride, 1),
                         _every_conv_kernel(x, wt, g, stride, 1)):
        numpy.testing.assert_array_equal(got, want)
    block = nhwc(x)
    copied, as_is = KB.channels_last(block), KB.channels_last(nhwc(channels_last[0]))
    numpy.testing.assert_array_equal(copied, block)
    assert copied.flags.c_contiguous and numpy.shares_memory(as_is, channels_last[0])
