"""What every benchmark script shares: thread counts set before NumPy loads, and results
files written as strict JSON (no NaN or Infinity: null instead), atomically, carrying
lipref's provenance.

A library module of bench/ (no command of its own): the scripts that import it run it in
their smoke tests (tests/test_bench.py)."""
import json
import math
import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def set_threads(n):
    """Thread counts for OpenBLAS / OpenMP / MKL; effective only before NumPy is imported."""
    for var in THREAD_VARIABLES:
        os.environ[var] = str(n)


def strict(value):
    """`value` with every non-finite float replaced by None (recursively through dicts,
    lists and tuples): JSON has no NaN or Infinity, and a reader must not meet them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def json_text(doc, indent=1):
    """The strict JSON text of `doc` (see `strict`), with a final newline."""
    return json.dumps(strict(doc), indent=indent, allow_nan=False) + "\n"


def write_json(path, doc, indent=1):
    """Write `doc` to `path` as strict JSON, atomically (a temporary file in the same folder,
    then a rename: a reader never sees half a file, an interrupted write leaves the old
    one), with lipref's provenance added under "provenance" unless `doc` has one."""
    from lipref.models import atomic_write_bytes
    from lipref.provenance import provenance
    doc = dict(doc) if "provenance" in doc else {**doc, "provenance": provenance()}
    atomic_write_bytes(path, json_text(doc, indent).encode("utf-8"))
    return path
