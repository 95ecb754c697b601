"""Losses: values and gradients against HIPS autograd (float64) and finite differences;
schedules: the paper's warm-up, ramp and decay at their exact turning points."""
import autograd.numpy as anp
import numpy
import pytest
from autograd import grad as agrad
from hypothesis import given, settings
from hypothesis import strategies as st
from support import assert_backend_close, to_numpy

from lipref import losses
from lipref import primitives as P
from lipref.bounds import ActivationBounds, NetworkBounds
from lipref.bounds.margins import one_hot
from lipref.layers import ClampedMaxMin, ClippedReLU, ReLU
from lipref.schedules import Schedule, eps_at, kappa_at, lr_at
from lipref.tape import Var, grad


def _close(xp, actual, expected, rtol=1e-7, atol=1e-9):
    assert_backend_close(actual, expected, xp, rtol=rtol, atol=atol)


def _a_cross_entropy(logits, onehot):
    m = anp.max(logits, axis=1, keepdims=True)
    lse = anp.log(anp.sum(anp.exp(logits - m), axis=1)) + m[:, 0]
    return anp.mean(lse - anp.sum(logits * onehot, axis=1))


def _a_gloro(logits, weight, radius, onehot):
    """GloRo written directly: bottom = max_{j != y} z_j + R ||w_j - w_y||."""
    w_y = onehot @ weight
    diff = weight[None, :, :] - w_y[:, None, :]
    norms = anp.sqrt(anp.sum(diff ** 2, axis=2) + (onehot > 0))  # +1 at j = y keeps sqrt smooth; masked below
    worst = logits + norms * radius[:, None]
    bottom = anp.max(anp.where(onehot > 0, -1e30, worst), axis=1)
    aug = anp.concatenate([logits, bottom[:, None]], axis=1)
    target = anp.concatenate([onehot, anp.zeros((onehot.shape[0], 1))], axis=1)
    return _a_cross_entropy(aug, target)


def _draw(seed, n, k, d):
    rng = numpy.random.default_rng(seed)
    logits = rng.standard_normal((n, k))
    weight = rng.standard_normal((k, d))
    radius = rng.uniform(0.05, 1.0, n)
    labels = rng.integers(0, k, n)
    return rng, logits, weight, radius, labels


def _bounds(xp, logits, radius, penultimate=None, lower=None, upper=None):
    conv = (lambda a: None if a is None else Var(xp.asarray(a)))
    return NetworkBounds(conv(logits), conv(penultimate), conv(lower), conv(upper), None, conv(radius), None)


@settings(deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 5), k=st.integers(2, 6), d=st.integers(1, 7))
def test_gloro_loss_value_and_gradients_match_autograd(xp, seed, n, k, d):
    rng, logits, weight, radius, labels = _draw(seed, n, k, d)
    onehot_h = numpy.eye(k)[labels]
    b = _bounds(xp, logits, radius)
    w = Var(xp.asarray(weight))
    loss = losses.gloro_loss(b, w, one_hot(xp.asarray(labels), k, xp.float64))
    g_logits, g_w, g_r = grad(loss, [b.logits, w, b.radius])
    expected = _a_gloro(logits, weight, radius, onehot_h)
    _close(xp, loss.value, expected, rtol=1e-10)
    for i, g in enumerate((g_logits, g_w, g_r)):
        ref = agrad(_a_gloro, i)(logits, weight, radius, onehot_h)
        _close(xp, g, ref, rtol=1e-8, atol=1e-10)


@settings(deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 4), k=st.integers(2, 5))
def test_clean_and_mixed_losses(xp, seed, n, k):
    _, logits, weight, radius, labels = _draw(seed, n, k, 3)
    onehot = one_hot(xp.asarray(labels), k, xp.float64)
    onehot_h = numpy.eye(k)[labels]
    b = _bounds(xp, logits, radius)
    w = Var(xp.asarray(weight))
    kappa = 0.3
    mixed = losses.mixed_loss("gloro", b, w, onehot, kappa)
    ref = lambda z: kappa * _a_cross_entropy(z, onehot_h) + (1 - kappa) * _a_gloro(z, weight, radius, onehot_h)
    _close(xp, mixed.value, ref(logits), rtol=1e-10)
    _close(xp, grad(mixed, [b.logits])[0], agrad(ref)(logits), rtol=1e-8, atol=1e-10)
    clean = losses.mixed_loss("gloro", b, w, onehot, 1.0)
    _close(xp, clean.value, _a_cross_entropy(logits, onehot_h), rtol=1e-10)
    with pytest.raises(ValueError, match="kappa"):
        losses.mixed_loss("gloro", b, w, onehot, 1.5)
    with pytest.raises(ValueError, match="unknown robust loss"):
        losses.mixed_loss("tight", b, w, onehot, 0.5)


