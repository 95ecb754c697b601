"""Pre-activation bounds over the eps-ball: interval bounds intersected with ball bounds.

Interval (IBP) bounds go through an affine layer in centre/radius form: the centre through
the layer, the radius through |W|. The ball bound uses what the interval cannot: if every
point of the ball moves the layer's input by at most r in l2 (r = eps times the Lipschitz
bound of the layers before), output k moves by at most r * ||row_k restricted to inputs that
can move||. Intersecting the two keeps the tighter side of each. All functions take arrays or
tape Vars alike, so training can differentiate through the bounds.
"""
from .. import primitives as P
from ..layers import ClampedMaxMin, ClippedReLU, Conv2d, Linear, ReLU
from ..tape import value_of


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


def affine_interval(layer, params, lower, upper):
    """Interval bounds of the layer's output for inputs in the box [lower, upper]."""
    # P.* rather than operators: either side may be a plain array while the other is a Var
    mid = P.multiply(P.add(upper, lower), 0.5)
    rad = P.multiply(P.subtract(upper, lower), 0.5)
    out_mid = affine(layer, mid, params["weight"], params["bias"])
    out_rad = affine(layer, rad, P.abs(params["weight"]), None)
    return P.subtract(out_mid, out_rad), P.add(out_mid, out_rad)


def row_norms(layer, params, input_mask):
    """Per sample, the l2 norm of each output's weights over inputs that can move (mask 1).

    For a conv layer this is the norm over the receptive field actually inside the image:
    conv2d of the mask with the squared kernel, so zero padding is counted exactly."""
    return P.sqrt(affine(layer, input_mask, P.square(params["weight"]), None))


def ball_interval(center, radius, norms):
    """[center - radius*norms, center + radius*norms], radius per sample (N,)."""
    r = P.reshape(radius, (radius.shape[0],) + (1,) * (len(center.shape) - 1))
    spread = P.multiply(norms, r)
    return P.subtract(center, spread), P.add(center, spread)


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


def as_array(a):
    return value_of(a)
