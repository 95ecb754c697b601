"""Each affine layer's spectral norm: global (the full operator, once per run) and local (the
operator with a sample's constant rows and columns removed), estimated or bounded above.

The operator of a layer on one sample is A = rows(row_mask) * W * cols(col_mask) (masks 0/1
from the activation rules, rules.py; None: every row or column), applied with the layer's
own map and adjoint (`layer.affine`, `layer.affine_adjoint`) between the masks. Fast mode
estimates norms by power iteration (spectral.py; from below); sound mode bounds them above:
dense layers by SVD with a rounding margin (rounding.dense_spectral_norm_upper), conv layers
by Lanczos with the Kuczynski-Wozniakowski bound (lanczos.py), both capped by the certified
global norm (`sound_global_norms`; conv layers' certificates in certificates.py).
"""
from dataclasses import dataclass, field

from .. import primitives as P
from ..backend import map_in_threads, namespace
from ..kernels.registry import replaceable
from ..layers import Linear
from ..tape import value_of
from . import spectral
from .certificates import GRAM_LIMIT, conv_spectral_norm_certified
from .lanczos import lanczos_upper_bound
from .rounding import dense_spectral_norm_upper


@dataclass(frozen=True)
class GlobalNorms:
    """The global norms of a run, computed once and shared by every batch, block and shard:
    per affine layer but the last, in layer order, the norm of the full operator (0-d arrays;
    fast mode: power-iteration estimates, with the unit vectors they were taken at, by layer
    index, so that training can put ||W v|| on its tape; sound mode: certified upper bounds)."""
    norms: tuple
    vectors: dict = field(default_factory=dict)

    def for_walk(self, model, record):
        """The norms as the walk uses them: on the tape, differentiable in the weights, when
        recording in fast mode (||W v|| at the stored v); else the values."""
        if not (record and self.vectors):
            return list(self.norms)
        return [P.reshape(norm_on_tape(model.layers[i], _weight(model.layers[i], True), v, None, None), ())
                for i, v in self.vectors.items()]


def global_norms(model, mode="fast", n_iters=5, rng=None, vectors=None, gram_limit=GRAM_LIMIT):
    """GlobalNorms of `model`. Fast mode: n_iters power-iteration steps per layer, warm-started
    from `vectors` where their shapes fit, else from Gaussian starts drawn from rng (in layer
    order); the norms are then taken at the vectors kept, as a power iteration of 0 steps
    from them takes them (the vector normalised, then ||W v||), so that the vectors alone give
    the same norms again, bit for bit (a shard, a warm start). Sound mode:
    `sound_global_norms` (rng only steers how tight they are)."""
    if mode == "sound":
        return GlobalNorms(tuple(sound_global_norms(model, rng, gram_limit)))
    starts = global_starts(model, rng, dict(vectors or {}))
    layers = list(starts)  # the affine layers but the last, in order

    def iterate(i):
        layer, weight = model.layers[i], _weight(model.layers[i], False)
        _, v = masked_power_iteration(layer, weight, None, None, starts[i], n_iters, False)
        return masked_power_iteration(layer, weight, None, None, v, 0)
    # in one thread with a one-thread BLAS (map_in_threads' limit): with the whole BLAS, its
    # threads spin afterwards on the cores the bounds' blocks need next (see BENCHMARKS.md)
    results = map_in_threads(namespace(starts[layers[0]]), iterate, layers, 1) if layers else []
    return GlobalNorms(tuple(sigma[0] for sigma, _ in results), {i: v for i, (_, v) in zip(layers, results)})


def local_norm(layer, weight, row_mask, col_mask, options, v0, global_norm):
    """(masked norm per sample, the vectors to store), never above the global norm: power
    iteration from v0 (fast; on the tape if options.record), or an upper bound (sound:
    SVD for dense layers, v0 None; Lanczos from the random v0 for conv layers)."""
    wv = value_of(weight)
    xp = namespace(wv)
    if options.mode == "sound":
        if isinstance(layer, Linear):
            return xp.minimum(masked_dense_norms_upper(wv, row_mask, col_mask), global_norm), None
        apply, apply_adjoint, _ = masked_operator(layer, wv, row_mask, col_mask)
        # stops early (upper = +inf) where the bound cannot beat the deterministic global norm
        upper, _, v = lanczos_upper_bound(apply, apply_adjoint, v0, options.n_iters, options.failure_prob,
                                          stop_above=global_norm)
        return xp.where(_no_entry_left(row_mask, col_mask), 0.0, xp.minimum(upper, global_norm)), v
    sigma, v = masked_power_iteration(layer, wv, row_mask, col_mask, v0, options.n_iters, not options.record)
    if options.record:
        sigma = norm_on_tape(layer, weight, v, row_mask, col_mask)
    return P.minimum(sigma, global_norm), v


def masked_operator(layer, weight, row_mask, col_mask):
    """apply / apply_adjoint of A = rows(row_mask) * W * cols(col_mask) on the layer's own
    layout, batched over samples, and gram(v) = A^T A v for v already in A^T's range
    (cols * v == v): masks are 0/1, so one product with each mask is enough there."""
    def apply(v):
        v = v if col_mask is None else v * col_mask
        out = value_of(layer.affine(v, weight, None))
        return out if row_mask is None else out * row_mask

    def apply_adjoint(u):
        u = u if row_mask is None else u * row_mask
        out = value_of(layer.affine_adjoint(u, weight))
        return out if col_mask is None else out * col_mask

    def gram(v):
        out = value_of(layer.affine(v, weight, None))
        out = value_of(layer.affine_adjoint(out if row_mask is None else out * row_mask, weight))
        return out if col_mask is None else out * col_mask
    return apply, apply_adjoint, gram


