"""Kernels: conv2d's fast forward forms, registered for "conv2d".

The plain conv2d (lipref/primitives.py) is a sum over kernel offsets of strided slices
contracted with the weights. The forms here compute the same sums in another order, per
block of samples, in the form `_conv_form` picks; tests/test_kernels_conv.py checks each
against the plain definition. The input and weight gradients' forms are in conv_grads.py.
"""
from ..backend import namespace
from ..shapes import conv_output_hw
from ..shapes import nchw as _nchw
from ..shapes import nhwc as _nhwc
from .conv_blocks import blocked_forward, blocks_of
from .registry import register

# Layout: conv2d's arguments and results are NCHW, but in memory the work is channels-last.
# Every kernel offset (i, j) then reads or writes runs of C (stride 2) or OW*C (stride 1)
# contiguous numbers instead of single ones, and the matmul's (pixels, O) result is already
# an NHWC array, returned as an NCHW view without a copy. Elementwise ops keep that memory
# order, so the next conv reads it with no transpose.
#
# Blocking and threads: conv_blocks.py.


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


def _im2col_channel_major(x_nhwc, kh, kw, stride, padding):
    """The transposed column matrix (kh*kw*C, N*OH*OW), rows ordered (i, j, c) as
    _weight_matrix's columns, built from the NCHW view of a block: each of the kh*kw*C
    rows is a strided slice of one channel's padded plane, so the copies move runs of OW
    numbers. For few input channels (a first layer), where _im2col's runs of C numbers are
    3 or 1 long."""
    xp = namespace(x_nhwc)
    n, h, w, c = x_nhwc.shape
    oh, ow = conv_output_hw(h, w, kh, kw, stride, padding)
    planes = xp.zeros((c, n, h + 2 * padding, w + 2 * padding), dtype=x_nhwc.dtype)
    planes[:, :, padding:padding + h, padding:padding + w] = xp.permute_dims(x_nhwc, (3, 0, 1, 2))
    span_h, span_w = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    cols = xp.empty((kh, kw, c, n, oh, ow), dtype=x_nhwc.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[i, j, ...] = planes[:, :, i:i + span_h:stride, j:j + span_w:stride]
    return xp.reshape(cols, (kh * kw * c, n * oh * ow))


CONV_FORMS = ("im2col", "taps", "row taps", "channel-major")
FEW_CHANNELS = 8  # below this many input channels a stride-1 layer takes the channel-major form


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
    - "channel-major": im2col whose column matrix is built transposed from the channels'
      planes (`_im2col_channel_major`), for few input channels (C < FEW_CHANNELS) at stride
      1: a first layer, whose im2col copies runs of C = 1 or 3 numbers.

    The thresholds come from bench/ab_taps.py (see BENCHMARKS.md)."""
    kh, kw = kernel_hw
    if stride > 1 and kh % stride == 0 and kw % stride == 0:
        return "taps"
    if stride == 1 and in_channels < FEW_CHANNELS:
        return "channel-major"
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
    run faster than T narrow ones, see BENCHMARKS.md), then the sum over
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
    if form in ("taps", "row taps"):
        tap_w = tap_weights(weight, stride)
        merge = form == "row taps"
        return lambda x_block: _forward_taps(x_block, tap_w, stride, padding, out_hw, merge)
    wm_t = _weight_matrix(weight).T
    if form == "channel-major":
        def by_columns_of_planes(x_block):
            y = xp.matmul(_im2col_channel_major(x_block, kh, kw, stride, padding).T, wm_t)
            return xp.reshape(y, (x_block.shape[0],) + out_hw + (o,))
        return by_columns_of_planes

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


@register("conv2d")
def conv2d(x, weight, bias, stride, padding, form=None):
    """conv2d (NCHW, weight (O, C, kh, kw), zero padding, bias (O,) or None), the kernel.

    Per block of samples, in the form _conv_form picks (im2col by strided slices and one
    matrix product, or a tap form); `form` overrides the choice, for tests."""
    xp = namespace(x, weight)
    o, c, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != c:
        raise ValueError(f"conv2d: input shape {tuple(x.shape)} does not fit weight {tuple(weight.shape)}")
    n, _, h, w = x.shape
    oh, ow = conv_output_hw(h, w, kh, kw, stride, padding)
    form = _conv_form((kh, kw), stride, c, o) if form is None else form
    forward = _forward_of_block(weight, stride, padding, (h, w), form)
    return _nchw(blocked_forward(xp, forward, _nhwc(x), (oh, ow, o), bias, blocks_of(n, oh * ow * kh * kw * c),
                                 relayout=form != "channel-major"))

