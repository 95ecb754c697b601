"""Checking primitives the way lipref checks its own: gradients and comparisons.

`check_grads(fn, args, ...)` differentiates `fn` on the tape (lipref.tape) and compares
every requested gradient with
  (a) HIPS autograd's vector-Jacobian product of an independent autograd.numpy forward
      (`autograd_fn`, same signature as fn), when one is given, and
  (b) a central finite difference along a random direction v,
      <g, (f(x + hv) - f(x - hv)) / 2h> against <gradient, v>,
all in float64 on the host. It also checks that fn on plain arrays records no tape and
gives the tape's forward, and that every gradient has its argument's shape and is finite.

`assert_close(actual, expected, rtol=..., atol=...)` fails unless both arrays have the same
array namespace, dtype and shape, and then the same values within tolerance.

Checking your own primitive (needs the test extra: `pip install lipref[test]`):

    import autograd.numpy as anp
    import numpy
    from lipref.primitives import primitive
    from lipref.testing import check_grads

    def _cube(x):
        return x * x * x

    cube = primitive(_cube, lambda g, ans, x: 3.0 * g * x * x)
    check_grads(cube, (numpy.linspace(-1.0, 1.0, 7),), autograd_fn=lambda x: x ** 3)

A wrong vjp raises AssertionError naming the argument. Check away from kinks (ties,
zeros, thresholds): there the finite difference straddles two pieces, and the policy at the
kink itself is tested with exact values instead (tests/test_primitives.py does both).
"""
from array_api_compat import array_namespace

from .backend import host as numpy  # only backend.py imports NumPy itself
from .backend import to_host
from .tape import Var, grad, value_of

FD_STEP = 1e-6  # keep h * max|v| far below the distance to the nearest kink


def check_grads(fn, args, wrt=None, autograd_fn=None, seed=0, rtol=1e-10, atol=1e-10, forward_rtol=1e-12,
                fd_step=FD_STEP, fd_rtol=1e-6):
    """Check fn's tape gradients at `args` (see the module docstring); returns them.

    args: host float64 arrays and other arguments (shapes, axes, None); an argument may be
    a list of arrays (concat's). wrt: indices of the arguments to differentiate (default:
    every float64 array or list of them). Returns {index: gradient}, a list of gradients
    for a list argument."""
    args = tuple(args)
    wrt = tuple(i for i, a in enumerate(args) if _differentiable(a)) if wrt is None else tuple(wrt)
    rng = numpy.random.default_rng(seed)
    ans = _check_forward(fn, args, autograd_fn, forward_rtol)
    g = rng.standard_normal(numpy.shape(ans))
    grads = _tape_grads(fn, args, wrt, g)
    scale = 1.0 + float(numpy.sum(numpy.abs(g * ans)))
    for i, k in _slots(args, wrt):
        got = numpy.asarray(grads[i] if k is None else grads[i][k])
        arg = args[i] if k is None else args[i][k]
        where = f"argument {i}" + ("" if k is None else f"[{k}]")
        assert got.shape == numpy.shape(arg), f"gradient of {where} has shape {got.shape}, not {numpy.shape(arg)}"
        assert numpy.all(numpy.isfinite(got)), f"non-finite gradient for {where}"
        if autograd_fn is not None:
            expected = _autograd_vjp(autograd_fn, args, i, k, g)
            numpy.testing.assert_allclose(got, expected, rtol=rtol, atol=atol,
                                          err_msg=f"vjp of {where} disagrees with autograd")
        v = rng.standard_normal(numpy.shape(arg))
        fd, dot = _directional_fd(fn, args, i, k, v, g, fd_step), float(numpy.sum(got * v))
        assert abs(fd - dot) <= fd_rtol * (abs(dot) + scale), \
            f"{where}: finite difference {fd!r} vs <vjp, v> {dot!r}"
    return grads


def _differentiable(a):
    if isinstance(a, (list, tuple)):
        return bool(a) and all(_differentiable(e) for e in a)
    return isinstance(a, numpy.ndarray) and a.dtype == numpy.float64


