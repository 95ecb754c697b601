"""Worst-case logits as training uses them: differentiable, on the tape.

For the label y and every other class j the worst-case logit is z_j + V_j, V_j an upper
bound on the change of the margin (w_j - w_y)^T (h(x') - h(x)) over the ball (certificate.py
states both forms): GloRo's R ||w_j - w_y||, or the ball-and-box maximum, whose value is
`certificate.ball_box_support`'s and whose gradient is the envelope theorem's
(`ball_box_maximum`, a primitive). Training's robust losses (losses.py) take them.
"""
from .. import primitives as P
from ..backend import namespace
from ..primitives import primitive
from ..tape import value_of
from .certificate import ball_box_support, class_differences, one_hot  # noqa: F401 (one_hot: the losses' import)
from .spectral import scaled_l2_norm


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


# ---------------------------------------------------------------- the support as a primitive

def _ball_box_maximum(c, lo, hi, radius):
    """max c^T d over ||d|| <= R, lo <= d <= hi per row: `ball_box_support`'s value, and as
    residuals its partial derivatives for the backward (`_envelope_terms`)."""
    value, lam, inside = ball_box_support(c, lo, hi, radius)
    return value, _envelope_terms(c, lo, hi, radius, lam, inside)


def _envelope_terms(cv, lov, hiv, rv, lam, inside):
    """The maximum's partial derivatives (envelope theorem): (d* (M, D), d/d hi, d/d lo,
    d/dR), with d/dc = d*, d/dR = R/lam (ball active), d/d(bound_i) = c_i - bound_i/lam on
    active bounds, and for rows whose box lies inside the ball, the box corner's."""
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
    def vjp(g, ans, terms, c, lo, hi, radius):
        return g * terms[which] if which == 3 else g[:, None] * terms[which]
    return vjp


ball_box_maximum = primitive(_ball_box_maximum, _ball_box_vjp(0), _ball_box_vjp(2), _ball_box_vjp(1),
                             _ball_box_vjp(3), residuals=True)
