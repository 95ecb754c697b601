"""Kernels: conv2d's input and weight gradients, registered for "conv2d_transpose" (the
adjoint in x, which is also conv2d's input gradient) and "conv2d_weight_grad".

Three exact input-gradient methods (sub-pixel gather, col2im scatter, the row-tap forward
of the flipped kernel; `_input_grad_method` chooses) and the weight gradient in the
forward's form. tests/test_kernels_conv.py checks each against the plain definition.
"""
from ..backend import namespace
from ..shapes import conv_output_hw
from ..shapes import nchw as _nchw
from ..shapes import nhwc as _nhwc
from .conv import (
    _check_form,
    _col2im,
    _conv_form,
    _forward_of_block,
    _im2col,
    _im2col_channel_major,
    _tap_slices,
    _weight_from_matrix,
    _weight_from_taps,
    _weight_matrix,
)
from .conv_blocks import blocked_forward, blocks_of, channels_last, map_blocks, sum_in_order
from .registry import register


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
    if method == "scatter":
        raise ValueError("conv2d input gradient by scatter: see _input_grad_scatter (no block function)")
    wsub, th, tw = _subpixel_weight(weight, stride)
    return lambda g_block: _input_grad_gather(g_block, wsub, th, tw, stride, padding, h, w)


def _input_grad_scatter(g, weight, stride, padding, in_hw, blocks):
    """conv2d's input gradient by scatter (W^T g^T, then col2im) as an NCHW array: col2im's
    (C, n, H, W) blocks are copied into it plane by plane (runs of W numbers), not pixel by
    pixel (runs of C = 1 or 3: this method serves first layers)."""
    xp = namespace(g, weight)
    o, c, kh, kw = weight.shape
    h, w = in_hw
    wm_t = _weight_matrix(weight).T
    gt = _nhwc(g)
    out = xp.empty((g.shape[0], c, h, w), dtype=g.dtype)

    def one(b):
        g_block = channels_last(gt[b, ...])
        spread = _col2im(xp.matmul(wm_t, xp.reshape(g_block, (-1, o)).T), g_block.shape[0], h, w, c, kh, kw,
                         stride, padding)
        out[b, ...] = xp.permute_dims(spread, (1, 0, 2, 3))
    map_blocks(xp, one, blocks)
    return out


@register("conv2d_transpose")
def conv2d_input_grad(g, weight, stride, padding, in_hw, method=None):
    """The adjoint of conv2d in x (conv2d_transpose, conv2d's input gradient), the kernel:
    g (N, O, OH, OW) -> (N, C, H, W).

    method: None picks the fastest of the exact methods (see _input_grad_method); tests pass
    each of INPUT_GRAD_METHODS to check them against each other."""
    xp = namespace(g, weight)
    o, c, kh, kw = weight.shape
    n, _, oh, ow = g.shape
    h, w = in_hw
    blocks = blocks_of(n, oh * ow * kh * kw * c)
    method = _input_grad_method(weight, stride, padding) if method is None else method
    if method == "scatter":
        return _input_grad_scatter(g, weight, stride, padding, in_hw, blocks)
    of_block = _input_grad_of_block(weight, stride, padding, in_hw, method)
    return _nchw(blocked_forward(xp, of_block, _nhwc(g), (h, w, c), None, blocks))


@register("conv2d_weight_grad")
def conv2d_weight_grad(g, x, weight_shape, stride, padding, form=None):
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
    blocks = blocks_of(n, oh * ow * kh * kw * c)
    if form in ("taps", "row taps"):
        th, tw, k = kh // stride, kw // stride, stride * stride * c
        merge = form == "row taps"

        def by_taps(b):
            slices, gh, gw, rows = _tap_slices(channels_last(xt[b, ...]), stride, padding, th, tw, merge)
            m = gt[b, ...].shape[0]
            on_grid = xp.zeros((m, gh, gw, o), dtype=g.dtype)
            on_grid[:, :oh, :ow, :] = channels_last(gt[b, ...])
            g_rows = xp.reshape(on_grid, (m * gh * gw, o))[:rows, :]
            part = xp.empty((th, tw * k, o) if merge else (th, tw, k, o), dtype=g.dtype)
            for index, operand in slices:
                part[index + (...,)] = xp.matmul(operand.T, g_rows)
            return part
        total = sum_in_order(map_blocks(xp, by_taps, blocks))
        return _weight_from_taps(xp.reshape(total, (th, tw, k, o)), weight_shape, stride)

    def by_im2col(b):
        if form == "channel-major":
            cols_t = _im2col_channel_major(xt[b, ...], kh, kw, stride, padding)
        else:
            cols_t = _im2col(channels_last(xt[b, ...]), kh, kw, stride, padding).T
        return xp.matmul(cols_t, xp.reshape(channels_last(gt[b, ...]), (-1, o)))
    return _weight_from_matrix(sum_in_order(map_blocks(xp, by_im2col, blocks)).T, weight_shape)

