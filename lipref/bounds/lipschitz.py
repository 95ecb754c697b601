"""Global and local Lipschitz bounds of the map x -> penultimate activations.

Global: the product over affine layers (all but the last) of each layer's spectral norm,
the norm of the exact operator (conv2d and its adjoint on the layer's input shape).

Local (Huang et al. 2021): walk the network once per batch, keeping for every sample the
interval [lower, upper] of the current activations over the eps-ball and a radius r with
||h(x') - h(x)|| <= r for every x' in the ball. At each affine layer the pre-activation
bounds are the interval bounds intersected with the ball bounds; the next activation's
masks say which neurons are constant on the ball; the layer's local norm is the spectral
norm of W with constant rows (outputs) and constant columns (inputs) removed; r grows by
that norm. The product of the local norms is the local Lipschitz bound, never above the
global one (each masked operator is a restriction of the full one, and we take the minimum).

Modes (see docs/soundness.md): "fast" estimates norms by power iteration (under-estimates,
what the paper's code does); "sound" uses upper bounds everywhere a certificate depends
on them, including the radii that decide the masks, and needs float64.
"""
from dataclasses import dataclass, field

from .. import primitives as P
from ..backend import map_in_threads, namespace, sample_blocks
from ..errors import BoundsOverflowError, InputError
from ..layers import ClampedMaxMin, ClippedReLU, Conv2d, Flatten, Linear, ReLU
from ..tape import Var, value_of
from . import spectral
from .conv_grid import ConvGrid
from .interval import (activation_interval, affine, affine_adjoint, affine_interval, ball_interval, intersect,
                       row_norms, uniform_box_interval, weight_forms)
from .masks import activation_masks, constant_fraction

MODES = ("fast", "sound")
BOUNDS = ("global", "local")


@dataclass
class ActivationBounds:
    """What the walk learnt at one activation layer (per sample)."""
    layer_index: int
    layer: object
    params: dict
    lower: object  # pre-activation bounds over the ball (Var when recording)
    upper: object
    row_mask: object  # arrays, 1 = can change
    output_mask: object
    constant_fraction: object  # (N,)


@dataclass
class NetworkBounds:
    logits: object  # (N, K) at x
    penultimate: object  # (N, D) activations entering the last layer
    lower: object  # (N, D) box of the penultimate activations over the ball
    upper: object
    lipschitz: object  # (N,) the bound used (local or global) for x -> penultimate
    radius: object  # (N,) eps * lipschitz
    global_lipschitz: object  # scalar
    local_norms: list = field(default_factory=list)  # per affine layer (N,) arrays
    global_norms: list = field(default_factory=list)  # per affine layer, scalars
    activations: list = field(default_factory=list)
    forward_error: object = None  # sound mode: (N, D) bound on |penultimate - exact penultimate|
    local_vectors: dict = field(default_factory=dict)
    global_vectors: dict = field(default_factory=dict)


def _params(layer, record):
    return layer.params if record else {k: v.value for k, v in layer.params.items()}


def _check_model(model):
    for layer in model.layers:
        if not isinstance(layer, (Linear, Conv2d, ReLU, ClippedReLU, ClampedMaxMin, Flatten)):
            raise TypeError(f"no Lipschitz bound for layer type {type(layer).__name__}; "
                            "unknown layers are an error, never 'norm 1'")


def _random_start(rng, shape, xp, dtype):
    if rng is None:
        raise ValueError("power iteration needs start vectors: pass rng (a numpy Generator) or stored vectors")
    return xp.asarray(rng.standard_normal(shape), dtype=dtype)


def _fits(vectors, key, shape):
    """Is there a stored vector under key, of this shape?"""
    v = vectors.get(key)
    return v is not None and tuple(v.shape) == tuple(shape)


def _start(vectors, key, shape, rng, xp, dtype):
    if _fits(vectors, key, shape):
        return vectors[key]
    return _random_start(rng, shape, xp, dtype)


def _operator(layer, weight, row_mask, col_mask):
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


