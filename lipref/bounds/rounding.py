"""Every rounding allowance of the sound bounds, in one place (docs/soundness.md cites these),
and the sound norms made of nothing else: of vectors (`norm_upper`) and of dense matrices
(`dense_spectral_norm_upper`: the exact eigenvalue problem of the Gram matrix, then its
allowance).

The standard model of IEEE arithmetic in round-to-nearest with gradual underflow (Higham,
Accuracy and Stability, 2nd ed., Sections 2.1-2.2): fl(x op y) = (x op y)(1 + d) + e with
|d| <= u, the unit roundoff, and |e| <= eta / 2, eta the smallest subnormal (d e = 0; for
+ and - e = 0: a sum that underflows is exact). k successive relative roundings stay within
gamma_k = k u / (1 - k u) (Lemma 3.1); a dot product of k terms, in any summation order and
with or without fused multiply-adds, is within gamma_k |x|.|y| + k eta / 2 of the exact one
(each of its at most k products, or fused products, rounds once with |e| <= eta / 2, and
the additions add no absolute error). Every sound bound widens its result by one of the
terms below: a relative one and, for underflow, an absolute one (`underflow_allowance`).
None assumes more than that model (no overflow, no reduced-precision products).
"""
import math

from ..backend import eigh, namespace
from ..tape import value_of
from .rules import row_square_sums


def unit_roundoff(xp, dtype):
    """u = eps / 2: |fl(x op y) - (x op y)| <= u |x op y| in round-to-nearest (normal range)."""
    return float(xp.finfo(dtype).eps) / 2


def smallest_subnormal(xp, dtype):
    """eta: the smallest positive subnormal (2^-1074 in float64, 2^-149 in float32)."""
    info = xp.finfo(dtype)
    return float(info.smallest_normal) * float(info.eps)


