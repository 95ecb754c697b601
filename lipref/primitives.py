"""Primitives: each is a forward function on arrays and, right beside it, the
vector-Jacobian product (backward) for every differentiable argument.

`primitive(forward, *vjps)` lifts `forward` to Vars: called on plain arrays it returns a
plain array (no tape); called with any differentiable argument that is a Var, it returns a
Var whose parents carry `vjps[i](g, ans, *args)`, the gradient sent to argument i given
the upstream gradient g. A None in `vjps` marks an argument that is not differentiated
(shapes, strides, masks, labels). Every primitive is registered in PRIMITIVES so that one
checker (tests/test_primitives.py) tests them all against autograd and finite differences.

Kinks are written policy, stated in each docstring: at a tie or a boundary the gradient
goes to exactly one side, never split and never NaN.
"""
from .backend import namespace
from .tape import Var

PRIMITIVES = {}


def primitive(forward, *vjps):
    def apply(*args):
        values = tuple(a.value if isinstance(a, Var) else a for a in args)
        ans = forward(*values)
        parents = []
        for i, a in enumerate(args):
            if isinstance(a, Var) and i < len(vjps) and vjps[i] is not None:
                parents.append((a, _bind(vjps[i], ans, values)))
        return Var(ans, tuple(parents)) if parents else ans

    apply.__name__ = forward.__name__
    apply.__doc__ = forward.__doc__
    apply.forward = forward
    apply.vjps = vjps
    PRIMITIVES[forward.__name__] = apply
    return apply


def _bind(vjp, ans, values):
    return lambda g: vjp(g, ans, *values)


def unbroadcast(g, shape):
    """Sum `g` over the axes that broadcasting added or stretched to reach g.shape from `shape`."""
    xp = namespace(g)
    while g.ndim > len(shape):
        g = xp.sum(g, axis=0)
    for axis, n in enumerate(shape):
        if n == 1 and g.shape[axis] != 1:
            g = xp.sum(g, axis=axis, keepdims=True)
    return g


def _shape(a):
    return tuple(a.shape) if hasattr(a, "shape") else ()


def _cast(mask, like):
    return namespace(like).astype(mask, like.dtype)


# ---------------------------------------------------------------- elementwise arithmetic

def _add(a, b):
    """a + b with broadcasting."""
    return a + b


add = primitive(_add,
                lambda g, ans, a, b: unbroadcast(g, _shape(a)),
                lambda g, ans, a, b: unbroadcast(g, _shape(b)))


def _subtract(a, b):
    """a - b with broadcasting."""
    return a - b


subtract = primitive(_subtract,
                     lambda g, ans, a, b: unbroadcast(g, _shape(a)),
                     lambda g, ans, a, b: unbroadcast(-g, _shape(b)))


def _multiply(a, b):
    """a * b with broadcasting."""
    return a * b


multiply = primitive(_multiply,
                     lambda g, ans, a, b: unbroadcast(g * b, _shape(a)),
                     lambda g, ans, a, b: unbroadcast(g * a, _shape(b)))


def _divide(a, b):
    """a / b with broadcasting."""
    return a / b


divide = primitive(_divide,
                   lambda g, ans, a, b: unbroadcast(g / b, _shape(a)),
                   lambda g, ans, a, b: unbroadcast(-g * ans / b, _shape(b)))


def _negative(a):
    """-a."""
    return -a


negative = primitive(_negative, lambda g, ans, a: -g)


def _square(a):
    """a * a."""
    return a * a


square = primitive(_square, lambda g, ans, a: 2 * g * a)


def _sqrt(a):
    """Square root; the gradient at 0 is taken as 0 (no infinities on the tape)."""
    return namespace(a).sqrt(a)


def _sqrt_vjp(g, ans, a):
    xp = namespace(ans)
    safe = xp.where(ans > 0, ans, xp.ones_like(ans))
    return xp.where(ans > 0, g / (2 * safe), xp.zeros_like(ans))


sqrt = primitive(_sqrt, _sqrt_vjp)


def _exp(a):
    """e ** a."""
    return namespace(a).exp(a)


exp = primitive(_exp, lambda g, ans, a: g * ans)


def _log(a):
    """Natural logarithm."""
    return namespace(a).log(a)


log = primitive(_log, lambda g, ans, a: g / a)


def _abs(a):
    """|a|; gradient sign(a), 0 at a == 0."""
    return namespace(a).abs(a)


abs = primitive(_abs, lambda g, ans, a: g * namespace(a).sign(a))


def _maximum(a, b):
    """Elementwise max; at a tie the gradient goes to `a`."""
    return namespace(a, b).maximum(a, b)


maximum = primitive(_maximum,
                    lambda g, ans, a, b: unbroadcast(g * _cast(a >= b, g), _shape(a)),
                    lambda g, ans, a, b: unbroadcast(g * _cast(a < b, g), _shape(b)))


def _minimum(a, b):
    """Elementwise min; at a tie the gradient goes to `a`."""
    return namespace(a, b).minimum(a, b)


minimum = primitive(_minimum,
                    lambda g, ans, a, b: unbroadcast(g * _cast(a <= b, g), _shape(a)),
                    lambda g, ans, a, b: unbroadcast(g * _cast(a > b, g), _shape(b)))


