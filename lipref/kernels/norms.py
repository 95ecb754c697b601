"""Kernel: per-sample Euclidean norms on the host, one unscaled sum of squares cut into
pieces; registered for "norms".

Replaces the plain definition `lipref.bounds.spectral.norms` (every sample scaled by its
largest entry, then summed: three passes) on NumPy's namespace only. The fast form is one
pass: dot products (`vecdot`, no temporary) over pieces of each sample, then summed (any
order of summation keeps the gamma_n error bound docs/soundness.md uses). Where a sum is so
small that underflowed squares could matter (below tiny * n / eps) or not finite
(overflow), it declines (NotImplemented) and the plain definition runs on the whole batch.

`norms_and_range` also gives the smallest and the largest norm as Python floats, from the
checks it makes anyway: the host power iteration (kernels/power_iteration.py) tests its
rescaling range with them. Host only: on a device those floats would be a synchronisation
per step.
"""
import functools
import math

from array_api_compat import is_numpy_namespace

from ..backend import host, namespace
from .registry import register

# NumPy runs a gufunc's loop (vecdot's) without the interpreter lock only when it has more
# than 500 iterations; one dot per sample of a block of 32 kept the lock, and the threads
# bounding other blocks queued behind it (see BENCHMARKS.md). Cut into pieces, the same
# sums run without it.
_GUFUNC_LOOP_WITHOUT_LOCK = 512
_SHORTEST_PIECE = 64


def on_host(x):
    """Does the host kernel apply to x (NumPy's namespace)?"""
    return is_numpy_namespace(namespace(x))


@register("norms", applies=on_host)
def norms(x):
    """Per-sample norms of x (B, ...) by the unscaled sum of squares, or NotImplemented where
    it is not accurate (then the plain definition runs)."""
    found = unscaled_norms_and_range(x)
    return NotImplemented if found is None else found[0]


def norms_and_range(x):
    """(norms (B,), smallest, largest) of the samples of x (B, ...): `unscaled_norms_and_range`
    where it is accurate, else each sample scaled by its largest entry first (as the plain
    definition). NaN extremes if a norm is NaN."""
    found = unscaled_norms_and_range(x)
    if found is not None:
        return found
    xp = namespace(x)
    axes = tuple(range(1, x.ndim))
    scale = xp.max(xp.abs(x), axis=axes)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    scaled = x / xp.reshape(xp.where(scale > 0, scale, xp.ones_like(scale)), shape)
    result = scale * xp.sqrt(xp.sum(scaled * scaled, axis=axes))
    return result, float(xp.min(result)), float(xp.max(result))


def unscaled_norms_and_range(x):
    """(norms (B,), smallest, largest) of the samples of x (B, ...), or None where the
    unscaled sum of squares is not accurate. NaN extremes if a norm is NaN."""
    xp = namespace(x)
    n, dim = x.shape[0], _sample_dim(x)
    if n == 0:
        return xp.zeros((0,), dtype=x.dtype), math.nan, math.nan
    pieces = _pieces_per_sample(n, dim)
    parts = xp.reshape(x, (n * pieces, dim // pieces))
    with host.errstate(over="ignore"):  # an overflowing sum is found below and declined, not a warning
        squares = xp.vecdot(parts, parts, axis=-1)
    if pieces > 1:
        squares = xp.sum(xp.reshape(squares, (n, pieces)), axis=1)
    smallest, largest = float(xp.min(squares)), float(xp.max(squares))
    floor = _underflow_floor(xp, x.dtype, dim)
    if largest < math.inf and (smallest > floor or (smallest == 0 and _zero_or_above(parts, squares, floor))):
        return xp.sqrt(squares), math.sqrt(smallest), math.sqrt(largest)  # NaN fails both tests
    return None


def _sample_dim(x):
    n = 1
    for d in x.shape[1:]:
        n *= d
    return n


def _zero_or_above(parts, squares, floor):
    """Is every sample either exactly zero (a masked operator with no entry left: its norm
    is exactly 0, no scaling needed) or of squares above floor? A zero sum of squares alone
    does not say the first: squares of 1e-200 underflow to 0 in float64."""
    xp = namespace(parts)
    n = squares.shape[0]
    largest_entry = xp.max(xp.reshape(xp.abs(parts), (n, -1)), axis=1)
    return bool(xp.all((largest_entry == 0) | (squares > floor)))


_FLOAT_INFO = {}  # (id(namespace), id(dtype)) -> (dtype, smallest normal, eps)


def _underflow_floor(xp, dtype, dim):
    """Below this sum of dim squares, underflowed squares could matter: tiny * dim / eps."""
    # keyed by identity: naming a NumPy dtype costs more than asking finfo
    key = (id(xp), id(dtype))
    entry = _FLOAT_INFO.get(key)
    if entry is None or entry[0] is not dtype:
        info = xp.finfo(dtype)
        entry = _FLOAT_INFO[key] = (dtype, float(info.smallest_normal), float(info.eps))
    return entry[1] * dim / entry[2]


@functools.lru_cache(maxsize=256)
def _pieces_per_sample(n, dim):
    """The fewest pieces (a divisor of dim, each at least _SHORTEST_PIECE long) that give
    n samples at least _GUFUNC_LOOP_WITHOUT_LOCK dot products; 1 where none does."""
    want = -(-_GUFUNC_LOOP_WITHOUT_LOCK // max(n, 1))
    for pieces in range(max(want, 1), dim // _SHORTEST_PIECE + 1):
        if dim % pieces == 0:
            return pieces
    return 1
