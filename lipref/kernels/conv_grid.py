"""Kernel: a masked conv layer's power iteration on its padded space-to-depth grid,
registered for "masked_power_iteration".

It replaces the plain `masked_power_iteration` of lipref/bounds/operators.py (power
iteration on conv2d and conv2d_transpose with the masks, on the layer's own layout) for conv
layers on the host; tests/test_kernels_conv_grid.py checks it against the plain one. The
layer's grid (`ConvGrid`: its weight in the grid's layout) is kept per weight array between
calls (`grid_of`), so the blocks of samples of one call, and later calls with the same
weight, share it.

Power iteration applies a masked conv layer and its adjoint dozens of times per call. On the
layer's own layout (N, C, H, W) every application pads its operand, regroups it and crops
the result: copies as large as the products' inputs, paid again at each step. Here the
iterate lives on the grid instead, for the whole iteration:

- The grid of an input is `kernels.conv.space_to_depth_rows`: zero-padded by p and up to a
  multiple of the stride s, each s x s cell one pixel of K = s*s*C channels, (n, gh*gw, K).
  The products treat all samples' pixels as the rows of one (n*gh*gw, K) matrix.
- The kernel, padded with zeros to th x tw cells of s x s (th = ceil(kh/s)), is a set of
  taps (u, v) with weights W_t (K, O) (`kernels.conv.tap_weights`). Output (a, b), a < OH and
  b < OW, is sum_t x[a + u, b + v] @ W_t: on the grid's flattened rows, row r = a*gw + b
  reads row r + shift_t, shift_t = u*gw + v, every tap a row shift of the same grid, and
  a + u < gh, b + v < gw always (the grid is padded far enough). The adjoint is
  g[r] = sum_t y[r - shift_t] @ W_t^T.
- Nothing is padded or cropped per application. Entries that are not the layer's (the
  grid's padding; in the scatter form, output rows with a >= OH or b >= OW, which may read
  the next sample's rows) are zeros of the column and row masks
  (`masks`), so the masked operator on the grid is the layer's masked operator with zero
  rows and columns added: the same nonzero singular values, and iterates that start in the
  masks' range keep zeros there (their norms are the layer-layout norms).

Two forms, both exact (only the order of the sums' rounding differs from conv2d's):

- "gather", for layers whose grid input is no wider than their output (K <= O: a first
  layer, 3x3 stride-1 layers that widen): the forward copies each tap's (OH, OW) window of
  the grid side by side, (n*OH*OW, T*K) -- an im2col whose padding is already in place --
  and makes one product with the taps' weights stacked. Its outputs are compact,
  (n, OH*OW, O). The adjoint makes one product with the taps' weights side by side,
  (n*OH*OW, T*K), and adds each tap's block into the grid at its window.
- "scatter", for layers whose grid input is wider (stride-2 layers, after space-to-depth):
  the forward makes one product of the grid's rows with the taps' weights side by side,
  (n*gh*gw, T*O), and adds each tap's column block shifted by its row shift; its outputs
  stay on the grid's rows, (n, gh*gw, O), rows that are no output holding partial sums that
  the row mask removes. The adjoint copies y's rows shifted by each tap side by side
  (T*O columns) and makes one product with the taps' weights stacked.

Each form copies the narrower side (T*K or T*O numbers per row) and computes no output row
that is not one (gather) or few (scatter: the grid's rows); for what that saves against
the layer-layout masked Gram step, see BENCHMARKS.md.
"""
import threading
import weakref

from array_api_compat import is_numpy_namespace

from ..backend import namespace
from ..shapes import conv_output_hw, nchw, nhwc
from .conv import shifted_columns, shifted_sum, space_to_depth_rows, tap_weights
from .norms import norms_and_range
from .power_iteration import host_power_iteration_vector, safe_start
from .registry import register

GRID_FORMS = ("gather", "scatter")


def _conv_on_host(layer, weight, *rest, **kwargs):
    """A conv layer (a 4-D weight and the layer's stride and padding) on NumPy."""
    return weight.ndim == 4 and hasattr(layer, "stride") and is_numpy_namespace(namespace(weight))


@register("masked_power_iteration", applies=_conv_on_host)
def grid_power_iteration(layer, weight, row_mask, col_mask, v0, n_iters, estimate=True):
    """`operators.masked_power_iteration` (same arguments and result) on the layer's grid:
    v0 goes to the grid once, the iteration runs there, and v comes back once."""
    grid = grid_of(weight, layer.stride, layer.padding, tuple(layer.in_shape[1:]))
    xp = namespace(weight)
    rows, cols = grid.masks(row_mask, col_mask, v0.shape[0], v0.dtype, xp)
    # a zero start becomes the constant unit vector here, on the layer's entries only (on
    # the grid it would spread onto the padding)
    start = grid.to_grid(safe_start(v0))
    apply, apply_adjoint, gram = grid.operator(rows, cols)
    v = host_power_iteration_vector(apply, apply_adjoint, start, n_iters, gram)
    sigma = norms_and_range(apply(v))[0] if estimate else None
    return sigma, grid.from_grid(v)


