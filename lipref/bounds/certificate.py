"""The certificate: from the walk's bounds to worst-case logits, certificates and radii.

For the label (or prediction) y and every other class j, an upper bound on
(z_j - z_y)(x') over the ball is (z_j - z_y)(x) + V_j, where V_j bounds the change of the
last layer's margin (w_j - w_y)^T (h(x') - h(x)):
- GloRo: V_j = R ||w_j - w_y||, with R = eps * L the radius of the penultimate activations;
- BCP (the paper's tighter last layer): V_j = max c^T d over d in the ball ||d|| <= R
  intersected with the box [lower - h, upper - h] of the penultimate activations, c = w_j - w_y.
Worst-case logits are z_y for y and z_j + V_j otherwise; a sample is certified when every
worst-case logit of another class is strictly below z_y (a tie is never certified).

`certify_bounds` is the whole certificate of one `network_bounds` result: the ball-and-box
worst-case logits (an upper bound that holds for any multiplier, `ball_box_upper_bound`),
the margin with its rounding slack in sound mode (rounding.py), and the certified radius
(GloRo's margin form, `gloro_radius`). The differentiable worst-case logits that training
uses are in margins.py.
"""
from .. import primitives as P
from ..backend import namespace
from ..kernels.registry import replaceable
from .rounding import forward_error_norm, logit_slack, margin_slack, norm_upper, product_upper, radius_below
from .rounding import support_radius
from .spectral import scaled_l2_norm


def certify_bounds(bounds, last_weight, last_bias, onehot, eps, sound, cap_at_eps):
    """(certified, radius) per sample from one `network_bounds` result: the ball-and-box
    certificate at eps (`bcp_worst_logits_upper`, with `rounding.margin_slack` in sound mode)
    and the certified radius (GloRo's margin form; capped at eps for a local bound, which
    holds on the eps-ball only; eps itself where the ball-and-box certificate holds)."""
    xp = namespace(last_weight)
    worst = bcp_worst_logits_upper(bounds.logits, last_weight, onehot, support_radius(bounds), bounds.penultimate,
                                   bounds.lower, bounds.upper)
    slack = margin_slack(bounds, last_weight, last_bias) if sound else 0.0
    cert = certified(worst, bounds.logits, onehot, slack)
    gap_slack = logit_slack(bounds, last_weight, last_bias) if sound else None
    forward_norm = forward_error_norm(bounds) if sound else None
    r = gloro_radius(bounds.logits, last_weight, onehot, bounds.lipschitz, gap_slack, forward_norm)
    if cap_at_eps:
        r = xp.minimum(r, xp.full_like(r, float(eps)))
    if eps > 0:
        r = xp.where(cert, xp.maximum(r, xp.full_like(r, float(eps))), r)
    return cert, r


def gloro_radius(logits, last_weight, onehot, lipschitz, gap_slack=None, forward_norm=None):
    """min_j (z_y - z_j) / (L ||w_y - w_j||) per sample (0 where the prediction is wrong), a
    little below it, since a tie is never certified; never NaN. The norms are scaled (no
    square underflows or overflows) and the product L ||w_y - w_j|| is rounded up, so it is
    0 only where a factor is (then the margin never moves: radius +inf if it is positive).
    Sound mode (gap_slack given): the gap is reduced by the logits' rounding (`gap_slack`, per
    sample) and by ||w_y - w_j|| ||forward error|| (forward_norm), and the norms are upper
    bounds (`rounding.norm_upper`)."""
    xp = namespace(logits)
    diff = class_differences(last_weight, onehot)  # (N, K, D) w_j - w_y
    z_y = xp.sum(logits * onehot, axis=1)
    gap = z_y[:, None] - logits
    if gap_slack is not None:
        norms = norm_upper(diff, axis=2, entry_roundings=1)
        gap = gap - gap_slack[:, None] - product_upper(norms, forward_norm[:, None])
    else:
        norms = scaled_l2_norm(diff, 2)
    denom = product_upper(norms, lipschitz[:, None])
    unbounded = xp.full_like(gap, xp.inf)
    ratio = radius_below(gap / xp.where(denom == 0, xp.ones_like(denom), denom))
    ratio = xp.where(denom == 0, unbounded, ratio)  # the margin never moves
    ratio = xp.where(gap > 0, ratio, xp.zeros_like(gap))  # wrong or tied; also -inf over inf
    ratio = xp.where(onehot > 0, unbounded, ratio)
    radius = xp.min(ratio, axis=1)
    return xp.where(radius > 0, radius, xp.zeros_like(radius))  # a NaN (overflowed weights) gives 0


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


def ball_box_support(c, lo, hi, radius, multiplier=None):
    """max c^T d over ||d|| <= R, lo <= d <= hi (lo <= 0 <= hi), per row.

    Arrays: c, lo, hi (M, D); radius (M,). The maximiser is d(lam) = clip(lam c, lo, hi)
    with the lam >= 0 where ||d(lam)|| = R, or the box corner when the whole box is in the
    ball (KKT conditions; Lee et al.'s BCP reaches the same point by clip-and-rescale).
    Rows are scaled first (c by its largest entry, the box by R and cut to [-1, 1]) so that
    no square overflows; the multiplier of the scaled problem comes from `multiplier(c, lo,
    hi, corner)` -> (lam, inside), by default `ball_box_multiplier` (a bisection; its kernel
    finds the same lam by sorted breakpoints, kernels/ball_box.py). Returns (value, lam,
    inside): inside marks rows whose
    whole box lies in the ball (lam then unused). Certificates use `ball_box_upper_bound`,
    which is sound for any lam."""
    xp = namespace(c)
    cs, los, his, scale, degenerate = _scaled_rows(c, lo, hi, radius)
    zero = xp.zeros_like(cs)
    corner = xp.where(cs > 0, his, xp.where(cs < 0, los, zero))
    lam_s, inside = (multiplier or ball_box_multiplier)(cs, los, his, corner)
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


BISECTION_STEPS = 200  # the bracket may span hundreds of binades; 200 halvings of its log reach float64's ulp


@replaceable("ball_box_multiplier")
def ball_box_multiplier(c, lo, hi, corner):
    """The scaled problem's multiplier (max |c_i| = 1, box within
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
    for _ in range(BISECTION_STEPS):  # geometric: the bracket may span hundreds of binades
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
    rounding.margin_slack covers in sound mode, with the scaling's roundings)."""
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


def one_hot(labels, n_classes, dtype):
    xp = namespace(labels)
    return xp.astype(labels[:, None] == xp.arange(n_classes, dtype=labels.dtype)[None, :], dtype)


def class_differences(weight, onehot):
    """(N, K, D): w_j - w_y for every sample and class j (zero row at j = y)."""
    w_y = P.matmul(onehot, weight)  # (N, D)
    n, d = w_y.shape
    k = weight.shape[0]
    return P.subtract(P.reshape(weight, (1, k, d)), P.reshape(w_y, (n, 1, d)))
