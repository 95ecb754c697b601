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
    """max c^T d over ||d|| <= R, lo <= d <= hi (lo <= 0 <= hi), per row: the exact solver.

    Arrays: c, lo, hi (M, D); radius (M,). The maximiser is d(lam) = clip(lam c, lo, hi)
    with the lam >= 0 where ||d(lam)|| = R, or the box corner when the whole box is in the
    ball (KKT conditions; Lee et al.'s BCP reaches the same point by clip-and-rescale).
    Coordinate i sits at its corner b_i once lam >= t_i = b_i / c_i (never for c_i = 0).
    With the t_i sorted, on piece k (t_(k-1) <= lam <= t_k) the first k coordinates are at
    their corners and ||d||^2 = S_k + lam^2 C_k (S_k: their sum of b^2, a prefix sum; C_k:
    the others' sum of c^2, a suffix sum, so no cancellation); the first piece whose end
    reaches R^2 holds lam = sqrt((R^2 - S_k) / C_k), clamped into [t_(k-1), t_k] (rounding
    may say "reached" one piece late, when the sphere is met at a breakpoint). Rows are
    scaled first (c by its largest entry, the box by R and cut to [-1, 1]) so that no
    square overflows. Returns (value, lam, inside): inside marks rows whose whole box lies
    in the ball (lam then unused). `ball_box_support_bisection` is its plain reference;
    certificates use `ball_box_upper_bound`, which is sound for any lam."""
    xp = namespace(c)
    cs, los, his, scale, degenerate = _scaled_rows(c, lo, hi, radius)
    zero = xp.zeros_like(cs)
    corner = xp.where(cs > 0, his, xp.where(cs < 0, los, zero))
    lam_s, inside = _unit_ball_box_multiplier(cs, corner)
    inside = inside & ~degenerate
    d = xp.where(inside[:, None], corner, xp.clip(lam_s[:, None] * cs, los, his))
    value = xp.where(degenerate, xp.zeros_like(scale), xp.sum(cs * d, axis=1) * scale * radius)
    lam = xp.where(degenerate, xp.zeros_like(scale), lam_s * radius / xp.where(degenerate, xp.ones_like(scale), scale))
    return value, lam, inside


def _scaled_rows(c, lo, hi, radius):
    """The problem scaled to max |c_i| = 1 and R = 1 (the maximum is max|c| R times the
    scaled one), with the box cut to [-1, 1] (|d_i| <= R anyway), so that no square or
    breakpoint overflows: (c, lo, hi, max|c| per row, rows whose maximum is 0)."""
    xp = namespace(c)
    one, zero = xp.ones_like(c), xp.zeros_like(c)
    scale = xp.max(xp.abs(c), axis=1)
    degenerate = (scale == 0) | (radius == 0)  # the maximum is 0: c = 0, or the ball is {0}
    s = xp.where(degenerate, xp.ones_like(scale), scale)[:, None]
    r = xp.where(degenerate, xp.ones_like(radius), radius)[:, None]
    return c / s, xp.clip(lo / r, -one, zero), xp.clip(hi / r, zero, one), scale, degenerate


def _unit_ball_box_multiplier(c, corner):
    """(lam, inside) of the scaled problem (max |c_i| = 1, box within [-1, 1], R = 1): the
    multiplier where ||clip(lam c, box)|| = 1 by sorted breakpoints (ball_box_support)."""
    xp = namespace(c)
    moving = c != 0
    t = xp.where(moving, corner / xp.where(moving, c, xp.ones_like(c)), xp.full_like(c, xp.inf))
    order = xp.argsort(t, axis=1)
    t_sorted = xp.take_along_axis(t, order, axis=1)
    corner_sq = xp.take_along_axis(corner * corner, order, axis=1)
    c_sq = xp.take_along_axis(c * c, order, axis=1)
    clipped_sq = xp.cumulative_sum(corner_sq, axis=1, include_initial=True)[:, :-1]  # S_k
    free_sq = xp.flip(xp.cumulative_sum(xp.flip(c_sq, axis=1), axis=1), axis=1)  # C_k
    has_free = free_sq > 0  # where C_k == 0 the rest have c = 0: the piece is flat
    grow = xp.where(has_free, t_sorted, xp.zeros_like(t_sorted)) * xp.sqrt(free_sq)
    reached = clipped_sq + grow * grow >= 1
    inside = ~xp.any(reached, axis=1)
    k = xp.argmax(xp.astype(reached, xp.int8), axis=1)[:, None]  # the first piece that reaches 1
    t_start = xp.take_along_axis(xp.concat([xp.zeros_like(t_sorted[:, :1]), t_sorted], axis=1), k, axis=1)[:, 0]
    t_end = xp.take_along_axis(t_sorted, k, axis=1)[:, 0]
    s_k = xp.take_along_axis(clipped_sq, k, axis=1)[:, 0]
    c_k = xp.take_along_axis(free_sq, k, axis=1)[:, 0]
    on_piece = xp.sqrt(xp.maximum(1 - s_k, xp.zeros_like(s_k)) / xp.where(c_k > 0, c_k, xp.ones_like(c_k)))
    lam = xp.where(c_k > 0, xp.minimum(xp.maximum(on_piece, t_start), t_end), t_start)
    return lam, inside


