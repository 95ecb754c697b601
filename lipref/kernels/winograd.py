"""Kernels: Winograd's minimal filtering for convolutions in float32, registered for "conv2d",
"conv2d_transpose" and "conv2d_weight_grad" ahead of conv.py's and conv_grads.py's.

A stride-s convolution whose kernel is r*s (r = 2 or 3) is a stride-1 convolution with an
r x r kernel on the space-to-depth grid of the padded input (each s x s cell one pixel of
K = s*s*C channels; for s = 1 the padded input itself): 3x3 stride-1 layers are r = 3, s = 1
and the paper's 4x4 stride-2 layers r = 2, s = 2. On that grid, F(2x2, r x r) (Lavin and
Gray, 2016) computes a 2x2 tile of outputs from the (r+1) x (r+1) tile d of grid under it as

    Y = A^T [ U . V ] A,   U = G g G^T (per grid channel and output channel),   V = B^T d B,

summed over the K grid channels, with

    F(2x2, 3x3): B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
                 G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]],
                 A^T = [[1, 1, 1, 0], [0, 1, -1, -1]];
    F(2x2, 2x2): B^T = [[1, -1, 0], [0, 1, 0], [0, -1, 1]], G = [[1, 0], [1, 1], [0, 1]],
                 A^T = [[1, 1, 0], [0, 1, 1]].

The sum over channels is (r+1)^2 matrix products (tiles, K) @ (K, O), one per entry (xi, nu)
of the transformed tile: 16 products per 4 outputs where the plain definition makes 36
(F(2x2, 3x3), 2.25x fewer multiplications), 9 where it makes 16 (F(2x2, 2x2), 1.78x). The
input gradient is the stride-1 r x r conv of g with the grid's kernel flipped and transposed
(the same algorithm), then depth-to-space; the weight gradient is the algorithm's adjoint in
U: dU = sum over tiles of V^T Z with Z = A ghat A^T (ghat a 2x2 tile of g), dW = G^T dU G.

Rounding. Exact in exact arithmetic, the algorithm's terms are not the plain dot product's:
an output sums products of transformed weights and inputs u_xi,nu v_xi,nu whose inputs span
the whole tile, including grid pixels the output does not read, which cancel only in exact
arithmetic. Its error is therefore NOT the plain definition's gamma_n |W||x| (the bound
docs/soundness.md's rounding analysis assumes): computed Y against exact Y satisfies

    |computed - exact| <= gamma_(K+10) * |A^T| [ (|G||g||G^T|) . (|B^T||d||B|) ] |A| + 5 (K+10) eta

(summed over the K channels; the first term is this algorithm run on |g| and |d| with every
transform matrix replaced by its absolute values, `ABSOLUTE`; gamma_n = n u / (1 - n u),
u = 2^-24, eta the smallest subnormal; K + 10 bounds the roundings on any path: at most two
in V, four in U, K in the sum over channels, four in A^T M A; the second term is the
products that underflow, each off by at most eta/2, at most 9 K of them per output, while
sums in the subnormal range are exact). It holds for weights that are zero or normal (at
least 2^-126 in magnitude), so that the halvings in U are exact or their error lies within
the first term. The weight gradient satisfies the like bound with K replaced by the tiles
summed over (samples times tiles per sample). tests/test_kernels_conv_winograd.py checks
them on drawn shapes. So these kernels apply to float32 only, and
sound mode computes in float64 only (walk.py refuses anything else): no sound certificate
ever runs them (a test certifies in sound mode with a spy on them). They apply on host NumPy
only, where they were measured.

Overflow: where a block of the output is not all finite (an overflow in the transformed
operands, or inf - inf where the plain sum is inf), that block is computed again by conv.py's
im2col form, so infinities are the plain definition's.
"""
from collections import namedtuple

from ..backend import is_host_numpy, namespace
from ..shapes import conv_output_hw, nchw, nhwc
from .conv_blocks import blocks_of, channels_last, map_blocks, sum_in_order
from .registry import register

Algorithm = namedtuple("Algorithm", "name r bt g at")  # F(2x2, r x r); bt (r+1)^2, g (r+1) x r, at 2 x (r+1)
F23 = Algorithm("F(2x2, 3x3)", 3, ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
                ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)), ((1, 1, 1, 0), (0, 1, -1, -1)))
F22 = Algorithm("F(2x2, 2x2)", 2, ((1, -1, 0), (0, 1, 0), (0, -1, 1)), ((1, 0), (1, 1), (0, 1)),
                ((1, 1, 0), (0, 1, 1)))
ALGORITHMS = {3: F23, 2: F22}


