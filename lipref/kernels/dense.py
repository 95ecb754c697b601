"""Kernels: dense products in the orientation OpenBLAS runs faster (host only).

Registered for "matmul", "linear" and "linear_input_grad" (the input gradient g @ W); each
computes the plain definition's product, possibly transposed, so only the rounding of the
sums can differ (tests/test_kernels_dense.py). On NumPy only: the trick answers an OpenBLAS
quirk (see BENCHMARKS.md), not a property of the math.
"""
from array_api_compat import is_numpy_namespace

from ..backend import namespace
from .registry import register


def _on_host(a, *rest):
    return is_numpy_namespace(namespace(a))


def product(a, b):
    """a @ b for 2-D arrays, computed as (b^T a^T)^T when a has fewer rows than b has
    columns: OpenBLAS runs a product with few rows (a block of 32 samples against a dense
    layer) slower than the same product transposed (see BENCHMARKS.md)."""
    xp = namespace(a, b)
    if a.shape[0] < b.shape[1]:
        return xp.matmul(b.T, a.T).T
    return xp.matmul(a, b)


def add_in_place(new, b):
    """new + b, written into `new` (an array the caller just made, never an input) where
    that keeps its dtype: no second output-sized array (see BENCHMARKS.md)."""
    if new.dtype != b.dtype:
        return new + b
    new += b
    return new


@register("matmul", applies=_on_host)
def matmul(a, b):
    return product(a, b)


@register("linear", applies=_on_host)
def linear(x, weight, bias):
    out = product(x, weight.T)
    return out if bias is None else add_in_place(out, bias)


@register("linear_input_grad", applies=_on_host)
def linear_input_grad(g, weight):
    return product(g, weight)
