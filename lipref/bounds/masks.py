"""Which neurons are constant on the eps-ball, from their pre-activation bounds.

A neuron is constant when every point of the ball puts it in a flat piece of its activation:
ReLU off (ub <= 0); clipped ReLU off or saturated (ub <= 0 or lb >= theta); for clamped
MaxMin the max half clamped (max(lb_a, lb_b) >= hi) or the min half clamped
(min(ub_a, ub_b) <= lo). Masks are float arrays, 1 = can change, 0 = constant; they carry no
gradient (they are decisions, not values). Each test is written as "not provably constant",
so that a NaN bound (an overflow, inf - inf) counts as "can change", never as constant.
"""
from ..backend import namespace
from ..layers import ClampedMaxMin, ClippedReLU, ReLU


def activation_masks(layer, params, lower, upper):
    """(row_mask, output_mask) for an activation layer given its input bounds (arrays).

    output_mask: outputs that can change on the ball (the next layer's columns).
    row_mask: pre-activations whose change can reach the output (the previous affine
    layer's rows). They agree for ReLU and clipped ReLU, which return one array as both
    (callers never write into masks). For MaxMin a pair's two inputs feed both outputs, so a
    pair's rows go only when both its outputs are constant."""
    xp = namespace(lower)
    if isinstance(layer, ReLU):
        moving = _f(~(upper <= 0), lower)
        return moving, moving
    if isinstance(layer, ClippedReLU):
        theta = params["threshold"]
        moving = _f(~((upper <= 0) | (lower >= theta)), lower)
        return moving, moving
    if isinstance(layer, ClampedMaxMin):
        h = lower.shape[1] // 2
        max_lower = xp.maximum(lower[:, :h, ...], lower[:, h:, ...])
        min_upper = xp.minimum(upper[:, :h, ...], upper[:, h:, ...])
        max_moves = ~(max_lower >= params["max"])
        min_moves = ~(min_upper <= params["min"])
        pair_moves = max_moves | min_moves
        out = xp.concat([_f(max_moves, lower), _f(min_moves, lower)], axis=1)
        rows = xp.concat([_f(pair_moves, lower), _f(pair_moves, lower)], axis=1)
        return rows, out
    raise TypeError(f"not an activation layer: {type(layer).__name__}")


def _f(mask, like):
    return namespace(like).astype(mask, like.dtype)


def constant_fraction(output_mask):
    """Per sample, the fraction of an activation's outputs that are constant on the ball."""
    xp = namespace(output_mask)
    # a mean over the feature axes, not over a flattened copy: conv masks are NCHW views of
    # channels-last memory, which a reshape would copy
    return 1.0 - xp.mean(output_mask, axis=tuple(range(1, output_mask.ndim)))
