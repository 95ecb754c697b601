"""`primitive`: lift a forward function and its vector-Jacobian products onto the tape.

`primitive(forward, *vjps)` returns a function that, called on plain arrays, returns a
plain array (no tape); called with any differentiable argument that is a Var, returns a
Var whose parents carry `vjps[i](g, ans, *args)`, the gradient sent to argument i given the
upstream gradient g. A None in `vjps` marks an argument that is not differentiated
(shapes, strides, masks, labels); a list or tuple argument holding Vars (concat's arrays)
gets one vjp that returns a gradient per element. A forward that computes something its
backward needs again declares `residuals=True`: it returns (ans, residuals), and each vjp
is called `vjp(g, ans, residuals, *args)` (JAX's custom_vjp: the forward hands its
residuals to its backward, which neither recomputes them nor finds them elsewhere). Every primitive lands in PRIMITIVES, so
one checker (lipref.testing.check_grads, run by tests/test_primitives.py) tests them all.
"""
from ..backend import namespace
from ..tape import Var

PRIMITIVES = {}  # forward's name ("_conv2d") -> the lifted primitive


def primitive(forward, *vjps, residuals=False):
    """Lift `forward` onto the tape with `vjps[i]` as argument i's backward (see above)."""
    def apply(*args):
        values = tuple(_unwrap(a) for a in args)
        ans, res = forward(*values) if residuals else (forward(*values), None)
        parents = []
        for i, a in enumerate(args):
            if i >= len(vjps) or vjps[i] is None:
                continue
            vjp = vjps[i] if not residuals else _with_residuals(vjps[i], res)
            if isinstance(a, Var):
                parents.append((a, _bind(vjp, ans, values)))
            elif _holds_var(a):  # a sequence argument (concat's arrays): one parent per Var in it
                each = _bind_each(vjp, ans, values, [k for k, e in enumerate(a) if isinstance(e, Var)])
                parents.extend((e, each(k)) for k, e in enumerate(a) if isinstance(e, Var))
        return Var(ans, tuple(parents)) if parents else ans

    apply.__name__ = forward.__name__
    apply.__doc__ = forward.__doc__
    apply.forward = (lambda *args: forward(*args)[0]) if residuals else forward
    apply.vjps = vjps
    PRIMITIVES[forward.__name__] = apply
    return apply


def _with_residuals(vjp, res):
    return lambda g, ans, *values: vjp(g, ans, res, *values)


def _bind(vjp, ans, values):
    return lambda g: vjp(g, ans, *values)


def _holds_var(a):
    return isinstance(a, (list, tuple)) and any(isinstance(e, Var) for e in a)


def _unwrap(a):
    if isinstance(a, Var):
        return a.value
    return type(a)(e.value if isinstance(e, Var) else e for e in a) if _holds_var(a) else a


def _bind_each(vjp, ans, values, wanted):
    """Per-element vjps of a sequence argument: `vjp` returns one gradient per element; it
    runs once per upstream g (the tape hands every parent the same g) and is dropped once
    each wanted element has taken its part, so the graph does not keep it alive."""
    cache = {}

    def part(k):
        def take(g):
            if cache.get("g") is not g:
                cache.clear()
                cache.update(g=g, parts=vjp(g, ans, *values), left=set(wanted))
            piece = cache["parts"][k]
            cache["left"].discard(k)
            if not cache["left"]:
                cache.clear()
            return piece
        return take
    return part


def unbroadcast(g, shape):
    """Sum `g` over the axes that broadcasting added or stretched to reach g.shape from `shape`."""
    xp = namespace(g)
    while g.ndim > len(shape):
        g = xp.sum(g, axis=0)
    for axis, n in enumerate(shape):
        if n == 1 and g.shape[axis] != 1:
            g = xp.sum(g, axis=axis, keepdims=True)
    return g


def shape_of(a):
    """The shape of an array as a tuple; () for a Python scalar."""
    return tuple(a.shape) if hasattr(a, "shape") else ()


def cast_like(mask, like):
    """A boolean mask as numbers of `like`'s dtype."""
    return namespace(like).astype(mask, like.dtype)

