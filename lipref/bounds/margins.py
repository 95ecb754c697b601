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
import threading

from .. import primitives as P
from ..backend import namespace
from ..kernels import pick
from ..primitives import primitive
from ..tape import value_of
from .spectral import scaled_l2_norm


def one_hot(labels, n_classes, dtype):
    xp = namespace(labels)
    return xp.astype(labels[:, None] == xp.arange(n_classes, dtype=labels.dtype)[None, :], dtype)


def class_differences(weight, onehot):
    """(N, K, D): w_j - w_y for every sample and class j (zero row at j = y)."""
    w_y = P.matmul(onehot, weight)  # (N, D)
    n, d = w_y.shape
    k = weight.shape[0]
    return P.subtract(P.reshape(weight, (1, k, d)), P.reshape(w_y, (n, 1, d)))


def difference_norms(diff):
    """||w_j - w_y|| (N, K) from `class_differences` (N, K, D), scaled (`scaled_l2_norm`)."""
    return scaled_l2_norm(diff, 2)


def gloro_worst_logits(logits, last_weight, onehot, radius):
    """z_j + R ||w_j - w_y|| for j != y, z_y at y."""
    diff_norms = difference_norms(class_differences(last_weight, onehot))  # (N, K)
    r = P.reshape(radius, (radius.shape[0], 1))
    return P.add(logits, P.multiply(diff_norms, r))  # zero at j = y


def bottom_logit(worst, onehot):
    """GloRo's extra "bottom" logit from worst-case logits: max over j != y of worst_j, (N, 1)."""
    xp = namespace(value_of(worst))
    dtype = value_of(worst).dtype
    very_low = xp.asarray(-1e30 if dtype == xp.float64 else -1e15, dtype=dtype)
    others = P.where(value_of(onehot) > 0, very_low, worst)
    return P.reshape(P.max(others, 1, False), (value_of(worst).shape[0], 1))


def gloro_bottom_logit(logits, last_weight, onehot, radius):
    """GloRo's extra logit: max over j != y of z_j + R ||w_j - w_y||, shape (N, 1)."""
    return bottom_logit(gloro_worst_logits(logits, last_weight, onehot, radius), onehot)


def ball_box_support(c, lo, hi, radius, multiplier=None):
    """max c^T d over ||d|| <= R, lo <= d <= hi (lo <= 0 <= hi), per row.

    Arrays: c, lo, hi (M, D); radius (M,). The maximiser is d(lam) = clip(lam c, lo, hi)
    with the lam >= 0 where ||d(lam)|| = R, or the box corner when the whole box is in the
    ball (KKT conditions; Lee et al.'s BCP reaches the same point by clip-and-rescale).
    Rows are scaled first (c by its largest entry, the box by R and cut to [-1, 1]) so that
    no square overflows; the multiplier of the scaled problem comes from `multiplier(c, lo,
    hi, corner)` -> (lam, inside): by default the kernel registered as
    "ball_box_multiplier" (sorted breakpoints, kernels/ball_box.py), else the plain
    definition, `bisected_multiplier`. Returns (value, lam, inside): inside marks rows whose
    whole box lies in the ball (lam then unused). Certificates use `ball_box_upper_bound`,
    which is sound for any lam."""
    xp = namespace(c)
    cs, los, his, scale, degenerate = _scaled_rows(c, lo, hi, radius)
    zero = xp.zeros_like(cs)
    corner = xp.where(cs > 0, his, xp.where(cs < 0, los, zero))
    if multiplier is None:
        multiplier = pick("ball_box_multiplier", cs, los, his, corner) or bisected_multiplier
    lam_s, inside = multiplier(cs, los, his, corner)
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


