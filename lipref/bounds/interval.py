"""Pre-activation bounds over the eps-ball: interval bounds intersected with ball bounds.

Interval (IBP) bounds go through an affine layer in centre/radius form: the centre through
the layer, the radius through |W|. The ball bound uses what the interval cannot: if every
point of the ball moves the layer's input by at most r in l2 (r = eps times the Lipschitz
bound of the layers before), output k moves by at most r * ||row_k restricted to inputs that
can move||. Intersecting the two keeps the tighter side of each. All functions take arrays or
tape Vars alike, so training can differentiate through the bounds.
"""
from .. import primitives as P
from ..backend import namespace
from ..layers import ClampedMaxMin, ClippedReLU, Conv2d, Flatten, Linear, ReLU
from ..tape import value_of


def check_model(model):
    """Refuse a model with a layer the bounds do not know."""
    for layer in model.layers:
        if not isinstance(layer, (Linear, Conv2d, ReLU, ClippedReLU, ClampedMaxMin, Flatten)):
            raise TypeError(f"no Lipschitz bound for layer type {type(layer).__name__}; "
                            "unknown layers are an error, never 'norm 1'")


def affine(layer, x, weight, bias):
    """The affine layer's map (bias may be None)."""
    if isinstance(layer, Linear):
        return P.linear(x, weight, bias)
    if isinstance(layer, Conv2d):
        return P.conv2d(x, weight, bias, layer.stride, layer.padding)
    raise TypeError(f"not an affine layer: {type(layer).__name__}")


def affine_adjoint(layer, u, weight):
    """The adjoint of the affine layer's linear part, on arrays of the layer's output shape."""
    if isinstance(layer, Linear):
        return P.matmul(u, weight)
    if isinstance(layer, Conv2d):
        return P.conv2d_transpose(u, weight, layer.stride, layer.padding, layer.in_shape[1:])
    raise TypeError(f"not an affine layer: {type(layer).__name__}")


def weight_forms(params):
    """The forms of an affine layer's weight W that the bounds use: {"half": W / 2,
    "abs_half": |W| / 2, "square": (W / s)^2 and "row_scale": s} (arrays or tape Vars, as
    params are), s the largest |weight| of each output (`row_scales`), so that no square of
    a row norm underflows or overflows. A caller that bounds many blocks of samples computes
    them once, not per block (a few passes over the weight)."""
    w = params["weight"]
    ndim = value_of(w).ndim
    scale = row_scales(value_of(w))
    xp = namespace(scale)
    half = P.multiply(w, 0.5)
    safe = xp.where(scale > 0, scale, xp.ones_like(scale))  # a zero row stays zero
    scaled = P.divide(w, xp.reshape(safe, (scale.shape[0],) + (1,) * (ndim - 1)))
    # shaped like one sample's output: (O,) for a dense layer, (O, 1, 1) for a conv layer
    row_scale = xp.reshape(scale, (scale.shape[0],) + (1,) * (ndim - 2))
    return {"half": half, "abs_half": P.abs(half), "square": P.square(scaled), "row_scale": row_scale}


def row_scales(weight):
    """Per output (first axis), the largest |weight| (arrays, no gradient: s ||row / s|| is
    ||row|| as a function, so the gradient is the same)."""
    xp = namespace(weight)
    return xp.max(xp.abs(xp.reshape(weight, (weight.shape[0], -1))), axis=1)


def affine_interval(layer, forms, bias, lower, upper):
    """Interval bounds of the layer's output for inputs in the box [lower, upper]; forms:
    `weight_forms`, bias the layer's bias."""
    # P.* rather than operators: either side may be a plain array while the other is a Var
    # centre W (u + l) / 2 + b and radius |W| (u - l) / 2, with the halves taken on the
    # weights (a few numbers) instead of on the box (two passes over it): halving is exact
    # in binary floating point (but for weights below twice the smallest normal, which
    # rounding.affine_rounding_slack covers), so every product, and the result, is the same bitwise
    out_mid = affine(layer, P.add(upper, lower), forms["half"], bias)
    out_rad = affine(layer, P.subtract(upper, lower), forms["abs_half"], None)
    return P.subtract(out_mid, out_rad), P.add(out_mid, out_rad)


