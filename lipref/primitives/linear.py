"""Linear maps: matmul, linear, conv2d and its adjoint conv2d_transpose.

Each asks the dispatcher first: a registered kernel (lipref/kernels/) computes the same
function faster, and runs; without one, or inside kernels.reference_only(), the plain code
written here runs.
"""
from ..backend import namespace
from ..kernels.registry import pick
from ..shapes import conv_output_hw
from .core import primitive, shape_of


def _matmul(a, b):
    """Matrix product of 2-D arrays."""
    kernel = pick("matmul", a, b)
    return kernel(a, b) if kernel is not None else namespace(a, b).matmul(a, b)


matmul = primitive(_matmul,
                   lambda g, ans, a, b: namespace(g).matmul(g, b.T),
                   lambda g, ans, a, b: namespace(g).matmul(a.T, g))


def _linear(x, weight, bias):
    """x @ weight.T + bias for x (N, in), weight (out, in), bias (out,) or None."""
    kernel = pick("linear", x, weight, bias)
    if kernel is not None:
        return kernel(x, weight, bias)
    out = namespace(x, weight).matmul(x, weight.T)
    return out if bias is None else out + bias


def _linear_vjp_x(g, ans, x, weight, bias):
    kernel = pick("linear.vjp.x", g, weight)
    return kernel(g, weight) if kernel is not None else namespace(g).matmul(g, weight)


linear = primitive(_linear, _linear_vjp_x,
                   lambda g, ans, x, w, b: namespace(g).matmul(g.T, x),
                   lambda g, ans, x, w, b: namespace(g).sum(g, axis=0))


def _zero_padded(x, padding):
    """NCHW x with `padding` zeros added on each side of H and W."""
    xp = namespace(x)
    n, c, h, w = x.shape
    out = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=x.dtype)
    out[:, :, padding:padding + h, padding:padding + w] = x
    return out


def _window(out_hw, i, j, stride):
    """The index of what kernel offset (i, j) reads: padded[..., i + stride*a, j + stride*b], a < OH, b < OW."""
    oh, ow = out_hw
    return (slice(None), slice(None), slice(i, i + stride * (oh - 1) + 1, stride),
            slice(j, j + stride * (ow - 1) + 1, stride))


def _conv2d(x, weight, bias, stride, padding):
    """2-D cross-correlation of NCHW x with weight (O, C, kh, kw), zero padding, plus bias (O,) or None:
    out[n, o, a, b] = bias[o] + sum over c, i, j of weight[o, c, i, j] * padded[n, c, stride*a + i, stride*b + j]."""
    kernel = pick("conv2d", x, weight, bias, stride, padding)
    if kernel is not None:
        return kernel(x, weight, bias, stride, padding)
    xp = namespace(x, weight)
    o, c, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != c:
        raise ValueError(f"conv2d: input shape {tuple(x.shape)} does not fit weight {tuple(weight.shape)}")
    out_hw = conv_output_hw(x.shape[2], x.shape[3], kh, kw, stride, padding)
    padded = _zero_padded(x, padding)
    out = None
    for i in range(kh):
        for j in range(kw):  # (N, C, OH, OW) . (O, C) -> (N, OH, OW, O)
            term = xp.tensordot(padded[_window(out_hw, i, j, stride)], weight[:, :, i, j], axes=([1], [1]))
            out = term if out is None else out + term
    out = xp.permute_dims(out, (0, 3, 1, 2))
    return out if bias is None else out + xp.reshape(bias, (1, o, 1, 1))


def _conv2d_weight_grad(g, x, weight_shape, stride, padding):
    """The gradient of <conv2d(x, W), g> in W: entry (o, c, i, j) is the sum over n, a, b of
    g[n, o, a, b] * padded[n, c, stride*a + i, stride*b + j]."""
    kernel = pick("conv2d.vjp.w", g, x, weight_shape, stride, padding)
    if kernel is not None:
        return kernel(g, x, weight_shape, stride, padding)
    xp = namespace(g, x)
    o, c, kh, kw = weight_shape
    padded = _zero_padded(x, padding)
    out_hw = (g.shape[2], g.shape[3])
    per_offset = [xp.tensordot(g, padded[_window(out_hw, i, j, stride)], axes=([0, 2, 3], [0, 2, 3]))
                  for i in range(kh) for j in range(kw)]  # each (O, C)
    return xp.reshape(xp.stack(per_offset, axis=2), (o, c, kh, kw))


conv2d = primitive(_conv2d,
                   lambda g, ans, x, w, b, s, p: _conv2d_transpose(g, w, s, p, (x.shape[2], x.shape[3])),
                   lambda g, ans, x, w, b, s, p: _conv2d_weight_grad(g, x, shape_of(w), s, p),
                   lambda g, ans, x, w, b, s, p: namespace(g).sum(g, axis=(0, 2, 3)))


def _conv2d_transpose(y, weight, stride, padding, in_hw):
    """The exact adjoint of conv2d(., weight, None, stride, padding) on inputs of spatial size
    in_hw: <conv2d(x), y> == <x, conv2d_transpose(y)>, so also conv2d's input gradient.
    Each kernel offset (i, j) adds y . weight[:, :, i, j] back onto the padded input pixels
    it read; the padding is cropped. Giving in_hw removes any guess about output padding."""
    kernel = pick("conv2d_transpose", y, weight, stride, padding, in_hw)
    if kernel is not None:
        return kernel(y, weight, stride, padding, in_hw)
    xp = namespace(y, weight)
    o, c, kh, kw = weight.shape
    n, _, oh, ow = y.shape
    h, w = in_hw
    padded = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=y.dtype)
    for i in range(kh):
        for j in range(kw):  # (O, C) . (N, O, OH, OW) -> (C, N, OH, OW)
            term = xp.tensordot(weight[:, :, i, j], y, axes=([0], [1]))
            padded[_window((oh, ow), i, j, stride)] += xp.permute_dims(term, (1, 0, 2, 3))
    return padded[:, :, padding:padding + h, padding:padding + w]


# <conv2d_transpose(y, W), g> = <y, conv2d(g, W)>: the gradients are conv2d's, with y and g swapped
conv2d_transpose = primitive(_conv2d_transpose,
                             lambda g, ans, y, w, s, p, in_hw: _conv2d(g, w, None, s, p),
                             lambda g, ans, y, w, s, p, in_hw: _conv2d_weight_grad(y, g, shape_of(w), s, p))