def _where(cond, a, b):
    """a where cond else b (cond is not differentiated)."""
    return namespace(a, b).where(cond, a, b)


def _where_vjp_a(g, ans, cond, a, b):
    return unbroadcast(g * _cast(cond, g), _shape(a))


def _where_vjp_b(g, ans, cond, a, b):
    return unbroadcast(g * _cast(~cond, g), _shape(b))


where = primitive(_where, None, _where_vjp_a, _where_vjp_b)


# ---------------------------------------------------------------- activations

def _relu(x):
    """max(x, 0) (NaN stays NaN); gradient 1 where x > 0 and 0 at x == 0."""
    return namespace(x).maximum(x, 0.0)


relu = primitive(_relu, lambda g, ans, x: g * _cast(x > 0, g))


def _clipped_relu(x, theta):
    """min(max(x, 0), theta) with a per-neuron threshold theta (broadcast over the batch).

    Gradient to x: 1 strictly inside (0, theta), 0 at both bounds and outside.
    Gradient to theta: 1 where the output is the threshold, i.e. where max(x, 0) >= theta.
    """
    xp = namespace(x, theta)
    return xp.minimum(xp.where(x > 0, x, xp.zeros_like(x)), theta)


def _clipped_relu_vjp_x(g, ans, x, theta):
    return g * _cast((x > 0) & (x < theta), g)


def _clipped_relu_vjp_theta(g, ans, x, theta):
    xp = namespace(x)
    return unbroadcast(g * _cast(xp.where(x > 0, x, xp.zeros_like(x)) >= theta, g), _shape(theta))


clipped_relu = primitive(_clipped_relu, _clipped_relu_vjp_x, _clipped_relu_vjp_theta)


def _halves(x):
    h = x.shape[1] // 2
    return x[:, :h, ...], x[:, h:, ...]


def _clamped_maxmin(x, hi, lo):
    """Clamped MaxMin over channel pairs: x's axis 1 splits in halves a, b and the output is
    [min(max(a, b), hi), max(min(a, b), lo)], with hi, lo of the half's feature shape.

    Ties: where a == b, a is taken as the max and b as the min, so each input feeds exactly
    one output. Clamps: the gradient passes strictly inside (max < hi, min > lo) and goes to
    the threshold at the bound (max >= hi to hi, min <= lo to lo).
    """
    xp = namespace(x, hi, lo)
    if x.shape[1] % 2:
        raise ValueError(f"clamped MaxMin needs an even number of channels, got {x.shape[1]}")
    a, b = _halves(x)
    return xp.concat([xp.minimum(xp.maximum(a, b), hi), xp.maximum(xp.minimum(a, b), lo)], axis=1)


def _clamped_maxmin_vjp_x(g, ans, x, hi, lo):
    xp = namespace(g)
    a, b = _halves(x)
    g_top, g_bottom = _halves(g)
    a_is_max = a >= b
    g_max = g_top * _cast(xp.maximum(a, b) < hi, g)
    g_min = g_bottom * _cast(xp.minimum(a, b) > lo, g)
    zero = xp.zeros_like(g_max)
    g_a = xp.where(a_is_max, g_max, zero) + xp.where(a_is_max, zero, g_min)
    g_b = xp.where(a_is_max, zero, g_max) + xp.where(a_is_max, g_min, zero)
    return xp.concat([g_a, g_b], axis=1)


def _clamped_maxmin_vjp_hi(g, ans, x, hi, lo):
    xp = namespace(g)
    a, b = _halves(x)
    return unbroadcast(_halves(g)[0] * _cast(xp.maximum(a, b) >= hi, g), _shape(hi))


def _clamped_maxmin_vjp_lo(g, ans, x, hi, lo):
    xp = namespace(g)
    a, b = _halves(x)
    return unbroadcast(_halves(g)[1] * _cast(xp.minimum(a, b) <= lo, g), _shape(lo))


clamped_maxmin = primitive(_clamped_maxmin, _clamped_maxmin_vjp_x, _clamped_maxmin_vjp_hi,
                           _clamped_maxmin_vjp_lo)


# ---------------------------------------------------------------- shapes and reductions

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


def _reshape(x, shape):
    """x with a new shape (same elements, C order)."""
    return namespace(x).reshape(x, shape)


reshape = primitive(_reshape, lambda g, ans, x, shape: namespace(g).reshape(g, _shape(x)))


def _expand_back(g, x, axis, keepdims):
    """Broadcast a reduction's gradient g back to x's shape."""
    xp = namespace(g)
    if not keepdims and axis is not None:
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        axes = sorted(ax % x.ndim for ax in axes)
        shape = list(g.shape)
        for ax in axes:
            shape.insert(ax, 1)
        g = xp.reshape(g, tuple(shape))
    elif not keepdims:
        g = xp.reshape(g, (1,) * x.ndim)
    return xp.broadcast_to(g, _shape(x))


def _sum(x, axis, keepdims):
    """Sum over `axis` (None, int or tuple)."""
    return namespace(x).sum(x, axis=axis, keepdims=keepdims)


sum = primitive(_sum, lambda g, ans, x, axis, keepdims: _expand_back(g, x, axis, keepdims))


def _l2_norm(x, axis, keepdims):
    """Euclidean norm over `axis`; the gradient at a zero vector is taken as 0."""
    xp = namespace(x)
    return xp.sqrt(xp.sum(x * x, axis=axis, keepdims=keepdims))