def _bcp_worst(logits, weight, radius, h, lower, upper, labels):
    """Reference ball-and-box worst-case logits by brute force: the exact support max c^T d over
    the ball and the box is found by a fine bisection on the KKT multiplier in numpy (float64)."""
    n, k = logits.shape
    worst = logits.copy()
    for i in range(n):
        for j in range(k):
            c = weight[j] - weight[labels[i]]
            lo, hi = lower[i] - h[i], upper[i] - h[i]
            corner = numpy.where(c > 0, hi, lo)
            if numpy.linalg.norm(corner) <= radius[i]:
                v = c @ corner
            else:
                a, b = 0.0, 1e6
                for _ in range(200):
                    m = 0.5 * (a + b)
                    if numpy.linalg.norm(numpy.clip(m * c, lo, hi)) >= radius[i]:
                        b = m
                    else:
                        a = m
                v = c @ numpy.clip(b * c, lo, hi)
            worst[i, j] += min(v, radius[i] * numpy.linalg.norm(c))
    return worst


def _cross_entropy(z, labels):
    z = z - z.max(axis=1, keepdims=True)
    return numpy.mean(numpy.log(numpy.exp(z).sum(axis=1)) - z[numpy.arange(z.shape[0]), labels])


def _bcp_value(logits, weight, radius, h, lower, upper, labels):
    return _cross_entropy(_bcp_worst(logits, weight, radius, h, lower, upper, labels), labels)


def _gloro_bcp_value(logits, weight, radius, h, lower, upper, labels):
    """GloRo's cross-entropy over [z, max_{j != y} worst_j] with the brute-force worst case."""
    worst = _bcp_worst(logits, weight, radius, h, lower, upper, labels)
    worst[numpy.arange(logits.shape[0]), labels] = -numpy.inf
    return _cross_entropy(numpy.concatenate([logits, worst.max(axis=1, keepdims=True)], axis=1), labels)


def _penultimate_box(rng, n, d):
    h = rng.standard_normal((n, d))
    return h, h - rng.uniform(0.01, 0.5, (n, d)), h + rng.uniform(0.01, 0.5, (n, d))


@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3), k=st.integers(2, 4), d=st.integers(2, 6),
       kind=st.sampled_from(["bcp", "gloro-bcp"]))
def test_ball_box_losses_value_and_gradient_match_finite_differences(seed, n, k, d, kind):
    import array_api_compat.numpy as xp
    rng, logits, weight, radius, labels = _draw(seed, n, k, d)
    args = [logits, weight, radius, *_penultimate_box(rng, n, d)]
    reference = {"bcp": _bcp_value, "gloro-bcp": _gloro_bcp_value}[kind]

    def loss_of(a):
        b = _bounds(xp, a[0], a[2], a[3], a[4], a[5])
        w = Var(xp.asarray(a[1]))
        return b, w, losses.robust_loss(kind, b, w, one_hot(xp.asarray(labels), k, xp.float64))

    b, w, loss = loss_of(args)
    assert abs(float(loss.value) - reference(*args, labels)) < 1e-8
    grads = grad(loss, [b.logits, w, b.radius, b.penultimate, b.lower, b.upper])
    # directional finite difference along a random direction for every input at once
    direction = [rng.standard_normal(a.shape) for a in args]
    step = 1e-6
    plus = reference(*[a + step * v for a, v in zip(args, direction)], labels)
    minus = reference(*[a - step * v for a, v in zip(args, direction)], labels)
    fd = (plus - minus) / (2 * step)
    analytic = sum(float(numpy.sum(to_numpy(g) * v)) for g, v in zip(grads, direction))
    assert abs(fd - analytic) <= 1e-4 * (1 + abs(fd))


@settings(deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 4), k=st.integers(2, 6), d=st.integers(1, 6),
       box=st.floats(0.01, 100.0))
