"""Kernel: power iteration with its decisions taken on the host, registered for
"power_iteration_vector".

The plain definition (lipref/bounds/spectral.py) keeps every test as an array, so that on a
device nothing is read back per step: whether some iterate's norm left the rescaling range,
whether a product was exactly zero. On the host those tests are cheap as Python floats: the
norms kernel (kernels/norms.py) gives the smallest and largest norm from the checks it makes
anyway, and each step does only what they call for (no rescaling pass while every norm is in
range). The iterates are the plain definition's, up to the rounding of the norms' sums
(tests/test_kernels_norms.py checks both on the same operators).
"""
import math

from array_api_compat import is_numpy_namespace

from ..backend import namespace
from .norms import norms_and_range
from .registry import register

# the plain definition's range (bounds/spectral.py; tests/test_kernels_norms.py checks they agree)
RESCALE_ABOVE, RESCALE_BELOW = 2.0 ** 32, 2.0 ** -32


def _start_on_host(apply, apply_adjoint, v0, *rest, **kwargs):
    return is_numpy_namespace(namespace(v0))


@register("power_iteration_vector", applies=_start_on_host)
def host_power_iteration_vector(apply, apply_adjoint, v0, n_iters, gram=None):
    """`spectral.power_iteration_vector` (same arguments and result) on the host."""
    if n_iters < 0:
        raise ValueError(f"n_iters must be >= 0, got {n_iters}")
    v = safe_start(v0)
    in_range = False  # is v in the range of A^T (so that gram may be used)?
    for _ in range(n_iters):
        w = gram(v) if (gram is not None and in_range) else apply_adjoint(apply(v))
        v, gram = _next_iterate(v, w, gram)
        in_range = True
    return normalise(v)


def _next_iterate(v, w, gram):
    """(the next iterate, gram or None) from v and w = A^T A v, decided from the norms' range."""
    xp = namespace(w)
    w_norms, smallest, largest = norms_and_range(w)
    if smallest == 0:
        # w == 0: v lies in A's null space (or A == 0); keep v rather than divide by
        # zero. That v may be outside A^T's range, so gram is off from here on.
        v = xp.where(_per_sample(w_norms == 0, v), v, w)
        gram = None
    else:
        v = w
    if _rescale_needed(w_norms, smallest, largest):
        v = normalise(v)
    return v, gram


def safe_start(v0):
    """`spectral.safe_start` on the host: v0 itself while every sample's norm is in the
    rescaling range, else every sample scaled to unit; the constant unit vector where v0 is
    exactly zero."""
    xp = namespace(v0)
    found, smallest, largest = norms_and_range(v0)
    if smallest == 0:
        fallback = xp.ones_like(v0) / math.sqrt(math.prod(v0.shape[1:]))
        v0 = xp.where(_per_sample(found == 0, v0), fallback, v0)
        found = xp.where(found == 0, xp.ones_like(found), found)  # the fallback's norm
    if _rescale_needed(found, smallest, largest):
        v0 = v0 / _per_sample(found, v0)
    return v0


def normalise(x):
    """x / ||x|| per sample; samples with ||x|| == 0 stay zero (no NaN)."""
    xp = namespace(x)
    found = norms_and_range(x)[0]
    return x / _per_sample(xp.where(found > 0, found, xp.ones_like(found)), x)


def _rescale_needed(found, smallest, largest):
    """Does some nonzero norm lie outside [RESCALE_BELOW, RESCALE_ABOVE]? From the extremes
    when none is zero; else the smallest nonzero norm is not known, and the norms themselves
    are asked. NaN extremes say no, as NaN norms do."""
    if smallest != 0:
        return largest > RESCALE_ABOVE or smallest < RESCALE_BELOW
    xp = namespace(found)
    return bool(xp.any((found > RESCALE_ABOVE) | ((found < RESCALE_BELOW) & (found != 0))))


def _per_sample(s, like):
    return namespace(s).reshape(s, (s.shape[0],) + (1,) * (like.ndim - 1))