def _grid_operator(grid, rows, cols):
    """apply / apply_adjoint / gram of the masked conv operator on its grid (conv_grid):
    rows and cols are the grid's masks (ConvGrid.masks), which also zero the entries that
    are not the layer's."""
    def apply(v):
        out = grid.forward(v * cols)
        out *= rows  # in place: forward returns a new array
        return out

    def apply_adjoint(u):
        out = grid.adjoint(u * rows)
        out *= cols
        return out

    def gram(v):
        out = grid.forward(v)
        out *= rows
        out = grid.adjoint(out)
        out *= cols
        return out
    return apply, apply_adjoint, gram


def masked_power_iteration(layer, weight, row_mask, col_mask, v0, n_iters, grid=None, estimate=True):
    """Fast mode's estimate of ||rows * W * cols||_2 per sample: (sigma (B,), v (B, ...)),
    `spectral.power_iteration` from v0 (the layer's input layout), v for warm starts.
    estimate False: sigma is None, for callers that take the norm at v on the tape.
    Masks: 0/1 arrays shaped like the layer's output / input, or None. Conv layers iterate
    on their padded space-to-depth grid (conv_grid: no padding, regrouping or cropping per
    step); v0 goes there once and v comes back once. grid: the layer's ConvGrid for this
    weight, if the caller made it already (None: made here)."""
    if not isinstance(layer, Conv2d):
        apply, apply_adjoint, gram = _operator(layer, weight, row_mask, col_mask)
        return _iterate(apply, apply_adjoint, v0, n_iters, gram, estimate)
    xp = namespace(weight)
    n = v0.shape[0]
    if grid is None:
        grid = ConvGrid(weight, layer.stride, layer.padding, layer.in_shape[1:])
    rows, cols = grid.masks(row_mask, col_mask, n, v0.dtype, xp)
    # a zero start becomes power_iteration's constant unit vector here, on the layer's
    # entries only (on the grid it would spread onto the padding)
    start = grid.to_grid(spectral.safe_start(v0))
    apply, apply_adjoint, gram = _grid_operator(grid, rows, cols)
    sigma, v = _iterate(apply, apply_adjoint, start, n_iters, gram, estimate)
    return sigma, grid.from_grid(v)


def _iterate(apply, apply_adjoint, v0, n_iters, gram, estimate):
    """(sigma or None, v) of spectral.power_iteration (no u)."""
    if not estimate:
        return None, spectral.power_iteration_vector(apply, apply_adjoint, v0, n_iters, gram)
    sigma, _, v = spectral.power_iteration(apply, apply_adjoint, v0, n_iters, gram, left=False)
    return sigma, v


def _norm_on_tape(layer, weight, v, row_mask, col_mask):
    """||rows * W(cols * v)|| per sample, differentiable in W (v fixed, as in spectral norm
    training: at convergence its gradient is u v^T)."""
    vin = v if col_mask is None else v * col_mask
    out = affine(layer, vin, weight, None)
    if row_mask is not None:
        out = out * row_mask
    flat = P.reshape(out, (v.shape[0], -1))
    return P.l2_norm(flat, 1, False)


def _dense_masked_matrices(weight, row_mask, col_mask):
    rows = weight[None, :, :] * row_mask[:, :, None]
    return rows if col_mask is None else rows * col_mask[:, None, :]


def sound_global_norms(model, rng, max_dense=8192):
    """Per affine layer except the last, a deterministic upper bound on its spectral norm
    (0-d arrays; float64 models): dense layers by exact SVD with a rounding margin; conv
    layers by the dense-Gram Cholesky certificate where the layer's smaller side has at
    most max_dense entries (nearly exact), else by the polyphase circulant bound
    (docs/soundness.md). Computing them is the slow part of a sound run's set-up (about
    half a minute for 4c3f), so callers that bound many batches compute them once and
    pass them to `network_bounds` as `sound_norms`. rng only steers how tight the
    certificate is (its Lanczos estimate), never whether it holds."""
    _check_model(model)
    norms = []
    for layer in model.layers[:-1]:
        if not layer.is_affine:
            continue
        wv = layer.params["weight"].value
        if isinstance(layer, Linear):
            norms.append(spectral.dense_spectral_norm_upper(wv[None, :, :])[0])
        else:
            norms.append(spectral.conv_spectral_norm_certified(wv, layer.in_shape[1:], layer.stride, layer.padding,
                                                               rng, max_dense))
    return norms


