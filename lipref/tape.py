"""A minimal reverse-mode tape.

A `Var` is an array plus the list of Vars it was computed from, each paired with a
function that turns the gradient of the Var into the gradient of that parent (a
vector-Jacobian product). Primitives (lipref/primitives/) create Vars; `grad` walks
the graph backwards once, in reverse topological order, summing gradients.
Operations on plain arrays create no tape at all, so inference pays nothing for autodiff.
Var's arithmetic operators (`a * b + c`) are installed by lipref.primitives, once the
primitives they call exist; this module imports nothing from there.
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
