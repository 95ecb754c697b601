"""Spectral norms of linear operators: estimates (power iteration) and the small helpers the
bounds share. Sound upper bounds: of a dense matrix, rounding.dense_spectral_norm_upper; of
conv layers, certificates.py and lanczos.py.

An operator A is given by two functions acting on batches, `apply(v)` and
`apply_adjoint(u)`: the leading axis indexes samples and every sample has its own
operator (e.g. a masked layer m_out * W(m_in * v)). All math takes its array namespace
from its inputs, so it runs on NumPy, CuPy and array-api-strict.

`power_iteration`: sigma = ||A v|| for a unit v, a LOWER estimate of ||A||_2. Fast, no
guarantee of being close; the returned v warm-starts the next call (docs/soundness.md,
"Spectral norms").
"""
import math

from .. import primitives as P
from ..backend import namespace
from ..kernels.registry import replaceable
from ..tape import value_of

# ---------------------------------------------------------------- per-sample norms

def _flat(x):
    """(B, ...) -> (B, n)."""
    xp = namespace(x)
    return xp.reshape(x, (x.shape[0], -1))


def _sample_dim(x):
    n = 1
    for d in x.shape[1:]:
        n *= d
    return n


@replaceable("norms")
def norms(x):
    """Per-sample Euclidean norm (B,): each sample's largest entry scaled out first, so no
    square overflows or underflows (a zero sample has norm 0)."""
    xp = namespace(x)
    axes = tuple(range(1, x.ndim))
    scale = xp.max(xp.abs(x), axis=axes)
    scaled = x / _per_sample(_safe(scale), x)
    return scale * xp.sqrt(xp.sum(scaled * scaled, axis=axes))


def scaled_l2_norm(x, axis):
    """The l2 norm over `axis` (an int) of an array or Var, each row's largest |entry| s
    scaled out first, s ||x / s||, so that no square underflows or overflows (entries of
    1e-170 in float64, of 1e-23 in float32). s carries no gradient: s ||x / s|| is ||x|| as
    a function, so the gradient is the same."""
    xv = value_of(x)
    xp = namespace(xv)
    scale = xp.max(xp.abs(xv), axis=axis, keepdims=True)
    safe = xp.where(scale > 0, scale, xp.ones_like(scale))  # a zero row stays zero
    return P.multiply(P.l2_norm(P.divide(x, safe), axis, False), xp.squeeze(safe, axis=axis))


def _per_sample(s, like):
    """(B,) -> (B, 1, ..., 1) broadcastable against `like`."""
    return namespace(s).reshape(s, (s.shape[0],) + (1,) * (like.ndim - 1))


def _safe(s):
    """s where s > 0, else 1 (a denominator that never divides by zero)."""
    xp = namespace(s)
    return xp.where(s > 0, s, xp.ones_like(s))


def _normalise(x):
    """x / ||x|| per sample and the norms; samples with ||x|| == 0 stay zero (no NaN)."""
    found = norms(x)
    return x / _per_sample(_safe(found), x), found


# ---------------------------------------------------------------- power iteration

# Power iteration needs only the direction of each iterate. Dividing by the norm at every
# step is a pass over the iterate; it is done only when some norm leaves [2^-32, 2^32]
# (then the next product can neither overflow nor underflow in float32 unless ||A||^2 is
# beyond 2^90 or below 2^-90), and once at the end.
_RESCALE_ABOVE, _RESCALE_BELOW = 2.0 ** 32, 2.0 ** -32


def power_iteration(apply, apply_adjoint, v0, n_iters, gram=None, left=True):
    """Batched power iteration on A^T A, one operator per sample.

    v0: (B, ...) start vectors in A's input shape; callers draw them at random (Gaussian)
    or pass the v of a previous call to warm-start. A sample whose v0 is exactly zero is
    started from the constant unit vector instead (deterministic, never NaN).
    n_iters: number of A^T A products (0 allowed: then v = v0 / ||v0||).
    gram: optional v -> A^T A v, valid for v in the range of A^T. After the first product
    every iterate is in that range, so a masked operator can skip the mask products the
    iterate already satisfies. The first product always uses apply_adjoint(apply(v)):
    a stored start vector need not fit today's masks.
    left: also return u (False: u is None, saving a pass over A v).

    Returns (sigma, u, v): v (B, ...) unit per sample, sigma (B,) = ||A v|| (a lower
    estimate of ||A||_2, exact only in the limit), u = A v / sigma (0 where sigma == 0, so
    a zero operator gives sigma 0 and u 0, not NaN).

    Between products the iterates are scaled only when their norms leave a safe range
    (see _RESCALE_ABOVE): the same directions as dividing at every step, up to rounding.
    """
    v = power_iteration_vector(apply, apply_adjoint, v0, n_iters, gram)
    out = apply(v)
    if not left:
        return norms(out), None, v
    u, sigma = _normalise(out)
    return sigma, u, v


@replaceable("power_iteration_vector")
def power_iteration_vector(apply, apply_adjoint, v0, n_iters, gram=None):
    """power_iteration's v alone (unit per sample, same arguments), without the product
    A v that sigma needs: for callers that take ||A v|| on a tape themselves. Every test
    stays an array (no host read per step, on a device); the host kernel
    (kernels/power_iteration.py) takes the same decisions from the norms' range as floats."""
    if n_iters < 0:
        raise ValueError(f"n_iters must be >= 0, got {n_iters}")
    v = safe_start(v0)
    in_range = False  # is v in the range of A^T (so that gram may be used)?
    for step in range(n_iters):
        w = gram(v) if (gram is not None and in_range) else apply_adjoint(apply(v))
        v, gram = _next_iterate(v, w, gram, step)
        in_range = True
    return _normalise(v)[0]


def _next_iterate(v, w, gram, step):
    """(the next iterate, gram or None) from v and w = A^T A v, all on the device: w, but v
    where w == 0 (v lies in A's null space: keep it rather than divide by zero); every
    sample scaled to unit once some nonzero norm leaves the safe range."""
    xp = namespace(w)
    w_norms = norms(w)
    zero = w_norms == 0
    if step == 0 and gram is not None and bool(xp.any(zero)):
        # a kept start may lie outside A^T's range: gram is off from here on (the one host
        # read of a call; later kept iterates are earlier products, inside the range)
        gram = None
    v = xp.where(_per_sample(zero, v), v, w)
    leaves = (w_norms > _RESCALE_ABOVE) | ((w_norms < _RESCALE_BELOW) & ~zero)
    ones = xp.ones_like(w_norms)
    factor = xp.where(xp.any(leaves), _safe(xp.where(zero, ones, w_norms)), ones)
    return v / _per_sample(factor, v), gram


def safe_start(v0):
    """The start power_iteration uses, from v0 (B, ...): v0 itself while every sample's
    norm is in the rescaling range (only its direction matters), else every sample scaled
    to unit; the constant unit vector where v0 is exactly zero (deterministic, never NaN)."""
    xp = namespace(v0)
    found = norms(v0)
    zero = found == 0
    fallback = xp.ones_like(v0) / math.sqrt(_sample_dim(v0))
    v0 = xp.where(_per_sample(zero, v0), fallback, v0)
    found = xp.where(zero, xp.ones_like(found), found)  # the fallback's norm
    leaves = xp.any((found > _RESCALE_ABOVE) | (found < _RESCALE_BELOW))  # else divide by 1
    return v0 / _per_sample(xp.where(leaves, found, xp.ones_like(found)), v0)
