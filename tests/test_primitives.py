"""Every primitive in lipref.primitives.PRIMITIVES, checked by one table-driven checker.

Each entry of CASES says how hypothesis draws the primitive's arguments (shapes, strides,
paddings, axes; values from a drawn seed, float64), which arguments are differentiated, an
independent re-implementation of the forward in autograd.numpy, and how far the drawn
point is from the primitive's kinks. lipref.testing.check_grads then compares, for every
differentiable argument, the tape's gradient with HIPS autograd's vector-Jacobian product
and with a central finite difference along a random direction, at points at least
KINK_GAP away from every kink. A primitive registered without a case fails
`test_every_primitive_has_a_case`.

Also here: conv2d against a direct loop and torch, the conv2d / conv2d_transpose adjoint
identity, the kink policies at exact ties and boundaries (as each docstring states them),
every primitive on every backend, and a small conv model's loss gradients on every backend.
With kernels on these run through the conv kernels; with LIPREF_REFERENCE=1 through the
plain definitions (tests/test_kernels_conv.py checks the kernels against the plain ones).
"""
from dataclasses import dataclass
from typing import Callable, Optional

import autograd.numpy as anp
import numpy
import pytest
from autograd.tracer import getval
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support import assert_backend_close, to_numpy

from lipref import primitives as P
from lipref.bounds.margins import ball_box_support  # registers the _ball_box_maximum primitive
from lipref.models import build_model
from lipref.primitives import PRIMITIVES
from lipref.tape import Var, grad
from lipref.testing import check_grads

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KINK_GAP = 1e-3   # smooth checks only at points this far from any tie or boundary (check_grads' h is 1e-6)


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