def global_norms(model, mode, n_iters, rng, vectors, record, sound_norms=None):
    """Per affine layer except the last: the spectral norm of the full operator (scalar).
    Fast mode: power iteration (warm-started from `vectors`), the norms put on the tape
    afterwards if `record`. Sound mode: `sound_norms` if given, else
    `sound_global_norms(model, rng)`."""
    if mode == "sound":
        return (sound_global_norms(model, rng) if sound_norms is None else list(sound_norms)), dict(vectors)
    starts = _global_starts(model, rng, vectors)
    layers = list(starts)  # the affine layers but the last, in order

    def iterate(i):
        layer = model.layers[i]
        return masked_power_iteration(layer, layer.params["weight"].value, None, None, starts[i], n_iters, None,
                                      not record)
    # in one thread with a one-thread BLAS (map_in_threads' limit): with the whole BLAS,
    # its threads, once woken by the large layers' products, spin for a while afterwards
    # on the cores that the bounds' blocks need next (4c3f's local bound: 0.87 -> 0.82 s
    # at 5 iterations); iterating the layers in two threads was slower still (a batch of
    # one is small operations, serialised by the interpreter lock)
    results = map_in_threads(namespace(starts[layers[0]]), iterate, layers, 1) if layers else []
    norms, new_vectors = [], dict(vectors)
    for i, (sigma, v) in zip(layers, results):
        new_vectors[i] = v
        layer = model.layers[i]
        norms.append(P.reshape(_norm_on_tape(layer, layer.params["weight"], v, None, None), ()) if record else sigma[0])
    return norms, new_vectors


def _local_norm(layer, w, row_mask, col_mask, mode, n_iters, v0, record, global_norm, failure_prob, grid):
    """(masked norm per sample, the vectors to store): power iteration from v0 (fast), or
    an upper bound (sound: exact SVD for dense layers, v0 None; Lanczos from the random v0
    for conv layers), never above the global norm."""
    wv = value_of(w)
    xp = namespace(wv)
    if mode == "sound":
        if isinstance(layer, Linear):
            return xp.minimum(_chunked_dense_upper(wv, row_mask, col_mask), global_norm), None
        apply, apply_adjoint, _ = _operator(layer, wv, row_mask, col_mask)
        # stops early (upper = +inf) where the bound cannot beat the deterministic global norm
        upper, _, v = spectral.lanczos_upper_bound(apply, apply_adjoint, v0, n_iters, failure_prob,
                                                   stop_above=global_norm)
        return xp.minimum(upper, global_norm), v
    sigma, v = masked_power_iteration(layer, wv, row_mask, col_mask, v0, n_iters, grid, not record)
    if record:
        sigma = _norm_on_tape(layer, w, v, row_mask, col_mask)
    return P.minimum(sigma, global_norm), v


def _chunked_dense_upper(weight, row_mask, col_mask, chunk=32):
    xp = namespace(weight)
    parts = []
    n = row_mask.shape[0]
    for s in range(0, n, chunk):
        e = min(s + chunk, n)  # the array API leaves out-of-range slice stops unspecified
        m = _dense_masked_matrices(weight, row_mask[s:e, ...], None if col_mask is None else col_mask[s:e, ...])
        parts.append(spectral.dense_spectral_norm_upper(m))
    return xp.concat(parts, axis=0)


def _rounding_slack(layer, params, lower, upper, xp):
    """A bound on the floating-point error of the affine layer's interval computation
    (sound mode): gamma_n * (|W| (|mid| + rad) + |b|), n the fan-in, gamma_n = (n+2) u / (1-(n+2) u)."""
    wv = value_of(params["weight"])
    fan_in = 1
    for d in wv.shape[1:]:
        fan_in *= d
    unit = 2.0 ** -53 if wv.dtype == xp.float64 else 2.0 ** -24
    gamma = (fan_in + 4) * unit / (1 - (fan_in + 4) * unit)
    lo, up = value_of(lower), value_of(upper)
    mag = xp.maximum(xp.abs(lo), xp.abs(up))
    absw = xp.abs(wv)
    total = value_of(affine(layer, mag, absw, xp.abs(value_of(params["bias"]))))
    return 2 * gamma * total