def gamma(k, u):
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of k roundings."""
    ku = k * u
    if ku >= 0.5:
        raise ValueError(f"problem too large for a rounding bound ({k} operations at unit roundoff {u})")
    return ku / (1 - ku)


def underflow_allowance(k, xp, dtype):
    """The absolute error gradual underflow adds to k roundings: k eta, twice the k eta / 2
    they can lose, so that the arithmetic that carries the term has room to spare. k may be
    a number or an array (counts per output)."""
    return k * smallest_subnormal(xp, dtype)


# ---------------------------------------------------------------- rounding upwards

def above(x):
    """The next float above x (arrays): if x = fl(y) is ONE rounding to nearest of a real
    y, then y < above(x), whatever the binade, and also where y underflowed (x = 0 gives
    eta). The building block of every upper bound below."""
    xp = namespace(x)
    return xp.nextafter(x, xp.full_like(x, math.inf))


def below(x):
    """The next float below x: if x = fl(y) is one rounding to nearest of y, y > below(x)."""
    xp = namespace(x)
    return xp.nextafter(x, xp.full_like(x, -math.inf))


def product_upper(a, b):
    """An upper bound on the exact product a b of nonnegative arrays (or a Python float b):
    `above`(fl(a b)), so that a product of nonzero factors never underflows to 0 nor rounds
    below the exact one (the running Lipschitz bound, the radii eps L, the global product);
    exactly 0 where a factor is 0. An overflow gives inf, which the walk refuses."""
    xp = namespace(a)
    b = xp.asarray(b, dtype=a.dtype) if isinstance(b, (int, float)) else b
    product = a * b
    zero = (a == 0) | (b == 0)
    return xp.where(zero, xp.zeros_like(product), above(product))


def scaled_norm_upper(scale, sums, n, entry_roundings=0):
    """An upper bound on s sqrt(T), the exact l2 norm of a vector x with s = max |x_i| (the
    scale) and T = sum_i (x_i / s)^2, from sums = fl(sum_i fl(fl(x_i / s)^2)) over n terms
    (terms with a factor 0/1, such as a mask, are exact and may be left out or in).

    With underflow each scaled square is within (1 + u)^3 of the exact one up to 2 eta
    (|x_i / s| <= 1), and the sum of n nonnegative terms loses at most gamma_(n-1), so
    T <= sums (1 + gamma_(2n+2)) + 3 n eta. entry_roundings = r when every x_i is itself
    within r relative roundings of the exact entry (e.g. r = 1 for a difference w_j - w_y):
    a factor (1 + gamma_(2r)) more. Then each step is one rounding followed by `above`:
    A = above(sums c) with c = 1 + gamma_(2n+2r+4) (>= 1 + gamma_(2n+2r+2) once rounded to
    the dtype), B = above(A + 3 n eta), C = above(sqrt(B)), s C rounded up. 0 where s = 0."""
    xp = namespace(sums)
    u = unit_roundoff(xp, sums.dtype)
    grown = above(sums * (1 + gamma(2 * n + 2 * entry_roundings + 4, u)))
    padded = above(grown + 3 * underflow_allowance(n, xp, sums.dtype))
    return product_upper(scale, above(xp.sqrt(padded)))


def norm_upper(x, axis=-1, entry_roundings=0):
    """An upper bound on the exact l2 norm of x over `axis` (an int), free of overflow and
    underflow: the largest |entry| scaled out first, then `scaled_norm_upper`."""
    xp = namespace(x)
    scale = xp.max(xp.abs(x), axis=axis, keepdims=True)
    scaled = x / _nonzero_or_one(scale)
    sums = xp.sum(scaled * scaled, axis=axis)
    return scaled_norm_upper(xp.squeeze(scale, axis=axis), sums, x.shape[axis], entry_roundings)


def _nonzero_or_one(scale):
    """The scale where it is > 0, else 1: the divisor of a scaling, under which a zero row or
    matrix stays zero (never 0 / 0)."""
    xp = namespace(scale)
    return xp.where(scale > 0, scale, xp.ones_like(scale))


def row_norms_upper(layer, forms, input_mask):
    """Sound mode's `rules.row_norms`: an upper bound on each output's weight norm over
    the inputs that can move, from the same scaled sums of squares (`scaled_norm_upper`)."""
    sums = row_square_sums(layer, forms, input_mask)
    return scaled_norm_upper(forms["row_scale"], sums, _fan_in(value_of(forms["square"])))


def _fan_in(weight):
    """Terms per output of an affine layer: in_features, or C kh kw for a conv kernel."""
    return math.prod(weight.shape[1:])


def _count_per_output(layer, chosen, dtype):
    """Per output, how many of its weights are `chosen` (a bool array shaped like the
    weight), in dtype, shaped to broadcast against the layer's output (N, *out_shape)."""
    xp = namespace(chosen)
    count = xp.sum(xp.astype(chosen, dtype), axis=tuple(range(1, chosen.ndim)))
    return xp.reshape(count, (count.shape[0],) + (1,) * (len(layer.out_shape) - 1))


def _nonzero_per_output(layer, weight):
    """Per output, its nonzero weights (a zero weight's product is exact, with no underflow)."""
    return _count_per_output(layer, weight != 0, weight.dtype)


def _inexact_halves_per_output(layer, weight):
    """Per output, its weights whose half may round: 0 < |w| < 2 (smallest normal), where
    w / 2 is subnormal (elsewhere halving is exact)."""
    xp = namespace(weight)
    magnitude = xp.abs(weight)
    tiny = float(xp.finfo(weight.dtype).smallest_normal)
    return _count_per_output(layer, (magnitude > 0) & (magnitude < 2 * tiny), weight.dtype)


def _per_sample_max(a):
    """max over every axis but the first, shaped (N, 1, ..., 1)."""
    xp = namespace(a)
    return xp.max(a, axis=tuple(range(1, a.ndim)), keepdims=True)


# ---------------------------------------------------------------- the walk (bounds/walk.py)