def ball_box_support_bisection(c, lo, hi, radius, n_steps=200):
    """The plain reference of `ball_box_support`: ||clip(lam c, lo, hi)|| grows with lam, so
    bisect on lam over [R / ||c||, max finite t_i] for the lam where it reaches R, return the
    objective at the bracket's upper end (the objective grows with lam too, so in exact
    arithmetic that is >= the maximum); the box corner when the box lies in the ball. On
    the scaled problem (`_scaled_rows`), like the solver. Returns (value, inside)."""
    xp = namespace(c)
    c, lo, hi, scale, degenerate = _scaled_rows(c, lo, hi, radius)
    zero = xp.zeros_like(c)
    corner = xp.where(c > 0, hi, xp.where(c < 0, lo, zero))
    inside = (xp.sum(corner * corner, axis=1) <= 1) & ~degenerate
    moving = c != 0
    t = xp.where(moving, corner / xp.where(moving, c, xp.ones_like(c)), zero)
    norm = xp.sqrt(xp.sum(c * c, axis=1))
    below = 1 / xp.where(degenerate, xp.ones_like(norm), norm)  # ||clip(lam c)|| <= lam ||c|| = 1 there
    above = xp.maximum(xp.max(xp.where(xp.isfinite(t), t, zero), axis=1), below)
    for _ in range(n_steps):  # geometric: the bracket may span hundreds of binades
        mid = xp.sqrt(below) * xp.sqrt(above)
        d = xp.clip(mid[:, None] * c, lo, hi)
        short = xp.sum(d * d, axis=1) <= 1
        below, above = xp.where(short, mid, below), xp.where(short, above, mid)
    d = xp.where(inside[:, None], corner, xp.clip(above[:, None] * c, lo, hi))
    value = xp.where(degenerate, xp.zeros_like(scale), xp.sum(c * d, axis=1) * scale * radius)
    return value, inside


def ball_box_upper_bound(c, lo, hi, radius, lam):
    """An upper bound on max c^T d over ||d|| <= R, lo <= d <= hi that holds for ANY lam >= 0
    (weak duality), so that no error in finding lam can make a certificate unsound:

        max <= R^2 / (2 lam) + sum_i max_(lo_i <= d_i <= hi_i) (c_i d_i - d_i^2 / (2 lam)),

    each inner maximum at d_i = clip(lam c_i, lo_i, hi_i); at the solver's lam it equals the
    maximum. lam = +inf (mu = 1/lam = 0) gives the box alone, sum_i c_i b_i. The result is
    also capped by the ball alone, R ||c|| (Cauchy-Schwarz), and by the box alone. Computed
    on the scaled problem (`_scaled_rows`), where lam is raised to 1 / ||c||, below which the
    maximiser never lies: every term is then at most ||c|| (R + ||box||) in size (what
    certify.margin_slack covers in sound mode, with the scaling's roundings)."""
    xp = namespace(c)
    c, lo, hi, scale, degenerate = _scaled_rows(c, lo, hi, radius)
    zero = xp.zeros_like(c)
    box_only = xp.sum(xp.where(c > 0, c * hi, xp.where(c < 0, c * lo, zero)), axis=1)
    ball_only = xp.sqrt(xp.sum(c * c, axis=1))  # R = 1 here
    safe_r = xp.where(degenerate, xp.ones_like(radius), radius)
    lam = xp.where(xp.isnan(lam) | degenerate, xp.full_like(lam, xp.inf), lam)
    lam = lam * (xp.where(degenerate, xp.ones_like(scale), scale) / safe_r)  # in the scaled units
    lam = xp.maximum(lam, 1 / xp.where(degenerate, xp.ones_like(ball_only), ball_only))
    finite = (lam < xp.inf) & ~degenerate
    lam_f = xp.where(finite, lam, xp.ones_like(lam))
    d = xp.clip(lam_f[:, None] * c, lo, hi)
    dual = xp.where(finite, 1 / (2 * lam_f) + xp.sum(c * d - d * d / (2 * lam_f[:, None]), axis=1), box_only)
    best = xp.minimum(xp.minimum(dual, ball_only), box_only)
    return xp.where(degenerate, xp.zeros_like(scale), best * scale * radius)


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


def bcp_worst_logits_upper(logits, last_weight, onehot, radius, penultimate, lower, upper):
    """Certificates' worst-case logits (arrays, no tape): z_j + `ball_box_upper_bound`, an upper
    bound on the ball-and-box maximum that holds whatever lam the solver found (weak
    duality), so a wrong multiplier can only make a certificate fail, never make it false."""
    xp = namespace(logits)
    n, k = logits.shape
    c = xp.reshape(class_differences(last_weight, onehot), (n * k, last_weight.shape[1]))
    lo, hi = _box_rows(lower - penultimate, upper - penultimate, k)
    r = xp.reshape(xp.broadcast_to(radius[:, None], (n, k)), (n * k,))
    _, lam, inside = ball_box_support(c, lo, hi, r)
    lam = xp.where(inside, xp.full_like(lam, xp.inf), lam)
    return logits + xp.reshape(ball_box_upper_bound(c, lo, hi, r, lam), (n, k))


def _box_rows(gap_lo, gap_hi, k):
    """The box of d = h' - h as (N * K, D) rows, one per class; lo <= 0 <= hi also under rounding."""
    xp = namespace(gap_lo)
    n, dim = gap_lo.shape
    zero = xp.zeros_like(gap_lo)
    lo, hi = xp.minimum(gap_lo, zero), xp.maximum(gap_hi, zero)
    return (xp.reshape(xp.broadcast_to(lo[:, None, :], (n, k, dim)), (n * k, dim)),
            xp.reshape(xp.broadcast_to(hi[:, None, :], (n, k, dim)), (n * k, dim)))


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