def _forward_error(layer, params, error_in, slack, xp):
    """Sound mode: a bound on |z - exact z| per output of an affine layer, where z = fl(W h +
    b) and h is within error_in of the exact h: |W| error_in (doubled for its own rounding)
    plus the interval slack, which bounds the rounding of W h + b (|h| is within the box)."""
    wv = value_of(params["weight"])
    propagated = value_of(affine(layer, error_in, xp.abs(wv), None))
    return 2 * propagated + slack


def _activation_error(layer, error_in, xp):
    """|act(z) - act(exact z)| <= error per coordinate: ReLU and clipped ReLU are
    1-Lipschitz per coordinate; MaxMin's outputs of a pair move by at most the pair's larger
    error."""
    if isinstance(layer, ClampedMaxMin):
        half = error_in.shape[1] // 2
        pair = xp.maximum(error_in[:, :half, ...], error_in[:, half:, ...])
        return xp.concat([pair, pair], axis=1)
    return error_in


def network_bounds(model, x, eps, bound="local", mode="fast", n_iters=5, rng=None, local_vectors=None,
                   global_vectors=None, record=False, failure_prob=1e-9, sound_norms=None, threads=None,
                   sample_block=None, global_iters=None):
    """Logits at x and Lipschitz bounds of x -> penultimate over the l2 ball of radius eps.

    bound: "local" (masks and masked norms) or "global" (product of full norms; the box
    bounds still use the global radius). mode: "fast" or "sound" (see module docstring).
    n_iters: power-iteration steps per call (fast; warm-started from local_vectors /
    global_vectors when their shapes fit) or Lanczos steps (sound, conv layers).
    failure_prob: sound mode's probability that one masked conv norm bound fails.
    record: build the tape so that every output is differentiable in the parameters.
    sound_norms: sound mode's global norms from `sound_global_norms` (computed here when
    None; pass them when bounding many batches of one model).
    threads, sample_block: every sample's bounds depend on that sample alone, so without
    `record` the batch is bounded in blocks of at most `sample_block` samples, run in
    `threads` threads (backend.sample_blocks / map_in_threads; None: the backend's
    defaults, which on a GPU keep the batch whole). The global norms and every random start
    vector are computed first, in the calling thread, in the order a single pass would
    draw them, so the result does not depend on `threads` at all, nor on `sample_block`
    beyond rounding. With `record`, or an x on the tape, the tape is built in one piece, in
    the calling thread.
    global_iters: fast mode's power-iteration steps for the global norms (None: n_iters). A
    caller that bounds one batch in blocks (training) runs the global iteration once
    (`global_norms`) and passes its vectors to every block with global_iters=0: the blocks
    then only put the norms on the tape, instead of each repeating the same iteration.
    """
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (0 <= eps < float("inf")):
        raise InputError(f"eps must be finite and >= 0, got {eps}")
    _check_model(model)
    xv = value_of(x)
    xp = namespace(xv)
    if mode == "sound" and xv.dtype != xp.float64:
        raise InputError("sound mode needs float64 inputs and parameters")
    if tuple(xv.shape[1:]) != model.input_shape:
        raise InputError(f"input shape {tuple(xv.shape[1:])} does not fit the model's {model.input_shape}")
    n = xv.shape[0]
    if mode == "sound" and record:
        raise ValueError("sound mode gives bounds, not gradients: record must be False")
    if (threads is not None and threads < 1) or (sample_block is not None and sample_block < 1):
        raise ValueError(f"threads and sample_block must be >= 1, got {threads} and {sample_block}")
    if global_iters is not None and global_iters < 0:
        raise ValueError(f"global_iters must be >= 0, got {global_iters}")
    if global_iters == 0 and mode == "fast":  # the norms would come from random vectors
        unfit = [i for i, layer in enumerate(model.layers[:-1])
                 if layer.is_affine and not _fits(global_vectors or {}, i, (1,) + layer.in_shape)]
        if unfit:
            raise ValueError(f"global_iters=0 takes the global norms from given global_vectors (those of a "
                             f"finished global power iteration); none of shape (1, *input shape) for layers {unfit}")
    gnorms, gvectors = global_norms(model, mode, n_iters if global_iters is None else global_iters, rng,
                                    global_vectors or {}, record, sound_norms)
    starts = _local_starts(model, bound, mode, n, rng, dict(local_vectors or {}), xp, xv.dtype)
    if record or isinstance(x, Var):  # a tape (of the parameters, or of x) is built in one piece
        result = _walk(model, x, eps, bound, mode, n_iters, starts, gnorms, record, failure_prob, None)
    else:
        prepared = _prepare_layers(model)  # once for all blocks

        def walk_block(s):
            return _walk(model, x[s, ...], eps, bound, mode, n_iters, {k: v[s, ...] for k, v in starts.items()},
                         gnorms, record, failure_prob, prepared)
        parts = map_in_threads(xp, walk_block, sample_blocks(xp, n, sample_block), threads)
        result = parts[0] if len(parts) == 1 else _concat_blocks(parts, xp, threads)
    _check_finite(result, eps, xv.dtype)
    glob = xp.ones((), dtype=xv.dtype)
    for g in gnorms:
        glob = P.multiply(glob, g)
    result.global_lipschitz = glob
    result.global_norms = [value_of(g) for g in gnorms]
    result.global_vectors = gvectors
    # the given vectors of layers that kept none (the global bound, sound mode's dense layers) carry over
    result.local_vectors = {**dict(local_vectors or {}), **result.local_vectors}
    return result


