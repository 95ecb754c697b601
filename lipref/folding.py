"""Folding an elementwise affine map into the conv or linear layer next to it, as the imports
do for input normalisation ((x - mean) / std, Keras's x * (1 / std)), Keras's batch norm
(Mul and Add by per-channel constants) and BatchNorm (torch, ONNX).

Elementwise constants (`Elementwise`): the composed map x -> a x + c (a, c per feature) is
kept in exact rationals (fractions.Fraction), and so are the folded parameters: on the input
side of a layer W' = W diag(a), b' = b + W c; on its output side W' = diag(a) W, b' = a b + c.
`store` keeps them where the model's precision, or else float64, holds every value exactly:
the folded model then computes exactly the function the file describes. Where neither does,
the fold rounds: each value is the exact one correctly rounded to float64 (within half an
ulp), and the fold is recorded as rounded (`record`, said on stderr). An input normalisation
(constants before the first layer) that rounds is refused by sound mode (`rounded_folds`): it
can be left out of the model and applied to the data. A rounded fold between layers (Keras's
batch norm as Mul + Add, a bias Add after it) is a batch norm's fold, and is treated as one.

BatchNorm in evaluation mode, gamma (z - mean) / sqrt(var + eps) + beta (`fold_batchnorm`):
the square root has no exact floating-point value in general, so no exact fold exists. It is
folded in float64, W' = W s, b' = (b - mean) s + beta with s = gamma / sqrt(var + eps), and the
model certified (in both modes) is that folded float64 model, as the metadata and stderr say;
each folded value is within a
stated bound of the exact fold (gamma_4 relative on weights, gamma_5 (|b - mean| |s| + |beta|)
on biases, plus the smallest subnormal; the bounds are recorded with the fold).
"""
import math
import warnings
from fractions import Fraction

from .backend import host
from .exact import exact_row_sums, scaled, scaled_plain

U64 = 2.0 ** -53  # float64's unit roundoff
ETA64 = 2.0 ** -1074  # float64's smallest subnormal


class FoldWarning(UserWarning):
    """A fold an import made that the user should know of (the CLI prints it as one line)."""


def gamma(k):
    """Higham's gamma_k = k u / (1 - k u) for float64: the bound on k roundings' relative error."""
    return k * U64 / (1 - k * U64)


# ---------------------------------------------------------------- exact rationals

def rationals(a):
    """An object array of Fractions holding exactly the values of float host array `a` (an
    object array, already rationals, as it is)."""
    if a.dtype == object:
        return a
    values = host.asarray(a, dtype=host.float64)  # float16/32 widen exactly
    out = host.empty(values.shape, dtype=object)
    out.ravel()[:] = [Fraction(v) for v in values.ravel().tolist()]
    return out


def _rounded(values):
    """Float64 array of the Fractions in `values`, each correctly rounded (Python's int division
    is); None where one is beyond float64's range."""
    try:
        return host.asarray([float(v) for v in values.ravel().tolist()], dtype=host.float64).reshape(values.shape)
    except OverflowError:
        return None


def store(values, precision):
    """(host array, exact) for an object array of Fractions: in `precision` ("float32" or
    "float64") where it holds every value exactly, else in float64 where that does (exact True),
    else correctly rounded to float64 (exact False). None where a value exceeds float64."""
    wide = _rounded(values)
    if wide is None or not host.all(host.isfinite(wide)):
        return None
    flat, exact_flat = values.ravel().tolist(), wide.ravel().tolist()
    exact = all(Fraction(x) == v for x, v in zip(exact_flat, flat))  # stops at the first inexact value
    if exact and precision == "float32":
        with host.errstate(over="ignore"):
            narrow = wide.astype(host.float32)
        if bool(host.all(narrow == wide)):
            return narrow, True
    return wide, exact


