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


def ball_box_support(c, lo, hi, radius):
    """max c^T d over ||d|| <= R, lo <= d <= hi (lo <= 0 <= hi), per row, exactly.

    Arrays: c, lo, hi (M, D); radius (M,). The maximiser is d(lam) = clip(lam c, lo, hi)
    with the lam >= 0 where ||d(lam)|| = R, or the box corner when the whole box is in the
    ball (KKT conditions; Lee et al.'s BCP reaches the same point by clip-and-rescale).
    Coordinate i sits at its corner b_i once lam >= t_i = b_i / c_i (never for c_i = 0).
    With the t_i sorted, on the k-th interval the first k coordinates are at their corners
    and ||d||^2 = S_k + lam^2 C_k (S_k: their sum of b^2; C_k: the others' sum of c^2); the
    first interval whose end reaches R^2 holds lam = sqrt((R^2 - S_k) / C_k). No iteration,
    so no bracket: the value is the maximum up to rounding (sound mode's margin slack
    covers that rounding, docs/soundness.md). Returns (value, lam, inside) where inside
    marks rows whose whole box lies in the ball (lam then unused)."""
    xp = namespace(c)
    corner = xp.where(c > 0, hi, xp.where(c < 0, lo, xp.zeros_like(c)))
    moving = c != 0
    t = xp.where(moving, corner / xp.where(moving, c, xp.ones_like(c)), xp.full_like(c, xp.inf))
    order = xp.argsort(t, axis=1)
    t_sorted = xp.take_along_axis(t, order, axis=1)
    corner_sq = xp.take_along_axis(corner * corner, order, axis=1)
    c_sq = xp.take_along_axis(c * c, order, axis=1)
    clipped_sq = xp.cumulative_sum(corner_sq, axis=1) - corner_sq  # S_k
    free_sq = xp.sum(c_sq, axis=1)[:, None] - (xp.cumulative_sum(c_sq, axis=1) - c_sq)  # C_k
    has_free = free_sq > 0  # where C_k == 0 the rest have c = 0 and t = inf: ||d|| stays at S_k
    t_end = xp.where(has_free, t_sorted, xp.zeros_like(t_sorted))
    norm_sq_at_end = clipped_sq + xp.where(has_free, t_end * t_end * free_sq, xp.zeros_like(free_sq))
    r_sq = radius * radius
    reached = norm_sq_at_end >= r_sq[:, None]
    inside = ~xp.any(reached, axis=1)
    k = xp.argmax(xp.astype(reached, xp.int8), axis=1)[:, None]  # the first interval that reaches R
    s_k = xp.take_along_axis(clipped_sq, k, axis=1)[:, 0]
    c_k = xp.take_along_axis(free_sq, k, axis=1)[:, 0]
    lam = xp.sqrt(xp.maximum(r_sq - s_k, xp.zeros_like(s_k)) / xp.where(c_k > 0, c_k, xp.ones_like(c_k)))
    d = xp.clip(lam[:, None] * c, lo, hi)
    value = xp.where(inside, xp.sum(c * corner, axis=1), xp.sum(c * d, axis=1))
    return value, lam, inside


def bcp_worst_logits(logits, last_weight, onehot, radius, penultimate, lower, upper):
    """Worst-case logits with the ball-and-box last layer (differentiable: the value is the
    exact maximum; its gradient is the envelope-theorem gradient of the maximum)."""
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
    value, lam, inside = ball_box_support(cv, lov, hiv, rv)
    support = _support_with_gradient(c, lo_k, hi_k, r, cv, lov, hiv, rv, value, lam, inside)
    # the ball alone gives R ||c|| (GloRo); the support is never above it but for rounding,
    # and the minimum makes BCP never looser than GloRo exactly
    ball_only = P.multiply(P.l2_norm(c, 1, False), r)
    return P.add(logits, P.reshape(P.minimum(support, ball_only), (n, k)))


def _support_with_gradient(c, lo, hi, r, cv, lov, hiv, rv, value, lam, inside):
    """A tape expression equal to `value` whose gradient is the maximum's (envelope theorem):
    d/dc = d*, d/dR = R/lam (ball active), d/d(bound_i) = c_i - bound_i/lam on active bounds,
    and for rows whose box lies inside the ball, the box corner's gradient."""
    xp = namespace(cv)
    zero = xp.zeros_like(cv)
    finite = ~inside & (lam > 0)  # lam == 0 (R == 0): d* = 0, see k_r below
    lam_safe = xp.where(finite, lam, xp.ones_like(lam))[:, None]
    d = xp.clip(lam_safe * cv, lov, hiv)
    at_hi = (lam_safe * cv >= hiv) & finite[:, None]
    at_lo = (lam_safe * cv <= lov) & finite[:, None]
    corner_hi = (cv > 0) & inside[:, None]
    corner_lo = (cv <= 0) & inside[:, None]
    d_used = xp.where(inside[:, None], xp.where(cv > 0, hiv, lov), d)
    k_hi = xp.where(at_hi, cv - hiv / lam_safe, zero) + xp.where(corner_hi, cv, zero)
    k_lo = xp.where(at_lo, cv - lov / lam_safe, zero) + xp.where(corner_lo, cv, zero)
    # d value / dR = R / lam on the sphere; at R == 0 (lam == 0) it is the limit, the norm
    # of c over the coordinates that can still move away from 0 (t_i > 0)
    free_at_zero = ((cv > 0) & (hiv > 0)) | ((cv < 0) & (lov < 0))
    rate_at_zero = xp.sqrt(xp.sum(xp.where(free_at_zero, cv * cv, zero), axis=1))
    k_r = xp.where(finite, rv / lam_safe[:, 0], xp.where(inside, xp.zeros_like(rv), rate_at_zero))
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
