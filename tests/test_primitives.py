"""Every primitive in lipref.primitives.PRIMITIVES, checked by one table-driven checker.

Each entry of CASES says how hypothesis draws the primitive's arguments (shapes, strides,
paddings, axes; values from a drawn seed, float64), which arguments are differentiated, an
independent re-implementation of the forward in autograd.numpy, and how far the drawn
point is from the primitive's kinks. For every differentiable argument the checker compares
the tape's gradient (the registered vjp, called through `primitive`/`grad`) with
  (a) HIPS autograd's vector-Jacobian product of the autograd.numpy forward, and
  (b) a central finite difference along a random direction, <g, (f(x+hv) - f(x-hv)) / 2h>,
at points at least KINK_GAP away from every kink.
A primitive registered without a case fails `test_every_primitive_has_a_case`.

Also here: conv2d against a direct loop and torch, the conv2d / conv2d_transpose adjoint
identity, the kink policies at exact ties and boundaries (as each docstring states them),
every primitive on every backend, and a small conv model's loss gradients on every backend.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import autograd
import autograd.numpy as anp
import numpy
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lipref import primitives as P
from lipref.models import build_model
from lipref.primitives import PRIMITIVES
from lipref.tape import Var, grad
from support import assert_backend_close, to_numpy

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KINK_GAP = 1e-3   # smooth checks only at points this far from any tie or boundary
FD_STEP = 1e-6    # h * max|v| stays far below KINK_GAP


# ---------------------------------------------------------------- drawing arguments

def _rng(draw):
    return numpy.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def _shape(draw, min_dims=0, max_dims=3, max_side=4):
    n = draw(st.integers(min_dims, max_dims))
    return tuple(draw(st.integers(1, max_side)) for _ in range(n))


def _broadcast_shapes(draw, k):
    """k shapes that broadcast together: each drops some leading axes of a full shape and
    sets some of its remaining sides to 1 (so both sides of a binary op get unbroadcast)."""
    full = _shape(draw, 0, 3)
    out = []
    for _ in range(k):
        drop = draw(st.integers(0, len(full)))
        out.append(tuple(1 if draw(st.booleans()) else s for s in full[drop:]))
    return out


def _normal(rng, shape, scale=1.0):
    return numpy.asarray(rng.standard_normal(shape) * scale, dtype=numpy.float64)


def _uniform(rng, lo, hi, shape):
    return numpy.asarray(rng.uniform(lo, hi, shape), dtype=numpy.float64)


def _axis_choice(draw, ndim, allow_tuple=True):
    """None, an int (possibly negative) or a tuple of distinct axes of an ndim-array."""
    kinds = ["int"] + (["none", "tuple"] if allow_tuple else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    if kind == "int":
        ax = draw(st.integers(0, ndim - 1))
        return ax - ndim if draw(st.booleans()) else ax
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return tuple(ax - ndim if draw(st.booleans()) else ax for ax in axes)


def _conv_geometry(draw, max_k=4):
    """(kh, kw, stride, padding, h, w) with the kernel fitting the padded input."""
    kh, kw = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
    stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * padding), max(1, kh - 2 * padding) + 5))
    w = draw(st.integers(max(1, kw - 2 * padding), max(1, kw - 2 * padding) + 5))
    return kh, kw, stride, padding, h, w


def _out_hw(h, w, kh, kw, stride, padding):
    return (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1


# ---------------------------------------------------------------- autograd references

def _select(n_in, offset, n_out, stride, padding):
    """0/1 matrix (n_in, n_out): input row r feeds output a at kernel offset `offset` when
    r == offset + stride * a - padding (zero padding = rows outside [0, n_in) never feed)."""
    t = numpy.zeros((n_in, n_out))
    for a in range(n_out):
        r = offset + stride * a - padding
        if 0 <= r < n_in:
            t[r, a] = 1.0
    return t


def ag_conv2d(x, w, b, stride, padding):
    """conv2d as a sum over kernel offsets of einsums with selection matrices (no im2col)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = _out_hw(h, wd, kh, kw, stride, padding)
    out = anp.zeros((n, o, oh, ow))
    for i in range(kh):
        ti = _select(h, i, oh, stride, padding)
        for j in range(kw):
            uj = _select(wd, j, ow, stride, padding)
            out = out + anp.einsum("nchw,oc,ha,wb->noab", x, w[:, :, i, j], ti, uj)
    if b is not None:
        out = out + anp.reshape(b, (1, o, 1, 1))
    return out


def ag_conv2d_transpose(y, w, stride, padding, in_hw):
    """The transpose of ag_conv2d's linear map in x, written out with the same selections."""
    h, wd = in_hw
    n, o, oh, ow = y.shape
    _, c, kh, kw = w.shape
    out = anp.zeros((n, c, h, wd))
    for i in range(kh):
        ti = _select(h, i, oh, stride, padding)
        for j in range(kw):
            uj = _select(wd, j, ow, stride, padding)
            out = out + anp.einsum("noab,oc,ha,wb->nchw", y, w[:, :, i, j], ti, uj)
    return out


def _ag_halves(x):
    h = x.shape[1] // 2
    return x[:, :h], x[:, h:]