def row_norms(layer, forms, input_mask):
    """Per sample, the l2 norm of each output's weights over inputs that can move (mask 1).
    input_mask None: every input can move; the norms are then the same for every sample,
    computed once, (1, ...) (they broadcast against the batch).

    For a conv layer this is the norm over the receptive field actually inside the image:
    conv2d of the mask with the squared kernel, so zero padding is counted exactly. The
    squares are of the rows scaled by their largest entry (`weight_forms`), s sqrt(sum
    (w / s)^2): weights of 1e-170 (float64) or 1e-23 (float32) keep their norm."""
    return P.multiply(P.sqrt(row_square_sums(layer, forms, input_mask)), forms["row_scale"])


def row_square_sums(layer, forms, input_mask):
    """Per sample and output, sum over the inputs that can move of (w / s)^2 (`row_norms`)."""
    if input_mask is None:
        input_mask = _constant_input(layer, forms, 1.0)
    return affine(layer, input_mask, forms["square"], None)


def uniform_box_interval(layer, forms, center, box_radius, ball_radius, norms):
    """The affine layer's output bounds for inputs in the box center +- box_radius (the
    same float on every coordinate: the input box x +- eps, before any layer has acted)
    intersected with the ball bound. center: the layer's output at the box's centre (N, ...).

    The interval's centre is then `center` itself and its radius |W| box_radius is the
    same for every sample (computed once, (1, ...)); both bounds share the centre, so the
    intersection keeps the smaller radius: center -+ min(|W| box_radius, r * norms). That
    is intersect(affine_interval(...), ball_interval(...)) in exact arithmetic, without the
    interval's two per-sample products; in floating point it is the more exact of the two (the
    plain form's centre is computed from ((x + eps) + (x - eps)) / 2, not x)."""
    # |W| box_radius as (|W| / 2)(2 box_radius): the same product, both factors exact
    spread = affine(layer, _constant_input(layer, forms, 2 * box_radius), forms["abs_half"], None)
    # a tie goes to the interval, as in intersect
    radius = P.minimum(spread, _ball_spread(center, ball_radius, norms))
    return P.subtract(center, radius), P.add(center, radius)


def _constant_input(layer, forms, value):
    """(1, *layer input shape) filled with value, on the weight's backend and dtype."""
    w = value_of(forms["square"])
    return namespace(w).full((1,) + tuple(layer.in_shape), float(value), dtype=w.dtype)


def ball_interval(center, radius, norms):
    """[center - radius*norms, center + radius*norms], radius per sample (N,)."""
    spread = _ball_spread(center, radius, norms)
    return P.subtract(center, spread), P.add(center, spread)


def _ball_spread(center, radius, norms):
    """norms * radius, the radius per sample (N,) spread over center's feature axes."""
    r = P.reshape(radius, (radius.shape[0],) + (1,) * (len(value_of(center).shape) - 1))
    return P.multiply(norms, r)


def intersect(lower_a, upper_a, lower_b, upper_b):
    return P.maximum(lower_a, lower_b), P.minimum(upper_a, upper_b)


def activation_interval(layer, params, lower, upper):
    """Bounds of a monotone activation's output from its input bounds."""
    if isinstance(layer, ReLU):
        return P.relu(lower), P.relu(upper)
    if isinstance(layer, ClippedReLU):
        return P.clipped_relu(lower, params["threshold"]), P.clipped_relu(upper, params["threshold"])
    if isinstance(layer, ClampedMaxMin):
        # max(a, b) and min(a, b) are monotone in each argument, and so are the clamps; so the
        # lower (upper) output is MaxMin of the lower (upper) inputs.
        return (P.clamped_maxmin(lower, params["max"], params["min"]),
                P.clamped_maxmin(upper, params["max"], params["min"]))
    raise TypeError(f"not an activation layer: {type(layer).__name__}")
