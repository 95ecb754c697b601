"""How each layer kind moves the walk's box over the eps-ball: one rule per kind, in one place.

Affine layers (Linear, Conv2d, AvgPool2d) need no rule of their own: every bound of an affine
layer is written with its hooks (`layer.linear_part`, `layer.affine`; lipref/layers.py), so
any linear map with those hooks is bounded as it is. Interval (IBP) bounds go through an
affine layer in centre/radius form: the centre through the layer, the radius through |W|. The
ball bound uses what the interval cannot: if every point of the ball moves the layer's input
by at most r in l2 (r = eps times the Lipschitz bound of the layers before), output k moves by
at most r * ||row_k restricted to inputs that can move||. Intersecting the two keeps the
tighter side of each. These functions take arrays or tape Vars alike, so training can
differentiate through the bounds.

An activation kind's rule (`rule_of(layer)`; the walk, walk.py, and the sparsity loss,
losses.py, ask it) states:
- `interval`: the output box from the input box. The default is the activation itself on
  both ends, right for every monotone activation (ReLU, clipped ReLU, and MaxMin, whose max
  and min are monotone in each argument, as are the clamps).
- `masks`: which neurons are constant on the ball (row mask: pre-activations whose change can
  reach the output, the previous affine layer's rows; output mask: outputs that can change,
  the next layer's columns). Masks are float arrays, 1 = can change, 0 = constant, with no
  gradient (decisions, not values). Each test is written as "not provably constant", so that
  a NaN bound (an overflow, inf - inf) counts as "can change", never as constant.
- `forward_error`: how a bound e on |z - exact z| passes through (sound mode). The default,
  e unchanged, holds for an activation that is exact in floating point and 1-Lipschitz per
  coordinate.
- `sparsity`: the term of the sparsity loss, zero once every neuron is constant on the ball.
"""
from .. import primitives as P
from ..backend import namespace
from ..layers import ClampedMaxMin, ClippedReLU, Flatten, ReLU
from ..tape import value_of

# ---------------------------------------------------------------- affine layers, through their hooks

def weight_forms(weight):
    """The forms of an affine layer's weight W that the bounds use: {"half": W / 2,
    "abs_half": |W| / 2, "square": (W / s)^2 and "row_scale": s} (arrays or tape Vars, as
    params are), s the largest |weight| of each output (`row_scales`), so that no square of
    a row norm underflows or overflows. A caller that bounds many blocks of samples computes
    them once, not per block (a few passes over the weight)."""
    w = weight
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
    out_mid = layer.affine(P.add(upper, lower), forms["half"], bias)
    out_rad = layer.affine(P.subtract(upper, lower), forms["abs_half"], None)
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
    return layer.affine(input_mask, forms["square"], None)


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
    spread = layer.affine(_constant_input(layer, forms, 2 * box_radius), forms["abs_half"], None)
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


# ---------------------------------------------------------------- activations



class ActivationRule:
    """The defaults for a monotone activation, exact and 1-Lipschitz per coordinate."""

    def interval(self, layer, params, lower, upper):
        return layer(lower, params), layer(upper, params)

    def forward_error(self, error):
        return error


class ReLURule(ActivationRule):
    def masks(self, params, lower, upper):
        """Constant where it is off on the whole ball: upper <= 0."""
        moving = _as_numbers(~(upper <= 0), lower)
        return moving, moving

    def sparsity(self, params, lower, upper, saturation_weight):
        """mean(relu(ub)): push the upper bound below 0 (off)."""
        return mean(P.relu(upper))


class ClippedReLURule(ActivationRule):
    def masks(self, params, lower, upper):
        """Constant where it is off (upper <= 0) or saturated (lower >= theta) on the whole ball."""
        moving = _as_numbers(~((upper <= 0) | (lower >= params["threshold"])), lower)
        return moving, moving

    def sparsity(self, params, lower, upper, saturation_weight):
        """mean(relu(ub)) + c mean(relu(theta - lb)): off, or saturated at theta (the paper's
        code: c = 0.1)."""
        saturated = mean(P.relu(P.subtract(params["threshold"], lower)))
        return P.add(mean(P.relu(upper)), P.multiply(saturated, saturation_weight))


class MaxMinRule(ActivationRule):
    """MaxMin over channel halves (a, b): outputs max(a, b) clamped above by `max` and
    min(a, b) clamped below by `min`."""

    def masks(self, params, lower, upper):
        """The max half is constant where max(lb_a, lb_b) >= max, the min half where
        min(ub_a, ub_b) <= min. A pair's two inputs feed both its outputs, so the pair's rows
        go only when both outputs are constant."""
        xp = namespace(lower)
        max_moves = ~(_pair_max(lower) >= params["max"])
        min_moves = ~(_pair_min(upper) <= params["min"])
        pair_moves = max_moves | min_moves
        out = xp.concat([_as_numbers(max_moves, lower), _as_numbers(min_moves, lower)], axis=1)
        rows = xp.concat([_as_numbers(pair_moves, lower), _as_numbers(pair_moves, lower)], axis=1)
        return rows, out

    def forward_error(self, error):
        """A pair's two outputs move by at most the pair's larger input error."""
        xp = namespace(error)
        half = error.shape[1] // 2
        pair = xp.maximum(error[:, :half, ...], error[:, half:, ...])
        return xp.concat([pair, pair], axis=1)

    def sparsity(self, params, lower, upper, saturation_weight):
        """mean(relu(max - max(lb_a, lb_b))) + mean(relu(min(ub_a, ub_b) - min)): both halves clamped."""
        return P.add(mean(P.relu(P.subtract(params["max"], _pair_max(lower)))),
                     mean(P.relu(P.subtract(_pair_min(upper), params["min"]))))


RULES = {ReLU: ReLURule(), ClippedReLU: ClippedReLURule(), ClampedMaxMin: MaxMinRule()}
RESHAPES = (Flatten,)  # layers that only reshape: the walk reshapes its box with them


def rule_of(layer):
    """The rule of an activation layer."""
    rule = RULES.get(type(layer))
    if rule is None:
        raise TypeError(f"no bound rule for activation {type(layer).__name__}")
    return rule


def check_model(model):
    """Refuse a model with a layer the bounds do not know: every layer is affine (its hooks),
    an activation with a rule, or a reshape. Unknown layers are an error, never 'norm 1'."""
    for layer in model.layers:
        if not (layer.is_affine or type(layer) in RULES or isinstance(layer, RESHAPES)):
            raise TypeError(f"no Lipschitz bound for layer type {type(layer).__name__}; "
                            "unknown layers are an error, never 'norm 1'")


def constant_fraction(output_mask):
    """Per sample, the fraction of an activation's outputs that are constant on the ball."""
    xp = namespace(output_mask)
    # a mean over the feature axes, not over a flattened copy: conv masks are NCHW views of
    # channels-last memory, which a reshape would copy
    return 1.0 - xp.mean(output_mask, axis=tuple(range(1, output_mask.ndim)))


def mean(values):
    """The mean of every entry of an array or Var (a differentiable scalar)."""
    n = 1
    for d in value_of(values).shape:
        n *= d
    return P.multiply(P.sum(values, None, False), 1.0 / n)


def _pair_max(a):
    c = value_of(a).shape[1]
    return P.maximum(P.channel_slice(a, 0, c // 2), P.channel_slice(a, c // 2, c))


def _pair_min(a):
    c = value_of(a).shape[1]
    return P.minimum(P.channel_slice(a, 0, c // 2), P.channel_slice(a, c // 2, c))


def _as_numbers(mask, like):
    return namespace(like).astype(mask, like.dtype)
