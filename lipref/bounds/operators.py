"""Masked operators: an affine layer's linear part with constant rows and columns removed.

The operator of a layer on one sample is A = rows(row_mask) * W * cols(col_mask) (masks
0/1, from bounds/masks.py; None: every row or column). Its plain definition applies the
layer's own map (`interval.affine`, `interval.affine_adjoint`: linear, or conv2d and
conv2d_transpose) between the masks, on the layer's layout. A conv layer's fast mode may
iterate on a kernel's layout instead ("masked_conv_operator": kernels/conv_grid.py, the
padded-grid operator), which has the same nonzero singular values.
"""
from .. import primitives as P
from ..backend import namespace
from ..kernels import pick
from ..layers import Conv2d, Linear
from ..tape import value_of
from . import spectral
from .certificates import masked_dense_norms_upper
from .interval import affine, affine_adjoint
from .lanczos import lanczos_upper_bound


def masked_operator(layer, weight, row_mask, col_mask):
    """apply / apply_adjoint of A = rows(row_mask) * W * cols(col_mask) on the layer's own
    layout, batched over samples, and gram(v) = A^T A v for v already in A^T's range
    (cols * v == v): masks are 0/1, so one product with each mask is enough there."""
    def apply(v):
        v = v if col_mask is None else v * col_mask
        out = value_of(affine(layer, v, weight, None))
        return out if row_mask is None else out * row_mask

    def apply_adjoint(u):
        u = u if row_mask is None else u * row_mask
        out = value_of(affine_adjoint(layer, u, weight))
        return out if col_mask is None else out * col_mask

    def gram(v):
        out = value_of(affine(layer, v, weight, None))
        out = value_of(affine_adjoint(layer, out if row_mask is None else out * row_mask, weight))
        return out if col_mask is None else out * col_mask
    return apply, apply_adjoint, gram


def conv_kernel_operator(layer, weight):
    """The "masked_conv_operator" kernel's operator for this conv layer and weight (values),
    or None: then the plain `masked_operator` runs."""
    if not isinstance(layer, Conv2d):
        return None
    make = pick("masked_conv_operator", weight)
    return None if make is None else make(weight, layer.stride, layer.padding, layer.in_shape[1:])


def masked_power_iteration(layer, weight, row_mask, col_mask, v0, n_iters, grid=None, estimate=True):
    """Fast mode's estimate of ||rows * W * cols||_2 per sample: (sigma (B,), v (B, ...)),
    `spectral.power_iteration` from v0 (the layer's input layout), v for warm starts.
    estimate False: sigma is None, for callers that take the norm at v on the tape.
    Masks: 0/1 arrays shaped like the layer's output / input, or None. grid: a conv
    layer's `conv_kernel_operator` for this weight, if the caller made it already (None:
    asked for here); on it v0 goes to the kernel's layout once and v comes back once."""
    if grid is None:
        grid = conv_kernel_operator(layer, weight)
    if grid is None:
        apply, apply_adjoint, gram = masked_operator(layer, weight, row_mask, col_mask)
        return _iterate(apply, apply_adjoint, v0, n_iters, gram, estimate)
    xp = namespace(weight)
    rows, cols = grid.masks(row_mask, col_mask, v0.shape[0], v0.dtype, xp)
    # a zero start becomes power_iteration's constant unit vector here, on the layer's
    # entries only (on the grid it would spread onto the padding)
    start = grid.to_grid(spectral.safe_start(v0))
    apply, apply_adjoint, gram = grid.operator(rows, cols)
    sigma, v = _iterate(apply, apply_adjoint, start, n_iters, gram, estimate)
    return sigma, grid.from_grid(v)


def _iterate(apply, apply_adjoint, v0, n_iters, gram, estimate):
    """(sigma or None, v) of spectral.power_iteration (no u)."""
    if not estimate:
        return None, spectral.power_iteration_vector(apply, apply_adjoint, v0, n_iters, gram)
    sigma, _, v = spectral.power_iteration(apply, apply_adjoint, v0, n_iters, gram, left=False)
    return sigma, v


def norm_on_tape(layer, weight, v, row_mask, col_mask):
    """||rows * W(cols * v)|| per sample, differentiable in W (v fixed, as in spectral norm
    training: at convergence its gradient is u v^T)."""
    vin = v if col_mask is None else v * col_mask
    out = affine(layer, vin, weight, None)
    if row_mask is not None:
        out = out * row_mask
    flat = P.reshape(out, (v.shape[0], -1))
    return spectral.scaled_l2_norm(flat, 1)


def _no_entry_left(row_mask, col_mask):
    """Per sample, is every row or every column masked out (the operator is exactly 0: its
    norm is 0, not Lanczos' absolute allowance for underflow)?"""
    xp = namespace(row_mask)
    empty = xp.all(xp.reshape(row_mask == 0, (row_mask.shape[0], -1)), axis=1)
    if col_mask is not None:
        empty = empty | xp.all(xp.reshape(col_mask == 0, (col_mask.shape[0], -1)), axis=1)
    return empty


def local_norm(layer, w, row_mask, col_mask, options, v0, global_norm, grid):
    """(masked norm per sample, the vectors to store), never above the global norm: power
    iteration from v0 (fast; on the tape if options.record), or an upper bound (sound:
    exact SVD for dense layers, v0 None; Lanczos from the random v0 for conv layers)."""
    wv = value_of(w)
    xp = namespace(wv)
    if options.mode == "sound":
        if isinstance(layer, Linear):
            return xp.minimum(masked_dense_norms_upper(wv, row_mask, col_mask), global_norm), None
        apply, apply_adjoint, _ = masked_operator(layer, wv, row_mask, col_mask)
        # stops early (upper = +inf) where the bound cannot beat the deterministic global norm
        upper, _, v = lanczos_upper_bound(apply, apply_adjoint, v0, options.n_iters, options.failure_prob,
                                          stop_above=global_norm)
        return xp.where(_no_entry_left(row_mask, col_mask), 0.0, xp.minimum(upper, global_norm)), v
    sigma, v = masked_power_iteration(layer, wv, row_mask, col_mask, v0, options.n_iters, grid, not options.record)
    if options.record:
        sigma = norm_on_tape(layer, w, v, row_mask, col_mask)
    return P.minimum(sigma, global_norm), v
