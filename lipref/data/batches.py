"""The batch loop every command shares (certify, bound, attack): consecutive batches of host
arrays moved to the backend, each checked to be exact in the computation's dtype."""
from ..backend import host, to_backend, to_host
from ..errors import InputError


def batches(images, labels, batch_size, xp, dtype):
    """(start, stop, x, y) for consecutive batches of host arrays, moved to the backend. The
    images must be exact in `dtype` (what is certified is the input as given): a value the
    cast would change (a float64 pixel float32 cannot hold, or one beyond its range) is an
    error, never a silent rounding."""
    n = int(labels.shape[0])
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        x = to_backend(images[s:e], xp, dtype)
        check_exact(images[s:e], to_host(x), s, dtype)
        yield s, e, x, to_backend(labels[s:e], xp)


def check_exact(given, cast, offset, dtype):
    """InputError naming the first sample whose value `cast` (to `dtype`) changed."""
    changed = host.asarray(given, dtype=host.float64) != host.asarray(cast, dtype=host.float64)
    if changed.any():
        where = host.argwhere(changed)[0]
        value = given[tuple(where)]
        raise InputError(f"sample {offset + int(where[0])} has the value {value!r}, which {dtype} does not hold "
                         "exactly; certify in float64 (--dtype float64, or --mode sound)")