def _l2_norm_vjp(g, ans, x, axis, keepdims):
    xp = namespace(x)
    # g / norm on the reduced shape (0 where the norm is 0), then one product with x: where
    # the norm is 0 every entry of x is 0, so the product is 0 there too
    scale = xp.where(ans > 0, g / xp.where(ans > 0, ans, xp.ones_like(ans)), xp.zeros_like(ans))
    return x * _expand_back(scale, x, axis, keepdims)


l2_norm = primitive(_l2_norm, _l2_norm_vjp)


def _max(x, axis, keepdims):
    """Maximum over one axis; at a tie the gradient goes to the first maximal entry."""
    return namespace(x).max(x, axis=axis, keepdims=keepdims)


def _max_vjp(g, ans, x, axis, keepdims):
    xp = namespace(x)
    is_max = x == _expand_back(ans, x, axis, keepdims)
    # first maximal entry along the axis: is_max and no earlier maximal entry
    earlier = xp.cumulative_sum(xp.astype(is_max, xp.int32), axis=axis) - xp.astype(is_max, xp.int32)
    first = is_max & (earlier == 0)
    return _expand_back(g, x, axis, keepdims) * _cast(first, x)


max = primitive(_max, _max_vjp)


def _logsumexp(x, axis):
    """log(sum(exp(x))) over `axis`, kept in the output (keepdims), computed stably."""
    xp = namespace(x)
    m = xp.max(x, axis=axis, keepdims=True)
    return m + xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True))


logsumexp = primitive(_logsumexp, lambda g, ans, x, axis: g * namespace(x).exp(x - ans))


def _softmax_cross_entropy(logits, onehot):
    """Per-sample cross-entropy -log softmax(logits)[label], labels given one-hot (N, K)."""
    xp = namespace(logits)
    return xp.reshape(_logsumexp(logits, 1), (logits.shape[0],)) - xp.sum(logits * onehot, axis=1)


def _softmax_cross_entropy_vjp(g, ans, logits, onehot):
    xp = namespace(logits)
    p = xp.exp(logits - _logsumexp(logits, 1))
    return xp.reshape(g, (g.shape[0], 1)) * (p - onehot)


softmax_cross_entropy = primitive(_softmax_cross_entropy, _softmax_cross_entropy_vjp)


# ---------------------------------------------------------------- linear maps

def _product(a, b):
    """a @ b for 2-D arrays, computed as (b^T a^T)^T when a has fewer rows than b has
    columns: OpenBLAS runs a product with few rows (a block of 32 samples against a dense
    layer) slower than the same product transposed. Measured on 4c3f's dense layers, 32
    samples, one thread (Xeon, AVX-512): x W^T 0.65-0.70x the time, u W 0.79-0.97x; from 512
    rows on, either way within 2-4%. Only the rounding of the sums can differ."""
    xp = namespace(a, b)
    if a.shape[0] < b.shape[1]:
        return xp.matmul(b.T, a.T).T
    return xp.matmul(a, b)


def _add_in_place(new, b):
    """new + b, written into `new` (an array this primitive just made, never an input)
    where that keeps its dtype: half the time of a fresh sum on 4c3f's first layer."""
    if new.dtype != b.dtype:
        return new + b
    new += b
    return new


def _matmul(a, b):
    """Matrix product of 2-D arrays."""
    return _product(a, b)


matmul = primitive(_matmul,
                   lambda g, ans, a, b: namespace(g).matmul(g, b.T),
                   lambda g, ans, a, b: namespace(g).matmul(a.T, g))


def _linear(x, weight, bias):
    """x @ weight.T + bias for x (N, in), weight (out, in), bias (out,) or None."""
    out = _product(x, weight.T)
    return out if bias is None else _add_in_place(out, bias)


linear = primitive(_linear,
                   lambda g, ans, x, w, b: _product(g, w),
                   lambda g, ans, x, w, b: namespace(g).matmul(g.T, x),
                   lambda g, ans, x, w, b: namespace(g).sum(g, axis=0))


def conv_output_hw(h, w, kh, kw, stride, padding):
    """Output height and width of a convolution with zero padding."""
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d: kernel {kh}x{kw} with stride {stride}, padding {padding} "
                         f"does not fit an input of {h}x{w}")
    return oh, ow


# Layout: conv2d's arguments and results are NCHW, but in memory the work is channels-last.
# Every kernel offset (i, j) then reads or writes runs of C (stride 2) or OW*C (stride 1)
# contiguous numbers instead of single ones, and the matmul's (pixels, O) result is already
# an NHWC array, returned as an NCHW view without a copy. Elementwise ops keep that memory
# order, so the next conv reads it with no transpose.
#
# Blocking: the column matrix is kh*kw/stride^2 times larger than the input. Built for a
# whole batch it leaves the cache between im2col and matmul, so the batch is processed in
# blocks of whole samples whose column matrix holds about COLUMN_BLOCK numbers. This is a
# loop over a few blocks (ceil(N / block)), never over single samples or pixels. The tap
# forms (see _conv_form) build no column matrix (strided layers) or one kw times the input
# instead of kh*kw times (stride 1, row taps); blocks keep the size im2col would use.
# 8 MiB of float32. On whole batches of 128, 2^19-2^21 measured alike (within 2%); inside
# the bounds' blocks of 32 samples (backend.sample_blocks), 2^21 was 7% faster than 2^19 for
# the 4c3f local bound (larger products, fewer calls).
COLUMN_BLOCK = 2 ** 21


