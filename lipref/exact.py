"""Exact arithmetic on float arrays times rationals, for the imports' folds (lipref.folding).

`scaled_plain(values, f)`: each value times the rational f, in fractions.Fraction, correctly
rounded to float64 (Python's int division is), and whether every product is a float64 (then
the rounding changed nothing). The plain definition.

`scaled(values, f)`: the same numbers, vectorised, for the common factors; it returns exactly
what `scaled_plain` returns (tests/test_onnx_folding.py checks it). With f = p / q in lowest
terms:
- q a power of two and p < 2^53 (f is a float64): fl(v f) is one IEEE product, correctly
  rounded; it is exact iff the product's rounding error, computed exactly by Dekker's
  TwoProduct (Veltkamp's split), is 0;
- p, q < 2^53 and every v p exact (TwoProduct error 0): fl(fl(v p) / q) is one IEEE division
  of exact numbers, correctly rounded; it is exact iff r q = v p exactly (TwoProduct of r, q);
- otherwise, and for any value where TwoProduct's conditions fail (|v| or |f| beyond 2^995,
  products below 2^-968, where the error term could underflow), `scaled_plain` on those values.

`exact_row_sums(values)`: the exact sum of each row of a float array, as Fractions (integers
scaled by a power of two: float32 values are multiples of 2^-149, float64 ones of 2^-1074).
"""
from fractions import Fraction

from .backend import host

SPLIT = 134217729.0  # 2^27 + 1: Veltkamp's splitter for float64
SAFE_HIGH = 2.0 ** 995  # below this, splitting cannot overflow
SAFE_LOW = 2.0 ** -968  # above this, a product's error term cannot underflow (2^-1074 * 2^106)


def scaled_plain(values, f):
    """(float64 array, exact) of `values` (a float array) times the Fraction f: each product
    correctly rounded; exact when every product is a float64. None where one overflows."""
    flat = host.asarray(values, dtype=host.float64).ravel().tolist()
    products = [Fraction(v) * f for v in flat]
    try:
        rounded = [float(p) for p in products]
    except OverflowError:
        return None
    if not all(abs(r) <= 1.7976931348623157e308 for r in rounded):
        return None
    exact = all(Fraction(r) == p for r, p in zip(rounded, products))
    return host.asarray(rounded, dtype=host.float64).reshape(host.shape(values)), exact


def _split(a):
    c = SPLIT * a
    high = c - (c - a)
    return high, a - high


def _product_error(a, b, p):
    """a b - p exactly, for p = fl(a b) (Dekker's TwoProduct; the module docstring's conditions)."""
    ah, al = _split(a)
    bh, bl = _split(b)
    return ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _safe(values, product, factor):
    return (host.abs(values) < SAFE_HIGH) & ((host.abs(product) >= SAFE_LOW) | (values == 0)) & \
        (abs(factor) < SAFE_HIGH)


def scaled(values, f):
    """`scaled_plain(values, f)`, computed as the module docstring says."""
    v = host.asarray(values, dtype=host.float64)
    p, q = f.numerator, f.denominator
    with host.errstate(over="ignore", invalid="ignore"):
        if q & (q - 1) == 0 and abs(p) < 2 ** 53 and Fraction(float(f)) == f:  # f is a float64
            factor = float(f)
            out = v * factor
            safe = _safe(v, out, factor)
            exact_here = _product_error(v, factor, out) == 0
        elif abs(p) < 2 ** 53 and q < 2 ** 53:
            wide = v * float(p)
            safe = _safe(v, wide, float(p)) & (_product_error(v, float(p), wide) == 0)
            out = wide / float(q)
            back = out * float(q)
            safe &= _safe(out, back, float(q))
            exact_here = (back == wide) & (_product_error(out, float(q), back) == 0)
        else:
            return scaled_plain(values, f)
    if not bool(host.all(host.isfinite(out[safe]))):
        return None
    exact = bool(host.all(exact_here[safe]))
    unsafe = ~safe
    if bool(host.any(unsafe)):
        rest = scaled_plain(v[unsafe], f)
        if rest is None:
            return None
        out[unsafe], exact = rest[0], exact and rest[1]
    return out, exact


def exact_row_sums(values):
    """The exact sum of each row of float array `values` (float32 or float64; (rows, ...)), a
    list of Fractions."""
    a = host.asarray(values)
    rows = a.reshape(a.shape[0], -1)
    if a.dtype == host.float32:
        scaled_ints = (rows.astype(host.float64) * 2.0 ** 149).tolist()  # whole numbers below 2^277
        return [Fraction(sum(int(x) for x in row), 2 ** 149) for row in scaled_ints]
    unit, out = 2 ** 1074, []
    for row in host.asarray(rows, dtype=host.float64).tolist():
        total = 0
        for x in row:
            n, d = x.as_integer_ratio()
            total += n * (unit // d)
        out.append(Fraction(total, unit))
    return out
