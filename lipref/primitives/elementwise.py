"""Elementwise primitives: arithmetic with broadcasting, and the activations.

Kinks are written policy, stated in each docstring: at a tie or a boundary the gradient
goes to exactly one side, never split and never NaN.
"""
from ..backend import namespace
from ..tape import cast_like, primitive, shape_of, unbroadcast

# ---------------------------------------------------------------- elementwise arithmetic

def _add(a, b):
    """a + b with broadcasting."""
    return a + b


add = primitive(_add,
                lambda g, ans, a, b: unbroadcast(g, shape_of(a)),
                lambda g, ans, a, b: unbroadcast(g, shape_of(b)))


def _subtract(a, b):
    """a - b with broadcasting."""
    return a - b


subtract = primitive(_subtract,
                     lambda g, ans, a, b: unbroadcast(g, shape_of(a)),
                     lambda g, ans, a, b: unbroadcast(-g, shape_of(b)))


def _multiply(a, b):
    """a * b with broadcasting."""
    return a * b


multiply = primitive(_multiply,
                     lambda g, ans, a, b: unbroadcast(g * b, shape_of(a)),
                     lambda g, ans, a, b: unbroadcast(g * a, shape_of(b)))


def _divide(a, b):
    """a / b with broadcasting."""
    return a / b


divide = primitive(_divide,
                   lambda g, ans, a, b: unbroadcast(g / b, shape_of(a)),
                   lambda g, ans, a, b: unbroadcast(-g * ans / b, shape_of(b)))


def _negative(a):
    """-a."""
    return -a


negative = primitive(_negative, lambda g, ans, a: -g)


def _square(a):
    """a * a."""
    return a * a


square = primitive(_square, lambda g, ans, a: 2 * g * a)


def _sqrt(a):
    """Square root; the gradient at 0 is taken as 0 (no infinities on the tape)."""
    return namespace(a).sqrt(a)


def _sqrt_vjp(g, ans, a):
    xp = namespace(ans)
    safe = xp.where(ans > 0, ans, xp.ones_like(ans))
    return xp.where(ans > 0, g / (2 * safe), xp.zeros_like(ans))


sqrt = primitive(_sqrt, _sqrt_vjp)


def _exp(a):
    """e ** a."""
    return namespace(a).exp(a)


exp = primitive(_exp, lambda g, ans, a: g * ans)


def _log(a):
    """Natural logarithm."""
    return namespace(a).log(a)


log = primitive(_log, lambda g, ans, a: g / a)


def _abs(a):
    """|a|; gradient sign(a), 0 at a == 0."""
    return namespace(a).abs(a)


abs = primitive(_abs, lambda g, ans, a: g * namespace(a).sign(a))


def _maximum(a, b):
    """Elementwise max; at a tie the gradient goes to `a`."""
    return namespace(a, b).maximum(a, b)


maximum = primitive(_maximum,
                    lambda g, ans, a, b: unbroadcast(g * cast_like(a >= b, g), shape_of(a)),
                    lambda g, ans, a, b: unbroadcast(g * cast_like(a < b, g), shape_of(b)))


def _minimum(a, b):
    """Elementwise min; at a tie the gradient goes to `a`."""
    return namespace(a, b).minimum(a, b)


minimum = primitive(_minimum,
                    lambda g, ans, a, b: unbroadcast(g * cast_like(a <= b, g), shape_of(a)),
                    lambda g, ans, a, b: unbroadcast(g * cast_like(a > b, g), shape_of(b)))


def _where(cond, a, b):
    """a where cond else b (cond is not differentiated)."""
    return namespace(a, b).where(cond, a, b)


def _where_vjp_a(g, ans, cond, a, b):
    return unbroadcast(g * cast_like(cond, g), shape_of(a))


def _where_vjp_b(g, ans, cond, a, b):
    return unbroadcast(g * cast_like(~cond, g), shape_of(b))


where = primitive(_where, None, _where_vjp_a, _where_vjp_b)


# ---------------------------------------------------------------- activations

def _relu(x):
    """max(x, 0) (NaN stays NaN); gradient 1 where x > 0 and 0 at x == 0."""
    return namespace(x).maximum(x, 0.0)


relu = primitive(_relu, lambda g, ans, x: g * cast_like(x > 0, g))


def _clipped_relu(x, theta):
    """min(max(x, 0), theta) with a per-neuron threshold theta (broadcast over the batch).

    Gradient to x: 1 strictly inside (0, theta), 0 at both bounds and outside.
    Gradient to theta: 1 where the output is the threshold, i.e. where max(x, 0) >= theta.
    """
    xp = namespace(x, theta)
    return xp.minimum(xp.where(x > 0, x, xp.zeros_like(x)), theta)


def _clipped_relu_vjp_x(g, ans, x, theta):
    return g * cast_like((x > 0) & (x < theta), g)


def _clipped_relu_vjp_theta(g, ans, x, theta):
    xp = namespace(x)
    return unbroadcast(g * cast_like(xp.where(x > 0, x, xp.zeros_like(x)) >= theta, g), shape_of(theta))


clipped_relu = primitive(_clipped_relu, _clipped_relu_vjp_x, _clipped_relu_vjp_theta)


def _halves(x):
    h = x.shape[1] // 2
    return x[:, :h, ...], x[:, h:, ...]


def _clamped_maxmin(x, hi, lo):
    """Clamped MaxMin over channel pairs: x's axis 1 splits in halves a, b and the output is
    [min(max(a, b), hi), max(min(a, b), lo)], with hi, lo of the half's feature shape.

    Ties: where a == b, a is taken as the max and b as the min, so each input feeds exactly
    one output. Clamps: the gradient passes strictly inside (max < hi, min > lo) and goes to
    the threshold at the bound (max >= hi to hi, min <= lo to lo).
    """
    xp = namespace(x, hi, lo)
    if x.shape[1] % 2:
        raise ValueError(f"clamped MaxMin needs an even number of channels, got {x.shape[1]}")
    a, b = _halves(x)
    return xp.concat([xp.minimum(xp.maximum(a, b), hi), xp.maximum(xp.minimum(a, b), lo)], axis=1)


def _clamped_maxmin_vjp_x(g, ans, x, hi, lo):
    xp = namespace(g)
    a, b = _halves(x)
    g_top, g_bottom = _halves(g)
    a_is_max = a >= b
    g_max = g_top * cast_like(xp.maximum(a, b) < hi, g)
    g_min = g_bottom * cast_like(xp.minimum(a, b) > lo, g)
    zero = xp.zeros_like(g_max)
    g_a = xp.where(a_is_max, g_max, zero) + xp.where(a_is_max, zero, g_min)
    g_b = xp.where(a_is_max, zero, g_max) + xp.where(a_is_max, g_min, zero)
    return xp.concat([g_a, g_b], axis=1)


def _clamped_maxmin_vjp_hi(g, ans, x, hi, lo):
    xp = namespace(g)
    a, b = _halves(x)
    return unbroadcast(_halves(g)[0] * cast_like(xp.maximum(a, b) >= hi, g), shape_of(hi))


def _clamped_maxmin_vjp_lo(g, ans, x, hi, lo):
    xp = namespace(g)
    a, b = _halves(x)
    return unbroadcast(_halves(g)[1] * cast_like(xp.minimum(a, b) <= lo, g), shape_of(lo))


clamped_maxmin = primitive(_clamped_maxmin, _clamped_maxmin_vjp_x, _clamped_maxmin_vjp_hi,
                           _clamped_maxmin_vjp_lo)