def _blocks(n, per_sample):
    """Slices of the batch axis with about COLUMN_BLOCK column entries each."""
    size = COLUMN_BLOCK // per_sample if per_sample < COLUMN_BLOCK else 1  # (`max` is a primitive here)
    return [slice(s, s + size if s + size < n else n) for s in range(0, n, size)]


def _weight_matrix(weight):
    """(O, C, kh, kw) -> (O, kh*kw*C), columns ordered (i, j, c) as _im2col's."""
    xp = namespace(weight)
    o, c, kh, kw = weight.shape
    return xp.reshape(xp.permute_dims(weight, (0, 2, 3, 1)), (o, kh * kw * c))


def _weight_from_matrix(wm, shape):
    """Inverse of _weight_matrix."""
    xp = namespace(wm)
    o, c, kh, kw = shape
    return xp.permute_dims(xp.reshape(wm, (o, kh, kw, c)), (0, 3, 1, 2))


def _im2col(x_nhwc, kh, kw, stride, padding):
    """Receptive fields of a channels-last batch (N, H, W, C) as rows of an
    (N*OH*OW, kh*kw*C) matrix, columns ordered (i, j, c). kh*kw strided slices, no loop
    over pixels."""
    xp = namespace(x_nhwc)
    n, h, w, c = x_nhwc.shape
    oh, ow = conv_output_hw(h, w, kh, kw, stride, padding)
    if padding:
        padded = xp.zeros((n, h + 2 * padding, w + 2 * padding, c), dtype=x_nhwc.dtype)
        padded[:, padding:padding + h, padding:padding + w, :] = x_nhwc
        x_nhwc = padded
    span_h, span_w = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    patches = [x_nhwc[:, i:i + span_h:stride, j:j + span_w:stride, :] for i in range(kh) for j in range(kw)]
    cols = xp.stack(patches, axis=3)  # (N, OH, OW, kh*kw, C)
    return xp.reshape(cols, (n * oh * ow, kh * kw * c))