def ag_clamped_maxmin(x, hi, lo):
    a, b = _ag_halves(x)
    return anp.concatenate([anp.minimum(anp.maximum(a, b), hi), anp.maximum(anp.minimum(a, b), lo)], axis=1)


# ---------------------------------------------------------------- kink distances

def _min_abs(a):
    a = numpy.abs(numpy.asarray(a, dtype=numpy.float64))
    return float(a.min()) if a.size else numpy.inf


def _gap_max(x, axis):
    """Gap between the largest and second largest entry along `axis` (inf if length 1)."""
    if x.shape[axis] < 2:
        return numpy.inf
    s = numpy.sort(x, axis=axis)
    top = numpy.take(s, -1, axis=axis) - numpy.take(s, -2, axis=axis)
    return _min_abs(top)


def _maxmin_kinks(x, hi, lo):
    a, b = _ag_halves(x)
    return min(_min_abs(a - b), _min_abs(numpy.maximum(a, b) - hi), _min_abs(numpy.minimum(a, b) - lo))


# ---------------------------------------------------------------- the cases

@dataclass
class Case:
    draw: Callable            # draw(hypothesis draw) -> tuple of arguments (host arrays / params)
    ref: Callable             # autograd.numpy forward with the same signature
    diff: tuple               # indices of differentiated arguments (the non-None vjps)
    kink: Optional[Callable] = None  # args -> distance to the nearest kink (None: smooth everywhere)


def _binary(lo_b=None):
    def draw(d):
        rng = _rng(d)
        sa, sb = _broadcast_shapes(d, 2)
        a = _normal(rng, sa)
        if lo_b is None:
            b = _normal(rng, sb)
        else:  # bounded away from 0 (divisor)
            b = numpy.asarray(_uniform(rng, lo_b, 2.0, sb) * numpy.where(rng.random(sb) < 0.5, -1.0, 1.0))
        return a, b
    return draw


def _unary(lo=None, hi=None):
    def draw(d):
        rng = _rng(d)
        shape = _shape(d)
        return (_normal(rng, shape) if lo is None else _uniform(rng, lo, hi, shape),)
    return draw


def _draw_where(d):
    rng = _rng(d)
    sc, sa, sb = _broadcast_shapes(d, 3)
    return numpy.asarray(rng.random(sc) < 0.5), _normal(rng, sa), _normal(rng, sb)


def _draw_clipped_relu(d):
    rng = _rng(d)
    feat = _shape(d, 0, 2)
    n = d(st.integers(1, 3))
    theta = _uniform(rng, 0.2, 2.0, feat)
    return _uniform(rng, -1.0, 2.5, (n,) + feat), theta


def _draw_clamped_maxmin(d):
    rng = _rng(d)
    n, h = d(st.integers(1, 3)), d(st.integers(1, 3))
    rest = _shape(d, 0, 2, 3)
    x = _normal(rng, (n, 2 * h) + rest, 1.2)
    return x, _uniform(rng, 0.1, 1.5, (h,) + rest), _uniform(rng, -1.5, -0.1, (h,) + rest)


def _draw_channel_slice(d):
    rng = _rng(d)
    c = d(st.integers(1, 5))
    start = d(st.integers(0, c - 1))
    stop = d(st.integers(start + 1, c))
    return _normal(rng, (d(st.integers(1, 3)), c) + _shape(d, 0, 2)), start, stop


def _draw_reshape(d):
    rng = _rng(d)
    shape = _shape(d, 1, 4)
    target = list(d(st.permutations(shape)))
    if len(target) >= 2 and d(st.booleans()):
        target = [target[0] * target[1]] + target[2:]
    return _normal(rng, shape), tuple(target)


def _draw_reduction(allow_tuple):
    def draw(d):
        rng = _rng(d)
        shape = _shape(d, 1, 4)
        return _normal(rng, shape), _axis_choice(d, len(shape), allow_tuple), d(st.booleans())
    return draw


def _draw_logsumexp(d):
    rng = _rng(d)
    shape = _shape(d, 1, 3)
    return _normal(rng, shape, 2.0), _axis_choice(d, len(shape), allow_tuple=False)


def _draw_softmax_ce(d):
    rng = _rng(d)
    n, k = d(st.integers(1, 5)), d(st.integers(2, 6))
    return _normal(rng, (n, k), 2.0), numpy.eye(k)[rng.integers(0, k, n)]


def _draw_matmul(d):
    rng = _rng(d)
    m, k, n = (d(st.integers(1, 5)) for _ in range(3))
    return _normal(rng, (m, k)), _normal(rng, (k, n))


def _draw_linear(d):
    rng = _rng(d)
    n, i, o = (d(st.integers(1, 5)) for _ in range(3))
    bias = _normal(rng, (o,)) if d(st.booleans()) else None
    return _normal(rng, (n, i)), _normal(rng, (o, i)), bias


# 8 and 9 channels reach the row-tap forms (_conv_form: C >= 8 inputs, O <= C outputs; the
# input gradient's flipped conv: O >= 8, C <= O), so this checker covers every form the
# rule picks, not only im2col and the strided taps
CONV_CHANNELS = st.sampled_from([1, 2, 3, 8, 9])