def _slots(args, wrt):
    """(argument index, element index or None) for every array that is differentiated."""
    for i in wrt:
        if isinstance(args[i], (list, tuple)):
            yield from ((i, k) for k in range(len(args[i])))
        else:
            yield i, None


def _check_forward(fn, args, autograd_fn, rtol):
    plain = fn(*args)
    assert not isinstance(plain, Var), "no Var argument must mean no tape"
    ans = numpy.asarray(to_host(plain))
    if autograd_fn is not None:
        expected = numpy.asarray(autograd_fn(*args))
        assert ans.shape == expected.shape, f"forward has shape {ans.shape}, autograd's {expected.shape}"
        numpy.testing.assert_allclose(ans, expected, rtol=rtol, atol=rtol, err_msg="forward disagrees with autograd")
    return ans


def _tape_grads(fn, args, wrt, g):
    wrapped = list(args)
    for i in wrt:
        wrapped[i] = [Var(e) for e in args[i]] if isinstance(args[i], (list, tuple)) else Var(args[i])
    out = fn(*wrapped)
    assert isinstance(out, Var), "a Var argument must give a Var"
    leaves = [wrapped[i][k] if k is not None else wrapped[i] for i, k in _slots(args, wrt)]
    flat = iter(grad(out, leaves, seed=g))
    grads = {}
    for i in wrt:
        grads[i] = [next(flat) for _ in args[i]] if isinstance(args[i], (list, tuple)) else next(flat)
    assert numpy.array_equal(numpy.asarray(value_of(out)), fn(*args)), "the tape's forward differs from the plain one"
    return grads


def _replaced(args, i, k, value):
    moved = list(args)
    if k is None:
        moved[i] = value
    else:
        moved[i] = list(args[i])
        moved[i][k] = value
    return moved


def _autograd_vjp(autograd_fn, args, i, k, g):
    import autograd  # the test extra; imported here so that lipref.testing imports without it

    def at(a):
        return autograd_fn(*_replaced(args, i, k, a))
    x = args[i] if k is None else args[i][k]
    return numpy.asarray(autograd.make_vjp(at)(x)[0](g), dtype=numpy.float64)


def _directional_fd(fn, args, i, k, v, g, step):
    x = args[i] if k is None else args[i][k]

    def at(t):
        return float(numpy.sum(g * numpy.asarray(fn(*_replaced(args, i, k, x + t * v)))))
    return (at(step) - at(-step)) / (2 * step)


def assert_close(actual, expected, *, rtol, atol, what="result"):
    """Fail unless actual and expected have the same namespace, dtype and shape, then values."""
    got_ns, want_ns = array_namespace(actual), array_namespace(expected)
    assert got_ns is want_ns, f"{what}: namespace {got_ns.__name__}, expected {want_ns.__name__}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, expected {expected.dtype}"
    assert tuple(actual.shape) == tuple(expected.shape), \
        f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    numpy.testing.assert_allclose(to_numpy(actual), to_numpy(expected), rtol=rtol, atol=atol, err_msg=what)


def assert_backend_close(actual, expected, xp, rtol=1e-7, atol=1e-9, what="result"):
    """Fail unless `actual` is an array of backend `xp` and equals `expected` (host data,
    any namespace) within tolerance: the check for results computed on another backend."""
    assert not isinstance(actual, numpy.ndarray) or "numpy" in xp.__name__, \
        f"{what}: got a NumPy array from backend {xp.__name__}"
    got_ns = array_namespace(actual)
    assert got_ns.__name__.split(".")[-1] == xp.__name__.split(".")[-1] or got_ns is xp, \
        f"{what}: array of namespace {got_ns.__name__}, expected {xp.__name__}"
    numpy.testing.assert_allclose(to_numpy(actual), to_numpy(expected), rtol=rtol, atol=atol, err_msg=what)


def to_numpy(a):
    """A host NumPy copy of an array of any backend (Python numbers become 0-d arrays)."""
    if isinstance(a, (float, int)):
        return numpy.asarray(a)
    return numpy.asarray(to_host(a))