def _col2im(cols_t, n, h, w, c, kh, kw, stride, padding):
    """Adjoint of _im2col, from the transposed column matrix (kh*kw*C, n*OH*OW): scatter-add
    onto a channel-major (c, n, h, w) array. Channel-major because this path serves layers
    with few input channels (C = 1 or 3): each add then moves runs of OW numbers, not of C."""
    xp = namespace(cols_t)
    oh, ow = conv_output_hw(h, w, kh, kw, stride, padding)
    cols = xp.reshape(cols_t, (kh, kw, c, n, oh, ow))
    out = xp.zeros((c, n, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    span_h, span_w = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    for i in range(kh):
        for j in range(kw):
            sl = (slice(None), slice(None), slice(i, i + span_h, stride), slice(j, j + span_w, stride))
            out[sl] += cols[i, j, ...]  # in place: no temporary per kernel offset
    return out[:, :, padding:padding + h, padding:padding + w]


CONV_FORMS = ("im2col", "taps", "row taps")


def _conv_form(kernel_hw, stride, in_channels, out_channels):
    """How conv2d's forward and weight gradient are computed; every form is exact.

    - "taps": a stride-s conv whose kernel is a multiple of s is a stride-1 conv of the
      space-to-depth input (s*s*C channels) with (k/s)^2 taps, and on the flattened padded
      image each tap is a contiguous slice of rows: (k/s)^2 products, no column matrix
      (which is (k/s)^2 times larger than the input) is ever written.
    - "row taps", for stride 1: the kw taps of a kernel row are merged into the columns (kw
      copies of the flattened image, shifted by one pixel each), and the kh kernel rows are
      row-shifted slices of that: kh products of kw*C terms, and a copy kw times the input
      instead of im2col's kh*kw times. Not for few input channels (C < 8), where the
      products are too thin, nor for more outputs than inputs (O > C), where adding up the
      kh products' outputs costs more than the copy saves.
    - "im2col": one product with the column matrix.

    bench/ab_taps.py measured taps against im2col on 4c3f's 4x4 stride-2 layers (2 threads):
    forward + gradients 0.67-0.86x the time, the masked Gram step 0.72-0.89x; row taps on
    3x3 stride-1 forwards, C -> O at HxW: 8 -> 16 at 28x28 0.58x, 32 -> 32 at 32x32 0.63x,
    64 -> 32 at 14x14 0.73x, 64 -> 64 at 16x16 0.87x, 32 -> 32 at 16x16 0.91x, but
    32 -> 64 at 14x14 1.03x."""
    kh, kw = kernel_hw
    if stride > 1 and kh % stride == 0 and kw % stride == 0:
        return "taps"
    if stride == 1 and kw > 1 and in_channels >= 8 and out_channels <= in_channels:
        return "row taps"
    return "im2col"


def tap_weights(weight, stride):
    """(O, C, kh, kw) -> (th, tw, s*s*C, O): tap (u, v) maps the space-to-depth pixel
    (channels ordered (a, b, c)) to the output; entry [u, v, (a, b, c), o] is
    W[o, c, s*u + a, s*v + b]. The kernel is a multiple of s."""
    xp = namespace(weight)
    o, c, kh, kw = weight.shape
    s = stride
    th, tw = kh // s, kw // s
    w6 = xp.reshape(weight, (o, c, th, s, tw, s))  # (o, c, u, a, v, b)
    return xp.reshape(xp.permute_dims(w6, (2, 4, 3, 5, 1, 0)), (th, tw, s * s * c, o))


def _weight_from_taps(taps, weight_shape, stride):
    """Inverse of tap_weights: (th, tw, s*s*C, O) -> (O, C, kh, kw)."""
    xp = namespace(taps)
    o, c, kh, kw = weight_shape
    th, tw = kh // stride, kw // stride
    t6 = xp.reshape(taps, (th, tw, stride, stride, c, o))  # (u, v, a, b, c, o)
    return xp.reshape(xp.permute_dims(t6, (5, 4, 0, 2, 1, 3)), (o, c, kh, kw))


def space_to_depth_rows(x_nhwc, stride, padding):
    """Zero-pad a channels-last block to a multiple of the stride, regroup each s x s cell
    into one pixel of s*s*C channels (ordered (a, b, c)), and flatten the pixels to rows:
    (flat (n*gh*gw, s*s*C), gh, gw). For stride 1 this is the padded image, flattened."""
    xp = namespace(x_nhwc)
    n, h, w, c = x_nhwc.shape
    s, p = stride, padding
    gh, gw = -(-(h + 2 * p) // s), -(-(w + 2 * p) // s)
    padded = xp.zeros((n, gh * s, gw * s, c), dtype=x_nhwc.dtype)
    padded[:, p:p + h, p:p + w, :] = x_nhwc
    if s == 1:
        return xp.reshape(padded, (n * gh * gw, c)), gh, gw
    grid = xp.permute_dims(xp.reshape(padded, (n, gh, s, gw, s, c)), (0, 1, 3, 2, 4, 5))
    return xp.reshape(grid, (n * gh * gw, s * s * c)), gh, gw


def shifted_columns(flat, shifts, direction):
    """(rows, w) -> (rows, T*w): column block t holds flat's rows shifted by
    direction * shift_t (row r holds flat[r + direction*shift_t], zeros where that lies past
    either end). The gathering half of a tap form: one product of the result with the
    taps' weights stacked (T*w, out) then sums over all taps."""
    xp = namespace(flat)
    rows, width = flat.shape
    wide = xp.empty((rows, len(shifts) * width), dtype=flat.dtype)
    for t, shift in enumerate(shifts):
        cols = slice(t * width, (t + 1) * width)
        if direction > 0:
            wide[:rows - shift, cols] = flat[shift:, :]
            wide[rows - shift:, cols] = 0
        else:
            wide[shift:, cols] = flat[:rows - shift, :]
            wide[:shift, cols] = 0
    return wide


def shifted_sum(products, shifts, direction):
    """(rows, T*w) -> (rows, w): row r is the sum over t, in tap order, of column block t
    at row r + direction*shift_t (blocks read past either end add nothing); shifts[0] is 0.
    The scattering half of a tap form, after one product with the taps' weights side by
    side (in, T*w). One tap: `products` itself."""
    xp = namespace(products)
    rows, total = products.shape
    if len(shifts) == 1:
        return products
    width = total // len(shifts)
    acc = xp.empty((rows, width), dtype=products.dtype)
    acc[...] = products[:, :width]
    for t in range(1, len(shifts)):
        shift, cols = shifts[t], slice(t * width, (t + 1) * width)
        if direction > 0:
            acc[:rows - shift, :] += products[shift:, cols]
        else:
            acc[shift:, :] += products[:rows - shift, cols]
    return acc


def _tap_operand(x_nhwc, stride, padding, th, tw, merge_width):
    """The operand of the tap forms: (base, [(tap index, row shift)], gh, gw, rows).

    Output row r = a*gw + b of the flattened grid is the sum over taps (u, v) of input row
    r + u*gw + v times tap (u, v)'s weights. Without merging, base is the grid itself and
    tap (u, v) (index (u, v)) reads it shifted by u*gw + v. Merged (row taps), the tw taps
    of a kernel row are the columns of one `wide` base (tw copies, shifted by v:
    `shifted_columns`, without its last tw - 1 rows, which no output reads), and kernel row
    u (index (u,)) reads it shifted by u*gw. rows = the grid's size minus the largest
    shift: every output that is not dropped (a < OH, b < OW) lies below it, and every
    shifted slice of `rows` rows lies inside the base."""
    flat, gh, gw = space_to_depth_rows(x_nhwc, stride, padding)
    total = flat.shape[0]
    rows = total - (th - 1) * gw - (tw - 1)
    if not merge_width:
        return flat, [((u, v), u * gw + v) for u in range(th) for v in range(tw)], gh, gw, rows
    wide = shifted_columns(flat, list(range(tw)), 1)[:total - (tw - 1), :]
    return wide, [((u,), u * gw) for u in range(th)], gh, gw, rows


def _tap_slices(x_nhwc, stride, padding, th, tw, merge_width):
    """([(tap index, the base's rows x K slice that tap reads)], gh, gw, rows); see _tap_operand."""
    base, shifts, gh, gw, rows = _tap_operand(x_nhwc, stride, padding, th, tw, merge_width)
    return [(index, base[shift:shift + rows, :]) for index, shift in shifts], gh, gw, rows


def _forward_taps(x_nhwc, taps, stride, padding, out_hw, merge_width):
    """One block of conv2d (no bias) in a tap form (see _conv_form, _tap_operand): one
    product of the base with every tap's weights side by side (T*O columns: wider products
    run faster than T narrow ones, 10-14% on 4c3f's stride-2 forwards), then the sum over
    taps of each tap's column block, shifted by its row shift (`shifted_sum`, in tap order,
    as T products would add). The grid's rows with a >= OH or b >= OW are no outputs (they
    hold partial sums, or zeros past the merged base's end) and are dropped."""
    xp = namespace(x_nhwc)
    n = x_nhwc.shape[0]
    oh, ow = out_hw
    th, tw, k, o = taps.shape
    weights = xp.reshape(taps, (th, tw * k, o)) if merge_width else taps
    base, shifts, gh, gw, _ = _tap_operand(x_nhwc, stride, padding, th, tw, merge_width)
    side_by_side = xp.concat([weights[index + (...,)] for index, _ in shifts], axis=1)  # (K, T*O)
    acc = shifted_sum(xp.matmul(base, side_by_side), [shift for _, shift in shifts], 1)
    if acc.shape[0] < n * gh * gw:
        acc = xp.concat([acc, xp.zeros((n * gh * gw - acc.shape[0], o), dtype=acc.dtype)], axis=0)
    return xp.reshape(acc, (n, gh, gw, o))[:, :oh, :ow, :]


def _forward_of_block(weight, stride, padding, in_hw, form=None):
    """A function taking one block of x (channels-last, (n, H, W, C)) to that block of
    conv2d(x, W) without bias (n, OH, OW, O), in one of CONV_FORMS. form: None picks by
    _conv_form; tests pass each form to check them against each other ("taps" needs a
    kernel that is a multiple of the stride, "row taps" stride 1)."""
    xp = namespace(weight)
    o, c, kh, kw = weight.shape
    out_hw = conv_output_hw(in_hw[0], in_hw[1], kh, kw, stride, padding)
    form = _conv_form((kh, kw), stride, c, o) if form is None else form
    _check_form(form, (kh, kw), stride)
    if form != "im2col":
        tap_w = tap_weights(weight, stride)
        merge = form == "row taps"
        return lambda x_block: _forward_taps(x_block, tap_w, stride, padding, out_hw, merge)
    wm_t = _weight_matrix(weight).T

    def by_im2col(x_block):
        y = xp.matmul(_im2col(x_block, kh, kw, stride, padding), wm_t)
        return xp.reshape(y, (x_block.shape[0],) + out_hw + (o,))
    return by_im2col


def _check_form(form, kernel_hw, stride):
    kh, kw = kernel_hw
    if form not in CONV_FORMS:
        raise ValueError(f"conv2d form must be one of {CONV_FORMS}, got {form!r}")
    if form == "taps" and (kh % stride or kw % stride):
        raise ValueError(f"conv2d taps: kernel {kh}x{kw} is not a multiple of stride {stride}")
    if form == "row taps" and stride != 1:
        raise ValueError(f"conv2d row taps: stride 1 only, got stride {stride}")


def _nhwc(x):
    return namespace(x).permute_dims(x, (0, 2, 3, 1))


def _nchw(x):
    return namespace(x).permute_dims(x, (0, 3, 1, 2))


def _conv2d(x, weight, bias, stride, padding, form=None):
    """2-D cross-correlation (NCHW, weight (O, C, kh, kw)), zero padding, plus bias (O,) or None.

    Per block of samples, in the form _conv_form picks (im2col by strided slices and one
    matrix product, or a tap form); `form` overrides the choice, for tests."""
    xp = namespace(x, weight)
    o, c, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != c:
        raise ValueError(f"conv2d: input shape {tuple(x.shape)} does not fit weight {tuple(weight.shape)}")
    n, _, h, w = x.shape
    oh, ow = conv_output_hw(h, w, kh, kw, stride, padding)
    forward = _forward_of_block(weight, stride, padding, (h, w), form)
    xt = _nhwc(x)
    blocks = _blocks(n, oh * ow * kh * kw * c)
    if len(blocks) == 1:  # no output buffer to copy into (the tap forms' crop stays a view)
        y = forward(xt)
        if bias is not None:
            y = _add_in_place(y, bias)
        return _nchw(y)
    out = xp.empty((n, oh, ow, o), dtype=x.dtype)
    for b in blocks:
        y = forward(xt[b, ...])
        out[b, ...] = y if bias is None else y + bias  # the bias while the block is in the cache
    return _nchw(out)


def _subpixel_weight(weight, stride):
    """The adjoint of a stride-s conv as a stride-1 conv with s*s output phases: returns
    (matrix (th*tw*O, s*s*C), th, tw) with th = ceil(kh/s) taps per phase. Entry
    ((u, v, o), (a, b, c)) is W[o, c, a + s*(th-1-u), b + s*(tw-1-v)], zero past the kernel."""
    xp = namespace(weight)
    o, c, kh, kw = weight.shape
    s = stride
    th, tw = -(-kh // s), -(-kw // s)
    if th * s != kh or tw * s != kw:
        padded = xp.zeros((o, c, th * s, tw * s), dtype=weight.dtype)
        padded[:, :, :kh, :kw] = weight
        weight = padded
    w6 = xp.flip(xp.reshape(weight, (o, c, th, s, tw, s)), axis=(2, 4))
    return xp.reshape(xp.permute_dims(w6, (2, 4, 0, 3, 5, 1)), (th * tw * o, s * s * c)), th, tw


def _input_grad_gather(g_nhwc, wsub, th, tw, stride, padding, h, w):
    """One block of conv2d's input gradient by gathering (the sub-pixel form): padded input
    row Y = a + s*q receives g[q - t] W[a + s*t] for t < th, so every phase (a, b) is a
    stride-1 correlation of g with th x tw taps. One im2col of g serves all s*s phases,
    one matmul computes them, and interleaving the phases (a reshape) gives the gradient.
    Only the rows and columns that survive the crop of the padding are computed."""
    xp = namespace(g_nhwc)
    n, oh, ow, o = g_nhwc.shape
    s, p = stride, padding
    c = wsub.shape[1] // (s * s)
    q0h, q0w = p // s, p // s  # first phase row / column that reaches the unpadded input
    qh, qw = -(-(p + h) // s) - q0h, -(-(p + w) // s) - q0w
    # g shifted by th-1 so that g[q - t] = gp[q + (th-1-t)], with zeros outside g; rows of g
    # that only reach the padding (large padding) are not needed
    rh, rw = q0h + qh + th - 1, q0w + qw + tw - 1
    ch, cw = min(oh, rh - th + 1), min(ow, rw - tw + 1)
    gp = xp.zeros((n, rh, rw, o), dtype=g_nhwc.dtype)
    gp[:, th - 1:th - 1 + ch, tw - 1:tw - 1 + cw, :] = g_nhwc[:, :ch, :cw, :]
    patches = [gp[:, q0h + u:q0h + u + qh, q0w + v:q0w + v + qw, :] for u in range(th) for v in range(tw)]
    cols = xp.reshape(xp.stack(patches, axis=3), (n * qh * qw, th * tw * o))
    phases = xp.reshape(xp.matmul(cols, wsub), (n, qh, qw, s, s, c))
    full = xp.reshape(xp.permute_dims(phases, (0, 1, 3, 2, 4, 5)), (n, qh * s, qw * s, c))
    dh, dw = p - s * q0h, p - s * q0w
    return full[:, dh:dh + h, dw:dw + w, :]


def _gathers(weight, stride):
    """Gather (sub-pixel) or scatter (col2im) for conv2d's input gradient? Both are exact;
    gathering copies th*tw*O numbers per input pixel and scattering adds kh*kw*C numbers
    per output pixel, so scatter wins when O is much larger than C (a first layer)."""
    o, c, kh, kw = weight.shape
    th, tw = -(-kh // stride), -(-kw // stride)
    return th * tw * o <= 4 * kh * kw * c


INPUT_GRAD_METHODS = ("gather", "scatter", "row taps")


def _input_grad_method(weight, stride, padding):
    """How conv2d's input gradient is computed; every method is exact. Gather or scatter
    by _gathers. Where a stride-1 layer would gather, its gradient is the stride-1 conv of
    g with the flipped, transposed kernel and padding k-1-p, computed as a forward in the
    row-tap form where _conv_form would pick that for it (O >= 8 input channels there, and
    C <= O outputs; square kernel, p <= k-1)."""
    o, c, kh, kw = weight.shape
    if not _gathers(weight, stride):
        return "scatter"
    if _row_taps_fit_input_grad((kh, kw), stride, padding) and _conv_form((kh, kw), 1, o, c) == "row taps":
        return "row taps"
    return "gather"


def _row_taps_fit_input_grad(kernel_hw, stride, padding):
    """Can the input gradient be the row-tap forward of the flipped kernel? That conv has
    padding k-1-p on both axes, so: stride 1, a square kernel, p <= k-1."""
    kh, kw = kernel_hw
    return stride == 1 and kh == kw and padding <= kh - 1


def _input_grad_of_block(weight, stride, padding, in_hw, method=None):
    """A function taking one block of g (channels-last, (n, OH, OW, O)) to that block of
    conv2d's input gradient (n, H, W, C), by one of INPUT_GRAD_METHODS (None: by
    _input_grad_method; tests pass each to check them against each other)."""
    xp = namespace(weight)
    o, c, kh, kw = weight.shape
    h, w = in_hw
    method = _input_grad_method(weight, stride, padding) if method is None else method
    if method not in INPUT_GRAD_METHODS:
        raise ValueError(f"conv2d input gradient method must be one of {INPUT_GRAD_METHODS}, got {method!r}")
    if method == "row taps":
        if not _row_taps_fit_input_grad((kh, kw), stride, padding):
            raise ValueError(f"conv2d input gradient by row taps: stride 1, a square kernel and padding <= k-1 "
                             f"only, got stride {stride}, kernel {kh}x{kw}, padding {padding}")
        flipped = xp.permute_dims(xp.flip(weight, axis=(2, 3)), (1, 0, 2, 3))  # (C, O, k, k)
        out_hw = conv_output_hw(h, w, kh, kw, 1, padding)
        return _forward_of_block(flipped, 1, kh - 1 - padding, out_hw, "row taps")
    if method == "gather":
        wsub, th, tw = _subpixel_weight(weight, stride)
        return lambda g_block: _input_grad_gather(g_block, wsub, th, tw, stride, padding, h, w)
    wm = _weight_matrix(weight)

    def scatter(g_block):
        rows = xp.reshape(g_block, (-1, o))
        spread = _col2im(xp.matmul(wm.T, rows.T), g_block.shape[0], h, w, c, kh, kw, stride, padding)
        return xp.permute_dims(spread, (1, 2, 3, 0))  # (c, n, h, w) -> channels-last
    return scatter


def _conv2d_input_grad(g, weight, stride, padding, in_hw, method=None):
    """The adjoint of conv2d in x: g (N, O, OH, OW) -> (N, C, H, W).

    method: None picks the fastest of the exact methods (see _input_grad_method); tests pass
    each of INPUT_GRAD_METHODS to check them against each other."""
    xp = namespace(g, weight)
    o, c, kh, kw = weight.shape
    n, _, oh, ow = g.shape
    h, w = in_hw
    of_block = _input_grad_of_block(weight, stride, padding, in_hw, method)
    gt = _nhwc(g)
    blocks = _blocks(n, oh * ow * kh * kw * c)
    if len(blocks) == 1:
        return _nchw(of_block(gt))
    out = xp.empty((n, h, w, c), dtype=g.dtype)
    for b in blocks:
        out[b, ...] = of_block(gt[b, ...])
    return _nchw(out)


def _conv2d_weight_grad(g, x, weight_shape, stride, padding, form=None):
    """The gradient of <conv2d(x, W), g> in W, in the forward's form (_conv_form; `form`
    overrides it, for tests): im2col's sum over samples of cols^T g, or each tap's slice^T
    times g placed on the grid (zero where no output is)."""
    xp = namespace(g, x)
    o, c, kh, kw = weight_shape
    n = x.shape[0]
    oh, ow = g.shape[2], g.shape[3]
    gt, xt = _nhwc(g), _nhwc(x)
    form = _conv_form((kh, kw), stride, c, o) if form is None else form
    _check_form(form, (kh, kw), stride)
    if form != "im2col":
        th, tw, k = kh // stride, kw // stride, stride * stride * c
        merge = form == "row taps"
        total = xp.zeros((th, tw * k, o) if merge else (th, tw, k, o), dtype=g.dtype)
        for b in _blocks(n, oh * ow * kh * kw * c):
            slices, gh, gw, rows = _tap_slices(xt[b, ...], stride, padding, th, tw, merge)
            m = gt[b, ...].shape[0]
            on_grid = xp.zeros((m, gh, gw, o), dtype=g.dtype)
            on_grid[:, :oh, :ow, :] = gt[b, ...]
            g_rows = xp.reshape(on_grid, (m * gh * gw, o))[:rows, :]
            for index, operand in slices:
                total[index + (...,)] += xp.matmul(operand.T, g_rows)
        return _weight_from_taps(xp.reshape(total, (th, tw, k, o)), weight_shape, stride)
    total = xp.zeros((kh * kw * c, o), dtype=g.dtype)
    for b in _blocks(n, oh * ow * kh * kw * c):
        cols = _im2col(xt[b, ...], kh, kw, stride, padding)
        total += xp.matmul(cols.T, xp.reshape(gt[b, ...], (-1, o)))
    return _weight_from_matrix(total.T, weight_shape)


def _conv2d_vjp_x(g, ans, x, weight, bias, stride, padding):
    return _conv2d_input_grad(g, weight, stride, padding, (x.shape[2], x.shape[3]))


def _conv2d_vjp_w(g, ans, x, weight, bias, stride, padding):
    return _conv2d_weight_grad(g, x, _shape(weight), stride, padding)


def _conv2d_vjp_b(g, ans, x, weight, bias, stride, padding):
    return namespace(g).sum(g, axis=(0, 2, 3))


conv2d = primitive(_conv2d, _conv2d_vjp_x, _conv2d_vjp_w, _conv2d_vjp_b)


def _conv2d_transpose(y, weight, stride, padding, in_hw):
    """The exact adjoint of conv2d(., weight, None, stride, padding) on inputs of spatial size
    in_hw: <conv2d(x), y> == <x, conv2d_transpose(y)>. Giving in_hw removes any guess about
    output padding for strided layers."""
    return _conv2d_input_grad(y, weight, stride, padding, in_hw)


def _conv2d_transpose_vjp_y(g, ans, y, weight, stride, padding, in_hw):
    return _conv2d(g, weight, None, stride, padding)


def _conv2d_transpose_vjp_w(g, ans, y, weight, stride, padding, in_hw):
    # <conv2d_transpose(y, W), g> = <y, conv2d(g, W)>, so the weight gradient is conv2d's
    # weight gradient with input g and upstream gradient y.
    return _conv2d_weight_grad(y, g, _shape(weight), stride, padding)


conv2d_transpose = primitive(_conv2d_transpose, _conv2d_transpose_vjp_y, _conv2d_transpose_vjp_w)