def affine_rounding_slack(layer, weight, bias, lower, upper):
    """A bound on the floating-point error of the affine layer's interval computation
    (sound mode), per output: 2 gamma_(n+4) (|W| max(|lower|, |upper|) + |b|), n the fan-in,
    plus 4 eta (k + k' M) for underflow: the centre's and the radius's products each lose at
    most eta / 2 (k: the output's nonzero weights), and the forms W / 2 and |W| / 2 of a
    weight below twice the smallest normal may be off by eta / 2 (k' such weights), which
    the box's entries multiply by at most M, the sample's largest max(|lower|, |upper|)."""
    wv = value_of(weight)
    xp = namespace(wv)
    g = gamma(_fan_in(wv) + 4, unit_roundoff(xp, wv.dtype))
    lo, up = value_of(lower), value_of(upper)
    mag = xp.maximum(xp.abs(lo), xp.abs(up))
    total = value_of(layer.affine(mag, xp.abs(wv), None if bias is None else xp.abs(value_of(bias))))
    # (M capped at the largest float: 0 such weights times an overflowed box is 0, not NaN)
    largest = xp.minimum(_per_sample_max(mag), float(xp.finfo(wv.dtype).max))
    products = _nonzero_per_output(layer, wv) + _inexact_halves_per_output(layer, wv) * largest
    return 2 * g * total + 4 * underflow_allowance(products, xp, wv.dtype)


def affine_forward_error(layer, weight, error_in, slack):
    """Sound mode: a bound on |z - exact z| per output of an affine layer, where z = fl(W h +
    b) and h is within error_in of the exact h: |W| error_in (doubled for its own rounding,
    plus k eta for its k products' underflow, k the output's nonzero weights) plus the
    interval slack, which bounds the rounding of W h + b (|h| is within the box)."""
    wv = value_of(weight)
    xp = namespace(wv)
    propagated = value_of(layer.affine(error_in, xp.abs(wv), None))
    return 2 * propagated + slack + underflow_allowance(_nonzero_per_output(layer, wv), xp, wv.dtype)


# ---------------------------------------------------------------- the last layer (certificate.py)

def last_layer_gamma(fan_in):
    """gamma_(D+10) at float64's unit roundoff (sound mode is float64): the relative error
    of the logits' dot products of D terms and the margin arithmetic after them."""
    return gamma(fan_in + 10, 2.0 ** -53)


def forward_error_norm(bounds):
    """Sound mode: an upper bound on ||penultimate - exact penultimate|| per sample (N,)."""
    return norm_upper(bounds.forward_error, axis=1)


def support_radius(bounds):
    """The radius of the ball that holds h(x') - h for every x' of the eps-ball: R, and in
    sound mode R + ||forward error|| rounded up (h is the computed penultimate, not the
    exact one)."""
    if bounds.forward_error is None:
        return bounds.radius
    return above(bounds.radius + forward_error_norm(bounds))


def logit_slack(bounds, last_weight, last_bias):
    """Sound mode: a bound on the rounding of the logits and of their differences at h,
    per sample: 4 gamma max_j (|W||h| + |b|)_j + 4 D eta, gamma = `last_layer_gamma`(D)
    (each logit's D products lose at most D eta / 2 to underflow)."""
    xp = namespace(last_weight)
    h = bounds.penultimate
    logit_mag = xp.max(xp.abs(h) @ xp.matrix_transpose(xp.abs(last_weight)) + xp.abs(last_bias)[None, :], axis=1)
    dim = last_weight.shape[1]
    return 4 * last_layer_gamma(dim) * logit_mag + 4 * underflow_allowance(dim, xp, last_weight.dtype)


def margin_slack(bounds, last_weight, last_bias):
    """Sound mode: a bound on the rounding error of the last layer and the margin arithmetic
    (float64), per sample: `logit_slack` + 4 gamma max_j ||w_j - w_y|| (R + ||u - l||), which
    covers the worst-case translation's rounding (the norms are upper bounds, free of
    underflow). See docs/soundness.md for what it covers."""
    xp = namespace(last_weight)
    widest = 2 * xp.max(norm_upper(last_weight, axis=1))
    box = norm_upper(bounds.upper - bounds.lower, axis=1, entry_roundings=1)
    support = 4 * last_layer_gamma(last_weight.shape[1]) * widest * (support_radius(bounds) + box)
    return logit_slack(bounds, last_weight, last_bias) + support