def _check_finite(result, eps, dtype):
    """Refuse bounds that overflowed (inf, or inf - inf = NaN): an eps too large for the
    dtype. A certificate or a local bound built on them would be meaningless."""
    arrays = [("the penultimate box", result.lower), ("the penultimate box", result.upper),
              ("the Lipschitz bound", result.lipschitz), ("the logits", result.logits)]
    arrays += [(f"layer {a.layer_index}'s pre-activation bounds", b) for a in result.activations
               for b in (a.lower, a.upper)]
    for what, a in arrays:
        a = value_of(a)
        if not bool(namespace(a).all(namespace(a).isfinite(a))):
            raise BoundsOverflowError(f"eps {eps:g} makes {what} overflow in {dtype} (inf or NaN); "
                                      "use a smaller eps or float64")


def start_vectors(model, n, bound, rng, local_vectors=None, global_vectors=None):
    """The start vectors a fast-mode network_bounds call on n samples would use, drawn from
    rng now, in the order that call draws them: ({layer index: (1, ...)} for the global
    norms, {layer index: (n, ...)} for the local ones), given vectors kept where their shape
    fits. A caller that splits one batch into blocks itself (data-parallel training) draws
    them once and passes each block its slice, with rng None, so no block draws anything."""
    first = next(iter(model.parameters().values())).value
    glob = _global_starts(model, rng, dict(global_vectors or {}))
    return glob, _local_starts(model, bound, "fast", n, rng, dict(local_vectors or {}), namespace(first), first.dtype)


def _global_starts(model, rng, vectors):
    """The global power iteration's start vectors, {affine layer index: (1, ...)}, in layer
    order: the stored vector where its shape fits, else a Gaussian draw from rng."""
    starts = {}
    for i, layer in enumerate(model.layers[:-1]):
        if layer.is_affine:
            wv = layer.params["weight"].value
            starts[i] = _start(vectors, i, (1,) + layer.in_shape, rng, namespace(wv), wv.dtype)
    return starts


