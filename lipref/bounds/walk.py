"""Global and local Lipschitz bounds of the map x -> penultimate activations: the walk.

Global: the product over affine layers (all but the last) of each layer's spectral norm,
the norm of the exact operator (layer_norms.py: `GlobalNorms`, computed once per run).

Local (Huang et al. 2021): walk the network once per batch, keeping for every sample the
box [lower, upper] of the current activations over the eps-ball and a radius r with
||h(x') - h(x)|| <= r for every x' in the ball. Each affine layer is taken together with
the activation right after it: the pre-activation bounds are the interval bounds
intersected with the ball bounds (rules.py); the activation's rule (rules.py) says which
neurons are constant on the ball and maps the box through; the layer's local norm is the
spectral norm of W with constant rows (outputs) and constant columns (inputs) removed
(layer_norms.py); r grows by that norm. The product of the local norms is the local
Lipschitz bound, never above the global one (each masked operator is a restriction of the
full one, and we take the minimum).

Modes (see docs/soundness.md): "fast" estimates norms by power iteration (under-estimates,
what the paper's code does); "sound" uses upper bounds everywhere a certificate depends
on them, including the radii that decide the masks, and needs float64; every rounding
allowance is in rounding.py.

Blocks of samples and threads: every sample's bounds depend on that sample alone. Without a
tape, `network_bounds` bounds the batch in blocks of samples (backend.sample_blocks), run in
threads (backend.map_in_threads), and merges the blocks' results (`merge_blocks`). Every
random start vector is drawn first, in the calling thread, in the order a single pass over
the whole batch draws them (layer_norms.py), so the result does not depend on the threads at
all, nor on the blocks beyond rounding.
"""
import dataclasses
from dataclasses import dataclass, field

from .. import primitives as P
from ..backend import map_in_threads, namespace, sample_blocks
from ..errors import BoundsOverflowError, InputError
from ..tape import Var, value_of
from .layer_norms import global_norms, local_norm, local_starts
from .rounding import affine_forward_error, affine_rounding_slack, product_upper, row_norms_upper
from .rules import (affine_interval, ball_interval, check_model, constant_fraction, intersect, row_norms, rule_of,
                    uniform_box_interval, weight_forms)

MODES = ("fast", "sound")
BOUNDS = ("global", "local")
PER_SAMPLE = {"per_sample": True}  # field metadata: merged across blocks along the sample axis


