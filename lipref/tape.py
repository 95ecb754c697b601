"""A minimal reverse-mode tape, and `primitive`, which puts an operation on it.

A `Var` is an array plus the list of Vars it was computed from, each paired with a
function that turns the gradient of the Var into the gradient of that parent (a
vector-Jacobian product). Primitives (lipref/primitives/, lifted by `primitive` below)
create Vars; `grad` walks the graph backwards once, in reverse topological order, summing
gradients. Operations on plain arrays create no tape at all, so inference pays nothing for
autodiff. Var's arithmetic operators (`a * b + c`) are installed by lipref.primitives, once
the primitives they call exist; this module imports nothing from there.

`primitive(forward, *vjps)` returns a function that, called on plain arrays, returns a
plain array (no tape); called with any differentiable argument that is a Var, returns a
Var whose parents carry `vjps[i](g, ans, *args)`, the gradient sent to argument i given the
upstream gradient g. A None in `vjps` marks an argument that is not differentiated
(shapes, strides, masks, labels); a list or tuple argument holding Vars (concat's arrays)
gets one vjp that returns a gradient per element. A forward that computes something its
backward needs again declares `residuals=True`: it returns (ans, residuals), and each vjp
is called `vjp(g, ans, residuals, *args)` (JAX's custom_vjp: the forward hands its
residuals to its backward, which neither recomputes them nor finds them elsewhere). Every
primitive lands in PRIMITIVES, so one checker (lipref.testing.check_grads, run by
tests/test_primitives.py) tests them all.
"""
from .backend import namespace


class Var:
    """A value on the tape. `parents` is a tuple of (parent Var, vjp) pairs."""

    __slots__ = ("value", "parents")
    # Make `array op Var` defer to Var's reflected operators instead of NumPy building an
    # object array (NumPy honours __array_ufunc__ = None; other libraries return NotImplemented).
    __array_ufunc__ = None

    def __init__(self, value, parents=()):
        self.value = value
        self.parents = parents

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    @property
    def ndim(self):
        return self.value.ndim

    def __repr__(self):
        return f"Var(shape={tuple(self.value.shape)}, dtype={self.value.dtype})"


def value_of(a):
    """The array inside a Var, or `a` itself."""
    return a.value if isinstance(a, Var) else a


def _reverse_topological(output):
    """Vars reachable from `output`, each listed after every Var computed from it."""
    order, seen, stack = [], set(), [(output, False)]
    while stack:  # iterative DFS: deep graphs (long power iterations) must not hit recursion limits
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for parent, _ in node.parents:
            if id(parent) not in seen:
                stack.append((parent, False))
    order.reverse()
    return order


def grad(output, wrt, seed=None):
    """Gradients of `output` with respect to each Var in `wrt` (zeros where unused).

    `output` must be a scalar Var unless `seed` (the upstream gradient, same shape as
    output) is given.
    """
    if not isinstance(output, Var):
        raise TypeError("grad: output does not depend on any Var")
    xp = namespace(output.value)
    if seed is None:
        if output.value.ndim != 0:
            raise ValueError(f"grad: output must be a scalar, got shape {tuple(output.value.shape)}; pass seed")
        seed = xp.ones_like(output.value)
    wanted = {id(v): v for v in wrt}
    grads = {id(output): seed}
    result = {}
    for node in _reverse_topological(output):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        if id(node) in wanted:
            result[id(node)] = g
        for parent, vjp in node.parents:
            gp = vjp(g)
            key = id(parent)
            grads[key] = gp if key not in grads else grads[key] + gp
    out = []
    for v in wrt:
        g = result.get(id(v))
        out.append(g if g is not None else namespace(v.value).zeros_like(v.value))
    return out


# ---------------------------------------------------------------- primitives on the tape

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


def expand_back(g, x, axis, keepdims):
    """Broadcast a reduction's gradient g back to x's shape."""
    xp = namespace(g)
    if not keepdims and axis is not None:
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        axes = sorted(ax % x.ndim for ax in axes)
        shape = list(g.shape)
        for ax in axes:
            shape.insert(ax, 1)
        g = xp.reshape(g, tuple(shape))
    elif not keepdims:
        g = xp.reshape(g, (1,) * x.ndim)
    return xp.broadcast_to(g, shape_of(x))


def shape_of(a):
    """The shape of an array as a tuple; () for a Python scalar."""
    return tuple(a.shape) if hasattr(a, "shape") else ()


def cast_like(mask, like):
    """A boolean mask as numbers of `like`'s dtype."""
    return namespace(like).astype(mask, like.dtype)

