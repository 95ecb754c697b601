"""Structural primitives (slices, concatenation, broadcasting, reshapes) and reductions."""
from ..backend import namespace
from .core import cast_like, primitive, shape_of, unbroadcast

# ---------------------------------------------------------------- shapes and reductions

def _channel_slice(x, start, stop):
    """x[:, start:stop, ...] (a block of channels or features along axis 1)."""
    return x[:, start:stop, ...]


def _channel_slice_vjp(g, ans, x, start, stop):
    # the slice's adjoint: g placed back at its channels, zeros elsewhere
    xp = namespace(g)
    before = xp.zeros((g.shape[0], start) + tuple(g.shape[2:]), dtype=g.dtype)
    after = xp.zeros((g.shape[0], x.shape[1] - stop) + tuple(g.shape[2:]), dtype=g.dtype)
    return xp.concat([before, g, after], axis=1)


channel_slice = primitive(_channel_slice, _channel_slice_vjp)


def _concat(arrays, axis):
    """The arrays (a list or tuple) joined along `axis`; differentiated in each of them."""
    return namespace(*arrays).concat(list(arrays), axis=axis)


def _concat_vjp(g, ans, arrays, axis):
    # one slice of g per array, at that array's place along the axis
    axis = axis % g.ndim
    pieces, start = [], 0
    for a in arrays:
        stop = start + a.shape[axis]
        pieces.append(g[(slice(None),) * axis + (slice(start, stop), Ellipsis)])
        start = stop
    return pieces


concat = primitive(_concat, _concat_vjp)


def _broadcast_to(x, shape):
    """x broadcast to `shape` (NumPy's rules: leading axes added, sides of 1 stretched)."""
    return namespace(x).broadcast_to(x, tuple(shape))


broadcast_to = primitive(_broadcast_to, lambda g, ans, x, shape: unbroadcast(g, shape_of(x)))


def _reshape(x, shape):
    """x with a new shape (same elements, C order)."""
    return namespace(x).reshape(x, shape)


reshape = primitive(_reshape, lambda g, ans, x, shape: namespace(g).reshape(g, shape_of(x)))


def _expand_back(g, x, axis, keepdims):
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


def _sum(x, axis, keepdims):
    """Sum over `axis` (None, int or tuple)."""
    return namespace(x).sum(x, axis=axis, keepdims=keepdims)


sum = primitive(_sum, lambda g, ans, x, axis, keepdims: _expand_back(g, x, axis, keepdims))


def _l2_norm(x, axis, keepdims):
    """Euclidean norm over `axis`; the gradient at a zero vector is taken as 0."""
    xp = namespace(x)
    return xp.sqrt(xp.sum(x * x, axis=axis, keepdims=keepdims))


def _l2_norm_vjp(g, ans, x, axis, keepdims):
    xp = namespace(x)
    # g / norm on the reduced shape (0 where the norm is 0), then one product with x: where
    # the norm is 0 every entry of x is 0, so the product is 0 there too
    scale = xp.where(ans > 0, g / xp.where(ans > 0, ans, xp.ones_like(ans)), xp.zeros_like(ans))
    return x * _expand_back(scale, x, axis, keepdims)


l2_norm = primitive(_l2_norm, _l2_norm_vjp)


def _max(x, axis, keepdims):
    """Maximum over one axis; at a tie the gradient goes to the first maximal entry."""
    return namespace(x).max(x, axis=axis, keepdims=keepdims)


def _max_vjp(g, ans, x, axis, keepdims):
    xp = namespace(x)
    is_max = x == _expand_back(ans, x, axis, keepdims)
    # first maximal entry along the axis: is_max and no earlier maximal entry
    earlier = xp.cumulative_sum(xp.astype(is_max, xp.int32), axis=axis) - xp.astype(is_max, xp.int32)
    first = is_max & (earlier == 0)
    return _expand_back(g, x, axis, keepdims) * cast_like(first, x)


max = primitive(_max, _max_vjp)


def _logsumexp(x, axis):
    """log(sum(exp(x))) over `axis`, kept in the output (keepdims), computed stably."""
    xp = namespace(x)
    m = xp.max(x, axis=axis, keepdims=True)
    return m + xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True))


logsumexp = primitive(_logsumexp, lambda g, ans, x, axis: g * namespace(x).exp(x - ans))


def _softmax_cross_entropy(logits, onehot):
    """Per-sample cross-entropy -log softmax(logits)[label], labels given one-hot (N, K)."""
    xp = namespace(logits)
    return xp.reshape(_logsumexp(logits, 1), (logits.shape[0],)) - xp.sum(logits * onehot, axis=1)


def _softmax_cross_entropy_vjp(g, ans, logits, onehot):
    xp = namespace(logits)
    p = xp.exp(logits - _logsumexp(logits, 1))
    return xp.reshape(g, (g.shape[0], 1)) * (p - onehot)


softmax_cross_entropy = primitive(_softmax_cross_entropy, _softmax_cross_entropy_vjp)