def test_gloro_bcp_is_never_above_gloro_and_equals_it_without_a_box(xp, seed, n, k, d, box):
    """The ball-and-box maximum is at most the ball's, R ||w_j - w_y||, so the bottom logit and
    the loss can only fall; with a box far larger than the ball they are GloRo's."""
    rng, logits, weight, radius, labels = _draw(seed, n, k, d)
    h = rng.standard_normal((n, d))
    onehot = one_hot(xp.asarray(labels), k, xp.float64)
    w = Var(xp.asarray(weight))
    for half_width, same in ((box, False), (1e6, True)):
        b = _bounds(xp, logits, radius, h, h - half_width, h + half_width)
        ours = float(to_numpy(losses.gloro_bcp_loss(b, w, onehot).value))
        gloro = float(to_numpy(losses.gloro_loss(b, w, onehot).value))
        assert ours <= gloro + 1e-12 * (1 + abs(gloro))
        if same:
            assert ours == pytest.approx(gloro, rel=1e-12, abs=1e-12)


def test_gloro_bcp_matches_autograd_where_the_box_binds(xp):
    """A box tighter than the ball in every coordinate: the worst case is the box corner, so the
    loss is a plain function autograd differentiates (float64, all inputs)."""
    rng, logits, weight, radius, labels = _draw(5, 3, 4, 5)
    radius = radius + 10.0  # the corner lies inside the ball
    h, lower, upper = _penultimate_box(rng, 3, 5)
    onehot_h = numpy.eye(4)[labels]

    def ref(z, wt, lo, hi):
        diff = wt[None, :, :] - (onehot_h @ wt)[:, None, :]
        up = (weight[None, :, :] - (onehot_h @ weight)[:, None, :]) > 0  # the corner's side, fixed near the point
        corner = up * (hi - h)[:, None, :] + (1 - up) * (lo - h)[:, None, :]
        worst = z + anp.sum(diff * corner, axis=2)
        bottom = anp.max(anp.where(onehot_h > 0, -1e30, worst), axis=1)
        aug = anp.concatenate([z, bottom[:, None]], axis=1)
        return _a_cross_entropy(aug, anp.concatenate([onehot_h, anp.zeros((3, 1))], axis=1))

    b = _bounds(xp, logits, radius, h, lower, upper)
    w = Var(xp.asarray(weight))
    loss = losses.gloro_bcp_loss(b, w, one_hot(xp.asarray(labels), 4, xp.float64))
    _close(xp, loss.value, ref(logits, weight, lower, upper), rtol=1e-12)
    for i, g in enumerate(grad(loss, [b.logits, w, b.lower, b.upper])):
        _close(xp, g, agrad(ref, i)(logits, weight, lower, upper), rtol=1e-9, atol=1e-12)


def _a_sparsity(lb, ub, theta, c):
    return anp.mean(anp.maximum(ub, 0)) + c * anp.mean(anp.maximum(theta - lb, 0))


@settings(deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 4), f=st.integers(2, 8))
def test_sparsity_loss_matches_autograd(xp, seed, n, f):
    rng = numpy.random.default_rng(seed)
    lb = rng.standard_normal((n, f)) - 0.5
    ub = lb + rng.uniform(0.01, 1.0, (n, f))
    theta = rng.uniform(0.1, 1.0, (f,))
    acts = []
    lbv, ubv, thv = Var(xp.asarray(lb)), Var(xp.asarray(ub)), Var(xp.asarray(theta))
    acts.append(ActivationBounds(0, ClippedReLU((f,), 1.0), {"threshold": thv}, lbv, ubv, None, None, None))
    acts.append(ActivationBounds(2, ReLU((f,)), {}, lbv, ubv, None, None, None))
    total = losses.sparsity_loss(acts, 0.1)
    ref = lambda lb, ub, th: _a_sparsity(lb, ub, th, 0.1) + anp.mean(anp.maximum(ub, 0))
    _close(xp, total.value, ref(lb, ub, theta), rtol=1e-12)
    for i, g in enumerate(grad(total, [lbv, ubv, thv])):
        _close(xp, g, agrad(ref, i)(lb, ub, theta), rtol=1e-10, atol=1e-12)


