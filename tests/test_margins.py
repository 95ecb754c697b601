"""Margins and certificates: the ball-and-box support is an upper bound of the true maximum
and tight; a certified sample is never broken by sampled points or by PGD in the ball."""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from networks import ACTS, ball_points, project_ball, small_model

from support import examples

from lipref import primitives as P
from lipref.backend import to_host
from lipref.bounds import certificate as C
from lipref.bounds import margins as M
from lipref.bounds import BoundOptions, network_bounds
from lipref.bounds.certificate import certify_bounds
from lipref.bounds.rounding import margin_slack, support_radius
from lipref.tape import Var, grad


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), dim=st.integers(1, 12), scale=st.floats(0.01, 3.0))
def test_ball_box_support_is_tight_upper_bound(xp, seed, dim, scale):
    rng = numpy.random.default_rng(seed)
    m = 4
    c = rng.normal(size=(m, dim))
    lo = -rng.uniform(0, 1, (m, dim))
    hi = rng.uniform(0, 1, (m, dim))
    radius = scale * rng.uniform(0.1, 1.0, m)
    value, lam, inside = C.ball_box_support(xp.asarray(c), xp.asarray(lo), xp.asarray(hi), xp.asarray(radius))
    value = to_host(value)
    # feasible points never exceed the bound
    for _ in range(200):
        d = numpy.clip(rng.normal(size=(m, dim)) * rng.uniform(0, 2), lo, hi)
        norms = numpy.linalg.norm(d, axis=1)
        d = d * numpy.minimum(1, radius / numpy.maximum(norms, 1e-300))[:, None]
        assert numpy.all(numpy.sum(c * d, axis=1) <= value + 1e-12)
    # tightness: a feasible point (clip at a slightly smaller multiplier) comes within 1e-6
    lam_h = to_host(lam)
    for i in range(m):
        if to_host(inside)[i]:
            d = numpy.where(c[i] > 0, hi[i], lo[i])
        else:
            lo_l, hi_l = 0.0, lam_h[i]
            for _ in range(80):
                mid = 0.5 * (lo_l + hi_l)
                if numpy.linalg.norm(numpy.clip(mid * c[i], lo[i], hi[i])) <= radius[i]:
                    lo_l = mid
                else:
                    hi_l = mid
            d = numpy.clip(lo_l * c[i], lo[i], hi[i])
        assert numpy.linalg.norm(d) <= radius[i] * (1 + 1e-12)
        assert value[i] - numpy.dot(c[i], d) <= 1e-6 * (1 + abs(value[i]))
        assert value[i] <= radius[i] * numpy.linalg.norm(c[i]) + 1e-9 or to_host(inside)[i]


def _certify(model, x_host, eps, xp, rng, margin, mode="fast"):
    """Fast mode: 300 power iterations; sound mode: upper bounds (the certified global norms,
    Lanczos on masked convs) and certify's rounding slacks. margin "bcp" is the certificate
    `lipref certify` uses (`certify_bounds`); "gloro" the plain GloRo margin."""
    res = network_bounds(model, xp.asarray(x_host), eps, BoundOptions("local", mode, 300 if mode == "fast" else 40), rng=rng)
    logits = res.logits
    pred = C.predictions(logits)
    onehot = C.one_hot(pred, logits.shape[1], logits.dtype)
    last = model.layers[-1].params
    w = last["weight"].value
    if margin == "gloro":
        worst = M.gloro_worst_logits(logits, w, onehot, support_radius(res))
        slack = margin_slack(res, w, last["bias"].value) if mode == "sound" else 0.0
        return to_host(C.certified(worst, logits, onehot, slack)), to_host(pred)
    cert, _ = certify_bounds(res, w, last["bias"].value, onehot, eps, mode == "sound", cap_at_eps=True)
    return to_host(cert), to_host(pred)