def _draw_conv2d(d):
    rng = _rng(d)
    kh, kw, stride, padding, h, w = _conv_geometry(d)
    n, c, o = d(st.integers(1, 2)), d(CONV_CHANNELS), d(CONV_CHANNELS)
    bias = _normal(rng, (o,)) if d(st.booleans()) else None
    return _normal(rng, (n, c, h, w)), _normal(rng, (o, c, kh, kw)), bias, stride, padding


def _draw_conv2d_transpose(d):
    rng = _rng(d)
    kh, kw, stride, padding, h, w = _conv_geometry(d)
    n, c, o = d(st.integers(1, 2)), d(CONV_CHANNELS), d(CONV_CHANNELS)
    oh, ow = _out_hw(h, w, kh, kw, stride, padding)
    return _normal(rng, (n, o, oh, ow)), _normal(rng, (o, c, kh, kw)), stride, padding, (h, w)


CASES = {
    "_add": Case(_binary(), lambda a, b: a + b, (0, 1)),
    "_subtract": Case(_binary(), lambda a, b: a - b, (0, 1)),
    "_multiply": Case(_binary(), lambda a, b: a * b, (0, 1)),
    "_divide": Case(_binary(lo_b=0.5), lambda a, b: a / b, (0, 1)),
    "_negative": Case(_unary(), lambda a: -a, (0,)),
    "_square": Case(_unary(), lambda a: a * a, (0,)),
    "_sqrt": Case(_unary(0.1, 3.0), anp.sqrt, (0,)),
    "_exp": Case(_unary(-2.0, 2.0), anp.exp, (0,)),
    "_log": Case(_unary(0.1, 3.0), anp.log, (0,)),
    "_abs": Case(_unary(), anp.abs, (0,), kink=lambda a: _min_abs(a)),
    "_maximum": Case(_binary(), anp.maximum, (0, 1), kink=lambda a, b: _min_abs(a - b)),
    "_minimum": Case(_binary(), anp.minimum, (0, 1), kink=lambda a, b: _min_abs(a - b)),
    # where written as a blend: autograd's own `where` vjp does not unbroadcast
    "_where": Case(_draw_where, lambda c, a, b: c * a + (1.0 - c) * b, (1, 2)),
    "_relu": Case(_unary(), lambda x: anp.maximum(x, 0.0), (0,), kink=lambda x: _min_abs(x)),
    "_clipped_relu": Case(_draw_clipped_relu, lambda x, t: anp.minimum(anp.maximum(x, 0.0), t), (0, 1),
                          kink=lambda x, t: min(_min_abs(x), _min_abs(x - t))),
    "_clamped_maxmin": Case(_draw_clamped_maxmin, ag_clamped_maxmin, (0, 1, 2), kink=_maxmin_kinks),
    "_channel_slice": Case(_draw_channel_slice, lambda x, start, stop: x[:, start:stop], (0,)),
    "_reshape": Case(_draw_reshape, lambda x, shape: anp.reshape(x, shape), (0,)),
    "_sum": Case(_draw_reduction(True), lambda x, axis, keep: anp.sum(x, axis=axis, keepdims=keep), (0,)),
    "_l2_norm": Case(_draw_reduction(True), lambda x, axis, keep: anp.sqrt(anp.sum(x * x, axis=axis, keepdims=keep)),
                     (0,)),
    "_max": Case(_draw_reduction(False), lambda x, axis, keep: anp.max(x, axis=axis, keepdims=keep), (0,),
                 kink=lambda x, axis, keep: _gap_max(x, axis)),
    "_logsumexp": Case(_draw_logsumexp, lambda x, axis: anp.log(anp.sum(anp.exp(x), axis=axis, keepdims=True)),
                       (0,)),
    "_softmax_cross_entropy": Case(
        _draw_softmax_ce,
        lambda z, onehot: anp.log(anp.sum(anp.exp(z), axis=1)) - anp.sum(z * onehot, axis=1), (0,)),
    "_matmul": Case(_draw_matmul, lambda a, b: anp.dot(a, b), (0, 1)),
    "_linear": Case(_draw_linear, lambda x, w, b: anp.dot(x, w.T) + (0.0 if b is None else b), (0, 1, 2)),
    "_conv2d": Case(_draw_conv2d, ag_conv2d, (0, 1, 2)),
    "_conv2d_transpose": Case(_draw_conv2d_transpose, ag_conv2d_transpose, (0, 1)),
}


def test_every_primitive_has_a_case():
    assert set(CASES) == set(PRIMITIVES), (
        f"primitives without a case: {sorted(set(PRIMITIVES) - set(CASES))}; "
        f"cases without a primitive: {sorted(set(CASES) - set(PRIMITIVES))}")
    for name, case in CASES.items():
        declared = {i for i, vjp in enumerate(PRIMITIVES[name].vjps) if vjp is not None}
        assert set(case.diff) == declared, f"{name}: case differentiates {case.diff}, vjps exist for {declared}"


# ---------------------------------------------------------------- the checker