class Elementwise:
    """x -> scale * x + shift on features of `shape`, in exact rationals (object arrays), built
    from the file's constants one op at a time (`apply`); `ops` names them in order."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.scale = host.full(self.shape, Fraction(1), dtype=object)
        self.shift = host.full(self.shape, Fraction(0), dtype=object)
        self.ops = []

    def apply(self, op, constant, data_first=True):
        """Compose with `op` ("Add", "Sub", "Mul", "Div") of a constant broadcast to the features
        (data_first False: the constant is the op's first operand, as in c - x). Returns None, or
        the reason the op is not affine in x (c / x, a division by zero)."""
        c = rationals(host.broadcast_to(constant, (1, *self.shape))[0])
        if op == "Div" and (not data_first or any(v == 0 for v in c.ravel())):
            return "c / x is not affine in x" if not data_first else "a division by zero"
        if op == "Add":
            self.shift = self.shift + c
        elif op == "Sub" and data_first:
            self.shift = self.shift - c
        elif op == "Sub":
            self.scale, self.shift = -self.scale, c - self.shift
        elif op == "Mul":
            self.scale, self.shift = self.scale * c, self.shift * c
        else:
            self.scale, self.shift = self.scale / c, self.shift / c
        self.ops.append(op)
        return None

    @property
    def shifts(self):
        return any(v != 0 for v in self.shift.ravel())

    def per_channel(self):
        """(scale, shift) of shape (C,) where features (C, H, W) share them over each image,
        else None."""
        if len(self.shape) != 3:
            return None
        first = (self.scale[:, :1, :1], self.shift[:, :1, :1])
        if not (host.all(self.scale == first[0]) and host.all(self.shift == first[1])):
            return None
        return first[0].reshape(-1), first[1].reshape(-1)

    def per_channel_on(self, shape):
        """The same per-channel map on features (C, H', W') (after a pooling)."""
        scale, shift = self.per_channel()
        out = Elementwise(shape)
        out.scale = host.broadcast_to(scale.reshape(-1, 1, 1), shape).copy()
        out.shift = host.broadcast_to(shift.reshape(-1, 1, 1), shape).copy()
        out.ops = list(self.ops)
        return out

    def transposed(self, perm):
        """The same map on features transposed by `perm` (axes of the features, no batch)."""
        out = Elementwise(tuple(self.shape[p] for p in perm))
        out.scale, out.shift, out.ops = self.scale.transpose(perm), self.shift.transpose(perm), list(self.ops)
        return out

    def flattened(self):
        out = Elementwise((math.prod(self.shape),))
        out.scale, out.shift, out.ops = self.scale.reshape(-1), self.shift.reshape(-1), list(self.ops)
        return out


def _groups(factors):
    """{value: indices} of an object array of Fractions (1-D)."""
    out = {}
    for i, v in enumerate(factors.ravel().tolist()):
        out.setdefault(v, []).append(i)
    return out


def _shift_terms(weight, shift):
    """W c exactly (Fractions, one per output) for shifts c per input column / channel."""
    total = [Fraction(0)] * weight.shape[0]
    for value, cols in _groups(shift).items():
        if value != 0:
            sums = exact_row_sums(weight[:, cols])
            total = [t + value * s for t, s in zip(total, sums)]
    return host.array(total, dtype=object)


def fold_affine(weight, bias, inputs=None, outputs=None, scale=None):
    """The fold of x -> a x + c before a layer (`inputs` (a, c): one per input of a Linear (out,
    in), per channel of a Conv2d (O, C, k, k)) and z -> r z + s after it (`outputs` (r, s): one
    per output): W' = diag(r) W diag(a), b' = r (b + W c) + s, exactly (module docstring).
    Returns (weight', exact, bias'): weight' a float64 array, each value the exact one correctly
    rounded, or None where the weight is unchanged; exact whether weight' is the exact product;
    bias' Fractions. None where a value exceeds float64. `scale` (exact.scaled or
    exact.scaled_plain; None: scaled, or scaled_plain with the kernels off) multiplies blocks."""
    if scale is None:
        from .kernels import enabled
        scale = scaled if enabled() else scaled_plain
    ones = host.full(weight.shape[1], Fraction(1), dtype=object)
    a, c = inputs if inputs is not None else (ones, ones * 0)
    r, s = outputs if outputs is not None else (host.full(weight.shape[0], Fraction(1), dtype=object),
                                                host.full(weight.shape[0], Fraction(0), dtype=object))
    b = rationals(bias) + _shift_terms(weight, c) if any(v != 0 for v in c.ravel()) else rationals(bias)
    b = r * b + s
    if all(v == 1 for v in r.ravel()) and all(v == 1 for v in a.ravel()):
        return None, True, b
    out, exact = host.array(weight, dtype=host.float64), True
    for r_value, rows in _groups(r).items():
        for a_value, cols in _groups(a).items():
            f = r_value * a_value
            if f == 1:
                continue
            index = host.ix_(rows, cols)
            result = scale(out[index], f)
            if result is None:
                return None
            out[index], exact = result[0], exact and result[1]
    return out, exact, b


# ---------------------------------------------------------------- BatchNorm

def fold_batchnorm(weight, bias, gamma_, beta, mean, var, eps):
    """(weight', bias', bounds) of a conv or linear layer (weight (out, ...), bias (out,))
    followed by BatchNorm in evaluation mode, folded in float64 (module docstring). bounds:
    {"max_weight_error", "max_bias_error"}, the largest bound on |folded - exact| (absolute).
    The caller checks that var + eps > 0."""
    w, b = (host.asarray(v, dtype=host.float64) for v in (weight, bias))
    g, be, m, v = (host.asarray(x, dtype=host.float64) for x in (gamma_, beta, mean, var))
    s = g / host.sqrt(v + float(eps))  # three roundings: gamma_3 relative
    shape = (-1,) + (1,) * (w.ndim - 1)
    folded_w = w * s.reshape(shape)  # a fourth
    centred = b - m
    folded_b = centred * s + be  # the bias: five, on |b - mean| |s| + |beta|
    slack = 1 + 8 * U64  # the bounds' own roundings
    w_bound = (gamma(4) / (1 - gamma(4)) * host.abs(folded_w) + ETA64) * slack
    b_bound = (gamma(5) * (host.abs(centred) * host.abs(s) * (1 + gamma(4)) + host.abs(be)) + 2 * ETA64) * slack
    bounds = {"max_weight_error": float(host.max(w_bound)), "max_bias_error": float(host.max(b_bound))}
    return folded_w, folded_b, bounds


def batchnorm_problem(mean, var, eps, channels):
    """None, or why BatchNorm statistics cannot be folded: shapes other than (channels,), NaN or
    inf, var + eps <= 0."""
    for name, a in (("running mean", mean), ("running variance", var)):
        if a is None:
            return f"no {name} (track_running_stats=False normalises with each batch's statistics)"
        if tuple(a.shape) != (channels,):
            return f"{name} of shape {tuple(a.shape)} for {channels} channels"
        if not host.all(host.isfinite(a)):
            return f"{name} has NaN or inf"
    if not math.isfinite(float(eps)) or not host.all(host.asarray(var, dtype=host.float64) + float(eps) > 0):
        return f"var + eps is not positive (eps {float(eps):g})"
    return None


# ---------------------------------------------------------------- records

def record(kind, where, into, exact, precision, **extra):
    """The metadata entry of one fold (model.metadata["folds"]), said on stderr where it rounds."""
    entry = {"kind": kind, "from": where, "into_layer": into, "exact": bool(exact), "precision": precision, **extra}
    if kind == "batchnorm":
        warnings.warn(f"{where} folded into layer {into} in float64: the model certified is the folded one (each "
                      f"folded value within {entry['max_weight_error']:.2g} of the exact fold on weights, "
                      f"{entry['max_bias_error']:.2g} on biases)", FoldWarning, stacklevel=3)
    elif not exact and entry.get("input_normalisation"):
        warnings.warn(f"{where} folds into layer {into} only with rounding (correctly rounded to float64): the "
                      "model is the rounded fold, which fast mode certifies and sound mode refuses", FoldWarning,
                      stacklevel=3)
    elif not exact:
        warnings.warn(f"{where} folded into layer {into} with rounding: the model certified is the folded one, each "
                      "value the exact fold correctly rounded to float64", FoldWarning, stacklevel=3)
    return entry


def rounded_folds(metadata):
    """The input normalisations in a model's metadata whose fold rounded: sound mode refuses those."""
    folds = metadata.get("folds", []) if isinstance(metadata, dict) else []
    return [f for f in folds if isinstance(f, dict) and f.get("kind") == "elementwise" and not f.get("exact", True)
            and f.get("input_normalisation")]
