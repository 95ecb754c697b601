"""Nonlinear reductions: the l2 norm, the maximum, log-sum-exp and softmax cross-entropy."""
from ..backend import namespace
from ..tape import cast_like, expand_back, primitive

def _l2_norm(x, axis, keepdims):
    """Euclidean norm over `axis`; the gradient at a zero vector is taken as 0."""
    xp = namespace(x)
    return xp.sqrt(xp.sum(x * x, axis=axis, keepdims=keepdims))


def _l2_norm_vjp(g, ans, x, axis, keepdims):
    xp = namespace(x)
    # g / norm on the reduced shape (0 where the norm is 0), then one product with x: where
    # the norm is 0 every entry of x is 0, so the product is 0 there too
    scale = xp.where(ans > 0, g / xp.where(ans > 0, ans, xp.ones_like(ans)), xp.zeros_like(ans))
    return x * expand_back(scale, x, axis, keepdims)


l2_norm = primitive(_l2_norm, _l2_norm_vjp)


def _max(x, axis, keepdims):
    """Maximum over one axis; at a tie the gradient goes to the first maximal entry."""
    return namespace(x).max(x, axis=axis, keepdims=keepdims)


def _max_vjp(g, ans, x, axis, keepdims):
    xp = namespace(x)
    is_max = x == expand_back(ans, x, axis, keepdims)
    # first maximal entry along the axis: is_max and no earlier maximal entry
    earlier = xp.cumulative_sum(xp.astype(is_max, xp.int32), axis=axis) - xp.astype(is_max, xp.int32)
    first = is_max & (earlier == 0)
    return expand_back(g, x, axis, keepdims) * cast_like(first, x)


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