def _is_array(a):
    return isinstance(a, numpy.ndarray) and a.dtype == numpy.float64


def _tape_grads(apply, args, which, g):
    """Gradients wrt args[i] for i in `which`, through primitive(...) and tape.grad."""
    wrapped = [Var(a) if i in which else a for i, a in enumerate(args)]
    out = apply(*wrapped)
    assert isinstance(out, Var)
    return out, grad(out, [wrapped[i] for i in which], seed=g)


def _autograd_vjp(ref, args, i, g):
    def f(a):
        return ref(*args[:i], a, *args[i + 1:])
    return numpy.asarray(autograd.make_vjp(f)(args[i])[0](g), dtype=numpy.float64)


def _directional_fd(forward, args, i, v, g):
    def at(step):
        moved = list(args)
        moved[i] = args[i] + step * v
        return float(numpy.sum(g * numpy.asarray(forward(*moved))))
    return (at(FD_STEP) - at(-FD_STEP)) / (2 * FD_STEP)


@pytest.mark.parametrize("name", sorted(CASES))
@SETTINGS
@given(data=st.data())
def test_primitive_matches_autograd_and_finite_differences(name, data):
    case, apply = CASES[name], PRIMITIVES[name]
    args = data.draw(st.composite(lambda d: case.draw(d))(), label="args")
    if case.kink is not None:
        assume(case.kink(*args) > KINK_GAP)
    rng = numpy.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="g seed"))

    ans = apply.forward(*args)
    plain = apply(*args)
    assert not isinstance(plain, Var), "no Var argument must mean no tape"
    numpy.testing.assert_array_equal(numpy.asarray(plain), numpy.asarray(ans))
    expected = numpy.asarray(case.ref(*args))
    assert numpy.shape(ans) == expected.shape
    numpy.testing.assert_allclose(numpy.asarray(ans), expected, rtol=1e-12, atol=1e-12, err_msg=f"{name} forward")

    which = [i for i in case.diff if _is_array(args[i])]
    g = _normal(rng, numpy.shape(ans))
    out, grads = _tape_grads(apply, args, which, g)
    numpy.testing.assert_array_equal(numpy.asarray(out.value), numpy.asarray(ans))
    scale = 1.0 + float(numpy.sum(numpy.abs(g * numpy.asarray(ans))))
    for i, gi in zip(which, grads):
        gi = numpy.asarray(gi)
        assert gi.shape == numpy.shape(args[i]), f"{name}: gradient {i} has shape {gi.shape}, arg {numpy.shape(args[i])}"
        assert numpy.all(numpy.isfinite(gi)), f"{name}: non-finite gradient for argument {i}"
        ag = _autograd_vjp(case.ref, args, i, g)
        numpy.testing.assert_allclose(gi, ag, rtol=1e-10, atol=1e-10,
                                      err_msg=f"{name}: vjp of argument {i} disagrees with autograd")
        v = _normal(rng, numpy.shape(args[i]))
        fd = _directional_fd(apply.forward, args, i, v, g)
        dot = float(numpy.sum(gi * v))
        assert abs(fd - dot) <= 1e-6 * (abs(dot) + scale), \
            f"{name}: argument {i}: finite difference {fd!r} vs <vjp, v> {dot!r}"


@pytest.mark.parametrize("name", sorted(CASES))
@settings(SETTINGS, max_examples=3)
@given(data=st.data())
def test_primitive_on_every_backend(xp, name, data):
    """Forward and every vjp on the backend under test equal NumPy's (same host-drawn inputs)."""
    case, apply = CASES[name], PRIMITIVES[name]
    args = data.draw(st.composite(lambda d: case.draw(d))(), label="args")
    rng = numpy.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="g seed"))
    which = [i for i in case.diff if _is_array(args[i])]
    g = _normal(rng, numpy.shape(apply.forward(*args)))
    host_out, host_grads = _tape_grads(apply, args, which, g)
    moved = tuple(xp.asarray(a) if isinstance(a, numpy.ndarray) else a for a in args)
    out, grads = _tape_grads(apply, moved, which, xp.asarray(g))
    assert_backend_close(out.value, host_out.value, xp, rtol=1e-12, atol=1e-12, what=f"{name} forward")
    for i, gi, hi in zip(which, grads, host_grads):
        assert_backend_close(gi, hi, xp, rtol=1e-12, atol=1e-12, what=f"{name} gradient {i}")


# ---------------------------------------------------------------- conv2d forward references

