"""Every rounding allowance of the sound bounds, in one place (docs/soundness.md cites these).

The standard model of IEEE arithmetic in round-to-nearest: |fl(x op y) - (x op y)| <= u |x op y|
with u the unit roundoff, and k successive roundings stay within gamma_k = k u / (1 - k u)
(Higham, Accuracy and Stability, Lemma 3.1). Every sound bound widens its result by one of
the terms below; none of them assumes more than that model (no overflow, no fused or
reduced-precision products).
"""
from ..backend import namespace
from ..tape import value_of
from .interval import affine


def unit_roundoff(xp, dtype):
    """u = eps / 2: |fl(x op y) - (x op y)| <= u |x op y| in round-to-nearest."""
    return float(xp.finfo(dtype).eps) / 2


def gamma(k, u):
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of k roundings."""
    ku = k * u
    if ku >= 0.5:
        raise ValueError(f"problem too large for a rounding bound ({k} operations at unit roundoff {u})")
    return ku / (1 - ku)


# ---------------------------------------------------------------- the walk (bounds/walk.py)

def affine_rounding_slack(layer, params, lower, upper, xp):
    """A bound on the floating-point error of the affine layer's interval computation
    (sound mode): 2 gamma_(n+4) (|W| max(|lower|, |upper|) + |b|), n the fan-in."""
    wv = value_of(params["weight"])
    fan_in = 1
    for d in wv.shape[1:]:
        fan_in *= d
    g = gamma(fan_in + 4, unit_roundoff(xp, wv.dtype))
    lo, up = value_of(lower), value_of(upper)
    mag = xp.maximum(xp.abs(lo), xp.abs(up))
    total = value_of(affine(layer, mag, xp.abs(wv), xp.abs(value_of(params["bias"]))))
    return 2 * g * total


def affine_forward_error(layer, params, error_in, slack, xp):
    """Sound mode: a bound on |z - exact z| per output of an affine layer, where z = fl(W h +
    b) and h is within error_in of the exact h: |W| error_in (doubled for its own rounding)
    plus the interval slack, which bounds the rounding of W h + b (|h| is within the box)."""
    wv = value_of(params["weight"])
    propagated = value_of(affine(layer, error_in, xp.abs(wv), None))
    return 2 * propagated + slack


def activation_forward_error(is_maxmin, error_in, xp):
    """|act(z) - act(exact z)| <= error per coordinate: ReLU and clipped ReLU are
    1-Lipschitz per coordinate; MaxMin's outputs of a pair move by at most the pair's larger
    error (is_maxmin)."""
    if is_maxmin:
        half = error_in.shape[1] // 2
        pair = xp.maximum(error_in[:, :half, ...], error_in[:, half:, ...])
        return xp.concat([pair, pair], axis=1)
    return error_in


# ---------------------------------------------------------------- the last layer (certify.py)

def last_layer_gamma(fan_in):
    """gamma_(D+10) at float64's unit roundoff (sound mode is float64): the relative error
    of the logits' dot products of D terms and the margin arithmetic after them."""
    return gamma(fan_in + 10, 2.0 ** -53)


def support_radius(bounds):
    """The radius of the ball that holds h(x') - h for every x' of the eps-ball: R, and in
    sound mode R + ||forward error|| (h is the computed penultimate, not the exact one)."""
    if bounds.forward_error is None:
        return bounds.radius
    xp = namespace(bounds.forward_error)
    return bounds.radius + xp.sqrt(xp.sum(bounds.forward_error * bounds.forward_error, axis=1))


def logit_slack(bounds, last_weight, last_bias):
    """Sound mode: a bound on the rounding of the logits and of their differences at h,
    per sample: 4 gamma max_j (|W||h| + |b|)_j, gamma = `last_layer_gamma`(D)."""
    xp = namespace(last_weight)
    h = bounds.penultimate
    logit_mag = xp.max(xp.abs(h) @ xp.matrix_transpose(xp.abs(last_weight)) + xp.abs(last_bias)[None, :], axis=1)
    return 4 * last_layer_gamma(last_weight.shape[1]) * logit_mag


def margin_slack(bounds, last_weight, last_bias):
    """Sound mode: a bound on the rounding error of the last layer and the margin arithmetic
    (float64), per sample: `logit_slack` + 4 gamma max_j ||w_j - w_y|| (R + ||u - l||), which
    covers the worst-case translation's rounding. See docs/soundness.md for what it covers."""
    xp = namespace(last_weight)
    row_norms = xp.sqrt(xp.sum(last_weight * last_weight, axis=1))
    widest = 2 * xp.max(row_norms)
    box = xp.sqrt(xp.sum((bounds.upper - bounds.lower) ** 2, axis=1))
    support = 4 * last_layer_gamma(last_weight.shape[1]) * widest * (support_radius(bounds) + box)
    return logit_slack(bounds, last_weight, last_bias) + support
