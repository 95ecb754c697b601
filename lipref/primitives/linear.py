"""Linear maps: matmul, linear, conv2d and its adjoint conv2d_transpose, and the shape maps
(slices, concatenation, broadcasting, reshapes, sums), linear too: every backward here is the
adjoint of its forward.

Each is written here as its plain definition. Those marked `@replaceable` may be replaced by
a registered kernel (lipref/kernels/) that computes the same function faster, with the same
arguments and result; inside kernels.reference_only() only the code written here runs.
"""
from ..backend import namespace
from ..kernels.registry import replaceable
from ..shapes import conv_output_hw
from ..tape import expand_back, primitive, shape_of, unbroadcast


@replaceable("matmul")
def _matmul(a, b):
    """Matrix product of 2-D arrays."""
    return namespace(a, b).matmul(a, b)


matmul = primitive(_matmul,
                   lambda g, ans, a, b: namespace(g).matmul(g, b.T),
                   lambda g, ans, a, b: namespace(g).matmul(a.T, g))


@replaceable("linear")
def _linear(x, weight, bias):
    """x @ weight.T + bias for x (N, in), weight (out, in), bias (out,) or None."""
    out = namespace(x, weight).matmul(x, weight.T)
    return out if bias is None else out + bias


@replaceable("linear_input_grad")
def _linear_input_grad(g, weight):
    """The gradient of <linear(x, W, b), g> in x: g @ W."""
    return namespace(g).matmul(g, weight)


linear = primitive(_linear, lambda g, ans, x, w, b: _linear_input_grad(g, w),
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


@replaceable("conv2d")
def _conv2d(x, weight, bias, stride, padding):
    """2-D cross-correlation of NCHW x with weight (O, C, kh, kw), zero padding, plus bias (O,) or None:
    out[n, o, a, b] = bias[o] + sum over c, i, j of weight[o, c, i, j] * padded[n, c, stride*a + i, stride*b + j]."""
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


@replaceable("conv2d_weight_grad")
def _conv2d_weight_grad(g, x, weight_shape, stride, padding):
    """The gradient of <conv2d(x, W), g> in W: entry (o, c, i, j) is the sum over n, a, b of
    g[n, o, a, b] * padded[n, c, stride*a + i, stride*b + j]."""
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


@replaceable("conv2d_transpose")
def _conv2d_transpose(g, weight, stride, padding, in_hw):
    """The exact adjoint of conv2d(., weight, None, stride, padding) on inputs of spatial size
    in_hw: <conv2d(x), g> == <x, conv2d_transpose(g)>, so also conv2d's input gradient.
    Each kernel offset (i, j) adds g . weight[:, :, i, j] back onto the padded input pixels
    it read; the padding is cropped. Giving in_hw removes any guess about output padding."""
    xp = namespace(g, weight)
    o, c, kh, kw = weight.shape
    n, _, oh, ow = g.shape
    h, w = in_hw
    padded = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=g.dtype)
    for i in range(kh):
        for j in range(kw):  # (O, C) . (N, O, OH, OW) -> (C, N, OH, OW)
            term = xp.tensordot(weight[:, :, i, j], g, axes=([0], [1]))
            padded[_window((oh, ow), i, j, stride)] += xp.permute_dims(term, (1, 0, 2, 3))
    return padded[:, :, padding:padding + h, padding:padding + w]


# <conv2d_transpose(y, W), g> = <y, conv2d(g, W)>: the gradients are conv2d's, with y and g swapped
conv2d_transpose = primitive(_conv2d_transpose,
                             lambda g, ans, y, w, s, p, in_hw: _conv2d(g, w, None, s, p),
                             lambda g, ans, y, w, s, p, in_hw: _conv2d_weight_grad(y, g, shape_of(w), s, p))


# ---------------------------------------------------------------- shape maps

def _channel_slice(x, start, stop):
    """x[:, start:stop, ...] (a block of channels or features along axis 1)."""
    return x[:, start:stop, ...]


def _channel_slice_vjp(g, ans, x, start, stop):
    # the slice's adjoint: g placed back at its channels, zeros elsewhere
    xp = namespace(g)
    before = xp.zeros((g.shape[0], start) + tuple(g.shape[2:]), dtype=g.dtype)
    after = xp.zeros((g.shape[0], x.shape[1] - stop) + tuple(g.shape[2:]), dtype=g.dtype)
    return xp.concat([before, g, after], axis=1)


channel_slice = primitive(_channel_slice, _channel_slice_vjp)


def _concat(arrays, axis):
    """The arrays (a list or tuple) joined along `axis`; differentiated in each of them."""
    return namespace(*arrays).concat(list(arrays), axis=axis)


def _concat_vjp(g, ans, arrays, axis):
    # one slice of g per array, at that array's place along the axis
    axis = axis % g.ndim
    pieces, start = [], 0
    for a in arrays:
        stop = start + a.shape[axis]
        pieces.append(g[(slice(None),) * axis + (slice(start, stop), Ellipsis)])
        start = stop
    return pieces


concat = primitive(_concat, _concat_vjp)


def _broadcast_to(x, shape):
    """x broadcast to `shape` (NumPy's rules: leading axes added, sides of 1 stretched)."""
    return namespace(x).broadcast_to(x, tuple(shape))


broadcast_to = primitive(_broadcast_to, lambda g, ans, x, shape: unbroadcast(g, shape_of(x)))


def _reshape(x, shape):
    """x with a new shape (same elements, C order)."""
    return namespace(x).reshape(x, shape)


reshape = primitive(_reshape, lambda g, ans, x, shape: namespace(g).reshape(g, shape_of(x)))


def _sum(x, axis, keepdims):
    """Sum over `axis` (None, int or tuple)."""
    return namespace(x).sum(x, axis=axis, keepdims=keepdims)


sum = primitive(_sum, lambda g, ans, x, axis, keepdims: expand_back(g, x, axis, keepdims))