def radius_below(ratio):
    """A certified radius a little below the ratio gap / (L ||w_j - w_y||) it comes from:
    one float below fl(ratio (1 - 2^-48)), so that neither the division's rounding nor a tie
    at the exact radius certifies a point on the decision boundary."""
    return below(ratio * (1 - 2.0 ** -48))


# ---------------------------------------------------------------- spectral norms (here, certificates.py, lanczos.py)

def dense_spectral_norm_upper(matrices):
    """Deterministic upper bound on ||M_b||_2 for a batch of dense matrices (B, m, n).

    Each M is first scaled by s = max |M_ij| (so no Gram entry can overflow or lose
    accuracy to underflow), M' = fl(M / s). Then lambda = the largest eigenvalue of the
    smaller Gram matrix G' of M' (M' M'^T or M'^T M', p = min(m, n), inner dimension
    q = max(m, n)) by eigvalsh (backend.eigh), and
        ||M'||_2^2 <= lambda + (2 gamma_q + gamma_{8 p^2} (1 + gamma_q)) F',
    F' = ||M'||_F^2 (1 + gamma_{mn+1}) an upper bound on the Frobenius norm squared: the
    Gram product's rounding is at most gamma_q F' in 2-norm (doubled to cover underflow),
    the eigensolver's backward error is taken as gamma_{8 p^2} ||fl(G')||_F. Finally
    ||M||_2 <= s (sqrt(that) (1 + 8u) + 2u sqrt(F')) (1 + 2u), the 2u sqrt(F') covering the
    rounding of M / s (with underflow too: F' >= 1), the last product rounded up
    (`product_upper`). Returns (B,), 0 for zero matrices. See docs/soundness.md.
    """
    xp = namespace(matrices)
    if matrices.ndim != 3:
        raise ValueError(f"expected a batch of matrices (B, m, n), got shape {tuple(matrices.shape)}")
    _, m, n = matrices.shape
    scale = xp.max(xp.abs(matrices), axis=(1, 2))
    scaled = matrices / _nonzero_or_one(scale)[:, None, None]
    if m <= n:
        gram = xp.matmul(scaled, xp.matrix_transpose(scaled))
    else:
        gram = xp.matmul(xp.matrix_transpose(scaled), scaled)
    lam = eigh(gram, values_only=True)[:, -1]
    return gram_norm_upper(scale, lam, xp.sum(scaled * scaled, axis=(1, 2)), m, n, xp)


def gram_norm_upper(scale, lam, frob_sq, m, n, xp):
    """`dense_spectral_norm_upper`'s bound for a matrix M (m x n) scaled by s = max |M_ij|,
    M' = fl(M / s), from lam = the computed largest eigenvalue of its smaller Gram matrix and
    frob_sq = the computed ||M'||_F^2: with p = min(m, n), q = max(m, n), F' = frob_sq
    (1 + gamma_(mn+1)),
        ||M'||_2^2 <= lam + (2 gamma_q + gamma_(8 p^2) (1 + gamma_q)) F'
    (the Gram product's rounding, doubled to cover underflow, and the eigensolver's backward
    error taken as gamma_(8 p^2) ||fl(G')||_F), and ||M||_2 <= s (sqrt(that) (1 + 8u) +
    2u sqrt(F')) (1 + 2u), the 2u sqrt(F') covering the rounding of M / s (underflow too:
    F' >= 1), the last product rounded up (`product_upper`)."""
    u = unit_roundoff(xp, lam.dtype)
    p, q = min(m, n), max(m, n)
    frob_sq = frob_sq * (1 + gamma(m * n + 1, u))
    g_q = gamma(q, u)
    margin = (2 * g_q + gamma(8 * p * p, u) * (1 + g_q)) * frob_sq
    bound_sq = xp.maximum(lam, xp.zeros_like(lam)) + margin
    bound = xp.sqrt(bound_sq) * (1 + 8 * u) + 2 * u * xp.sqrt(frob_sq)
    return product_upper(scale, bound * (1 + 2 * u))  # rounded up: a subnormal scale too