_GRIDS = {}  # id(weight) -> (a copy of its values, (stride, padding, in_hw), its ConvGrid)
_GRIDS_LOCK = threading.Lock()


def grid_of(weight, stride, padding, in_hw):
    """The ConvGrid of this weight array, made once and kept while the array lives and holds
    the same values (checked against a copy at every call: one pass over a conv kernel, a
    few thousand numbers, so a weight changed in place is never served a stale grid)."""
    xp = namespace(weight)
    key = (stride, padding, in_hw)
    with _GRIDS_LOCK:
        entry = _GRIDS.get(id(weight))
    if entry is not None and entry[1] == key and entry[0].shape == weight.shape and \
            entry[0].dtype == weight.dtype and bool(xp.all(entry[0] == weight)):
        return entry[2]
    grid = ConvGrid(weight, stride, padding, in_hw)
    ident = id(weight)
    with _GRIDS_LOCK:
        _GRIDS[ident] = (xp.asarray(weight, copy=True), key, grid)
    weakref.finalize(weight, _GRIDS.pop, ident, None)
    return grid


def grid_form(in_channels, out_channels, stride):
    """"gather" where the grid's input (s*s*C channels) is no wider than the output, else "scatter"."""
    return "gather" if stride * stride * in_channels <= out_channels else "scatter"