@dataclass(frozen=True)
class BoundOptions:
    """How the bounds are computed, from the command line to the walk.

    bound: "local" (masks and masked norms) or "global" (product of full norms; the box
    bounds still use the global radius). mode: "fast" or "sound" (module docstring).
    n_iters: power-iteration steps per call (fast; warm-started from stored vectors when their
    shapes fit) or Lanczos steps (sound, conv layers). failure_prob: sound mode's probability
    that one masked conv norm bound fails. record: build the tape, so that every output is
    differentiable in the parameters. threads, sample_block: without `record` the batch is
    bounded in blocks of at most `sample_block` samples, run in `threads` threads
    (`bound_in_blocks`; None: the backend's defaults, which on a GPU keep the batch whole); the
    result does not depend on `threads` at all, nor on `sample_block` beyond rounding."""
    bound: str = "local"
    mode: str = "fast"
    n_iters: int = 5
    failure_prob: float = 1e-9
    record: bool = False
    threads: int = None
    sample_block: int = None

    def __post_init__(self):
        if self.bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {self.bound!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "sound" and self.record:
            raise ValueError("sound mode gives bounds, not gradients: record must be False")
        if (self.threads is not None and self.threads < 1) or (self.sample_block is not None and self.sample_block < 1):
            raise ValueError(f"threads and sample_block must be >= 1, got {self.threads} and {self.sample_block}")


@dataclass
class ActivationBounds:
    """What the walk learnt at one activation layer (per sample)."""
    layer_index: int
    layer: object
    params: dict
    lower: object = field(metadata=PER_SAMPLE)  # pre-activation bounds over the ball (Var when recording)
    upper: object = field(metadata=PER_SAMPLE)
    row_mask: object = field(metadata=PER_SAMPLE)  # arrays, 1 = can change
    output_mask: object = field(metadata=PER_SAMPLE)
    constant_fraction: object = field(metadata=PER_SAMPLE)  # (N,)


@dataclass
class NetworkBounds:
    logits: object = field(default=None, metadata=PER_SAMPLE)  # (N, K) at x
    penultimate: object = field(default=None, metadata=PER_SAMPLE)  # (N, D) activations entering the last layer
    lower: object = field(default=None, metadata=PER_SAMPLE)  # (N, D) their box over the ball
    upper: object = field(default=None, metadata=PER_SAMPLE)
    lipschitz: object = field(default=None, metadata=PER_SAMPLE)  # (N,) the bound used for x -> penultimate
    radius: object = field(default=None, metadata=PER_SAMPLE)  # (N,) eps * lipschitz
    global_lipschitz: object = None  # scalar
    local_norms: list = field(default_factory=list, metadata=PER_SAMPLE)  # per affine layer (N,) arrays
    global_norms: list = field(default_factory=list)  # per affine layer, scalars
    activations: list = field(default_factory=list, metadata=PER_SAMPLE)
    # sound mode: (N, D) bound on |penultimate - exact penultimate|
    forward_error: object = field(default=None, metadata=PER_SAMPLE)
    local_vectors: dict = field(default_factory=dict, metadata=PER_SAMPLE)
    global_vectors: dict = field(default_factory=dict)


def network_bounds(model, x, eps, options=BoundOptions(), norms=None, rng=None, local_vectors=None):
    """Logits at x and Lipschitz bounds of x -> penultimate over the l2 ball of radius eps.

    options: `BoundOptions`. norms: the run's `GlobalNorms` (layer_norms.global_norms; None:
    computed here with options.n_iters steps from rng). rng: draws the start vectors that
    are not given (fast mode: where `local_vectors`, {layer index: (N, ...)}, has none of the
    right shape; sound mode: Lanczos' random starts). With options.record, or an x on the
    tape, the tape is built in one piece, in the calling thread."""
    xv = _check_inputs(options, model, x, eps)
    xp = namespace(xv)
    if norms is None:
        norms = global_norms(model, options.mode, options.n_iters, rng)
    starts = local_starts(model, options.bound, options.mode, xv.shape[0], rng, dict(local_vectors or {}), xp,
                          xv.dtype)
    gnorms = norms.for_walk(model, options.record)
    if options.record or isinstance(x, Var):
        result = walk(model, x, eps, options, starts, gnorms)
    else:
        forms = {i: weight_forms(value_of(layer.linear_part(layer.params)[0]))
                 for i, layer in enumerate(model.layers[:-1]) if layer.is_affine}  # once for all blocks

        def bound_block(s):
            return walk(model, x[s, ...], eps, options, {k: v[s, ...] for k, v in starts.items()}, gnorms, forms)
        result = bound_in_blocks(xp, bound_block, xv.shape[0], options.sample_block, options.threads)
    _check_finite(result, eps, xv.dtype)
    result.global_lipschitz = xp.ones((), dtype=xv.dtype)
    for g in gnorms:
        result.global_lipschitz = (product_upper(result.global_lipschitz, g) if options.mode == "sound"
                                   else P.multiply(result.global_lipschitz, g))
    result.global_norms = [value_of(g) for g in gnorms]
    result.global_vectors = norms.vectors
    # the given vectors of layers that kept none (the global bound, sound mode's dense layers) carry over
    result.local_vectors = {**dict(local_vectors or {}), **result.local_vectors}
    return result


def _check_inputs(options, model, x, eps):
    """x's value, once eps, the model and x's dtype and shape fit."""
    if not (0 <= eps < float("inf")):
        raise InputError(f"eps must be finite and >= 0, got {eps}")
    check_model(model)
    xv = value_of(x)
    if options.mode == "sound" and xv.dtype != namespace(xv).float64:
        raise InputError("sound mode needs float64 inputs and parameters")
    if tuple(xv.shape[1:]) != model.input_shape:
        raise InputError(f"input shape {tuple(xv.shape[1:])} does not fit the model's {model.input_shape}")
    return xv


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


def layer_pairs(model):
    """The walk's steps: (index, index of the activation right after it or None) for every
    layer but the last, an affine layer taken together with its activation (whose masks
    give the affine layer's rows), any other layer alone."""
    layers, steps, i = model.layers[:-1], [], 0
    while i < len(layers):
        paired = layers[i].is_affine and i + 1 < len(layers) and layers[i + 1].is_activation
        steps.append((i, i + 1 if paired else None))
        i += 2 if paired else 1
    return steps


@dataclass
class _Ball:
    """What the walk knows of the current activations h over the eps-ball, per sample."""
    h: object
    lower: object  # the box [lower, upper] holding h(x') for every x' in the ball
    upper: object
    lipschitz: object  # (N,) the product of the norms so far
    radius: object  # (N,) ||h(x') - h(x)|| <= radius
    in_mask: object  # 1 = can move; None: all can
    box_radius: object  # the box is h +- box_radius on every coordinate; None once not
    forward_error: object  # sound mode: a bound on |h - exact h| per coordinate; else None


def walk(model, x, eps, options, starts, gnorms, forms=None):
    """network_bounds for one block of samples, given the global norms (as the walk uses
    them), the start vectors and the affine layers' `weight_forms` (None: computed here, on
    the tape if recording)."""
    xv = value_of(x)
    xp, n = namespace(xv), xv.shape[0]
    sound = options.mode == "sound"
    ball = _Ball(x, P.subtract(x, float(eps)), P.add(x, float(eps)), xp.ones((n,), dtype=xv.dtype),
                 xp.full((n,), float(eps), dtype=xv.dtype), None, float(eps), xp.zeros_like(xv) if sound else None)
    result = NetworkBounds()
    norms = iter(gnorms)
    for i, act_index in layer_pairs(model):
        layer = model.layers[i]
        if layer.is_affine:
            weight, bias = layer.linear_part(_params(layer, options.record))
            col_mask = ball.in_mask
            _through_affine(ball, layer, weight, bias, weight_forms(weight) if forms is None else forms[i], sound)
            act = None if act_index is None else model.layers[act_index]
            act_params = None if act is None else _params(act, options.record)
            masks = None if act is None else _masks(act, act_params, ball)
            sigma, v = _layer_norm(ball, layer, weight, masks, col_mask, options, starts.get(i), next(norms))
            if v is not None:
                result.local_vectors[i] = v
            result.local_norms.append(value_of(sigma))
            _grow(ball, sigma, eps, sound)
            if act is not None:
                _through_activation(ball, act_index, act, act_params, masks, result)
        elif layer.is_activation:
            params = _params(layer, options.record)
            _through_activation(ball, i, layer, params, _masks(layer, params, ball), result)
        else:  # a reshape (rules.RESHAPES)
            _through_reshape(ball, layer)
    last = model.layers[-1]
    result.logits = last.affine(ball.h, *last.linear_part(_params(last, options.record)))
    result.penultimate, result.lower, result.upper = ball.h, ball.lower, ball.upper
    result.forward_error = ball.forward_error
    result.lipschitz, result.radius = ball.lipschitz, ball.radius
    return result


def _params(layer, record):
    return layer.params if record else {k: v.value for k, v in layer.params.items()}


def _grow(ball, sigma, eps, sound):
    """The running Lipschitz bound times the layer's norm, and the radius eps L; in sound
    mode both rounded up, so that no product of nonzero norms underflows to 0."""
    if sound:
        ball.lipschitz = product_upper(ball.lipschitz, sigma)
        ball.radius = product_upper(ball.lipschitz, float(eps))
    else:
        ball.lipschitz = P.multiply(ball.lipschitz, sigma)
        ball.radius = P.multiply(ball.lipschitz, float(eps))


def _through_affine(ball, layer, weight, bias, forms, sound):
    """The affine layer's output and its box: interval bounds intersected with ball bounds,
    widened in sound mode by the interval's rounding and the centre's forward error."""
    z = layer.affine(ball.h, weight, bias)
    if sound:  # computed from this layer's input box, before the update
        slack = affine_rounding_slack(layer, weight, bias, ball.lower, ball.upper)
        ball.forward_error = affine_forward_error(layer, weight, ball.forward_error, slack)
    norms = row_norms_upper(layer, forms, ball.in_mask) if sound else row_norms(layer, forms, ball.in_mask)
    if ball.box_radius is not None:
        lower, upper = uniform_box_interval(layer, forms, z, ball.box_radius, ball.radius, norms)
    else:
        lo_i, up_i = affine_interval(layer, forms, bias, ball.lower, ball.upper)
        lo_b, up_b = ball_interval(z, ball.radius, norms)
        lower, upper = intersect(lo_i, up_i, lo_b, up_b)
    if sound:
        lower, upper = P.subtract(lower, ball.forward_error), P.add(upper, ball.forward_error)
    ball.h, ball.lower, ball.upper = z, lower, upper
    # every output of an affine layer can move; only an activation makes some constant
    ball.in_mask, ball.box_radius = None, None


def _masks(layer, params, ball):
    """(row mask, output mask) of an activation from its input box (rules.py)."""
    return rule_of(layer).masks({k: value_of(v) for k, v in params.items()}, value_of(ball.lower),
                                value_of(ball.upper))


def _layer_norm(ball, layer, weight, masks, col_mask, options, start, gnorm):
    """(the affine layer's norm per sample, its vector to store or None): the masked norm
    (rows from the next activation's masks, all rows without one) or the global norm."""
    xv = value_of(ball.h)
    xp, n = namespace(xv), xv.shape[0]
    if options.bound != "local":
        return P.multiply(gnorm, xp.ones((n,), dtype=xv.dtype)), None
    rows = xp.ones((n,) + layer.out_shape, dtype=xv.dtype) if masks is None else masks[0]
    return local_norm(layer, weight, rows, col_mask, options, start, gnorm)


def _through_activation(ball, index, layer, params, masks, result):
    """Record the activation's bounds and masks, then its output and box: the rule's interval
    map, intersected with the ball of the current radius."""
    rule = rule_of(layer)
    row_mask, out_mask = masks
    result.activations.append(ActivationBounds(index, layer, params, ball.lower, ball.upper, row_mask, out_mask,
                                               constant_fraction(out_mask)))
    lower, upper = rule.interval(layer, params, ball.lower, ball.upper)
    h = layer(ball.h, params)
    r = P.reshape(ball.radius, (value_of(h).shape[0],) + (1,) * (len(layer.out_shape)))
    if ball.forward_error is not None:  # the exact h lies within forward_error of the computed one
        ball.forward_error = rule.forward_error(ball.forward_error)
        r = P.add(r, ball.forward_error)
    ball.lower, ball.upper = intersect(lower, upper, P.subtract(h, r), P.add(h, r))
    ball.h, ball.in_mask, ball.box_radius = h, out_mask, None


def _through_reshape(ball, layer):
    n = value_of(ball.h).shape[0]
    shape = (n,) + layer.out_shape
    ball.h, ball.lower, ball.upper = P.reshape(ball.h, shape), P.reshape(ball.lower, shape), P.reshape(ball.upper, shape)
    if ball.in_mask is not None:
        ball.in_mask = namespace(ball.in_mask).reshape(ball.in_mask, shape)
    if ball.forward_error is not None:
        ball.forward_error = namespace(ball.forward_error).reshape(ball.forward_error, shape)


# ---------------------------------------------------------------- blocks of samples

def bound_in_blocks(xp, bound_block, n, sample_block, threads):
    """bound_block(slice) over the blocks of n samples, in threads, merged into one result."""
    parts = map_in_threads(xp, bound_block, sample_blocks(xp, n, sample_block), threads)
    return parts[0] if len(parts) == 1 else merge_blocks(parts, xp, threads)


def merge_blocks(parts, xp, threads):
    """One result from those of consecutive blocks: every field marked PER_SAMPLE (of the
    result's dataclass, and of the dataclasses, lists and dicts inside it) is concatenated
    along the sample axis; the others are the first block's. The concatenations run in
    `threads` threads, and an array that several fields share in every block (a ReLU's
    row and output mask) is concatenated once and stays shared."""
    jobs, job_of = [], {}

    def register(arrays):
        key = tuple(id(a) for a in arrays)
        if key not in job_of:
            job_of[key] = len(jobs)
            jobs.append(arrays)

    _merge(parts, register)
    merged = map_in_threads(xp, _stack_blocks, jobs, threads)
    return _merge(parts, lambda arrays: merged[job_of[tuple(id(a) for a in arrays)]])


def _merge(values, leaf):
    """The blocks' values merged (see merge_blocks), leaf(arrays) giving each array's."""
    first = values[0]
    if first is None:
        return None
    if dataclasses.is_dataclass(first):
        return dataclasses.replace(first, **{f.name: _merge([getattr(v, f.name) for v in values], leaf)
                                             for f in dataclasses.fields(first) if f.metadata.get("per_sample")})
    if isinstance(first, list):
        return [_merge([v[j] for v in values], leaf) for j in range(len(first))]
    if isinstance(first, dict):
        return {k: _merge([v[k] for v in values], leaf) for k in first}
    return leaf(values)


def _stack_blocks(arrays):
    """The blocks' arrays one after another along the sample axis. (NumPy's concatenate
    keeps the parts' memory order -- channels-last behind the NCHW views -- and runs without
    the interpreter lock; see BENCHMARKS.md.)"""
    return namespace(arrays[0]).concat(arrays, axis=0)