def absolute(alg):
    """The algorithm with every matrix entry replaced by its absolute value: run on |g| and
    |d| in float64 it gives the magnitude in the rounding bound (module docstring)."""
    def pos(m):
        return tuple(tuple(abs(e) for e in row) for row in m)
    return Algorithm(alg.name + " (absolute)", alg.r, pos(alg.bt), pos(alg.g), pos(alg.at))


ABSOLUTE = {r: absolute(alg) for r, alg in ALGORITHMS.items()}

# Winograd needs wide products to pay for its transforms: below this many input or output
# channels (a first layer) conv.py's forms are faster (docs/performance-history.md).
MIN_CHANNELS = 8
# Intermediates per block: larger than conv_blocks.COLUMN_BLOCK, because a block makes 50-70
# NumPy calls (transform steps, the products) whose fixed cost small blocks pay too often;
# measured best at 2^19 - 2^20 (docs/performance-history.md).
WINOGRAD_BLOCK = 2 ** 20


def grid_taps(kernel_hw, stride):
    """r where a kernel is r*s x r*s at stride s, r in ALGORITHMS; else None."""
    kh, kw = kernel_hw
    r = kh // stride
    return r if kh == kw and r * stride == kh and r in ALGORITHMS else None


def applies(xp, dtype, kernel_hw, stride, padding, channels):
    """Does Winograd run for this conv: float32 on host NumPy, a kernel of 3x3 or 2x2 taps of
    the stride's grid (3x3 at stride 1, 4x4 at stride 2, ...), padding < stride (or any at
    stride 1), at least MIN_CHANNELS input and output channels?"""
    return (dtype == xp.float32 and grid_taps(kernel_hw, stride) is not None and (stride == 1 or padding < stride)
            and min(channels) >= MIN_CHANNELS and is_host_numpy(xp))


def _forward_applies(x, weight, bias, stride, padding):
    return weight.dtype == x.dtype and applies(namespace(x, weight), x.dtype, weight.shape[2:], stride, padding,
                                               weight.shape[:2])


def _transpose_applies(g, weight, stride, padding, in_hw):
    # stride 1 only: at stride s the gradient on the grid has s*s*C channels, and its output
    # transform and depth-to-space cost more than conv_grads.py's sub-pixel gather (measured
    # 1.3-1.4x its time on the 4x4 stride-2 layers); padding <= 2: the flipped conv's r - 1 - p
    return stride == 1 and padding <= weight.shape[2] - 1 and weight.dtype == g.dtype and applies(
        namespace(g, weight), g.dtype, weight.shape[2:], stride, padding, weight.shape[:2])


def _weight_grad_applies(g, x, weight_shape, stride, padding):
    return g.dtype == x.dtype and applies(namespace(g, x), x.dtype, weight_shape[2:], stride, padding,
                                          weight_shape[:2])


# ---------------------------------------------------------------- weights on the grid

def grid_weight(weight, stride):
    """(O, C, r*s, r*s) -> (O, s*s*C, r, r): the kernel on the space-to-depth grid, channel
    (a, b, c) of tap (u, v) being W[o, c, s*u + a, s*v + b] (exact: a permutation)."""
    xp = namespace(weight)
    o, c, k, _ = weight.shape
    s, r = stride, k // stride
    w6 = xp.reshape(weight, (o, c, r, s, r, s))  # (o, c, u, a, v, b)
    return xp.reshape(xp.permute_dims(w6, (0, 3, 5, 1, 2, 4)), (o, s * s * c, r, r))


def _weight_from_grid(wg, weight_shape, stride):
    """Inverse of grid_weight."""
    xp = namespace(wg)
    o, c, k, _ = weight_shape
    s, r = stride, k // stride
    w6 = xp.reshape(wg, (o, s, s, c, r, r))  # (o, a, b, c, u, v)
    return xp.reshape(xp.permute_dims(w6, (0, 3, 4, 1, 5, 2)), (o, c, k, k))


def _matrix(rows, like):
    xp = namespace(like)
    return xp.asarray(rows, dtype=like.dtype)


def transformed_weights(wg, alg):
    """U = G g G^T for every (o, k): (O, K, r, r) -> (r+1, r+1, K, O), entry [xi, nu] the
    (K, O) matrix of one product (sums of at most 3 terms per step, coefficients 1, 1/2)."""
    xp = namespace(wg)
    g = _matrix(alg.g, wg)
    u = xp.tensordot(xp.tensordot(g, wg, axes=([1], [2])), g, axes=([3], [1]))  # (xi, O, K, nu)
    return xp.permute_dims(u, (0, 3, 2, 1))