def bisected_multiplier(c, lo, hi, corner, n_steps=200):
    """The plain definition of the scaled problem's multiplier (max |c_i| = 1, box within
    [-1, 1], R = 1): ||clip(lam c, lo, hi)|| grows with lam, so bisect on lam over
    [1 / ||c||, max finite t_i] (t_i = corner_i / c_i, where coordinate i reaches its
    corner) for the lam where it reaches 1, and return the bracket's upper end (the
    objective grows with lam too, so in exact arithmetic its value there is >= the
    maximum). Returns (lam, inside): inside where the box corner lies in the ball."""
    xp = namespace(c)
    zero = xp.zeros_like(c)
    inside = xp.sum(corner * corner, axis=1) < 1  # as the sorted breakpoints decide it
    moving = c != 0
    t = xp.where(moving, corner / xp.where(moving, c, xp.ones_like(c)), zero)
    norm = xp.sqrt(xp.sum(c * c, axis=1))
    below = 1 / xp.where(norm > 0, norm, xp.ones_like(norm))  # ||clip(lam c)|| <= lam ||c|| = 1 there
    above = xp.maximum(xp.max(xp.where(xp.isfinite(t), t, zero), axis=1), below)
    for _ in range(n_steps):  # geometric: the bracket may span hundreds of binades
        mid = xp.sqrt(below) * xp.sqrt(above)
        d = xp.clip(mid[:, None] * c, lo, hi)
        short = xp.sum(d * d, axis=1) <= 1
        below, above = xp.where(short, mid, below), xp.where(short, above, mid)
    return above, inside


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
    # one row per (sample, class): the sample's box and radius repeated over the classes
    lo_k = P.reshape(P.broadcast_to(P.reshape(lo, (n, 1, dim)), (n, k, dim)), (n * k, dim))
    hi_k = P.reshape(P.broadcast_to(P.reshape(hi, (n, 1, dim)), (n, k, dim)), (n * k, dim))
    c = P.reshape(diff, (n * k, dim))
    r = P.reshape(P.broadcast_to(P.reshape(radius, (n, 1)), (n, k)), (n * k,))
    support = ball_box_maximum(c, lo_k, hi_k, r)
    # the ball alone gives R ||c|| (GloRo); the support is never above it but for rounding,
    # and the minimum makes BCP never looser than GloRo exactly
    ball_only = P.multiply(scaled_l2_norm(c, 1), r)
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


# ---------------------------------------------------------------- the support as a primitive

_LAST_SOLUTION = threading.local()  # per thread: the forward's multiplier, for its gradients


def _ball_box_maximum(c, lo, hi, radius):
    """max c^T d over ||d|| <= R, lo <= d <= hi per row: `ball_box_support`'s value."""
    value, lam, inside = ball_box_support(c, lo, hi, radius)
    _LAST_SOLUTION.entry = [value, lam, inside, None]
    return value


def _envelope(ans, c, lo, hi, radius):
    """The maximum's partial derivatives (envelope theorem): (d* (M, D), d/d hi, d/d lo,
    d/dR), with d/dc = d*, d/dR = R/lam (ball active), d/d(bound_i) = c_i - bound_i/lam on
    active bounds, and for rows whose box lies inside the ball, the box corner's. The
    forward's multiplier is reused when `ans` is its result (else solved again)."""
    entry = getattr(_LAST_SOLUTION, "entry", None)
    if entry is None or entry[0] is not ans:
        entry = [ans, *ball_box_support(c, lo, hi, radius)[1:], None]
    if entry[3] is None:
        entry[3] = _envelope_terms(c, lo, hi, radius, entry[1], entry[2])
    return entry[3]


def _envelope_terms(cv, lov, hiv, rv, lam, inside):
    xp = namespace(cv)
    zero = xp.zeros_like(cv)
    finite = ~inside & (lam > 0)  # lam == 0 (R == 0): d* = 0, see k_r below
    lam_safe = xp.where(finite, lam, xp.ones_like(lam))[:, None]
    at_hi = (lam_safe * cv >= hiv) & finite[:, None]
    at_lo = (lam_safe * cv <= lov) & finite[:, None]
    corner_hi = (cv > 0) & inside[:, None]
    corner_lo = (cv <= 0) & inside[:, None]
    d_used = xp.where(inside[:, None], xp.where(cv > 0, hiv, lov), xp.clip(lam_safe * cv, lov, hiv))
    k_hi = xp.where(at_hi, cv - hiv / lam_safe, zero) + xp.where(corner_hi, cv, zero)
    k_lo = xp.where(at_lo, cv - lov / lam_safe, zero) + xp.where(corner_lo, cv, zero)
    # d value / dR = R / lam on the sphere; at R == 0 (lam == 0) it is the limit, the norm
    # of c over the coordinates that can still move away from 0 (t_i > 0)
    free_at_zero = ((cv > 0) & (hiv > 0)) | ((cv < 0) & (lov < 0))
    rate_at_zero = xp.sqrt(xp.sum(xp.where(free_at_zero, cv * cv, zero), axis=1))
    k_r = xp.where(finite, rv / lam_safe[:, 0], xp.where(inside, xp.zeros_like(rv), rate_at_zero))
    return d_used, k_hi, k_lo, k_r


def _ball_box_vjp(which):
    def vjp(g, ans, c, lo, hi, radius):
        term = _envelope(ans, c, lo, hi, radius)[which]
        return g * term if which == 3 else g[:, None] * term
    return vjp


ball_box_maximum = primitive(_ball_box_maximum, _ball_box_vjp(0), _ball_box_vjp(2), _ball_box_vjp(1),
                             _ball_box_vjp(3))


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