def masked_dense_norms_upper(weight, row_mask, col_mask, chunk=32):
    """`dense_spectral_norm_upper` of rows(row_mask) * W * cols(col_mask) per sample (N,),
    materialised `chunk` samples at a time."""
    xp = namespace(weight)
    parts = []
    n = row_mask.shape[0]
    for s in range(0, n, chunk):
        e = min(s + chunk, n)  # the array API leaves out-of-range slice stops unspecified
        rows = weight[None, :, :] * row_mask[s:e, ...][:, :, None]
        masked = rows if col_mask is None else rows * col_mask[s:e, ...][:, None, :]
        parts.append(dense_spectral_norm_upper(masked))
    return xp.concat(parts, axis=0)


@replaceable("masked_power_iteration")
def masked_power_iteration(layer, weight, row_mask, col_mask, v0, n_iters, estimate=True):
    """Fast mode's estimate of ||rows * W * cols||_2 per sample: (sigma (B,), v (B, ...)),
    power iteration on `masked_operator` from v0 (the layer's input layout), v for warm
    starts. estimate False: sigma is None, for callers that take the norm at v on the tape.
    Masks: 0/1 arrays shaped like the layer's output / input, or None."""
    apply, apply_adjoint, gram = masked_operator(layer, weight, row_mask, col_mask)
    v = spectral.power_iteration_vector(apply, apply_adjoint, v0, n_iters, gram)
    return (spectral.norms(apply(v)) if estimate else None), v


def norm_on_tape(layer, weight, v, row_mask, col_mask):
    """||rows * W(cols * v)|| per sample, differentiable in W (v fixed, as in spectral norm
    training: at convergence its gradient is u v^T)."""
    vin = v if col_mask is None else v * col_mask
    out = layer.affine(vin, weight, None)
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


def _weight(layer, record):
    """The affine layer's weight: a tape Var when recording (trainable layers), else its value."""
    weight, _ = layer.linear_part(layer.params)
    return weight if record else value_of(weight)


def sound_global_norms(model, rng, max_dense=GRAM_LIMIT):
    """Per affine layer except the last, a deterministic upper bound on its spectral norm
    (0-d arrays; float64 models): dense layers by exact SVD with a rounding margin; conv
    layers by the dense-Gram Cholesky certificate where the layer's smaller side has at
    most max_dense entries (nearly exact), else by the polyphase circulant bound
    (docs/soundness.md). Computing them is the slow part of a sound run's set-up (see
    BENCHMARKS.md), so a run computes them once (`global_norms`: its GlobalNorms)
    and every batch and shard uses them. rng only steers how tight the certificate is (its
    Lanczos estimate), never whether it holds."""
    found = []
    for layer in model.layers[:-1]:
        if not layer.is_affine:
            continue
        wv = value_of(layer.linear_part(layer.params)[0])
        if isinstance(layer, Linear):
            found.append(dense_spectral_norm_upper(wv[None, :, :])[0])
        else:
            found.append(conv_spectral_norm_certified(wv, layer.in_shape[1:], layer.stride, layer.padding,
                                                      rng, max_dense))
    return found


# ---------------------------------------------------------------- start vectors

def model_dtype(model):
    """(namespace, dtype) of the model's parameters."""
    first = next(iter(model.parameters().values())).value
    return namespace(first), first.dtype


def random_start(rng, shape, xp, dtype):
    if rng is None:
        raise ValueError("power iteration needs start vectors: pass rng (a numpy Generator) or stored vectors")
    return xp.asarray(rng.standard_normal(shape), dtype=dtype)


def fits(vectors, key, shape):
    """Is there a stored vector under key, of this shape?"""
    v = vectors.get(key)
    return v is not None and tuple(v.shape) == tuple(shape)


def _start(vectors, key, shape, rng, xp, dtype):
    if fits(vectors, key, shape):
        return vectors[key]
    return random_start(rng, shape, xp, dtype)


def start_vectors(model, n, bound, rng, local_vectors=None, global_vectors=None):
    """The start vectors a fast-mode network_bounds call on n samples would use, drawn from
    rng now, in the order that call draws them: ({layer index: (1, ...)} for the global
    norms, {layer index: (n, ...)} for the local ones), given vectors kept where their shape
    fits. A caller that splits one batch into blocks itself (data-parallel training) draws
    them once and passes each block its slice, with rng None, so no block draws anything."""
    xp, dtype = model_dtype(model)
    glob = global_starts(model, rng, dict(global_vectors or {}))
    return glob, local_starts(model, bound, "fast", n, rng, dict(local_vectors or {}), xp, dtype)


def global_starts(model, rng, vectors):
    """The global power iteration's start vectors, {affine layer index: (1, ...)}, in layer
    order: the stored vector where its shape fits, else a Gaussian draw from rng."""
    xp, dtype = model_dtype(model)
    return {i: _start(vectors, i, (1,) + layer.in_shape, rng, xp, dtype)
            for i, layer in enumerate(model.layers[:-1]) if layer.is_affine}


def local_starts(model, bound, mode, n, rng, vectors, xp, dtype):
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
                starts[i] = random_start(rng, shape, xp, dtype)
        else:
            starts[i] = _start(vectors, i, shape, rng, xp, dtype)
    return starts