def pgd_on_margin(model, x_host, label, eps, xp, rng, steps=30):
    """Projected gradient ascent on max_j (z_j - z_label) inside the ball; returns the best
    margin found (> 0 means the prediction changed)."""
    p = ball_points(rng, x_host, eps, 4)
    best = -numpy.inf
    onehot = numpy.zeros((1, 0))
    for _ in range(steps):
        X = Var(xp.asarray(p))
        z = model(X)
        zv = to_host(z.value)
        k = zv.shape[1]
        onehot = numpy.eye(k)[[label] * p.shape[0]]
        others = numpy.where(onehot > 0, -numpy.inf, zv)
        target = numpy.argmax(others, axis=1)
        best = max(best, float(numpy.max(numpy.max(others, axis=1) - zv[:, label])))
        sel = numpy.eye(k)[target] - onehot
        obj = P.sum(P.multiply(z, xp.asarray(sel)), None, False)
        (g,) = grad(obj, [X])
        g = to_host(g)
        n = numpy.linalg.norm(g.reshape(p.shape[0], -1), axis=1).reshape((-1,) + (1,) * (p.ndim - 1)) + 1e-300
        p = project_ball(p + 0.25 * eps * g / n, x_host, eps)
    return best


@pytest.mark.property  # its @given is built per backend (fewer draws off NumPy), out of conftest's sight
def test_certified_points_are_never_broken(xp):
    @settings(max_examples=examples(xp, 10, 4), deadline=None)
    @given(seed=st.integers(0, 10_000), kind=st.sampled_from(ACTS), conv=st.sampled_from([False, True, "pool"]),
           margin=st.sampled_from(["gloro", "bcp"]), scale=st.sampled_from([0.3, 3.0, 30.0, 100.0]),
           mode=st.sampled_from(["fast", "sound"]))
    def run(seed, kind, conv, margin, scale, mode):
        model, rng = small_model(kind, conv, xp, seed)
        x_host = rng.uniform(-1, 1, (6,) + model.input_shape)
        # the smallest radius that separates the two top logits, so that some points certify
        logits = to_host(model(xp.asarray(x_host), record=False))
        top2 = numpy.sort(logits, axis=1)[:, -2:]
        eps = float(numpy.median(top2[:, 1] - top2[:, 0])) * scale + 1e-3
        cert, pred = _certify(model, x_host, eps, xp, rng, margin, mode)
        for s in numpy.nonzero(cert)[0]:
            pts = ball_points(rng, x_host[s:s + 1], eps, 64)
            z = to_host(model(xp.asarray(pts), record=False))
            assert numpy.all(numpy.argmax(z, axis=1) == pred[s]), "a sampled point changed a certified prediction"
            assert pgd_on_margin(model, x_host[s:s + 1], int(pred[s]), eps, xp, rng) < 0
    run()


def test_ties_are_never_certified(xp):
    logits = xp.asarray(numpy.array([[1.0, 1.0, 0.0]]))
    onehot = C.one_hot(C.predictions(logits), 3, logits.dtype)
    assert int(to_host(C.predictions(logits))[0]) == 0
    worst = M.gloro_worst_logits(logits, xp.asarray(numpy.eye(3)), onehot, xp.asarray(numpy.zeros(1)))
    assert not bool(to_host(C.certified(worst, logits, onehot))[0])


def test_bcp_never_looser_than_gloro(xp):
    model, rng = small_model("relu", True, xp, 5)
    x = xp.asarray(rng.uniform(-1, 1, (5,) + model.input_shape))
    res = network_bounds(model, x, 0.3, BoundOptions("local", "fast", 100), rng=rng)
    onehot = C.one_hot(C.predictions(res.logits), 3, res.logits.dtype)
    w = model.layers[-1].params["weight"].value
    g = to_host(M.gloro_worst_logits(res.logits, w, onehot, res.radius))
    b = to_host(M.bcp_worst_logits(res.logits, w, onehot, res.radius, res.penultimate, res.lower, res.upper))
    assert numpy.all(b <= g + 1e-12)