class ConvGrid:
    """conv2d(., weight, stride, padding) on inputs of spatial size in_hw, as a map from the
    input grid to the form's output layout (see the module docstring). form: one of
    GRID_FORMS, None to pick by `grid_form` (tests pass each)."""

    def __init__(self, weight, stride, padding, in_hw, form=None):
        xp = namespace(weight)
        o, c, kh, kw = weight.shape
        s = stride
        self.stride, self.padding, self.in_hw, self.channels = s, padding, tuple(in_hw), (c, o)
        self.out_hw = conv_output_hw(in_hw[0], in_hw[1], kh, kw, s, padding)
        th, tw = -(-kh // s), -(-kw // s)
        if (th * s, tw * s) != (kh, kw):  # zero taps past the kernel make it a multiple of s
            padded = xp.zeros((o, c, th * s, tw * s), dtype=weight.dtype)
            padded[:, :, :kh, :kw] = weight
            weight = padded
        self.gh, self.gw = -(-(in_hw[0] + 2 * padding) // s), -(-(in_hw[1] + 2 * padding) // s)
        self.width = s * s * c
        self.taps = [(u, v) for u in range(th) for v in range(tw)]  # (0, 0) first: shift 0
        self.form = grid_form(c, o, s) if form is None else form
        if self.form not in GRID_FORMS:
            raise ValueError(f"grid form must be one of {GRID_FORMS}, got {self.form!r}")
        tap_w = tap_weights(weight, s)  # (th, tw, K, O)
        per_tap = [tap_w[u, v, ...] for u, v in self.taps]
        transposed = [w.T for w in per_tap]
        # a gathering direction stacks its taps' weights (T*in, out), a scattering one puts
        # them side by side (in, T*out); the adjoint does the opposite of the forward
        if self.form == "gather":
            self.forward_weights, self.adjoint_weights = xp.concat(per_tap, axis=0), xp.concat(transposed, axis=1)
        else:
            self.forward_weights, self.adjoint_weights = xp.concat(per_tap, axis=1), xp.concat(transposed, axis=0)

    # ---------------------------------------------------------------- layouts

    def output_pixels(self):
        """Rows per sample of the output layout: OH*OW (gather) or gh*gw (scatter)."""
        return self.out_hw[0] * self.out_hw[1] if self.form == "gather" else self.gh * self.gw

    def to_grid(self, x):
        """(n, C, H, W) -> the input grid (n, gh*gw, s*s*C), zeros on the padding."""
        xp = namespace(x)
        flat = space_to_depth_rows(nhwc(x), self.stride, self.padding)[0]
        return xp.reshape(flat, (x.shape[0], self.gh * self.gw, self.width))

    def from_grid(self, g):
        """Inverse of to_grid on the layer's entries: (n, gh*gw, s*s*C) -> (n, C, H, W)."""
        xp = namespace(g)
        n = g.shape[0]
        s, p, (c, _), (h, w) = self.stride, self.padding, self.channels, self.in_hw
        cells = xp.permute_dims(xp.reshape(g, (n, self.gh, self.gw, s, s, c)), (0, 1, 3, 2, 4, 5))
        image = xp.reshape(cells, (n, self.gh * s, self.gw * s, c))[:, p:p + h, p:p + w, :]
        return nchw(image)

    def to_outputs(self, y):
        """(n, O, OH, OW) -> the output layout (n, output_pixels(), O); in the scatter form
        zeros on the grid's rows that are no output."""
        xp = namespace(y)
        n, o = y.shape[0], y.shape[1]
        oh, ow = self.out_hw
        if self.form == "gather":
            return xp.reshape(nhwc(y), (n, oh * ow, o))
        grid = xp.zeros((n, self.gh, self.gw, o), dtype=y.dtype)
        grid[:, :oh, :ow, :] = nhwc(y)
        return xp.reshape(grid, (n, self.gh * self.gw, o))

    def masks(self, row_mask, col_mask, n, dtype, xp):
        """(row mask (n, output_pixels(), O), column mask (n, gh*gw, s*s*C)) for the layer's
        0/1 masks (None: every entry of the layer). Beyond the layer's masks they zero
        entries that are not the layer's: the grid's padding, rows that are no output."""
        c, o = self.channels
        if row_mask is None:
            row_mask = xp.ones((n, o) + tuple(self.out_hw), dtype=dtype)
        if col_mask is None:
            col_mask = xp.ones((n, c) + self.in_hw, dtype=dtype)
        return self.to_outputs(row_mask), self.to_grid(col_mask)

    # ---------------------------------------------------------------- the map and its adjoint

    def forward(self, x):
        """Input grid (n, gh*gw, K) -> output layout (n, output_pixels(), O). In the scatter
        form, rows that are no output hold partial sums (finite): the row mask removes them."""
        xp = namespace(x)
        n, oh, ow = x.shape[0], self.out_hw[0], self.out_hw[1]
        if self.form == "scatter":
            return _shifted_sum(_rows_times(x, self.forward_weights), self._shifts(), 1)
        image = xp.reshape(x, (n, self.gh, self.gw, self.width))
        windows = [image[:, u:u + oh, v:v + ow, :] for u, v in self.taps]
        cols = xp.reshape(xp.stack(windows, axis=3), (n, oh * ow, len(self.taps) * self.width))
        return _rows_times(cols, self.forward_weights)

    def adjoint(self, y):
        """Output layout -> input grid. y must be zero on rows that are no output (row-masked)."""
        xp = namespace(y)
        n, oh, ow, k = y.shape[0], self.out_hw[0], self.out_hw[1], self.width
        if self.form == "scatter":
            return _rows_times(_shifted_columns(y, self._shifts(), -1), self.adjoint_weights)
        products = xp.reshape(_rows_times(y, self.adjoint_weights), (n, oh, ow, len(self.taps) * k))
        grid = xp.zeros((n, self.gh, self.gw, k), dtype=y.dtype)
        for t, (u, v) in enumerate(self.taps):
            grid[:, u:u + oh, v:v + ow, :] += products[..., t * k:(t + 1) * k]
        return xp.reshape(grid, (n, self.gh * self.gw, k))

    def operator(self, rows, cols):
        """apply / apply_adjoint / gram of the masked operator on the grid: rows and cols are
        `masks`, which also zero the entries that are not the layer's."""
        def apply(v):
            out = self.forward(v * cols)
            out *= rows  # in place: forward returns a new array
            return out

        def apply_adjoint(u):
            out = self.adjoint(u * rows)
            out *= cols
            return out

        def gram(v):
            out = self.forward(v)
            out *= rows
            out = self.adjoint(out)
            out *= cols
            return out
        return apply, apply_adjoint, gram

    def _shifts(self):
        return [u * self.gw + v for u, v in self.taps]


def _rows_times(x, weights):
    """(n, pixels, a) @ (a, b) as one product of all samples' rows (not n small ones)."""
    xp = namespace(x, weights)
    n, pixels, width = x.shape
    out = xp.matmul(xp.reshape(x, (n * pixels, width)), weights)
    return xp.reshape(out, (n, pixels, weights.shape[1]))


def _shifted_columns(x, shifts, direction):
    """kernels.conv.shifted_columns over the samples' rows taken together: (n, pixels, w) ->
    (n, pixels, T*w)."""
    xp = namespace(x)
    n, pixels, width = x.shape
    wide = shifted_columns(xp.reshape(x, (n * pixels, width)), shifts, direction)
    return xp.reshape(wide, (n, pixels, len(shifts) * width))


def _shifted_sum(products, shifts, direction):
    """kernels.conv.shifted_sum over the samples' rows taken together: (n, pixels, T*w) ->
    (n, pixels, w)."""
    xp = namespace(products)
    n, pixels, total = products.shape
    acc = shifted_sum(xp.reshape(products, (n * pixels, total)), shifts, direction)
    return xp.reshape(acc, (n, pixels, total // len(shifts)))
