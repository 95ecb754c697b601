"""From Lipschitz bounds to worst-case logits and certificates.

For the label (or prediction) y and every other class j, an upper bound on
(z_j - z_y)(x') over the ball is (z_j - z_y)(x) + V_j, where V_j bounds the change of the
last layer's margin (w_j - w_y)^T (h(x') - h(x)):
- GloRo: V_j = R ||w_j - w_y||, with R = eps * L the radius of the penultimate activations;
- BCP (the paper's tighter last layer): V_j = max c^T d over d in the ball ||d|| <= R
  intersected with the box [lower - h, upper - h] of the penultimate activations, c = w_j - w_y.
Worst-case logits are z_y for y and z_j + V_j otherwise; a sample is certified when every
worst-case logit of another class is strictly below z_y (a tie is never certified).
"""
from .. import primitives as P
from ..backend import namespace
from ..tape import value_of


def one_hot(labels, n_classes, dtype):
    xp = namespace(labels)
    return xp.astype(labels[:, None] == xp.arange(n_classes, dtype=labels.dtype)[None, :], dtype)


def class_differences(weight, onehot):
    """(N, K, D): w_j - w_y for every sample and class j (zero row at j = y)."""
    w_y = P.matmul(onehot, weight)  # (N, D)
    n, d = w_y.shape
    k = weight.shape[0]
    return P.subtract(P.reshape(weight, (1, k, d)), P.reshape(w_y, (n, 1, d)))


def gloro_worst_logits(logits, last_weight, onehot, radius):
    """z_j + R ||w_j - w_y|| for j != y, z_y at y."""
    diff_norms = P.l2_norm(class_differences(last_weight, onehot), 2, False)  # (N, K)
    r = P.reshape(radius, (radius.shape[0], 1))
    return P.add(logits, P.multiply(diff_norms, r))  # zero at j = y


def gloro_bottom_logit(logits, last_weight, onehot, radius):
    """GloRo's extra logit: max over j != y of z_j + R ||w_j - w_y||, shape (N, 1)."""
    worst = gloro_worst_logits(logits, last_weight, onehot, radius)
    xp = namespace(value_of(logits))
    very_low = xp.asarray(-1e30 if value_of(logits).dtype == xp.float64 else -1e15, dtype=value_of(logits).dtype)
    others = P.where(value_of(onehot) > 0, very_low, worst)
    return P.reshape(P.max(others, 1, False), (value_of(logits).shape[0], 1))


def ball_box_support(c, lo, hi, radius, n_iters):
    """An upper bound on max c^T d over ||d|| <= R, lo <= d <= hi (lo <= 0 <= hi), per row.

    Arrays: c, lo, hi (M, D); radius (M,). The maximiser is d(lam) = clip(lam c, lo, hi) with
    the smallest lam >= 0 where ||d(lam)|| = R, or the box corner when the whole box is in
    the ball (KKT conditions; Lee et al.'s BCP reaches the same point by clip-and-rescale).
    We bisect on lam and return the value at the upper end of the final bracket: c^T d(lam)
    is nondecreasing in lam, so this is never below the maximum. Returns (value, lam, inside)
    where inside marks rows whose whole box lies in the ball (lam = inf)."""
    xp = namespace(c)
    corner = xp.where(c > 0, hi, lo)
    corner_norm = xp.sqrt(xp.sum(corner * corner, axis=1))
    abs_c = xp.abs(c)
    # c = 0 (the label's own row): the maximum is 0 wherever d is, so treat it like a box
    # inside the ball; bisecting would drive lam to ~0 and the gradient R/lam to infinity
    inside = (corner_norm <= radius) | (xp.max(abs_c, axis=1) == 0)
    safe_c = xp.where(abs_c > 0, abs_c, xp.ones_like(abs_c))
    reach = xp.where(abs_c > 0, xp.maximum(xp.abs(lo), xp.abs(hi)) / safe_c, xp.zeros_like(abs_c))
    lam_hi = xp.max(reach, axis=1) * 2 + 1e-30  # every coordinate clipped: ||d|| = corner_norm > R
    lam_lo = xp.zeros_like(lam_hi)
    r = radius
    for _ in range(n_iters):
        mid = (lam_lo + lam_hi) * 0.5
        d = xp.clip(mid[:, None] * c, lo, hi)
        too_far = xp.sqrt(xp.sum(d * d, axis=1)) >= r
        lam_hi = xp.where(too_far, mid, lam_hi)
        lam_lo = xp.where(too_far, lam_lo, mid)
    d = xp.clip(lam_hi[:, None] * c, lo, hi)
    value = xp.where(inside, xp.sum(c * corner, axis=1), xp.sum(c * d, axis=1))
    return value, lam_hi, inside