def test_sparsity_loss_maxmin_and_its_zero_set(xp):
    rng = numpy.random.default_rng(3)
    n, half = 3, 4
    lb = rng.standard_normal((n, 2 * half))
    ub = lb + 0.5
    hi, lo = rng.uniform(0.5, 1.0, half), -rng.uniform(0.5, 1.0, half)

    def ref(lb, ub, hi, lo):
        lb_max = anp.maximum(lb[:, :half], lb[:, half:])
        ub_min = anp.minimum(ub[:, :half], ub[:, half:])
        return anp.mean(anp.maximum(hi - lb_max, 0)) + anp.mean(anp.maximum(ub_min - lo, 0))

    vs = [Var(xp.asarray(a)) for a in (lb, ub, hi, lo)]
    act = ActivationBounds(0, ClampedMaxMin((2 * half,), 1.0), {"max": vs[2], "min": vs[3]}, vs[0], vs[1],
                           None, None, None)
    total = losses.sparsity_loss([act])
    _close(xp, total.value, ref(lb, ub, hi, lo), rtol=1e-12)
    for i, g in enumerate(grad(total, vs)):
        _close(xp, g, agrad(ref, i)(lb, ub, hi, lo), rtol=1e-10, atol=1e-12)
    # every max output clamped (lb >= hi) and every min output clamped (ub <= lo): zero loss
    lb_c = numpy.concatenate([numpy.full((n, half), 2.0), numpy.full((n, half), -3.0)], axis=1)
    ub_c = numpy.concatenate([numpy.full((n, half), 3.0), numpy.full((n, half), -2.0)], axis=1)
    act_c = ActivationBounds(0, act.layer, act.params, xp.asarray(lb_c), xp.asarray(ub_c), None, None, None)
    assert float(to_numpy(P.sum(losses.sparsity_loss([act_c]), None, False).value)) == 0.0


# ------------------------------------------------------------------------------- schedules

def test_schedule_turning_points():
    s = Schedule(epochs=10, eps_train=1.5, warmup=2, ramp=4, kappa_end=0.1, lr=1e-3, lr_end=1e-5)
    assert eps_at(s, 0) == 0 and eps_at(s, 1.99) == 0 and kappa_at(s, 1.5) == 1.0
    assert eps_at(s, 2) == 0 and eps_at(s, 4) == pytest.approx(0.75) and eps_at(s, 6) == pytest.approx(1.5)
    assert eps_at(s, 9.9) == 1.5
    assert kappa_at(s, 4) == pytest.approx(0.55) and kappa_at(s, 6) == pytest.approx(0.1)
    # within-epoch interpolation: step 3 of 10 in epoch 3
    assert eps_at(s, 3.3) == pytest.approx(1.5 * 1.3 / 4)
    # lr: constant through the ramp, then exponential to lr_end at the last epoch
    assert lr_at(s, 0) == 1e-3 and lr_at(s, 6) == 1e-3
    assert lr_at(s, 8) == pytest.approx(1e-4) and lr_at(s, 10) == pytest.approx(1e-5)
    lrs = [lr_at(s, t / 10) for t in range(101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_schedule_without_ramp_and_bad_values():
    s = Schedule(epochs=3, eps_train=0.5, warmup=1, ramp=0)
    assert eps_at(s, 0.5) == 0 and eps_at(s, 1) == 0.5 and kappa_at(s, 1) == 0.0
    for bad in (dict(epochs=0), dict(eps_train=-1), dict(warmup=-1), dict(kappa_end=2), dict(lr=0)):
        args = dict(epochs=3, eps_train=0.5)
        args.update(bad)
        with pytest.raises(ValueError):
            Schedule(**args)


def test_kappa_start_zero_is_the_robust_loss_alone_after_warmup():
    s = Schedule(epochs=6, eps_train=1.0, warmup=1, ramp=3, kappa_end=0.0, kappa_start=0.0)
    assert kappa_at(s, 0.99) == 1.0  # warm-up stays clean
    assert [kappa_at(s, t) for t in (1.0, 2.5, 4.0, 5.9)] == [0.0, 0.0, 0.0, 0.0]
    s = Schedule(epochs=6, eps_train=1.0, warmup=0, ramp=4, kappa_end=0.2, kappa_start=0.6)
    assert kappa_at(s, 0) == 0.6 and kappa_at(s, 2) == pytest.approx(0.4) and kappa_at(s, 4) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="kappa_start"):
        Schedule(epochs=3, eps_train=0.5, kappa_start=1.5)
