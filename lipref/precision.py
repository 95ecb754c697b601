"""The precision of a model's parameters: what a file holds, and what float32 can hold exactly.

A model has one precision, float32 or float64: that of its file's parameters, each widened
exactly (float16 and bfloat16 to float32; integers within +-2^53 and wider floats holding
float64 numbers to float64); a file that mixes them widens every parameter to the widest
(exactly: float32 -> float64 loses nothing). What the engine computes in is chosen from this
and the data (`inputs.compute_dtype`): float32 only where it holds every value exactly, so
that the model certified is the model in the file. All functions work on host arrays.
"""
from .backend import host

PRECISIONS = ("float32", "float64")
EXACT_INTEGERS = 2 ** 53  # integers up to this magnitude are exact in float64
NARROW_FLOATS = ("float16", "bfloat16")  # every value is a float32 number


def widen_exactly(a, refuse):
    """Host array `a` as float32 or float64 holding exactly its values (see the module
    docstring); anything else raises `refuse(reason)`: complex, bool, strings, float8,
    integers beyond +-2^53, longdouble values that float64 does not hold."""
    name = a.dtype.name
    if name in PRECISIONS:
        return a
    if name in NARROW_FLOATS:
        return a.astype(host.float32)
    if a.dtype.kind in "iu":
        if a.size and (int(a.max()) > EXACT_INTEGERS or int(a.min()) < -EXACT_INTEGERS):
            raise refuse("has integers beyond +-2^53, which float64 does not hold exactly")
        return a.astype(host.float64)
    if a.dtype.kind == "f":  # longdouble: exact where its values are float64 numbers
        wide = a.astype(host.float64)
        if bool(host.any(host.isfinite(a) & (wide.astype(a.dtype) != a))):
            raise refuse(f"has dtype {a.dtype} with values that float64 does not hold")
        return wide
    raise refuse(f"has dtype {a.dtype}; parameters must be float16, bfloat16, float32, float64 or integers")


def precision_of(arrays):
    """'float64' when any of the (widened) host arrays is float64, else 'float32'."""
    return "float64" if any(a.dtype == host.float64 for a in arrays) else "float32"


def exact_in_float32(a):
    """Whether every value of host array `a` (float32 or float64) is a float32 number: a cast
    to float32 then changes nothing (no rounding, no overflow, no underflow)."""
    if a.dtype == host.float32:
        return True
    with host.errstate(over="ignore"):  # a value beyond float32's range becomes inf: not exact
        return bool(host.all(a.astype(host.float32) == a))


def exact_sum(a, b):
    """a + b for host arrays of float32 / float64, in their common dtype where that holds the
    sum exactly, else in float64 where that does; None where neither does (or it overflows).
    Exactness by Knuth's TwoSum: s = fl(a + b) and e = (a - (s - b')) + (b - b'), b' = s - a,
    give s + e = a + b exactly (round to nearest, no overflow), so the sum is exact iff e = 0."""
    dtype = host.result_type(a, b)
    for wide in (dtype, host.float64):
        x, y = host.asarray(a, dtype=wide), host.asarray(b, dtype=wide)
        with host.errstate(over="ignore", invalid="ignore"):
            s = x + y
            b_virtual = s - x
            error = (x - (s - b_virtual)) + (y - b_virtual)
        if bool(host.all(host.isfinite(s)) and host.all(error == 0)):
            return s
    return None
