"""What every JSON document lipref prints or writes is: strict JSON (RFC 8259: no NaN, no
Infinity, which strict parsers reject), with lipref's provenance.

An infinite number is meaningful output (a certified radius where no class can ever win,
e.g. a last layer whose class rows are equal) and is written as the string "inf" or
"-inf". NaN is never a result: a NaN in an output is a bug in lipref, and `json_ready`
raises (keeping the traceback) instead of printing it; values copied from a user's file
(free-form model metadata) may pass `nan="nan"` to keep them as that string."""
import json
import math

from .provenance import provenance

INFINITIES = {math.inf: "inf", -math.inf: "-inf"}


def json_ready(obj, nan=None, where="$"):
    """`obj` (dicts, lists, tuples, numbers, strings, None) with every infinite float replaced by
    "inf" / "-inf"; a NaN raises ValueError naming its place (`where`, e.g. $.samples[3].local)
    unless `nan` is a string to write instead."""
    if isinstance(obj, float):
        if math.isnan(obj):
            if nan is None:
                raise ValueError(f"NaN in lipref's output at {where}: a bug in lipref, please report it")
            return nan
        return INFINITIES.get(obj, obj)
    if isinstance(obj, dict):
        return {k: json_ready(v, nan, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v, nan, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def dumps(obj, indent=None, nan=None):
    """Strict JSON text of `obj` (`json_ready`, then json.dumps with allow_nan=False)."""
    return json.dumps(json_ready(obj, nan), indent=indent, allow_nan=False)


def with_provenance(obj, reference=False):
    """The JSON object `obj` with a "provenance" key (`provenance.provenance`); `reference`:
    the run used the plain definitions only (--reference), though its context has ended."""
    if not isinstance(obj, dict):
        raise TypeError(f"a JSON output is an object, to carry its provenance; got {type(obj).__name__}")
    return {**obj, "provenance": provenance(reference=reference)}