def _local_starts(model, bound, mode, n, rng, vectors, xp, dtype):
    """Each masked norm's start vectors, {affine layer index: (n, ...)}, in layer order: fast
    mode's stored vectors where their shape fits, else a Gaussian draw from rng; sound
    mode's conv layers always a fresh draw (the Kuczynski-Wozniakowski bound needs a random
    start); none for the global bound or sound mode's dense layers (exact SVD)."""
    starts = {}
    if bound != "local":
        return starts
    for i, layer in enumerate(model.layers[:-1]):
        if not layer.is_affine:
            continue
        shape = (n,) + layer.in_shape
        if mode == "sound":
            if not isinstance(layer, Linear):
                starts[i] = _random_start(rng, shape, xp, dtype)
        else:
            starts[i] = _start(vectors, i, shape, rng, xp, dtype)
    return starts


def _concat_blocks(parts, xp, threads):
    """One NetworkBounds from those of consecutive blocks of samples (the global fields are
    set by the caller). The per-sample arrays of 4c3f at batch 256 are about 250 MB: the
    fields are merged in `threads` threads, and a mask that is both an activation's row
    and output mask (ReLU, clipped ReLU) is merged once."""
    first = parts[0]
    fields = [[getattr(p, name) for p in parts]
              for name in ("logits", "penultimate", "lower", "upper", "lipschitz", "radius")]
    fields += [[p.local_norms[j] for p in parts] for j in range(len(first.local_norms))]
    shared_masks = []
    for j, a in enumerate(first.activations):
        blocks = [p.activations[j] for p in parts]
        shared_masks.append(all(b.row_mask is b.output_mask for b in blocks))
        fields += [[getattr(b, name) for b in blocks] for name in ("lower", "upper", "output_mask", "constant_fraction")]
        if not shared_masks[-1]:
            fields.append([b.row_mask for b in blocks])
    keys = list(first.local_vectors)
    fields += [[p.local_vectors[k] for p in parts] for k in keys]
    if first.forward_error is not None:
        fields.append([p.forward_error for p in parts])
    merged = iter(map_in_threads(xp, _stack_blocks, fields, threads))
    result = NetworkBounds(*(next(merged) for _ in range(6)), None)
    result.local_norms = [next(merged) for _ in first.local_norms]
    for a, shared in zip(first.activations, shared_masks):
        lower, upper, outputs, fraction = next(merged), next(merged), next(merged), next(merged)
        rows = outputs if shared else next(merged)
        result.activations.append(ActivationBounds(a.layer_index, a.layer, a.params, lower, upper, rows, outputs,
                                                   fraction))
    result.local_vectors = {k: next(merged) for k in keys}
    if first.forward_error is not None:
        result.forward_error = next(merged)
    return result


def _stack_blocks(arrays):
    """The blocks' arrays one after another along the sample axis. (NumPy's concatenate
    keeps the parts' memory order -- channels-last behind the NCHW views -- and runs without
    the GIL; a new C-ordered array filled by slices took twice as long.)"""
    return namespace(arrays[0]).concat(arrays, axis=0)


def _prepare_layers(model):
    """What every block of one call shares, per affine layer index: (its `weight_forms`,
    its ConvGrid for masked power iteration, None for a dense layer), from the values."""
    prepared = {}
    for i, layer in enumerate(model.layers[:-1]):
        if layer.is_affine:
            params = _params(layer, False)
            grid = (ConvGrid(params["weight"], layer.stride, layer.padding, layer.in_shape[1:])
                    if isinstance(layer, Conv2d) else None)
            prepared[i] = (weight_forms(params), grid)
    return prepared