def dft_norm_upper(best, weight, xp):
    """The circulant bound's allowance for its explicit DFT: from `best`, the largest computed
    ||fl(K(f))||_2 bound over the frequencies, an upper bound on the exact max ||K(f)||_2 of the
    kernel weight (O, C, kh, kw). Each cos/sin table entry is off by at most tau = 32u (the
    angle 2 pi m / N with relative error gamma_3, plus the library's error); each entry of Re
    and Im is then off by at most eps_dft S[o, c], S = sum_ab |w_ocab|, so ||K(f) - fl(K(f))||_2
    <= sqrt(2) eps_dft ||S||_F (a norm free of underflow); underflow adds at most kw (kh + 1)
    eta to each entry of Re and Im (two stages of kh and kw products), 2 sqrt(O C) kw (kh + 1)
    eta to the real form's 2-norm; the sum rounded (1 + 4u), then up."""
    o, c, kh, kw = weight.shape
    u = unit_roundoff(xp, weight.dtype)
    tau = 32 * u
    eps_dft = 2 * gamma(kh + kw + 1, u) + 3 * tau
    s_abs = xp.reshape(xp.sum(xp.abs(weight), axis=(2, 3)), (1, o * c))
    s_frob = norm_upper(s_abs, axis=1, entry_roundings=kh * kw)[0]
    underflow = underflow_allowance(2 * math.sqrt(o * c) * kw * (kh + 1), xp, weight.dtype)
    return above((best + math.sqrt(2) * eps_dft * s_frob + underflow) * (1 + 4 * u))


def cholesky_norm_upper(mu, trace, cmax, p, depth, abs_norm_upper, xp, dtype):
    """`gram_cholesky_upper`'s bound (a Python float) on ||A||_2 once floating-point Cholesky of
    C = fl(mu I - B) ran to completion, B A's computed Gram matrix (p x p, entries dot products
    of `depth` terms), trace = sum |C_ii| and cmax = max |C_ii|: C + dC = R^T R with |dC| <=
    gamma_(p+1) |R^T| |R| (Demmel 1989; Higham, Thm 10.3), so lambda_min(C) >= -gamma_(p+1)
    tr(C) / (1 - gamma_(p+1)), and
        ||A||_2^2 <= mu + gamma_(p+1) tr|C| (1 + gamma_p) / (1 - gamma_(p+1)) + 2u cmax
                     + gamma_depth abs_norm_upper^2 + 4 (2 (p + 1) + cmax) eta + p depth eta
    (the shift's rounding, the Gram's rounding with abs_norm_upper >= ||abs(A)||_2, Rump's 2006
    allowance for underflow in the factorisation, the Gram's own underflow); its square root
    rounded up twice over."""
    u = unit_roundoff(xp, dtype)
    eta = smallest_subnormal(xp, dtype)
    g = gamma(p + 1, u)
    trace = trace * (1 + gamma(p, u))
    total = (mu + g * trace / (1 - g) + 2 * u * cmax + gamma(depth, u) * float(abs_norm_upper) ** 2
             + 4 * (2 * (p + 1) + cmax) * eta + p * depth * eta)
    return math.sqrt(total * (1 + 8 * u)) * (1 + 2 * u)


def lanczos_upper(lam, eps, n, m, xp, dtype):
    """The Lanczos bound's floating-point allowance: sqrt((lam + delta) (1 + rho) / (1 - eps)),
    lam >= the largest Ritz value (and the squared norm at the Ritz vector), eps from the
    Kuczynski-Wozniakowski theorem, rho = sqrt(machine epsilon) for the rounding of the
    Lanczos process (docs/soundness.md), delta = 2 (n + m)^2 eta for underflow in the products
    with A (n inputs) and A^T (m outputs)."""
    rho = lanczos_rho(xp, dtype)
    lam = lam + underflow_allowance(2 * (n + m) ** 2, xp, dtype)
    return xp.sqrt(lam * ((1 + rho) / (1 - eps)))


def lanczos_rho(xp, dtype):
    """rho = sqrt(machine epsilon): the Lanczos bound's relative allowance (`lanczos_upper`)."""
    return math.sqrt(unit_roundoff(xp, dtype) * 2)