def naive_conv2d(x, w, b, stride, padding):
    """Direct seven-fold loop over a zero-padded copy."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xpad = numpy.zeros((n, c, h + 2 * padding, wd + 2 * padding))
    xpad[:, :, padding:padding + h, padding:padding + wd] = x
    oh, ow = _out_hw(h, wd, kh, kw, stride, padding)
    out = numpy.zeros((n, o, oh, ow))
    for bi in range(n):
        for oi in range(o):
            for r in range(oh):
                for q in range(ow):
                    acc = 0.0 if b is None else b[oi]
                    for ci in range(c):
                        for i in range(kh):
                            for j in range(kw):
                                acc += w[oi, ci, i, j] * xpad[bi, ci, r * stride + i, q * stride + j]
                    out[bi, oi, r, q] = acc
    return out


@SETTINGS
@given(data=st.data())
def test_conv2d_forward_equals_direct_loop(data):
    x, w, b, stride, padding = data.draw(st.composite(lambda d: _draw_conv2d(d))())
    numpy.testing.assert_allclose(P.conv2d(x, w, b, stride, padding), naive_conv2d(x, w, b, stride, padding),
                                  rtol=1e-12, atol=1e-12)


@SETTINGS
@given(data=st.data())
def test_conv2d_forward_equals_torch(data):
    torch = pytest.importorskip("torch")
    x, w, b, stride, padding = data.draw(st.composite(lambda d: _draw_conv2d(d))())
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                          None if b is None else torch.from_numpy(b), stride=stride, padding=padding)
    numpy.testing.assert_allclose(P.conv2d(x, w, b, stride, padding), expected.numpy(), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), stride=st.integers(1, 3), padding=st.integers(0, 2),
       extra_h=st.integers(0, 6), extra_w=st.integers(0, 6), n=st.integers(1, 2), c=st.integers(1, 3),
       o=st.integers(1, 3))
def test_conv2d_transpose_is_the_adjoint(seed, k, stride, padding, extra_h, extra_w, n, c, o):
    """<conv2d(x, W), y> == <x, conv2d_transpose(y, W)> for every geometry, odd sizes included."""
    rng = numpy.random.default_rng(seed)
    h, w = max(1, k - 2 * padding) + extra_h, max(1, k - 2 * padding) + extra_w
    oh, ow = _out_hw(h, w, k, k, stride, padding)
    x, wt, y = rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, k, k)), rng.standard_normal((n, o, oh, ow))
    left = float(numpy.sum(P.conv2d(x, wt, None, stride, padding) * y))
    xt = P.conv2d_transpose(y, wt, stride, padding, (h, w))
    assert xt.shape == x.shape
    right = float(numpy.sum(x * xt))
    assert abs(left - right) <= 1e-12 * (numpy.sum(numpy.abs(x)) * numpy.sum(numpy.abs(xt)) + 1.0)
    numpy.testing.assert_allclose(xt, ag_conv2d_transpose(y, wt, stride, padding, (h, w)), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), stride=st.integers(1, 3), padding=st.integers(0, 3),
       extra_h=st.integers(0, 6), extra_w=st.integers(0, 6), n=st.integers(1, 3), c=st.integers(1, 3),
       o=st.integers(1, 3))
def test_conv2d_input_gradient_methods_agree(xp, seed, k, stride, padding, extra_h, extra_w, n, c, o):
    """conv2d's input gradient has three exact implementations (sub-pixel gather, col2im
    scatter and, for stride 1 with padding <= k-1, the row-tap forward of the flipped
    kernel) chosen by shape for speed; each must equal the written-out adjoint, on every
    backend, padding larger than the kernel included."""
    rng = numpy.random.default_rng(seed)
    h, w = max(1, k - 2 * padding) + extra_h, max(1, k - 2 * padding) + extra_w
    oh, ow = _out_hw(h, w, k, k, stride, padding)
    wt, y = rng.standard_normal((o, c, k, k)), rng.standard_normal((n, o, oh, ow))
    expected = ag_conv2d_transpose(y, wt, stride, padding, (h, w))
    methods = ("gather", "scatter") + (("row taps",) if stride == 1 and padding <= k - 1 else ())
    for method in methods:
        got = P._conv2d_input_grad(xp.asarray(y), xp.asarray(wt), stride, padding, (h, w), method)
        assert_backend_close(got, expected, xp, rtol=1e-12, atol=1e-12, what=f"input gradient ({method})")


def _tap_forms(kh, kw, stride):
    """The forms conv2d can take for this kernel and stride."""
    return ("im2col",) + (("taps",) if kh % stride == 0 and kw % stride == 0 else ()) + \
        (("row taps",) if stride == 1 else ())


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), taps_h=st.integers(1, 3), taps_w=st.integers(1, 3), stride=st.integers(1, 3),
       padding=st.integers(0, 3), extra_h=st.integers(0, 6), extra_w=st.integers(0, 6), n=st.integers(1, 3),
       c=st.integers(1, 3), o=st.integers(1, 3), block=st.sampled_from([1, 200, 10 ** 9]))
def test_conv2d_tap_forms_equal_im2col(xp, monkeypatch, seed, taps_h, taps_w, stride, padding, extra_h, extra_w, n, c,
                                       o, block):
    """Besides im2col, conv2d has two exact tap forms (taps on the space-to-depth grid for a
    kernel that is a multiple of the stride, row taps for stride 1; see _conv_form), chosen
    for speed. The forward and the weight gradient in every form must equal autograd's, on
    every backend, for rectangular kernels (k = 1 included), padding up to the kernel's size
    and blocks of one sample or several."""
    monkeypatch.setattr(P, "COLUMN_BLOCK", block)
    rng = numpy.random.default_rng(seed)
    kh, kw = taps_h * stride, taps_w * stride
    h, w = max(1, kh - 2 * padding) + extra_h, max(1, kw - 2 * padding) + extra_w
    oh, ow = _out_hw(h, w, kh, kw, stride, padding)
    x, wt, b = rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, kh, kw)), rng.standard_normal(o)
    g = rng.standard_normal((n, o, oh, ow))
    forward = ag_conv2d(x, wt, b, stride, padding)
    wgrad = autograd.grad(lambda w_: anp.sum(ag_conv2d(x, w_, None, stride, padding) * g))(wt)
    xs, ws, gs = xp.asarray(x), xp.asarray(wt), xp.asarray(g)
    forms = _tap_forms(kh, kw, stride)
    assert len(forms) == (3 if stride == 1 else 2)  # stride 1: the unmerged taps apply too
    for form in forms:
        assert_backend_close(P._conv2d(xs, ws, xp.asarray(b), stride, padding, form), forward, xp, rtol=1e-12,
                             atol=1e-12, what=f"forward ({form})")
        assert_backend_close(P._conv2d_weight_grad(gs, xs, wt.shape, stride, padding, form), wgrad, xp, rtol=1e-12,
                             atol=1e-12, what=f"weight gradient ({form})")


def test_conv2d_forms_are_chosen_by_rule_and_refused_where_they_do_not_apply():
    """The rules (_conv_form, _input_grad_method) on the paper's layers, and the refusals:
    asking for a form that does not apply is an error, not a wrong answer."""
    assert P._conv_form((4, 4), 2, 32, 32) == "taps" and P._conv_form((6, 3), 3, 1, 8) == "taps"
    assert P._conv_form((3, 3), 1, 32, 32) == "row taps" and P._conv_form((3, 3), 1, 64, 32) == "row taps"
    assert P._conv_form((3, 3), 1, 32, 64) == "im2col"  # more outputs than inputs
    assert P._conv_form((3, 3), 1, 3, 32) == "im2col"  # a first layer: products of 3 columns are too thin
    assert P._conv_form((3, 3), 2, 32, 32) == "im2col" and P._conv_form((4, 3), 2, 32, 32) == "im2col"
    assert P._input_grad_method(numpy.ones((64, 32, 3, 3)), 1, 1) == "row taps"
    assert P._input_grad_method(numpy.ones((32, 32, 4, 4)), 2, 1) == "gather"
    assert P._input_grad_method(numpy.ones((32, 1, 3, 3)), 1, 1) == "scatter"
    x, w = numpy.ones((1, 1, 5, 5)), numpy.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match="not a multiple of stride 2"):
        P._conv2d(x, w, None, 2, 1, "taps")
    with pytest.raises(ValueError, match="stride 1 only"):
        P._conv2d(x, w, None, 2, 1, "row taps")
    with pytest.raises(ValueError, match="must be one of"):
        P._conv2d(x, w, None, 1, 1, "winograd")
    with pytest.raises(ValueError, match="padding <= k-1"):
        P._conv2d_input_grad(numpy.ones((1, 1, 7, 7)), w, 1, 3, (5, 5), "row taps")


@pytest.mark.parametrize("block", [1, 500, 10 ** 9])
def test_conv2d_blocks_of_samples_give_the_same_numbers(xp, monkeypatch, block):
    """conv2d works through the batch in blocks of whole samples (for the cache); the block
    size must not change a single number: blocks of one sample, uneven blocks, one block."""
    rng = numpy.random.default_rng(7)
    x, wt, b = rng.standard_normal((5, 2, 7, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    g = rng.standard_normal((5, 3, 4, 3))
    expected = (ag_conv2d(x, wt, b, 2, 1), ag_conv2d_transpose(g, wt, 2, 1, (7, 6)))
    monkeypatch.setattr(P, "COLUMN_BLOCK", block)
    assert len(P._blocks(5, 4 * 3 * 9 * 2)) == (5 if block == 1 else 3 if block == 500 else 1)
    xs, ws, gs = xp.asarray(x), xp.asarray(wt), xp.asarray(g)
    assert_backend_close(P.conv2d(xs, ws, xp.asarray(b), 2, 1), expected[0], xp, rtol=1e-12, atol=1e-12, what="forward")
    for method in ("gather", "scatter"):
        assert_backend_close(P._conv2d_input_grad(gs, ws, 2, 1, (7, 6), method), expected[1], xp,
                             rtol=1e-12, atol=1e-12, what=f"input gradient ({method})")
    wgrad = autograd.grad(lambda w_: anp.sum(ag_conv2d(x, w_, None, 2, 1) * g))(wt)
    assert_backend_close(P._conv2d_weight_grad(gs, xs, wt.shape, 2, 1), wgrad, xp, rtol=1e-12, atol=1e-12,
                         what="weight gradient")


# ---------------------------------------------------------------- kink policies at exact values

def _grads(fn, *args, seed=None, diff=None):
    """(output, gradients) of fn on Vars for the array args (or the indices in `diff`)."""
    diff = range(len(args)) if diff is None else diff
    wrapped = [Var(a) if i in diff else a for i, a in enumerate(args)]
    out = fn(*wrapped)
    g = numpy.ones_like(out.value) if seed is None else seed
    gs = [numpy.asarray(x) for x in grad(out, [wrapped[i] for i in diff], seed=g)]
    for x in gs:
        assert numpy.all(numpy.isfinite(x)), "NaN or inf gradient at a kink"
    return numpy.asarray(out.value), gs


TIE_VALUES = st.sampled_from([-2.0, -1.0, -0.0, 0.0, 1.0, 2.0])


def _grid_array(draw, shape):
    """An array whose entries come from a few values, so that ties are frequent."""
    flat = draw(st.lists(TIE_VALUES, min_size=int(numpy.prod(shape, dtype=int)),
                         max_size=int(numpy.prod(shape, dtype=int))))
    return numpy.asarray(flat, dtype=numpy.float64).reshape(shape)


@SETTINGS
@given(data=st.data())
def test_relu_abs_sqrt_l2norm_at_zero(data):
    x = _grid_array(data.draw, _shape(data.draw, 1, 3))
    _, (gr,) = _grads(P.relu, x)
    numpy.testing.assert_array_equal(gr, (x > 0).astype(float))       # 0 at x == 0 (and -0.0)
    _, (ga,) = _grads(P.abs, x)
    numpy.testing.assert_array_equal(ga, numpy.sign(x))               # sign(x), 0 at x == 0
    out, (gs,) = _grads(P.sqrt, numpy.abs(x))
    expected = numpy.where(x != 0, 0.5 / numpy.sqrt(numpy.where(x != 0, numpy.abs(x), 1.0)), 0.0)
    numpy.testing.assert_allclose(gs, expected, rtol=1e-15)           # 0 at 0, not inf
    zero = numpy.zeros_like(x)
    _, (gn,) = _grads(lambda v: P.l2_norm(v, None, False), zero)
    numpy.testing.assert_array_equal(gn, zero)                        # zero vector: gradient 0
    axis = data.draw(st.integers(0, x.ndim - 1))
    _, (gn,) = _grads(lambda v: P.l2_norm(v, axis, True), x)
    norm = numpy.sqrt(numpy.sum(x * x, axis=axis, keepdims=True))
    numpy.testing.assert_allclose(gn, numpy.where(norm > 0, x / numpy.where(norm > 0, norm, 1.0), 0.0), rtol=1e-14)


@SETTINGS
@given(data=st.data())
def test_maximum_and_minimum_ties_go_to_the_first_argument(data):
    sa, sb = _broadcast_shapes(data.draw, 2)
    a, b = _grid_array(data.draw, sa), _grid_array(data.draw, sb)
    out_shape = numpy.broadcast_shapes(sa, sb)
    g = numpy.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).uniform(0.5, 1.5, out_shape)
    ab, bb = numpy.broadcast_to(a, out_shape), numpy.broadcast_to(b, out_shape)
    for fn, a_wins in ((P.maximum, ab >= bb), (P.minimum, ab <= bb)):  # a tie counts as a win for a
        out, (ga, gb) = _grads(fn, a, b, seed=g)
        numpy.testing.assert_array_equal(out, numpy.where(a_wins, ab, bb))
        # each output entry sends its gradient to exactly one argument, a at a tie
        numpy.testing.assert_allclose(ga, _host_unbroadcast(numpy.where(a_wins, g, 0.0), sa), rtol=1e-14)
        numpy.testing.assert_allclose(gb, _host_unbroadcast(numpy.where(a_wins, 0.0, g), sb), rtol=1e-14)


def _host_unbroadcast(full, shape):
    """Sum `full` down to `shape` (NumPy broadcasting rules, written out)."""
    lead = full.ndim - len(shape)
    full = numpy.sum(full, axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and full.shape[i] != 1)
    return numpy.sum(full, axis=axes, keepdims=True).reshape(shape)


@SETTINGS
@given(data=st.data())
def test_max_tie_goes_to_the_first_maximal_index(data):
    shape = _shape(data.draw, 1, 3)
    x = _grid_array(data.draw, shape)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    keep = data.draw(st.booleans())
    out, (gx,) = _grads(lambda v: P.max(v, axis, keep), x)
    numpy.testing.assert_array_equal(out, numpy.max(x, axis=axis, keepdims=keep))
    first = numpy.argmax(x, axis=axis)  # numpy's argmax: the first maximal index
    expected = numpy.zeros_like(x)
    numpy.put_along_axis(expected, numpy.expand_dims(first, axis), 1.0, axis=axis)
    numpy.testing.assert_array_equal(gx, expected)


@SETTINGS
@given(data=st.data(), theta=st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.floats(0.01, 3.0)))
def test_clipped_relu_policy_at_both_bounds(data, theta):
    """x gradient 1 strictly inside (0, theta), 0 at x == 0, at x == theta and outside;
    theta gradient 1 where max(x, 0) >= theta (the output is the threshold)."""
    n, f = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 6))
    kinds = numpy.asarray(data.draw(st.lists(st.sampled_from(["zero", "theta", "inside", "below", "above"]),
                                             min_size=n * f, max_size=n * f))).reshape(n, f)
    u = numpy.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).uniform(0.05, 0.95, (n, f))
    th = numpy.full((f,), theta)
    value = {"zero": 0.0 * u, "theta": th + 0.0 * u, "inside": u * th, "below": -1.0 - u, "above": th + 0.5 + u}
    x = numpy.select([kinds == k for k in value], list(value.values()))
    out, (gx, gt) = _grads(P.clipped_relu, x, th)
    exp_gx, exp_gt = numpy.zeros((n, f)), numpy.zeros((n, f))
    for idx in numpy.ndindex(n, f):
        xv = x[idx]
        inside = 0.0 < xv < theta
        exp_gx[idx] = 1.0 if inside else 0.0
        exp_gt[idx] = 1.0 if max(xv, 0.0) >= theta else 0.0
        if kinds[idx] in ("zero", "theta", "below", "above"):
            assert exp_gx[idx] == 0.0       # the stated policy at the bounds and outside
        if kinds[idx] in ("theta", "above"):
            assert exp_gt[idx] == 1.0
        if kinds[idx] == "inside" and theta > 0:
            assert exp_gx[idx] == 1.0 and exp_gt[idx] == 0.0
    numpy.testing.assert_array_equal(out, numpy.minimum(numpy.maximum(x, 0.0), th))
    numpy.testing.assert_array_equal(gx, exp_gx)
    numpy.testing.assert_array_equal(gt, exp_gt.sum(axis=0))


@SETTINGS
@given(data=st.data())
def test_clamped_maxmin_policy_at_ties_and_clamps(data):
    """a == b: a is the max, b the min; the max passes strictly below hi and feeds hi at
    max >= hi; the min passes strictly above lo and feeds lo at min <= lo."""
    n, h, s = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    x = _grid_array(data.draw, (n, 2 * h, s))
    hi = numpy.asarray(data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0]), min_size=h * s, max_size=h * s))).reshape(h, s)
    lo = numpy.asarray(data.draw(st.lists(st.sampled_from([-2.0, -1.0, 0.0]), min_size=h * s, max_size=h * s))).reshape(h, s)
    g = numpy.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).uniform(0.5, 1.5, x.shape)
    out, (gx, ghi, glo) = _grads(P.clamped_maxmin, x, hi, lo, seed=g)
    exp_gx, exp_hi, exp_lo = numpy.zeros_like(x), numpy.zeros_like(hi), numpy.zeros_like(lo)
    exp_out = numpy.zeros_like(x)
    for b, c, k in numpy.ndindex(n, h, s):
        a_val, b_val = x[b, c, k], x[b, c + h, k]
        mx_src, mn_src = ((c, c + h) if a_val >= b_val else (c + h, c))
        mx, mn = x[b, mx_src, k], x[b, mn_src, k]
        g_top, g_bot = g[b, c, k], g[b, c + h, k]
        exp_out[b, c, k], exp_out[b, c + h, k] = min(mx, hi[c, k]), max(mn, lo[c, k])
        if mx < hi[c, k]:
            exp_gx[b, mx_src, k] += g_top
        else:
            exp_hi[c, k] += g_top
        if mn > lo[c, k]:
            exp_gx[b, mn_src, k] += g_bot
        else:
            exp_lo[c, k] += g_bot
    numpy.testing.assert_array_equal(out, exp_out)
    numpy.testing.assert_allclose(gx, exp_gx, rtol=1e-15)
    numpy.testing.assert_allclose(ghi, exp_hi, rtol=1e-15)
    numpy.testing.assert_allclose(glo, exp_lo, rtol=1e-15)


# ---------------------------------------------------------------- a conv model on every backend

@pytest.mark.parametrize("activation", ["relu", "clipped_relu", "maxmin"])
def test_conv_model_loss_gradients_on_every_backend(xp, activation):
    import array_api_compat.numpy as host_xp
    shape, k, n = (1, 12, 12), 10, 6
    rng = numpy.random.default_rng(2024)
    x_h = rng.uniform(0.0, 1.0, (n,) + shape)
    onehot_h = numpy.eye(k)[rng.integers(0, k, n)]

    def run(ns):
        model = build_model("2c2f", shape, k, ns, ns.float64, numpy.random.default_rng(7), activation, 0.5)
        params = model.parameters()
        logits = model(ns.asarray(x_h))
        loss = P.sum(P.softmax_cross_entropy(logits, ns.asarray(onehot_h)), None, False)
        return params, logits.value, loss.value, grad(loss, list(params.values()))

    h_params, h_logits, h_loss, h_grads = run(host_xp)
    params, logits, loss, grads = run(xp)
    assert list(params) == list(h_params)
    assert_backend_close(logits, h_logits, xp, rtol=1e-10, atol=1e-12, what="logits")
    assert_backend_close(loss, h_loss, xp, rtol=1e-10, atol=1e-12, what="loss")
    for name, gb, gh in zip(params, grads, h_grads):
        assert_backend_close(gb, gh, xp, rtol=1e-9, atol=1e-12, what=f"gradient of {name}")
    # the comparison is not vacuous: every weight gets a nonzero gradient
    for name, gh in zip(h_params, h_grads):
        if name.endswith("weight"):
            assert numpy.any(to_numpy(gh) != 0), name