def test_bcp_gradient_matches_finite_differences():
    """The envelope-theorem gradient of the BCP worst logits equals the derivative of the
    maximum (checked by central differences on the last layer's weights)."""
    import array_api_compat.numpy as xp
    model, rng = small_model("relu", False, xp, 21)
    x = xp.asarray(rng.uniform(-1, 1, (3,) + model.input_shape))
    res = network_bounds(model, x, 0.4, BoundOptions("local", "fast", 200), rng=numpy.random.default_rng(0))
    onehot = C.one_hot(C.predictions(res.logits), 3, res.logits.dtype)
    W = Var(model.layers[-1].params["weight"].value.copy())
    cot = rng.normal(size=(3, 3))

    def value(wv, record):
        w = W if record else wv
        worst = M.bcp_worst_logits(res.logits, w, onehot, res.radius, res.penultimate, res.lower, res.upper)
        return P.sum(P.multiply(worst, cot), None, False)

    (g,) = grad(value(None, True), [W])
    d = rng.normal(size=W.value.shape)
    h = 1e-6
    fd = (float(value(W.value + h * d, False)) - float(value(W.value - h * d, False))) / (2 * h)
    assert abs(float(numpy.sum(g * d)) - fd) <= 1e-5 * (1 + abs(fd))


def test_ball_box_support_edge_cases(xp):
    """Exact values where the sort-based solver has special cases: c = 0 rows, c = 0
    coordinates, faces of the box at 0, the box inside the ball, R = 0, equal breakpoints."""
    c = numpy.array([[0.0, 0.0, 0.0], [1.0, 0.0, -2.0], [1.0, 1.0, 1.0], [3.0, -1.0, 0.5], [1.0, 1.0, 0.0],
                     [2.0, 1.0, 0.0]])
    lo = numpy.array([[-1.0] * 3, [-1.0, -1.0, -1.0], [-0.1] * 3, [-1.0, -1.0, -1.0], [-1.0] * 3,
                      [-1.0, -1.0, -1.0]])
    hi = numpy.array([[1.0] * 3, [1.0, 1.0, 1.0], [0.1] * 3, [0.0, 1.0, 1.0], [0.5, 0.5, 1.0],
                      [0.2, 0.1, 1.0]])
    radius = numpy.array([0.7, 0.5, 1.0, 0.0, 2.0, 0.3])
    value, lam, inside = (to_host(a) for a in C.ball_box_support(*(xp.asarray(a) for a in (c, lo, hi, radius))))
    # row 0: c = 0 -> 0; row 1: lam c = (0.1118, 0, -0.2236), norm 0.25 < 0.5? no clipping
    # below lam = 0.5: the ball is hit at lam = 0.5 / sqrt(5), value 0.5 sqrt(5)
    # row 2: the corner (0.1, 0.1, 0.1) has norm 0.17 < 1: inside, value 0.3
    # row 3: R = 0 -> 0; row 4: equal breakpoints t = 0.5 for both, then norm sqrt(0.5) < 2 and
    # c = 0 elsewhere: inside, value 1.0; row 5: first coordinate 2 clips at lam = 0.1 (norm
    # sqrt(0.04 + 0.01) = 0.224 < 0.3), the second at 0.1 too: inside, value 0.5
    expected = numpy.array([0.0, 0.5 * numpy.sqrt(5.0), 0.3, 0.0, 1.0, 0.5])
    numpy.testing.assert_allclose(value, expected, rtol=1e-14, atol=1e-15)
    assert inside.tolist() == [False, False, True, False, True, True]  # rows 0 and 3: the maximum is 0, no box
    numpy.testing.assert_allclose(lam[1], 0.5 / numpy.sqrt(5.0), rtol=1e-14)


def test_bcp_gradient_in_the_radius_at_zero():
    """d/dR of the ball-and-box maximum at R = 0 is the norm of c over the coordinates that
    can move (those whose box face in c's direction is not at 0), as at R -> 0+."""
    import array_api_compat.numpy as xp
    c = numpy.array([[3.0, -1.0, 0.5]])
    lo, hi = numpy.array([[-1.0, -1.0, -1.0]]), numpy.array([[0.0, 1.0, 1.0]])
    for r0 in (0.0, 1e-3):
        radius = Var(xp.asarray([r0]))
        out = M.ball_box_maximum(c, lo, hi, radius)
        (g,) = grad(out, [radius], seed=xp.ones((1,)))
        numpy.testing.assert_allclose(g, [numpy.sqrt(1.0 + 0.25)], rtol=1e-12)
