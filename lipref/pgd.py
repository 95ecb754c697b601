"""An l2 PGD attack with the engine's own gradients (Madry et al.; l2 steps as in Rony et al.).

Each step moves the perturbation delta by `step_size` along the normalised gradient of the
cross-entropy with respect to the input, then projects back onto the ball ||delta|| <= eps
and (optionally) onto the data domain [lo, hi], which must contain x: scaling into the ball
first and clipping to the domain second keeps the point in both, since clipping moves each
coordinate towards x. It starts from a uniformly random point of the ball and keeps, per
sample, the first point found inside the ball whose (finite) logits change the prediction.
A point inside the ball of a certified sample that changes the prediction would disprove
the certificate; `lipref certify` checks exactly that.
"""
from dataclasses import dataclass

from . import primitives as P
from .backend import map_in_threads, namespace, sample_blocks
from .bounds.certificate import one_hot, predictions
from .config import setting
from .errors import InputError
from .tape import Var, grad


@dataclass(frozen=True)
class AttackConfig:
    """The options of `lipref attack` and the defaults of `pgd_l2`, written once."""
    steps: int = setting(100, "PGD steps.", minimum=0)
    step_size: float = setting(None, "Step length (default eps/4).")
    restarts: int = setting(1, "Random restarts.", minimum=1)


@dataclass
class AttackResult:
    adversarial: object  # (N, ...) the first point found that changes the prediction, else x
    success: object  # (N,) bool: prediction differs from the label at `adversarial`
    distance: object  # (N,) ||adversarial - x||, <= eps


def _flat_norms(a):
    xp = namespace(a)
    return xp.sqrt(xp.sum(xp.reshape(a * a, (a.shape[0], -1)), axis=1))


def _per_sample(v, like):
    return namespace(v).reshape(v, (v.shape[0],) + (1,) * (like.ndim - 1))


def project(x, delta, eps, clip):
    """delta scaled into the ball of radius eps, then x + delta clipped to the domain `clip`
    ((lo, hi) or None), which contains x: the result lies in both."""
    xp = namespace(delta)
    norms = _flat_norms(delta)
    scale = xp.where(norms > eps, eps / xp.where(norms > 0, norms, xp.ones_like(norms)), xp.ones_like(norms))
    delta = delta * _per_sample(scale, delta)
    if clip is not None:
        delta = xp.clip(x + delta, clip[0], clip[1]) - x
    return delta


def check_domain(x, clip):
    """PGD's domain must contain the data: clipping a point outside it would leave the ball."""
    if clip is None:
        return
    xp = namespace(x)
    outside = (x < clip[0]) | (x > clip[1])
    if bool(xp.any(outside)):
        flat = xp.reshape(outside, (x.shape[0], -1))
        first = int(xp.argmax(xp.astype(xp.any(flat, axis=1), xp.int8)))
        raise InputError(f"the data lie outside the domain [{clip[0]:g}, {clip[1]:g}] (sample {first} of the "
                         "batch); give the data's domain (--domain LO,HI) or none (--domain none)")


def random_ball_points(x, eps, rng):
    """Uniform random points of the l2 ball of radius eps around each sample."""
    xp = namespace(x)
    n = x.shape[0]
    dim = 1
    for d in x.shape[1:]:
        dim *= d
    direction = xp.asarray(rng.standard_normal(tuple(x.shape)), dtype=x.dtype)
    direction = direction / _per_sample(_flat_norms(direction), direction)
    radius = xp.asarray(rng.uniform(size=n) ** (1.0 / dim), dtype=x.dtype) * eps
    return direction * _per_sample(radius, direction)


def input_gradient(model, x, onehot):
    """Gradient of the summed cross-entropy with respect to the input batch."""
    xv = Var(x)
    loss = P.sum(P.softmax_cross_entropy(model(xv, record=False), onehot), None, False)
    return grad(loss, [xv])[0]


def pgd_l2(model, x, labels, eps, rng, n_steps=AttackConfig.steps, step_size=None, restarts=AttackConfig.restarts,
           domain=None, threads=None, sample_block=None):
    """l2 PGD; step_size defaults to eps / 4. Returns an AttackResult.

    Each sample is attacked on its own, so the batch runs in blocks of samples in threads
    (backend.sample_blocks / map_in_threads; None: the backend's defaults). Every restart's
    random start is drawn first, in the calling thread, so the result and what is left of
    rng do not depend on `threads` or `sample_block`. domain: (lo, hi) holding x, which
    every point stays in, or None (unbounded)."""
    xp = namespace(x)
    if not 0 <= eps < float("inf"):
        raise InputError(f"eps must be finite and >= 0, got {eps}")
    if n_steps < 0 or restarts < 1:
        raise InputError(f"need n_steps >= 0 and restarts >= 1, got {n_steps}, {restarts}")
    if step_size is not None and not 0 < step_size < float("inf"):
        raise InputError(f"step size must be finite and > 0, got {step_size}")
    check_domain(x, domain)
    step = eps / 4.0 if step_size is None else step_size
    starts = [random_ball_points(x, eps, rng) for _ in range(restarts)] if eps > 0 else []

    def attack_block(s):
        return _pgd_block(model, x[s, ...], labels[s, ...], eps, [p[s, ...] for p in starts], n_steps, step, domain)
    parts = map_in_threads(xp, attack_block, sample_blocks(xp, x.shape[0], sample_block), threads)
    best, success = (xp.concat([p[i] for p in parts], axis=0) for i in (0, 1))
    return AttackResult(best, success, _flat_norms(best - x))


def _pgd_block(model, x, labels, eps, starts, n_steps, step, clip):
    """(best, success) of PGD on one block of samples, one restart per start point."""
    xp = namespace(x)
    onehot = one_hot(labels, model.n_classes, x.dtype)
    best = x
    success = predictions(model(x, record=False)) != labels
    for start in starts:
        delta = project(x, start, eps, clip)
        for _ in range(n_steps + 1):
            candidate = x + delta
            logits = model(candidate, record=False)
            valid = xp.all(xp.isfinite(logits), axis=1) & (_flat_norms(candidate - x) <= eps)
            hit = (predictions(logits) != labels) & valid & ~success
            best = xp.where(_per_sample(hit, x), candidate, best)
            success = success | hit
            if bool(xp.all(success)):
                break
            g = input_gradient(model, candidate, onehot)
            g_norm = _flat_norms(g)
            g_unit = g / _per_sample(xp.where(g_norm > 0, g_norm, xp.ones_like(g_norm)), g)
            delta = project(x, delta + step * g_unit, eps, clip)
        if bool(xp.all(success)):
            break
    return best, success