def _draw_concat(d):
    rng = _rng(d)
    shape = _shape(d, 1, 3)
    axis = d(st.integers(-len(shape), len(shape) - 1))
    sides = d(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    arrays = [_normal(rng, shape[:axis % len(shape)] + (k,) + shape[axis % len(shape) + 1:]) for k in sides]
    return arrays, axis


def _draw_broadcast_to(d):
    rng = _rng(d)
    full = _shape(d, 0, 3)
    drop = d(st.integers(0, len(full)))
    shape = tuple(1 if d(st.booleans()) else s for s in full[drop:])
    return _normal(rng, shape), full


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


def _draw_ball_box(d):
    rng = _rng(d)
    m, dim = d(st.integers(1, 3)), d(st.integers(1, 5))
    c = _normal(rng, (m, dim))
    lo, hi = -rng.uniform(0.1, 1.0, (m, dim)), rng.uniform(0.1, 1.0, (m, dim))
    inside = d(st.booleans())  # the box inside the ball, or the sphere cutting it
    radius = rng.uniform(2.0, 3.0, m) * (3 * dim if inside else 0.2)
    return c, lo, hi, radius


def _ball_box_dual(c, lo, hi, radius):
    """The ball-and-box maximum as its Lagrangian dual at the solver's multiplier lam (held
    constant): R^2 / (2 lam) + sum(c d - d^2 / (2 lam)), d = clip(lam c, lo, hi); the box
    corner's value where the box lies in the ball. Equal to the maximum at that lam, and by
    the envelope theorem autograd's gradient of it at fixed lam is the maximum's."""
    _, lam, inside = ball_box_support(*(getval(a) for a in (c, lo, hi, radius)))
    lam = numpy.where(inside, 1.0, lam)[:, None]
    d = anp.minimum(anp.maximum(lam * c, lo), hi)
    dual = radius ** 2 / (2 * lam[:, 0]) + anp.sum(c * d - d * d / (2 * lam), axis=1)
    corner = anp.sum(anp.where(c > 0, c * hi, c * lo), axis=1)
    return anp.where(inside, corner, dual)


def _ball_box_kink(c, lo, hi, radius):
    """Distance to the solver's breakpoints: a coordinate reaching its bound, or the box
    corner reaching the sphere."""
    _, lam, inside = ball_box_support(c, lo, hi, radius)
    corner = numpy.where(c > 0, hi, lo)
    to_sphere = numpy.abs(numpy.sqrt(numpy.sum(corner ** 2, axis=1)) - radius)
    to_bound = numpy.minimum(numpy.abs(lam[:, None] * c - hi), numpy.abs(lam[:, None] * c - lo))
    return min(_min_abs(to_sphere), _min_abs(numpy.where(inside[:, None], numpy.inf, to_bound)))


CASES = {
    "_ball_box_maximum": Case(_draw_ball_box, _ball_box_dual, (0, 1, 2, 3), kink=_ball_box_kink),
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
    "_concat": Case(_draw_concat, lambda arrays, axis: anp.concatenate(list(arrays), axis=axis), (0,)),
    # x + zeros: autograd's own broadcast_to vjp cannot add leading axes
    "_broadcast_to": Case(_draw_broadcast_to, lambda x, shape: x + anp.zeros(shape), (0,)),
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
    if isinstance(a, (list, tuple)):
        return bool(a) and all(_is_array(e) for e in a)
    return isinstance(a, numpy.ndarray) and a.dtype == numpy.float64


@pytest.mark.parametrize("name", sorted(CASES))
@SETTINGS
@given(data=st.data())
def test_primitive_matches_autograd_and_finite_differences(name, data):
    case, apply = CASES[name], PRIMITIVES[name]
    args = data.draw(st.composite(lambda d: case.draw(d))(), label="args")
    if case.kink is not None:
        assume(case.kink(*args) > KINK_GAP)
    seed = data.draw(st.integers(0, 2**32 - 1), label="g seed")
    check_grads(apply, args, wrt=[i for i in case.diff if _is_array(args[i])], autograd_fn=case.ref, seed=seed)


def _on(xp, a):
    """A host argument moved to backend xp (lists element by element; non-arrays as they are)."""
    if isinstance(a, list):
        return [_on(xp, e) for e in a]
    return xp.asarray(a) if isinstance(a, numpy.ndarray) else a


def _tape_grads(apply, args, which, g):
    """(output Var, gradients of the arrays of args[i], i in `which`, flattened in order)."""
    wrapped = [([Var(e) for e in a] if isinstance(a, list) else Var(a)) if i in which else a
               for i, a in enumerate(args)]
    leaves = [v for i in which for v in (wrapped[i] if isinstance(wrapped[i], list) else [wrapped[i]])]
    out = apply(*wrapped)
    return out, grad(out, leaves, seed=g)


@pytest.mark.parametrize("name", sorted(CASES))
@settings(SETTINGS, max_examples=3)
@given(data=st.data())
def test_primitive_on_every_backend(xp, name, data):
    """Forward and every vjp on the backend under test equal NumPy's (same host-drawn inputs)."""
    case, apply = CASES[name], PRIMITIVES[name]
    args = data.draw(st.composite(lambda d: case.draw(d))(), label="args")
    rng = numpy.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="g seed"))
    which = [i for i in case.diff if _is_array(args[i])]
    g = rng.standard_normal(numpy.shape(apply.forward(*args)))
    host_out, host_grads = _tape_grads(apply, args, which, g)
    out, grads = _tape_grads(apply, tuple(_on(xp, a) for a in args), which, xp.asarray(g))
    assert_backend_close(out.value, host_out.value, xp, rtol=1e-12, atol=1e-12, what=f"{name} forward")
    assert len(grads) == len(host_grads)
    for k, (gi, hi) in enumerate(zip(grads, host_grads)):
        assert_backend_close(gi, hi, xp, rtol=1e-12, atol=1e-12, what=f"{name} gradient {k}")


def test_concat_differentiates_only_its_vars_and_runs_its_vjp_once(monkeypatch):
    """A list argument: each Var in it gets its own slice of g, plain arrays in it get
    nothing, and the vjp runs once per upstream gradient however many Vars there are."""
    a, b, c = Var(numpy.ones((2, 1))), numpy.zeros((2, 2)), Var(numpy.full((2, 3), 2.0))
    out = P.concat([a, b, c], 1)
    assert out.value.shape == (2, 6) and [p for p, _ in out.parents] == [a, c]
    seed = numpy.arange(12.0).reshape(2, 6)
    ga, gc = grad(out, [a, c], seed=seed)
    numpy.testing.assert_array_equal(ga, seed[:, :1])
    numpy.testing.assert_array_equal(gc, seed[:, 3:])

    calls = []

    def _counted_concat(arrays, axis):
        return P.concat.forward(arrays, axis)

    monkeypatch.setitem(PRIMITIVES, "_counted_concat", None)  # removed again after the test
    counted = P.primitive(_counted_concat, lambda *args: calls.append(1) or P.concat.vjps[0](*args))
    grad(counted([a, b, c, a], 1), [a, c], seed=numpy.ones((2, 7)))
    assert len(calls) == 1


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