def bcp_worst_logits(logits, last_weight, onehot, radius, penultimate, lower, upper, n_iters=40):
    """Worst-case logits with the ball-and-box last layer (differentiable: the value is the
    bisection's upper end; its gradient is the envelope-theorem gradient of the maximum)."""
    xp = namespace(value_of(logits))
    diff = class_differences(last_weight, onehot)  # (N, K, D), Var when recording
    n, k, dim = value_of(diff).shape
    gap_lo = P.subtract(lower, penultimate)
    gap_hi = P.subtract(upper, penultimate)
    zeros = xp.zeros_like(value_of(gap_lo))
    lo = P.minimum(gap_lo, zeros)  # h lies in its box; guard against rounding
    hi = P.maximum(gap_hi, zeros)
    lo_k = P.reshape(P.multiply(P.reshape(lo, (n, 1, dim)), xp.ones((1, k, 1), dtype=value_of(lo).dtype)), (n * k, dim))
    hi_k = P.reshape(P.multiply(P.reshape(hi, (n, 1, dim)), xp.ones((1, k, 1), dtype=value_of(hi).dtype)), (n * k, dim))
    c = P.reshape(diff, (n * k, dim))
    r = P.reshape(P.multiply(P.reshape(radius, (n, 1)), xp.ones((1, k), dtype=value_of(radius).dtype)), (n * k,))
    cv, lov, hiv, rv = value_of(c), value_of(lo_k), value_of(hi_k), value_of(r)
    value, lam, inside = ball_box_support(cv, lov, hiv, rv, n_iters)
    support = _support_with_gradient(c, lo_k, hi_k, r, cv, lov, hiv, rv, value, lam, inside)
    # the ball alone gives R ||c|| (GloRo); both are upper bounds, keep the smaller (the
    # bisection's upper end can overshoot the ball by its last bracket width)
    ball_only = P.multiply(P.l2_norm(c, 1, False), r)
    return P.add(logits, P.reshape(P.minimum(support, ball_only), (n, k)))


def _support_with_gradient(c, lo, hi, r, cv, lov, hiv, rv, value, lam, inside):
    """A tape expression equal to `value` whose gradient is the maximum's (envelope theorem):
    d/dc = d*, d/dR = R/lam (ball active), d/d(bound_i) = c_i - bound_i/lam on active bounds,
    and for rows whose box lies inside the ball, the box corner's gradient."""
    xp = namespace(cv)
    zero = xp.zeros_like(cv)
    finite = ~inside
    lam_safe = xp.where(finite, lam, xp.ones_like(lam))[:, None]
    d = xp.clip(lam_safe * cv, lov, hiv)
    at_hi = (lam_safe * cv >= hiv) & finite[:, None]
    at_lo = (lam_safe * cv <= lov) & finite[:, None]
    corner_hi = (cv > 0) & inside[:, None]
    corner_lo = (cv <= 0) & inside[:, None]
    d_used = xp.where(inside[:, None], xp.where(cv > 0, hiv, lov), d)
    k_hi = xp.where(at_hi, cv - hiv / lam_safe, zero) + xp.where(corner_hi, cv, zero)
    k_lo = xp.where(at_lo, cv - lov / lam_safe, zero) + xp.where(corner_lo, cv, zero)
    k_r = xp.where(finite, rv / lam_safe[:, 0], xp.zeros_like(rv))
    grad_terms = P.add(P.add(P.sum(P.multiply(P.subtract(c, cv), d_used), 1, False),
                             P.sum(P.multiply(P.subtract(hi, hiv), k_hi), 1, False)),
                       P.add(P.sum(P.multiply(P.subtract(lo, lov), k_lo), 1, False),
                             P.multiply(P.subtract(r, rv), k_r)))
    return P.add(grad_terms, value)


def certified(worst_logits, logits, onehot, slack=0.0):
    """True where every other class's worst-case logit is strictly below z_y - slack."""
    xp = namespace(worst_logits)
    z_y = xp.sum(logits * onehot, axis=1)
    others = xp.where(onehot > 0, xp.full_like(worst_logits, -xp.inf), worst_logits)
    return xp.max(others, axis=1) < z_y - slack


def predictions(logits):
    """argmax with ties decided by the lowest index."""
    xp = namespace(logits)
    return xp.argmax(logits, axis=1)