def _walk(model, x, eps, bound, mode, n_iters, starts, gnorms, record, failure_prob, prepared):
    """network_bounds for one block of samples, given the global norms, the start vectors
    and `_prepare_layers` (None: the weight forms are computed here, on the tape if
    recording)."""
    xv = value_of(x)
    xp = namespace(xv)
    n = xv.shape[0]
    vectors = {}
    h = x
    lower, upper = P.subtract(x, float(eps)), P.add(x, float(eps))
    lipschitz = xp.ones((n,), dtype=xv.dtype)
    radius = xp.full((n,), float(eps), dtype=xv.dtype)
    in_mask = None  # the current activations' mask, 1 = can move; None: all can
    box_radius = float(eps)  # the box is h +- box_radius on every coordinate; None once not
    # sound mode: a bound on |h - exact h| per coordinate (x itself is exact, as given)
    forward_error = xp.zeros_like(xv) if mode == "sound" else None
    result = NetworkBounds(None, None, None, None, None, None, None)
    pending = None  # (index, layer, params, input mask, ConvGrid or None) of an affine layer awaiting its row mask
    affine_count = 0

    def flush(row_mask):
        nonlocal lipschitz, radius, affine_count
        idx, layer, params, col_mask, grid = pending
        gnorm = gnorms[affine_count]
        affine_count += 1
        if bound == "local":
            rows = row_mask if row_mask is not None else xp.ones((n,) + layer.out_shape, dtype=xv.dtype)
            sigma, v = _local_norm(layer, params["weight"], rows, col_mask, mode, n_iters, starts.get(idx),
                                   record, gnorm, failure_prob, grid)
            if v is not None:
                vectors[idx] = v
        else:
            sigma = P.multiply(gnorm, xp.ones((n,), dtype=xv.dtype))
        result.local_norms.append(value_of(sigma))
        lipschitz = P.multiply(lipschitz, sigma)
        radius = P.multiply(lipschitz, float(eps))

    for i, layer in enumerate(model.layers[:-1]):
        params = _params(layer, record)
        if layer.is_affine:
            if pending is not None:
                flush(None)
            z = affine(layer, h, params["weight"], params["bias"])
            if mode == "sound":  # computed from this layer's input box, before the update
                slack = _rounding_slack(layer, params, lower, upper, xp)
                forward_error = _forward_error(layer, params, forward_error, slack, xp)
            w_forms, grid = (weight_forms(params), None) if prepared is None else prepared[i]
            norms = row_norms(layer, w_forms, in_mask)
            if box_radius is not None:
                lower, upper = uniform_box_interval(layer, w_forms, z, box_radius, radius, norms)
            else:
                lo_i, up_i = affine_interval(layer, w_forms, params["bias"], lower, upper)
                lo_b, up_b = ball_interval(z, radius, norms)
                lower, upper = intersect(lo_i, up_i, lo_b, up_b)
            if mode == "sound":  # the interval's rounding, and the centre's distance from the exact z
                lower, upper = P.subtract(lower, forward_error), P.add(upper, forward_error)
            h = z
            pending = (i, layer, params, in_mask, grid)
            # every output of an affine layer can move; only an activation makes some constant
            in_mask, box_radius = None, None
        elif layer.is_activation:
            row_mask, out_mask = activation_masks(layer, {k: value_of(v) for k, v in params.items()},
                                                  value_of(lower), value_of(upper))
            if pending is not None:
                flush(row_mask)
                pending = None
            result.activations.append(ActivationBounds(i, layer, params, lower, upper, row_mask, out_mask,
                                                       constant_fraction(out_mask)))
            lower, upper = activation_interval(layer, params, lower, upper)
            h = layer(h, params)
            r = P.reshape(radius, (n,) + (1,) * (len(layer.out_shape)))
            if mode == "sound":  # the exact h lies within forward_error of the computed one
                forward_error = _activation_error(layer, forward_error, xp)
                r = P.add(r, forward_error)
            lower, upper = intersect(lower, upper, P.subtract(h, r), P.add(h, r))
            in_mask, box_radius = out_mask, None
        elif isinstance(layer, Flatten):
            if pending is not None:
                flush(None)
                pending = None
            shape = (n,) + layer.out_shape
            h, lower, upper = P.reshape(h, shape), P.reshape(lower, shape), P.reshape(upper, shape)
            in_mask = None if in_mask is None else xp.reshape(in_mask, shape)
            forward_error = None if forward_error is None else xp.reshape(forward_error, shape)
    if pending is not None:
        flush(None)
    last = model.layers[-1]
    params = _params(last, record)
    result.logits = P.linear(h, params["weight"], params["bias"])
    result.penultimate, result.lower, result.upper = h, lower, upper
    result.forward_error = forward_error
    result.lipschitz, result.radius = lipschitz, radius
    result.local_vectors = vectors
    return result