def _grid_weight_gradient(du, alg):
    """dW = G^T dU G, the adjoint of `transformed_weights`: (r+1, r+1, K, O) -> (O, K, r, r)."""
    xp = namespace(du)
    g = _matrix(alg.g, du)
    w = xp.tensordot(xp.tensordot(g, du, axes=([0], [0])), g, axes=([1], [0]))  # (k, K, O, l)
    return xp.permute_dims(w, (2, 1, 0, 3))


# ---------------------------------------------------------------- the transforms
#
# Layout: the tiles' arrays are (th, tw, n, channels), the samples inside the tile grid. A
# transform step combines tiles shifted by one along a row or a column of the grid; with the
# samples and channels innermost, every step reads and writes runs of tw*n*channels
# contiguous numbers (NumPy runs such passes 2.5x faster than runs of tw*channels), and the
# products read (th*tw*n, K) matrices as they are. Only the copies in and out rearrange.

def tiles_hw(out_hw):
    """2x2 output tiles per column and row: (ceil(OH / 2), ceil(OW / 2))."""
    return -(-out_hw[0] // 2), -(-out_hw[1] // 2)


def _signed_sum(coefs, arrays):
    """sum_k coefs[k] arrays[k] for coefficients 0, 1, -1, added in order: a new array, or
    the one array itself where a single term has coefficient 1 (callers only read it)."""
    terms = [(c, a) for c, a in zip(coefs, arrays) if c != 0]
    (c0, out), rest = terms[0], terms[1:]
    if not rest:
        return out if c0 > 0 else -out
    c1, a1 = rest[0]
    if c0 > 0:
        out = out + a1 if c1 > 0 else out - a1
    else:
        out = a1 - out if c1 > 0 else -out - a1
    for c, a in rest[1:]:
        if c > 0:
            out += a
        else:
            out -= a
    return out


def split_grid(x_nhwc, stride, padding, tiles, alpha):
    """The zero-padded space-to-depth grid of a channels-last block (n, H, W, C), laid out
    [grid row, column parity, grid column // 2, sample, (a, b, c)], with the 2*th + alpha - 2
    rows and columns the tiles read (input pixels past them are read by no output)."""
    xp = namespace(x_nhwc)
    n, h, w, c = x_nhwc.shape
    s, p = stride, padding
    th, tw = tiles
    rows, half = 2 * th + alpha - 2, tw + 1
    split = xp.zeros((rows, 2, half, n, s * s * c), dtype=x_nhwc.dtype)
    for a in range(s):
        h0 = (a - p) % s  # the first input row at offset a of its cell
        r0 = (h0 + p) // s
        count_h = min(len(range(h0, h, s)), rows - r0)
        for parity in (0, 1):
            for b in range(s):
                w0 = (s * parity + b - p) % (2 * s)  # the first input column at offset b of a cell of this parity
                t0 = (w0 + p) // (2 * s)
                count_w = min(len(range(w0, w, 2 * s)), half - t0)
                if count_h > 0 and count_w > 0:
                    channels = slice((a * s + b) * c, (a * s + b + 1) * c)
                    part = x_nhwc[:, h0:h0 + s * (count_h - 1) + 1:s, w0:w0 + 2 * s * (count_w - 1) + 1:2 * s, :]
                    split[r0:r0 + count_h, parity, t0:t0 + count_w, :, channels] = xp.permute_dims(part, (1, 2, 0, 3))
    return split


def input_tiles(split, tiles, alg):
    """V = B^T d B of every tile of a `split_grid`: (r+1)^2 arrays (th, tw, n, K), entry
    (r+1)*xi + nu. Grid column 2b + j of tile b is split[:, j % 2, b + j // 2]."""
    th, tw = tiles
    alpha = alg.r + 1
    cols = [split[:, j % 2, j // 2:j // 2 + tw, ...] for j in range(alpha)]
    by_column = [_signed_sum(row, cols) for row in alg.bt]  # B^T along each tile's columns
    out = [None] * (alpha * alpha)
    for nu, q in enumerate(by_column):
        rows = [q[i:i + 2 * th:2, ...] for i in range(alpha)]
        for xi, row in enumerate(alg.bt):  # and along its rows
            out[alpha * xi + nu] = _signed_sum(row, rows)
    return out


def output_tiles_into(products, out, alg):
    """Y = A^T M A from the (r+1)^2 products (th, tw, n, O), written into `out` (n, OH, OW,
    O), a block of the result (tile entries past OH or OW are dropped)."""
    xp = namespace(products[0])
    alpha = alg.r + 1
    oh, ow = out.shape[1], out.shape[2]
    for i, row in enumerate(alg.at):  # A^T along the rows
        s = [_signed_sum(row, products[nu::alpha]) for nu in range(alpha)]
        for j, col in enumerate(alg.at):  # then the columns
            y = _signed_sum(col, s)
            rows, cols = (oh - i + 1) // 2, (ow - j + 1) // 2
            out[:, i::2, j::2, :] = xp.permute_dims(y[:rows, :cols, ...], (2, 0, 1, 3))


def gradient_tiles(g_nhwc, tiles, alg):
    """Z = A ghat A^T of every 2x2 tile ghat of a channels-last output gradient (n, OH, OW,
    O) (zeros past its end): (r+1)^2 arrays (th, tw, n, O), entry (r+1)*xi + nu."""
    xp = namespace(g_nhwc)
    n, oh, ow, o = g_nhwc.shape
    th, tw = tiles
    quads = xp.zeros((2, 2, th, tw, n, o), dtype=g_nhwc.dtype)  # [i, j]: entry (i, j) of every tile
    for i in (0, 1):
        for j in (0, 1):
            part = xp.permute_dims(g_nhwc[:, i::2, j::2, :], (1, 2, 0, 3))
            quads[i, j, :part.shape[0], :part.shape[1], ...] = part
    a = list(zip(*alg.at))  # A = (A^T)^T, (r+1) x 2
    by_row = [[_signed_sum(row, [quads[0, j, ...], quads[1, j, ...]]) for row in a] for j in (0, 1)]
    return [_signed_sum(col, [by_row[0][xi], by_row[1][xi]]) for xi in range(len(a)) for col in a]


def _times(tiles, matrix):
    """(th, tw, n, a) @ (a, b) -> (th, tw, n, b), one product of all rows."""
    xp = namespace(tiles, matrix)
    th, tw, n, a = tiles.shape
    return xp.reshape(xp.matmul(xp.reshape(tiles, (th * tw * n, a)), matrix), (th, tw, n, matrix.shape[1]))


def _forward_block_into(x_block, u, stride, padding, alg, out_block):
    """One block of the conv without bias: channels-last (n, H, W, C) into `out_block`."""
    tiles = tiles_hw(out_block.shape[1:3])
    v = input_tiles(split_grid(x_block, stride, padding, tiles, alg.r + 1), tiles, alg)
    alpha = alg.r + 1
    output_tiles_into([_times(v[e], u[e // alpha, e % alpha, ...]) for e in range(alpha * alpha)], out_block, alg)


def _depth_to_space_into(grid, stride, padding, skip, out):
    """out (n, H, W, C) from the gradient on grid rows and columns skip, skip + 1, ...
    (n, R, R', s*s*C): input pixel (y, x) is grid cell ((y+p) // s, (x+p) // s), channels
    ((y+p) % s, (x+p) % s, c); pixels past the grid's end (read by no output) get zero."""
    xp = namespace(grid)
    n, h, w, c = out.shape
    s, p = stride, padding
    if s == 1 and grid.shape[1:3] == (h, w):
        out[...] = grid
        return
    for a in range(s):
        h0 = (a - p) % s
        r0 = (h0 + p) // s - skip
        for b in range(s):
            w0 = (b - p) % s
            c0 = (w0 + p) // s - skip
            count_h, count_w = len(range(h0, h, s)), len(range(w0, w, s))
            fit_h, fit_w = min(count_h, grid.shape[1] - r0), min(count_w, grid.shape[2] - c0)
            target = out[:, h0::s, w0::s, :]
            if (fit_h, fit_w) != (count_h, count_w):
                target[...] = 0
            block = grid[:, r0:r0 + fit_h, c0:c0 + fit_w, (a * s + b) * c:(a * s + b + 1) * c]
            target[:, :fit_h, :fit_w, :] = block


# ---------------------------------------------------------------- the kernels

def _check(weight_shape, stride, padding):
    r = grid_taps(weight_shape[2:], stride)
    if r is None or not (stride == 1 or padding < stride):
        raise ValueError(f"Winograd: a kernel of 3x3 or 2x2 taps of the stride's grid with padding < stride (any "
                         f"at stride 1) only, got kernel {tuple(weight_shape[2:])}, stride {stride}, "
                         f"padding {padding}")
    return r


@register("conv2d", applies=_forward_applies)
def conv2d(x, weight, bias, stride, padding, alg=None):
    """conv2d by F(2x2, r x r) on the stride's grid (the module docstring gives the algorithm
    and its rounding error), per block of samples, in threads. alg: the algorithm (None: by
    the kernel; tests pass `ABSOLUTE`'s to compute the rounding bound)."""
    r = _check(weight.shape, stride, padding)
    alg = ALGORITHMS[r] if alg is None else alg
    xp = namespace(x, weight)
    o, c, k, _ = weight.shape
    if x.ndim != 4 or x.shape[1] != c:
        raise ValueError(f"conv2d: input shape {tuple(x.shape)} does not fit weight {tuple(weight.shape)}")
    n, _, h, w = x.shape
    out_hw = conv_output_hw(h, w, k, k, stride, padding)
    u, xt = transformed_weights(grid_weight(weight, stride), alg), nhwc(x)
    out = xp.empty((n,) + out_hw + (o,), dtype=x.dtype)
    alpha2 = (alg.r + 1) ** 2

    def one(b):
        block, x_block = out[b, ...], channels_last(xt[b, ...])
        _forward_block_into(x_block, u, stride, padding, alg, block)
        if not bool(xp.all(xp.isfinite(block))):  # overflow: the direct form's infinities (module docstring)
            from .conv import _forward_of_block as direct  # at call time: see conv_blocks.py on import order
            block[...] = direct(weight, stride, padding, (h, w), "im2col")(x_block)
        if bias is not None:
            block += bias
    per_sample = alpha2 * out_hw[0] * out_hw[1] * (stride * stride * c + o) // 4
    map_blocks(xp, one, blocks_of(n, per_sample, WINOGRAD_BLOCK))
    return nchw(out)


@register("conv2d_transpose", applies=_transpose_applies)
def conv2d_input_grad(g, weight, stride, padding, in_hw, alg=None):
    """conv2d's input gradient (its adjoint in x): on the grid, the stride-1 r x r conv of g
    with the grid's kernel flipped and transposed, padding r - 1 - q (q = p at stride 1, the
    grid rows that are all padding; 0 at stride > 1, where p < s), then depth-to-space."""
    r = _check(weight.shape, stride, padding)
    xp = namespace(g, weight)
    skip = padding if stride == 1 else 0
    if skip > r - 1:
        raise ValueError(f"Winograd input gradient at stride 1: padding <= {r - 1} only, got {padding}")
    flipped = xp.permute_dims(xp.flip(grid_weight(weight, stride), axis=(2, 3)), (1, 0, 2, 3))  # (s*s*C, O, r, r)
    on_grid = nhwc(conv2d(g, flipped, None, 1, r - 1 - skip, alg))
    if stride == 1:
        if tuple(on_grid.shape[1:3]) != tuple(in_hw):
            raise ValueError(f"conv2d_transpose: in_hw {tuple(in_hw)} does not fit output {tuple(g.shape[2:])}")
        return nchw(on_grid)
    out = xp.empty((g.shape[0],) + tuple(in_hw) + (weight.shape[1],), dtype=g.dtype)
    _depth_to_space_into(on_grid, stride, padding, skip, out)
    return nchw(out)


@register("conv2d_weight_grad", applies=_weight_grad_applies)
def conv2d_weight_grad(g, x, weight_shape, stride, padding, alg=None):
    """The gradient of <conv2d(x, W), g> in W: dU = sum over tiles of V^T Z per transformed
    entry ((r+1)^2 products per block, V as the forward's), then G^T dU G on the grid."""
    r = _check(weight_shape, stride, padding)
    alg = ALGORITHMS[r] if alg is None else alg
    xp = namespace(g, x)
    o, c = weight_shape[:2]
    k, alpha = stride * stride * c, r + 1
    n, _, oh, ow = g.shape
    tiles = tiles_hw((oh, ow))
    xt, gt = nhwc(x), nhwc(g)

    def one(b):
        v = input_tiles(split_grid(channels_last(xt[b, ...]), stride, padding, tiles, alpha), tiles, alg)
        z = gradient_tiles(channels_last(gt[b, ...]), tiles, alg)
        rows = tiles[0] * tiles[1] * v[0].shape[2]
        return xp.stack([xp.matmul(xp.reshape(v[e], (rows, k)).T, xp.reshape(z[e], (rows, o)))
                         for e in range(alpha * alpha)], axis=0)
    per_sample = alpha * alpha * oh * ow * (k + o) // 4
    du = xp.reshape(sum_in_order(map_blocks(xp, one, blocks_of(n, per_sample, WINOGRAD_BLOCK))), (alpha, alpha, k, o))
    return _weight_from_grid(_grid_weight_gradient(du, alg), weight_shape, stride)
